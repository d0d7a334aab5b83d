"""Concurrency and recovery on the real database: caps never exceeded, a lead never
sold twice, a driver lost mid-tree re-driven by the sweeper to exactly one outcome, and
a buyer answering by callback (a blocking webhook step) continuing the distribution."""

from __future__ import annotations

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from integrations.engine import services as engine
from integrations.models import Connection, Element, RunStep, ScenarioRun
from pingtree import services
from pingtree.models import CapCounter, Distribution, OfferResult
from structures.models import LeadEvent
from tests.integration.pingtree.conftest import add_callback, distribute

pytestmark = pytest.mark.django_db(transaction=True)


def in_threads(n, target):
    """Run target(i) in n threads released together; each closes its connection."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_cap_is_never_exceeded_under_concurrency(tree, buyers):
    capped = tree.offer("Capped", post=buyers.json("/capped", delay=0.05))
    tree.cap(capped, 10)
    tree.cap(capped, 10, metric="sent", period="hour")
    tree.tier("waterfall", capped)
    leads = [tree.lead(i) for i in range(50)]
    in_threads(50, lambda i: distribute(leads[i]))
    dists = Distribution.objects.filter(lead__in=leads)
    assert dists.count() == 50
    assert dists.filter(status="sold").count() == 10
    assert dists.filter(status="unsold").count() == 40
    assert buyers.total("/capped") == 10  # nobody was even posted past the cap
    assert sorted(c.used for c in CapCounter.objects.all()) == [Decimal("10"), Decimal("10")]
    assert OfferResult.objects.filter(is_sold=True).count() == 10


def test_a_lead_driven_by_ten_workers_at_once_is_sold_once(tree, buyers):
    a = tree.offer("A", post=buyers.json("/a", delay=0.1))
    b = tree.offer("B", post=buyers.json("/b"))
    tree.tier("waterfall", a, b)
    lead = tree.lead()
    dist = services.distribution_ensure(lead=lead)
    in_threads(10, lambda i: services.distribution_run(distribution_id=dist.pk))
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.sold_count == 1 and dist.attempt == 1
    assert buyers.total("/a") == 1 and buyers.total("/b") == 0
    assert LeadEvent.objects.filter(lead=lead, kind="sold").count() == 1


def test_a_driver_lost_mid_post_is_redriven_by_the_sweeper_to_one_outcome(tree, buyers):
    lost = tree.offer("Lost", post=buyers.json("/lost"))
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.cap(lost, 5)
    tier = tree.tier("waterfall", lost, backup)
    lead = tree.lead()
    dist = services.distribution_ensure(lead=lead)
    # A driver claims the lead, reserves the cap, starts the post... and dies.
    claimed = services._claim(dist.pk)
    driver = services._Driver(dist=claimed, lead=lead, budget_seconds=None)
    row = driver._open(lost, tier)
    cand = services._Candidate(offer=lost, priority=0, weight=100)
    assert driver._reserve(cand, row) == ""
    run = engine.run_start(integration=lost.integration, lead=lead, meaning="post")
    OfferResult.objects.filter(pk=row.pk).update(stage="posted", post_run=run)
    assert CapCounter.objects.get().used == 1
    # Nothing happens before the lease runs out ...
    assert services.distributions_sweep() == 0
    Distribution.objects.filter(pk=dist.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1),
        next_check_at=timezone.now() - timedelta(seconds=1),
        deadline_at=timezone.now() + timedelta(seconds=10),
    )
    # ... then the sweeper re-drives it (the task runs eagerly here).
    assert services.distributions_sweep() == 1
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.attempt == 2 and dist.sold_count == 1
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Lost"].status == "error" and "lost mid-post" in rows["Lost"].reason
    assert ScenarioRun.objects.get(pk=run.pk).status == "cancelled"
    assert rows["Backup"].is_sold
    assert buyers.total("/lost") == 0 and buyers.total("/backup") == 1
    assert CapCounter.objects.get().used == 0  # the lost attempt gave its reservation back
    assert LeadEvent.objects.filter(lead=lead, kind__in=["sold", "unsold"]).count() == 1
    # A second sweep finds nothing left to do.
    assert services.distributions_sweep() == 0


def test_a_driver_lost_mid_direct_post_is_redriven_to_one_outcome_without_posting_again(
    tree, buyers
):
    """A buyer called directly (no scenario run): the row said "posted" before the call,
    so the next driver records the lost post as an error and never posts it again."""
    lost = tree.offer("Lost", post=buyers.json("/lost"))
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.cap(lost, 5)
    tier = tree.tier("waterfall", lost, backup)
    lead = tree.lead()
    dist = services.distribution_ensure(lead=lead)
    claimed = services._claim(dist.pk)
    driver = services._Driver(dist=claimed, lead=lead, budget_seconds=None)
    row = driver._open(lost, tier)
    cand = services._Candidate(offer=lost, priority=0, weight=100)
    assert driver._reserve(cand, row) == ""
    assert driver._direct(lost, "post", fresh=True) is not None  # a direct call
    OfferResult.objects.filter(pk=row.pk).update(stage="posted")  # ... and it dies
    assert CapCounter.objects.get().used == 1
    Distribution.objects.filter(pk=dist.pk).update(
        lease_until=timezone.now() - timedelta(seconds=1),
        next_check_at=timezone.now() - timedelta(seconds=1),
        deadline_at=timezone.now() + timedelta(seconds=10),
    )
    assert services.distributions_sweep() == 1
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.attempt == 2 and dist.sold_count == 1
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Lost"].status == "error" and "lost mid-post" in rows["Lost"].reason
    assert rows["Lost"].post_run is None and rows["Lost"].post_log is None
    assert rows["Backup"].is_sold and rows["Backup"].post_log is not None
    assert buyers.total("/lost") == 0 and buyers.total("/backup") == 1
    assert CapCounter.objects.get().used == 0  # the lost attempt gave its reservation back
    assert LeadEvent.objects.filter(lead=lead, kind__in=["sold", "unsold"]).count() == 1
    assert services.distributions_sweep() == 0


def test_a_lost_driver_past_the_deadline_ends_unsold_once(tree, buyers):
    offer = tree.offer("Only", post=buyers.json("/only"))
    tree.tier("waterfall", offer)
    lead = tree.lead()
    dist = services.distribution_ensure(lead=lead)
    services._claim(dist.pk)
    past = timezone.now() - timedelta(seconds=5)
    Distribution.objects.filter(pk=dist.pk).update(
        lease_until=past, next_check_at=past, deadline_at=past
    )
    services.distributions_sweep()
    dist.refresh_from_db()
    assert dist.status == "unsold" and "deadline" in dist.reason
    assert OfferResult.objects.get(distribution=dist).status == "skipped"
    assert buyers.total("/only") == 0


def test_approved_leads_without_a_distribution_are_started_by_the_sweeper(tree, buyers):
    tree.tier("waterfall", tree.offer("B", post=buyers.json("/b")))
    lead = tree.lead()
    from structures.models import Lead

    Lead.objects.filter(pk=lead.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert services.distributions_sweep() == 1
    assert Distribution.objects.get(lead=lead).status == "sold"


def test_a_buyer_answering_by_callback_holds_the_lead_then_the_tree_goes_on(
    tree, buyers, callback_step
):
    calls_back = tree.offer("Calls back", post=buyers.json("/cb", "pending"))
    wait = add_callback(calls_back)
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.tier("waterfall", calls_back, backup)
    lead = tree.lead()
    dist = distribute(lead)
    assert dist.status == "waiting"
    row = OfferResult.objects.get(distribution=dist, offer=calls_back)
    assert (row.status, row.post_status) == ("pending", "pending")
    assert buyers.total("/backup") == 0
    # the buyer calls back: rejected -> the run finishes -> the tree continues
    step = RunStep.objects.get(run=row.post_run, element=wait)
    assert engine.step_resume(step_id=step.pk, data={"kind": "rejected"})
    dist.refresh_from_db()
    assert dist.status == "sold"
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Calls back"].status == "rejected" and rows["Backup"].is_sold


def test_a_callback_accepting_the_lead_sells_it(tree, buyers, callback_step):
    calls_back = tree.offer("Calls back", post=buyers.json("/cb", "pending"),
                            price_model="bid")  # fmt: skip
    wait = add_callback(calls_back)
    tree.tier("waterfall", calls_back, tree.offer("Backup", post=buyers.json("/backup")))
    dist = distribute(tree.lead())
    row = OfferResult.objects.get(distribution=dist, offer=calls_back)
    step = RunStep.objects.get(run=row.post_run, element=wait)
    engine.step_resume(step_id=step.pk, data={"kind": "accepted", "price": "21"})
    dist.refresh_from_db()
    assert dist.status == "sold" and dist.revenue == Decimal("21")
    assert buyers.total("/backup") == 0


def test_in_an_auction_a_callback_rejection_passes_the_lead_to_the_next_bidder(
    tree, buyers, callback_step
):
    top = tree.offer("Top", price_model="bid", ping=buyers.json("/tp", price="30"),
                     post=buyers.json("/top", "pending", id="TOP-1"))  # fmt: skip
    wait = add_callback(top)
    second = tree.offer("Second", price_model="bid", ping=buyers.json("/sp", price="20"),
                        post=buyers.json("/second"))  # fmt: skip
    third = tree.offer("Third", price_model="bid", ping=buyers.json("/thp", price="10"),
                       post=buyers.json("/third"))  # fmt: skip
    tree.tier("auction", top, second, third)
    dist = distribute(tree.lead())
    assert dist.status == "waiting" and buyers.total("/second") == 0
    row = OfferResult.objects.get(distribution=dist, offer=top)
    assert row.buyer_lead_id == "TOP-1"
    engine.step_resume(
        step_id=RunStep.objects.get(run=row.post_run, element=wait).pk, data={"kind": "rejected"}
    )
    dist.refresh_from_db()
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Top"].status == "rejected"
    assert rows["Second"].is_sold and dist.revenue == Decimal("20")
    assert rows["Third"].status == "outbid" and rows["Third"].finished_at is not None
    assert buyers.total("/second") == 1 and buyers.total("/third") == 0


def test_the_buyers_lead_id_from_its_pending_answer_is_kept_on_the_sale(
    tree, buyers, callback_step
):
    calls_back = tree.offer("Calls back", post=buyers.json("/cb", "pending", id="B-77"))
    wait = add_callback(calls_back)
    tree.tier("waterfall", calls_back)
    dist = distribute(tree.lead())
    row = OfferResult.objects.get(distribution=dist)
    engine.step_resume(
        step_id=RunStep.objects.get(run=row.post_run, element=wait).pk, data={"kind": "accepted"}
    )
    row.refresh_from_db()
    assert row.is_sold and row.buyer_lead_id == "B-77"


def test_time_spent_waiting_for_a_callback_does_not_count_against_the_deadline(
    tree, buyers, callback_step
):
    import time

    tree.tree.deadline_seconds = 1.0
    tree.tree.save()
    calls_back = tree.offer("Calls back", post=buyers.json("/cb", "pending"))
    wait = add_callback(calls_back)
    tree.tier("waterfall", calls_back, tree.offer("Backup", post=buyers.json("/backup")))
    dist = distribute(tree.lead())
    assert dist.status == "waiting" and dist.time_left_seconds > 0.5
    time.sleep(1.2)  # longer than the whole tree's deadline
    row = OfferResult.objects.get(distribution=dist, offer=calls_back)
    engine.step_resume(
        step_id=RunStep.objects.get(run=row.post_run, element=wait).pk, data={"kind": "rejected"}
    )
    dist.refresh_from_db()
    assert dist.status == "sold" and buyers.total("/backup") == 1


def test_a_buyer_polled_after_a_wait_holds_the_lead_then_sells_it(tree, buyers):
    """The polling pattern inside a ping tree: the buyer answers pending, the scenario
    waits 30 s and asks again; the tree holds the lead meanwhile (the backup is not
    asked) and sells it when the buyer accepts."""
    answers = iter(["pending", "accepted"])
    polls = tree.offer(
        "Polls", post=buyers.json("/poll", lambda request: next(answers, "accepted"))
    )
    integration = polls.integration
    post_request = Element.objects.get(
        integration=integration, kind="request", request_step__meaning="post"
    )
    ws = integration.workspace

    def element(kind: str, name: str, **config: object) -> Element:
        return Element.objects.create(
            workspace=ws, integration=integration, kind=kind, name=name, config=config
        )

    wait = element("wait", "wait 30 s", mode="delay", seconds=30)
    repeater = element("repeater", "again")
    pending = [{"source": "outcome", "operator": "equals", "value": "pending"}]
    for a, b, conditions in ((post_request, wait, pending), (wait, repeater, []),
                             (repeater, post_request, [])):  # fmt: skip
        Connection.objects.create(
            workspace=ws, integration=integration, from_element=a, to_element=b,
            conditions=conditions,
        )  # fmt: skip
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.tier("waterfall", polls, backup)
    dist = distribute(tree.lead())
    assert dist.status == "waiting"
    row = OfferResult.objects.get(distribution=dist, offer=polls)
    assert (row.status, row.post_status) == ("pending", "pending")
    assert "ask the buyer again" in row.reason
    assert buyers.total("/poll") == 1 and buyers.total("/backup") == 0
    # 30 s later the sweeper wakes the wait; the buyer is asked again and accepts.
    with time_machine.travel(timezone.now() + timedelta(seconds=31)):
        engine.engine_sweep()
    dist.refresh_from_db()
    assert dist.status == "sold"
    rows = {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows["Polls"].is_sold and "Backup" not in rows
    assert buyers.total("/poll") == 2 and buyers.total("/backup") == 0
