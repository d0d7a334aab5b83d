"""The scenario engine against the database and real local HTTP servers: each element,
waits on a fake clock, branches, breakers, the polling pattern, mirrors, duplicate
delivery, the sweeper and in-process driving with a deadline."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone
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

pytestmark = pytest.mark.django_db
Kind = Element.Kind
START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday


class Scenario:
    """Builds an integration's graph in a few lines."""

    def __init__(self, setup):
        self.ws = setup.workspace
        self.integration = Integration.objects.create(
            workspace=self.ws, name="Scenario", status="enabled"
        )
        self.start = self.element(Kind.START, name="start")

    def element(self, kind, name="", **kwargs):
        return Element.objects.create(
            workspace=self.ws, integration=self.integration, kind=kind, name=name or kind, **kwargs
        )

    def request(self, url, name="request"):
        step = RequestStep.objects.create(
            workspace=self.ws, integration=self.integration, url=url, method="POST"
        )
        ResponseRule.objects.create(request=step, position=0, key="status", value="done|ok")
        ResponseRule.objects.create(
            request=step, position=1, key="status", value="pending", outcome="pending"
        )
        ResponseRule.objects.create(
            request=step, position=2, key="status", value="no", outcome="rejected"
        )
        ResponseCapture.objects.create(
            request=step, key="status", target="variable", target_name="status"
        )
        return self.element(Kind.REQUEST, name=name, request_step=step)

    def link(self, a, b, *conditions, position=0):
        return Connection.objects.create(
            workspace=self.ws,
            integration=self.integration,
            from_element=a,
            to_element=b,
            conditions=list(conditions),
            position=position,
        )

    def run(self, lead=None, *, deadline=5.0, **kwargs):
        run = engine.run_start(integration=self.integration, lead=lead, **kwargs)
        return engine.run_drive(run_id=run.pk, deadline_seconds=deadline)


def answers(httpserver, *statuses, path="/buyer", delay=0.0, code=200):
    """The buyer answers the given statuses in turn (the last one repeats)."""
    queue = list(statuses)

    def handler(request):
        if delay:
            time.sleep(delay)
        status = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(
            json.dumps({"status": status}), status=code, content_type="application/json"
        )

    httpserver.expect_request(path).respond_with_handler(handler)
    return httpserver.url_for(path)


def due_step(run):
    """The one step run_start left due (the start itself is recorded done there)."""
    return RunStep.objects.get(run=run, status=RunStep.Status.PENDING).pk


def outcome_of(run, element):
    return RunStep.objects.get(run=run, element=element).output["outcome"]


# --- elements ----------------------------------------------------------------------------


def test_request_element_sends_once_and_captures_into_run_variables(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "ok"))
    sc.link(sc.start, request)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["status"] == "ok"
    assert outcome_of(run, request)["kind"] == "accepted"
    assert len(httpserver.log) == 1
    assert RequestLog.objects.get(request_step=request.request_step).origin == "scenario"
    assert run.finished_at is not None


def test_error_answer_with_nowhere_to_go_fails_the_run(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "boom", code=500))
    sc.link(sc.start, request)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.FAILED
    assert outcome_of(run, request)["kind"] == "error"


def test_set_variable_and_modify_field_render_templates_against_the_run(sc, lead):
    greet = sc.element(
        Kind.SET_VARIABLE, config={"name": "greeting", "template": "Hi {{g_first_name}}"}
    )
    modify = sc.element(
        Kind.MODIFY_FIELD, config={"field": "g_first_name", "template": "{{greeting | upper}}"}
    )
    sc.link(sc.start, greet)
    sc.link(greet, modify)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["greeting"] == "Hi Jane"
    lead.refresh_from_db()
    assert lead.data["g_first_name"] == "HI JANE"


