"""The scenario engine in the admin: the scenario editor on the integration page
(elements and connections as inlines, a server-drawn SVG diagram of the graph, "Run with
sample values"), and the runs (list, detail as a timeline of steps with their requests,
"Replay this run", "Cancel this run").

Imported at the end of integrations/admin.py; the integration page is the builder's
``IntegrationAdmin`` extended here and registered in its place.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from unfold.decorators import display

from integrations.admin import IntegrationAdmin
from integrations.choices import Meaning, Status
from integrations.context import sample_context
from integrations.engine.conditions import conditions_check
from integrations.engine.services import (
    EngineError,
    run_cancel,
    run_drive,
    run_start,
    scenario_default_build,
)
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestLog,
    RequestStep,
    RunStep,
    ScenarioRun,
)
from structures.admin.base import ScopedAdmin, ScopedTabularInline, scoped_related_filter
from structures.models import Lead

RUN_COLOURS = {
    "running": "info", "waiting": "warning", "succeeded": "success", "failed": "danger",
    "timed_out": "danger", "cancelled": "danger",
}  # fmt: skip
DRIVE_SECONDS = 3.0  # in the web request; what is left continues on the workers


# --- services used by the buttons ----------------------------------------------------------


def run_replay(*, run: ScenarioRun, deadline_seconds: float = DRIVE_SECONDS) -> ScenarioRun:
    """A new run with the same integration, lead, step meaning, trigger and starting
    variables (kept on the run's start steps; runs from before that replay with their
    variables as they ended), driven here for a few seconds, then left to the workers."""
    starts = list(
        RunStep.objects.filter(run=run, parent_step__isnull=True)
        .order_by("id")
        .values_list("input", "element__config")
    )
    first = next((given for given, _config in starts if "variables" in (given or {})), None)
    variables = first["variables"] if first else dict(run.variables or {})
    # The start the run took: one a webhook trigger (or an action) started has no
    # default start to replay from.
    trigger = str((starts[0][1] or {}).get("trigger") or "default") if starts else "default"
    new = run_start(
        integration=run.integration,
        lead=run.lead,
        meaning=run.meaning,
        variables=dict(variables or {}),
        dry_run=run.is_dry_run,
        trigger=trigger,
        claim=True,
    )
    return run_drive(run_id=new.pk, deadline_seconds=deadline_seconds)


def run_sample(
    *, integration: Integration, meaning: str = "post", deadline_seconds: float = DRIVE_SECONDS
) -> ScenarioRun:
    """A dry run from sample values: every request is rendered and logged, none sent."""
    values = json.loads(
        json.dumps(sample_context(workspace_id=integration.workspace_id), default=str)
    )
    run = run_start(
        integration=integration, meaning=meaning, variables=values, dry_run=True, claim=True
    )
    return run_drive(run_id=run.pk, deadline_seconds=deadline_seconds)


def run_for_lead(
    *, integration: Integration, lead: Lead, meaning: str = "post",
    deadline_seconds: float = DRIVE_SECONDS,
) -> ScenarioRun:  # fmt: skip
    """A real run for one lead, as a ping tree starts one: the integration's status
    applies (disabled never sends, test sends only for test leads), driven here for a
    few seconds; what is left (a wait, a slow buyer) continues on the workers."""
    run = run_start(integration=integration, lead=lead, meaning=meaning, claim=True)
    return run_drive(run_id=run.pk, deadline_seconds=deadline_seconds)


# --- the diagram ---------------------------------------------------------------------------

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 180, 56, 90, 34, 24


def condition_summary(conditions: list[dict[str, Any]] | None, *, limit: int = 36) -> str:
    """A short label for an arrow: "always" or "outcome = accepted and …"."""
    if not conditions:
        return "always"
    parts = []
    for condition in conditions:
        source = str(condition.get("source") or "")
        key = str(condition.get("key") or "")
        subject = key if source in ("", "outcome", "reason") and not key else key or source
        if source in ("outcome", "reason") and not key:
            subject = source
        operator = str(condition.get("operator") or "=")
        value = str(condition.get("value") or "")
        parts.append(" ".join(p for p in (subject, operator, value) if p))
    text = " and ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


LABEL_STEP, LABEL_CHAR_W = 13, 5.6  # an arrow label's line height and average glyph width


def label_box(label: str, x: float, y: float) -> tuple[float, float, float, float]:
    """The room an arrow's label (font size 10, centred on x, baseline y) takes."""
    half = len(label) * LABEL_CHAR_W / 2 + 3
    return (x - half, y - 10, x + half, y + 2)


