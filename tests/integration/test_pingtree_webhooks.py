"""The ping tree and the webhook step together: a buyer whose post answers "pending" with
its own lead id and calls back later on its webhook URL.

Real local buyers (the ping tree tests' threaded HTTP server), eager Celery (the whole
chain callback -> step task -> run_finished -> distribution task runs in the caller's
thread), the public callback URL through Django's test client, the partner's intake
API, and the sweepers driven by hand with the clock moved by time-machine. The
distribution calls buyers from the ping tree's pool threads, which have their own
database connections: the tests are transactional.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.utils import timezone

from integrations.engine import registry
from integrations.engine import services as engine
from integrations.models import Connection, Element, RunStep, ScenarioRun
from pingtree import services as pingtree
from pingtree.models import Distribution, Offer, OfferResult
from structures.models import Lead, LeadEvent
from tests.factories.structures import LeadSetup, make_lead_setup
from tests.integration.pingtree.conftest import Buyers, Tree
from webhooks import services as webhooks
from webhooks.models import InboundWebhookRequest, WaitingWebhook, WebhookEndpoint
from webhooks.step import config_check, handle

pytestmark = pytest.mark.django_db(transaction=True)

LEADS = "/api/v1/leads/"
# The exact answer when nothing waiting matches (issue 6; buyers compare it byte for byte).
NOT_FOUND_BYTES = (
    b'{"code":404,"message":"Waiting Webhook not found for provided token and identifiers"}'
)
# What the buyer's callback means: the webhook element's settings, as an operator types them.
RULES = [
    {"conditions": [{"source": "body", "key": "status", "value": "sold"}], "outcome": "accepted"},
    {"conditions": [{"source": "body", "key": "status", "value": "no"}], "outcome": "rejected",
     "reason": "the buyer said no later"},
]  # fmt: skip
CAPTURES = [{"source": "body", "key": "price", "target": "price"}]


@pytest.fixture(scope="module", autouse=True)
def pingtree_pool_stopped(django_db_setup: None) -> Iterator[None]:
    """The ping tree's pool threads hold database connections: close them afterwards."""
    yield
    pingtree.pool_shutdown()


@pytest.fixture(autouse=True)
def webhook_step_registered() -> Iterator[None]:
    # An engine test unregisters the kind to check its "no handler" path: make sure the
    # webhooks app's handler is the one installed, whatever ran before.
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


@pytest.fixture
def setup(transactional_db: None) -> LeadSetup:
    return make_lead_setup("Relayco")


@pytest.fixture
def tree(setup: LeadSetup) -> Tree:
    # 40 % to the partner; a deadline long enough for a 30 s webhook timeout inside it.
    return Tree(setup, deadline_seconds=120.0)


# --- building the asynchronous buyer --------------------------------------------------------


def pcid_endpoint(tree: Tree, webhook_id: str = "wh_async") -> tuple[WebhookEndpoint, str]:
    """An endpoint pairing by our lead id (pcid, in the query or the body)."""
    endpoint, token = webhooks.endpoint_create(
        workspace=tree.ws, name="Async buyer callbacks", webhook_id=webhook_id
    )
    return endpoint, f"/webhooks/{endpoint.webhook_id}/{token}/"


def external_endpoint(tree: Tree, webhook_id: str = "wh_async_ext") -> tuple[WebhookEndpoint, str]:
    """An endpoint pairing by the buyer's own lead id together with the advertiser id the
    callback names (no fixed advertiser on the endpoint)."""
    endpoint, token = webhooks.endpoint_create(
        workspace=tree.ws, name="Async buyer callbacks (their ids)", webhook_id=webhook_id,
        match_by=WebhookEndpoint.MatchBy.EXTERNAL_ID, id_location=WebhookEndpoint.Location.BODY,
        id_key="lead_id", advertiser_key="advertiser_id",
    )  # fmt: skip
    return endpoint, f"/webhooks/{endpoint.webhook_id}/{token}/"


