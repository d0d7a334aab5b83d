"""Acceptance of issue 6 in a real browser, through the ping tree: a partner posts a lead
through the intake API; the ping tree posts it to a buyer that answers "pending" and
holds the lead on its webhook step; the operator logs into the admin, opens the buyer's
webhook endpoint and copies its URL; a local fake advertiser calls that URL over HTTP on
the live server; the operator then sees the lead sold to that offer at the price the
advertiser named."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from integrations.engine import registry
from integrations.models import Connection, Element
from pingtree.models import Distribution
from structures.models import Lead
from tests.factories.structures import make_lead_setup
from tests.integration.pingtree.conftest import Buyers, Tree
from webhooks import services as webhooks
from webhooks.models import WaitingWebhook
from webhooks.step import config_check, handle

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENDPOINTS = "/admin/webhooks/webhookendpoint/"
WAITING = "/admin/webhooks/waitingwebhook/"
DISTRIBUTIONS = "/admin/pingtree/distribution/"


@pytest.fixture(autouse=True)
def webhook_step_registered() -> Iterator[None]:
    # An engine test unregisters the kind to check its "no handler" path.
    previous = registry.ELEMENT_HANDLERS.get(Element.Kind.WEBHOOK)
    registry.register_element(Element.Kind.WEBHOOK, handle, check=config_check)
    yield
    if previous is not None:
        registry.ELEMENT_HANDLERS[Element.Kind.WEBHOOK] = previous


@pytest.fixture
def buyers() -> Iterator[Buyers]:
    server = Buyers()
    yield server
    server.close()
    from pingtree.services import pool_shutdown

    # The ping tree's pool threads hold connections to the test database: close them
    # before pytest-django flushes it.
    pool_shutdown()


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
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as conn:
        conn.sendall(head + payload)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def wait_for(lead: Lead, statuses: tuple[str, ...], seconds: float = 20) -> Distribution | None:
    deadline = time.monotonic() + seconds
    dist = None
    while time.monotonic() < deadline:
        dist = Distribution.objects.filter(lead=lead).first()
        if dist is not None and dist.status in statuses:
            break
        time.sleep(0.2)
    return dist


def test_operator_copies_the_endpoint_url_the_advertiser_calls_it_and_the_sale_shows(
    e2e_page: Any, live_server: Any, admin_login: Any, settings: Any, buyers: Buyers
) -> None:
    settings.PUBLIC_BASE_URL = live_server.url  # the URL shown is the one buyers call
    page = e2e_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    setup = make_lead_setup("Salesco")
    tree = Tree(setup, deadline_seconds=120.0)  # advertiser "Buyer Co", partner payout 40 %

    # The buyer's endpoint, and its offer: post -> "pending" + its id -> wait for the callback.
    endpoint, _token = webhooks.endpoint_create(
        workspace=setup.workspace, name="Buyer Co callbacks", webhook_id="wh_buyerco"
    )
    offer = tree.offer("Async offer", post=buyers.json("/async", "pending", id="BCO-9"),
                       price_model="bid")  # fmt: skip
    post = Element.objects.get(integration=offer.integration, kind=Element.Kind.REQUEST)
    step = Element(
        workspace=setup.workspace, integration=offer.integration, kind=Element.Kind.WEBHOOK,
        name="Buyer callback",
        config={
            "endpoint": "wh_buyerco", "wait": True, "timeout_seconds": 600,
            "rules": [{"conditions": [{"source": "body", "key": "status", "value": "sold"}],
                       "outcome": "accepted"}],
            "captures": [{"source": "body", "key": "price", "target": "price"}],
        },
    )  # fmt: skip
    step.full_clean()
    step.save()
    Connection.objects.create(
        workspace=setup.workspace, integration=offer.integration, from_element=post,
        to_element=step,
    )  # fmt: skip
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))

    # A partner posts a lead; the ping tree holds it for the buyer's callback.
    answer = page.request.post(
        live_server.url + "/api/v1/leads/",
        data=setup.valid_payload(1),
        headers={"Authorization": f"Api-Key {setup.key}"},
    )
    assert answer.status == 201, answer.text()
    pcid = answer.json()["id"]
    lead = Lead.objects.get(pcid=pcid)
    dist = wait_for(lead, ("waiting", "sold", "unsold"))
    assert dist is not None and dist.status == "waiting", dist and (dist.status, dist.reason)
    assert buyers.total("/async") == 1 and buyers.total("/backup") == 0

    # The operator opens the buyer's endpoint from the list and copies its URL.
    admin_login(setup.operator.username, ENDPOINTS)
    page.locator("#result_list a", has_text="Buyer Co callbacks").first.click()
    expect(page).to_have_url(re.compile(rf"{ENDPOINTS}{endpoint.pk}/change/"))
    field = page.locator("input[data-copy-source]").first
    expect(field).to_have_value(re.compile(rf"^{re.escape(live_server.url)}/webhooks/wh_buyerco/"))
    shown = field.input_value()
    page.locator("button[data-copy-button]").first.click()
    expect(page.locator("button[data-copy-button]").first).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown

    # The lead is listed as waiting on that endpoint.
    page.goto(live_server.url + WAITING)
    waiting_row = page.locator("#result_list tbody tr").filter(has_text=pcid)
    expect(waiting_row).to_contain_text("Waiting")

    # The advertiser calls the URL it was given, for our lead, with its price.
    status, body = advertiser_calls(copied, {"pcid": pcid, "status": "sold", "price": "21.50"})
    assert (status, body) == (200, {"code": 200, "message": "Webhook received"})
    dist = wait_for(lead, ("sold", "unsold"))
    assert dist is not None and dist.status == "sold", dist and (dist.status, dist.reason)
    assert dist.revenue == Decimal("21.50")
    assert WaitingWebhook.objects.get(lead=lead).status == "matched"

    # The operator finds the lead's distribution and sees the sale: offer, buyer, price.
    page.goto(live_server.url + DISTRIBUTIONS + f"?q={pcid}")
    page.locator(f"#result_list a[href*='{DISTRIBUTIONS}{dist.pk}/change/']").first.click()
    expect(page).to_have_url(re.compile(rf"{DISTRIBUTIONS}{dist.pk}/change/"))
    winner = page.locator("#winner-line")
    expect(winner).to_contain_text("Sold to Async offer (Buyer Co)")
    expect(winner).to_contain_text("for 21.50")
    table = page.locator("#results-table")
    won = table.locator('tr[data-offer="Async offer"]')
    expect(won).to_contain_text("won")
    expect(won.locator(".result-why")).to_contain_text("Won: the buyer accepted the lead")
    expect(won.locator(".result-why")).to_contain_text("21.50")
    expect(table.locator('tr[data-offer="Backup offer"]')).to_have_count(0)
    assert buyers.total("/backup") == 0

    # The lead's own page shows the same sale in its ping tree panel.
    page.goto(f"{live_server.url}/admin/structures/lead/{lead.pk}/change/")
    panel = page.locator("#lead-distribution")
    expect(panel).to_contain_text("Sold")
    expect(panel.locator("#winner-line")).to_contain_text("Sold to Async offer (Buyer Co)")
    expect(panel.locator("#winner-line")).to_contain_text("for 21.50")

    # The partner reads the same outcome: sold, its 40 % of the buyer's price.
    status_answer = page.request.get(
        f"{live_server.url}/api/v1/leads/{pcid}/",
        headers={"Authorization": f"Api-Key {setup.key}"},
    )
    assert status_answer.json()["outcome"]["distribution"]["status"] == "sold"
    assert status_answer.json()["outcome"]["distribution"]["price"] == "8.60"