def _label_free_y(
    label: str, x: float, y: float, placed: list[tuple[float, float, float, float]]
) -> float:
    """The label's baseline moved down, a line at a time, until it overlaps no label
    already drawn (two arrows out of one box start at the same point; an OR is two
    arrows between the same boxes). Records the room it takes."""
    for _ in range(30):
        box = label_box(label, x, y)
        if not any(
            box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]
            for other in placed
        ):
            break
        y += LABEL_STEP
    placed.append(label_box(label, x, y))
    return y


def _depths(elements: list[Element], connections: list[Connection]) -> dict[int, int]:
    """Layer of each element: its BFS depth from the starts; unreached ones after."""
    outgoing: dict[int, list[int]] = {}
    for connection in connections:
        outgoing.setdefault(connection.from_element_id, []).append(connection.to_element_id)
    depth: dict[int, int] = {}
    queue: deque[int] = deque()
    for element in elements:
        if element.kind == Element.Kind.START:
            depth[element.pk] = 0
            queue.append(element.pk)
    while queue:
        current = queue.popleft()
        for target in outgoing.get(current, []):
            if target not in depth:
                depth[target] = depth[current] + 1
                queue.append(target)
    last = max(depth.values(), default=-1) + 1
    for element in elements:
        depth.setdefault(element.pk, last)
    return depth


def scenario_svg(integration: Integration) -> SafeString:
    """The graph as inline SVG: a box per element (kind, name), an arrow per connection
    labelled with its conditions. Left to right by depth from the starts."""
    elements = list(integration.elements.order_by("position", "id"))
    connections = list(integration.connections.order_by("from_element", "position", "id"))
    if not elements:
        return mark_safe("")
    depth = _depths(elements, connections)
    layers: dict[int, list[Element]] = {}
    for element in elements:
        layers.setdefault(depth[element.pk], []).append(element)
    where: dict[int, tuple[int, int]] = {}
    for layer, members in layers.items():
        for row, element in enumerate(members):
            where[element.pk] = (
                MARGIN + layer * (BOX_W + GAP_X),
                MARGIN + row * (BOX_H + GAP_Y),
            )
    width = MARGIN * 2 + (max(layers) + 1) * (BOX_W + GAP_X) - GAP_X
    height = MARGIN * 2 + max(len(m) for m in layers.values()) * (BOX_H + GAP_Y) - GAP_Y + 40
    parts: list[str] = []  # back arrows, drawn under the boxes
    over: list[str] = []  # forward arrows, drawn over them: a long label stays readable
    placed: list[tuple[float, float, float, float]] = []
    parallel: dict[tuple[int, int], int] = {}
    for connection in connections:
        if connection.from_element_id not in where or connection.to_element_id not in where:
            continue
        x1, y1 = where[connection.from_element_id]
        x2, y2 = where[connection.to_element_id]
        # A second arrow between the same two boxes (an OR) bends further down, so it
        # does not hide under the first.
        pair = (connection.from_element_id, connection.to_element_id)
        bend = parallel.get(pair, 0) * LABEL_STEP * 1.5
        parallel[pair] = parallel.get(pair, 0) + 1
        if x2 > x1:  # forward: right edge to left edge
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            mx = (sx + ex) / 2
            d = f"M{sx},{sy} C{mx},{sy + bend} {mx},{ey + bend} {ex},{ey}"
            lx, ly = mx, (sy + ey) / 2 + 0.75 * bend - 6  # the curve's middle, just above
        else:  # back or same layer (loops): under the boxes
            sx, sy = x1 + BOX_W / 2, y1 + BOX_H
            ex, ey = x2 + BOX_W / 2, y2 + BOX_H
            low = max(sy, ey) + GAP_Y + bend
            d = f"M{sx},{sy} C{sx},{low} {ex},{low} {ex},{ey}"
            lx, ly = (sx + ex) / 2, low - 4
        label = condition_summary(connection.conditions)
        ly = _label_free_y(label, lx, ly, placed)
        height = max(height, int(ly) + MARGIN)
        (over if x2 > x1 else parts).append(
            f'<g class="scenario-connection" data-connection="{connection.pk}">'
            f'<path d="{d}" fill="none" stroke="currentColor" stroke-width="1.5" '
            f'marker-end="url(#scenario-arrow)"/>'
            # A halo in the boxes' colour: the label reads over a line or a box's edge.
            f'<text x="{lx}" y="{ly}" text-anchor="middle" font-size="10" fill="#374151" '
            f'stroke="#f8fafc" stroke-width="3" stroke-linejoin="round" paint-order="stroke">'
            f"{escape(label)}</text>"
            f"<title>{escape(json.dumps(connection.conditions or []))}</title></g>"
        )
    for element in elements:
        x, y = where[element.pk]
        start = element.kind == Element.Kind.START
        parts.append(
            f'<g class="scenario-element" data-element="{element.pk}">'
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" '
            f'fill="{"#ede9fe" if start else "#f8fafc"}" stroke="#7c3aed" stroke-width="1.2"/>'
            f'<text x="{x + 10}" y="{y + 20}" font-size="10" fill="#6b7280">'
            f"{escape(element.get_kind_display().upper())}</text>"
            f'<text x="{x + 10}" y="{y + 40}" font-size="13" fill="#111827" font-weight="600">'
            f"{escape(element.name[:24])}</text>"
            f"<title>{escape(element.name)}</title></g>"
        )
    parts += over
    parts.append("</svg>")
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="scenario-diagram" role="img" '
        f'aria-label="Scenario diagram" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="max-w-full h-auto text-base-700 '
        f'dark:text-base-200" font-family="inherit" font-size="12">',
        '<defs><marker id="scenario-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="currentColor"/></marker></defs>',
    ]
    return mark_safe("".join(head + parts))  # noqa: S308 - every text above is escaped


