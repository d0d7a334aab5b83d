"""Acceptance of the scenario editor (issue 4) in a real browser against the live server:
an operator builds the polling pattern on an integration (start -> breaker -> request,
request -> wait 30 s -> repeater -> breaker while the buyer's status is not "done"),
sees the diagram, runs it with sample values (nothing sent) and cancels that dry run,
then a real run polls a local buyer that answers "pending" twice and then "done" (the
waits woken by the sweeper on a fake clock, as tests/integration/integrations/engine
does), and the operator reads its timeline with the three requests and replays it."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.conf import settings
from playwright.sync_api import expect
from werkzeug import Response

from integrations.engine import services as engine
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestLog,
    RequestStep,
    ResponseCapture,
    ResponseRule,
    RunStep,
    ScenarioRun,
)
from structures.models import Lead
from tests.factories.structures import make_lead_setup

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNS = "/admin/integrations/scenariorun/"

# The scenario as the operator types it: (name, kind, settings), in order.
ELEMENTS = [
    ("Begin", "start", {}),
    ("At most 5 tries", "breaker", {"limit": 5}),
    ("Ask the buyer", "request", {}),
    ("Half a minute", "wait", {"mode": "delay", "seconds": 30}),
    ("Again", "repeater", {}),
    ("Keep the answer", "set_variable", {"name": "result", "template": "{{status}}"}),
]
DONE = {"source": "variable", "key": "status", "operator": "equals", "value": "done"}
NOT_DONE = {"source": "variable", "key": "status", "operator": "not_equals", "value": "done"}
# (from, to, conditions) by element name.
CONNECTIONS = [
    ("Begin", "At most 5 tries", []),
    ("At most 5 tries", "Ask the buyer", []),
    ("Ask the buyer", "Keep the answer", [DONE]),
    ("Ask the buyer", "Half a minute", [NOT_DONE]),
    ("Half a minute", "Again", []),
    ("Again", "At most 5 tries", []),
]


@pytest.fixture
def buyer(httpserver: Any) -> Any:
    """A buyer that is still working on the lead twice, then done (and done after)."""
    statuses = ["pending", "pending", "done"]

    def handler(request: Any) -> Response:
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return Response(json.dumps({"status": status}), content_type="application/json")

    httpserver.expect_request("/status", method="POST").respond_with_handler(handler)
    return httpserver


def status_request(integration: Integration, url: str) -> RequestStep:
    """The request as the Integration Builder makes it (its own browser test covers that
    page): its answer's status is captured into the run variable ``status``."""
    step = RequestStep.objects.create(
        workspace=integration.workspace, integration=integration, name="Status",
        method="POST", url=url,
    )  # fmt: skip
    ResponseRule.objects.create(request=step, position=0, key="status", value="done")
    ResponseRule.objects.create(
        request=step, position=1, key="status", value="pending", outcome="pending"
    )
    ResponseCapture.objects.create(
        request=step, key="status", target="variable", target_name="status"
    )
    return step


def add_row(page: Any, prefix: str) -> None:
    """Unfold's "Add another …" link of an inline (prefix = the related name)."""
    page.locator(f"#{prefix}-group a.add-row").click()


def save_and_continue(page: Any, url: str) -> None:
    page.locator('[name="_continue"]').first.click()
    # The browser keeps the open tab's #fragment across the redirect.
    expect(page).to_have_url(re.compile(re.escape(url) + "(#[a-z-]+)?$"))
    expect(page.locator(".errornote")).to_have_count(0)


def field(page: Any, label: str) -> Any:
    """The value of a read-only field of the run page, by its label."""
    labelled = page.locator("label", has_text=re.compile(rf"^{label}:?$"))
    return page.locator(".field-line", has=labelled).locator(".readonly")


def sweep_when_due(run: ScenarioRun) -> None:
    """The beat's sweeper, one pass just after the run's waiting step is due (a fake
    clock: nobody waits 30 s). Celery runs eagerly in tests, so the woken steps run here."""
    waiting = RunStep.objects.get(run=run, status=RunStep.Status.PENDING)
    with time_machine.travel(waiting.due_at + timedelta(seconds=1), tick=False):
        engine.engine_sweep()


