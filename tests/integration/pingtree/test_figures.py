"""Per-offer figures and money against known rows (pingtree.figures): every count, the
money split, averages, the day they fall on, and test leads left out."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from integrations import services as integration_services
from pingtree.figures import figures_chart, money_chart, offer_figures, offers_figures
from pingtree.models import Distribution, Offer, OfferResult, PingTree, Tier
from structures.models import Lead
from tests.factories.structures import AdvertiserFactory, UserFactory, make_lead_setup

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def world() -> dict:
    setup = make_lead_setup("Figures")
    ws = setup.workspace
    advertiser = AdvertiserFactory(workspace=ws, name="Buyer One")
    integration = integration_services.integration_create(
        workspace_id=ws.pk, name="Buyer API", category="buyer", status="enabled",
        url="https://buyer.example.com/post", method="POST", body_format="json",
    )  # fmt: skip
    offers = [
        Offer.objects.create(
            workspace=ws,
            advertiser=advertiser,
            name=name,
            integration=integration,
            price_model="bid",
        )  # fmt: skip
        for name in ("Alpha", "Beta")
    ]
    tree = PingTree.objects.create(workspace=ws, name="Main", payout_percent=D("40"))
    tier = Tier.objects.create(workspace=ws, tree=tree, mode="auction")
    return {"setup": setup, "ws": ws, "offers": offers, "tree": tree, "tier": tier}


def _distribution(world: dict, *, n: int, revenue: str = "0", payout: str = "0",
                  is_test: bool = False) -> Distribution:  # fmt: skip
    setup = world["setup"]
    lead = Lead.objects.create(
        workspace=world["ws"], structure=setup.structure, partner=setup.partner,
        source="api", status="approved", data={"g_email": f"f{n}@example.com"},
        is_test=is_test,
    )  # fmt: skip
    return Distribution.objects.create(
        workspace=world["ws"], lead=lead, tree=world["tree"], status="sold",
        revenue=D(revenue), payout=D(payout), margin=D(revenue) - D(payout), is_test=is_test,
    )  # fmt: skip


def _result(world: dict, dist: Distribution, offer: Offer, **values: object) -> OfferResult:
    return OfferResult.objects.create(
        workspace=world["ws"], distribution=dist, offer=offer, tier=world["tier"],
        is_test=dist.is_test, **values,
    )  # fmt: skip


def _known_rows(world: dict) -> None:
    """Alpha: 4 pings (3 bids 10, 20, 30; 1 rejected), 2 wins (posted), 1 sale at 30
    (distribution revenue 30, payout 12), 1 post rejected, 1 skipped. Beta: one sale at
    20 without a ping (payout 8). Plus a test lead that bid 99 and sold to Alpha at 99:
    never counted."""
    alpha, beta = world["offers"]
    d1 = _distribution(world, n=1, revenue="30", payout="12")
    _result(world, d1, alpha, stage="posted", status="accepted", ping_status="accepted",
            bid=D("30"), ping_ms=40, post_status="accepted", post_ms=100, is_sold=True,
            price=D("30"))  # fmt: skip
    d2 = _distribution(world, n=2)
    _result(world, d2, alpha, stage="posted", status="rejected", ping_status="accepted",
            bid=D("20"), ping_ms=60, post_status="rejected", post_ms=200,
            reason="Duplicate")  # fmt: skip
    d3 = _distribution(world, n=3)
    _result(world, d3, alpha, stage="pinged", status="outbid", ping_status="accepted",
            bid=D("10"), ping_ms=50)  # fmt: skip
    d4 = _distribution(world, n=4, revenue="20", payout="8")
    _result(world, d4, alpha, stage="pinged", status="rejected", ping_status="rejected",
            ping_ms=50, reason="State not covered")  # fmt: skip
    _result(world, d4, beta, stage="posted", status="accepted", post_status="accepted",
            post_ms=80, is_sold=True, price=D("20"))  # fmt: skip
    d5 = _distribution(world, n=5)
    _result(world, d5, alpha, stage="skipped", status="skipped", reason="Cap reached")
    test = _distribution(world, n=6, revenue="99", payout="39.6", is_test=True)
    _result(world, test, alpha, stage="posted", status="accepted", ping_status="accepted",
            bid=D("99"), ping_ms=5, post_status="accepted", post_ms=5, is_sold=True,
            price=D("99"))  # fmt: skip


def test_offer_figures_count_each_kind_of_answer_and_the_money(world: dict) -> None:
    _known_rows(world)
    alpha, beta = world["offers"]
    totals = offer_figures(offer=alpha)["totals"]
    assert totals["pings"] == 4
    assert totals["bids"] == 3
    assert totals["wins"] == 2
    assert totals["posts"] == 2
    assert totals["accepts"] == 1
    assert totals["rejects"] == 1
    assert totals["revenue"] == D("30.00")
    assert totals["payout"] == D("12.00")
    assert totals["margin"] == D("18.00")
    assert totals["avg_bid"] == D("20.00")  # (10 + 20 + 30) / 3: the test lead's 99 is out
    assert totals["avg_ping_ms"] == 50  # (40 + 60 + 50 + 50) / 4
    assert totals["avg_post_ms"] == 150
    assert totals["bid_rate"] == 75.0
    assert totals["accept_rate"] == 50.0
    beta_totals = offer_figures(offer=beta)["totals"]
    assert (beta_totals["pings"], beta_totals["posts"], beta_totals["accepts"]) == (0, 1, 1)
    assert (beta_totals["revenue"], beta_totals["payout"], beta_totals["margin"]) == (
        D("20.00"), D("8.00"), D("12.00"),
    )  # fmt: skip


def test_the_offer_page_lists_its_latest_leads_with_money_as_money(
    world: dict, client: Client
) -> None:
    _known_rows(world)
    client.force_login(UserFactory(is_superuser=True))
    alpha = world["offers"][0]

    page = client.get(reverse("admin:pingtree_offer_change", args=[alpha.pk])).content.decode()

    latest = page[page.index('id="latest-results"') :]
    latest = latest[: latest.index("</table>")]
    rows = [
        " ".join(re.sub(r"<[^>]+>", " ", tr).split())
        for tr in re.findall(r"<tr.*?</tr>", latest, re.S)[1:]  # the head row first
    ]
    # Newest first: the test lead, the skip, the rejected ping, the outbid, the rejected
    # post, the sale. Bids and prices in two decimals, the sale named as the others are.
    assert "(test)" in rows[0] and rows[0].endswith("Sold 99.00 99.00")
    assert "Skipped — — Cap reached" in rows[1]
    assert "Rejected — — State not covered" in rows[2]
    assert "10.00 —" in rows[3]
    assert "Rejected 20.00 — Duplicate" in rows[4]
    assert rows[5].endswith("Sold 30.00 30.00")
    assert "30.0000" not in latest and ">sold<" not in latest
    # Each row links its distribution and its lead.
    sale = OfferResult.objects.get(offer=alpha, is_sold=True, is_test=False)
    assert reverse("admin:pingtree_distribution_change", args=[sale.distribution_id]) in latest
    assert reverse("admin:structures_lead_change", args=[sale.distribution.lead_id]) in latest


def test_test_leads_never_count_in_figures_or_money(world: dict) -> None:
    alpha = world["offers"][0]
    test = _distribution(world, n=9, revenue="50", payout="20", is_test=True)
    _result(world, test, alpha, stage="posted", status="accepted", ping_status="accepted",
            bid=D("50"), post_status="accepted", is_sold=True, price=D("50"))  # fmt: skip
    totals = offer_figures(offer=alpha)["totals"]
    assert (totals["pings"], totals["accepts"], totals["revenue"]) == (0, 0, D("0.00"))
    assert offers_figures(offers=[alpha.pk]) == {}
    # A result marked test under a distribution that is not (or the reverse) is out too.
    live = _distribution(world, n=10, revenue="7", payout="0")
    _result(world, live, alpha, stage="posted", status="accepted", post_status="accepted",
            is_sold=True, price=D("7"))  # fmt: skip
    OfferResult.objects.filter(distribution=live).update(is_test=True)
    assert offer_figures(offer=alpha)["totals"]["revenue"] == D("0.00")


def test_a_multi_sale_payout_is_split_by_price(world: dict) -> None:
    alpha, beta = world["offers"]
    dist = _distribution(world, n=11, revenue="40", payout="10")
    _result(world, dist, alpha, stage="posted", status="accepted", post_status="accepted",
            is_sold=True, price=D("30"))  # fmt: skip
    _result(world, dist, beta, stage="posted", status="accepted", post_status="accepted",
            is_sold=True, price=D("10"))  # fmt: skip
    figures = offers_figures(offers=[alpha.pk, beta.pk])
    assert figures[alpha.pk]["payout"] == D("7.50")
    assert figures[beta.pk]["payout"] == D("2.50")
    assert figures[alpha.pk]["margin"] + figures[beta.pk]["margin"] == D("30.00")


def test_figures_fall_on_their_day_and_the_series_is_complete(world: dict) -> None:
    alpha = world["offers"][0]
    old = _distribution(world, n=12, revenue="5", payout="0")
    result = _result(world, old, alpha, stage="posted", status="accepted",
                     post_status="accepted", is_sold=True, price=D("5"))  # fmt: skip
    three_days_ago = timezone.now() - timedelta(days=3)
    OfferResult.objects.filter(pk=result.pk).update(created_at=three_days_ago)
    ancient = _distribution(world, n=13, revenue="500", payout="0")
    result = _result(world, ancient, alpha, stage="posted", status="accepted",
                     post_status="accepted", is_sold=True, price=D("500"))  # fmt: skip
    OfferResult.objects.filter(pk=result.pk).update(created_at=timezone.now() - timedelta(days=30))
    figures = offer_figures(offer=alpha, days=14)
    assert len(figures["days"]) == 14
    assert figures["days"][-1]["day"] == timezone.localdate()
    by_day = {d["day"]: d for d in figures["days"]}
    assert by_day[timezone.localdate(three_days_ago)]["accepts"] == 1
    assert by_day[timezone.localdate(three_days_ago)]["revenue"] == D("5.00")
    assert figures["totals"]["revenue"] == D("5.00")  # 30 days ago is outside the window
    chart = figures_chart(figures)
    assert len(chart["labels"]) == 14 and sum(chart["datasets"][3]["data"]) == 1
    assert sum(money_chart(figures)["datasets"][0]["data"]) == 5.0


def test_figures_of_many_offers_take_one_query(world: dict) -> None:
    _known_rows(world)
    ids = [o.pk for o in world["offers"]]
    with CaptureQueriesContext(connection) as queries:
        figures = offers_figures(offers=ids)
    assert len(queries.captured_queries) == 1
    assert figures[ids[0]]["accepts"] == 1 and figures[ids[1]]["accepts"] == 1