# --- the scenario editor -------------------------------------------------------------------


class _ParentWorkspaceFormSet(BaseInlineFormSet):
    """Rows take the integration's workspace before validation (the models check it).
    The element and request choices are read once for the whole formset: a select of
    every row (and the empty row) would otherwise read them again, one query per row."""

    def _construct_form(self, i: int, **kwargs: Any) -> Any:
        form = super()._construct_form(i, **kwargs)
        form.instance.workspace_id = self.instance.workspace_id
        self._share_choices(form)
        return form

    @property
    def empty_form(self) -> Any:
        form = super().empty_form
        self._share_choices(form)
        return form

    _shared_fields = ("from_element", "to_element", "mirror_of", "request_step")

    def _share_choices(self, form: Any) -> None:
        cache = self.__dict__.setdefault("_lr_choices", {})
        for name, field in form.fields.items():
            # Not the row's own hidden pk field: its choices are never drawn.
            if isinstance(field, forms.ModelChoiceField) and name in self._shared_fields:
                if name not in cache:
                    cache[name] = list(field.choices)
                field.choices = cache[name]


class ConnectionForm(forms.ModelForm):
    class Meta:
        model = Connection
        fields = ["position", "from_element", "to_element", "conditions"]

    def clean_conditions(self) -> list[dict[str, Any]]:
        return conditions_check(self.cleaned_data.get("conditions"))

    def _post_clean(self) -> None:
        # Without both ends the row is already invalid; the model's check needs them.
        if self.cleaned_data.get("from_element") and self.cleaned_data.get("to_element"):
            super()._post_clean()


