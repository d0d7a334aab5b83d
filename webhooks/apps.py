from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # The engine never imports this app: the webhook step is registered here.
        from integrations.engine.registry import register_element
        from integrations.models import Element
        from webhooks.step import config_check, handle

        register_element(Element.Kind.WEBHOOK, handle, check=config_check)
        from webhooks import tasks  # noqa: F401  (registered at start: see integrations.apps)
