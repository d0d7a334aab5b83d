"""Element kinds registered by higher apps, parking a run on such an element, resuming
it once (a second resume changes nothing), its timeout, the run's result and the
run_finished signal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.engine import registry
from integrations.engine import services as engine
from integrations.engine.signals import run_finished
from integrations.models import Element, RunStep, ScenarioRun
from tests.integration.integrations.engine.test_engine import answers

pytestmark = pytest.mark.django_db
Kind = Element.Kind


@pytest.fixture
def parking_handler():
    """A webhook-like handler: parks for ``seconds``; resumed, answers what it got."""
    seen = []

    def handler(call: registry.StepCall) -> registry.Effect:
        seen.append(call)
        if not call.parked:
            return registry.Effect(
                outcome={"kind": "pending", "reason": "waiting", "captured": {}},
                park_until=timezone.now() + timedelta(seconds=call.config.get("seconds", 60)),
                park_blocking=bool(call.config.get("blocking", True)),
                park_note="waiting for the callback",
            )
        if call.resumed is None:
            return registry.Effect(
                outcome={"kind": "timeout", "reason": "no callback in time", "captured": {}},
                failed=True,
                timed_out=True,
            )
        return registry.Effect(
            outcome={
                "kind": call.resumed["status"],
                "reason": "",
                "captured": {"price": call.resumed.get("price", "")},
            },
            variables={"callback_status": call.resumed["status"]},
        )

    previous = registry.ELEMENT_HANDLERS.get(Kind.WEBHOOK)
    registry.register_element(Kind.WEBHOOK, handler)
    yield seen
    if previous is None:
        registry.ELEMENT_HANDLERS.pop(Kind.WEBHOOK, None)
    else:
        registry.ELEMENT_HANDLERS[Kind.WEBHOOK] = previous


@pytest.fixture
def finished():
    calls = []

    def receiver(sender, **kwargs):
        calls.append(kwargs)

    run_finished.connect(receiver)
    yield calls
    run_finished.disconnect(receiver)


def test_parked_run_waits_and_resumes_once(
    sc, lead, parking_handler, finished, django_capture_on_commit_callbacks
):
    hook = sc.element(Kind.WEBHOOK, config={"seconds": 600})
    after = sc.element(Kind.SET_VARIABLE, config={"name": "after", "template": "yes"})
    sc.link(sc.start, hook)
    sc.link(hook, after, {"source": "outcome", "operator": "equals", "value": "accepted"})
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.WAITING
    assert run.result["kind"] == "pending" and run.result["waiting"] == "webhook"
    parked = RunStep.objects.get(run=run, element=hook)
    assert parked.status == RunStep.Status.PENDING and parked.input["parked"] is True
    assert parked.due_at > timezone.now() + timedelta(seconds=500)

    with django_capture_on_commit_callbacks() as sent:  # the task is not sent here
        assert engine.step_resume(step_id=parked.pk, data={"status": "accepted", "price": "12.5"})
        assert not engine.step_resume(step_id=parked.pk, data={"status": "rejected"})
    assert len(sent) == 1  # one task for the one resume that counted
    with django_capture_on_commit_callbacks(execute=True):
        run = engine.run_drive(run_id=run.pk, deadline_seconds=5, hand_off=False)
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.variables["after"] == "yes" and run.variables["callback_status"] == "accepted"
    assert run.result == {"kind": "accepted", "reason": "", "captured": {"price": "12.5"}}
    assert len(parking_handler) == 2  # parked once, resumed once
    assert not engine.step_resume(step_id=parked.pk, data={"status": "accepted"})
    assert [c["status"] for c in finished] == ["succeeded"]


def test_parked_step_times_out_and_the_run_is_timed_out(
    sc, lead, parking_handler, finished, django_capture_on_commit_callbacks
):
    hook = sc.element(Kind.WEBHOOK, config={"seconds": 30})
    sc.link(sc.start, hook)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.WAITING
    step = RunStep.objects.get(run=run, element=hook)
    RunStep.objects.filter(pk=step.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        engine.steps_drive(deadline_seconds=5)
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.TIMED_OUT
    assert run.reason == "no callback in time"
    assert run.result["kind"] == "timeout"
    assert finished[-1]["status"] == "timed_out"
    assert not engine.step_resume(step_id=step.pk, data={"status": "accepted"})


def test_non_blocking_park_is_marked_for_the_caller(sc, lead, parking_handler):
    hook = sc.element(Kind.WEBHOOK, config={"seconds": 60, "blocking": False})
    sc.link(sc.start, hook)
    run = sc.run(lead)
    assert run.result["blocking"] is False


def test_an_unregistered_kind_fails_the_run_clearly(sc, lead, monkeypatch):
    # Only for this test: the webhooks app's handler is back for every later one.
    monkeypatch.delitem(registry.ELEMENT_HANDLERS, Kind.WEBHOOK, raising=False)
    hook = sc.element(Kind.WEBHOOK, name="Callback")
    sc.link(sc.start, hook)
    run = sc.run(lead)
    assert run.status == ScenarioRun.Status.FAILED
    assert "no handler for 'webhook' elements" in run.reason


def test_request_answer_is_the_runs_result(
    sc, lead, httpserver, finished, django_capture_on_commit_callbacks
):
    request = sc.request(answers(httpserver, "ok"))
    sc.link(sc.start, request)
    with django_capture_on_commit_callbacks(execute=True):
        run = sc.run(lead)
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.result["kind"] == "accepted"
    assert finished[-1]["run_id"] == run.pk and finished[-1]["result"]["kind"] == "accepted"


def test_cancel_announces_the_finish(
    sc, lead, parking_handler, finished, django_capture_on_commit_callbacks
):
    hook = sc.element(Kind.WEBHOOK)
    sc.link(sc.start, hook)
    run = sc.run(lead)
    with django_capture_on_commit_callbacks(execute=True):
        engine.run_cancel(run_id=run.pk, reason="operator")
    assert finished[-1]["status"] == "cancelled"
