"""Sending a resumed step's task from the callback path with one Redis command.

Why: ``step_execute_task.delay()`` cost 0.6-0.7 ms of CPU on its own and 1.3 ms inside
a callback request (bench-callbacks, docs/benchmarks.md), about as much as the whole
bare endpoint. Celery builds the message (router, argument repr, options) and kombu
wraps it and creates a new redis client object for every publish; the LPUSH itself is
~0.08 ms. A producer kept per process does not help: ``apply_async`` already takes one
from ``app.producer_pool`` (measured: the same cost).

How: once per process, Celery and kombu build a real message for
``integrations.step_execute`` (``apply_async`` through a producer whose channel hands
the finished message to us instead of pushing it). That is the template, in the exact
format the workers read. Each send copies it with a new task id, delivery tag and step
id, sends Celery's ``before_task_publish`` / ``after_task_publish`` signals as Celery
does (django-structlog puts the request's log context in the headers), and pushes it
with one LPUSH on a Redis connection kept per thread (``_Pusher``: redis-py's client
checks a connection out of its pool, polls it, records pool metrics and wraps the call
in its retry policy on every command, about twice the cost of the LPUSH itself). Used
only with a Redis broker and tasks not eager; any other broker, or a template that is
not what this module expects (a Celery upgrade), falls back to ``delay()``.
``tests/integration/webhooks/test_publish.py`` runs a message sent this way through
Celery's own worker request.

A failed push is logged and left alone: the step is pending, due and ``enqueued_at``
is set, so the engine's sweeper sends it again after its grace. No work lives only in
the broker.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from celery import signals

log = structlog.get_logger(__name__)

TASK_NAME = "integrations.step_execute"
# Values no real message carries: where they appear in the template is where each send
# puts its own task id and step id.
_SENTINEL_ID = "5e4714e1-0000-4000-8000-00000000c0de"
_SENTINEL_ARG = 918_273_645_546_372_819


class _Pusher:
    """LPUSH on one connection per thread, made with the broker pool's own settings
    (host, database, credentials, TLS, timeouts). A failed command drops the connection
    (the next send connects again) and raises, as the client would."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._local = threading.local()

    def lpush(self, key: str, value: str) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():  # never a parent's socket
            conn = self._pool.connection_class(**self._pool.connection_kwargs)
            self._local.conn, self._local.pid = conn, os.getpid()
        try:
            conn.send_command("LPUSH", key, value)
            return conn.read_response()
        except BaseException:
            self._local.conn = None
            conn.disconnect()
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.disconnect()


@dataclass(frozen=True)
class _Template:
    key: str  # the Redis list the workers read (queue and priority)
    envelope: dict[str, Any]  # kombu's message, body left out
    headers: dict[str, Any]
    properties: dict[str, Any]
    embed: dict[str, Any]
    exchange: str
    routing_key: str
    declare: list[Any]
    retry_policy: dict[str, Any]
    client: Any  # a _Pusher on the channel's pool, kept for the process
    connection: Any  # keeps the channel (and its pool) alive
    broker: str  # the broker URL it was taken for (a test may switch the app's broker)


_lock = threading.Lock()
_state: dict[str, Any] = {"template": None, "broker": None, "settings": None}


def _task() -> Any:
    from integrations.tasks import step_execute_task

    return step_execute_task


