"""A waterfall's writes off the path between two posts.

While a post is in flight, the driver claims the next offer's row (written posted, in
flight, before that offer is ever called) together with the record of the answer before,
which waited "behind" for that statement. A claim whose post does not happen (the lead
sold, the deadline passed) is taken back: the offer reads as never asked. A record
waiting behind is written before any other statement of the driver, and with the finish
at the end. Buyers here answer slowly enough (``SLOW``) for the claim to be made while a
post is out.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from integrations.engine import services as engine
from integrations.models import RequestLog, RunStep
from pingtree.models import OfferResult
from tests.integration.pingtree.conftest import add_callback, distribute

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL: the claims ahead and records behind"
)
SLOW = 0.25


def rows_by_name(dist) -> dict[str, OfferResult]:
    return {r.offer.name: r for r in OfferResult.objects.filter(distribution=dist)}


def test_the_next_row_is_claimed_while_a_post_is_in_flight_with_the_record_before(tree, buyers):
    """When the second buyer answers, the third's row is claimed already (posted,
    pending) and the first's rejection is recorded with its log, by one statement."""
    seen: dict[str, tuple] = {}

    def second(request):
        third_row = OfferResult.objects.filter(offer__name="Third").values_list(
            "stage", "status", "finished_at"
        )
        first_row = OfferResult.objects.filter(offer__name="First").values_list(
            "status", "post_log_id"
        )
        seen["third"] = tuple(third_row.first() or ())
        seen["first"] = tuple(first_row.first() or ())
        return "rejected"

    first = tree.offer("First", post=buyers.json("/a", "rejected", reason="no", delay=SLOW))
    tree_second = tree.offer("Second", post=buyers.json("/b", second, delay=SLOW))
    third = tree.offer("Third", post=buyers.json("/c", delay=SLOW))
    tree.tier("waterfall", first, tree_second, third)
    # The buyers' scenario graphs read once (a read of its own is a statement, which
    # would write the record waiting behind before it, not with the claim).
    distribute(tree.lead(1))

    with CaptureQueriesContext(connection) as queries:
        dist = distribute(tree.lead(2))

    assert dist.status == "sold"
    assert seen["third"] == ("posted", "pending", None)
    assert seen["first"][0] == "rejected" and seen["first"][1] is not None
    rows = rows_by_name(dist)
    assert [rows[n].status for n in ("First", "Second", "Third")] == [
        "rejected", "rejected", "accepted",
    ]  # fmt: skip
    assert rows["Third"].is_sold and buyers.total("/c") == 2  # the warm-up lead, this one
    # every call logged, each row linked to its own log
    logs = {log.pk: log for log in RequestLog.objects.filter(lead=dist.lead)}
    assert len(logs) == 3, logs
    assert {logs[r.post_log_id].url.split("?")[0][-2:] for r in rows.values()} == {
        "/a", "/b", "/c",
    }  # fmt: skip
    # the rejections were never written by a statement of their own: each went with a
    # claim (the first's with the third's) or was written while a post was out
    claims_with_records = [
        q["sql"]
        for q in queries.captured_queries
        if 'r AS (INSERT INTO "pingtree_offerresult"' in q["sql"] and "u AS (UPDATE" in q["sql"]
    ]
    assert len(claims_with_records) == 1, claims_with_records


def test_a_claim_made_ahead_is_taken_back_when_the_lead_sells(tree, buyers):
    """The second offer's row is claimed while the first post is out; the first buys:
    the second is never called and has no row, as if never reached."""
    first = tree.offer("First", post=buyers.json("/a", delay=SLOW))
    second = tree.offer("Second", post=buyers.json("/b"))
    tree.tier("waterfall", first, second)
    seen = {}
    old = buyers.handlers["/a"]

    def first_answer(request):
        seen["second"] = OfferResult.objects.filter(offer=second).values_list("stage", flat=True)
        seen["second"] = list(seen["second"])
        return old(request)

    buyers.handlers["/a"] = first_answer

    dist = distribute(tree.lead())

    assert seen["second"] == ["posted"]  # claimed while the first was out
    assert dist.status == "sold" and buyers.total("/b") == 0
    assert list(rows_by_name(dist)) == ["First"]
    assert not OfferResult.objects.filter(offer=second).exists()


def test_a_claim_made_ahead_is_taken_back_when_the_deadline_passes(tree, buyers):
    """The first post takes the tier's time: the second offer, claimed meanwhile, is not
    called, and its row says why (skipped at the deadline), not that it was posted."""
    first = tree.offer("First", post=buyers.json("/a", "rejected", delay=0.6))
    second = tree.offer("Second", post=buyers.json("/b"))
    tree.tier("waterfall", first, second, deadline_seconds=0.5)

    dist = distribute(tree.lead())

    assert dist.status == "unsold" and buyers.total("/b") == 0
    row = OfferResult.objects.get(distribution=dist, offer=second)
    assert (row.stage, row.status) == ("skipped", "skipped")
    assert "deadline" in row.reason and row.post_status == ""


def test_a_claim_made_ahead_serves_a_post_that_waits_for_a_callback(tree, buyers, callback_step):
    """A slow rejection, then a buyer answering by callback (its row claimed while the
    first post was out): the lead waits, then the tree goes on to the backup."""
    slow = tree.offer("Slow", post=buyers.json("/slow", "rejected", delay=SLOW))
    calls_back = tree.offer("Calls back", post=buyers.json("/cb", "pending"))
    wait = add_callback(calls_back)
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.tier("waterfall", slow, calls_back, backup)

    dist = distribute(tree.lead())

    assert dist.status == "waiting" and buyers.total("/backup") == 0
    row = OfferResult.objects.get(distribution=dist, offer=calls_back)
    assert (row.stage, row.status, row.post_status) == ("posted", "pending", "pending")
    step = RunStep.objects.get(run=row.post_run, element=wait)
    assert engine.step_resume(step_id=step.pk, data={"kind": "rejected"})
    dist.refresh_from_db()
    rows = rows_by_name(dist)
    assert dist.status == "sold" and rows["Backup"].is_sold
    assert [rows[n].status for n in ("Slow", "Calls back")] == ["rejected", "rejected"]


