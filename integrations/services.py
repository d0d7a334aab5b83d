"""Writes and sends of the integrations app: run a request step (build, send, read, log),
store secrets, create integrations."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction

from integrations import outbound, secrets, step_cache
from integrations.building import BuildError, BuiltRequest, build_request
from integrations.choices import Status
from integrations.models import Integration, RequestLog, RequestStep
from integrations.reading import Outcome, read_response
from integrations.spec import RequestSpec
from structures.models import Lead

log = structlog.get_logger(__name__)

LOG_BODY_LIMIT = 16 * 1024  # bytes of each body kept in the request log


@dataclass
class RunResult:
    """What one run of a request step did."""

    built: BuiltRequest | None
    result: outbound.OutboundResult | None
    outcome: Outcome
    was_sent: bool
    log: RequestLog | None


def step_spec(
    step: RequestStep, *, with_secret: bool = True, version: int | None = None
) -> RequestSpec:
    """The pure description of a request step (its secret decrypted when asked).

    Served from the per-process cache (integrations.step_cache) after checking the
    integration's ``config_version``: pass ``version`` when it was just read, otherwise
    it is read here (one SELECT by primary key).
    """
    if version is None and step.integration_id is not None:
        state = step_cache.integration_state(step.integration_id)
        version = state[1] if state else None
    spec = step_cache.spec_cached(step, version=version)
    return spec if with_secret else step_cache.without_secret(spec)


def _is_forced(context: Mapping[str, Any]) -> bool:
    for key, value in context.items():
        if str(key).lower() == "trl_test" and str(value).strip().lower() in ("1", "true"):
            return True
    return False


def request_run(
    *,
    step: RequestStep,
    context: Mapping[str, Any],
    lead: Lead | None = None,
    origin: str = "send",
    force_send: bool = False,
    dry_run: bool = False,
    write_log: bool = True,
    spec_overrides: Callable[[RequestSpec], RequestSpec] | None = None,
    state: tuple[str, int] | None = None,
    defer_log: bool = False,
    run_step_id: int | None = None,
    trace: bool = True,
) -> RunResult:
    """Build, maybe send, read and log one request.

    Status semantics: disabled never sends; test renders and logs without sending unless
    the context carries ``trl_test=1`` (or ``force_send``, the operator's explicit test);
    enabled sends. ``dry_run`` never sends (preview, "run with sample values").
    ``spec_overrides`` returns a changed copy of the request's spec for this call only
    (the scenario engine's "modify request" tool); the cached spec is never changed.
    ``state`` is the integration's (status, config_version) when the caller has just
    read it. ``defer_log``: the log row is built (``RunResult.log``, no pk yet) and the
    caller writes it, in the same statement as its own record (log_insert_sql).
    ``run_step_id``: the scenario step making the call, kept on its log row.
    ``trace=False``: the outcome carries no reader's trace (nobody shows it: the ping
    tree's and the engine's calls); the admin's test send keeps it.
    """
    integration = step.integration
    # The status and the configuration version are read now, in one statement: an
    # operator's change (status, header, rule, secret) applies to the very next call,
    # whatever the caller loaded earlier.
    if state is None:
        state = step_cache.integration_state(step.integration_id)
    status, version = state if state else (integration.status, None)
    spec = step_cache.spec_cached(step, version=version)
    if spec_overrides is not None:
        spec = spec_overrides(spec)
    try:
        # {{SECRET}} places the stored secret anywhere (e.g. a webhook URL's path); it is
        # in the spec's secrets, so every log masks it.
        built = build_request(spec, {**context, "SECRET": spec.auth_secret})
    except BuildError as exc:
        outcome = Outcome.error(f"Request could not be built: {exc}")
        entry = (
            _log(
                step,
                lead,
                origin,
                None,
                None,
                outcome,
                False,
                insert=not defer_log,
                run_step_id=run_step_id,
            )
            if write_log
            else None
        )
        return RunResult(None, None, outcome, False, entry)

    if status == Status.DISABLED:
        send, why = False, "Not sent: the integration is disabled."
    elif dry_run:
        send, why = False, "Not sent: dry run."
    elif status == Status.TEST and not (force_send or _is_forced(context)):
        send, why = False, "Not sent: the integration is in test mode (trl_test=1 forces it)."
    else:
        send, why = True, ""

    if send:
        # The send's own log line is folded into this call's line below (one per call).
        result = outbound.send(built.to_outbound(), log_line=False)
        outcome = read_response(spec, built, result, context, trace=trace)
    else:
        result = None
        outcome = Outcome.error(why)
    entry = (
        _log(
            step,
            lead,
            origin,
            built,
            result,
            outcome,
            send,
            insert=not defer_log,
            run_step_id=run_step_id,
        )
        if write_log
        else None
    )
    # One line per call: the integration's fields and, when it was sent, the send's
    # (outbound.log_fields: method, masked URLs, status, time, error), which
    # outbound.send did not write on its own. A warning when the exchange failed; else
    # debug: the request log row is the record of every call, and a ping tree makes
    # several calls per lead (LOG_LEVEL=DEBUG shows them all).
    failed = result is not None and not result.ok
    sent_fields = outbound.log_fields(result) if result is not None else {"status": None}
    (log.warning if failed else log.debug)(
        "integration.request",
        integration_id=integration.pk,
        request_id=step.pk,
        sent=send,
        outcome=outcome.kind,
        ms=result.elapsed_ms if result else None,
        **sent_fields,
    )
    return RunResult(built, result, outcome, send, entry)


def _cap(text: str) -> str:
    return text if len(text) <= LOG_BODY_LIMIT else text[:LOG_BODY_LIMIT] + "\n[truncated]"


def _log(
    step: RequestStep,
    lead: Lead | None,
    origin: str,
    built: BuiltRequest | None,
    result: outbound.OutboundResult | None,
    outcome: Outcome,
    was_sent: bool,
    *,
    insert: bool = True,
    run_step_id: int | None = None,
) -> RequestLog:
    secrets_ = list(built.secrets) if built else []
    if result is not None:
        req = result.masked_request()
        resp = result.masked_response()
        method, url = req["method"], req["url"]
        req_headers, req_body = req["headers"], req.get("body", "")
    elif built is not None:
        method = built.method
        url = outbound.mask_url(built.url, secrets_)
        req_headers = outbound.mask_headers(built.headers, secrets_)
        req_body = outbound.mask_secrets((built.body or b"").decode("utf-8", "replace"), secrets_)
        resp = {}
    else:
        method, url, req_headers, req_body, resp = step.method, step.url, [], "", {}
    captured = {k: outbound.mask_secrets(str(v), secrets_) for k, v in outcome.captured.items()}
    entry = RequestLog(
        workspace_id=step.workspace_id,
        integration_id=step.integration_id,
        # Ids, not the objects: nothing reads them back from the row, and setting a
        # relation through its descriptor was a tenth of building the row.
        request_step_id=step.pk,
        lead_id=lead.pk if lead is not None else None,
        origin=origin,
        was_sent=was_sent,
        method=method,
        url=url,
        request_headers=[list(h) for h in req_headers],
        request_body=_cap(req_body),
        status_code=resp.get("status_code"),
        response_headers=[list(h) for h in resp.get("headers", [])],
        response_body=_cap(resp.get("body", "")),
        duration_ms=result.elapsed_ms if result else None,
        outcome=outcome.kind,
        reason=outbound.mask_secrets(outcome.reason, secrets_)[:500],
        error=(result.error_message or "")[:300] if result else "",
        captured=captured,
        run_step_id=run_step_id,
    )
    if insert:
        log_write(entry)
    return entry


_LOG_FIELDS = [f for f in RequestLog._meta.concrete_fields if not f.primary_key]
_log_insert_sql: str | None = None
_log_insert_own_sql: str | None = None


def log_write(entry: RequestLog) -> None:
    """Write one log row before the call returns (never buffered in memory: a killed
    worker would lose it); also a row built with ``defer_log`` that its caller did not
    write with its own record.

    On PostgreSQL a single INSERT ... RETURNING whose text is built once per process and
    whose values are prepared exactly as the ORM prepares them (defaults, auto_now_add,
    JSON): ``objects.create`` spends more CPU in the ORM than PostgreSQL spends on the
    statement, on the path of every buyer call (docs/benchmarks.md). Elsewhere, the ORM.

    When the row is its own transaction (autocommit, no atomic block around it), that
    transaction commits with ``synchronous_commit`` off, for this statement only
    (``set_config(..., true)`` lasts until its transaction ends): PostgreSQL does not
    wait for the WAL flush, the largest single cost of a call (0.2-0.35 ms on a quiet
    disk, 2-3 ms on a busy one). The row is visible at once and survives any crash of our process;
    it can be lost only if the PostgreSQL server itself crashes within ~3 x
    ``wal_writer_delay`` (600 ms by default) of the commit, and then only together with
    everything committed after it (WAL is flushed in order: any later synchronous commit,
    such as the sale the call led to, makes the row durable first). Inside a caller's
    transaction (the engine, business state) the statement is the plain one and the
    caller's commit decides, synchronously. docs/deployment.md says the trade-off.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the thread's wrapper, looked up once
    if db.vendor != "postgresql":
        entry.save(force_insert=True)
        return
    sql, params = log_insert_sql(entry)
    if own_transaction():
        sql = _log_insert_own_sql_text()
    entry.pk = step_cache.fetch_one(sql, params)[0]
    entry._state.adding = False
    entry._state.db = db.alias


def log_insert_sql_text() -> str:
    """The statement text of log_insert_sql (built once per process)."""
    global _log_insert_sql
    if _log_insert_sql is None:
        _log_insert_sql = _insert_text("VALUES ({values})")
    return _log_insert_sql


# A one-row subquery that turns synchronous_commit off until the end of the current
# transaction (set_config(..., true) is SET LOCAL). A statement that is its own
# transaction selects from it, and so commits without waiting for the WAL flush:
# request log rows (here), the engine's step records, a callback's raw request. What
# that trades: docs/deployment.md, "Durability".
NO_FLUSH_SOURCE = "(SELECT set_config('synchronous_commit', 'off', true))"


def own_transaction() -> bool:
    """A statement run now is its own transaction (autocommit, no atomic block around
    it): only then may it select from NO_FLUSH_SOURCE (inside a caller's transaction the
    setting would cover all of it)."""
    db = connections[DEFAULT_DB_ALIAS]  # the thread's wrapper, looked up once
    return db.get_autocommit() and not db.in_atomic_block


def _log_insert_own_sql_text() -> str:
    """log_insert_sql_text for a row that is its own transaction: the same INSERT, its
    values selected from a one-row subquery that turns ``synchronous_commit`` off until
    the end of that transaction (the statement's own, in autocommit)."""
    global _log_insert_own_sql
    if _log_insert_own_sql is None:
        _log_insert_own_sql = _insert_text(
            "SELECT {values} FROM " + NO_FLUSH_SOURCE + " AS c"  # noqa: S608 - constants
        )
    return _log_insert_own_sql


def _insert_text(source: str) -> str:
    q = connection.ops.quote_name
    columns = ", ".join(q(f.column) for f in _LOG_FIELDS)
    values = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in _LOG_FIELDS)
    return (
        f"INSERT INTO {q(RequestLog._meta.db_table)} ({columns}) "  # noqa: S608
        f"{source.format(values=values)} RETURNING {q('id')}"
    )