def shot(page: Any, name: str) -> None:
    path = Path(settings.VAR_DIR) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


def test_operator_builds_a_polling_scenario_dry_runs_it_runs_it_and_replays_it(
    e2e_page: Any, live_server: Any, admin_login: Any, buyer: Any
) -> None:
    page = e2e_page
    setup = make_lead_setup("Pollco")
    integration = Integration.objects.create(
        workspace=setup.workspace, name="Polling buyer", status="enabled"
    )
    step = status_request(integration, buyer.url_for("/status"))
    url = f"/admin/integrations/integration/{integration.pk}/change/"
    admin_login(setup.operator.username, url)

    # No scenario yet: the card says what to do.
    expect(page.locator("#scenario-empty")).to_be_visible()

    # Scenario elements tab: one row per element, settings typed as JSON.
    page.locator('#tabs-items a[href="#elements"]').click()
    for index, (name, kind, config) in enumerate(ELEMENTS):
        add_row(page, "elements")
        page.fill(f"#id_elements-{index}-position", str(index))
        page.fill(f"#id_elements-{index}-name", name)
        page.select_option(f"#id_elements-{index}-kind", kind)
        if kind == "request":
            page.select_option(f"#id_elements-{index}-request_step", str(step.pk))
        page.fill(f"#id_elements-{index}-config", json.dumps(config))
    save_and_continue(page, url)
    elements = {e.name: e for e in integration.elements.all()}
    assert [(e.name, e.kind, e.config) for e in integration.elements.order_by("position")] == [
        (name, kind, config) for name, kind, config in ELEMENTS
    ]
    assert elements["Ask the buyer"].request_step_id == step.pk

    # Scenario connections tab: the arrows, picked by the elements' names; the two
    # leaving the request carry the condition on the captured status.
    page.locator('#tabs-items a[href="#connections"]').click()
    for index, (source, target, conditions) in enumerate(CONNECTIONS):
        add_row(page, "connections")
        page.fill(f"#id_connections-{index}-position", str(index))
        page.select_option(f"#id_connections-{index}-from_element", str(elements[source]))
        page.select_option(f"#id_connections-{index}-to_element", str(elements[target]))
        page.fill(f"#id_connections-{index}-conditions", json.dumps(conditions))
    # A mistyped operator is refused on save, named, and nothing is saved.
    not_done = CONNECTIONS.index(("Ask the buyer", "Half a minute", [NOT_DONE]))
    typo = f"#id_connections-{not_done}-conditions"
    page.fill(typo, json.dumps([{**NOT_DONE, "operator": "!="}]))
    page.locator('[name="_continue"]').first.click()
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.get_by_text("Condition 1: unknown operator '!='")).to_be_visible()
    assert not integration.connections.exists()
    page.locator('#tabs-items a[href="#connections"]').click()
    page.fill(typo, json.dumps([NOT_DONE]))
    save_and_continue(page, url)
    saved = {
        (c.from_element.name, c.to_element.name): c.conditions
        for c in integration.connections.select_related("from_element", "to_element")
    }
    assert saved == {(a, b): conditions for a, b, conditions in CONNECTIONS}

    # The diagram: a box per element, an arrow per connection, labelled with its conditions.
    diagram = page.locator("#scenario-diagram")
    expect(diagram).to_be_visible()
    expect(diagram.locator(".scenario-element")).to_have_count(len(ELEMENTS))
    expect(diagram.locator(".scenario-connection")).to_have_count(len(CONNECTIONS))
    for name, _kind, _config in ELEMENTS:
        expect(diagram.locator(".scenario-element", has_text=name)).to_have_count(1)
    arrows = {
        c.to_element.name: diagram.locator(f'.scenario-connection[data-connection="{c.pk}"]')
        for c in integration.connections.filter(from_element=elements["Ask the buyer"])
    }
    expect(arrows["Keep the answer"]).to_contain_text("status equals done")
    expect(arrows["Half a minute"]).to_contain_text("status not_equals done")
    expect(diagram.locator(".scenario-connection", has_text="always")).to_have_count(4)
    shot(page, "e2e-scenario-editor.png")
    diagram.screenshot(path=str(Path(settings.VAR_DIR) / "e2e-scenario-diagram.png"))

    # Run with sample values: a dry run. The request is rendered and logged, not sent;
    # its (non-)answer is not "done", so the run waits 30 s before asking again.
    page.locator("#sample-run-form button[type=submit]").click()
    expect(page).to_have_url(re.compile(re.escape(RUNS) + r"\d+/change/$"))
    expect(page.get_by_text("Dry run with sample values: nothing was sent.")).to_be_visible()
    dry = ScenarioRun.objects.get(integration=integration)
    assert dry.is_dry_run and dry.lead_id is None
    expect(field(page, "Status")).to_contain_text("Waiting")
    timeline = page.locator("#run-timeline")
    ask = timeline.locator(".run-step", has_text="Ask the buyer")
    expect(ask).to_have_count(1)
    expect(ask.locator(".step-log")).to_contain_text("not sent")
    expect(ask).to_contain_text("Not sent: dry run.")
    waiting = timeline.locator(".run-step", has_text="Again")
    expect(waiting).to_contain_text("Pending")
    assert buyer.log == []  # nothing reached the buyer
    shot(page, "e2e-scenario-dry-run.png")

    # A dry run left waiting would go on asking (rendering only) every 30 s up to the
    # breaker: the operator cancels it.
    page.locator("#cancel-form button[type=submit]").click()
    expect(page.get_by_text(f"Run {dry.pk} cancelled")).to_be_visible()
    expect(field(page, "Status")).to_contain_text("Cancelled")
    expect(page.locator("#cancel-form")).to_have_count(0)
    expect(timeline.locator(".run-step", has_text="Again")).to_contain_text("Skipped")
    dry.refresh_from_db()
    assert dry.status == ScenarioRun.Status.CANCELLED
    assert not RunStep.objects.filter(run=dry, status=RunStep.Status.PENDING).exists()

    # A real run for a lead: "Run for a lead" on the scenario card, the lead picked by
    # its id; the first request is sent and the run waits 30 s, on the run's page.
    lead = Lead.objects.create(
        workspace=setup.workspace, structure=setup.structure, partner=setup.partner,
        source="api", status="approved", data={"g_email": "jane@example.com"},
    )  # fmt: skip
    page.goto(live_server.url + url)
    page.fill('#lead-run-form [name="pcid"]', lead.pcid)
    page.locator("#lead-run-form button[type=submit]").click()
    expect(page).to_have_url(re.compile(re.escape(RUNS) + r"\d+/change/$"))
    expect(page.get_by_text(f"for lead {lead.pcid}: waiting.")).to_be_visible()
    expect(field(page, "Status")).to_contain_text("Waiting")
    run = ScenarioRun.objects.get(integration=integration, lead=lead)
    assert run.status == ScenarioRun.Status.WAITING and len(buyer.log) == 1
    assert not run.is_dry_run
    sweep_when_due(run)  # second try: still pending
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.WAITING and len(buyer.log) == 2
    sweep_when_due(run)  # third try: done
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED and len(buyer.log) == 3
    assert run.variables["result"] == "done"

    # The operator finds it from the scenario card's "All runs".
    page.goto(live_server.url + url)
    page.locator("#scenario").get_by_role("link", name="All runs").click()
    expect(page).to_have_url(re.compile(re.escape(RUNS) + r"\?integration__id__exact="))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Cancelled")).to_have_count(1)
    real_row = rows.filter(has_text="Succeeded")
    expect(real_row).to_have_count(1)
    real_row.get_by_role("link", name=str(run)).click()
    expect(page).to_have_url(re.compile(rf"{re.escape(RUNS)}{run.pk}/change/(\?.*)?$"))

    # Its timeline: three passes through the breaker, three requests sent, each with
    # its answer, two 30-second waits between them, and the final answer kept.
    expect(field(page, "Status")).to_contain_text("Succeeded")
    expect(field(page, "Result")).to_contain_text("accepted")
    expect(page.locator("#cancel-form")).to_have_count(0)  # nothing left to cancel
    timeline = page.locator("#run-timeline")
    steps = timeline.locator(".run-step")
    expect(steps).to_have_count(RunStep.objects.filter(run=run).count())
    expect(steps).to_have_count(12)  # start, 3 x (breaker, request), 2 x (wait, repeater), set
    calls = timeline.locator(".step-log")
    expect(calls).to_have_count(3)
    for index, outcome in enumerate(("pending", "pending", "accepted")):
        expect(calls.nth(index)).to_contain_text(f"— {outcome}, HTTP 200, sent")
        expect(calls.nth(index)).to_contain_text(buyer.url_for("/status"))
    expect(timeline.locator(".run-step", has_text="Half a minute")).to_have_count(2)
    expect(timeline.locator(".run-step", has_text="Keep the answer")).to_contain_text("result=done")
    logs = RequestLog.objects.filter(run_step__run=run).order_by("id")
    assert [(entry.outcome, entry.was_sent) for entry in logs] == [
        ("pending", True), ("pending", True), ("accepted", True),
    ]  # fmt: skip
    shot(page, "e2e-scenario-run.png")

    # Replay: a new real run for the same lead, driven at once; the buyer is done now.
    page.locator("#replay-form button[type=submit]").click()
    replay = ScenarioRun.objects.filter(integration=integration).exclude(pk__in=[dry.pk, run.pk])
    expect(page.get_by_text(f"Replayed run {run.pk} as run")).to_be_visible()
    new = replay.get()
    expect(page).to_have_url(re.compile(rf"{re.escape(RUNS)}{new.pk}/change/$"))
    expect(field(page, "Status")).to_contain_text("Succeeded")
    calls = page.locator("#run-timeline .step-log")
    expect(calls).to_have_count(1)
    expect(calls.first).to_contain_text("— accepted, HTTP 200, sent")
    assert (new.lead_id, new.is_dry_run) == (lead.pk, False)
    assert len(buyer.log) == 4
    assert integration.elements.filter(kind=Element.Kind.REQUEST).count() == 1


