"""The ping tree editor: a tree with its tiers inline (order, mode, deadlines), each tier
with its offers inline (priority, weight), and a map of the whole tree on its page."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.html import format_html
from unfold.decorators import display

from pingtree.admin.common import OFFER_STATUS_COLOURS, WorkspaceFromParentFormSet
from pingtree.choices import TierMode
from pingtree.models import PingTree, Tier, TierOffer
from structures.admin.base import ScopedAdmin, ScopedTabularInline, scoped_related_filter


class TierInline(ScopedTabularInline):
    model = Tier
    formset = WorkspaceFromParentFormSet
    fields = ["position", "name", "mode", "max_sales", "deadline_seconds", "offers_link"]
    readonly_fields = ["offers_link"]
    ordering = ["position", "id"]
    hide_title = True
    verbose_name = "tier"
    verbose_name_plural = "tiers (lower order runs first)"

    @admin.display(description="offers")
    def offers_link(self, obj: Tier) -> Any:
        if not obj.pk:
            return "Save, then add offers"
        url = reverse("admin:pingtree_tier_change", args=[obj.pk])
        return format_html('<a class="text-primary-600" href="{}">Edit offers</a>', url)


class TierOfferForm(forms.ModelForm):
    class Meta:
        model = TierOffer
        fields = ["offer", "priority", "weight"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        offer = data.get("offer")
        workspace_id = self.instance.workspace_id
        if offer is not None and workspace_id and offer.workspace_id != workspace_id:
            self.add_error("offer", "Choose an offer of this tier's workspace.")
        return data


class TierOfferInline(ScopedTabularInline):
    model = TierOffer
    form = TierOfferForm
    formset = WorkspaceFromParentFormSet
    fields = ["offer", "priority", "weight", "offer_status"]
    readonly_fields = ["offer_status"]
    ordering = ["priority", "id"]
    hide_title = True
    verbose_name = "offer"
    verbose_name_plural = "offers in this tier (waterfall: by priority; split: by weight)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("offer")

    @admin.display(description="offer status")
    def offer_status(self, obj: TierOffer) -> str:
        if not obj.pk:
            return "—"
        return obj.offer.get_status_display()


@admin.register(PingTree)
class PingTreeAdmin(ScopedAdmin):
    list_display = [
        "name", "workspace", "active_badge", "is_default", "tier_count", "offer_count",
        "deadline_seconds", "payout_percent",
    ]  # fmt: skip
    list_filter = ["is_active", "is_default", scoped_related_filter("workspace")]
    search_fields = ["name"]
    ordering = ["name", "id"]  # the Count annotations drop Meta.ordering (GROUP BY)
    inlines = [TierInline]
    filter_horizontal = ["partners", "structures"]
    change_form_template = "admin/pingtree/pingtree/change_form.html"
    fieldsets = [
        (None, {"fields": ["workspace", "name", "is_active", "is_default"]}),
        ("Which leads", {"fields": ["partners", "structures"]}),
        ("Deadline and money", {"fields": ["deadline_seconds", "payout_percent"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("workspace")
            .annotate(
                _tiers=Count("tiers", distinct=True),
                _offers=Count("tiers__tier_offers", distinct=True),
            )
        )

    @display(description="active", ordering="is_active", label={"yes": "success", "no": "danger"})
    def active_badge(self, obj: PingTree) -> str:
        return "yes" if obj.is_active else "no"

    @admin.display(description="tiers", ordering="_tiers")
    def tier_count(self, obj: PingTree) -> int:
        return obj._tiers

    @admin.display(description="offers", ordering="_offers")
    def offer_count(self, obj: PingTree) -> int:
        return obj._offers

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
            extra_context["tree_map"] = tree_map(obj)
        return super().changeform_view(request, object_id, form_url, extra_context)


def tree_map(tree: PingTree) -> list[dict[str, Any]]:
    """The tree as the page draws it: tiers in order, each with its offers (two queries)."""
    tiers = tree.tiers.order_by("position", "id").prefetch_related(
        Prefetch(
            "tier_offers",
            queryset=TierOffer.objects.select_related("offer__advertiser").order_by(
                "priority", "id"
            ),
        )
    )
    out = []
    for tier in tiers:
        out.append(
            {
                "tier": tier,
                "mode": TierMode(tier.mode).label.split(" (")[0],
                "offers": [
                    {
                        "row": row,
                        "offer": row.offer,
                        "colour": OFFER_STATUS_COLOURS.get(row.offer.status, "info"),
                    }
                    for row in tier.tier_offers.all()
                ],
            }
        )
    return out


@admin.register(Tier)
class TierAdmin(ScopedAdmin):
    list_display = ["__str__", "tree", "position", "mode", "deadline_seconds", "offer_count"]
    list_filter = ["mode", scoped_related_filter("tree")]
    search_fields = ["name", "tree__name"]
    ordering = ["tree__name", "position", "id"]
    inlines = [TierOfferInline]
    fieldsets = [
        (None, {"fields": ["tree", "position", "name", "mode"]}),
        ("Limits", {"fields": ["max_sales", "deadline_seconds"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("tree")
            .annotate(_offers=Count("tier_offers"))
        )

    @admin.display(description="offers", ordering="_offers")
    def offer_count(self, obj: Tier) -> int:
        return obj._offers

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Tier:
        # Before the inline rows are built: they take the tier's workspace.
        obj = super().save_form(request, form, change)
        obj.workspace_id = obj.tree.workspace_id
        return obj

    def response_change(self, request: HttpRequest, obj: Tier) -> HttpResponse:
        if "_continue" not in request.POST and "_addanother" not in request.POST:
            # Back to the tree: the tier page is one step of editing the tree.
            self.message_user(request, f"“{obj}” saved.")
            return redirect("admin:pingtree_pingtree_change", obj.tree_id)
        return super().response_change(request, obj)
