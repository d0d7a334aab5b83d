"""Leads: the list operators live in, and each lead's detail with its history."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from unfold.decorators import display

from structures import hooks, services
from structures.admin.base import (
    ReadOnlyInlineMixin,
    ScopedAdmin,
    ScopedTabularInline,
    scoped_related_filter,
)
from structures.choices import LeadStatus
from structures.fieldtypes import get_type
from structures.models import Field, Lead, LeadEvent

STATUS_COLOURS = {
    LeadStatus.APPROVED: "success",
    LeadStatus.PENDING: "warning",
    LeadStatus.REJECTED: "danger",
    LeadStatus.DUPLICATE: "info",
}


class LeadEventInline(ReadOnlyInlineMixin, ScopedTabularInline):
    model = LeadEvent
    fields = ["created_at", "kind", "message", "actor"]
    readonly_fields = fields
    hide_title = True
    verbose_name = "history entry"
    verbose_name_plural = "history"
    ordering = ["created_at", "id"]


@admin.register(Lead)
class LeadAdmin(ScopedAdmin):
    list_display = [
        "pcid",
        "created_at",
        "status_badge",
        "partner",
        "structure",
        "email",
        "source",
        "is_test",
    ]
    list_filter = [
        "status",
        scoped_related_filter("partner"),
        scoped_related_filter("structure"),
        "source",
        ("created_at", admin.DateFieldListFilter),
        "is_test",
        scoped_related_filter("workspace"),
    ]
    search_fields = ["pcid", "external_id", "data__g_email", "data__g_phone", "data__g_last_name"]
    list_select_related = ["partner", "structure"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # big table: no COUNT(*) over all leads
    inlines = [LeadEventInline]
    actions = ["approve_leads", "reject_leads"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "pcid",
                    "status",
                    "reason",
                    "workspace",
                    "partner",
                    "structure",
                    "source",
                    "is_test",
                ]
            },
        ),
        ("Values", {"fields": ["values_table"]}),
        ("Tracking", {"fields": ["external_id", "sub1", "sub2", "sub3", "sub4", "sub5", "ip"]}),
        ("Timing", {"fields": ["created_at", "decided_at", "duplicate_of"]}),
    ]
    # Everything on the page is read-only: a lead's values are evidence.
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @display(description="status", ordering="status", label=STATUS_COLOURS)
    def status_badge(self, obj: Lead) -> str:
        return obj.status

    @admin.display(description="email")
    def email(self, obj: Lead) -> str:
        return obj.data.get("g_email", "")

    @admin.display(description="values")
    def values_table(self, obj: Lead) -> Any:
        fields = {
            f.name: f
            for f in Field.objects.filter(name__in=list(obj.data)).only(
                "name", "label", "type", "is_sensitive", "workspace_id"
            )
            if f.workspace_id in (None, obj.workspace_id)
        }
        order = {
            name: i
            for i, name in enumerate(
                obj.structure.structure_fields.order_by("position", "id").values_list(
                    "field__name", flat=True
                )
            )
        }
        rows = []
        for name, value in sorted(obj.data.items(), key=lambda kv: order.get(kv[0], 10**6)):
            field = fields.get(name)
            shown = get_type(field.type).mask(value) if field and field.is_sensitive else value
            rows.append((field.label if field else name, name, shown))
        if not rows:
            return "—"
        body = format_html_join(
            "",
            '<tr><td class="pr-4 py-1">{}</td><td class="pr-4 py-1 text-xs opacity-70">'
            '<code>{}</code></td><td class="py-1">{}</td></tr>',
            rows,
        )
        return format_html('<table class="lead-values">{}</table>', body)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        # Panels of higher apps (the ping tree's distribution) under the lead's values;
        # the object itself is fetched once more only when a panel is registered.
        panels: list[str] = []
        if hooks.LEAD_PANELS:
            lead = self.get_object(request, object_id)
            if lead is not None:
                panels = [html for panel in hooks.LEAD_PANELS if (html := panel(request, lead))]
        extra_context = {**(extra_context or {}), "lead_panels": panels}
        return super().change_view(request, object_id, form_url, extra_context)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # leads come in through the API, forms and feeds

    def has_change_permission(self, request: HttpRequest, obj: Lead | None = None) -> bool:
        return False  # a lead's values are evidence; decisions go through the actions

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request, None)

    def _decide(self, request: HttpRequest, queryset: QuerySet, approve: bool) -> None:
        done = 0
        for lead in queryset.filter(status=LeadStatus.PENDING):
            if services.lead_decide(
                lead=lead,
                approve=approve,
                reason=f"{'Approved' if approve else 'Rejected'} by {request.user}.",
                actor=str(request.user),
            ):
                done += 1
        self.message_user(
            request,
            f"{done} pending lead(s) {'approved' if approve else 'rejected'}.",
            messages.SUCCESS if done else messages.WARNING,
        )

    @admin.action(description="Approve selected pending leads", permissions=["decide"])
    def approve_leads(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, True)

    @admin.action(description="Reject selected pending leads", permissions=["decide"])
    def reject_leads(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._decide(request, queryset, False)
