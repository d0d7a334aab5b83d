"""Partners (lead sources) with their API keys, and advertisers (buyers)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from structures import services
from structures.admin.base import (
    ReadOnlyInlineMixin,
    ScopedAdmin,
    ScopedTabularInline,
    register_workspace_path,
    scoped_related_filter,
)
from structures.models import Advertiser, Partner, PartnerAPIKey

register_workspace_path(PartnerAPIKey, "partner__workspace")

# The library's own unscoped APIKey model is not used: partner keys are PartnerAPIKey.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)
del APIKeyModelAdmin


class PartnerAPIKeyInline(ReadOnlyInlineMixin, ScopedTabularInline):
    model = PartnerAPIKey
    fields = ["name", "prefix", "rate_limit_per_minute", "created", "last_used_at", "revoked"]
    readonly_fields = fields
    verbose_name = "API key"
    verbose_name_plural = "API keys (only the prefix is stored in clear)"


@admin.register(Partner)
class PartnerAdmin(ScopedAdmin):
    list_display = [
        "name",
        "status",
        "workspace",
        "company",
        "contact_email",
        "lead_count",
        "active_keys",
    ]
    list_filter = ["status", scoped_related_filter("workspace")]
    search_fields = ["name", "company", "contact_email"]
    ordering = ["name", "id"]  # the Count annotations drop Meta.ordering (GROUP BY)
    inlines = [PartnerAPIKeyInline]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "status", "default_structure", "country"]}),
        ("Contact", {"fields": ["company", "contact_name", "contact_email", "contact_phone"]}),
        ("Notes", {"fields": ["notes"]}),
    ]
    change_form_template = "admin/structures/partner/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("workspace")
            .annotate(
                _leads=Count("leads", distinct=True),
                _keys=Count("api_keys", filter=Q(api_keys__revoked=False), distinct=True),
            )
        )

    @admin.display(description="leads", ordering="_leads")
    def lead_count(self, obj: Partner) -> int:
        return obj._leads

    @admin.display(description="active keys", ordering="_keys")
    def active_keys(self, obj: Partner) -> int:
        return obj._keys

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/create-key/",
                self.admin_site.admin_view(self.create_key_view),
                name="structures_partner_create_key",
            ),
            *super().get_urls(),
        ]

    def create_key_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Create a key and show it once. Only POST creates; the page is not cached."""
        partner = self.get_object(request, object_id)
        if partner is None:
            raise Http404
        if not self.has_change_permission(request, partner):
            raise Http404
        change_url = reverse("admin:structures_partner_change", args=[partner.pk])
        if request.method != "POST":
            return redirect(change_url)
        name = (request.POST.get("_key_name") or "").strip()[:50] or "API key"
        api_key, plaintext = services.partner_api_key_create(partner=partner, name=name)
        context = {
            **self.admin_site.each_context(request),
            "title": f"New API key for {partner}",
            "partner": partner,
            "api_key": api_key,
            "plaintext": plaintext,
            "change_url": change_url,
            "opts": self.model._meta,
            "intake_url": request.build_absolute_uri("/api/v1/leads/"),
        }
        response = TemplateResponse(request, "admin/structures/partner/key_created.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(PartnerAPIKey)
class PartnerAPIKeyAdmin(ScopedAdmin):
    list_display = [
        "name",
        "prefix",
        "partner",
        "rate_limit_per_minute",
        "created",
        "last_used_at",
        "revoked",
    ]
    list_filter = ["revoked", scoped_related_filter("partner")]
    search_fields = ["name", "prefix", "partner__name"]
    readonly_fields = ["prefix", "partner", "created", "last_used_at", "revoked"]
    fields = [
        "name",
        "partner",
        "prefix",
        "rate_limit_per_minute",
        "expiry_date",
        "created",
        "last_used_at",
        "revoked",
    ]
    actions = ["revoke_keys"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("partner")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are created from the partner page, where they are shown once

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = 0
        for api_key in queryset:
            services.partner_api_key_revoke(api_key=api_key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    @admin.display(description="partner")
    def partner_link(self, obj: PartnerAPIKey) -> Any:
        url = reverse("admin:structures_partner_change", args=[obj.partner_id])
        return format_html('<a href="{}">{}</a>', url, obj.partner)


@admin.register(Advertiser)
class AdvertiserAdmin(ScopedAdmin):
    list_display = [
        "name",
        "status",
        "workspace",
        "company",
        "contact_email",
        "timezone",
        "country",
    ]
    list_filter = ["status", scoped_related_filter("workspace")]
    search_fields = ["name", "company", "contact_email"]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "status", "timezone", "country"]}),
        ("Contact", {"fields": ["company", "contact_name", "contact_email", "contact_phone"]}),
        ("Notes", {"fields": ["notes"]}),
    ]