def test_operator_replays_a_run_that_a_webhook_trigger_started(
    e2e_page: Any, live_server: Any, admin_login: Any
) -> None:
    """A scenario whose only start is a webhook trigger's is replayed from that start
    (a replay once looked for a default start and refused)."""
    page = e2e_page
    setup = make_lead_setup("Hookco")
    integration = Integration.objects.create(
        workspace=setup.workspace, name="Consent updates", status="enabled"
    )

    def element(kind: str, name: str, config: dict[str, Any]) -> Element:
        return Element.objects.create(
            workspace=setup.workspace, integration=integration, kind=kind, name=name,
            config=config,
        )  # fmt: skip

    start = element("start", "On callback", {"trigger": "webhook"})
    keep = element(
        "set_variable", "Keep the consent", {"name": "consent", "template": "{{status}}"}
    )
    Connection.objects.create(
        workspace=setup.workspace, integration=integration, from_element=start, to_element=keep
    )
    # What webhooks.services does with a callback to an endpoint that starts a scenario.
    run = engine.run_start(
        integration=integration, trigger="webhook", variables={"status": "withdrawn"}, claim=True
    )
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5)
    assert run.status == ScenarioRun.Status.SUCCEEDED

    admin_login(setup.operator.username, f"{RUNS}{run.pk}/change/")
    page.locator("#replay-form button[type=submit]").click()
    expect(page.get_by_text(f"Replayed run {run.pk} as run")).to_be_visible()
    new = ScenarioRun.objects.exclude(pk=run.pk).get()
    expect(page).to_have_url(re.compile(rf"{re.escape(RUNS)}{new.pk}/change/$"))
    expect(field(page, "Status")).to_contain_text("Succeeded")
    timeline = page.locator("#run-timeline")
    expect(timeline.locator(".run-step", has_text="On callback")).to_have_count(1)
    expect(timeline.locator(".run-step", has_text="Keep the consent")).to_contain_text(
        "consent=withdrawn"
    )
    assert new.steps.get(parent_step__isnull=True).element_id == start.pk