def test_a_record_waiting_behind_is_written_before_any_other_statement(tree, buyers):
    """After a rejection, the next offer pings first (its row is not claimed ahead, and
    its integration's state and scenario are read before its ping): the rejection is
    written by itself right before the first of those statements, so none of them runs
    with the row unrecorded."""
    first = tree.offer("First", post=buyers.json("/a", "rejected", reason="no"))
    bidder = tree.offer(
        "Bidder", price_model="bid", ping=buyers.json("/ping", price="7"), post=buyers.json("/b")
    )
    tree.tier("waterfall", first, bidder)

    with CaptureQueriesContext(connection) as queries:
        dist = distribute(tree.lead())

    assert dist.status == "sold"
    sqls = [q["sql"] for q in queries.captured_queries]
    alone = [
        i
        for i, sql in enumerate(sqls)
        if sql.startswith("WITH lg AS") and "u AS (UPDATE" in sql
        and "r AS (INSERT" not in sql and "d AS (UPDATE" not in sql
    ]  # fmt: skip
    assert len(alone) == 1, [s[:80] for s in sqls]
    first_answer = next(i for i, sql in enumerate(sqls) if "/a?lead=" in sql)
    assert alone[0] == first_answer  # the record is the statement that logs the call
    # the statement right after it is one the driver ran for the bidder (a read), which
    # set the record off; the bidder's row is opened later
    after = sqls[alone[0] + 1]
    assert after.startswith("SELECT"), after[:80]
    bidder_open = next(
        i for i, sql in enumerate(sqls) if 'r AS (INSERT INTO "pingtree_offerresult"' in sql
        and i > alone[0]
    )  # fmt: skip
    assert alone[0] < bidder_open
    rows = rows_by_name(dist)
    assert rows["First"].status == "rejected" and rows["First"].post_log_id is not None


def test_the_last_answer_is_recorded_with_the_finish(tree, buyers):
    """An unsold waterfall: the last rejection goes with the finish (one statement)."""
    only = tree.offer("Only", post=buyers.json("/a", "rejected", reason="full"))
    tree.tier("waterfall", only)

    with CaptureQueriesContext(connection) as queries:
        dist = distribute(tree.lead())

    assert dist.status == "unsold"
    finish = [
        q["sql"]
        for q in queries.captured_queries
        if 'UPDATE "pingtree_distribution"' in q["sql"] and "u AS (UPDATE" in q["sql"]
    ]
    assert len(finish) == 1
    row = OfferResult.objects.get(distribution=dist)
    assert (row.status, row.reason) == ("rejected", "full") and row.post_log_id is not None


def test_the_last_answer_is_recorded_when_the_finish_is_refused(tree, buyers):
    """Another driver took the lead over while the post was out (its attempt): this
    driver's finish changes nothing, but the answer it carried is recorded and logged."""
    from django.db.models import F

    from pingtree.models import Distribution

    def taken_over(request):
        Distribution.objects.filter(lead__pcid=request["query"]["lead"][0]).update(
            attempt=F("attempt") + 1
        )
        return "rejected"

    only = tree.offer("Only", post=buyers.json("/a", taken_over, reason="full"))
    tree.tier("waterfall", only)

    dist = distribute(tree.lead())

    assert dist.status == "running" and dist.attempt == 2  # not finished by this driver
    row = OfferResult.objects.get(distribution=dist)
    assert (row.status, row.reason) == ("rejected", "full") and row.post_log_id is not None


def test_the_sale_that_ends_an_auction_and_the_finish_are_one_statement(tree, buyers):
    """The highest bid buys: its sale is counted, its row recorded sold, the lower bid
    closed as outbid, the decision and the history written, all by one statement."""
    from decimal import Decimal

    from structures.models import LeadEvent

    high = tree.offer(
        "High", price_model="bid", ping=buyers.json("/ph", price="9"), post=buyers.json("/h")
    )
    low = tree.offer(
        "Low", price_model="bid", ping=buyers.json("/pl", price="5"), post=buyers.json("/l")
    )
    tree.tier("auction", high, low)

    with CaptureQueriesContext(connection) as queries:
        dist = distribute(tree.lead())

    counting = [q["sql"] for q in queries.captured_queries if "sold_count + 1" in q["sql"]]
    assert len(counting) == 1
    assert '"structures_leadevent"' in counting[0] and "o AS (UPDATE" in counting[0]
    dist.refresh_from_db()
    assert (dist.status, dist.sold_count, dist.revenue, dist.payout, dist.margin) == (
        "sold", 1, Decimal("9"), Decimal("3.6"), Decimal("5.4"),
    )  # fmt: skip
    assert dist.lease_until is None and dist.finished_at is not None
    rows = rows_by_name(dist)
    assert rows["High"].is_sold and rows["High"].post_log_id is not None
    assert (rows["Low"].status, rows["Low"].reason) == (
        "outbid", "outbid: the lead went to a higher bid",
    )  # fmt: skip
    assert buyers.total("/l") == 0
    event = LeadEvent.objects.get(lead=dist.lead, kind="sold")
    assert event.message == "Sold to High for 9.00." and event.data["payout"] == "3.6000"
