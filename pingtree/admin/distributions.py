"""Distributions: every lead's way through its ping tree. The list is a big log table
(no full counts); a distribution's page is a table of who was asked, what they said
(bid, answer, reason, time), who won and why the others lost."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.decorators import display

from pingtree.admin.common import DISTRIBUTION_COLOURS, RESULT_COLOURS, money
from pingtree.choices import ResultStatus, TierMode
from pingtree.models import Distribution, OfferResult
from structures.admin.base import ScopedAdmin, scope_queryset, scoped_related_filter
from structures.models import Lead

ANSWER_WORDS = {
    "accepted": "accepted",
    "rejected": "rejected",
    "pending": "pending",
    "error": "error",
    "timeout": "no answer in time",
    "outbid": "outbid",
    "skipped": "skipped",
}


def _amount(value: Decimal | None) -> str:
    return money(value) if value is not None else "—"


def why(
    row: OfferResult, winners: list[OfferResult], others: list[OfferResult] | None = None
) -> str:
    """One sentence: why this offer won, or why it did not get the lead (``others``: the
    distribution's other results, to tell a top bid from a fallback)."""
    others = others or []
    if row.is_sold:
        price = f" at {_amount(row.price)}" if row.price is not None else ""
        if row.bid is not None and row.tier is not None and row.tier.mode == TierMode.AUCTION:
            if any(o.bid is not None and o.bid > row.bid for o in others):
                return f"Won: the higher bidders did not buy; sold{price}."
            return f"Won: highest valid bid, sold{price}."
        return f"Won: the buyer accepted the lead{price}."
    reason = (row.reason or "").strip()
    for prefix in ("ping:", "post:"):
        if reason.lower().startswith(prefix):
            reason = reason[len(prefix) :].strip()
    if row.status == ResultStatus.SKIPPED:
        return f"Not asked: {reason}" if reason else "Not asked."
    if row.ping_status and row.ping_status != ResultStatus.ACCEPTED:
        said = ANSWER_WORDS.get(row.ping_status, row.ping_status)
        return f"Ping {said}" + (f": {reason}" if reason else ".")
    if row.status == ResultStatus.OUTBID:
        best = max(
            (w.bid if w.bid is not None else w.price for w in winners if (w.bid or w.price)),
            default=None,
        )
        bid = _amount(row.bid)
        text = f"Outbid: bid {bid}"
        if best is not None:
            text += f" below the winning {_amount(best)}"
        if reason and not reason.lower().startswith("outbid"):
            return f"{text} ({reason})"
        return text + "."
    if row.post_status and row.post_status != ResultStatus.ACCEPTED:
        said = ANSWER_WORDS.get(row.post_status, row.post_status)
        return f"Post {said}" + (f": {reason}" if reason else ".")
    if row.status == ResultStatus.PENDING:
        return "Waiting for the buyer's answer."
    if reason:
        return reason
    if winners and row.ping_status == ResultStatus.ACCEPTED and not row.post_status:
        return "Bid, but the lead was sold before this offer's turn."
    return ANSWER_WORDS.get(row.status, row.status).capitalize() + "."


def distribution_rows(distribution: Distribution) -> list[dict[str, Any]]:
    """The results of one distribution in the order they were tried (one query)."""
    results = list(
        distribution.results.select_related("offer__advertiser", "tier").order_by(
            "tier__position", "position", "id"
        )
    )
    winners = [r for r in results if r.is_sold]
    rows = []
    for r in results:
        rows.append(
            {
                "result": r,
                "offer": r.offer,
                "advertiser": r.offer.advertiser,
                "tier": r.tier,
                "ping": ANSWER_WORDS.get(r.ping_status, r.ping_status) if r.ping_status else "",
                "post": ANSWER_WORDS.get(r.post_status, r.post_status) if r.post_status else "",
                "colour": "success" if r.is_sold else RESULT_COLOURS.get(r.status, "info"),
                "why": why(r, winners, [o for o in results if o is not r]),
            }
        )
    return rows


def lead_distribution_panel(request: HttpRequest, lead: Lead) -> str:
    """The lead's distribution as a panel for the lead's page (who was asked, who won,
    why the others lost), or "" when the operator may not see it. Ready for a lead-page
    hook in structures' admin (the ping tree cannot add to that page by itself)."""
    model_admin = admin.site._registry[Distribution]
    distribution = model_admin.get_queryset(request).filter(lead_id=lead.pk).first()
    if distribution is not None and not model_admin.has_view_permission(request, distribution):
        return ""
    rows = distribution_rows(distribution) if distribution is not None else []
    return render_to_string(
        "admin/pingtree/distribution/lead_panel.html",
        {
            "distribution": distribution,
            "rows": rows,
            "winners": [r for r in rows if r["result"].is_sold],
        },
        request=request,
    )


@admin.register(Distribution)
class DistributionAdmin(ScopedAdmin):
    list_display = [
        "created_at", "lead_link", "tree", "status_badge", "sold_count", "revenue_display",
        "payout_display", "margin_display", "duration", "is_test",
    ]  # fmt: skip
    list_filter = [
        "status", "is_test", scoped_related_filter("tree"),
        ("created_at", admin.DateFieldListFilter), scoped_related_filter("workspace"),
    ]  # fmt: skip
    search_fields = ["lead__pcid", "lead__external_id", "reason"]
    list_select_related = ["lead", "tree"]
    show_full_result_count = False  # big table: no COUNT(*) over every distribution
    date_hierarchy = "created_at"
    change_form_template = "admin/pingtree/distribution/change_form.html"
    fieldsets = [
        (None, {"fields": ["lead", "tree", "status", "reason", "is_test"]}),
        ("Money", {"fields": ["sold_count", "revenue", "payout", "margin", "redirect_url"]}),
        ("Timing", {"fields": ["created_at", "started_at", "deadline_at", "finished_at"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @display(description="status", ordering="status", label=DISTRIBUTION_COLOURS)
    def status_badge(self, obj: Distribution) -> str:
        return obj.status

    @admin.display(description="lead", ordering="lead__created_at")
    def lead_link(self, obj: Distribution) -> Any:
        url = reverse("admin:structures_lead_change", args=[obj.lead_id])
        return format_html('<a class="text-primary-600" href="{}">{}</a>', url, obj.lead.pcid)

    @admin.display(description="revenue", ordering="revenue")
    def revenue_display(self, obj: Distribution) -> str:
        return money(obj.revenue)

    @admin.display(description="payout", ordering="payout")
    def payout_display(self, obj: Distribution) -> str:
        return money(obj.payout)

    @admin.display(description="margin", ordering="margin")
    def margin_display(self, obj: Distribution) -> str:
        return money(obj.margin)

    @admin.display(description="time")
    def duration(self, obj: Distribution) -> str:
        if obj.started_at and obj.finished_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds() * 1000:.0f} ms"
        return "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the ping tree makes them

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # evidence

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        extra_context = extra_context or {}
        obj = self.get_object(request, object_id) if object_id else None
        if obj is not None:
            rows = distribution_rows(obj)
            extra_context.update(
                rows=rows,
                winners=[r for r in rows if r["result"].is_sold],
            )
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("lead/<str:pcid>/", wrap(self.for_lead_view), name="pingtree_distribution_lead"),
            *super().get_urls(),
        ]

    def for_lead_view(self, request: HttpRequest, pcid: str) -> HttpResponse:
        """``/admin/pingtree/distribution/lead/<pcid>/``: a lead's distribution, for links
        from anywhere that knows the lead's public id."""
        lead = scope_queryset(Lead.objects.all(), request).filter(pcid=pcid).first()
        distribution = (
            self.get_queryset(request).filter(lead=lead).values("pk").first() if lead else None
        )
        if distribution is None:
            raise Http404("This lead has no distribution.")
        return redirect("admin:pingtree_distribution_change", distribution["pk"])

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("lead", "tree")
