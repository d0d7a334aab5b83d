"""Per-offer figures of the ping tree: pings, bids, wins, posts, accepts, revenue, the
partners' payout and the margin, average bid and response times, by day and in total.

Selectors only (reads). Every figure is computed in the database from ``OfferResult``
rows, grouped by offer (and by day), so a page of offers costs one query, not one per
row. Test leads never count: a result is left out when it or its distribution is marked
test (the service marks both; either is enough here).

Definitions (one result = one offer asked about one lead):

- pings: results whose offer was pinged (it has a ping answer);
- bids: pings answered with a bid (accepted with a price);
- wins: pinged offers that were then posted to (they won their auction, or were next
  when the winner refused);
- posts: results that were posted (a post answer);
- accepts: posts the buyer accepted (sold);
- revenue: the price of the sales; payout: the partner's share of it (the
  distribution's payout split over its sales in proportion to their price); margin:
  revenue - payout;
- average bid, average ping and post times in milliseconds.

Days are calendar days in the project's time zone (``TIME_ZONE``), like the integration
figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import (
    Avg,
    Case,
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from pingtree.choices import ResultStatus
from pingtree.models import Offer, OfferResult

ZERO = Decimal("0")
MONEY_FIELD = DecimalField(max_digits=24, decimal_places=4)
COUNTS = ("pings", "bids", "wins", "posts", "accepts")
MONEY = ("revenue", "payout", "margin")


def counted_results() -> QuerySet[OfferResult]:
    """Results that count in figures and money: never a test lead's."""
    return OfferResult.objects.filter(is_test=False, distribution__is_test=False)


def _payout_share() -> Any:
    """The partner's payout of one sale: the distribution's payout split over its sales
    in proportion to their price (an exclusive sale carries all of it)."""
    return Case(
        When(
            is_sold=True,
            distribution__revenue__gt=0,
            then=ExpressionWrapper(
                F("price") * F("distribution__payout") / F("distribution__revenue"),
                output_field=MONEY_FIELD,
            ),
        ),
        default=Value(ZERO),
        output_field=MONEY_FIELD,
    )


def figure_aggregates() -> dict[str, Any]:
    """The aggregate expressions of every figure, for ``.annotate()`` or ``.aggregate()``
    over OfferResult rows."""
    pinged = ~Q(ping_status="")
    posted = ~Q(post_status="")
    return {
        "pings": Count("id", filter=pinged),
        "bids": Count("id", filter=pinged & Q(bid__isnull=False)),
        "wins": Count("id", filter=pinged & posted),
        "posts": Count("id", filter=posted),
        "accepts": Count("id", filter=Q(is_sold=True)),
        "rejects": Count("id", filter=posted & Q(post_status=ResultStatus.REJECTED)),
        "errors": Count(
            "id",
            filter=Q(post_status__in=[ResultStatus.ERROR, ResultStatus.TIMEOUT])
            | Q(ping_status__in=[ResultStatus.ERROR, ResultStatus.TIMEOUT]),
        ),
        "revenue": Coalesce(
            Sum("price", filter=Q(is_sold=True), output_field=MONEY_FIELD),
            Value(ZERO),
            output_field=MONEY_FIELD,
        ),
        "payout": Coalesce(Sum(_payout_share()), Value(ZERO), output_field=MONEY_FIELD),
        "avg_bid": Avg("bid", filter=pinged & Q(bid__isnull=False)),
        "avg_ping_ms": Avg("ping_ms"),
        "avg_post_ms": Avg("post_ms"),
    }


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    """Rounded figures, the margin, and the rates an operator reads first."""
    out = {key: int(row.get(key) or 0) for key in (*COUNTS, "rejects", "errors")}
    revenue = (row.get("revenue") or ZERO).quantize(Decimal("0.01"))
    payout = (row.get("payout") or ZERO).quantize(Decimal("0.01"))
    out.update(revenue=revenue, payout=payout, margin=revenue - payout)
    avg_bid = row.get("avg_bid")
    out["avg_bid"] = Decimal(avg_bid).quantize(Decimal("0.01")) if avg_bid is not None else None
    for key in ("avg_ping_ms", "avg_post_ms"):
        out[key] = round(row[key]) if row.get(key) is not None else None
    out["bid_rate"] = round(100 * out["bids"] / out["pings"], 1) if out["pings"] else None
    out["accept_rate"] = round(100 * out["accepts"] / out["posts"], 1) if out["posts"] else None
    return out


def _start(days: int) -> date:
    return timezone.localdate() - timedelta(days=days - 1)


def offer_figures(*, offer: Offer, days: int = 14) -> dict[str, Any]:
    """One offer's figures per day over the last ``days`` days (a full series, days
    without results included) and their totals. Two queries."""
    start = _start(days)
    results = counted_results().filter(offer=offer, created_at__date__gte=start)
    rows = (
        results.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(**figure_aggregates())
        .order_by("day")
    )
    by_day = {r["day"]: _finish(r) for r in rows}
    empty = _finish({})
    series = []
    for i in range(days):
        day = start + timedelta(days=i)
        series.append({"day": day, **by_day.get(day, empty)})
    totals = _finish(results.aggregate(**figure_aggregates()))
    return {"days": series, "totals": totals, "since": start}


def offers_figures(*, offers: Iterable[int] | QuerySet, days: int = 14) -> dict[int, dict]:
    """Figures of many offers over the last ``days`` days, by offer id (one query; an
    offer without results is absent)."""
    start = _start(days)
    rows = (
        counted_results()
        .filter(offer_id__in=offers, created_at__date__gte=start)
        .values("offer_id")
        .annotate(**figure_aggregates())
        .order_by()
    )
    return {r["offer_id"]: _finish(r) for r in rows}


def figures_chart(figures: dict[str, Any]) -> dict[str, Any]:
    """Chart.js data for unfold's bar chart: posts split into accepted and not, with
    bids beside them, per day."""
    days = figures["days"]
    return {
        "labels": [d["day"].strftime("%b %d") for d in days],
        "datasets": [
            {"label": "Pings", "data": [d["pings"] for d in days], "backgroundColor": "#94a3b8"},
            {"label": "Bids", "data": [d["bids"] for d in days], "backgroundColor": "#6366f1"},
            {"label": "Posts", "data": [d["posts"] for d in days], "backgroundColor": "#f59e0b"},
            {
                "label": "Accepted",
                "data": [d["accepts"] for d in days],
                "backgroundColor": "#16a34a",
            },
        ],
    }


def money_chart(figures: dict[str, Any]) -> dict[str, Any]:
    """Chart.js data: revenue, payout and margin per day (stacked payout + margin)."""
    days = figures["days"]
    return {
        "labels": [d["day"].strftime("%b %d") for d in days],
        "datasets": [
            {
                "label": "Margin",
                "data": [float(d["margin"]) for d in days],
                "backgroundColor": "#16a34a",
                "stack": "money",
            },
            {
                "label": "Partner payout",
                "data": [float(d["payout"]) for d in days],
                "backgroundColor": "#0ea5e9",
                "stack": "money",
            },
        ],
    }