def waits_for_callback(offer: Offer, webhook_id: str, **settings: Any) -> Element:
    """start(post) -> request -> webhook step, on the offer's integration. The element is
    checked the way the admin checks it (Element.clean runs the webhook step's check)."""
    integration = offer.integration
    post = Element.objects.get(
        integration=integration, kind=Element.Kind.REQUEST, request_step__meaning="post"
    )
    config: dict[str, Any] = {"endpoint": webhook_id, "wait": True, "timeout_seconds": 600,
                              "rules": RULES, "captures": CAPTURES}  # fmt: skip
    config.update(settings)
    if not config["wait"]:
        config.pop("timeout_seconds")
    step = Element(
        workspace=integration.workspace, integration=integration, kind=Element.Kind.WEBHOOK,
        name="Buyer callback", config=config,
    )  # fmt: skip
    step.full_clean()
    step.save()
    Connection.objects.create(
        workspace=integration.workspace, integration=integration, from_element=post,
        to_element=step,
    )  # fmt: skip
    return step


def async_buyer(tree: Tree, buyers: Buyers, *, webhook_id: str, name: str = "Async offer",
                buyer_id: str = "ACME-1001", **settings: Any) -> Offer:  # fmt: skip
    """An exclusive offer priced by the buyer (bid model, no ping: the price is what the
    buyer names) whose post answers {"status": "pending", "id": <its lead id>}."""
    offer = tree.offer(name, post=buyers.json("/async", "pending", id=buyer_id), price_model="bid")
    waits_for_callback(offer, webhook_id, **settings)
    return offer


def call_back(path: str, body: dict[str, Any], client: Client | None = None) -> Any:
    """What the advertiser does: POST JSON to the URL it was given."""
    return (client or Client()).post(path, json.dumps(body), content_type="application/json")


def rows(dist: Distribution) -> dict[str, OfferResult]:
    return {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}


def outcome_for_partner(client: Client, setup: LeadSetup, pcid: str) -> dict[str, Any]:
    response = client.get(f"{LEADS}{pcid}/", **setup.auth)
    assert response.status_code == 200
    return response.json()["outcome"]["distribution"]


def start_distribution(lead: Lead) -> Distribution:
    """The way production starts it: the lead-accepted task (eager here)."""
    from pingtree.tasks import distribution_start_task

    distribution_start_task.delay(lead.pk)
    return Distribution.objects.get(lead=lead)


# --- 1. pairing by pcid, the lead posted through the intake API -----------------------------


