"""Request step configurations, cached per process under their integration's version.

Every buyer ping and post runs ``services.request_run``, which needs the step as a
``RequestSpec``: its rules, headers, query, body fields and captures (5 SELECTs, ~2.5 ms
of ORM CPU) and its decrypted secret. That configuration changes only when an operator
edits the integration, so the built spec is kept here, per process, and checked on every
use against ``Integration.config_version``:

- signals bump the version (one conditional-free ``F() + 1`` UPDATE) on every save and
  delete of an Integration, RequestStep, RequestHeader, RequestQueryParam,
  RequestBodyField, ResponseRule, ResponseCapture, and of the scenario's Element and
  Connection rows (the engine caches the graph under the same version);
  ``services.request_secret_set`` and ``services.secrets_rotate`` write with
  ``update()`` and bump it themselves. Code that writes these rows with
  ``bulk_create`` / ``QuerySet.update`` (no signals) must call ``config_bump``.
- every use reads the version (and the status) in one indexed SELECT by primary key, so
  a change committed by any process is a cache miss in every process on its next call
  (DESIGN.md: nothing stale is kept in process memory; this is a derived copy checked
  against the database on every use).
- the key also holds the step's own columns as the caller loaded them (URL, method,
  ciphertext of the secret, ...), so a caller gets the spec of the object it passed,
  exactly as before the cache.
- a version written by a transaction that is still open (and might roll back, after
  which another change would commit the same number) is never cached: the connection
  remembers which integrations it bumped inside its transaction, and those are built
  fresh until it ends.

The decrypted secret is kept alongside in the spec (it is in memory during every send
anyway); it is never logged, and a step's entry is replaced, not kept beside, when its
key changes, so an old secret does not linger.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg._queries as _psycopg_queries
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from integrations import secrets
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestQueryParam,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from integrations.spec import (
    AuthType,
    BodyFormat,
    Capture,
    CaptureTarget,
    Condition,
    KeyKind,
    Method,
    Operator,
    OutcomeKind,
    RequestSpec,
    Rule,
    Source,
)

MAX_ENTRIES = 2048  # steps per process; far above what one worker calls
_DIRTY_ATTR = "_integrations_bumped_in_transaction"

_entries: dict[int, tuple[tuple[Any, ...], RequestSpec]] = {}
_lock = threading.Lock()
_state_sql: str | None = None


# --- reading -------------------------------------------------------------------------


def integration_state(integration_id: int) -> tuple[str, int] | None:
    """(status, config_version) of an integration, read now; None when it is gone.

    A raw cursor on purpose: this runs on every request and the ORM's queryset machinery
    costs ~10x the statement itself (docs/benchmarks.md, bench-integration).
    """
    global _state_sql
    if _state_sql is None:
        q = connection.ops.quote_name
        _state_sql = (
            f"SELECT {q('status')}, {q('config_version')} "  # noqa: S608 - names from the model
            f"FROM {q(Integration._meta.db_table)} WHERE {q('id')} = %s"
        )
    row = fetch_one(_state_sql, [integration_id])
    return (row[0], row[1]) if row else None


_held = threading.local()

# psycopg remembers how it split a statement's text into parts and parameters (an LRU of
# 128) only for statements under 4 KB and 50 parameters, so that one-off statements do
# not fill it. Ours are fixed texts built once per process; the ping tree's sale that
# finishes a lead (its log row, the result, the distribution: 59 parameters) was split
# again on every sale. The limits are module settings of psycopg's query conversion;
# raised for our statement sizes (the LRU's size, which bounds its memory, is unchanged).
_psycopg_queries.MAX_CACHED_STATEMENT_PARAMS = max(
    _psycopg_queries.MAX_CACHED_STATEMENT_PARAMS, 200
)
_psycopg_queries.MAX_CACHED_STATEMENT_LENGTH = max(
    _psycopg_queries.MAX_CACHED_STATEMENT_LENGTH, 16 * 1024
)


def fetch_one(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Run one statement on the default connection and return its first row.

    The two statements of every buyer call (this version read and the log INSERT), and
    a buyer's callback's one statement (webhooks), go straight to a psycopg cursor kept
    per thread and connection, doing what Django's cursor does around it (health check,
    connect, thread and broken-transaction checks, error translation) but not building
    a cursor and its wrapper each time (~0.03 ms each, docs/benchmarks.md). Whenever
    something watches Django's cursors (query logging: DEBUG, tests'
    CaptureQueriesContext; execute wrappers: instrumentation), Django's cursor is used
    so that they see the statement.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the thread's wrapper, looked up once
    if db.vendor != "postgresql" or db.queries_logged or db.execute_wrappers:
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    db.validate_no_broken_transaction()
    raw = db.connection
    held = getattr(_held, "cursor", None)
    if held is None or held[0] is not raw:
        held = _held.cursor = (raw, raw.cursor())
    cursor = held[1]
    with db.wrap_database_errors:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _key(step: RequestStep, version: int) -> tuple[Any, ...]:
    return (
        version,
        step.updated_at,
        step.integration_id,
        step.method,
        step.url,
        step.body_format,
        step.xml_root,
        step.timeout_seconds,
        step.auth_type,
        step.auth_name,
        step.auth_secret_encrypted,
        step.default_outcome,
    )


def spec_cached(step: RequestStep, *, version: int | None) -> RequestSpec:
    """The step's spec with its secret decrypted: from the cache when its key (step,
    integration version, the step's own columns) matches, otherwise built and stored.
    ``version`` None (integration gone, unsaved step) builds without caching."""
    if version is None or step.pk is None or _bumped_here(step.integration_id):
        return spec_build(step)
    key = _key(step, version)
    entry = _entries.get(step.pk)
    if entry is not None and entry[0] == key:
        return entry[1]
    spec = spec_build(step)
    with _lock:
        _entries.pop(step.pk, None)
        while len(_entries) >= MAX_ENTRIES:  # oldest first (dicts keep insertion order)
            _entries.pop(next(iter(_entries)))
        _entries[step.pk] = (key, spec)
    return spec


def without_secret(spec: RequestSpec) -> RequestSpec:
    return dataclasses.replace(spec, auth_secret="") if spec.auth_secret else spec


def spec_build(step: RequestStep) -> RequestSpec:
    """The pure description of a request step, read from the database, secret decrypted."""
    rules: list[Rule] = []
    pending: list[Condition] = []
    rows = list(step.rules.all())
    for row in rows:
        pending.append(
            Condition(
                source=Source(row.source), operator=Operator(row.operator),
                key_kind=KeyKind(row.key_kind), key=row.key, value=row.value,
                value2=row.value2,
            )
        )  # fmt: skip
        if not row.and_next:
            rules.append(Rule(tuple(pending), OutcomeKind(row.outcome), row.reason))
            pending = []
    if pending:  # a trailing "and next" with no next row: the last row decides
        last = rows[-1]
        rules.append(Rule(tuple(pending), OutcomeKind(last.outcome), last.reason))
    return RequestSpec(
        method=Method(step.method),
        url=step.url,
        body_format=BodyFormat(step.body_format),
        headers=tuple((h.name, h.value) for h in step.headers.all()),
        query=tuple((q.name, q.value) for q in step.query_params.all()),
        body=tuple((b.name, b.value) for b in step.body_fields.all()),
        xml_root=step.xml_root or "request",
        timeout_seconds=step.timeout_seconds,
        auth_type=AuthType(step.auth_type),
        auth_name=step.auth_name,
        auth_secret=secrets.decrypt(step.auth_secret_encrypted),
        rules=tuple(rules),
        captures=tuple(
            Capture(
                source=Source(c.source),
                key_kind=KeyKind(c.key_kind),
                key=c.key,
                target=CaptureTarget(c.target),
                target_name=c.target_name,
            )
            for c in step.captures.all()
        ),  # fmt: skip
        default_outcome=OutcomeKind(step.default_outcome),
    )


def cache_clear() -> None:
    """Forget every cached spec (tests)."""
    with _lock:
        _entries.clear()


# --- invalidation --------------------------------------------------------------------


def _bumped_here(integration_id: int) -> bool:
    """True when this connection bumped the integration inside the transaction it is
    still in: that version is not committed and could be reused after a rollback."""
    bumped = getattr(connection, _DIRTY_ATTR, None)
    if not bumped:
        return False
    if not connection.in_atomic_block:
        bumped.clear()
        return False
    return integration_id in bumped


def config_bump(*, integration_id: int | None) -> None:
    """Make every process's cached specs of this integration's steps a miss."""
    if integration_id is None:
        return
    Integration.objects.filter(pk=integration_id).update(config_version=F("config_version") + 1)
    if connection.in_atomic_block:
        bumped = getattr(connection, _DIRTY_ATTR, None)
        if bumped is None:
            bumped = set()
            setattr(connection, _DIRTY_ATTR, bumped)
        bumped.add(integration_id)


def _integration_of(instance: object) -> int | None:
    if isinstance(instance, Integration):
        return instance.pk
    if isinstance(instance, (RequestStep, Element, Connection)):
        return instance.integration_id
    request_id = getattr(instance, "request_id", None)
    if request_id is None:
        return None
    return (
        RequestStep.objects.filter(pk=request_id).values_list("integration_id", flat=True).first()
    )


@receiver([post_save, post_delete], sender=Integration)
@receiver([post_save, post_delete], sender=RequestStep)
@receiver([post_save, post_delete], sender=RequestHeader)
@receiver([post_save, post_delete], sender=RequestQueryParam)
@receiver([post_save, post_delete], sender=RequestBodyField)
@receiver([post_save, post_delete], sender=ResponseRule)
@receiver([post_save, post_delete], sender=ResponseCapture)
@receiver([post_save, post_delete], sender=Element)
@receiver([post_save, post_delete], sender=Connection)
def _config_changed(sender: type, instance: object, **kwargs: object) -> None:
    config_bump(integration_id=_integration_of(instance))