class _IntegrationChoicesMixin:
    """Choices of elements and requests are this integration's only."""

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        request._lr_engine_integration = obj  # type: ignore[attr-defined]
        return super().get_formset(request, obj, **kwargs)  # type: ignore[misc]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        integration = getattr(request, "_lr_engine_integration", None)
        integration_id = integration.pk if integration is not None else None
        if db_field.related_model is Element:
            kwargs["queryset"] = Element.objects.filter(integration_id=integration_id)
        elif db_field.related_model is RequestStep:
            kwargs["queryset"] = RequestStep.objects.filter(integration_id=integration_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


class ElementInline(_IntegrationChoicesMixin, ScopedTabularInline):
    model = Element
    fk_name = "integration"
    formset = _ParentWorkspaceFormSet
    fields = ["position", "name", "kind", "meaning", "request_step", "mirror_of", "config"]
    ordering = ["position", "id"]
    verbose_name_plural = "scenario elements"
    tab = True


class ConnectionInline(_IntegrationChoicesMixin, ScopedTabularInline):
    model = Connection
    fk_name = "integration"
    form = ConnectionForm
    formset = _ParentWorkspaceFormSet
    fields = ["position", "from_element", "to_element", "conditions"]
    ordering = ["from_element", "position", "id"]
    verbose_name_plural = "scenario connections"
    tab = True

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Each row is titled "from → to" by name.
        return super().get_queryset(request).select_related("from_element", "to_element")


class ScenarioIntegrationAdmin(IntegrationAdmin):
    """The builder's integration page plus the scenario editor, diagram and dry run."""

    inlines = [*IntegrationAdmin.inlines, ElementInline, ConnectionInline]

    def get_formsets_with_inlines(self, request: HttpRequest, obj: Any = None) -> Any:
        """A post that does not carry the scenario editor (the add page's quick form, a
        script posting the integration's fields and requests) leaves the scenario as it
        is instead of failing on its missing management forms."""
        for formset, inline in super().get_formsets_with_inlines(request, obj):
            if (
                request.method == "POST"
                and isinstance(inline, ElementInline | ConnectionInline)
                and f"{formset.get_default_prefix()}-TOTAL_FORMS" not in request.POST
            ):
                continue
            yield formset, inline

    def change_page_context(self, request: HttpRequest, obj: Integration) -> dict[str, Any]:
        starts = set(obj.elements.filter(kind=Element.Kind.START).values_list("meaning", flat=True))
        has_elements = bool(starts) or obj.elements.exists()
        if not has_elements:
            # No scenario yet (installed from the library, requests only): the buttons
            # build the default one from the requests, as a first real run does.
            starts = {m or Meaning.POST for m in obj.requests.values_list("meaning", flat=True)}
        can_run = self.has_change_permission(request, obj)
        return {
            **super().change_page_context(request, obj),
            "scenario_svg": scenario_svg(obj),
            "scenario_runs": obj.runs.select_related("lead")[:5],
            "scenario_can_run": can_run,
            "scenario_has_start": bool(starts),
            "scenario_builds_default": not has_elements and bool(starts),
            # Post first: what the ping tree sells with, and the default of both forms.
            "scenario_meanings": [
                (value, label)
                for value, label in sorted(Meaning.choices, key=lambda c: c[0] != Meaning.POST)
                if value in starts
            ],
            "scenario_recent_leads": (
                list(
                    Lead.objects.filter(workspace_id=obj.workspace_id)
                    .order_by("-id")
                    .values_list("pcid", "is_test")[:20]
                )
                if can_run and starts
                else []
            ),
        }

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/sample-run/",
                wrap(self.sample_run_view),
                name="integrations_integration_sample_run",
            ),
            path(
                "<path:object_id>/lead-run/",
                wrap(self.lead_run_view),
                name="integrations_integration_lead_run",
            ),
            *super().get_urls(),
        ]

    def _runnable(self, request: HttpRequest, object_id: str) -> Integration:
        """The integration a run button posts for: a POST by an operator who may change
        it (not a viewer, not another workspace's operator)."""
        if request.method != "POST":
            raise Http404
        obj = self.get_object(request, object_id)
        if obj is None or not self.has_change_permission(request, obj):
            raise Http404
        return obj

    def _default_build(self, request: HttpRequest, obj: Integration) -> None:
        """An integration without elements gets its default scenario now, as its first
        real run would (run_start would build it too; here the operator is told). The
        build itself does nothing (0) when the integration has elements."""
        made = scenario_default_build(integration=obj)
        if made:
            self.message_user(
                request,
                f"The default scenario was built from the integration's requests "
                f"({made} elements): edit it in the scenario elements tab.",
                messages.INFO,
            )

    def sample_run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._runnable(request, object_id)
        meaning = request.POST.get("meaning") or "post"
        try:
            self._default_build(request, obj)
            run = run_sample(integration=obj, meaning=meaning)
        except EngineError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:integrations_integration_change", obj.pk)
        self.message_user(
            request, "Dry run with sample values: nothing was sent.", messages.SUCCESS
        )
        return redirect("admin:integrations_scenariorun_change", run.pk)

    def lead_run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Run for a lead: a real run (the lead is sent as the integration's status
        allows), driven for a few seconds here, then the run's page."""
        obj = self._runnable(request, object_id)
        meaning = request.POST.get("meaning") or "post"
        pcid = (request.POST.get("pcid") or "").strip()
        # Another workspace's lead reads exactly as an unknown id: nothing leaks.
        lead = (
            Lead.objects.filter(workspace_id=obj.workspace_id, pcid=pcid).first() if pcid else None
        )
        if lead is None:
            self.message_user(
                request,
                f"No lead with id {pcid!r} in the workspace {obj.workspace}: pick one of "
                f"its leads (Leads, column lead id).",
                messages.ERROR,
            )
            return redirect("admin:integrations_integration_change", obj.pk)
        try:
            self._default_build(request, obj)
            run = run_for_lead(integration=obj, lead=lead, meaning=meaning)
        except EngineError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:integrations_integration_change", obj.pk)
        sending = {
            Status.DISABLED: " The integration is disabled: nothing was sent.",
            Status.TEST: (
                " The integration is in test mode: requests are sent for test leads only."
            ),
        }.get(obj.status, "")
        self.message_user(
            request,
            f"Run {run.pk} for lead {lead.pcid}: {run.get_status_display().lower()}.{sending}",
            messages.WARNING if sending else messages.SUCCESS,
        )
        return redirect("admin:integrations_scenariorun_change", run.pk)


