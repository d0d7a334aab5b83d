"""The in-process driver outside a transaction (as a web request or a pool thread uses
it): run_start(claim=True) hands its first steps to the driver of this thread, each
plain step is one statement, a claimed step nobody drives goes back through the sweeper,
and the driver never runs a step another process holds."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from werkzeug import Request, Response

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

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'"),
]
Kind = Element.Kind


@pytest.fixture
def chain(lead_setup, httpserver):
    """start -> r1 -> r2 -> r3, each a JSON POST capturing the buyer's status."""
    ws = lead_setup.workspace
    httpserver.expect_request("/buyer").respond_with_data(
        json.dumps({"status": "ok"}), content_type="application/json"
    )
    integration = Integration.objects.create(workspace=ws, name="Chain", status="enabled")
    previous = Element.objects.create(
        workspace=ws, integration=integration, kind=Kind.START, name="start"
    )
    for n in range(3):
        step = RequestStep.objects.create(
            workspace=ws, integration=integration, url=httpserver.url_for("/buyer"), position=n
        )
        ResponseRule.objects.create(request=step, key="status", value="ok")
        ResponseCapture.objects.create(
            request=step, key="status", target="variable", target_name=f"s{n}"
        )
        element = Element.objects.create(
            workspace=ws, integration=integration, kind=Kind.REQUEST, name=f"r{n}",
            request_step=step,
        )  # fmt: skip
        Connection.objects.create(
            workspace=ws, integration=integration, from_element=previous, to_element=element
        )
        previous = element
    lead = Lead.objects.create(
        workspace=ws, structure=lead_setup.structure, partner=lead_setup.partner,
        source="api", status="approved", data={"g_email": "jane@example.com"},
    )  # fmt: skip
    return integration, lead


def test_a_claimed_run_is_driven_in_one_statement_per_step(chain, httpserver):
    integration, lead = chain
    engine.run_drive(  # warm: the graph and the statements are cached after this one
        run_id=engine.run_start(integration=integration, lead=lead, claim=True).pk,
        deadline_seconds=10,
    )
    with CaptureQueriesContext(connection) as captured:
        run = engine.run_start(integration=integration, lead=lead, claim=True)
        run = engine.run_drive(run_id=run.pk, deadline_seconds=10)
    assert run.status == "succeeded"
    assert run.variables == {"s0": "ok", "s1": "ok", "s2": "ok"}
    assert run.result["kind"] == "accepted"
    # run_start: one insert, which also reads the integration's state (for the first
    # request) while checking the cached graph's version; then per request one
    # statement recording it with its log, which also reads the state for the next one.
    assert len(captured.captured_queries) == 1 + 1 + 1 + 1
    assert RequestLog.objects.filter(run_step__run=run).count() == 3
    steps = RunStep.objects.filter(run=run).order_by("id")
    assert [s.status for s in steps] == ["done"] * 4
    assert all(s.attempt == 1 and s.finished_at for s in steps)


def test_an_integration_disabled_mid_run_sends_nothing_more(chain, httpserver):
    """The state each record reads for the next step is as fresh as a read of its own:
    an operator's change made while a request is in flight applies to the next one."""
    integration, lead = chain
    httpserver.clear()

    def disable_then_answer(request: Request) -> Response:
        from django.db import connection as thread_connection
        from django.db.models import F

        Integration.objects.filter(pk=integration.pk).update(
            status="disabled", config_version=F("config_version") + 1
        )
        thread_connection.close()
        return Response(json.dumps({"status": "ok"}), content_type="application/json")

    httpserver.expect_request("/buyer").respond_with_handler(disable_then_answer)
    run = engine.run_start(integration=integration, lead=lead, claim=True)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=10)
    assert len(httpserver.log) == 1  # r1 only: r2 and r3 saw the integration disabled
    logs = RequestLog.objects.filter(run_step__run=run).order_by("id")
    assert [log.was_sent for log in logs] == [True, False, False]


def test_a_run_started_after_a_status_change_sees_it_at_its_first_step(chain, httpserver):
    """run_start reads the state in its insert, not from memory: a status written
    without a version bump (a plain UPDATE) still stops the very first request."""
    integration, lead = chain
    engine.run_drive(  # warm: this process has the graph cached at the current version
        run_id=engine.run_start(integration=integration, lead=lead, claim=True).pk,
        deadline_seconds=10,
    )
    sent_before = len(httpserver.log)
    Integration.objects.filter(pk=integration.pk).update(status="disabled")
    run = engine.run_start(integration=integration, lead=lead, claim=True)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=10)
    assert len(httpserver.log) == sent_before
    logs = RequestLog.objects.filter(run_step__run=run).order_by("id")
    assert [log.was_sent for log in logs] == [False, False, False]
    assert "disabled" in logs[0].reason


