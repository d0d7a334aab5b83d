"""The Integration Builder in the admin: integrations, their requests (with inlines for
headers, query, body, rules and captures), preview, test endpoint, sample-response check,
library, import/export, request logs and figures."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from types import SimpleNamespace
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.decorators import display
from unfold.widgets import UnfoldAdminTextInputWidget

from integrations import outbound, portability, services
from integrations.building import BuildError, build_request
from integrations.context import known_names, lead_context, sample_context
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestLog,
    RequestQueryParam,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from integrations.reading import TraceKind, evaluate_sample, xml_pretty
from integrations.selectors import integration_figures, recent_logs
from integrations.spec import AuthType, BodyFormat, Method, RequestSpec
from integrations.templating import check_template
from structures.admin.base import (
    ScopedAdmin,
    ScopedTabularInline,
    register_workspace_path,
    scope_queryset,
    scoped_related_filter,
)
from structures.models import Lead
from structures.selectors import workspaces_editable_by

for _model in (RequestHeader, RequestQueryParam, RequestBodyField, ResponseRule, ResponseCapture):
    register_workspace_path(_model, "request__workspace")

STATUS_COLOURS = {"enabled": "success", "test": "warning", "disabled": "danger"}
OUTCOME_COLOURS = {
    "accepted": "success", "rejected": "danger", "duplicate": "info", "pending": "warning",
    "error": "danger", "timeout": "danger",
}  # fmt: skip


def _template_errors(value: str) -> list[str]:
    """Filter and syntax problems block saving; unknown names only warn (after save)."""
    return [p.message for p in check_template(value, None)]


class TemplateValueForm(forms.ModelForm):
    class Meta:
        # One line per value: templates are short, and a tall text box per row made the
        # builder page several screens long.
        widgets = {"value": UnfoldAdminTextInputWidget(attrs={"class": "font-mono"})}

    def clean_value(self) -> str:
        value = self.cleaned_data.get("value", "")
        problems = _template_errors(value)
        if problems:
            raise ValidationError(problems)
        return value


class NameValueInline(ScopedTabularInline):
    form = TemplateValueForm
    fields = ["position", "name", "value"]
    ordering = ["position", "id"]
    hide_title = True


class HeaderInline(NameValueInline):
    model = RequestHeader


class QueryInline(NameValueInline):
    model = RequestQueryParam


class BodyInline(NameValueInline):
    model = RequestBodyField


class RuleInline(ScopedTabularInline):
    model = ResponseRule
    hide_title = True
    fields = ["position", "source", "key_kind", "key", "operator", "value", "value2",
              "and_next", "outcome", "reason"]  # fmt: skip
    ordering = ["position", "id"]


class CaptureInline(ScopedTabularInline):
    model = ResponseCapture
    hide_title = True
    fields = ["position", "source", "key_kind", "key", "target", "target_name"]
    ordering = ["position", "id"]


class RequestStepForm(forms.ModelForm):
    new_secret = forms.CharField(
        label="Secret",
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Password, token or API key. Write-only: stored encrypted, never shown "
        "again. Leave empty to keep the current one.",
    )
    clear_secret = forms.BooleanField(label="Remove the stored secret", required=False)

    class Meta:
        model = RequestStep
        fields = [
            "integration", "name", "meaning", "position", "method", "url", "body_format",
            "xml_root", "timeout_seconds", "auth_type", "auth_name", "default_outcome",
        ]  # fmt: skip

    def clean_url(self) -> str:
        return _checked_url(self.cleaned_data.get("url", ""))


def _checked_url(url: str) -> str:
    """A request URL as saved: valid templates, and a fixed host that may be called."""
    url = url.strip()
    problems = _template_errors(url)
    if problems:
        raise ValidationError(problems)
    if "{{" not in url.split("//", 1)[-1].split("/", 1)[0]:
        # The host is fixed: refuse private and otherwise unsafe targets now, not at
        # the first send. (Hosts built from templates are checked at send time.)
        try:
            outbound.check_url(url.split("{{", 1)[0] if "{{" in url else url)
        except outbound.SSRFError as exc:
            raise ValidationError(f"This address cannot be called: {exc.reason}") from exc
    return url


class RequestStepRowForm(forms.ModelForm):
    """A request as a row of its integration's page: its URL is checked like in the
    builder (without this, the row was a way around the private-address refusal)."""

    def clean_url(self) -> str:
        return _checked_url(self.cleaned_data.get("url", ""))


class RequestStepInline(ScopedTabularInline):
    model = RequestStep
    form = RequestStepRowForm
    fields = ["position", "name", "meaning", "method", "url", "edit_link"]
    readonly_fields = ["edit_link"]
    show_change_link = True
    ordering = ["position", "id"]
    extra = 0

    @admin.display(description="builder")
    def edit_link(self, obj: RequestStep) -> Any:
        if not obj.pk:
            return "—"
        url = reverse("admin:integrations_requeststep_change", args=[obj.pk])
        return format_html('<a class="text-primary-600" href="{}">Open builder</a>', url)

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        form = formset.form
        original = form.save

        def save(self: Any, commit: bool = True) -> Any:  # workspace follows the parent
            self.instance.workspace_id = self.instance.integration.workspace_id
            return original(self, commit)

        form.save = save
        return formset


@admin.register(Integration)
class IntegrationAdmin(ScopedAdmin):
    list_display = ["name", "category", "status_badge", "country", "workspace", "request_count",
                    "library_slug"]  # fmt: skip
    list_filter = ["status", "category", scoped_related_filter("workspace")]
    search_fields = ["name", "description", "library_slug"]
    ordering = ["name"]
    inlines = [RequestStepInline]
    actions = ["export_json"]
    change_form_template = "admin/integrations/integration/change_form.html"
    change_list_template = "admin/integrations/integration/change_list.html"
    fieldsets = [
        (None, {"fields": ["workspace", "name", "status", "category", "country"]}),
        ("About", {"fields": ["description", "library_slug"]}),
    ]
    readonly_fields = ["library_slug"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Its requests and logs carry the workspace too: moving only the integration
        # would leave them behind (and the builder refusing to save). Export/import moves.
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "workspace"] if obj is not None else fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super().get_queryset(request).select_related("workspace")
            .annotate(_requests=Count("requests"))
        )  # fmt: skip

    @display(description="status", ordering="status", label=STATUS_COLOURS)
    def status_badge(self, obj: Integration) -> str:
        return obj.status

    @admin.display(description="requests", ordering="_requests")
    def request_count(self, obj: Integration) -> int:
        return obj._requests

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # After the inlines: requests typed on the add page are its requests; the empty
        # one the builder opens on is made only when none was typed.
        obj = form.instance
        if not change and not obj.requests.exists():
            RequestStep.objects.create(
                workspace_id=obj.workspace_id, integration=obj, name="Request", url="https://"
            )

    def response_add(self, request: HttpRequest, obj: Integration, *args: Any) -> HttpResponse:
        step = obj.requests.first()
        if (
            step is not None
            and "_continue" not in request.POST
            and "_addanother" not in request.POST
        ):
            self.message_user(request, "Now describe the request.", messages.INFO)
            return redirect("admin:integrations_requeststep_change", step.pk)
        return super().response_add(request, obj, *args)

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
            extra_context.update(self.change_page_context(request, obj))
        return super().changeform_view(request, object_id, form_url, extra_context)

    def change_page_context(self, request: HttpRequest, obj: Integration) -> dict[str, Any]:
        """What the integration page shows below the form (figures, latest calls);
        subclasses add to it."""
        figures = integration_figures(integration=obj)
        return {
            "figures": figures,
            "chart_data": json.dumps(_chart(figures)),
            "latest_logs": recent_logs(integration=obj),
        }

    # --- library, import, export ------------------------------------------------------

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("library/", wrap(self.library_view), name="integrations_integration_library"),
            path("import/", wrap(self.import_view), name="integrations_integration_import"),
            path(
                "<path:object_id>/export/",
                wrap(self.export_view),
                name="integrations_integration_export",
            ),  # fmt: skip
            *super().get_urls(),
        ]

    def _workspace_choices(self, request: HttpRequest) -> list[tuple[int, str]]:
        return [(w.pk, w.name) for w in workspaces_editable_by(request.user)]

    def _workspace_from_post(self, request: HttpRequest) -> int:
        try:
            wanted = int(request.POST.get("workspace", ""))
        except ValueError as exc:
            raise Http404 from exc
        if wanted not in dict(self._workspace_choices(request)):
            raise Http404
        return wanted

    def library_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise Http404
        if request.method == "POST":
            entry = portability.library_entry(request.POST.get("slug", ""))
            if entry is None:
                raise Http404
            workspace_id = self._workspace_from_post(request)
            name = entry["name"]
            if Integration.objects.filter(workspace_id=workspace_id, name=name).exists():
                name = f"{name} ({Integration.objects.filter(workspace_id=workspace_id).count()})"
            try:
                integration = portability.integration_import(
                    workspace_id=workspace_id, data=entry, name=name
                )
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
                return redirect("admin:integrations_integration_library")
            self.message_user(
                request,
                f"Installed “{integration}” in test mode. Fill in the placeholders "
                "(and the secret, if it needs one), test it, then enable it.",
                messages.SUCCESS,
            )
            return redirect("admin:integrations_integration_change", integration.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Integration library",
            "entries": portability.library_entries(),
            "workspaces": self._workspace_choices(request),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/integrations/integration/library.html", context)

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise Http404
        error = ""
        text = ""
        if request.method == "POST":
            workspace_id = self._workspace_from_post(request)
            upload = request.FILES.get("file")
            text = (
                upload.read().decode("utf-8", "replace") if upload else request.POST.get("json", "")
            )
            try:
                data = json.loads(text)
                integration = portability.integration_import(workspace_id=workspace_id, data=data)
            except json.JSONDecodeError as exc:
                error = f"Not valid JSON: {exc}"
            except ValidationError as exc:
                error = " ".join(exc.messages)
            else:
                self.message_user(request, f"Imported “{integration}” in test mode.",
                                  messages.SUCCESS)  # fmt: skip
                return redirect("admin:integrations_integration_change", integration.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Import an integration",
            "workspaces": self._workspace_choices(request),
            "error": error,
            "json_text": text,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/integrations/integration/import.html", context)

    def export_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404
        response = HttpResponse(
            portability.integration_export_json(obj), content_type="application/json"
        )
        slug = obj.library_slug or f"integration-{obj.pk}"
        response["Content-Disposition"] = f'attachment; filename="{slug}.json"'
        return response

    @admin.action(description="Export selected as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        data = [portability.integration_export(i) for i in queryset]
        body = json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False)
        response = HttpResponse(body + "\n", content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="integrations.json"'
        return response


def _chart(figures: dict[str, Any]) -> dict[str, Any]:
    days = figures["days"]
    return {
        "labels": [d["day"].strftime("%b %d") for d in days],
        "datasets": [
            {"label": "Accepted", "data": [d["accepted"] for d in days],
             "backgroundColor": "#16a34a", "stack": "calls"},
            {"label": "Rejected", "data": [d["rejected"] for d in days],
             "backgroundColor": "#f59e0b", "stack": "calls"},
            {"label": "Errors", "data": [d["errors"] for d in days],
             "backgroundColor": "#dc2626", "stack": "calls"},
        ],
    }  # fmt: skip


@admin.register(RequestStep)
class RequestStepAdmin(ScopedAdmin):
    form = RequestStepForm
    list_display = ["name", "integration", "meaning", "method", "url", "body_format"]
    list_filter = ["meaning", "method", scoped_related_filter("integration")]
    search_fields = ["name", "url", "integration__name"]
    inlines = [HeaderInline, QueryInline, BodyInline, RuleInline, CaptureInline]
    change_form_template = "admin/integrations/requeststep/change_form.html"
    fieldsets = [
        (None, {"fields": ["integration", "name", "meaning", "position"]}),
        ("Request", {"fields": ["method", "url", "body_format", "xml_root", "timeout_seconds"]}),
        (
            "Authentication",
            {"fields": ["auth_type", "auth_name", "secret_state", "new_secret", "clear_secret"]},
        ),  # fmt: skip
        ("Response", {"fields": ["default_outcome"]}),
    ]
    readonly_fields = ["secret_state"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("integration")

    @admin.display(description="stored secret")
    def secret_state(self, obj: RequestStep) -> str:
        return "Stored (encrypted)" if obj.has_secret else "None"

    def save_model(self, request: HttpRequest, obj: RequestStep, form: Any, change: bool) -> None:
        obj.workspace_id = obj.integration.workspace_id
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("clear_secret"):
            services.request_secret_set(step=obj, secret="")
        elif form.cleaned_data.get("new_secret"):
            services.request_secret_set(step=obj, secret=form.cleaned_data["new_secret"])

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        step = form.instance
        names = known_names(workspace_id=step.workspace_id) | _variable_names(step)
        unknown: set[str] = set()
        values = [step.url] + [
            row.value for model in (RequestHeader, RequestQueryParam, RequestBodyField)
            for row in model.objects.filter(request=step)
        ]  # fmt: skip
        for value in values:
            for problem in check_template(value, names):
                unknown.add(problem.message)
        for message in sorted(unknown):
            self.message_user(request, f"Check the templates: {message}", messages.WARNING)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/preview/", wrap(self.preview_view),
                 name="integrations_requeststep_preview"),
            path("<path:object_id>/test/", wrap(self.test_view),
                 name="integrations_requeststep_test"),
            path("<path:object_id>/sample/", wrap(self.sample_view),
                 name="integrations_requeststep_sample"),
            *super().get_urls(),
        ]  # fmt: skip

    def _step(self, request: HttpRequest, object_id: str, *, edit: bool = False) -> RequestStep:
        step = self.get_object(request, object_id)
        if step is None or (edit and not self.has_change_permission(request, step)):
            raise Http404
        return step

    def _context_for(self, request: HttpRequest, step: RequestStep, data: Any) -> tuple[
        dict[str, Any], Lead | None, str
    ]:  # fmt: skip
        """Sample values (overridable as JSON) or a real lead of the workspace."""
        pcid = (data.get("lead") or "").strip()
        if pcid:
            lead = (
                scope_queryset(Lead.objects.all(), request)
                .filter(workspace_id=step.workspace_id, pcid=pcid)
                .select_related("partner", "structure", "workspace")
                .first()
            )
            if lead is None:
                return sample_context(workspace_id=step.workspace_id), None, "No such lead."
            return lead_context(lead), lead, ""
        overrides: dict[str, Any] = {}
        raw = (data.get("values") or "").strip()
        if raw:
            try:
                overrides = json.loads(raw)
                if not isinstance(overrides, dict):
                    raise ValueError
            except ValueError:
                return (
                    sample_context(workspace_id=step.workspace_id),
                    None,
                    ("Sample values must be a JSON object."),
                )
        return sample_context(workspace_id=step.workspace_id, overrides=overrides), None, ""

    def _recent_leads(self, request: HttpRequest, step: RequestStep) -> QuerySet:
        return (
            scope_queryset(Lead.objects.all(), request)
            .filter(workspace_id=step.workspace_id)
            .select_related("partner")[:20]
        )

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Server-rendered fragment: the exact request from sample values or a lead.

        GET renders the saved request; POST renders the builder form as it is being
        edited (unsaved), so the preview follows every keystroke. Nothing is sent."""
        step = self._step(request, object_id)
        data = request.POST if request.method == "POST" else request.GET
        context, lead, problem = self._context_for(request, step, data)
        spec = services.step_spec(step)
        if request.method == "POST":
            spec = _spec_from_form(spec, request.POST)
        built, error = None, ""
        try:
            built = build_request(spec, {**context, "SECRET": spec.auth_secret})
        except BuildError as exc:
            error = f"Request could not be built: {exc}"
        masked = _masked_built(SimpleNamespace(built=built)) if built else None
        return TemplateResponse(
            request, "admin/integrations/requeststep/preview.html",
            {"built": built, "lead": lead, "problem": problem or error, "masked": masked,
             "unsaved": request.method == "POST"},
        )  # fmt: skip

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Fill sample values (or pick a lead), send for real, see request, response and
        the evaluated outcome. Logged like any call (origin "test")."""
        step = self._step(request, object_id, edit=True)
        run = None
        problem = ""
        values_text = ""
        if request.method == "POST":
            values_text = request.POST.get("values", "")
            context, lead, problem = self._context_for(request, step, request.POST)
            if not problem:
                run = services.request_run(step=step, context=context, lead=lead,
                                           origin="test", force_send=True)  # fmt: skip
        else:
            names = sorted({n for v in _step_values(step) for n in _names_in(v)})
            sample = sample_context(workspace_id=step.workspace_id)
            values_text = json.dumps({n: sample.get(n, "") for n in names if n in sample}, indent=2)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Test {step}",
            "step": step,
            "run": run,
            "problem": problem,
            "values_text": values_text,
            "recent_leads": self._recent_leads(request, step),
            "masked": _masked_built(run) if run else None,
            "response_body": _response_text(run),
            "trace": _trace_view(run.outcome) if run else None,
            "opts": self.model._meta,
            "original": step,
        }
        return TemplateResponse(request, "admin/integrations/requeststep/test.html", context)

    def sample_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Paste a response: see which rules match and what would be captured."""
        step = self._step(request, object_id)
        outcome = None
        form_data = {"status_code": "200", "headers": "Content-Type: application/json",
                     "body": ""}  # fmt: skip
        if request.method == "POST":
            form_data = {k: request.POST.get(k, "") for k in form_data}
            try:
                code = int(form_data["status_code"])
            except ValueError:
                code = 200
            headers = [
                tuple(part.strip() for part in line.split(":", 1))
                for line in form_data["headers"].splitlines() if ":" in line
            ]  # fmt: skip
            outcome = evaluate_sample(
                services.step_spec(step, with_secret=False), code, headers, form_data["body"]
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Check a sample response: {step}",
            "step": step,
            "outcome": outcome,
            "trace": _trace_view(outcome) if outcome else None,
            "form_data": form_data,
            "opts": self.model._meta,
            "original": step,
        }
        return TemplateResponse(request, "admin/integrations/requeststep/sample.html", context)