def log_insert_sql(entry: RequestLog) -> tuple[str, list[Any]]:
    """PostgreSQL only: ``INSERT ... RETURNING id`` of one log row and its parameters,
    for a caller that writes it inside a larger statement (the scenario engine records
    a step and its call's log row with one commit)."""
    return log_insert_sql_text(), insert_values(entry, _LOG_PREP)


_log_insert_many_sql: str | None = None


def log_insert_many_sql_text() -> str:
    """PostgreSQL only: an INSERT of any number of log rows, for a caller that writes
    them inside a larger statement (the ping tree's settled pings), with
    ``log_insert_many_params``: the rows as one JSON array, inserted in their order,
    ``RETURNING id``. The text does not depend on the number of rows, so psycopg parses
    it and PostgreSQL plans it once per process and connection (one row's statement
    repeated per row would be parsed on every call). The ids come back in any order;
    sorted, they are the rows' order (one statement takes its ids from the sequence in
    the order it inserts).

    One JSON parameter, not one array per column: psycopg dumps an array element by
    element in Python (a type probe, then a dumper call per value: ~20 arrays per
    auction lead), where ``json.dumps`` writes all the rows in C and PostgreSQL reads
    them into the table's row type (``json_populate_recordset``), JSON columns as the
    JSON they are."""
    global _log_insert_many_sql
    if _log_insert_many_sql is None:
        q = connection.ops.quote_name
        table = q(RequestLog._meta.db_table)
        columns = ", ".join(q(f.column) for f in _LOG_FIELDS)
        values = ", ".join(f"e.{q(f.column)}" for f in _LOG_FIELDS)
        _log_insert_many_sql = (
            f"INSERT INTO {table} ({columns}) "  # noqa: S608
            f"SELECT {values} FROM json_populate_recordset(NULL::{table}, %s::json) "
            f"WITH ORDINALITY AS e ORDER BY e.ordinality RETURNING {q('id')}"
        )
    return _log_insert_many_sql


