"""Distributing one lead through a ping tree against real local fake buyers: each tier
mode, the auction's fallback to the next-highest bid, deadlines, filters, caps, money,
buyer health, test leads, and a distribution driven twice."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from integrations.models import RequestLog, ResponseRule
from pingtree import services
from pingtree.models import CapCounter, Distribution, Offer, OfferResult
from structures.models import LeadEvent
from tests.integration.pingtree.conftest import distribute

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("call_path")]


def results(dist):
    return {
        r.offer.name: r
        for r in OfferResult.objects.filter(distribution=dist).select_related("offer")
    }


# --- formats and outcomes -----------------------------------------------------------------


def test_json_buyer_buys_at_a_fixed_price_and_money_is_split(tree, buyers, call_path):
    offer = tree.offer("Json", post=buyers.json("/json", id="B-1", redirect="https://x.test/r"))
    tree.tier("waterfall", offer)
    dist = distribute(tree.lead())
    assert dist.status == "sold" and dist.sold_count == 1
    row = results(dist)["Json"]
    assert (row.stage, row.status, row.post_status, row.is_sold) == (
        "posted",
        "accepted",
        "accepted",
        True,
    )
    assert row.price == Decimal("10") and row.buyer_lead_id == "B-1"
    # The call is linked: its scenario run, or (called directly) its request log.
    if call_path == "engine":
        assert row.post_run is not None and row.post_log is None
    else:
        assert row.post_log is not None and row.post_run is None
        assert row.post_log.lead_id == dist.lead_id and row.post_log.outcome == "accepted"
    assert row.post_ms is not None
    assert dist.redirect_url == "https://x.test/r"
    # payout 40 % of revenue, margin the rest
    assert (dist.revenue, dist.payout, dist.margin) == (Decimal("10"), Decimal("4"), Decimal("6"))
    assert RequestLog.objects.filter(integration=offer.integration).count() == 1
    assert LeadEvent.objects.filter(lead=dist.lead, kind="sold").count() == 1
    assert buyers.total("/json") == 1


def test_xml_buyer_bids_in_its_post_answer(tree, buyers):
    offer = tree.offer("Xml", post=buyers.xml("/xml", price="7.25"), fmt="xml", price_model="bid")
    tree.tier("waterfall", offer)
    dist = distribute(tree.lead())
    assert dist.status == "sold"
    assert results(dist)["Xml"].price == Decimal("7.25") and dist.revenue == Decimal("7.25")


def test_form_buyer_accepts_and_rejects_in_plain_text(tree, buyers):
    refuses = tree.offer("Form no", post=buyers.form("/form-no", "ERROR not in area"), fmt="form")
    buys = tree.offer("Form yes", post=buyers.form("/form-yes", "OK 991"), fmt="form")
    tree.tier("waterfall", refuses, buys)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["Form no"].status == "rejected"
    assert rows["Form yes"].is_sold and rows["Form yes"].buyer_lead_id == "991"
    assert rows["Form no"].position < rows["Form yes"].position


# --- modes ---------------------------------------------------------------------------------


def test_waterfall_asks_by_priority_and_stops_at_the_first_sale(tree, buyers):
    first = tree.offer("First", post=buyers.json("/a", "rejected", reason="too old"))
    second = tree.offer("Second", post=buyers.json("/b"))
    third = tree.offer("Third", post=buyers.json("/c"))
    tree.tier("waterfall", first, second, third)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["First"].status == "rejected" and rows["First"].reason == "too old"
    assert rows["Second"].is_sold
    assert "Third" not in rows and buyers.total("/c") == 0


def test_auction_pings_in_parallel_posts_to_the_highest_bid(tree, buyers):
    offers = [
        tree.offer(f"Bidder {bid}", price_model="bid",
                   ping=buyers.json(f"/ping{bid}", price=str(bid), ping_id=f"p{bid}", delay=1.0),
                   post=buyers.json(f"/post{bid}"))
        for bid in (5, 12, 9)
    ]  # fmt: skip
    tree.tier("auction", *offers)
    started = time.monotonic()
    dist = distribute(tree.lead())
    elapsed = time.monotonic() - started
    # in parallel: 3 x 1 s one after another would be 3 s (loose: a loaded 2-core machine)
    assert elapsed < 2.4
    rows = results(dist)
    assert rows["Bidder 12"].is_sold and rows["Bidder 12"].price == Decimal("12")
    assert rows["Bidder 5"].status == rows["Bidder 9"].status == "outbid"
    assert rows["Bidder 5"].bid == Decimal("5") and rows["Bidder 5"].ping_status == "accepted"
    assert buyers.total("/post12") == 1 and buyers.total("/post5") == buyers.total("/post9") == 0
    # the ping's captured values reach the post
    assert '"p12"' in buyers.bodies["/post12"][0] and '"12.0000"' in buyers.bodies["/post12"][0]


def test_an_auctions_rows_are_written_once_every_ping_is_in_a_pool_threads_hands(
    tree, buyers, monkeypatch
):
    """The pings go out first: the driver's own work on the rows would hold the GIL
    while the pool threads build and send them, and the rows are needed only later."""
    events: list[str] = []
    job, open_many = services._PingCall.job, services._Driver._open_many

    def recording_job(self, *args, **kwargs):
        events.append("ping taken")
        return job(self, *args, **kwargs)

    def recording_open(self, *args, **kwargs):
        events.append("rows written")
        return open_many(self, *args, **kwargs)

    monkeypatch.setattr(services._PingCall, "job", recording_job)
    monkeypatch.setattr(services._Driver, "_open_many", recording_open)
    offers = [
        tree.offer(f"Bidder {bid}", price_model="bid",
                   ping=buyers.json(f"/ping{bid}", price=str(bid)), post=buyers.json(f"/p{bid}"))
        for bid in (3, 7, 4, 6)
    ]  # fmt: skip
    tree.tier("auction", *offers)

    dist = distribute(tree.lead())

    assert events[:5] == ["ping taken"] * 4 + ["rows written"]
    assert results(dist)["Bidder 7"].is_sold


def test_every_call_of_an_auction_is_logged_and_linked_to_its_row(tree, buyers, call_path):
    offers = [
        tree.offer(f"Bidder {bid}", price_model="bid",
                   ping=buyers.json(f"/ping{bid}", price=str(bid)),
                   post=buyers.json(f"/post{bid}", id=f"B{bid}"))
        for bid in (5, 12, 9)
    ]  # fmt: skip
    tree.tier("auction", *offers)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["Bidder 12"].is_sold and rows["Bidder 12"].buyer_lead_id == "B12"
    logs = RequestLog.objects.filter(lead_id=dist.lead_id)
    assert logs.count() == 4  # three pings and the winner's post
    for offer in offers:
        row = rows[offer.name]
        if call_path == "engine":
            assert row.ping_run_id is not None and row.ping_log_id is None
            continue
        assert row.ping_run_id is None and row.ping_log is not None
        assert row.ping_log.integration_id == offer.integration_id
        assert row.ping_log.request_step.meaning == "ping" and row.ping_log.outcome == "accepted"
    if call_path == "direct":
        post = rows["Bidder 12"].post_log
        assert post is not None and post.request_step.meaning == "post"
        assert post.captured.get("buyer_lead_id") == "B12"
        assert rows["Bidder 5"].post_log is None and rows["Bidder 9"].post_log is None


def test_auction_falls_back_to_the_next_highest_bidder_when_the_post_is_rejected(tree, buyers):
    high = tree.offer("High", price_model="bid", ping=buyers.json("/ph", price="20"),
                      post=buyers.json("/xh", "rejected", reason="duplicate"))  # fmt: skip
    mid = tree.offer("Mid", price_model="bid", ping=buyers.json("/pm", price="15"),
                     post=buyers.json("/xm"))  # fmt: skip
    low = tree.offer("Low", price_model="bid", ping=buyers.json("/pl", price="3"),
                     post=buyers.json("/xl"))  # fmt: skip
    tree.tier("auction", low, high, mid)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["High"].status == "rejected" and rows["High"].stage == "posted"
    assert rows["Mid"].is_sold and dist.revenue == Decimal("15")
    assert rows["Low"].status == "outbid" and buyers.total("/xl") == 0


def test_auction_refuses_bids_under_the_minimum_price_and_pings_that_say_no(tree, buyers):
    cheap = tree.offer("Cheap", price_model="bid", min_price=Decimal("8"),
                       ping=buyers.json("/pc", price="4"), post=buyers.json("/xc"))  # fmt: skip
    no = tree.offer("No", price_model="bid", ping=buyers.json("/pn", "rejected", reason="state"),
                    post=buyers.json("/xn"))  # fmt: skip
    tree.tier("auction", cheap, no)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert dist.status == "unsold"
    assert "under the minimum price" in rows["Cheap"].reason and rows["Cheap"].bid == Decimal("4")
    assert rows["No"].status == "rejected" and rows["No"].ping_status == "rejected"
    assert buyers.total("/xc") == buyers.total("/xn") == 0
    assert "No buyer bought the lead" in dist.reason


def test_weighted_split_follows_the_weights(tree, buyers):
    heavy = tree.offer("Heavy", post=buyers.json("/heavy"))
    light = tree.offer("Light", post=buyers.json("/light"))
    never = tree.offer("Never", post=buyers.json("/never"))
    tree.tier("weighted", heavy, light, never, weights=[80, 20, 0])
    for n in range(40):
        distribute(tree.lead(n))
    assert buyers.total("/never") == 0
    assert buyers.total("/heavy") + buyers.total("/light") == 40
    assert buyers.total("/heavy") > buyers.total("/light") >= 1


def test_multi_sale_sells_to_up_to_n_shared_buyers(tree, buyers):
    offers = [
        tree.offer(f"Shared {i}", sale_mode="shared", price=Decimal(i), post=buyers.json(f"/s{i}"))
        for i in (2, 4, 6, 8)
    ]
    exclusive = tree.offer("Exclusive", price=Decimal("50"), post=buyers.json("/ex"))
    tree.tier("multi_sale", *offers, max_sales=3)
    tree.tier("waterfall", exclusive)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert dist.sold_count == 3 and dist.revenue == Decimal("18")  # 8 + 6 + 4
    assert [n for n, r in rows.items() if r.is_sold] == ["Shared 4", "Shared 6", "Shared 8"] or {
        n for n, r in rows.items() if r.is_sold
    } == {"Shared 4", "Shared 6", "Shared 8"}
    assert rows["Shared 2"].status == "outbid"
    assert buyers.total("/ex") == 0 and "Exclusive" not in rows


def test_exclusive_buyer_in_a_multi_sale_tier_ends_the_sale(tree, buyers):
    exclusive = tree.offer("Exclusive", price=Decimal("30"), post=buyers.json("/ex"))
    shared = tree.offer("Shared", sale_mode="shared", price=Decimal("5"), post=buyers.json("/sh"))
    tree.tier("multi_sale", exclusive, shared, max_sales=3)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert dist.sold_count == 1 and dist.is_exclusive_sold
    assert rows["Exclusive"].is_sold and not rows["Shared"].is_sold
    assert buyers.total("/sh") == 0


def test_second_tier_gets_the_lead_when_the_first_does_not_sell(tree, buyers):
    a = tree.offer("Tier 1", post=buyers.json("/t1", "rejected"))
    b = tree.offer("Tier 2", post=buyers.json("/t2"))
    tree.tier("waterfall", a)
    tree.tier("auction", b)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["Tier 1"].tier.position == 0 and rows["Tier 2"].tier.position == 1
    assert rows["Tier 2"].is_sold


# --- deadlines -----------------------------------------------------------------------------


def test_a_slow_buyer_never_holds_the_lead_past_the_tier_deadline(tree, buyers, call_path):
    slow = tree.offer("Slow", post=buyers.json("/slow", delay=6.0))
    fast = tree.offer("Fast", post=buyers.json("/fast"))
    tree.tier("waterfall", slow, deadline_seconds=0.5)
    tree.tier("waterfall", fast)
    started = time.monotonic()
    dist = distribute(tree.lead())
    assert time.monotonic() - started < 3.0
    rows = results(dist)
    assert rows["Slow"].status == "timeout" and "tier's deadline" in rows["Slow"].reason
    assert rows["Fast"].is_sold
    if call_path == "engine":
        # the slow buyer's run was cancelled: its late answer will change nothing
        rows["Slow"].post_run.refresh_from_db()
        assert rows["Slow"].post_run.status == "cancelled"
    else:
        # called directly: the driver stopped waiting, so no answer is linked or counted
        assert rows["Slow"].post_run is None and rows["Slow"].post_log is None


def test_a_call_the_tree_stopped_waiting_for_is_still_logged_when_it_ends(tree, buyers):
    slow = tree.offer("Slow", post=buyers.json("/slow", "accepted", delay=1.0))
    fast = tree.offer("Fast", post=buyers.json("/fast"))
    tree.tier("waterfall", slow, deadline_seconds=0.3)
    tree.tier("waterfall", fast)
    dist = distribute(tree.lead())
    rows = results(dist)
    assert rows["Slow"].status == "timeout" and not rows["Slow"].is_sold
    assert rows["Fast"].is_sold and dist.sold_count == 1
    # The slow buyer answers after the tree moved on: its call is logged all the same,
    # and its acceptance changes nothing.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if RequestLog.objects.filter(integration=slow.integration).exists():
            break
        time.sleep(0.1)
    entry = RequestLog.objects.get(integration=slow.integration)
    assert entry.lead_id == dist.lead_id and entry.outcome == "accepted"
    row = OfferResult.objects.get(pk=rows["Slow"].pk)
    assert row.status == "timeout" and row.post_log_id is None and not row.is_sold
    dist.refresh_from_db()
    assert dist.sold_count == 1 and buyers.total("/slow") == 1


def test_the_overall_deadline_ends_the_tree(tree, buyers):
    tree.tree.deadline_seconds = 1.0
    tree.tree.save()
    slow = tree.offer("Slow", post=buyers.json("/slow", delay=6.0))
    never = tree.offer("Never", post=buyers.json("/never"))
    tree.tier("waterfall", slow)
    tree.tier("waterfall", never)
    started = time.monotonic()
    dist = distribute(tree.lead())
    assert time.monotonic() - started < 3.0
    rows = results(dist)
    assert dist.status == "unsold" and "deadline" in dist.reason
    assert rows["Slow"].status == "timeout"
    assert rows["Never"].status == "skipped" and "deadline" in rows["Never"].reason
    assert buyers.total("/never") == 0


def test_offer_timeout_cuts_a_slow_ping_in_an_auction(tree, buyers):
    slow = tree.offer("Slow", price_model="bid", timeout_seconds=0.4,
                      ping=buyers.json("/ps", price="99", delay=6.0),
                      post=buyers.json("/xs"))  # fmt: skip
    ok = tree.offer("Ok", price_model="bid", ping=buyers.json("/po", price="5"),
                    post=buyers.json("/xo"))  # fmt: skip
    tree.tier("auction", slow, ok)
    started = time.monotonic()
    dist = distribute(tree.lead())
    assert time.monotonic() - started < 3.5
    rows = results(dist)
    assert rows["Slow"].ping_status == "timeout" and buyers.total("/xs") == 0
    assert rows["Ok"].is_sold


# --- eligibility ---------------------------------------------------------------------------


def test_inactive_paused_and_test_mode_offers_are_skipped_with_the_reason(tree, buyers):
    paused = tree.offer("Paused", post=buyers.json("/p"), status="paused", pause_reason="Budget")
    test_only = tree.offer("Test only", post=buyers.json("/t"), integration_status="test")
    live = tree.offer("Live", post=buyers.json("/l"))
    tree.tier("waterfall", paused, test_only, live)
    rows = results(distribute(tree.lead()))
    assert rows["Paused"].status == "skipped" and "Budget" in rows["Paused"].reason
    assert "test mode" in rows["Test only"].reason
    assert rows["Live"].is_sold
    assert buyers.total("/p") == buyers.total("/t") == 0


def test_filters_decide_which_offers_see_the_lead(tree, buyers):
    ca_only = tree.offer(
        "CA only", post=buyers.json("/ca"),
        filters={"geo": {"mode": "include", "states": ["CA"]}},
    )  # fmt: skip
    big_loans = tree.offer(
        "Big loans", post=buyers.json("/big"),
        filters={"groups": [{"conditions": [
            {"field": "g_loan_amount", "operator": "bigger_than", "value": "1000"}]}]},
    )  # fmt: skip
    tree.tier("waterfall", ca_only, big_loans)
    rows = results(distribute(tree.lead(g_state="DC", g_loan_amount="5000")))
    assert rows["CA only"].status == "skipped" and rows["CA only"].reason.startswith("filters:")
    assert rows["Big loans"].is_sold
    assert buyers.total("/ca") == 0


def test_history_filter_skips_an_offer_that_already_bought_this_person(tree, buyers):
    offer = tree.offer(
        "Once", post=buyers.json("/once"),
        filters={"history": [{"kind": "accepted", "within_days": 30}]},
    )  # fmt: skip
    tree.tier("waterfall", offer)
    assert distribute(tree.lead(1)).status == "sold"
    again = tree.lead(2, g_email="jane1@example.com")
    dist = distribute(again)
    assert dist.status == "unsold"
    assert "history" in results(dist)["Once"].reason
    assert buyers.total("/once") == 1


def test_no_tree_means_no_distribution_and_a_reason(setup):
    from tests.integration.pingtree.conftest import Tree

    t = Tree(setup)
    t.tree.is_active = False
    t.tree.save()
    lead = t.lead()
    dist = services.distribution_ensure(lead=lead)
    assert dist.status == "unsold" and "No active ping tree" in dist.reason


# --- caps, money, test leads, health -------------------------------------------------------


def test_caps_count_sold_leads_and_skip_the_offer_when_full(tree, buyers):
    capped = tree.offer("Capped", post=buyers.json("/capped"))
    backup = tree.offer("Backup", post=buyers.json("/backup"))
    tree.cap(capped, 2)
    tree.cap(capped, 100, metric="revenue")
    tree.tier("waterfall", capped, backup)
    sold_to = [
        next(n for n, r in results(distribute(tree.lead(i))).items() if r.is_sold) for i in range(3)
    ]
    assert sold_to == ["Capped", "Capped", "Backup"]
    counters = {c.cap.metric: c.used for c in CapCounter.objects.select_related("cap")}
    assert counters == {"sold": Decimal("2"), "revenue": Decimal("20")}
    assert "cap reached" in results(Distribution.objects.order_by("-id").first())["Capped"].reason


def test_a_rejected_post_gives_its_sold_cap_back(tree, buyers):
    no = tree.offer("No", post=buyers.json("/no", "rejected"))
    tree.cap(no, 1)
    tree.cap(no, 5, metric="sent")
    tree.tier("waterfall", no)
    for i in range(3):
        distribute(tree.lead(i))
    counters = {c.cap.metric: c.used for c in CapCounter.objects.select_related("cap")}
    assert counters == {"sold": Decimal("0"), "sent": Decimal("3")}
    assert buyers.total("/no") == 3


def test_revenue_share_earns_its_percentage_of_the_reported_price(tree, buyers):
    share = tree.offer(
        "Share", price_model="revenue_share", revenue_share_percent=Decimal("25"),
        post=buyers.json("/share", price="40"),
    )  # fmt: skip
    tree.tier("waterfall", share)
    dist = distribute(tree.lead())
    assert dist.revenue == Decimal("10") and dist.payout == Decimal("4")


def test_test_leads_run_the_whole_tree_but_never_count(tree, buyers):
    test_mode = tree.offer("Test mode", post=buyers.json("/tm"), integration_status="test")
    tree.cap(test_mode, 1)
    tree.tier("waterfall", test_mode)
    for i in range(3):
        dist = distribute(tree.lead(i, is_test=True))
        assert dist.status == "sold" and dist.is_test
        assert (dist.revenue, dist.payout, dist.margin) == (0, 0, 0)
        assert results(dist)["Test mode"].is_test
        sold = LeadEvent.objects.get(lead_id=dist.lead_id, kind="sold")
        assert sold.message == "Sold to Test mode (a test lead: not counted)."
    assert buyers.total("/tm") == 3  # the buyer's test mode is sent test leads
    assert not CapCounter.objects.exists()
    real = distribute(tree.lead(9))
    assert real.status == "unsold"  # a test-mode integration takes no real lead


def test_consecutive_post_errors_auto_pause_the_offer_and_resume_clears_it(tree, buyers):
    broken = tree.offer("Broken", post=buyers.json("/broken", "boom"), auto_pause_after=3)
    tree.tier("waterfall", broken)
    for i in range(3):
        assert results(distribute(tree.lead(i)))["Broken"].status == "error"
    broken.refresh_from_db()
    assert broken.status == "paused" and "3 consecutive" in broken.pause_reason
    rows = results(distribute(tree.lead(4)))
    assert rows["Broken"].status == "skipped" and buyers.total("/broken") == 3
    services.offer_resume(offer=broken)
    broken.refresh_from_db()
    assert (broken.status, broken.consecutive_error_count, broken.pause_reason) == ("active", 0, "")


def test_an_answer_resets_the_error_streak(tree, buyers):
    calls = iter(["boom", "boom", "rejected", "boom", "boom"])
    flaky = tree.offer(
        "Flaky", auto_pause_after=3,
        post=buyers.json("/flaky", lambda r: next(calls)),
    )  # fmt: skip
    tree.tier("waterfall", flaky)
    for i in range(5):
        distribute(tree.lead(i))
    flaky.refresh_from_db()
    assert flaky.status == "active" and flaky.consecutive_error_count == 2


# --- idempotency ---------------------------------------------------------------------------


def test_running_the_task_twice_distributes_once(tree, buyers):
    from pingtree.tasks import distribution_run_task

    offer = tree.offer("Once", post=buyers.json("/once"))
    tree.tier("waterfall", offer)
    lead = tree.lead()
    dist = services.distribution_ensure(lead=lead)
    distribution_run_task(dist.pk)
    distribution_run_task(dist.pk)
    assert services.distribution_ensure(lead=lead).pk == dist.pk
    dist.refresh_from_db()
    assert dist.sold_count == 1 and dist.attempt == 1 and buyers.total("/once") == 1
    assert OfferResult.objects.filter(distribution=dist).count() == 1


def test_the_database_refuses_a_second_exclusive_sale(tree, buyers):
    from django.db import IntegrityError, transaction

    a = tree.offer("A", post=buyers.json("/a"))
    b = tree.offer("B", post=buyers.json("/b"))
    tree.tier("waterfall", a, b)
    dist = distribute(tree.lead())
    row = OfferResult.objects.get(distribution=dist, offer=a)
    with pytest.raises(IntegrityError), transaction.atomic():
        OfferResult.objects.create(
            workspace=dist.workspace, distribution=dist, offer=b, status="accepted",
            is_sold=True, is_exclusive=True,
        )  # fmt: skip
    with pytest.raises(IntegrityError), transaction.atomic():
        Distribution.objects.filter(pk=dist.pk).update(sold_count=2)
    assert row.is_sold


def test_offer_filters_are_validated_on_clean(tree, buyers):
    from django.core.exceptions import ValidationError

    offer = tree.offer("Valid", post=buyers.json("/v"))
    offer.filters = {"geo": {"mode": "sideways"}}
    with pytest.raises(ValidationError) as exc:
        offer.full_clean()
    assert "filters" in exc.value.message_dict
    assert Offer.objects.get(pk=offer.pk).filters == {}


def test_a_long_reason_on_an_accepted_answer_is_cut_not_an_error(tree, buyers, call_path):
    """A rule's reason is a template: rendered longer than the column, the sale still
    goes through with the reason cut (the one-statement sale included)."""
    offer = tree.offer("Verbose", post=buyers.json("/verbose"))
    for rule in ResponseRule.objects.filter(request__integration=offer.integration,
                                            outcome="accepted"):  # fmt: skip
        rule.reason = "{{PCID}}" * 18  # 18 x 32 characters
        rule.save()  # through the model: the step cache sees the change
    tree.tier("waterfall", offer)
    lead = tree.lead()
    dist = distribute(lead)
    assert dist.status == "sold"
    row = OfferResult.objects.get(distribution=dist, offer=offer)
    assert row.reason == (lead.pcid * 18)[:500]


def test_each_call_reads_its_integrations_state_once(tree, buyers, call_path):
    """Every call reads the integration's status and version just before it (an
    operator's change applies to the next call), once: a waterfall's ping and its post
    each read it, nothing twice."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    offer = tree.offer(
        "Bidder", price_model="bid", ping=buyers.json("/ping", price="7"), post=buyers.json("/p")
    )
    tree.tier("waterfall", offer)
    lead = tree.lead()
    with CaptureQueriesContext(connection) as queries:
        dist = distribute(lead)
    assert dist.status == "sold"
    reads = [
        q["sql"]
        for q in queries.captured_queries
        if '"config_version" FROM "integrations_integration" WHERE "id"' in q["sql"]
    ]
    if call_path == "direct":
        assert len(reads) == 2, reads  # the ping's, the post's
    else:
        assert 1 <= len(reads) <= 2, reads  # the engine reads its own in the pool thread


