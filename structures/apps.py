from django.apps import AppConfig


class StructuresConfig(AppConfig):
    name = "structures"
    verbose_name = "Leads & partners"

    def ready(self) -> None:
        from structures import (
            intake_config,  # noqa: F401  (config version signals)
            tasks,  # noqa: F401  (registered at start: see integrations.apps)
        )
        from structures.api import schema  # noqa: F401  (registers the OpenAPI auth scheme)
