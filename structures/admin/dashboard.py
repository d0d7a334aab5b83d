"""The admin home: lead figures of the operator's workspaces and what to do next."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from structures.admin.base import scope_queryset
from structures.choices import LeadStatus
from structures.models import Lead, Partner, Structure

DAYS = 14
SERIES = [
    (LeadStatus.APPROVED, "Approved", "#16a34a"),
    (LeadStatus.PENDING, "Pending", "#f59e0b"),
    (LeadStatus.REJECTED, "Rejected", "#dc2626"),
    (LeadStatus.DUPLICATE, "Duplicate", "#6366f1"),
]


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    now = timezone.now()
    leads = scope_queryset(Lead.objects.filter(is_test=False), request)
    since = now - timedelta(hours=24)
    day = leads.filter(created_at__gte=since).aggregate(
        total=Count("id"), **{s: Count("id", filter=Q(status=s)) for s, _, _ in SERIES}
    )
    start = (now - timedelta(days=DAYS - 1)).date()
    rows = (
        leads.filter(created_at__date__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("id"))
    )
    per_day = {(r["day"], r["status"]): r["n"] for r in rows}
    days = [start + timedelta(days=i) for i in range(DAYS)]
    chart = {
        "labels": [d.strftime("%b %d") for d in days],
        "datasets": [
            {
                "label": label,
                "data": [per_day.get((d, status), 0) for d in days],
                "backgroundColor": colour,
                "stack": "leads",
            }
            for status, label, colour in SERIES
        ],
    }
    has_structure = scope_queryset(Structure.objects.all(), request).exists()
    has_partner = scope_queryset(Partner.objects.all(), request).exists()
    next_steps = []
    if not has_structure:
        next_steps.append(
            (
                "Create a structure",
                "The fields your leads carry.",
                reverse("admin:structures_structure_add"),
            )
        )
    if not has_partner:
        next_steps.append(
            (
                "Add a partner",
                "Then create its API key and post a lead.",
                reverse("admin:structures_partner_add"),
            )
        )
    context.update(
        kpis=[
            ("Leads, last 24 h", day["total"], "inbox", "?"),
            ("Approved", day[LeadStatus.APPROVED], "check_circle", "?status__exact=approved"),
            ("Pending", day[LeadStatus.PENDING], "hourglass_top", "?status__exact=pending"),
            ("Rejected", day[LeadStatus.REJECTED], "block", "?status__exact=rejected"),
            ("Duplicates", day[LeadStatus.DUPLICATE], "content_copy", "?status__exact=duplicate"),
        ],
        leads_url=reverse("admin:structures_lead_changelist"),
        chart_data=json.dumps(chart),
        recent_leads=leads.select_related("partner", "structure")[:8],
        next_steps=next_steps,
    )
    return context
