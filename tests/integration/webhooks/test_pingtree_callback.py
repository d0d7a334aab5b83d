"""The webhook step in a real ping tree: a buyer that answers "pending" and calls back
on its webhook URL holds the lead (blocking) until the callback sells it or rejects it
(the tree goes on), or its timeout passes (the tree goes on)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from integrations.engine import services as engine
from integrations.models import Connection, Element, RunStep
from pingtree.models import OfferResult
from tests.factories.structures import make_lead_setup
from tests.integration.pingtree.conftest import Buyers, Tree, distribute
from webhooks import services
from webhooks.models import WaitingWebhook

NOT_FOUND = b'{"code":404,"message":"Waiting Webhook not found for provided token and identifiers"}'


@pytest.fixture(scope="module", autouse=True)
def pingtree_pool_stopped(django_db_setup: None) -> Iterator[None]:
    """The ping tree's pool threads hold database connections: close them afterwards."""
    yield
    from pingtree.services import pool_shutdown

    pool_shutdown()


@pytest.fixture
def buyers() -> Iterator[Buyers]:
    server = Buyers()
    yield server
    server.close()


@pytest.fixture
def tree(transactional_db: None) -> Tree:
    return Tree(make_lead_setup())


def calls_back(tree: Tree, offer, *, timeout: int = 600) -> tuple[str, Element]:
    """Add a webhook step after the offer's post request; returns the endpoint's path."""
    endpoint, token = services.endpoint_create(
        workspace=tree.ws, name="Callbacks", webhook_id=f"wh_{offer.pk}",
        advertiser=tree.advertiser,
    )  # fmt: skip
    integration = offer.integration
    post = Element.objects.get(integration=integration, kind="request")
    step = Element.objects.create(
        workspace=tree.ws, integration=integration, kind="webhook", name="Buyer callback",
        config={
            "endpoint": endpoint.webhook_id, "wait": True, "timeout_seconds": timeout,
            "rules": [{"conditions": [{"source": "body", "key": "status", "value": "sold"}],
                       "outcome": "accepted"},
                      {"conditions": [{"source": "body", "key": "status", "value": "no"}],
                       "outcome": "rejected"}],
            "captures": [{"source": "body", "key": "price", "target": "price"}],
        },
    )  # fmt: skip
    Connection.objects.create(
        workspace=tree.ws, integration=integration, from_element=post, to_element=step
    )
    return f"/webhooks/{endpoint.webhook_id}/{token}/", step


def test_the_buyers_callback_sells_the_lead_at_the_price_it_names(tree, buyers):
    offer = tree.offer(
        "Calls back", post=buyers.json("/cb", "pending", id="ACME-1"), price_model="bid"
    )
    path, _step = calls_back(tree, offer)
    tree.tier("waterfall", offer, tree.offer("Backup", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = distribute(lead)
    assert dist.status == "waiting"
    assert WaitingWebhook.objects.get(lead=lead).is_blocking

    response = Client().post(
        path, {"pcid": lead.pcid, "status": "sold", "price": "21.50"},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 200
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.revenue == Decimal("21.50")
    assert buyers.total("/backup") == 0
    # the buyer's own id, given in its pending answer to the post, stays on the sale
    assert OfferResult.objects.get(distribution=dist, offer=offer).buyer_lead_id == "ACME-1"
    # the buyer's retry changes nothing
    again = Client().post(
        path, {"pcid": lead.pcid, "status": "no"}, content_type="application/json"
    )
    assert again.status_code == 200
    dist.refresh_from_db()
    assert dist.status == "sold"


def test_a_rejecting_callback_lets_the_tree_go_on(tree, buyers):
    offer = tree.offer("Calls back", post=buyers.json("/cb", "pending"))
    path, _step = calls_back(tree, offer)
    tree.tier("waterfall", offer, tree.offer("Backup", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = distribute(lead)
    response = Client().post(path, {"pcid": lead.pcid, "status": "no"},
                             content_type="application/json")  # fmt: skip
    assert response.status_code == 200
    dist.refresh_from_db()
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Calls back"].status == "rejected" and rows["Backup"].is_sold


def test_the_webhook_timeout_lets_the_tree_go_on_and_a_late_callback_is_a_404(tree, buyers):
    offer = tree.offer("Calls back", post=buyers.json("/cb", "pending"))
    path, step = calls_back(tree, offer, timeout=30)
    tree.tier("waterfall", offer, tree.offer("Backup", post=buyers.json("/backup")))
    lead = tree.lead()
    dist = distribute(lead)
    assert dist.status == "waiting"
    row = OfferResult.objects.get(distribution=dist, offer=offer)
    parked = RunStep.objects.get(run=row.post_run, element=step)
    RunStep.objects.filter(pk=parked.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    engine.steps_drive(deadline_seconds=10)  # what the sweeper does when the time comes
    dist.refresh_from_db()
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Backup"].is_sold
    assert rows["Calls back"].status != "sold"
    late = Client().post(path, {"pcid": lead.pcid, "status": "sold"},
                         content_type="application/json")  # fmt: skip
    assert late.status_code == 404 and late.content == NOT_FOUND