def _form_rows(post: Any, prefix: str) -> tuple[tuple[str, str], ...]:
    """(name, value) rows of an inline formset as posted, in their order, deleted rows
    and empty extra rows left out."""
    try:
        total = min(int(post.get(f"{prefix}-TOTAL_FORMS", 0)), 500)
    except ValueError:
        return ()
    rows = []
    for i in range(total):
        name = post.get(f"{prefix}-{i}-name", "").strip()
        if not name or post.get(f"{prefix}-{i}-DELETE"):
            continue
        try:
            position = int(post.get(f"{prefix}-{i}-position") or 0)
        except ValueError:
            position = 0
        rows.append((position, i, name, post.get(f"{prefix}-{i}-value", "")))
    return tuple((name, value) for _, _, name, value in sorted(rows))


def _spec_from_form(spec: RequestSpec, post: Any) -> RequestSpec:
    """The saved spec with the builder form's unsaved values on top (never the secret:
    it is write-only and the stored one is used)."""

    def choice(name: str, enum: Any, current: Any) -> Any:
        try:
            return enum(post.get(name, current))
        except ValueError:
            return current

    try:
        timeout = float(post.get("timeout_seconds", spec.timeout_seconds))
    except ValueError:
        timeout = spec.timeout_seconds
    return dataclasses.replace(
        spec,
        method=choice("method", Method, spec.method),
        url=post.get("url", spec.url).strip(),
        body_format=choice("body_format", BodyFormat, spec.body_format),
        xml_root=post.get("xml_root", spec.xml_root) or "request",
        timeout_seconds=timeout,
        auth_type=choice("auth_type", AuthType, spec.auth_type),
        auth_name=post.get("auth_name", spec.auth_name),
        headers=_form_rows(post, "headers"),
        query=_form_rows(post, "query_params"),
        body=_form_rows(post, "body_fields"),
    )