def test_a_run_started_after_the_scenario_changed_follows_the_new_graph(chain, httpserver):
    """The graph this process cached is a hint checked by the run's insert: changed
    since (here by a write that another process could have made: a plain UPDATE of the
    connections and a version bump), the insert writes nothing and the run is planned
    again at the new version."""
    integration, lead = chain
    engine.run_drive(
        run_id=engine.run_start(integration=integration, lead=lead, claim=True).pk,
        deadline_seconds=10,
    )
    r0, r1, r2 = (
        Element.objects.get(integration=integration, name=name) for name in ("r0", "r1", "r2")
    )
    start = Element.objects.get(integration=integration, kind=Kind.START)
    # start -> r2 directly (as an editor in another process would save it).
    Connection.objects.filter(from_element=start).update(to_element=r2)
    Integration.objects.filter(pk=integration.pk).update(config_version=F("config_version") + 1)
    runs_before = ScenarioRun.objects.count()
    run = engine.run_start(integration=integration, lead=lead, claim=True)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=10)
    assert ScenarioRun.objects.count() == runs_before + 1  # the refused insert left nothing
    assert run.status == "succeeded"
    assert run.variables == {"s2": "ok"}
    steps = RunStep.objects.filter(run=run).order_by("id")
    assert [s.element_id for s in steps] == [start.pk, r2.pk]
    assert not RunStep.objects.filter(run=run, element__in=[r0, r1]).exists()


def test_claimed_steps_nobody_drives_go_back_through_the_sweeper(chain, httpserver):
    integration, lead = chain
    run = engine.run_start(integration=integration, lead=lead, claim=True)
    (first,) = RunStep.objects.filter(run=run, status=RunStep.Status.RUNNING)
    # A request's lease starts at its deadline: not handed out while it could be in flight.
    assert first.claimed_at >= timezone.now() + timedelta(seconds=30)
    engine.engine_sweep(send=False)
    assert RunStep.objects.get(pk=first.pk).status == RunStep.Status.RUNNING
    with time_machine.travel(first.claimed_at + timedelta(seconds=engine.LEASE_SECONDS + 1)):
        engine.engine_sweep(send=False)  # the lease ran out: pending again, attempt 2
        assert engine.steps_drive(deadline_seconds=10) >= 3
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert RunStep.objects.get(pk=first.pk).attempt == 2
    assert len(httpserver.log) == 3  # each request sent once


def test_a_step_another_process_holds_is_not_run_by_the_driver(chain, httpserver):
    integration, lead = chain
    run = engine.run_start(integration=integration, lead=lead)  # not claimed
    step = RunStep.objects.get(run=run, status=RunStep.Status.PENDING)
    RunStep.objects.filter(pk=step.pk).update(
        status=RunStep.Status.RUNNING, claimed_at=timezone.now()
    )  # a worker holds it
    run = engine.run_drive(run_id=run.pk, deadline_seconds=2, hand_off=False)
    assert run.status == "running"
    assert len(httpserver.log) == 0


def test_a_library_integration_runs_on_its_first_run_outside_a_transaction(lead_setup, httpserver):
    """Its default scenario is built by that first run_start, which bumps the version:
    the driver must not look for the new elements in the graph of the old one."""
    from integrations.portability import integration_import, library_entry

    httpserver.expect_request("/ping").respond_with_json({"status": "accepted", "bid": 7})
    entry = json.loads(json.dumps(library_entry("generic-json-buyer")))
    for request in entry["requests"]:
        request["url"] = httpserver.url_for("/" + request["meaning"])
    integration = integration_import(
        workspace_id=lead_setup.workspace.pk, data=entry, status="enabled"
    )
    lead = Lead.objects.create(
        workspace=lead_setup.workspace, structure=lead_setup.structure,
        partner=lead_setup.partner, source="api", status="approved", data={"g_zip": "90210"},
    )  # fmt: skip
    for claim in (False, True):
        run = engine.run_start(integration=integration, lead=lead, meaning="ping", claim=claim)
        run = engine.run_drive(run_id=run.pk, deadline_seconds=10, hand_off=False)
        assert run.status == "succeeded", claim
        assert float(run.result["captured"]["price"]) == 7
