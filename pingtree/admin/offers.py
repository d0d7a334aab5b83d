"""Offers: price model, caps, the filters editor with filter templates, per-offer figures
with charts, and buyer health (auto-paused offers, resumed by hand)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, DecimalField, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.decorators import display
from unfold.widgets import UnfoldAdminTextareaWidget

from pingtree import figures as offer_figures_module
from pingtree import services
from pingtree.admin.common import OFFER_STATUS_COLOURS, WorkspaceFromParentFormSet, money
from pingtree.choices import OfferStatus
from pingtree.filters import FilterError, filters_export, filters_import, filters_validate
from pingtree.models import Cap, CapCounter, Offer, OfferResult
from structures.admin.base import ScopedAdmin, ScopedTabularInline, scoped_related_filter

FIGURE_DAYS = 14
MONEY_KEYS = ("revenue", "payout", "margin")
LIST_DAYS = 7
FILTERS_EXAMPLE = """{
  "groups": [{"match": "all", "conditions": [
    {"field": "g_loan_amount", "operator": "bigger_than", "value": "1000"}]}],
  "geo": {"mode": "include", "states": ["CA", "NY"]},
  "schedule": {"timezone": "America/New_York", "days": [0, 1, 2, 3, 4],
               "from": "09:00", "to": "18:00"}
}"""


def filter_error_messages(errors: dict[str, list[str]]) -> list[str]:
    """One message per problem, each naming where it is (``groups[0].conditions[1]``)."""
    return [
        f"{path}: {message}" if path else message
        for path, items in errors.items()
        for message in items
    ]


def parse_filters(text: str) -> dict[str, Any]:
    """The filter definition typed in the editor, or ValidationError with a message per
    problem (a JSON syntax error says where)."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"Not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from exc
    errors = filters_validate(definition)
    if errors:
        raise ValidationError(filter_error_messages(errors))
    return definition