def test_dry_run_modifies_no_lead_and_sends_nothing(sc, lead, httpserver):
    modify = sc.element(Kind.MODIFY_FIELD, config={"field": "g_first_name", "template": "X"})
    request = sc.request(answers(httpserver, "ok"))
    sc.link(sc.start, modify)
    sc.link(modify, request)
    run = sc.run(lead, dry_run=True)
    lead.refresh_from_db()
    assert lead.data["g_first_name"] == "Jane"
    assert run.variables["g_first_name"] == "X"
    assert len(httpserver.log) == 0
    assert "dry run" in outcome_of(run, request)["reason"]
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_set_event_increments_its_counter(sc, lead):
    first = sc.element(Kind.SET_EVENT, config={"name": "Duplicate", "increment": 1})
    second = sc.element(Kind.SET_EVENT, config={"name": "Duplicate", "increment": 2})
    sc.link(sc.start, first)
    sc.link(first, second)
    run = sc.run(lead)
    assert run.counters["event:Duplicate"] == 3
    assert run.variables["Duplicate"] == 3


def test_mirror_uses_its_masters_settings(sc, lead, httpserver):
    master = sc.element(Kind.SET_VARIABLE, config={"name": "v", "template": "from master"})
    mirror = sc.element(Kind.MIRROR, mirror_of=master, config={"name": "v", "template": "own"})
    master_request = sc.request(answers(httpserver, "ok"))
    mirror_request = sc.element(Kind.MIRROR, mirror_of=master_request)
    sc.link(sc.start, mirror)
    sc.link(mirror, mirror_request)
    run = sc.run(lead)
    assert run.variables["v"] == "from master"
    assert len(httpserver.log) == 1
    assert outcome_of(run, mirror_request)["kind"] == "accepted"
    assert not RunStep.objects.filter(run=run, element__in=[master, master_request]).exists()


def test_start_is_chosen_by_meaning_and_trigger(sc, lead):
    ping = sc.element(Kind.START, meaning="ping")
    action = sc.element(Kind.START, config={"trigger": "action", "action": "conversion"})
    run = engine.run_start(integration=sc.integration, lead=lead, meaning="ping")
    assert list(run.steps.values_list("element", flat=True)) == [ping.pk]
    run = engine.run_start(integration=sc.integration, lead=lead, trigger="action")
    assert list(run.steps.values_list("element", flat=True)) == [action.pk]
    with pytest.raises(engine.EngineError):
        engine.run_start(integration=sc.integration, meaning="post_verification")


# --- branches and breakers ----------------------------------------------------------------


def test_only_the_branch_whose_conditions_hold_runs(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "no"))
    yes = sc.element(Kind.SET_VARIABLE, config={"name": "branch", "template": "accepted"})
    no = sc.element(Kind.SET_VARIABLE, config={"name": "branch", "template": "rejected"})
    sc.link(sc.start, request)
    sc.link(request, yes, {"source": "outcome", "operator": "equals", "value": "accepted"})
    sc.link(request, no, {"source": "outcome", "operator": "equals", "value": "rejected"})
    run = sc.run(lead)
    assert run.variables["branch"] == "rejected"
    assert not RunStep.objects.filter(run=run, element=yes).exists()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_unmatched_connections_end_the_branch_with_a_clear_status(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "ok"))
    later = sc.element(Kind.SET_VARIABLE, config={"name": "x", "template": "1"})
    sc.link(sc.start, request)
    sc.link(request, later, {"source": "variable", "key": "status", "operator": "equals",
                             "value": "never"})  # fmt: skip
    run = sc.run(lead)
    assert RunStep.objects.get(run=run, element=request).output["ended"] == (
        "no connection matched"
    )
    assert not RunStep.objects.filter(run=run, element=later).exists()


def test_breaker_with_limit_4_lets_exactly_4_passes_through(sc, lead, httpserver):
    breaker = sc.element(Kind.BREAKER, config={"limit": 4})
    request = sc.request(answers(httpserver, "ok"))
    repeater = sc.element(Kind.REPEATER)
    sc.link(sc.start, breaker)
    sc.link(breaker, request)
    sc.link(request, repeater)
    sc.link(repeater, breaker)
    run = sc.run(lead)
    assert len(httpserver.log) == 4
    assert run.status == ScenarioRun.Status.FAILED
    assert run.reason == engine.BREAKER_REASON
    assert run.counters[f"visits:{breaker.pk}"] == 5


# --- waits on a fake clock ----------------------------------------------------------------


