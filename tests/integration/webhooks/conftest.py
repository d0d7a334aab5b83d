"""Fixtures of the webhook tests: a lead, a scenario with a webhook step, an endpoint and
a client that calls the public URL the way a buyer does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from integrations.engine import registry
from integrations.engine import services as engine
from integrations.models import Connection, Element, Integration, RunStep, ScenarioRun
from structures.models import Advertiser, Lead
from webhooks import services
from webhooks.models import WaitingWebhook, WebhookEndpoint
from webhooks.step import config_check, handle

Kind = Element.Kind


@pytest.fixture(autouse=True)
def webhook_step_registered() -> Iterator[None]:
    # An engine test unregisters the kind to check the "no handler" path: make sure ours
    # is the one installed here, whatever ran before.
    previous = registry.ELEMENT_HANDLERS.get(Kind.WEBHOOK)
    registry.register_element(Kind.WEBHOOK, handle, check=config_check)
    yield
    if previous is not None:
        registry.ELEMENT_HANDLERS[Kind.WEBHOOK] = previous


@pytest.fixture(autouse=True)
def endpoint_memo_cleared() -> Iterator[None]:
    # Each test starts as a fresh process would (services._ENDPOINT_MEMO).
    services.endpoint_memo_clear()
    yield
    services.endpoint_memo_clear()


def make_lead(setup: Any, **extra: Any) -> Lead:
    return Lead.objects.create(
        workspace=setup.workspace,
        structure=setup.structure,
        partner=setup.partner,
        source="api",
        status="approved",
        data={"g_first_name": "Jane", "g_email": "jane@example.com"},
        **extra,
    )


@pytest.fixture
def lead(lead_setup: Any) -> Lead:
    return make_lead(lead_setup)


@pytest.fixture
def advertiser(lead_setup: Any) -> Advertiser:
    return Advertiser.objects.create(workspace=lead_setup.workspace, name="Acme Buyer")


@dataclass
class Hook:
    """An endpoint, its token, and a scenario start -> webhook step -> "after" on
    accepted. ``call`` is what the buyer does."""

    endpoint: WebhookEndpoint
    token: str
    integration: Integration
    step_element: Element
    after: Element
    client: Client

    @property
    def path(self) -> str:
        return f"/webhooks/{self.endpoint.webhook_id}/{self.token}/"

    def start(self, lead: Lead | None, **variables: Any) -> ScenarioRun:
        run = engine.run_start(integration=self.integration, lead=lead, variables=variables)
        return engine.run_drive(run_id=run.pk, deadline_seconds=5, hand_off=False)

    def call(
        self,
        *,
        query: dict[str, str] | None = None,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        method: str = "post",
        path: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        ip: str = "127.0.0.1",
    ) -> Any:
        url = path or self.path
        if query:
            from urllib.parse import urlencode

            url = f"{url}?{urlencode(query)}"
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()}
        extra["REMOTE_ADDR"] = ip
        if method == "get":
            return self.client.get(url, **extra)
        if form is not None:
            from urllib.parse import urlencode

            return self.client.generic(
                method.upper(),
                url,
                urlencode(form),
                content_type="application/x-www-form-urlencoded",
                **extra,
            )
        if raw is not None:
            return self.client.generic(method.upper(), url, raw, content_type=content_type, **extra)
        body = json.dumps(json_body if json_body is not None else {})
        return self.client.generic(method.upper(), url, body, content_type=content_type, **extra)

    def waiting(self, run: ScenarioRun) -> WaitingWebhook:
        return WaitingWebhook.objects.get(run=run)

    def parked_step(self, run: ScenarioRun) -> RunStep:
        return RunStep.objects.get(run=run, element=self.step_element)


DEFAULT_RULES = [
    {
        "conditions": [
            {"source": "body", "key_kind": "json_path", "key": "status", "operator": "equals",
             "value": "sold|approved"}
        ],
        "outcome": "accepted",
    },
    {
        "conditions": [
            {"source": "body", "key_kind": "json_path", "key": "status", "operator": "equals",
             "value": "rejected"}
        ],
        "outcome": "rejected",
        "reason": "buyer said no",
    },
]  # fmt: skip
DEFAULT_CAPTURES = [
    {"source": "body", "key_kind": "json_path", "key": "price", "target": "price"},
    {"source": "body", "key_kind": "json_path", "key": "lead_id", "target": "buyer_lead_id"},
    {"source": "body", "key_kind": "json_path", "key": "note", "target": "lead_field",
     "target_name": "g_buyer_note"},
]  # fmt: skip


def make_hook(
    setup: Any,
    *,
    config: dict[str, Any] | None = None,
    endpoint_kwargs: dict[str, Any] | None = None,
    webhook_id: str = "wh_acme",
) -> Hook:
    endpoint, token = services.endpoint_create(
        workspace=setup.workspace, name="Acme", webhook_id=webhook_id, **(endpoint_kwargs or {})
    )
    integration = Integration.objects.create(
        workspace=setup.workspace, name=f"Async buyer {webhook_id}", status="enabled"
    )

    def element(kind: str, name: str, **kwargs: Any) -> Element:
        return Element.objects.create(
            workspace=setup.workspace, integration=integration, kind=kind, name=name, **kwargs
        )

    start = element(Kind.START, "start")
    step_config = {
        "endpoint": endpoint.webhook_id,
        "wait": True,
        "timeout_seconds": 600,
        "rules": DEFAULT_RULES,
        "captures": DEFAULT_CAPTURES,
    }
    step_config.update(config or {})
    hook = element(Kind.WEBHOOK, "Buyer callback", config=step_config)
    after = element(Kind.SET_VARIABLE, "after", config={"name": "after", "template": "yes"})
    for a, b, conditions in (
        (start, hook, []),
        (hook, after, [{"source": "outcome", "operator": "equals", "value": "accepted"}]),
    ):
        Connection.objects.create(
            workspace=setup.workspace,
            integration=integration,
            from_element=a,
            to_element=b,
            conditions=conditions,
        )
    return Hook(endpoint, token, integration, hook, after, Client())


@pytest.fixture
def hook(lead_setup: Any) -> Hook:
    return make_hook(lead_setup)