admin.site.unregister(Integration)
admin.site.register(Integration, ScenarioIntegrationAdmin)


# --- runs ----------------------------------------------------------------------------------


def _acting_request_id(element: Element) -> int | None:
    if element.kind == Element.Kind.MIRROR and element.mirror_of is not None:
        return element.mirror_of.request_step_id
    return element.request_step_id


def run_timeline(run: ScenarioRun) -> list[dict[str, Any]]:
    """The run's steps in order, each with its outcome and the request logs written
    while it ran (same request, lead and window)."""
    steps = list(
        RunStep.objects.filter(run=run)
        .select_related("element", "element__mirror_of")
        .order_by("id")
    )
    logs: list[RequestLog] = []
    by_step: dict[int, list[RequestLog]] = {}
    for entry in RequestLog.objects.filter(run_step__run=run).order_by("id")[:500]:
        by_step.setdefault(entry.run_step_id, []).append(entry)
    started = [s.started_at for s in steps if s.started_at]
    if started and not by_step:
        # Rows written before logs named their step: paired by request, lead and time.
        window = RequestLog.objects.filter(
            integration_id=run.integration_id,
            origin="scenario",
            created_at__gte=min(started),
        )
        window = (
            window.filter(lead_id=run.lead_id) if run.lead_id else window.filter(lead__isnull=True)
        )
        finished = [s.finished_at for s in steps if s.finished_at]
        if finished:
            window = window.filter(created_at__lte=max(finished))
        logs = list(window.order_by("id")[:200])
    rows = []
    for step in steps:
        output = step.output or {}
        outcome = output.get("outcome") or {}
        request_id = _acting_request_id(step.element)
        step_logs = by_step.get(step.pk) or [
            log for log in logs
            if request_id and log.request_step_id == request_id and step.started_at
            and log.created_at >= step.started_at
            and (step.finished_at is None or log.created_at <= step.finished_at)
        ]  # fmt: skip
        rows.append(
            {
                "step": step,
                "outcome": outcome.get("kind") or "",
                "reason": outcome.get("reason") or output.get("stopped") or "",
                "captured": outcome.get("captured") or {},
                "variables": output.get("variables") or {},
                "ended": output.get("ended") or "",
                "logs": step_logs,
            }
        )
    return rows


