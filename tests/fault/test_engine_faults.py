"""Fault tests of the scenario engine on PostgreSQL + Redis with a real Celery worker
subprocess and a real local buyer counting requests per lead (issue 4, acceptance 2).

The sweeper runs in the test process (``sweep()`` about twice a second) with its lease
and re-send grace shortened (``fast_sweeper``); everything else is production code and
settings. Requests are counted by the buyer on arrival.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest

from integrations.engine import services as engine
from integrations.models import Connection, Element, Integration, RequestStep, RunStep, ScenarioRun
from structures.models import Lead
from tests.fault.conftest import redis_cli, sweep

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
Kind = Element.Kind
Status = ScenarioRun.Status


class Graph:
    def __init__(self, setup):
        self.setup = setup
        self.ws = setup.workspace
        self.integration = Integration.objects.create(
            workspace=self.ws, name="Fault scenario", status="enabled"
        )
        self.start = self.element(Kind.START, "start")

    def element(self, kind, name, **kwargs):
        return Element.objects.create(
            workspace=self.ws, integration=self.integration, kind=kind, name=name, **kwargs
        )

    def request(self, url, name, timeout=10.0):
        step = RequestStep.objects.create(
            workspace=self.ws, integration=self.integration, name=name, url=url,
            method="POST", timeout_seconds=timeout,
        )  # fmt: skip
        return self.element(Kind.REQUEST, name, request_step=step)

    def wait(self, seconds, name="wait"):
        return self.element(Kind.WAIT, name, config={"mode": "delay", "seconds": seconds})

    def chain(self, *elements):
        for a, b in zip((self.start, *elements), elements, strict=False):
            Connection.objects.create(
                workspace=self.ws, integration=self.integration, from_element=a, to_element=b
            )

    def leads(self, n):
        return [
            Lead.objects.create(
                workspace=self.ws,
                structure=self.setup.structure,
                partner=self.setup.partner,
                source="api",
                status="approved",
                data={"g_email": f"l{i}@example.com"},
            )  # fmt: skip
            for i in range(n)
        ]


def runs_of(runs):
    return ScenarioRun.objects.filter(pk__in=[r.pk for r in runs])


def sweep_until(condition, timeout, what, every=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep()
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def all_finished(runs):
    return lambda: not runs_of(runs).exclude(status__in=ScenarioRun.FINISHED).exists()


def test_worker_killed_while_runs_wait_finishes_after_restart_each_request_sent_once(
    lead_setup, buyer, workers, fast_sweeper
):
    """kill -9 while 8 runs wait between two requests: nothing lives in the dead worker
    (the wait is a row with a due time), so a new worker finishes every run and each
    request reached the buyer exactly once."""
    g = Graph(lead_setup)
    g.chain(g.request(buyer.url("/a"), "a"), g.wait(3), g.request(buyer.url("/b"), "b"))
    leads = g.leads(8)
    first = workers.start()
    runs = [engine.run_start(integration=g.integration, lead=lead) for lead in leads]
    sweep_until(
        lambda: runs_of(runs).filter(status=Status.WAITING).count() == len(runs),
        20, "all runs waiting after request a",
    )  # fmt: skip
    workers.kill9(first)
    time.sleep(3.5)  # the waits come due while no worker is alive
    sweep()  # due steps are queued in Redis with nobody to take them
    workers.start()
    sweep_until(all_finished(runs), 30, "all runs finished")
    assert set(runs_of(runs).values_list("status", flat=True)) == {Status.SUCCEEDED}
    for lead in leads:
        assert (buyer.count("/a", lead), buyer.count("/b", lead)) == (1, 1), lead.pcid
    assert not RunStep.objects.filter(run__in=runs, attempt__gt=1).exists()


def test_worker_killed_mid_request_run_finishes_in_flight_request_redriven_once(
    lead_setup, buyer, workers, fast_sweeper
):
    """kill -9 while a slow buyer (2 s) is answering 3 runs' request b. Promised: each run
    finishes (the sweeper re-drives the step once its lease - request deadline + lease -
    ran out); request a, done before the kill, was sent once; request b, which had
    reached the buyer when its worker died, is sent exactly once more (the engine's
    documented at-least-once limit for a call in flight: it cannot know whether the
    buyer got it), and the step records that second attempt."""
    buyer.delays["/b"] = 2.0
    g = Graph(lead_setup)
    g.chain(g.request(buyer.url("/a"), "a"), g.request(buyer.url("/b"), "b", timeout=3))
    leads = g.leads(3)
    first = workers.start()
    runs = [engine.run_start(integration=g.integration, lead=lead) for lead in leads]
    sweep_until(lambda: buyer.total("/b") == 3, 20, "3 requests b in flight", every=0.1)
    workers.kill9(first)
    killed_at = time.monotonic()
    workers.start()
    sweep_until(all_finished(runs), 40, "all runs finished")
    assert set(runs_of(runs).values_list("status", flat=True)) == {Status.SUCCEEDED}
    for lead in leads:
        assert (buyer.count("/a", lead), buyer.count("/b", lead)) == (1, 2), lead.pcid
    b_steps = RunStep.objects.filter(run__in=runs, element__name="b")
    assert sorted(b_steps.values_list("attempt", flat=True)) == [2, 2, 2]
    assert set(b_steps.values_list("status", flat=True)) == {RunStep.Status.DONE}
    # Not re-driven while the first call could still be in flight (timeout 3 s + lease).
    assert time.monotonic() - killed_at >= 3


def test_redis_flushed_while_100_runs_wait_all_finish(lead_setup, buyer, workers, fast_sweeper):
    """100 runs wait 8-10 s; Redis db is flushed once while all 100 wait and once right after
    the sweeper queued due steps (those queued tasks are lost). The sweeper re-sends from
    the database: all 100 finish and each lead's request was sent exactly once."""
    g = Graph(lead_setup)
    rng = random.Random(4)
    request = g.request(buyer.url("/r"), "r")
    waits = [g.wait(seconds, name=f"wait{seconds}") for seconds in (8, 9, 10)]
    for wait in waits:
        Connection.objects.create(
            workspace=g.ws, integration=g.integration, from_element=wait, to_element=request
        )
    # Each run takes one wait: the start branches on a run variable.
    for seconds, wait in zip((8, 9, 10), waits, strict=True):
        Connection.objects.create(
            workspace=g.ws,
            integration=g.integration,
            from_element=g.start,
            to_element=wait,
            conditions=[
                {"source": "variable", "key": "w", "operator": "equals", "value": str(seconds)}
            ],
        )
    leads = g.leads(100)
    workers.start()
    # Each run is driven in this process up to its wait (as a web request would), so all
    # 100 are parked within the shortest wait.
    started = time.monotonic()
    runs = []
    for lead in leads:
        run = engine.run_start(
            integration=g.integration, lead=lead, variables={"w": str(rng.choice((8, 9, 10)))}
        )
        runs.append(engine.run_drive(run_id=run.pk, deadline_seconds=5, hand_off=False))
    assert time.monotonic() - started < 8
    assert runs_of(runs).filter(status=Status.WAITING).count() == 100
    assert buyer.total("/r") == 0
    redis_cli("FLUSHDB")
    lost = 0
    deadline = time.monotonic() + 15
    while not lost and time.monotonic() < deadline:
        if sweep():
            lost = int(redis_cli("LLEN", "realtime"))
            redis_cli("FLUSHDB")
        time.sleep(0.2)
    assert lost > 0, "the second flush should have dropped queued tasks"
    sweep_until(all_finished(runs), 40, "100 runs finished")
    assert set(runs_of(runs).values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert [buyer.count("/r", lead) for lead in leads] == [1] * 100


def test_visibility_timeout_5s_a_run_waiting_20s_runs_its_next_step_once(
    lead_setup, buyer, workers, fast_sweeper
):
    """Worker on Redis with visibility_timeout=5 s. A run waits 20 s: the wait is a row,
    so nothing sits in Redis meanwhile (no countdown to be redelivered every 5 s). The
    next step is a request whose buyer takes 7 s, longer than the visibility timeout, so
    its unacknowledged task may be handed out again (and is, by the test, to be sure): the
    step's compare-and-set claim makes that a no-op and the buyer sees exactly one
    request; the step ran on its first attempt."""
    buyer.delays["/next"] = 7.0
    g = Graph(lead_setup)
    g.chain(g.wait(20), g.request(buyer.url("/next"), "next", timeout=15))
    (lead,) = g.leads(1)
    workers.start(CELERY_VISIBILITY_TIMEOUT="5")
    run = engine.run_start(integration=g.integration, lead=lead)
    sweep_until(lambda: runs_of([run]).filter(status=Status.WAITING).exists(), 10, "waiting")
    for _ in range(12):  # 12 s into the wait: more than two visibility timeouts
        sweep()
        assert redis_cli("LLEN", "realtime") == "0"
        assert redis_cli("HLEN", "unacked") == "0"
        time.sleep(1)
    sweep_until(lambda: buyer.total("/next") == 1, 20, "the next request in flight", every=0.2)
    # kombu throttles its scan for overdue unacked messages (about every 10 polls), so a
    # redelivery inside this 7 s call is not guaranteed: deliver the task a second time
    # ourselves, as Redis would, while the first delivery is still in the buyer's hands.
    from integrations.tasks import step_execute_task

    step_execute_task.delay(RunStep.objects.get(run=run, element__name="next").pk)
    sweep_until(all_finished([run]), 30, "the run finished")
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED
    assert buyer.count("/next", lead) == 1
    step = RunStep.objects.get(run=run, element__name="next")
    assert (step.status, step.attempt) == (RunStep.Status.DONE, 1)
    assert step.finished_at - run.created_at >= timedelta(seconds=20)
