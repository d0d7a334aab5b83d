"""Reads of the integrations app: figures per integration, recent logs."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from integrations.models import Integration, RequestLog


def _p95(values: list[int]) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def integration_figures(*, integration: Integration, days: int = 14) -> dict[str, Any]:
    """Requests sent, success and rejection rates, average and p95 response time, per day
    and in total over the last ``days`` days (sent calls only)."""
    start = timezone.now().date() - timedelta(days=days - 1)
    sent = RequestLog.objects.filter(
        integration=integration, was_sent=True, created_at__date__gte=start
    )
    rows = (
        sent.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            total=Count("id"),
            accepted=Count("id", filter=Q(outcome="accepted")),
            rejected=Count("id", filter=Q(outcome__in=["rejected", "duplicate"])),
            errors=Count("id", filter=Q(outcome__in=["error", "timeout"])),
            avg_ms=Avg("duration_ms"),
        )
    )
    by_day: dict[date, dict[str, Any]] = {r["day"]: r for r in rows}
    # p95 from the durations themselves, capped per day so a busy integration stays cheap.
    durations: dict[date, list[int]] = {}
    for day in by_day:
        durations[day] = list(
            sent.filter(created_at__date=day, duration_ms__isnull=False)
            .order_by("-created_at")
            .values_list("duration_ms", flat=True)[:5000]
        )
    series = []
    for i in range(days):
        day = start + timedelta(days=i)
        r = by_day.get(day, {})
        total = r.get("total", 0)
        series.append(
            {
                "day": day,
                "total": total,
                "accepted": r.get("accepted", 0),
                "rejected": r.get("rejected", 0),
                "errors": r.get("errors", 0),
                "success_rate": round(100 * r.get("accepted", 0) / total, 1) if total else None,
                "rejection_rate": round(100 * r.get("rejected", 0) / total, 1) if total else None,
                "avg_ms": round(r["avg_ms"]) if r.get("avg_ms") is not None else None,
                "p95_ms": _p95(durations.get(day, [])),
            }
        )
    total = sum(d["total"] for d in series)
    accepted = sum(d["accepted"] for d in series)
    rejected = sum(d["rejected"] for d in series)
    all_ms = [ms for values in durations.values() for ms in values]
    return {
        "days": series,
        "total": total,
        "success_rate": round(100 * accepted / total, 1) if total else None,
        "rejection_rate": round(100 * rejected / total, 1) if total else None,
        "avg_ms": round(sum(all_ms) / len(all_ms)) if all_ms else None,
        "p95_ms": _p95(all_ms),
    }


def recent_logs(*, integration: Integration, limit: int = 10) -> QuerySet[RequestLog]:
    return RequestLog.objects.filter(integration=integration).select_related("lead")[:limit]
