"""The partner's decision through the intake API: end to end against real local fake
buyers (JSON, XML, form; accepting, rejecting, bidding, slow, failing), synchronous and
asynchronous decisions, per-request overrides, and the refusal policy's ping tree gate."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pingtree.models import Distribution, OfferResult
from structures.models import Lead, RefusalPolicy

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/leads/"


def post(client, setup, body, **headers):
    return client.post(
        URL, data=json.dumps(body), content_type="application/json", **setup.auth, **headers
    )


def sync_partner(setup, budget=10.0):
    setup.partner.decision_mode = "sync"
    setup.partner.decision_budget_seconds = budget
    setup.partner.save()


def test_end_to_end_json_xml_form_buyers_through_the_intake_api(client, setup, tree, buyers):
    sync_partner(setup)
    failing = tree.offer("Failing JSON", post=buyers.json("/fail", "boom"))
    slow = tree.offer("Slow XML", post=buyers.xml("/slow", delay=4.0), fmt="xml",
                      timeout_seconds=0.5)  # fmt: skip
    refusing = tree.offer("Refusing form", post=buyers.form("/refuse", "ERROR no coverage"),
                          fmt="form")  # fmt: skip
    json_bid = tree.offer("JSON bidder", price_model="bid", ping=buyers.json("/jp", price="7"),
                          post=buyers.json("/jx", redirect="https://buyer.test/json"))  # fmt: skip
    xml_bid = tree.offer("XML bidder", price_model="bid", fmt="xml",
                         ping=buyers.xml("/xp", price="9.50"),
                         post=buyers.xml("/xx", redirect="https://buyer.test/xml"))  # fmt: skip
    tree.tier("waterfall", failing, slow, refusing)
    tree.tier("auction", json_bid, xml_bid)

    response = post(client, setup, setup.valid_payload())
    assert response.status_code == 201
    data = response.json()
    assert data["status"] == "approved"
    assert data["decision"] == {
        "status": "sold",
        "price": "3.80",  # the partner's 40 % of 9.50
        "redirect_url": "https://buyer.test/xml",
        "reason": "",
    }
    dist = Distribution.objects.get(lead__pcid=data["id"])
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Failing JSON"].status == "error"
    assert rows["Slow XML"].status == "timeout"
    assert rows["Refusing form"].status == "rejected"
    assert rows["JSON bidder"].status == "outbid" and rows["JSON bidder"].bid == Decimal("7")
    assert rows["XML bidder"].is_sold and rows["XML bidder"].price == Decimal("9.5")
    assert (dist.revenue, dist.payout, dist.margin) == (
        Decimal("9.5"), Decimal("3.8"), Decimal("5.7"),
    )  # fmt: skip
    # GET shows the same outcome
    outcome = client.get(f"{URL}{data['id']}/", **setup.auth).json()["outcome"]
    assert outcome["distribution"]["status"] == "sold"


def test_sync_decision_unsold_gives_the_reason(client, setup, tree, buyers):
    sync_partner(setup)
    tree.tier("waterfall", tree.offer("No", post=buyers.json("/no", "rejected", reason="zip")))
    data = post(client, setup, setup.valid_payload()).json()
    assert data["decision"]["status"] == "unsold"
    assert "No: rejected (zip)" in data["decision"]["reason"]
    assert data["decision"]["price"] is None


def test_async_partner_gets_an_answer_at_once_and_reads_the_outcome_later(
    client, setup, tree, buyers, monkeypatch
):
    from pingtree import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks.distribution_start_task, "delay", queued.append)
    tree.tier("waterfall", tree.offer("Buyer", post=buyers.json("/b")))
    data = post(client, setup, setup.valid_payload()).json()
    assert data["status"] == "approved" and "decision" not in data
    assert buyers.total("/b") == 0 and len(queued) == 1  # queued on the realtime queue
    status = client.get(data["status_url"].replace("http://testserver", ""), **setup.auth)
    assert status.json()["outcome"]["distribution"]["status"] == "pending"
    tasks.distribution_start_task(queued[0])  # the worker
    outcome = client.get(f"{URL}{data['id']}/", **setup.auth).json()["outcome"]
    assert (
        outcome["distribution"]["status"] == "sold" and outcome["distribution"]["price"] == "4.00"
    )


def test_a_request_asks_for_sync_with_a_shorter_wait_and_gets_pending(
    client, setup, tree, buyers, monkeypatch
):
    from pingtree import tasks

    handed: list[int] = []
    monkeypatch.setattr(tasks.distribution_run_task, "delay", handed.append)
    slow = tree.offer("Slow", post=buyers.json("/slow", delay=2.5), timeout_seconds=5)
    fast = tree.offer("Fast", post=buyers.json("/fast"))
    tree.tier("waterfall", slow, deadline_seconds=1.5)
    tree.tier("waterfall", fast)
    response = post(client, setup, {**setup.valid_payload(), "decision": "sync", "wait": 0.5})
    data = response.json()
    assert data["decision"]["status"] == "pending"
    dist = Distribution.objects.get(lead__pcid=data["id"])
    assert dist.status == "pending" and handed == [dist.pk]  # a worker takes it over
    tasks.distribution_run_task(dist.pk)
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.attempt == 2
    rows = {r.offer.name: r.status for r in OfferResult.objects.filter(distribution=dist)}
    assert rows == {"Slow": "timeout", "Fast": "accepted"}


def test_bad_decision_options_are_refused_with_the_field(client, setup):
    response = post(client, setup, {**setup.valid_payload(), "decision": "maybe", "wait": "x"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"decision", "wait"}
    assert not Lead.objects.exists()


def test_refusal_policy_ping_tree_gate_rejects_an_unsold_lead(client, setup, tree, buyers):
    sync_partner(setup)
    RefusalPolicy.objects.filter(workspace=setup.workspace).update(
        is_enabled=True, must_pass="pingtree"
    )
    tree.tier("waterfall", tree.offer("Picky", post=buyers.json("/p", lambda r: (
        "accepted" if "sold" in r["body"] else "rejected"))))  # fmt: skip
    sold = post(client, setup, setup.valid_payload(1) | {"g_email": "sold@example.com"}).json()
    assert sold["status"] == "approved" and sold["decision"]["status"] == "sold"
    unsold = post(client, setup, setup.valid_payload(2)).json()
    assert unsold["status"] == "rejected" and unsold["decision"]["status"] == "unsold"
    lead = Lead.objects.get(pcid=unsold["id"])
    assert "No buyer bought the lead" in lead.reason


def test_refusal_policy_filters_gate_rejects_a_lead_no_offer_accepts(client, setup, tree, buyers):
    RefusalPolicy.objects.filter(workspace=setup.workspace).update(
        is_enabled=True, must_pass="filters"
    )
    tree.tier("waterfall", tree.offer(
        "CA only", post=buyers.json("/ca"), filters={"geo": {"mode": "include", "states": ["CA"]}}
    ))  # fmt: skip
    data = post(client, setup, setup.valid_payload() | {"g_state": "TX"}).json()
    lead = Lead.objects.get(pcid=data["id"])
    assert lead.status == "rejected" and "CA only" in lead.reason
    assert buyers.total("/ca") == 0


def test_schema_documents_the_decision_options(client):
    schema = client.get("/api/schema/?format=json")
    if schema.status_code == 404:
        pytest.skip("no schema URL")
    text = schema.content.decode()
    assert '"decision"' in text and '"wait"' in text and "Decision" in text


def test_a_failure_while_deciding_answers_pending_never_an_error(
    client, setup, tree, buyers, monkeypatch
):
    from pingtree import services

    sync_partner(setup)
    tree.tier("waterfall", tree.offer("Buyer", post=buyers.json("/b")))

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "distribution_run", broken)
    response = post(client, setup, setup.valid_payload())
    assert response.status_code == 201
    assert response.json()["decision"]["status"] == "pending"
    assert Lead.objects.filter(pcid=response.json()["id"]).exists()