def log_insert_many_params(entries: list[RequestLog]) -> list[Any]:
    """The parameters of log_insert_many_sql_text for these rows: one JSON text, a list
    of objects by column name, each value as the ORM would store it (JSON columns as
    their JSON, ``created_at`` set now as ``auto_now_add`` does, in ISO 8601)."""
    rows = [_log_json_row(entry) for entry in entries]
    return [json.dumps(rows, separators=(",", ":"))]


def _log_json_row(entry: RequestLog) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field, plain in _LOG_PREP:
        value = getattr(entry, field.attname)
        if isinstance(field, models.DateTimeField):
            value = field.pre_save(entry, True)
            value = value.isoformat() if value is not None else None
        elif plain is not None and value is not None and type(value) is not plain:
            value = field.to_python(value)  # e.g. a lazy string: stored as its text
        row[field.column] = value
    return row


InsertPrep = list[tuple[models.Field, type | None]]


def insert_prep(fields: list[models.Field], *, defaults_set: bool = False) -> InsertPrep:
    """For each field, the Python type whose values its ``get_db_prep_save`` returns
    unchanged (text as str, integers and keys as int, booleans as bool), or None when the
    ORM must prepare the value (JSON, dates). A field with a default is prepared by the
    ORM too, unless ``defaults_set`` (instances built by ``Model.__init__``, whose
    defaults are values already). Built once per model; used by insert_values."""

    def plain(field: models.Field) -> type | None:
        if field.has_default() and not defaults_set:
            return None
        if isinstance(field, models.CharField | models.TextField):
            return str
        if isinstance(field, models.BooleanField):
            return bool
        if isinstance(field, models.IntegerField | models.ForeignKey):
            return int
        return None

    return [(f, plain(f)) for f in fields]


