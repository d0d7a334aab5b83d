from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Integrations"

    def ready(self) -> None:
        # Connects the signals that bump Integration.config_version on every change.
        # Every task registered with the Celery app when Django starts, not when some
        # code first imports its module (a fault-test session sent to an app that had
        # been finalized without them: NotRegistered).
        from integrations import (
            step_cache,  # noqa: F401
            tasks,  # noqa: F401
        )