class FiltersField(forms.CharField):
    """The filters JSON as text: shown indented, read back as a validated object."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return json.dumps(value, indent=2, ensure_ascii=False) if value else ""
        return value

    def to_python(self, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        return parse_filters(super().to_python(value))


class OfferForm(forms.ModelForm):
    filters = FiltersField(
        label="Filters",
        required=False,
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 14, "class": "font-mono text-sm"}),
        help_text=format_html(
            "Which leads this offer accepts, as JSON; empty accepts every lead. Sections: "
            "<code>groups</code> (AND/OR field conditions), <code>partners</code>, "
            "<code>history</code>, <code>ratio</code>, <code>external</code>, "
            "<code>schedule</code>, <code>geo</code>. Each problem is shown with where it "
            "is. Example:<pre class='text-xs mt-2'>{}</pre>",
            FILTERS_EXAMPLE,
        ),
    )

    class Meta:
        model = Offer
        fields = [
            "workspace", "advertiser", "name", "status", "pause_reason", "integration",
            "timeout_seconds", "price_model", "price", "revenue_share_percent", "min_price",
            "sale_mode", "country", "filters", "auto_pause_after",
        ]  # fmt: skip


class CapInline(ScopedTabularInline):
    model = Cap
    formset = WorkspaceFromParentFormSet
    fields = ["metric", "period", "limit", "is_active", "used_now"]
    readonly_fields = ["used_now"]
    hide_title = True
    verbose_name = "cap"
    verbose_name_plural = "caps (never exceeded; test leads do not count)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        latest = CapCounter.objects.filter(cap=OuterRef("pk")).order_by("-period_start")
        return (
            super()
            .get_queryset(request)
            .annotate(
                _used=Subquery(latest.values("used")[:1]),
                _period_start=Subquery(latest.values("period_start")[:1]),
            )
        )

    @admin.display(description="used (latest period)")
    def used_now(self, obj: Cap) -> str:
        used = getattr(obj, "_used", None)
        if used is None:
            return "—"
        started = getattr(obj, "_period_start", None)
        since = f" since {timezone.localtime(started):%b %d %H:%M}" if started else ""
        return f"{used.normalize():f} of {obj.limit.normalize():f}{since}"


# --- the core's services ---------------------------------------------------------------------
# The admin changes offers only through pingtree.services. offer_filters_set is not
# there yet: the stand-in below does the same single validated write until it is.


def offer_resume(*, offer: Offer, actor: str) -> bool:
    """Resume a paused offer (its error streak forgotten); False when it was not paused."""
    if offer.status != OfferStatus.PAUSED:
        return False
    services.offer_resume(offer=offer, actor=actor)
    return True


def offer_pause(*, offer: Offer, reason: str, actor: str) -> bool:
    return bool(services.offer_pause(offer=offer, reason=reason, actor=actor))


def offer_filters_set(*, offer: Offer, filters: dict[str, Any], actor: str) -> None:
    service = getattr(services, "offer_filters_set", None)
    if service is not None:
        service(offer=offer, filters=filters, actor=actor)
        return
    offer.filters = filters
    offer.full_clean()
    offer.save(update_fields=["filters"])


def _results_since(days: int) -> QuerySet:
    since = timezone.now() - timedelta(days=days)
    return offer_figures_module.counted_results().filter(
        offer=OuterRef("pk"), created_at__gte=since
    )


@admin.register(Offer)
class OfferAdmin(ScopedAdmin):
    form = OfferForm
    list_display = [
        "name", "advertiser", "status_badge", "price_display", "sale_mode", "integration",
        "health", "sold_recent", "revenue_recent",
    ]  # fmt: skip
    list_filter = [
        "status", "price_model", "sale_mode", scoped_related_filter("advertiser"),
        scoped_related_filter("workspace"),
    ]  # fmt: skip
    search_fields = ["name", "advertiser__name"]
    list_select_related = ["advertiser", "integration"]
    ordering = ["name", "id"]
    inlines = [CapInline]
    actions = ["resume_offers", "pause_offers"]
    change_form_template = "admin/pingtree/offer/change_form.html"
    change_list_template = "admin/pingtree/offer/change_list.html"
    fieldsets = [
        (None, {"fields": ["workspace", "advertiser", "name", "status", "pause_reason"]}),
        ("Buyer's API", {"fields": ["integration", "timeout_seconds"]}),
        (
            "Price",
            {"fields": ["price_model", "price", "revenue_share_percent", "min_price", "sale_mode"]},
        ),
        ("Which leads", {"fields": ["country", "filters"]}),
        ("Health", {"fields": ["auto_pause_after", "consecutive_error_count", "paused_at"]}),
    ]
    readonly_fields = ["consecutive_error_count", "paused_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        sold = (
            _results_since(LIST_DAYS)
            .filter(is_sold=True)
            .values("offer")
            .annotate(n=Count("id"))
            .values("n")
        )
        revenue = (
            _results_since(LIST_DAYS)
            .filter(is_sold=True)
            .values("offer")
            .annotate(total=Sum("price"))
            .values("total")
        )
        money_field = DecimalField(max_digits=24, decimal_places=4)
        return (
            super()
            .get_queryset(request)
            .annotate(
                _sold=Coalesce(Subquery(sold, output_field=IntegerField()), 0),
                _revenue=Coalesce(
                    Subquery(revenue, output_field=money_field),
                    Decimal("0"),
                    output_field=money_field,
                ),
            )
        )

    @display(description="status", ordering="status", label=OFFER_STATUS_COLOURS)
    def status_badge(self, obj: Offer) -> str:
        return obj.status

    @admin.display(description="price", ordering="price")
    def price_display(self, obj: Offer) -> str:
        if obj.price_model == "bid":
            return f"bid (min {money(obj.min_price)})"
        if obj.price_model == "revenue_share":
            return f"{obj.revenue_share_percent.normalize():f} % share"
        return money(obj.price)

    @admin.display(description="health", ordering="consecutive_error_count")
    def health(self, obj: Offer) -> Any:
        if obj.status == OfferStatus.PAUSED:
            return format_html(
                '<span class="text-red-600 font-semibold" title="{}">Paused: {}</span>',
                obj.pause_reason,
                (obj.pause_reason or "by hand")[:60],
            )
        if obj.consecutive_error_count:
            return format_html(
                '<span class="text-amber-600">{} error(s) in a row (pauses at {})</span>',
                obj.consecutive_error_count,
                obj.auto_pause_after or "never",
            )
        return "OK"

    @admin.display(description=f"sold, {LIST_DAYS} days", ordering="_sold")
    def sold_recent(self, obj: Offer) -> int:
        return obj._sold

    @admin.display(description=f"revenue, {LIST_DAYS} days", ordering="_revenue")
    def revenue_recent(self, obj: Offer) -> str:
        return money(obj._revenue)

    # --- change page -------------------------------------------------------------------

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
            figures = offer_figures_module.offer_figures(offer=obj, days=FIGURE_DAYS)
            extra_context.update(
                figures=figures,
                figure_days=FIGURE_DAYS,
                chart_data=json.dumps(offer_figures_module.figures_chart(figures)),
                money_chart_data=json.dumps(offer_figures_module.money_chart(figures)),
                latest_results=OfferResult.objects.filter(offer=obj)
                .select_related("distribution__lead", "tier")
                .order_by("-created_at", "-id")[:10],
                can_edit=self.has_change_permission(request, obj),
            )
        return super().changeform_view(request, object_id, form_url, extra_context)

    # --- buyer health, filter templates ------------------------------------------------

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("health/", wrap(self.health_view), name="pingtree_offer_health"),
            path("figures/", wrap(self.figures_view), name="pingtree_offer_figures"),
            path("<path:object_id>/resume/", wrap(self.resume_view), name="pingtree_offer_resume"),
            path(
                "<path:object_id>/filters/export/",
                wrap(self.filters_export_view),
                name="pingtree_offer_filters_export",
            ),
            path(
                "<path:object_id>/filters/import/",
                wrap(self.filters_import_view),
                name="pingtree_offer_filters_import",
            ),
            *super().get_urls(),
        ]

    def _offer(self, request: HttpRequest, object_id: str, *, edit: bool = False) -> Offer:
        offer = self.get_object(request, object_id)
        if offer is None or (edit and not self.has_change_permission(request, offer)):
            raise Http404
        return offer

    def _resume(self, request: HttpRequest, offer: Offer) -> bool:
        return offer_resume(offer=offer, actor=str(request.user))

    def health_view(self, request: HttpRequest) -> HttpResponse:
        """Offers that are paused or erring, worst first, with a resume button each."""
        offers = (
            self.get_queryset(request)
            .filter(Q(status=OfferStatus.PAUSED) | Q(consecutive_error_count__gt=0))
            .select_related("advertiser", "workspace")
            .order_by("-status", "-consecutive_error_count", "name")
        )
        offers = [o for o in offers]
        context = {
            **self.admin_site.each_context(request),
            "title": "Buyer health",
            "offers": offers,
            "paused": [o for o in offers if o.status == OfferStatus.PAUSED],
            "erring": [o for o in offers if o.status != OfferStatus.PAUSED],
            "active_count": self.get_queryset(request).filter(status=OfferStatus.ACTIVE).count(),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/pingtree/offer/health.html", context)

    def figures_view(self, request: HttpRequest) -> HttpResponse:
        """Every offer's figures and money over the last days, side by side (one query
        for the figures), with revenue and margin per offer as a chart."""
        offers = list(  # scoped, without the changelist's annotations
            ScopedAdmin.get_queryset(self, request)
            .select_related("advertiser")
            .order_by("name", "id")
        )
        by_offer = offer_figures_module.offers_figures(
            offers=[o.pk for o in offers], days=FIGURE_DAYS
        )
        rows = [{"offer": o, "f": by_offer[o.pk]} for o in offers if o.pk in by_offer]
        idle = [o for o in offers if o.pk not in by_offer]
        rows.sort(key=lambda r: -r["f"]["revenue"])
        totals = {
            key: sum((r["f"][key] for r in rows), Decimal("0") if key in MONEY_KEYS else 0)
            for key in ("pings", "bids", "wins", "posts", "accepts", *MONEY_KEYS)
        }
        chart = {
            "labels": [r["offer"].name for r in rows],
            "datasets": [
                {"label": "Margin", "data": [float(r["f"]["margin"]) for r in rows],
                 "backgroundColor": "#16a34a", "stack": "money"},
                {"label": "Partner payout", "data": [float(r["f"]["payout"]) for r in rows],
                 "backgroundColor": "#0ea5e9", "stack": "money"},
            ],
        }  # fmt: skip
        context = {
            **self.admin_site.each_context(request),
            "title": f"Offer figures, last {FIGURE_DAYS} days",
            "rows": rows,
            "idle": idle,
            "totals": totals,
            "figure_days": FIGURE_DAYS,
            "chart_data": json.dumps(chart),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/pingtree/offer/figures.html", context)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            raise Http404
        offer = self._offer(request, object_id, edit=True)
        if self._resume(request, offer):
            self.message_user(request, f"“{offer}” resumed: it is offered leads again.")
        else:
            self.message_user(request, f"“{offer}” was not paused.", messages.WARNING)
        target = request.POST.get("next") or reverse("admin:pingtree_offer_change", args=[offer.pk])
        if not target.startswith("/"):
            target = reverse("admin:pingtree_offer_change", args=[offer.pk])
        return redirect(target)

    def filters_export_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        offer = self._offer(request, object_id)
        try:
            document = filters_export(offer.filters or {}, name=f"{offer.name} filters")
        except FilterError as exc:
            self.message_user(
                request,
                "The saved filters are not valid; fix them first: "
                + "; ".join(filter_error_messages(exc.errors)),
                messages.ERROR,
            )
            return redirect("admin:pingtree_offer_change", offer.pk)
        response = HttpResponse(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n",
            content_type="application/json",
        )
        response["Content-Disposition"] = f'attachment; filename="offer-{offer.pk}-filters.json"'
        return response

    def filters_import_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Paste or upload a filter template; its definition replaces the offer's filters
        after validation (errors shown by path, nothing saved)."""
        offer = self._offer(request, object_id, edit=True)
        errors: list[str] = []
        text = ""
        if request.method == "POST":
            upload = request.FILES.get("file")
            text = (
                upload.read().decode("utf-8", "replace") if upload else request.POST.get("json", "")
            )
            try:
                document = json.loads(text)
            except json.JSONDecodeError as exc:
                errors = [f"Not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."]
            else:
                try:
                    definition = filters_import(document)
                except FilterError as exc:
                    errors = filter_error_messages(exc.errors)
                else:
                    offer_filters_set(offer=offer, filters=definition, actor=str(request.user))
                    name = document.get("name", "")
                    self.message_user(request, f"Filters imported from “{name}”.")
                    return redirect("admin:pingtree_offer_change", offer.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Import filters into {offer}",
            "offer": offer,
            "original": offer,
            "errors": errors,
            "json_text": text,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/pingtree/offer/filters_import.html", context)

    # --- actions -----------------------------------------------------------------------

    @admin.action(description="Resume selected paused offers")
    def resume_offers(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = sum(1 for offer in queryset if self._resume(request, offer))
        self.message_user(
            request,
            f"{done} offer(s) resumed.",
            messages.SUCCESS if done else messages.WARNING,
        )

    @admin.action(description="Pause selected offers")
    def pause_offers(self, request: HttpRequest, queryset: QuerySet) -> None:
        done = 0
        for offer in queryset.exclude(status=OfferStatus.PAUSED):
            done += offer_pause(
                offer=offer, reason=f"Paused by {request.user}.", actor=str(request.user)
            )
        self.message_user(request, f"{done} offer(s) paused.")