def _step_values(step: RequestStep) -> list[str]:
    return [step.url] + [
        row.value for model in (RequestHeader, RequestQueryParam, RequestBodyField)
        for row in model.objects.filter(request=step)
    ]  # fmt: skip


_HEAD_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")


def _names_in(value: str) -> list[str]:
    """Names a template starts its expressions with (to prefill the test form)."""
    return _HEAD_RE.findall(value)


def _variable_names(step: RequestStep) -> set[str]:
    """Variables captured by any request of the same integration may be used."""
    return {
        name.lower() for name in ResponseCapture.objects.filter(
            request__integration_id=step.integration_id
        ).values_list("target_name", flat=True) if name
    }  # fmt: skip


def _masked_built(run: Any) -> dict[str, Any] | None:
    built = getattr(run, "built", None)
    if built is None:
        return None
    secrets_ = list(built.secrets)
    return {
        "method": built.method,
        "url": outbound.mask_url(built.url, secrets_),
        "headers": outbound.mask_headers(built.headers, secrets_),
        "body": outbound.mask_secrets((built.body or b"").decode("utf-8", "replace"), secrets_),
        "warnings": built.warnings,
    }


def _trace_view(outcome: Any) -> dict[str, list[Any]]:
    """The reader's trace split for display: conditions with each rule's verdict, the
    captures, and the notes (which carry no verdict and must not show as a failed row)."""
    groups: dict[str, list[Any]] = {"rules": [], "captures": [], "notes": []}
    for entry in outcome.trace:
        kind = {TraceKind.CAPTURE: "captures", TraceKind.NOTE: "notes"}.get(entry.kind, "rules")
        groups[kind].append(entry)
    return groups


