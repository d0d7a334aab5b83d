from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        # Connects the signals that bump Integration.config_version on every change.
        from integrations import step_cache  # noqa: F401
