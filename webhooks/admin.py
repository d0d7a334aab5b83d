"""Operator pages of the webhooks app: endpoints with their URL to copy, the waiting
webhooks, and the inbound request log (read-only, no full counts)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from unfold.decorators import action, display

from integrations import secrets
from structures.admin.base import ScopedAdmin
from webhooks import services, signing
from webhooks.models import InboundWebhookRequest, WaitingWebhook, WebhookEndpoint


def _copyable(value: str, label: str) -> str:
    """A read-only input with a copy button (clipboard API, select-and-copy fallback)."""
    return format_html(
        '<span class="flex items-center gap-2">'
        '<input type="text" readonly value="{}" data-copy-source aria-label="{}" '
        'class="border border-base-200 rounded px-2 py-1 font-mono text-sm w-[36rem] max-w-full" '
        'onclick="this.select()">'
        '<button type="button" class="border border-base-200 rounded px-3 py-1 text-sm" '
        'data-copy-button onclick="(function(b){{var i=b.previousElementSibling;i.select();'
        "var done=function(){{b.textContent='Copied';}};"
        "if(navigator.clipboard){{navigator.clipboard.writeText(i.value).then(done,"
        "function(){{document.execCommand('copy');done();}});}}"
        "else{{document.execCommand('copy');done();}}}})(this)\">Copy</button></span>",
        value,
        label,
    )


class WebhookEndpointForm(forms.ModelForm):
    signing = forms.ChoiceField(
        label="Signature check",
        required=False,
        choices=[
            ("keep", "Keep as it is"),
            ("new", "Require Standard Webhooks signatures with a new secret"),
            ("set", "Require signatures with the secret below"),
            ("off", "No signature check"),
        ],
        initial="keep",
        help_text="Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature; "
        "5 minute tolerance; a replayed message id is refused). A new secret is shown once.",
    )
    signing_secret = forms.CharField(
        label="Signing secret",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="whsec_... as the buyer has it (only with 'the secret below').",
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "workspace", "name", "webhook_id", "advertiser", "match_by", "id_location",
            "id_key", "advertiser_key", "allowed_ips", "trigger_integration", "is_enabled",
        ]  # fmt: skip

    def clean_allowed_ips(self) -> str:
        value = self.cleaned_data.get("allowed_ips") or ""
        bad = []
        for entry in value.replace(",", "\n").splitlines():
            if entry.strip():
                try:
                    ipaddress.ip_network(entry.strip(), strict=False)
                except ValueError:
                    bad.append(entry.strip())
        if bad:
            raise ValidationError(f"Not an address or network: {', '.join(bad)}")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        workspace = data.get("workspace")
        advertiser = data.get("advertiser")
        trigger = data.get("trigger_integration")
        if workspace is not None:
            if advertiser is not None and advertiser.workspace_id != workspace.pk:
                self.add_error("advertiser", "This advertiser is in another workspace.")
            if trigger is not None and trigger.workspace_id != workspace.pk:
                self.add_error("trigger_integration", "This integration is in another workspace.")
        if (
            data.get("match_by") == WebhookEndpoint.MatchBy.EXTERNAL_ID
            and advertiser is None
            and not data.get("advertiser_key")
        ):
            self.add_error(
                "advertiser_key",
                "Pairing by the buyer's lead id needs the advertiser: choose one above, or "
                "say where the callback names it.",
            )
        if trigger is not None and not any(
            str((e.config or {}).get("trigger") or "") == "webhook"
            for e in trigger.elements.filter(kind="start")
        ):
            self.add_error(
                "trigger_integration",
                "This integration has no start with trigger 'webhook' (set "
                '{"trigger": "webhook"} on a start element).',
            )
        mode = data.get("signing") or "keep"
        if mode == "set":
            try:
                signing.secret_check(data.get("signing_secret") or "")
            except ValueError as exc:
                self.add_error("signing_secret", str(exc))
        return data


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ScopedAdmin):
    form = WebhookEndpointForm
    list_display = [
        "name", "webhook_id", "advertiser", "match_by", "signed", "is_enabled", "url_short",
    ]  # fmt: skip
    list_filter = ["is_enabled", "match_by"]
    list_select_related = ["advertiser"]
    search_fields = ["name", "webhook_id"]
    readonly_fields = ["url", "signed", "created_at"]
    actions = ["rotate_token", "disable"]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "url", "webhook_id", "advertiser", "is_enabled"]}),
        (
            "Lead-ID pairing",
            {"fields": ["match_by", "id_location", "id_key", "advertiser_key"]},
        ),
        ("Security", {"fields": ["signed", "signing", "signing_secret", "allowed_ips"]}),
        ("Webhook trigger", {"fields": ["trigger_integration"]}),
        ("History", {"fields": ["created_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(deleted_at__isnull=True)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # An endpoint stays in its workspace: its waiting leads and log are there.
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "workspace"] if obj is not None else fields

    @display(description="URL to give the buyer")
    def url(self, obj: WebhookEndpoint) -> str:
        if obj.pk is None:
            return "Shown once saved."
        try:
            return _copyable(obj.public_url(), f"Webhook URL of {obj.name}")
        except secrets.SecretUnreadable:
            return "The token cannot be read with the current keys: rotate it."

    @display(description="URL")
    def url_short(self, obj: WebhookEndpoint) -> str:
        return f"/webhooks/{obj.webhook_id}/…/"

    @display(description="signed", boolean=True)
    def signed(self, obj: WebhookEndpoint) -> bool:
        return obj.is_signed

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: forms.Form, change: bool
    ) -> None:
        if change:
            obj.save()
        else:
            services.endpoint_save_new(endpoint=obj)
        mode = form.cleaned_data.get("signing") or "keep"
        if mode in ("new", "set"):
            secret = services.endpoint_signing_secret_set(
                endpoint=obj,
                secret=form.cleaned_data.get("signing_secret") if mode == "set" else "",
            )
            if mode == "new":
                messages.warning(
                    request,
                    f"Signing secret for {obj.name} (shown once, give it to the buyer): {secret}",
                )
        elif mode == "off":
            services.endpoint_signing_secret_set(endpoint=obj, secret=None)

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        services.endpoint_delete(endpoint=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for endpoint in queryset:
            services.endpoint_delete(endpoint=endpoint)

    @action(description="Issue a new token (the old URL stops working)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet) -> None:
        for endpoint in queryset:
            services.endpoint_token_rotate(endpoint=endpoint)
        messages.success(request, f"New tokens for {queryset.count()} endpoint(s): copy the URLs.")

    @action(description="Disable (revoke) the URL")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = 0
        for endpoint in queryset:
            services.endpoint_disable(endpoint=endpoint)
            count += 1
        messages.success(request, f"{count} endpoint(s) disabled.")


class ReadOnlyAdmin(ScopedAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _link(name: str, obj: Any, text: str) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}" data-link="{}">{}</a>', url, name, text)


@admin.register(WaitingWebhook)
class WaitingWebhookAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "lead_link", "endpoint", "status", "is_blocking", "deadline_at", "matched_at",
        "result",
    ]  # fmt: skip
    list_filter = ["status", "is_blocking"]
    list_select_related = ["lead", "endpoint", "run"]
    search_fields = ["pcid", "external_id"]
    show_full_result_count = False
    readonly_fields = [
        "workspace", "endpoint", "lead_link", "pcid", "external_id", "advertiser", "status",
        "is_blocking", "deadline_at", "matched_at", "request_link", "run_link", "result",
        "created_at",
    ]  # fmt: skip
    fields = readonly_fields

    @display(description="lead")
    def lead_link(self, obj: WaitingWebhook) -> str:
        return _link("lead", obj.lead, obj.pcid or "-")

    @display(description="run")
    def run_link(self, obj: WaitingWebhook) -> str:
        return _link("run", obj.run, f"run {obj.run_id} ({obj.run.status})")

    @display(description="matched callback")
    def request_link(self, obj: WaitingWebhook) -> str:
        inbound = InboundWebhookRequest.objects.filter(
            waiting_id=obj.pk, status=InboundWebhookRequest.Status.MATCHED
        ).first()
        return _link("request", inbound, f"request {inbound.pk}" if inbound else "")

    @display(description="result")
    def result(self, obj: WaitingWebhook) -> str:
        result = obj.run.result or {}
        if not result:
            return "-"
        captured = ", ".join(f"{k}={v}" for k, v in (result.get("captured") or {}).items())
        kind = result.get("kind") or ""
        return f"{kind} ({captured})" if captured else kind


@admin.register(InboundWebhookRequest)
class InboundWebhookRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "received_at", "endpoint", "method", "status", "identifier", "source_ip", "note",
        "waiting_link",
    ]  # fmt: skip
    list_filter = ["status", "method"]
    list_select_related = ["endpoint", "waiting"]
    search_fields = ["identifier", "message_id"]
    show_full_result_count = False  # big log table: no COUNT(*) over all of it
    date_hierarchy = None
    readonly_fields = [
        "workspace", "endpoint", "received_at", "method", "path", "query", "headers",
        "content_type", "body", "source_ip", "status", "note", "identifier", "advertiser_ref",
        "message_id", "waiting_link", "started_run",
    ]  # fmt: skip
    fields = readonly_fields

    @display(description="waiting webhook")
    def waiting_link(self, obj: InboundWebhookRequest) -> str:
        return _link("waiting", obj.waiting, f"waiting {obj.waiting_id}") if obj.waiting_id else "-"