def _response_text(run: Any) -> str:
    result = getattr(run, "result", None)
    if result is None:
        return ""
    return result.masked_response()["body"]


# As the request builder's preview shows a request (requeststep/_request.html).
_LOG_BLOCK = "rounded-default bg-base-50 p-2 text-xs dark:bg-base-900"
# Pretty-printing is for reading: a body larger than this is shown as it was stored.
_PRETTY_MAX = 200_000


def _headers_block(headers: Any, block_id: str) -> str:
    """A log row's headers as the wire shows them, one ``Name: value`` per line (they are
    stored as [name, value] pairs, secrets already masked)."""
    pairs = [h for h in headers or [] if isinstance(h, list | tuple) and len(h) == 2]
    if not pairs:
        return "—"
    return _pre("\n".join(f"{name}: {value}" for name, value in pairs), block_id)


def _body_block(body: str, block_id: str) -> str:
    """A log row's body, JSON or XML indented (JSON keys in their order, text as written;
    XML only when it is safe to parse, as the response reader decides), anything else as
    it was sent or received; escaped, lines wrapped."""
    if not body:
        return "—"
    text, first = body, body.lstrip()[:1]
    if len(body) <= _PRETTY_MAX and first in ("{", "["):
        with contextlib.suppress(ValueError):
            text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    elif len(body) <= _PRETTY_MAX and first == "<":
        text = xml_pretty(body) or body
    return _pre(text, block_id)