def test_a_waterfall_post_reads_its_integrations_state_with_its_row(tree, buyers, call_path):
    """A post that needs no ping reads the integration's state in the statement that
    opens its row (no separate read), and that read is live: an integration switched off
    without a save signal (so no cached tree is refreshed) is not called."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from integrations.models import Integration

    first = tree.offer("First", post=buyers.json("/a", "rejected", reason="no"))
    second = tree.offer("Second", post=buyers.json("/b"))
    tree.tier("waterfall", first, second)
    with CaptureQueriesContext(connection) as queries:
        dist = distribute(tree.lead())
    assert dist.status == "sold" and buyers.total("/a") == buyers.total("/b") == 1
    alone = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith('SELECT "status", "config_version" FROM "integrations_integration"')
    ]
    with_row = [
        q["sql"]
        for q in queries.captured_queries
        if 'r AS (INSERT INTO "pingtree_offerresult"' in q["sql"]
        and "integrations_integration" in q["sql"]
    ]
    if call_path == "direct":
        assert (len(alone), len(with_row)) == (0, 2), (alone, with_row)

    Integration.objects.filter(pk=second.integration_id).update(status="disabled")
    dist = distribute(tree.lead())
    assert dist.status == "unsold" and buyers.total("/b") == 1
    row = OfferResult.objects.get(distribution=dist, offer=second)
    assert "disabled" in row.reason


def test_a_lead_rejected_while_its_tree_runs_earns_the_partner_no_payout(tree, buyers):
    """The refusal policy may reject the lead while the tree sells it (here: while the
    buyer has the post): the sale that ends the tree and the finish are one statement
    that checks the status the driver read, so it does not apply; the sale is then
    counted alone and the finish, redone with the new status, pays the partner
    nothing."""
    from structures.models import Lead

    def rejected_meanwhile(request):
        Lead.objects.filter(pcid=request["query"]["lead"][0]).update(status="rejected")
        return "accepted"

    offer = tree.offer("Buyer", post=buyers.json("/p", rejected_meanwhile))
    tree.tier("waterfall", offer)
    lead = tree.lead()
    dist = distribute(lead)
    assert dist.status == "sold"
    assert (dist.revenue, dist.payout, dist.margin) == (Decimal("10"), 0, Decimal("10"))
    dist.refresh_from_db()
    assert (dist.status, dist.revenue, dist.payout, dist.sold_count) == (
        "sold", Decimal("10"), 0, 1,
    )  # fmt: skip
    row = OfferResult.objects.get(distribution=dist)
    assert row.is_sold and (row.post_log_id or row.post_run_id)  # direct call, or a run
    assert RequestLog.objects.filter(lead=lead).count() == 1  # logged once, not twice
