"""The resumed step's task sent with one Redis command (webhooks/publish.py): the message
is the one Celery sends, Celery's own worker request runs it, and a send that fails
loses nothing (the sweeper sends the step again from the database)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.worker.request import Request
from django.utils import timezone

from config.celery import app
from integrations.engine import services as engine
from integrations.models import RunStep, ScenarioRun
from integrations.tasks import step_execute_task
from webhooks import publish
from webhooks.models import WaitingWebhook

QUEUE = "realtime"


@pytest.fixture
def real_broker() -> Iterator[Any]:
    """The session's broker, not eager: what the web process does in production."""
    publish.reset()
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            pytest.skip("the fast path is for a Redis broker (this session has another)")
    app.conf.task_always_eager = False  # the autouse celery_eager fixture restores it
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE, no_ack=True)
        queue.clear()
        yield queue
        queue.clear()
        queue.close()
    publish.reset()


def test_the_message_is_the_one_celery_sends_and_its_worker_runs_it(real_broker, monkeypatch):
    step_execute_task.delay(111)  # Celery's own path, for comparison
    publish.step_execute_send(222)
    assert publish._state["template"] is not None  # sent by the fast path
    theirs, ours = real_broker.get(timeout=2), real_broker.get(timeout=2)
    assert ours.headers["task"] == theirs.headers["task"] == "integrations.step_execute"
    assert set(ours.headers) == set(theirs.headers)
    assert set(ours.properties) == set(theirs.properties)
    assert ours.delivery_info["routing_key"] == theirs.delivery_info["routing_key"] == QUEUE
    assert (ours.content_type, ours.content_encoding) == (
        theirs.content_type,
        theirs.content_encoding,
    )
    assert ours.decode() == [[222], {}, theirs.decode()[2]]
    assert ours.headers["argsrepr"] == "(222,)"
    assert ours.headers["id"] == ours.headers["root_id"] == ours.properties["correlation_id"]
    assert ours.headers["id"] != theirs.headers["id"]
    ignored = {"id", "root_id", "argsrepr", "__django_structlog__"}
    assert {k: v for k, v in ours.headers.items() if k not in ignored} == {
        k: v for k, v in theirs.headers.items() if k not in ignored
    }

    ran = []
    monkeypatch.setattr(engine, "step_execute", lambda *, step_id: ran.append(step_id) or [])
    Request(ours, app=app, task=app.tasks[ours.headers["task"]]).execute()
    assert ran == [222]


def test_each_send_has_its_own_ids(real_broker):
    publish.step_execute_send(1)
    publish.step_execute_send(2)
    assert publish._state["template"] is not None
    first, second = real_broker.get(timeout=2), real_broker.get(timeout=2)
    assert first.headers["id"] != second.headers["id"]
    assert first.properties["delivery_tag"] != second.properties["delivery_tag"]
    assert [first.decode()[0], second.decode()[0]] == [[1], [2]]


def test_a_change_of_celerys_settings_after_start_takes_effect_on_the_next_send(
    real_broker, monkeypatch
):
    publish.step_execute_send(1)  # the settings are read once, then remembered
    assert real_broker.get(timeout=2).decode()[0] == [1]
    ran = []
    monkeypatch.setattr(engine, "step_execute", lambda *, step_id: ran.append(step_id) or [])
    app.conf.task_always_eager = True  # runtime settings changed: read again
    publish.step_execute_send(2)
    assert ran == [2]  # run here, not pushed (the next message below is 4)
    app.conf.task_always_eager = False
    session = publish._broker_url(app)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # read before the conf
    assert publish._settings(app) == (False, "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CELERY_BROKER_URL", session)
    publish.step_execute_send(4)
    assert real_broker.get(timeout=2).decode()[0] == [4]


def test_a_broken_connection_is_dropped_and_the_next_send_connects_again(real_broker):
    publish.step_execute_send(1)
    pusher = publish._state["template"].client
    first = pusher._local.conn

    def broken(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("connection reset")

    first.send_command = broken
    publish.step_execute_send(2)  # logged and lost: the sweeper sends the step again
    publish.step_execute_send(3)
    assert pusher._local.conn is not first
    sent = [real_broker.get(timeout=2).decode()[0] for _ in range(2)]
    assert sent == [[1], [3]]


def test_a_forked_process_does_not_share_its_parents_connection(real_broker, monkeypatch):
    publish.step_execute_send(1)
    pusher = publish._state["template"].client
    parent = pusher._local.conn
    monkeypatch.setattr(publish.os, "getpid", lambda: -1)  # as in a child after fork
    publish.step_execute_send(2)
    assert pusher._local.conn is not parent
    assert [real_broker.get(timeout=2).decode()[0] for _ in range(2)] == [[1], [2]]


def test_a_template_not_as_expected_falls_back_to_celery(real_broker, monkeypatch):
    real = publish._template_from

    def altered(message: dict, *args: Any) -> Any:
        body = json.loads(base64.b64decode(message["body"]))
        body[1] = {"unexpected": True}  # a Celery whose message this module does not know
        message = {**message, "body": base64.b64encode(json.dumps(body).encode()).decode()}
        return real(message, *args)

    monkeypatch.setattr(publish, "_template_from", altered)
    publish.step_execute_send(333)
    assert publish._state["template"] is None
    message = real_broker.get(timeout=2)  # sent by delay() instead
    assert message.decode()[0] == [333]


class _DeadClient:
    def lpush(self, *args: Any) -> None:
        raise redis.ConnectionError("broker down")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["fast", "celery"])
def test_a_failed_send_loses_nothing_the_sweeper_sends_the_step_again(
    path, hook, lead, monkeypatch, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    app.conf.task_always_eager = False
    if path == "fast":
        template = publish._Template(**{
            **{f: None for f in publish._Template.__dataclass_fields__},
            "key": QUEUE, "envelope": {}, "headers": {}, "properties": {}, "embed": {},
            "declare": [], "retry_policy": {}, "client": _DeadClient(),
            "broker": publish._broker_url(app),
        })  # fmt: skip
        monkeypatch.setattr(publish, "_state", {"template": template, "broker": template.broker})
    else:
        monkeypatch.setattr(publish, "_template", lambda app, broker=None: None)

        def refused(*args: Any) -> None:
            raise ConnectionRefusedError("broker down")

        monkeypatch.setattr(step_execute_task, "delay", refused)
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "9"})
    assert response.status_code == 200 and response.json()["message"] == "Webhook received"
    assert hook.waiting(run).status == WaitingWebhook.Status.MATCHED
    step = hook.parked_step(run)
    assert step.status == RunStep.Status.PENDING and "resumed" in step.input
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.RUNNING  # resumed in the database, not yet run

    # The broker is back; past the grace the engine's sweeper sends the step again.
    monkeypatch.undo()
    app.conf.task_always_eager = True
    RunStep.objects.filter(pk=step.pk).update(
        enqueued_at=timezone.now() - timedelta(seconds=engine.REQUEUE_GRACE_SECONDS + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.engine_sweep() >= 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.result["captured"]["price"] == "9"
