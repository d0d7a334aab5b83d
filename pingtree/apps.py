from django.apps import AppConfig


class PingtreeConfig(AppConfig):
    name = "pingtree"
    verbose_name = "Ping trees"
