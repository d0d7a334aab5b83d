"""Caps: reserve before sending, release when the attempt does not count, never exceed.

Each (cap, period) has one CapCounter row. A reservation is one statement::

    INSERT INTO counter (cap_id, period_start, used) VALUES (cap, start, amount)
    ON CONFLICT (cap_id, period_start)
    DO UPDATE SET used = counter.used + EXCLUDED.used
    WHERE counter.used + EXCLUDED.used <= (SELECT limit FROM cap WHERE id = cap)
    RETURNING id

PostgreSQL runs the conflict branch under the row's lock and re-checks the WHERE on the
latest row version, so of 50 concurrent reservations against a limit of 10 exactly 10
return a row; the others return nothing and the offer is skipped as capped. An offer's
caps are reserved together in a savepoint: all or none.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from pingtree.choices import CapMetric, CapPeriod
from pingtree.models import Cap, CapCounter


def period_start(*, period: str, now: datetime, tz_name: str) -> datetime:
    """Start of the period holding ``now`` in the workspace's time zone (aware)."""
    local = now.astimezone(zoneinfo.ZoneInfo(tz_name))
    if period == CapPeriod.HOUR:
        start = local.replace(minute=0, second=0, microsecond=0)
    elif period == CapPeriod.DAY:
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == CapPeriod.WEEK:
        start = local.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=local.weekday()
        )
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    # Rebuild the wall time in the zone so a DST change inside the period gets the right
    # offset for its start.
    return start.replace(tzinfo=None).replace(tzinfo=zoneinfo.ZoneInfo(tz_name))


class _CapFull(Exception):
    def __init__(self, cap: Cap) -> None:
        self.cap = cap


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _reserve_one(*, cap: Cap, start: datetime, amount: Decimal) -> int | None:
    if amount > cap.limit:
        return None
    counter = _quote(CapCounter._meta.db_table)
    sql = (
        f"INSERT INTO {counter} (cap_id, period_start, used) VALUES (%s, %s, %s) "  # noqa: S608
        f"ON CONFLICT (cap_id, period_start) DO UPDATE SET used = {counter}.used + "
        f"EXCLUDED.used WHERE {counter}.used + EXCLUDED.used <= "
        f"(SELECT {_quote('limit')} FROM {_quote(Cap._meta.db_table)} WHERE id = %s) "
        "RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [cap.pk, start, amount, cap.pk])
        row = cursor.fetchone()
    return row[0] if row else None


def caps_reserve(
    *, caps: list[Cap], amounts: dict[str, Decimal], now: datetime, tz_name: str
) -> tuple[list[dict[str, Any]], str]:
    """Reserve ``amounts`` (by metric) on every active cap of the list, all or none.

    Returns (reservations, "") or ([], why) when a cap is full. A metric missing from
    ``amounts`` is not reserved now (e.g. revenue before the price is known)."""
    reservations: list[dict[str, Any]] = []
    try:
        with transaction.atomic():
            for cap in caps:
                if not cap.is_active or cap.metric not in amounts:
                    continue
                amount = amounts[cap.metric]
                if amount <= 0:
                    continue
                start = period_start(period=cap.period, now=now, tz_name=tz_name)
                counter_id = _reserve_one(cap=cap, start=start, amount=amount)
                if counter_id is None:
                    raise _CapFull(cap)
                reservations.append(
                    {"counter": counter_id, "metric": cap.metric, "amount": str(amount)}
                )
    except _CapFull as full:
        cap = full.cap
        label = CapMetric(cap.metric).label.lower()
        return [], f"cap reached: {cap.limit.normalize():f} {label} per {cap.period}"
    return reservations, ""


def caps_release(*, reservations: list[dict[str, Any]], metrics: tuple[str, ...] = ()) -> None:
    """Give back reserved amounts (all, or only those of ``metrics``)."""
    from django.db.models import F

    for item in reservations:
        if metrics and item["metric"] not in metrics:
            continue
        CapCounter.objects.filter(pk=item["counter"], used__gte=Decimal(item["amount"])).update(
            used=F("used") - Decimal(item["amount"])
        )


def caps_add(
    *, caps: list[Cap], metric: str, amount: Decimal, now: datetime, tz_name: str
) -> list[dict[str, Any]]:
    """Count ``amount`` of ``metric`` that is a fact already (a revenue-share price known
    only after the sale): counted even past the limit, which then refuses the next lead."""
    from django.db.models import F

    added: list[dict[str, Any]] = []
    if amount <= 0:
        return added
    for cap in caps:
        if not cap.is_active or cap.metric != metric:
            continue
        start = period_start(period=cap.period, now=now, tz_name=tz_name)
        counter, _ = CapCounter.objects.get_or_create(cap=cap, period_start=start)
        CapCounter.objects.filter(pk=counter.pk).update(used=F("used") + amount)
        added.append({"counter": counter.pk, "metric": metric, "amount": str(amount)})
    return added
