"""The scenario engine's run deadline, cancelling, waits relative to an event, the
"modify request" tool, the repeater's own limit and the scenario_drive command."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone
from werkzeug import Response

from integrations.engine import services as engine
from integrations.engine.overrides import OVERRIDES_KEY, spec_apply_overrides
from integrations.models import Element, RequestLog, RunStep, ScenarioRun
from integrations.spec import Method, RequestSpec
from structures.models import Lead
from tests.integration.integrations.engine.test_engine import START, answers

pytestmark = pytest.mark.django_db
Kind = Element.Kind
Status = ScenarioRun.Status


def waiting_run(sc, lead, *, seconds=3600, **kwargs):
    """start -> wait -> set variable: the run parks on a pending step."""
    wait = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": seconds})
    after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
    sc.link(sc.start, wait)
    sc.link(wait, after)
    run = sc.run(lead, **kwargs)
    assert run.status == Status.WAITING
    return run, after


# --- deadline -----------------------------------------------------------------------------


def test_run_start_stores_the_deadline(sc, lead):
    with time_machine.travel(START, tick=False):
        run = engine.run_start(integration=sc.integration, lead=lead, deadline_seconds=90)
    assert run.deadline_at == START + timedelta(seconds=90)
    assert engine.run_start(integration=sc.integration, lead=lead).deadline_at is None


def test_sweeper_times_out_a_waiting_run_past_its_deadline_and_skips_its_steps(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run, after = waiting_run(sc, lead, deadline_seconds=60)
        clock.shift(59)
        engine.engine_sweep()
        run.refresh_from_db()
        assert run.status == Status.WAITING
        clock.shift(2)
        engine.engine_sweep()
    run.refresh_from_db()
    assert run.status == Status.TIMED_OUT
    assert run.reason == "deadline passed"
    assert run.finished_at == START + timedelta(seconds=61)
    step = RunStep.objects.get(run=run, element=after)
    assert step.status == RunStep.Status.SKIPPED
    assert "after" not in run.variables


def test_deadline_does_not_touch_a_finished_run(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        done = sc.element(Kind.SET_VARIABLE, config={"name": "x", "template": "1"})
        sc.link(sc.start, done)
        run = sc.run(lead, deadline_seconds=10)
        assert run.status == Status.SUCCEEDED
        clock.shift(60)
        assert engine.runs_time_out() == 0
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED


def test_step_execute_refuses_a_due_step_of_a_run_past_its_deadline(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run, after = waiting_run(sc, lead, seconds=30, deadline_seconds=20)
        clock.shift(31)  # the step is due, but the deadline passed before the sweeper ran
        step = RunStep.objects.get(run=run, element=after)
        assert engine.step_execute(step_id=step.pk) == []
    step.refresh_from_db()
    run.refresh_from_db()
    assert step.status == RunStep.Status.SKIPPED
    assert run.status == Status.TIMED_OUT
    assert "after" not in run.variables


def test_step_execute_refuses_steps_of_a_cancelled_run(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run, after = waiting_run(sc, lead, seconds=30)
        step = RunStep.objects.get(run=run, element=after)
        # A step made pending again after the cancel (e.g. a lost worker's step re-driven).
        engine.run_cancel(run_id=run.pk, reason="operator")
        RunStep.objects.filter(pk=step.pk).update(status=RunStep.Status.PENDING)
        clock.shift(31)
        assert engine.step_execute(step_id=step.pk) == []
    step.refresh_from_db()
    assert step.status == RunStep.Status.SKIPPED
    run.refresh_from_db()
    assert run.status == Status.CANCELLED
    assert "after" not in run.variables


# --- cancel -------------------------------------------------------------------------------


def test_cancel_skips_pending_steps_and_is_idempotent(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run, after = waiting_run(sc, lead)
        run = engine.run_cancel(run_id=run.pk, reason="lead withdrawn")
        assert run.status == Status.CANCELLED
        assert run.reason == "lead withdrawn"
        assert RunStep.objects.get(run=run, element=after).status == RunStep.Status.SKIPPED
        finished_at = run.finished_at
        clock.shift(10)
        again = engine.run_cancel(run_id=run.pk, reason="second click")
        assert (again.status, again.reason, again.finished_at) == (
            Status.CANCELLED,
            "lead withdrawn",
            finished_at,
        )
        clock.shift(7200)
        assert engine.engine_sweep() == 0


def test_cancel_does_not_change_a_finished_run(sc, lead):
    done = sc.element(Kind.SET_VARIABLE, config={"name": "x", "template": "1"})
    sc.link(sc.start, done)
    run = sc.run(lead)
    assert engine.run_cancel(run_id=run.pk, reason="late").status == Status.SUCCEEDED


def test_a_request_in_flight_when_cancelled_schedules_nothing(sc, lead, httpserver):
    url = answers(httpserver, "ok")
    request = sc.request(url)
    after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
    sc.link(sc.start, request)
    sc.link(request, after)
    run = engine.run_start(integration=sc.integration, lead=lead)
    request_id = RunStep.objects.get(run=run, element=request).pk
    original = engine._request_effect

    def cancelled_meanwhile(step, run_):
        effect = original(step, run_)
        engine.run_cancel(run_id=run_.pk, reason="operator")
        return effect

    engine._request_effect = cancelled_meanwhile
    try:
        assert engine.step_execute(step_id=request_id) == []
    finally:
        engine._request_effect = original
    run.refresh_from_db()
    assert (run.status, run.reason) == (Status.CANCELLED, "operator")
    assert RunStep.objects.get(pk=request_id).status == RunStep.Status.DONE
    assert not RunStep.objects.filter(run=run, element=after).exists()


# --- wait relative to an event ------------------------------------------------------------


def test_relative_wait_counts_from_a_time_held_in_a_variable(sc, lead):
    event = START - timedelta(seconds=100)
    with time_machine.travel(START, tick=False) as clock:
        wait = sc.element(
            Kind.WAIT, config={"mode": "relative", "relative_to": "clicked_at", "seconds": 300}
        )
        after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(lead, variables={"clicked_at": event.isoformat()})
        step = RunStep.objects.get(run=run, element=after)
        assert step.due_at == event + timedelta(seconds=300)
        clock.shift(199)
        engine.engine_sweep()
        assert RunStep.objects.get(pk=step.pk).status == RunStep.Status.PENDING
        clock.shift(2)
        engine.engine_sweep()
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED


def test_relative_wait_counts_from_the_lead_arrival(sc, lead):
    Lead.objects.filter(pk=lead.pk).update(created_at=START - timedelta(hours=1))
    lead.refresh_from_db()
    with time_machine.travel(START, tick=False):
        wait = sc.element(
            Kind.WAIT,
            config={"mode": "relative", "relative_to": "lead_created", "seconds": 7200},
        )
        after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(lead)
    assert RunStep.objects.get(run=run, element=after).due_at == START + timedelta(hours=1)


def test_relative_wait_on_a_past_event_goes_on_at_once(sc, lead):
    with time_machine.travel(START, tick=False):
        wait = sc.element(
            Kind.WAIT, config={"mode": "relative", "relative_to": "at", "seconds": 10}
        )
        after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        run = sc.run(lead, variables={"at": (START - timedelta(days=1)).timestamp()})
    assert run.status == Status.SUCCEEDED


def test_relative_wait_without_the_event_fails_the_run_with_a_clear_reason(sc, lead):
    wait = sc.element(Kind.WAIT, config={"mode": "relative", "relative_to": "clicked_at"})
    sc.link(sc.start, wait)
    run = sc.run(lead)
    assert run.status == Status.FAILED
    assert "clicked_at" in run.reason


# --- modify request -----------------------------------------------------------------------


def test_spec_apply_overrides_replaces_by_name_and_adds_the_rest():
    spec = RequestSpec(
        method=Method.POST,
        url="https://buyer.example/x",
        headers=(("X-Token", "a"),),
        query=(("src", "1"),),
        body=(("email", "{{g_email}}"),),
    )
    changed = spec_apply_overrides(
        spec,
        {"headers": {"x-token": "b", "X-Extra": "e"}, "body": {"campaign": "{{camp}}"}},
    )
    assert changed.headers == (("x-token", "b"), ("X-Extra", "e"))
    assert changed.query == spec.query
    assert changed.body == (("email", "{{g_email}}"), ("campaign", "{{camp}}"))
    assert spec.headers == (("X-Token", "a"),)  # the cached spec is untouched


def test_modify_request_applies_to_the_next_request_only(sc, lead, httpserver):
    seen = []

    def handler(request):
        seen.append(
            (
                request.headers.get("X-Campaign"),
                request.args.get("aff"),
                request.get_json(silent=True),
            )
        )
        return Response(json.dumps({"status": "ok"}), content_type="application/json")

    httpserver.expect_request("/buyer").respond_with_handler(handler)
    url = httpserver.url_for("/buyer")
    modify = sc.element(
        Kind.MODIFY_REQUEST,
        config={
            "headers": {"X-Campaign": "spring-{{g_first_name}}"},
            "query": {"aff": "42"},
            "body": {"extra": "{{g_email}}"},
        },
    )
    first = sc.request(url, name="first")
    second = sc.request(url, name="second")
    sc.link(sc.start, modify)
    sc.link(modify, first)
    sc.link(first, second)
    run = sc.run(lead)
    assert run.status == Status.SUCCEEDED
    assert seen[0] == ("spring-Jane", "42", {"extra": "jane@example.com"})
    assert seen[1][:2] == (None, None)
    assert "extra" not in (seen[1][2] or {})
    assert OVERRIDES_KEY not in run.variables
    assert RequestLog.objects.filter(request_step=first.request_step).count() == 1


def test_modify_request_without_settings_fails_the_run(sc, lead):
    modify = sc.element(Kind.MODIFY_REQUEST, config={})
    sc.link(sc.start, modify)
    run = sc.run(lead)
    assert run.status == Status.FAILED
    assert "modify request" in run.reason


# --- repeater limit -----------------------------------------------------------------------


def test_repeater_limit_ends_the_loop_and_the_run_succeeds(sc, lead):
    count = sc.element(Kind.SET_EVENT, config={"name": "tries", "increment": 1})
    repeat = sc.element(Kind.REPEATER, config={"limit": 3})
    sc.link(sc.start, count)
    sc.link(count, repeat)
    sc.link(repeat, count)
    run = sc.run(lead)
    assert run.status == Status.SUCCEEDED
    assert run.reason == "repeater limit reached"
    # The first pass counts: a limit of 3 lets 3 passes back and stops the 4th.
    assert run.counters["event:tries"] == 4
    assert run.counters[f"visits:{repeat.pk}"] == 4
    last = RunStep.objects.filter(run=run, element=repeat).order_by("-id").first()
    assert last.status == RunStep.Status.DONE
    assert last.output["ended"] == "repeater limit reached"


def test_repeater_after_an_error_outcome_still_does_not_fail_the_run(sc, lead):
    repeat = sc.element(Kind.REPEATER, config={"limit": 0})
    sc.link(sc.start, repeat)
    run = engine.run_start(integration=sc.integration, lead=lead)
    RunStep.objects.filter(run=run).update(input={"outcome": {"kind": "error", "reason": "x"}})
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5)
    assert run.status == Status.SUCCEEDED


def test_repeater_without_limit_keeps_looping_until_the_breaker(sc, lead):
    breaker = sc.element(Kind.BREAKER, config={"limit": 2})
    repeat = sc.element(Kind.REPEATER)
    sc.link(sc.start, breaker)
    sc.link(breaker, repeat)
    sc.link(repeat, breaker)
    run = sc.run(lead)
    assert (run.status, run.reason) == (Status.FAILED, "breaker limit reached")


# --- scenario_drive -----------------------------------------------------------------------


def test_scenario_drive_runs_one_run_without_celery(sc, lead):
    done = sc.element(Kind.SET_VARIABLE, config={"name": "x", "template": "1"})
    sc.link(sc.start, done)
    run = engine.run_start(integration=sc.integration, lead=lead)
    out = StringIO()
    call_command("scenario_drive", "--run", str(run.pk), "--deadline", "5", stdout=out)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert f"run {run.pk}: succeeded" in out.getvalue()


def test_scenario_drive_sweep_wakes_due_steps_and_times_out_late_runs(sc, lead, monkeypatch):
    from integrations.tasks import step_execute_task

    def no_celery(*args, **kwargs):
        raise AssertionError("scenario_drive must not use Celery")

    monkeypatch.setattr(step_execute_task, "delay", no_celery)
    with time_machine.travel(START, tick=False) as clock:
        wait = sc.element(Kind.WAIT, config={"mode": "delay", "seconds": 30})
        after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
        sc.link(sc.start, wait)
        sc.link(wait, after)
        woken = engine.run_drive(
            run_id=engine.run_start(integration=sc.integration, lead=lead).pk,
            deadline_seconds=5,
            hand_off=False,
        )
        late = engine.run_drive(
            run_id=engine.run_start(integration=sc.integration, lead=lead, deadline_seconds=10).pk,
            deadline_seconds=5,
            hand_off=False,
        )
        clock.shift(31)
        out = StringIO()
        call_command("scenario_drive", "--sweep", "--deadline", "5", stdout=out)
    woken.refresh_from_db()
    late.refresh_from_db()
    assert woken.status == Status.SUCCEEDED
    assert woken.variables["after"] == "yes"
    assert (late.status, late.reason) == (Status.TIMED_OUT, "deadline passed")
    assert "1 timed out, 1 steps executed" in out.getvalue()


def test_scenario_drive_rejects_an_unknown_run(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("scenario_drive", "--run", "999999")


def test_sweep_without_send_takes_back_a_lost_step(sc, lead):
    with time_machine.travel(START, tick=False) as clock:
        run, after = waiting_run(sc, lead, seconds=1)
        step = RunStep.objects.get(run=run, element=after)
        RunStep.objects.filter(pk=step.pk).update(
            status=RunStep.Status.RUNNING, claimed_at=timezone.now()
        )
        clock.shift(engine.LEASE_SECONDS + 1)
        assert engine.engine_sweep(send=False) == 0
        step.refresh_from_db()
        assert (step.status, step.attempt) == (RunStep.Status.PENDING, 2)
        assert engine.steps_drive(deadline_seconds=5) == 1
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
