from django.apps import AppConfig


class PingtreeConfig(AppConfig):
    name = "pingtree"
    verbose_name = "Ping trees"

    def ready(self) -> None:
        from pingtree import receivers, tasks  # noqa: F401  (tasks: see integrations.apps)

        receivers.connect()