@admin.register(ScenarioRun)
class ScenarioRunAdmin(ScopedAdmin):
    list_display = ["__str__", "status_badge", "integration", "lead", "created_at",
                    "finished_at", "is_dry_run"]  # fmt: skip
    list_display_links = ["__str__"]
    list_filter = ["status", "is_dry_run", scoped_related_filter("integration"),
                   ("created_at", admin.DateFieldListFilter)]  # fmt: skip
    search_fields = ["integration__name", "reason"]
    list_select_related = ["integration", "lead"]
    show_full_result_count = False
    date_hierarchy = "created_at"
    change_form_template = "admin/integrations/scenariorun/change_form.html"
    fieldsets = [
        (None, {"fields": ["integration", "lead", "status", "meaning", "is_dry_run", "reason",
                           "created_at", "deadline_at", "finished_at"]}),
        ("Data", {"fields": ["result", "variables", "counters_display"]}),
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*(f.name for f in ScenarioRun._meta.fields), "counters_display"]

    @display(description="counters")
    def counters_display(self, obj: ScenarioRun) -> str:
        """The counters by element name: stored as ``visits:<element id>`` (breakers,
        repeaters, each mirror its own) and ``event:<name>`` (set event)."""
        counters = obj.counters or {}
        if not counters:
            return "—"
        ids = {
            int(key.split(":", 1)[1])
            for key in counters
            if key.startswith("visits:") and key.split(":", 1)[1].isdigit()
        }
        names = dict(
            Element.objects.filter(integration_id=obj.integration_id, pk__in=ids).values_list(
                "pk", "name"
            )
        )
        rows = []
        for key, value in counters.items():
            kind, _, rest = key.partition(":")
            if kind == "visits" and rest.isdigit():
                name = names.get(int(rest), f"element {rest} (deleted)")
                label = format_html("passes through <strong>{}</strong>", name)
            elif kind == "event":
                label = format_html("event <strong>{}</strong>", rest)
            else:
                label = format_html("{}", key)
            rows.append(format_html('<li class="run-counter">{}: {}</li>', label, value))
        return format_html(
            '<ul id="run-counters">{}</ul>', format_html_join("", "{}", ((row,) for row in rows))
        )

    @display(description="status", ordering="status", label=RUN_COLOURS)
    def status_badge(self, obj: ScenarioRun) -> str:
        return obj.status

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _may_replay(self, request: HttpRequest, run: ScenarioRun) -> bool:
        integration_admin = self.admin_site._registry[Integration]
        return integration_admin.has_change_permission(request, run.integration)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        extra_context = extra_context or {}
        run = self.get_object(request, object_id)
        if run is not None:
            logs_url = reverse("admin:integrations_requestlog_changelist")
            query = f"?integration__id__exact={run.integration_id}"
            if run.lead_id:
                query += f"&lead__id__exact={run.lead_id}"
            else:
                query += "&was_sent__exact=0"
            may_replay = self._may_replay(request, run)
            extra_context.update(
                timeline=run_timeline(run),
                logs_url=logs_url + query,
                may_replay=may_replay,
                may_cancel=may_replay and run.status not in ScenarioRun.FINISHED,
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/replay/",
                wrap(self.replay_view),
                name="integrations_scenariorun_replay",
            ),
            path(
                "<path:object_id>/cancel/",
                wrap(self.cancel_view),
                name="integrations_scenariorun_cancel",
            ),
            *super().get_urls(),
        ]

    def _run_for_post(self, request: HttpRequest, object_id: str) -> ScenarioRun:
        """The run a replay or cancel button posts for: a POST by an operator who may
        change its integration."""
        if request.method != "POST":
            raise Http404
        run = self.get_object(request, object_id)
        if run is None or not self._may_replay(request, run):
            raise Http404
        return run

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        run = self._run_for_post(request, object_id)
        try:
            new = run_replay(run=run)
        except EngineError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return redirect("admin:integrations_scenariorun_change", run.pk)
        self.message_user(
            request,
            format_html("Replayed run {} as run {}.", run.pk, new.pk),
            messages.SUCCESS,
        )
        return redirect("admin:integrations_scenariorun_change", new.pk)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Stop a running or waiting run (a poll nobody needs any more, a dry run left
        waiting): its pending steps are skipped; a finished run is left as it is."""
        run = self._run_for_post(request, object_id)
        run = run_cancel(run_id=run.pk, reason=f"cancelled by {request.user}")
        if run.status == ScenarioRun.Status.CANCELLED:
            self.message_user(
                request,
                format_html("Run {} cancelled: its pending steps were skipped.", run.pk),
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                format_html("Run {} had already finished ({}).", run.pk, run.get_status_display()),
                messages.WARNING,
            )
        return redirect("admin:integrations_scenariorun_change", run.pk)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("integration", "lead")
