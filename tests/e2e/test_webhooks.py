"""Acceptance of the webhook step in a real browser: an operator creates a webhook
endpoint in the admin and copies its URL; a lead waits on a scenario's webhook step; a
local fake advertiser (a real HTTP client on 127.0.0.1) calls the copied URL; the admin
then shows the waiting webhook matched, the run's captured values and the callback in
the inbound log."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from integrations.engine import services as engine
from integrations.models import Connection, Element, Integration, ScenarioRun
from structures.models import Lead
from tests.factories.structures import make_lead_setup
from webhooks.models import WaitingWebhook, WebhookEndpoint

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENDPOINTS = "/admin/webhooks/webhookendpoint/"


@pytest.fixture(autouse=True)
def webhook_step_registered() -> Iterator[None]:
    # An engine test unregisters the webhook kind to check its "no handler" path (and
    # does not put it back): make sure ours is installed, whatever ran before.
    from integrations.engine import registry
    from webhooks.step import config_check, handle

    previous = registry.ELEMENT_HANDLERS.get("webhook")
    registry.register_element("webhook", handle, check=config_check)
    yield
    if previous is not None:
        registry.ELEMENT_HANDLERS["webhook"] = previous


WAITING = "/admin/webhooks/waitingwebhook/"
INBOUND = "/admin/webhooks/inboundwebhookrequest/"


def scenario(workspace: Any, webhook_id: str) -> Integration:
    """start -> webhook step (the ping tree waits; sold means accepted; price captured)."""
    integration = Integration.objects.create(
        workspace=workspace, name="Async buyer", status="enabled"
    )
    start = Element.objects.create(
        workspace=workspace, integration=integration, kind="start", name="start"
    )
    step = Element.objects.create(
        workspace=workspace,
        integration=integration,
        kind="webhook",
        name="Buyer callback",
        config={
            "endpoint": webhook_id,
            "wait": True,
            "timeout_seconds": 600,
            "rules": [
                {"conditions": [{"source": "body", "key": "status", "value": "sold"}],
                 "outcome": "accepted"}
            ],
            "captures": [
                {"source": "body", "key": "price", "target": "price"},
                {"source": "body", "key": "buyer_id", "target": "buyer_lead_id"},
            ],
        },
    )  # fmt: skip
    Connection.objects.create(
        workspace=workspace, integration=integration, from_element=start, to_element=step
    )
    return integration


def advertiser_calls(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The fake advertiser: HTTP/1.1 over a plain socket to the URL it was given (the
    product's lint keeps HTTP client libraries to integrations.outbound)."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nUser-Agent: fake-advertiser/1\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(head + payload)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_operator_copies_the_url_the_advertiser_calls_it_and_the_result_shows(
    e2e_page: Any, live_server: Any, admin_login: Any, settings: Any
) -> None:
    settings.PUBLIC_BASE_URL = live_server.url  # the URL shown is the one buyers call
    page = e2e_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    setup = make_lead_setup("Hookco")
    lead = Lead.objects.create(
        workspace=setup.workspace,
        structure=setup.structure,
        partner=setup.partner,
        source="api",
        status="approved",
        data={"g_first_name": "Jane", "g_email": "jane@hookco.example"},
    )

    # Webhooks -> endpoints -> add: name, workspace, a webhook id; pairing by pcid.
    admin_login(setup.operator.username, ENDPOINTS)
    page.locator(f'a[href="{ENDPOINTS}add/"]').first.click()
    page.fill("#id_name", "Acme callbacks")
    page.select_option("#id_workspace", label=setup.workspace.name)
    page.fill("#id_webhook_id", "wh_acme_e2e")
    page.locator('[name="_continue"]').first.click()
    endpoint = WebhookEndpoint.objects.get(webhook_id="wh_acme_e2e")
    expect(page).to_have_url(re.compile(rf"{ENDPOINTS}{endpoint.pk}/change/"))

    # The URL to give the buyer, and its copy button.
    field = page.locator("input[data-copy-source]")
    expect(field).to_have_value(re.compile(rf"^{re.escape(live_server.url)}/webhooks/wh_acme_e2e/"))
    page.locator("button[data-copy-button]").click()
    expect(page.locator("button[data-copy-button]")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == field.input_value() == endpoint.public_url()

    # A lead starts waiting on the scenario's webhook step.
    integration = scenario(setup.workspace, "wh_acme_e2e")
    run = engine.run_start(integration=integration, lead=lead)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5, hand_off=False)
    assert run.status == ScenarioRun.Status.WAITING

    # The advertiser calls the copied URL: an unknown lead first (the exact 404), then ours.
    status, answer = advertiser_calls(copied, {"pcid": "0" * 32, "status": "sold"})
    assert (status, answer) == (
        404,
        {"code": 404, "message": "Waiting Webhook not found for provided token and identifiers"},
    )
    status, answer = advertiser_calls(
        copied, {"pcid": lead.pcid, "status": "sold", "price": "42.00", "buyer_id": "ACME-77"}
    )
    assert (status, answer["code"]) == (200, 200)
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED

    # The operator sees the waiting webhook matched, with the captured values...
    waiting = WaitingWebhook.objects.get(run=run)
    page.goto(live_server.url + WAITING)
    row = page.locator("#result_list tbody tr").filter(has_text=lead.pcid)
    expect(row).to_contain_text("Matched")
    expect(row).to_contain_text("accepted")
    expect(row).to_contain_text("price=42.00")
    expect(row).to_contain_text("buyer_lead_id=ACME-77")
    page.goto(f"{live_server.url}{WAITING}{waiting.pk}/change/")
    expect(page.locator("body")).to_contain_text(f"run {run.pk} (succeeded)")

    # ...and both callbacks in the inbound log, with what came of each.
    page.goto(live_server.url + INBOUND)
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text=lead.pcid)).to_contain_text("Matched")
    expect(rows.filter(has_text="0" * 32)).to_contain_text("Not matched yet")