def _capture() -> _Template | None:
    """Let Celery and kombu build one message for the task and keep it as the template;
    None when the broker is not Redis or the message is not as expected."""
    task = _task()
    app = task.app
    connection = app.connection_for_write()
    if connection.transport.driver_type != "redis":
        connection.release()
        return None
    channel = connection.default_channel
    seen: dict[str, Any] = {}
    signal_args: dict[str, Any] = {}

    def put(queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = channel._get_message_priority(message, reverse=False)
        seen.update(key=channel._q_for_pri(queue, priority), message=message)

    def before(**kwargs: Any) -> None:
        if kwargs.get("headers", {}).get("id") == _SENTINEL_ID:
            signal_args.update(kwargs)

    channel._put = put  # this channel only: it never pushes, it hands us the message
    signals.before_task_publish.connect(before, weak=False)
    try:
        task.apply_async((_SENTINEL_ARG,), task_id=_SENTINEL_ID, producer=connection.Producer())
    finally:
        signals.before_task_publish.disconnect(before)
        del channel._put
    message = seen.get("message")
    if not message or not signal_args:
        return None
    template = _template_from(message, seen["key"], signal_args, connection, channel)
    if template is None:
        log.warning("webhooks.publish_template_unexpected", task=TASK_NAME)
    return template


def _template_from(
    message: dict[str, Any], key: str, signal_args: dict[str, Any], connection: Any, channel: Any
) -> _Template | None:
    """Check the captured message has the sentinels where this module puts each send's
    own values, and nowhere else."""
    headers = dict(message.get("headers") or {})
    properties = dict(message.get("properties") or {})
    if properties.get("body_encoding") != "base64" or message.get("content-type") != (
        "application/json"
    ):
        return None
    # Routed straight to its queue (Celery's default for a direct route): one list, one
    # push. An exchange that fans out to several queues is left to kombu.
    if (properties.get("delivery_info") or {}).get("exchange") != "":
        return None
    try:
        body = json.loads(base64.b64decode(message["body"]))
    except (KeyError, ValueError, TypeError):
        return None
    if not (isinstance(body, list) and len(body) == 3 and body[:2] == [[_SENTINEL_ARG], {}]):
        return None
    expected = {
        ("headers", "id"): _SENTINEL_ID,
        ("headers", "argsrepr"): repr((_SENTINEL_ARG,)),
        ("properties", "correlation_id"): _SENTINEL_ID,
    }
    parts = {"headers": headers, "properties": properties}
    for (part, name), value in expected.items():
        if parts[part].get(name) != value:
            return None
    # Set by each send as Celery does: the task's own id outside a task, else the
    # parent's (the template may be taken inside a worker's task).
    if "root_id" not in headers or "parent_id" not in headers:
        return None
    headers.update(root_id=None, parent_id=None)
    rest = {
        "headers": {k: v for k, v in headers.items() if ("headers", k) not in expected},
        "properties": {
            k: v
            for k, v in properties.items()
            if ("properties", k) not in expected and k != "delivery_tag"
        },
        "envelope": {
            k: v for k, v in message.items() if k not in ("headers", "properties", "body")
        },
    }
    text = json.dumps(rest, default=str)
    if _SENTINEL_ID in text or str(_SENTINEL_ARG) in text or "delivery_tag" not in properties:
        return None
    return _Template(
        key=key,
        envelope=rest["envelope"],
        headers=rest["headers"],
        properties=rest["properties"],
        embed=body[2],
        exchange=signal_args.get("exchange", ""),
        routing_key=signal_args.get("routing_key", ""),
        declare=list(signal_args.get("declare") or []),
        retry_policy=dict(signal_args.get("retry_policy") or {}),
        client=_Pusher(channel.pool),
        connection=connection,
        broker=_broker_url(_task().app),
    )


def _broker_url(app: Any) -> str:
    return str(app.conf.broker_write_url or app.conf.broker_url or "")


def _settings(app: Any) -> tuple[bool, str]:
    """(tasks run eagerly, broker URL) for the app. Each of Celery's settings lookups
    goes through its configuration view's key aliases and Django's settings: the three
    a send needs cost ~25 us, a tenth of the send (bench-callbacks). They are read again
    only when what can change them after start-up changes: the app's runtime settings
    (``app.conf.changes``, what a test or ``app.conf.x = ...`` sets) or the broker URL in
    the environment, which Celery reads first."""
    changes = app.conf.changes
    env = os.environ.get("CELERY_BROKER_URL")
    seen = _state.get("settings")
    if seen is None or seen[0] is not app or seen[1] != changes or seen[2] != env:
        seen = (app, dict(changes), env, bool(app.conf.task_always_eager), _broker_url(app))
        _state["settings"] = seen
    return seen[3], seen[4]


def _template(app: Any, broker: str) -> _Template | None:
    """The template for the app's current broker, ``broker`` (taken again when it
    changes)."""
    if _state["broker"] == broker:
        return _state["template"]
    with _lock:
        if _state["broker"] != broker:
            old = _state["template"]
            try:
                template = _capture()
            except Exception:  # noqa: BLE001 - the slow path still works
                log.warning("webhooks.publish_template_failed", exc_info=True)
                template = None
            _state.update(template=template, broker=broker)
            _release(old)
    return _state["template"]


def reset() -> None:
    """Forget the template (tests)."""
    with _lock:
        template = _state["template"]
        _state.update(template=None, broker=None, settings=None)
    _release(template)


def _release(template: _Template | None) -> None:
    if template is not None:
        template.client.close()
        template.connection.release()


def step_execute_send(step_id: int) -> None:
    """Send ``integrations.step_execute`` for ``step_id``; never raises for a broker
    failure (the sweeper sends the step again)."""
    task = _task()
    app = task.app
    eager, broker = _settings(app)
    template = None if eager else _template(app, broker)
    if template is None:
        try:
            task.delay(step_id)
        except Exception:  # noqa: BLE001 - a broker failure; the sweeper re-drives
            log.warning("webhooks.step_send_failed", step_id=step_id, exc_info=True)
        return
    task_id = str(uuid.uuid4())
    root_id, parent_id = task_id, None
    parent = app.current_worker_task
    if parent is not None:  # the sweeper, in a worker: link to it as Celery would
        root_id, parent_id = parent.request.root_id or parent.request.id, parent.request.id
    headers = {**template.headers, "id": task_id, "root_id": root_id, "parent_id": parent_id,
               "argsrepr": repr((step_id,))}  # fmt: skip
    delivery_info = dict(template.properties.get("delivery_info") or {})
    properties = {**template.properties, "correlation_id": task_id, "delivery_info": delivery_info}
    body = ((step_id,), {}, template.embed)
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=TASK_NAME, body=body, exchange=template.exchange,
            routing_key=template.routing_key, declare=template.declare, headers=headers,
            properties=properties, retry_policy=template.retry_policy,
        )  # fmt: skip
    properties["delivery_tag"] = str(uuid.uuid4())
    encoded = base64.b64encode(json.dumps([[step_id], {}, template.embed]).encode()).decode()
    message = {**template.envelope, "body": encoded, "headers": headers, "properties": properties}
    try:
        template.client.lpush(template.key, json.dumps(message, default=str))
    except Exception:  # noqa: BLE001 - redis errors of any kind; the sweeper re-drives
        log.warning("webhooks.step_send_failed", step_id=step_id, exc_info=True)
        return
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(
            sender=TASK_NAME, body=body, headers=headers, exchange=template.exchange,
            routing_key=template.routing_key,
        )  # fmt: skip