def test_delay_wait_parks_the_run_and_the_sweeper_resumes_it_when_due(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        wait = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": 30})
        after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(lead)
        assert run.status == ScenarioRun.Status.WAITING
        parked = RunStep.objects.get(run=run, element=after)
        assert parked.status == RunStep.Status.PENDING
        assert parked.due_at == START + timedelta(seconds=30)
        assert engine.step_execute(step_id=parked.pk) == []  # not due yet
        clock.shift(29)
        assert engine.engine_sweep() == 0
        clock.shift(2)
        assert engine.engine_sweep() == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["after"] == "yes"


def test_within_hours_wait_uses_the_workspace_timezone_across_midnight(sc, lead):
    sc.ws.timezone = "America/New_York"
    sc.ws.save()
    # 02:00 UTC on Tuesday is 21:00 on Monday in New York: due Tuesday 10:00 New York.
    with time_machine.travel(datetime(2026, 3, 3, 2, 0, tzinfo=UTC), tick=False):
        wait = sc.element(Kind.WAIT, config={"mode": "within_hours", "from_hour": 10,
                                             "to_hour": 18})  # fmt: skip
        after = sc.element(Kind.SET_VARIABLE, config={"name": "a", "template": "1"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(Lead.objects.get(pk=lead.pk))
    assert RunStep.objects.get(run=run, element=after).due_at == datetime(
        2026, 3, 3, 15, 0, tzinfo=UTC
    )


# The factory's workspaces are in New York: hours below are New York wall-clock times.
@pytest.mark.parametrize(
    ("config", "now", "due"),
    [
        ({"mode": "until", "at": "2026-03-04T08:00:00+00:00"}, START,
         datetime(2026, 3, 4, 8, 0, tzinfo=UTC)),
        ({"mode": "next_working_day", "from_hour": 9},
         datetime(2026, 3, 6, 23, 0, tzinfo=UTC), datetime(2026, 3, 9, 13, 0, tzinfo=UTC)),
        ({"mode": "weekday", "weekday": 4, "from_hour": 12}, START,
         datetime(2026, 3, 6, 17, 0, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_each_wait_mode_schedules_the_next_step(sc, lead, config, now, due):
    with time_machine.travel(now, tick=False):
        wait = sc.element(Kind.WAIT, config=config)
        after = sc.element(Kind.SET_VARIABLE, config={"name": "a", "template": "1"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(lead)
    assert run.status == ScenarioRun.Status.WAITING
    assert RunStep.objects.get(run=run, element=after).due_at == due


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"mode": "weekday", "weekday": 12}, "weekday"),
        # Made in code (the admin refuses it on save): past the last date Python knows.
        ({"mode": "delay", "seconds": 1e20}, "too large"),
    ],
)
def test_bad_wait_settings_fail_the_run(sc, lead, config, said):
    wait = sc.element(Kind.WAIT, config=config)
    sc.link(sc.start, wait)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.FAILED
    assert said in run.reason


# --- the polling pattern ------------------------------------------------------------------


def polling(sc, url, limit):
    """request -> status not done -> wait 30 s -> repeater -> breaker -> request."""
    breaker = sc.element(Kind.BREAKER, config={"limit": limit})
    request = sc.request(url)
    done = sc.element(Kind.SET_VARIABLE, config={"name": "result", "template": "{{status}}"})
    wait = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": 30})
    repeater = sc.element(Kind.REPEATER)
    sc.link(sc.start, breaker)
    sc.link(breaker, request)
    sc.link(request, done, {"source": "variable", "key": "status", "operator": "equals",
                            "value": "done"})  # fmt: skip
    sc.link(request, wait, {"source": "variable", "key": "status", "operator": "not_equals",
                            "value": "done"})  # fmt: skip
    sc.link(wait, repeater)
    sc.link(repeater, breaker)


def test_polling_waits_30_seconds_between_tries_until_the_buyer_is_done(sc, lead, httpserver):
    polling(sc, answers(httpserver, "pending", "pending", "done"), limit=5)
    with time_machine.travel(START, tick=False) as clock:
        run = sc.run(lead)
        assert run.status == ScenarioRun.Status.WAITING
        assert len(httpserver.log) == 1
        clock.shift(31)
        engine.engine_sweep()
        assert len(httpserver.log) == 2
        run.refresh_from_db()
        assert run.status == ScenarioRun.Status.WAITING
        clock.shift(10)
        engine.engine_sweep()
        assert len(httpserver.log) == 2  # the next try is not due yet
        clock.shift(21)
        engine.engine_sweep()
    run.refresh_from_db()
    assert len(httpserver.log) == 3
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["result"] == "done"


def test_polling_is_bounded_by_its_breaker(sc, lead, httpserver):
    polling(sc, answers(httpserver, "pending"), limit=2)
    with time_machine.travel(START, tick=False) as clock:
        run = sc.run(lead)
        for _ in range(4):
            clock.shift(31)
            engine.engine_sweep()
    run.refresh_from_db()
    assert len(httpserver.log) == 2
    assert run.status == ScenarioRun.Status.FAILED
    assert run.reason == engine.BREAKER_REASON


# --- exactly once -------------------------------------------------------------------------


def test_a_step_delivered_twice_runs_once(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "ok"))
    after = sc.element(Kind.SET_EVENT, config={"name": "n"})
    sc.link(sc.start, request)
    sc.link(request, after)
    run = engine.run_start(integration=sc.integration, lead=lead)
    request_step_id = due_step(run)
    first = engine.step_execute(step_id=request_step_id)
    second = engine.step_execute(step_id=request_step_id)
    assert len(first) == 1
    assert second == []
    assert len(httpserver.log) == 1
    assert RunStep.objects.filter(run=run, element=after).count() == 1


def test_the_same_child_of_the_same_parent_cannot_be_scheduled_twice(sc, lead):
    run = engine.run_start(integration=sc.integration, lead=lead)
    parent = run.steps.get()
    child = dict(workspace=sc.ws, run=run, element=sc.start, parent_step=parent,
                 due_at=timezone.now())  # fmt: skip
    RunStep.objects.create(**child)
    with pytest.raises(IntegrityError), transaction.atomic():
        RunStep.objects.create(**child)
    with pytest.raises(IntegrityError), transaction.atomic():
        RunStep.objects.create(workspace=sc.ws, run=run, element=sc.start, due_at=timezone.now())


# --- the sweeper --------------------------------------------------------------------------


def test_sweeper_wakes_only_due_steps(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        soon = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": 10})
        late = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": 3600})
        after_soon = sc.element(Kind.SET_VARIABLE, config={"name": "a", "template": "1"})
        after_late = sc.element(Kind.SET_VARIABLE, config={"name": "b", "template": "1"})
        sc.link(sc.start, soon)
        sc.link(soon, after_soon)
        sc.link(sc.start, late, position=1)
        sc.link(late, after_late)
        run = sc.run(lead)
        clock.shift(60)
        assert engine.engine_sweep() == 1
        assert RunStep.objects.get(run=run, element=after_soon).status == RunStep.Status.DONE
        assert RunStep.objects.get(run=run, element=after_late).status == RunStep.Status.PENDING
        run.refresh_from_db()
        assert run.status == ScenarioRun.Status.WAITING
        assert engine.engine_sweep() == 0
        clock.shift(3600)
        assert engine.engine_sweep() == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_sweeper_redrives_a_step_whose_worker_died_exactly_once(sc, lead, httpserver):
    request = sc.request(answers(httpserver, "ok"))
    sc.link(sc.start, request)
    with time_machine.travel(START, tick=False) as clock:
        run = engine.run_start(integration=sc.integration, lead=lead)
        request_step_id = due_step(run)
        # A worker claims the step and dies before sending anything.
        RunStep.objects.filter(pk=request_step_id).update(
            status=RunStep.Status.RUNNING, claimed_at=timezone.now()
        )
        clock.shift(engine.LEASE_SECONDS - 1)
        assert engine.engine_sweep() == 0
        assert len(httpserver.log) == 0
        clock.shift(2)
        assert engine.engine_sweep() == 1
        assert engine.engine_sweep() == 0
    step = RunStep.objects.get(pk=request_step_id)
    assert (step.status, step.attempt) == (RunStep.Status.DONE, 2)
    assert len(httpserver.log) == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_a_step_lost_too_often_fails_the_run(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run = engine.run_start(integration=sc.integration, lead=lead)
        RunStep.objects.filter(run=run).update(
            status=RunStep.Status.RUNNING, claimed_at=timezone.now(), attempt=engine.MAX_ATTEMPTS
        )
        clock.shift(engine.LEASE_SECONDS + 1)
        assert engine.engine_sweep() == 0
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.FAILED
    assert run.reason == engine.LOST_REASON


def test_sweeper_sends_a_pending_due_step_once_per_grace_period(sc, lead, monkeypatch):
    sent = []
    monkeypatch.setattr("integrations.tasks.step_execute_task.delay", sent.append)
    sc.link(sc.start, sc.element(Kind.SET_VARIABLE, config={"name": "x", "template": "1"}))
    with time_machine.travel(START, tick=False) as clock:
        run = engine.run_start(integration=sc.integration, lead=lead)
        assert engine.engine_sweep() == 1
        assert engine.engine_sweep() == 0
        clock.shift(engine.REQUEUE_GRACE_SECONDS + 1)
        assert engine.engine_sweep() == 1  # the first task was lost: sent again
    assert sent == [due_step(run)] * 2


# --- driving with a deadline --------------------------------------------------------------


def test_run_drive_stops_at_its_deadline_and_leaves_the_rest_pending(
    sc, lead, httpserver, django_capture_on_commit_callbacks
):
    # The deadline falls while the request is in flight: room for the claim before it
    # on a loaded machine (0.2 s was once too short in the full suite), the buyer slower.
    request = sc.request(answers(httpserver, "ok", delay=1.5))
    after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
    sc.link(sc.start, request)
    sc.link(request, after)
    run = engine.run_start(integration=sc.integration, lead=lead)
    with django_capture_on_commit_callbacks(execute=False) as handed_off:
        run = engine.run_drive(run_id=run.pk, deadline_seconds=0.8)
    assert run.status == ScenarioRun.Status.RUNNING
    assert RunStep.objects.get(run=run, element=after).status == RunStep.Status.PENDING
    assert len(handed_off) == 1
    handed_off[0]()  # the worker (eager here) continues the run
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["after"] == "yes"


def test_a_worker_back_after_its_lease_expired_writes_nothing(sc, lead, httpserver, monkeypatch):
    request = sc.request(answers(httpserver, "ok"))
    after = sc.element(Kind.SET_EVENT, config={"name": "n"})
    sc.link(sc.start, request)
    sc.link(request, after)
    run = engine.run_start(integration=sc.integration, lead=lead)
    request_step_id = due_step(run)
    real_request_run = engine.services.request_run

    def slow_worker(**kwargs):
        result = real_request_run(**kwargs)
        # Meanwhile the lease ran out and the sweeper handed the step out again.
        RunStep.objects.filter(pk=request_step_id).update(
            status=RunStep.Status.PENDING, attempt=2, claimed_at=None
        )
        return result

    monkeypatch.setattr(engine.services, "request_run", slow_worker)
    assert engine.step_execute(step_id=request_step_id) == []
    step = RunStep.objects.get(pk=request_step_id)
    assert (step.status, step.attempt, step.output) == (RunStep.Status.PENDING, 2, {})
    assert not RunStep.objects.filter(run=run, element=after).exists()
    monkeypatch.setattr(engine.services, "request_run", real_request_run)
    assert len(engine.step_execute(step_id=request_step_id)) == 1
    assert RunStep.objects.filter(run=run, element=after).count() == 1


def test_a_request_in_flight_longer_than_the_lease_is_not_sent_again(
    sc, lead, httpserver, monkeypatch
):
    request = sc.request(answers(httpserver, "ok"))
    RequestStep.objects.filter(pk=request.request_step_id).update(timeout_seconds=100)
    sc.link(sc.start, request)
    sent = []
    monkeypatch.setattr("integrations.tasks.step_execute_task.delay", sent.append)
    with time_machine.travel(START, tick=False) as clock:
        run = engine.run_start(integration=sc.integration, lead=lead)
        request_step_id = due_step(run)
        real_request_run = engine.services.request_run

        def slow_buyer(**kwargs):
            clock.shift(engine.LEASE_SECONDS + 30)  # the buyer takes 90 s to answer
            assert engine.engine_sweep() == 0
            return real_request_run(**kwargs)

        monkeypatch.setattr(engine.services, "request_run", slow_buyer)
        engine.step_execute(step_id=request_step_id)
    assert sent == []
    assert len(httpserver.log) == 1
    assert RunStep.objects.get(pk=request_step_id).attempt == 1