def _pre(text: str, block_id: str) -> str:
    """Text as a block that keeps its lines and wraps long ones (escaped)."""
    return format_html(
        '<pre class="{}" id="{}" style="white-space: pre-wrap; word-break: break-all;">{}</pre>',
        _LOG_BLOCK, block_id, text,
    )  # fmt: skip


def _shown(field: str, block: Any) -> Any:
    """A read-only display of a log row's headers or body, under the field's own label
    (its HTML id: ``log-`` and the field's name with dashes)."""

    @admin.display(description=RequestLog._meta.get_field(field).verbose_name)
    def shown(self: Any, obj: RequestLog) -> str:
        return block(getattr(obj, field), "log-" + field.replace("_", "-"))

    return shown


@admin.register(RequestLog)
class RequestLogAdmin(ScopedAdmin):
    list_display = ["created_at", "integration", "outcome_badge", "status_code", "duration_ms",
                    "was_sent", "origin", "lead", "short_url"]  # fmt: skip
    list_filter = ["outcome", "was_sent", "origin", scoped_related_filter("integration"),
                   ("created_at", admin.DateFieldListFilter)]  # fmt: skip
    search_fields = ["url", "reason", "lead__pcid"]
    list_select_related = ["integration", "lead"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    fieldsets = [
        (None, {"fields": ["created_at", "integration", "request_step", "lead", "origin",
                           "was_sent", "outcome", "reason", "error", "captured"]}),
        ("Request", {"fields": ["method", "url", "request_headers_shown",
                                "request_body_shown"]}),
        ("Response", {"fields": ["status_code", "duration_ms", "response_headers_shown",
                                 "response_body_shown"]}),
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in RequestLog._meta.fields] + [
            "request_headers_shown", "request_body_shown",
            "response_headers_shown", "response_body_shown",
        ]  # fmt: skip

    request_headers_shown = _shown("request_headers", _headers_block)
    request_body_shown = _shown("request_body", _body_block)
    response_headers_shown = _shown("response_headers", _headers_block)
    response_body_shown = _shown("response_body", _body_block)

    @display(description="outcome", ordering="outcome", label=OUTCOME_COLOURS)
    def outcome_badge(self, obj: RequestLog) -> str:
        return obj.outcome

    @admin.display(description="URL")
    def short_url(self, obj: RequestLog) -> str:
        return obj.url[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


from integrations import admin_engine  # noqa: E402,F401