def insert_values(instance: models.Model, prep: InsertPrep) -> list[Any]:
    """The instance's values for an INSERT, as the ORM would prepare them: a value of
    its field's plain type (or None) is passed as is, anything else goes through the
    ORM's ``pre_save`` + ``get_db_prep_save`` (~3 us a field, on every buyer call)."""
    db = connections[DEFAULT_DB_ALIAS]
    params = []
    for field, plain in prep:
        value = getattr(instance, field.attname) if plain else None
        if plain is None or (value is not None and type(value) is not plain):
            value = field.get_db_prep_save(field.pre_save(instance, True), db)
        params.append(value)
    return params


_LOG_PREP = insert_prep(_LOG_FIELDS)


def request_secret_set(*, step: RequestStep, secret: str | None) -> None:
    """Store (or clear with "") the step's secret, encrypted. None keeps it."""
    if secret is None:
        return
    step.auth_secret_encrypted = secrets.encrypt(secret)
    with transaction.atomic():
        RequestStep.objects.filter(pk=step.pk).update(
            auth_secret_encrypted=step.auth_secret_encrypted
        )
        # update() sends no signal: bump the version here so no process keeps the old one.
        step_cache.config_bump(integration_id=step.integration_id)


def integration_create(
    *, workspace_id: int, name: str, category: str = "custom", status: str = Status.TEST,
    url: str = "https://", method: str = "POST", body_format: str = "json",
) -> Integration:  # fmt: skip
    """A new integration with its first request step."""
    with transaction.atomic():
        integration = Integration(
            workspace_id=workspace_id, name=name, category=category, status=status
        )
        integration.full_clean()
        integration.save()
        RequestStep.objects.create(
            workspace_id=workspace_id, integration=integration, name="Request", url=url,
            method=method, body_format=body_format,
        )  # fmt: skip
    return integration


def secrets_rotate() -> int:
    """Re-encrypt every stored secret with the newest key; returns how many."""
    count = 0
    for step in RequestStep.objects.exclude(auth_secret_encrypted="").only(
        "id", "integration_id", "auth_secret_encrypted"
    ):
        with transaction.atomic():
            RequestStep.objects.filter(pk=step.pk).update(
                auth_secret_encrypted=secrets.rotate(step.auth_secret_encrypted)
            )
            step_cache.config_bump(integration_id=step.integration_id)
        count += 1
    return count