def test_a_lead_from_the_api_waits_for_the_buyers_callback_and_is_sold_at_its_price(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async")
    backup = tree.offer("Backup offer", post=buyers.json("/backup"))
    tree.tier("waterfall", offer, backup)

    response = client.post(LEADS, json.dumps(setup.valid_payload()),
                           content_type="application/json", **setup.auth)  # fmt: skip
    assert response.status_code == 201, response.content
    pcid = response.json()["id"]
    lead = Lead.objects.get(pcid=pcid)

    # The buyer was posted once, said "pending" with its id; the lead is held for it.
    dist = Distribution.objects.get(lead=lead)
    assert dist.status == "waiting"
    assert buyers.total("/async") == 1 and buyers.total("/backup") == 0
    row = rows(dist)["Async offer"]
    assert (row.status, row.post_status, row.is_sold) == ("pending", "pending", False)
    waiting = WaitingWebhook.objects.get(lead=lead)
    assert (waiting.status, waiting.is_blocking, waiting.pcid) == ("waiting", True, pcid)
    assert waiting.run_id == row.post_run_id
    assert ScenarioRun.objects.get(pk=row.post_run_id).status == "waiting"
    assert outcome_for_partner(client, setup, pcid)["status"] == "pending"

    # The advertiser calls back, paired by our lead id, naming its price.
    answer = call_back(path, {"pcid": pcid, "status": "sold", "price": "21.50"})
    assert answer.status_code == 200
    assert answer.json() == {"code": 200, "message": "Webhook received"}

    dist.refresh_from_db()
    assert dist.status == "sold" and dist.sold_count == 1
    assert (dist.revenue, dist.payout, dist.margin) == (
        Decimal("21.50"), Decimal("8.60"), Decimal("12.90"),
    )  # fmt: skip
    row.refresh_from_db()
    assert (row.status, row.post_status, row.is_sold) == ("accepted", "accepted", True)
    assert row.price == Decimal("21.50")
    assert rows(dist).keys() == {"Async offer"}  # the backup was never asked
    assert buyers.total("/backup") == 0 and buyers.total("/async") == 1
    assert ScenarioRun.objects.get(pk=row.post_run_id).status == "succeeded"
    waiting.refresh_from_db()
    assert waiting.status == "matched"
    assert LeadEvent.objects.filter(lead=lead, kind="sold").count() == 1

    # The partner reads the sale: its 40 % of the buyer's price.
    decision = outcome_for_partner(client, setup, pcid)
    assert (decision["status"], decision["price"]) == ("sold", "8.60")


def test_the_buyers_lead_id_given_at_post_is_kept_on_the_sale(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """The buyer gave its lead id in the pending answer; the sale row keeps it (operators
    reconcile with the buyer by it)."""
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async", buyer_id="ACME-777")
    tree.tier("waterfall", offer)
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    assert call_back(path, {"pcid": lead.pcid, "status": "sold", "price": "9"}).status_code == 200
    row = rows(Distribution.objects.get(pk=dist.pk))["Async offer"]
    assert row.is_sold
    assert row.buyer_lead_id == "ACME-777"


# --- 2. pairing by the buyer's lead id + advertiser -----------------------------------------


def test_the_callback_paired_by_the_buyers_id_and_advertiser_sells_the_lead(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = external_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async_ext", buyer_id="EXT-4242")
    backup = tree.offer("Backup offer", post=buyers.json("/backup"))
    tree.tier("waterfall", offer, backup)
    lead = tree.lead()
    dist = start_distribution(lead)

    assert dist.status == "waiting"
    waiting = WaitingWebhook.objects.get(lead=lead)
    # The identifiers the buyer will use: its own id (from the post's answer) and the
    # advertiser of the offer that posted (set by the ping tree).
    assert (waiting.external_id, waiting.advertiser_id) == ("EXT-4242", offer.advertiser_id)

    # Another advertiser's callback for the same buyer id, and an unknown id: the exact 404,
    # nothing changes.
    for body in (
        {"lead_id": "EXT-4242", "advertiser_id": str(offer.advertiser_id + 1000), "status": "sold"},
        {"lead_id": "EXT-0000", "advertiser_id": str(offer.advertiser_id), "status": "sold"},
    ):
        miss = call_back(path, body)
        assert miss.status_code == 404 and miss.content == NOT_FOUND_BYTES
    dist.refresh_from_db()
    waiting.refresh_from_db()
    assert dist.status == "waiting" and waiting.status == "waiting"

    answer = call_back(path, {"lead_id": "EXT-4242", "advertiser_id": str(offer.advertiser_id),
                              "status": "sold", "price": "33.10"})  # fmt: skip
    assert answer.status_code == 200
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.revenue == Decimal("33.10")
    row = rows(dist)["Async offer"]
    assert row.is_sold and row.price == Decimal("33.10")
    assert "Backup offer" not in rows(dist) and buyers.total("/backup") == 0
    assert outcome_for_partner(client, setup, lead.pcid) == {
        "status": "sold", "price": "13.24", "redirect_url": "", "reason": "",
    }  # fmt: skip


# --- 3. the waiting step times out: the tree goes on ----------------------------------------


def test_no_callback_the_step_times_out_and_the_next_offer_buys(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async", timeout_seconds=30)
    backup = tree.offer("Backup offer", post=buyers.json("/backup"), price=Decimal("12"))
    tree.tier("waterfall", offer, backup)
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    row = rows(dist)["Async offer"]

    # Before the deadline the sweepers find nothing to do.
    engine.engine_sweep()
    assert pingtree.distributions_sweep() == 0
    dist.refresh_from_db()
    assert dist.status == "waiting" and buyers.total("/backup") == 0

    # 31 s later, no callback: the sweepers of a real deployment wake the step.
    with time_machine.travel(timezone.now() + timedelta(seconds=31), tick=True):
        assert engine.engine_sweep() >= 1
        pingtree.distributions_sweep()
        webhooks.waiting_sweep()

    run = ScenarioRun.objects.get(pk=row.post_run_id)
    assert run.status == "timed_out"
    assert WaitingWebhook.objects.get(lead=lead).status == "timed_out"
    dist.refresh_from_db()
    assert dist.status == "sold", dist.reason
    results = rows(dist)
    assert results["Async offer"].status == "timeout" and not results["Async offer"].is_sold
    assert results["Backup offer"].is_sold and dist.revenue == Decimal("12")
    assert buyers.total("/backup") == 1 and buyers.total("/async") == 1
    assert outcome_for_partner(client, setup, lead.pcid)["status"] == "sold"

    # Too late: the callback after the timeout is the 404 and sells nothing.
    late = call_back(path, {"pcid": lead.pcid, "status": "sold", "price": "99"})
    assert late.status_code == 404 and late.content == NOT_FOUND_BYTES
    dist.refresh_from_db()
    assert dist.sold_count == 1 and dist.revenue == Decimal("12")


def test_a_missed_run_finished_signal_is_caught_by_the_ping_tree_sweeper(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """The run timed out but the signal never reached the ping tree (a crash between the
    commit and the signal): the ping tree's own sweeper continues the distribution."""
    from integrations.engine.signals import run_finished
    from pingtree import receivers

    _endpoint, _path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async", timeout_seconds=30)
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    start = timezone.now()

    run_finished.disconnect(dispatch_uid="pingtree.run_finished")
    try:
        with time_machine.travel(start + timedelta(seconds=31), tick=True):
            engine.engine_sweep()
    finally:
        receivers.connect()
    run = ScenarioRun.objects.get(pk=rows(dist)["Async offer"].post_run_id)
    assert run.status == "timed_out"
    dist.refresh_from_db()
    assert dist.status == "waiting" and buyers.total("/backup") == 0

    with time_machine.travel(start + timedelta(seconds=62), tick=True):
        assert pingtree.distributions_sweep() == 1
    dist.refresh_from_db()
    assert dist.status == "sold" and rows(dist)["Backup offer"].is_sold
    assert rows(dist)["Async offer"].status == "timeout"


def test_with_the_default_settings_a_timed_out_webhook_lets_the_tree_go_on(
    setup: LeadSetup, buyers: Buyers
) -> None:
    """A tree and a webhook step as they come (tree deadline 30 s, webhook timeout
    300 s): issue 6 says the run is timed out and the ping tree moves on to the next
    offer, and the step's timeout is accepted by its settings check."""
    tree = Tree(setup)  # the model's defaults
    default_deadline = tree.tree.deadline_seconds
    endpoint, _path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id=endpoint.webhook_id)
    step = Element.objects.get(integration=offer.integration, kind=Element.Kind.WEBHOOK)
    step.config.pop("timeout_seconds")  # the step's default
    step.full_clean()
    step.save()
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    waiting = WaitingWebhook.objects.get(lead=lead)
    timeout = (waiting.deadline_at - waiting.created_at).total_seconds()
    assert timeout > default_deadline  # 300 s against 30 s

    with time_machine.travel(waiting.deadline_at + timedelta(seconds=1), tick=True):
        engine.engine_sweep()
        pingtree.distributions_sweep()
    run = ScenarioRun.objects.get(pk=rows(dist)["Async offer"].post_run_id)
    assert run.status == "timed_out"
    dist.refresh_from_db()
    results = rows(dist)
    assert results["Async offer"].status == "timeout"
    assert buyers.total("/backup") == 1, results["Backup offer"].reason
    assert dist.status == "sold" and results["Backup offer"].is_sold


# --- 4. a webhook step that does not hold the lead --------------------------------------------


def test_without_wait_the_tree_moves_on_and_a_later_callback_does_not_sell_twice(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async", wait=False)
    backup = tree.offer("Backup offer", post=buyers.json("/backup"), price=Decimal("12"))
    tree.tier("waterfall", offer, backup)
    lead = tree.lead()
    dist = start_distribution(lead)

    # The tree took the "pending" answer and went on at once: the backup bought.
    assert dist.status == "sold"
    results = rows(dist)
    assert results["Async offer"].status == "pending" and not results["Async offer"].is_sold
    assert results["Backup offer"].is_sold and dist.revenue == Decimal("12")
    waiting = WaitingWebhook.objects.get(lead=lead)
    assert (waiting.status, waiting.is_blocking) == ("waiting", False)
    run = ScenarioRun.objects.get(pk=results["Async offer"].post_run_id)
    assert run.status == "waiting"  # still matchable

    # Later the buyer says it bought too: the callback is processed (the waiting row is
    # matched, the run resumes and reads the price)...
    answer = call_back(path, {"pcid": lead.pcid, "status": "sold", "price": "40"})
    assert answer.status_code == 200
    waiting.refresh_from_db()
    run.refresh_from_db()
    assert waiting.status == "matched"
    assert run.status == "succeeded"
    assert run.result["kind"] == "accepted" and run.result["captured"]["price"] == "40"
    # ...but the exclusive lead stays sold once, to the backup, at the backup's price.
    dist.refresh_from_db()
    assert (dist.status, dist.sold_count, dist.revenue) == ("sold", 1, Decimal("12"))
    assert list(
        OfferResult.objects.filter(distribution=dist, is_sold=True).values_list(
            "offer__name", flat=True
        )
    ) == ["Backup offer"]
    assert LeadEvent.objects.filter(lead=lead, kind="sold").count() == 1
    assert outcome_for_partner(client, setup, lead.pcid)["price"] == "4.80"


# --- 5. the same callback twice -----------------------------------------------------------------


def test_the_same_callback_twice_gets_two_2xx_and_sells_the_lead_once(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async")
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    body = {"pcid": lead.pcid, "status": "sold", "price": "21.50"}

    first, second = call_back(path, body), call_back(path, body)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == {"code": 200, "message": "Webhook already received"}
    # A third, saying the opposite, changes nothing either.
    assert call_back(path, {**body, "status": "no"}).status_code == 200

    statuses = sorted(
        InboundWebhookRequest.objects.filter(identifier=lead.pcid).values_list("status", flat=True)
    )
    assert statuses == ["duplicate", "duplicate", "matched"]
    dist.refresh_from_db()
    assert (dist.status, dist.sold_count, dist.revenue) == ("sold", 1, Decimal("21.50"))
    row = rows(dist)["Async offer"]
    assert row.is_sold and row.price == Decimal("21.50")
    step = RunStep.objects.get(run_id=row.post_run_id, element__kind=Element.Kind.WEBHOOK)
    assert step.status == "done" and step.output["outcome"]["kind"] == "accepted"
    assert LeadEvent.objects.filter(lead=lead, kind="sold").count() == 1
    assert buyers.total("/backup") == 0


def test_two_identical_callbacks_at_the_same_moment_sell_the_lead_once(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async")
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    body = {"pcid": lead.pcid, "status": "sold", "price": "21.50"}
    barrier = threading.Barrier(2)
    answers: list[tuple[int, dict[str, Any]]] = []
    errors: list[BaseException] = []

    def advertiser() -> None:
        try:
            client = Client()
            barrier.wait(timeout=10)
            response = call_back(path, body, client)
            answers.append((response.status_code, response.json()))
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=advertiser) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(code for code, _ in answers) == [200, 200]
    assert sorted(a["message"] for _, a in answers) == [
        "Webhook already received", "Webhook received",
    ]  # fmt: skip
    dist.refresh_from_db()
    assert (dist.status, dist.sold_count, dist.revenue) == ("sold", 1, Decimal("21.50"))
    assert OfferResult.objects.filter(distribution=dist, is_sold=True).count() == 1
    assert LeadEvent.objects.filter(lead=lead, kind="sold").count() == 1
    assert buyers.total("/backup") == 0


# --- 6. what the operator sees while the lead waits ---------------------------------------------


def test_the_distribution_page_says_the_lead_waits_for_the_buyers_callback(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, _path = pcid_endpoint(tree)
    tree.tier("waterfall", async_buyer(tree, buyers, webhook_id="wh_async"))
    dist = start_distribution(tree.lead())
    assert dist.status == "waiting"
    client.force_login(setup.operator)
    page = client.get(f"/admin/pingtree/distribution/{dist.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    # The offer's row says it (escaped apostrophe)...
    assert "Post pending: waiting for the buyer&#x27;s callback" in html
    # ...and so does the line above the table (it once said "Not sold").
    line = re.search(r'id="winner-line">(.*?)</p>', html, re.S)
    assert line is not None
    assert "Not sold" not in line.group(1)
    assert "Waiting for a buyer&#x27;s callback" in line.group(1)


# --- 7. more of the seam: an early callback, a synchronous partner, an auction ------------------


def test_a_callback_sent_before_the_post_is_answered_is_matched_when_the_lead_parks(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """The buyer calls back while our post is still in flight (before any waiting row
    exists): the callback is stored unmatched (404), and the webhook step takes it when
    it parks, so the lead is sold at once without waiting."""
    _endpoint, path = pcid_endpoint(tree)
    early: list[int] = []

    def calls_back_first(request: dict[str, Any]) -> tuple[int, str, str]:
        try:
            pcid = request["query"]["lead"][0]
            answer = call_back(path, {"pcid": pcid, "status": "sold", "price": "17"})
            early.append(answer.status_code)
        finally:
            connection.close()  # this server thread's own connection
        return 200, "application/json", json.dumps({"status": "pending", "id": "EARLY-1"})

    offer = tree.offer("Async offer", post=buyers.url("/early"), price_model="bid")
    buyers.handlers["/early"] = calls_back_first
    waits_for_callback(offer, "wh_async")
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = start_distribution(lead)

    assert early == [404]  # nothing was waiting yet
    assert dist.status == "sold", dist.reason
    assert dist.revenue == Decimal("17")
    assert rows(dist)["Async offer"].is_sold and buyers.total("/backup") == 0
    waiting = WaitingWebhook.objects.get(lead=lead)
    assert waiting.status == "matched"
    inbound = InboundWebhookRequest.objects.get(identifier=lead.pcid)
    assert (inbound.status, inbound.waiting_id) == ("matched", waiting.pk)


def test_a_synchronous_partner_gets_pending_within_its_budget_then_reads_the_sale(
    client: Client, setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """A partner waiting synchronously is not held past its budget by a buyer that
    answers later: it is told "pending", and reads the sale once the callback came."""
    import time

    setup.partner.decision_mode = "sync"
    setup.partner.decision_budget_seconds = 1.0
    setup.partner.save()
    _endpoint, path = pcid_endpoint(tree)
    tree.tier("waterfall", async_buyer(tree, buyers, webhook_id="wh_async"))
    started = time.monotonic()
    response = client.post(LEADS, json.dumps(setup.valid_payload()),
                           content_type="application/json", **setup.auth)  # fmt: skip
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["decision"]["status"] == "pending"
    assert elapsed < 1.0 + 9.0  # its budget (not the step's 600 s), slack for a loaded machine
    assert Distribution.objects.get(lead__pcid=data["id"]).status == "waiting"

    assert call_back(path, {"pcid": data["id"], "status": "sold", "price": "20"}).status_code == 200
    decision = outcome_for_partner(client, setup, data["id"])
    assert (decision["status"], decision["price"]) == ("sold", "8.00")


def test_in_an_auction_a_callback_rejection_passes_the_lead_to_the_next_bidder(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    _endpoint, path = pcid_endpoint(tree)
    top = tree.offer("Top bidder", price_model="bid", ping=buyers.json("/top-ping", price="30"),
                     post=buyers.json("/top", "pending", id="TOP-1"))  # fmt: skip
    waits_for_callback(top, "wh_async")
    second = tree.offer("Second bidder", price_model="bid",
                        ping=buyers.json("/second-ping", price="20"),
                        post=buyers.json("/second"))  # fmt: skip
    tree.tier("auction", top, second)
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    assert (buyers.total("/top"), buyers.total("/second")) == (1, 0)

    no = call_back(path, {"pcid": lead.pcid, "status": "no"})
    assert no.status_code == 200
    dist.refresh_from_db()
    results = rows(dist)
    assert results["Top bidder"].status == "rejected"
    assert buyers.total("/second") == 1, results["Second bidder"].reason
    assert dist.status == "sold" and results["Second bidder"].is_sold
    assert dist.revenue == Decimal("20")


def test_a_cap_is_held_while_the_lead_waits_and_freed_when_the_callback_rejects(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """Sold cap 1 a day on the buyer that answers later: the waiting lead holds the cap
    (another lead skips the offer), a rejecting callback frees it, and the next lead's
    sale uses it: the cap is never exceeded."""
    from pingtree.models import CapCounter

    _endpoint, path = pcid_endpoint(tree)
    offer = async_buyer(tree, buyers, webhook_id="wh_async")
    cap = tree.cap(offer, 1, metric="sold", period="day")
    tree.tier("waterfall", offer, tree.offer("Backup offer", post=buyers.json("/backup")))

    first = start_distribution(tree.lead(1))
    assert first.status == "waiting"
    second = start_distribution(tree.lead(2))
    assert second.status == "sold"
    skipped = rows(second)["Async offer"]
    assert skipped.status == "skipped" and skipped.reason.startswith("cap reached")
    assert buyers.total("/async") == 1

    no = call_back(path, {"pcid": first.lead.pcid, "status": "no"})
    assert no.status_code == 200
    first.refresh_from_db()
    assert first.status == "sold" and rows(first)["Backup offer"].is_sold
    assert rows(first)["Async offer"].status == "rejected"

    third = start_distribution(tree.lead(3))
    assert third.status == "waiting" and buyers.total("/async") == 2
    yes = call_back(path, {"pcid": third.lead.pcid, "status": "sold", "price": "15"})
    assert yes.status_code == 200
    third.refresh_from_db()
    assert third.status == "sold" and rows(third)["Async offer"].is_sold
    used = CapCounter.objects.filter(cap=cap).values_list("used", flat=True)
    assert list(used) == [Decimal("1")]


# --- 8. races and the stable URL ---------------------------------------------------------------


def test_a_callback_between_the_run_parking_and_the_tree_waiting_still_sells_the_lead(
    setup: LeadSetup, tree: Tree, buyers: Buyers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buyer calls back after its run parked but before the distribution is marked
    waiting: run_finished finds no waiting distribution, so the ping tree's own look
    after parking must continue it (no lead left waiting for a callback already taken)."""
    _endpoint, path = pcid_endpoint(tree)
    tree.tier("waterfall", async_buyer(tree, buyers, webhook_id="wh_async"),
              tree.offer("Backup offer", post=buyers.json("/backup")))  # fmt: skip
    lead = tree.lead()
    answers: list[int] = []
    original = pingtree._Driver._park

    def callback_first(driver: Any, row: OfferResult, outcome: Any) -> None:
        body = {"pcid": lead.pcid, "status": "sold", "price": "19"}
        answers.append(call_back(path, body).status_code)
        original(driver, row, outcome)

    monkeypatch.setattr(pingtree._Driver, "_park", callback_first)
    dist = start_distribution(lead)

    assert answers == [200]
    dist.refresh_from_db()
    assert dist.status == "sold", dist.reason
    assert dist.revenue == Decimal("19") and rows(dist)["Async offer"].is_sold
    assert buyers.total("/backup") == 0


def test_a_recreated_endpoint_with_the_same_webhook_id_still_sells_the_waiting_lead(
    setup: LeadSetup, tree: Tree, buyers: Buyers
) -> None:
    """The operator deletes the endpoint and makes a new one with the same webhook id
    while a lead waits: the buyer's URL is unchanged and its callback sells the lead."""
    endpoint, path = pcid_endpoint(tree)
    tree.tier("waterfall", async_buyer(tree, buyers, webhook_id="wh_async"))
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"

    webhooks.endpoint_delete(endpoint=endpoint)
    gone = call_back(path, {"pcid": lead.pcid, "status": "sold", "price": "5"})
    assert gone.status_code == 404 and gone.content == NOT_FOUND_BYTES
    again, token = webhooks.endpoint_create(
        workspace=tree.ws, name="Async buyer callbacks", webhook_id="wh_async"
    )
    assert f"/webhooks/{again.webhook_id}/{token}/" == path

    answer = call_back(path, {"pcid": lead.pcid, "status": "sold", "price": "26"})
    assert answer.status_code == 200
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.revenue == Decimal("26")
    assert WaitingWebhook.objects.get(lead=lead).endpoint_id == again.pk


def test_a_callback_at_the_moment_the_timeout_fires_counts_instead_of_the_timeout(
    setup: LeadSetup, tree: Tree, buyers: Buyers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's deadline passed and the sweeper is running its timeout visit when the
    buyer's callback claims the waiting row: the callback counts (the lead is sold at its
    price), the timeout does not, and the backup is never asked."""
    _endpoint, path = pcid_endpoint(tree)
    tree.tier("waterfall", async_buyer(tree, buyers, webhook_id="wh_async", timeout_seconds=30),
              tree.offer("Backup offer", post=buyers.json("/backup")))  # fmt: skip
    lead = tree.lead()
    dist = start_distribution(lead)
    assert dist.status == "waiting"
    answers: list[int] = []
    original = webhooks.waiting_expire

    def callback_meanwhile(*, call: Any, config: Any) -> Any:
        body = {"pcid": lead.pcid, "status": "sold", "price": "23"}
        answers.append(call_back(path, body).status_code)
        return original(call=call, config=config)

    monkeypatch.setattr(webhooks, "waiting_expire", callback_meanwhile)
    with time_machine.travel(timezone.now() + timedelta(seconds=31), tick=True):
        engine.engine_sweep()

    assert answers == [200]
    run = ScenarioRun.objects.get(pk=rows(dist)["Async offer"].post_run_id)
    assert run.status == "succeeded"
    assert WaitingWebhook.objects.get(lead=lead).status == "matched"
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.revenue == Decimal("23")
    assert rows(dist)["Async offer"].is_sold and buyers.total("/backup") == 0
