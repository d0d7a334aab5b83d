"""Writes of the ping tree: distribute a lead through its tree, pause and resume offers,
continue after a buyer's callback, sweep what was lost.

How one lead is distributed exactly once:

1. ``distribution_ensure`` creates the lead's one Distribution row (a unique lead key);
2. a driver claims it by a conditional UPDATE (``attempt`` + 1, a lease until the tree's
   deadline plus a margin); 0 rows means someone else drives it;
3. the driver walks the tiers from the database rows: an offer with a result row in this
   distribution is never asked again, a row left in flight by a dead driver is settled
   from its scenario run (or the run is cancelled and the row recorded as an error);
4. every sale is counted by a conditional UPDATE of the Distribution row (still our
   attempt, not sold exclusively, no sale yet for an exclusive offer) and a unique
   partial index allows one exclusive sale per lead;
5. finishing is a conditional UPDATE too; the sweeper re-drives a running row whose
   lease ran out (its worker died) and a pending row whose task was lost.

Buyers are called on a module-level pool of persistent threads, each with its own
database connection, so an auction pings every offer at once and a slow buyer never holds
the lead past the tier's or the tree's deadline: the driver stops waiting, cancels the
run (or ignores a direct call's late answer) and moves on. A buyer whose integration's
scenario for the call is just its start and one request (the default scenario, what the
library installs) is called straight through ``integrations.services.request_run``, which
builds, sends, reads and logs the call: the result row links that request log. Any other
scenario (webhook steps, waits, repeats, several requests) runs through the scenario
engine (``run_start`` / ``run_drive``) and the row links its run. What the row records
(answer, bid, reason, redirect, buyer lead id, timings) is the same either way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import structlog
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connection,
    models,
    transaction,
)
from django.db.models import F, Q
from django.db.models.query import get_related_populators
from django.utils import timezone

from integrations import services as integration_services
from integrations import step_cache
from integrations.context import lead_context, lead_layer_of
from integrations.engine import services as engine
from integrations.engine.graph import graph_get
from integrations.models import Element, Integration, RequestStep, ScenarioRun
from pingtree import caps as caps_service
from pingtree import selectors, tree_cache
from pingtree.choices import (
    DISTRIBUTION_FINISHED,
    CapMetric,
    DistributionStatus,
    OfferStatus,
    PriceModel,
    ResultStage,
    ResultStatus,
    SaleMode,
    TierMode,
)
from pingtree.exceptions import OfferStateError
from pingtree.models import (
    Cap,
    CapCounter,
    Distribution,
    Offer,
    OfferResult,
    PingTree,
    Tier,
    TierOffer,
)
from structures.choices import LeadStatus
from structures.intake_config import config_bump
from structures.models import Lead, LeadEvent, RefusalPolicy

log = structlog.get_logger(__name__)

# A driver's lease lasts until the tree's deadline plus this margin (a blocking HTTP call
# may end a little after the deadline); then the sweeper may hand the lead to another.
LEASE_MARGIN = timedelta(seconds=15)
# A pending distribution whose task was lost is re-driven after this.
PENDING_GRACE = timedelta(seconds=30)
# How far back the sweeper looks for accepted leads that never got a distribution.
MISSING_LOOKBACK = timedelta(hours=1)
# A distribution waiting on a buyer's callback is looked at again after this, in case the
# run_finished signal was missed (a crash between commit and the signal).
WAIT_RECHECK = timedelta(seconds=30)
# A call with less time than this left is not started.
MIN_CALL_SECONDS = 0.05
# A waterfall claims its next post's row while the current post is in flight, once the
# current one has had this long to leave (the claim's statement would otherwise take
# the GIL from its send), unless its answer came first.
CLAIM_AHEAD_AFTER_SECONDS = 0.003
POOL_SIZE = 32
# A pool thread idle this long closes its database connection.
POOL_IDLE_CLOSE_SECONDS = 10.0
CENT = Decimal("0.0001")
NOT_SENT_PREFIX = "Not sent"
NOT_COUNTED = "accepted after the lead was sold elsewhere: not counted"

RunStatus = ScenarioRun.Status
IN_FLIGHT = (ResultStage.PINGED, ResultStage.POSTED)


# --- the thread pool ----------------------------------------------------------------------


class _Pool:
    """Persistent daemon threads taking calls from one queue. Each thread keeps its own
    database connection (Django connections are per thread) and closes it when idle or
    obsolete, so a long-lived worker never holds a dead connection."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.pid = 0  # the process the threads were started in (none yet)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        # Started once per process: after a fork (prefork workers) the parent's threads
        # are not alive in the child. Checking each thread on every call cost more than
        # the call's queueing (32 is_alive() per ping).
        if self.pid != os.getpid() or len(self.threads) < self.size:
            self._ensure()
        future: Future = Future()
        self.queue.put((future, fn, args))
        return future

    def _ensure(self) -> None:
        with self.lock:
            # After a fork (prefork workers) the parent's threads are not alive here.
            self.pid = os.getpid()
            self.threads = [t for t in self.threads if t.is_alive()]
            while len(self.threads) < self.size:
                thread = threading.Thread(
                    target=self._work, name=f"pingtree-{len(self.threads)}", daemon=True
                )
                thread.start()
                self.threads.append(thread)

    def _work(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=POOL_IDLE_CLOSE_SECONDS)
            except queue.Empty:
                connection.close()
                continue
            if item is None:
                connection.close()
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            # Once per job, after it (as Django does at a request's end): an obsolete or
            # failed connection is closed, and the next job's first query checks it
            # (CONN_HEALTH_CHECKS); an idle thread closes its own (above).
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  (handed to the waiting driver)
                future.set_exception(exc)
            finally:
                close_old_connections()

    def shutdown(self) -> None:
        """Stop the threads, each closing its connection (tests, before the test
        database is dropped)."""
        with self.lock:
            threads, self.threads = self.threads, []
            self.pid = 0
        for _ in threads:
            self.queue.put(None)
        for thread in threads:
            thread.join(timeout=5)


POOL = _Pool(POOL_SIZE)


def pool_shutdown() -> None:
    POOL.shutdown()


_STATES_SQL: str | None = None


def _drive_run(run_id: int, seconds: float) -> ScenarioRun:
    return engine.run_drive(run_id=run_id, deadline_seconds=seconds, hand_off=False)


# (request step, the integration's (status, config_version) read for this call)
Direct = tuple[RequestStep, tuple[str, int]]
# False sends every call through the scenario engine (the tests run both paths).
DIRECT_CALLS = True


def _direct_request(integration_id: int, meaning: str, state: tuple[str, int] | None) -> Any:
    """The request a ``meaning`` call of this integration makes when its scenario for it
    is its start and one request, unconditionally, with nothing after it (the default
    scenario): the engine would run exactly that request and end, so the call goes
    straight to request_run. None: anything more (webhook steps, waits, repeats, tools,
    branches, conditions), or no scenario built yet: the engine runs it."""
    if state is None or not DIRECT_CALLS:
        return None
    graph = graph_get(integration_id, version=state[1])
    starts = [
        element
        for element in graph.elements.values()
        if element.kind == Element.Kind.START
        and element.meaning == meaning
        and str((element.config or {}).get("trigger") or "default") == "default"
    ]
    if len(starts) != 1:
        return None
    outgoing = graph.outgoing.get(starts[0].pk, ())
    if len(outgoing) != 1 or outgoing[0].conditions:
        return None
    request = outgoing[0].to_element
    if (
        request.kind != Element.Kind.REQUEST
        or request.request_step is None
        or graph.outgoing.get(request.pk)
    ):
        return None
    return request.request_step


class _Countdown:
    """Set once ``n`` pool threads have taken their calls: an auction's driver waits for
    it before writing the result rows, so that its own Python work (ten model rows, their
    parameters) does not hold the GIL while the pings are still being built and sent. The
    rows are needed only when the answers are written, at least a buyer's latency later.
    """

    def __init__(self, n: int) -> None:
        self.lock = threading.Lock()
        self.left = n
        self.done = threading.Event()
        if n <= 0:
            self.done.set()

    def tick(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.done.set()


class _PingCall:
    """A call started and driven on a pool thread: a direct request, or a scenario run
    (written there too, so an auction's pings start in parallel). The driver may give up
    on it: then the run, if it was started, is cancelled (a direct call's late answer is
    logged and ignored), and a call not yet started never is."""

    def __init__(self, started: _Countdown | None = None) -> None:
        self.lock = threading.Lock()
        self.run_id: int | None = None
        self.abandoned = False
        self.delivered = False  # a deferred log handed to the driver, which writes it
        self.started = started  # counted down when a pool thread takes the call

    def job(
        self,
        integration: Integration,
        lead: Lead,
        variables: dict[str, Any],
        seconds: float,
        direct: Direct | None = None,
        defer_log: bool = False,
        lead_layer: dict[str, Any] | None = None,
    ) -> ScenarioRun | integration_services.RunResult | None:
        if self.started is not None:
            self.started.tick()
        with self.lock:
            if self.abandoned:
                return None
        if direct is not None:
            step, state = direct
            # defer_log: the driver writes the call's log row in the statement that
            # records its answer (one commit instead of two on the post's path); a
            # driver that stopped waiting will not, so then it is written here.
            result = integration_services.request_run(
                step=step, lead=lead,
                context=lead_context(lead, variables=variables, lead_layer=lead_layer),
                origin="scenario", state=state, defer_log=defer_log, trace=False,
            )  # fmt: skip
            if defer_log and result.log is not None and result.log.pk is None:
                with self.lock:
                    orphan = self.abandoned
                    self.delivered = not orphan
                if orphan:
                    integration_services.log_write(result.log)
            return result
        # Started and driven in this pool thread: its first steps are claimed for us.
        run = engine.run_start(
            integration=integration, lead=lead, meaning="ping", variables=variables,
            deadline_seconds=seconds, claim=True,
        )  # fmt: skip
        with self.lock:
            self.run_id = run.pk
            abandoned = self.abandoned
        if abandoned:
            return engine.run_cancel(run_id=run.pk, reason="the ping tree stopped waiting")
        return engine.run_drive(run_id=run.pk, deadline_seconds=seconds, hand_off=False)

    def give_up(self) -> tuple[int | None, bool]:
        """Stop waiting: (the run's id, False), or (None, True) when the answer was
        delivered already (its log is the driver's to write: it must take it)."""
        with self.lock:
            if self.delivered:
                return None, True
            self.abandoned = True
            return self.run_id, False


# --- small helpers ------------------------------------------------------------------------


def offer_filters_errors(definition: dict[str, Any]) -> dict[str, list[str]]:
    """Errors of an offer's filter definition by path (pingtree.filters)."""
    from pingtree.filters import filters_validate

    return filters_validate(definition)


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        amount = value
    else:
        from integrations.reading import parse_amount

        try:
            amount = parse_amount(str(value))
        except (InvalidOperation, ValueError):
            amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        return None
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _seconds_left(until: datetime) -> float:
    return (until - timezone.now()).total_seconds()


@dataclass
class CallOutcome:
    """What one ping or post of one offer came to."""

    kind: str
    reason: str = ""
    captured: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    ms: int = 0
    blocking: bool = False  # parked on a webhook the buyer must call back
    not_sent: bool = False
    log_id: int | None = None  # a direct call's request log
    log_entry: Any = None  # ... not written yet: the record writes it (log_insert_sql)

    @property
    def status(self) -> str:
        if self.kind == "duplicate":
            return ResultStatus.REJECTED
        if self.kind in ResultStatus.values:
            return self.kind
        return ResultStatus.ERROR


# What a buyer's run may wait on while it holds the lead (run.result["waiting"], set by
# the engine): a webhook step waiting for the buyer's callback, or a wait before asking
# the buyer again (the polling pattern, docs/scenarios.md). The reason shown meanwhile.
_HOLDING_WAITS = {
    "webhook": "waiting for the buyer's callback",
    "wait": "waiting to ask the buyer again",
}


def _outcome_of(run: ScenarioRun, ms: int) -> CallOutcome:
    result = run.result or {}
    kind = str(result.get("kind") or "")
    reason = str(result.get("reason") or "")
    captured = dict(result.get("captured") or {})
    variables = dict(run.variables or {})
    waiting = result.get("waiting")
    if run.status == RunStatus.WAITING and waiting in _HOLDING_WAITS:
        if result.get("blocking"):
            return CallOutcome(
                "pending", reason or _HOLDING_WAITS[waiting], captured, variables,
                ms, blocking=True,
            )  # fmt: skip
        return CallOutcome(kind or "pending", reason, captured, variables, ms)
    if run.status in (RunStatus.RUNNING, RunStatus.WAITING):
        return CallOutcome("timeout", "no answer before the deadline", captured, variables, ms)
    if run.status == RunStatus.TIMED_OUT:
        return CallOutcome("timeout", reason or run.reason or "timed out", captured, variables, ms)
    if run.status == RunStatus.CANCELLED:
        return CallOutcome("timeout", run.reason or "cancelled", captured, variables, ms)
    if not kind:
        kind = "accepted" if run.status == RunStatus.SUCCEEDED else "error"
        reason = reason or run.reason
    return CallOutcome(
        kind, reason, captured, variables, ms, not_sent=reason.startswith(NOT_SENT_PREFIX)
    )


def _outcome_direct(result: Any, variables: dict[str, Any], ms: int) -> CallOutcome:
    """A direct call's outcome: what the engine's run of start -> this request would have
    come to (``_outcome_of`` of that finished run): its answer, reason, captures, and the
    run's variables (the call's own merged over what it was given)."""
    outcome = result.outcome
    kind = str(outcome.kind or "") or "accepted"  # a run that ended without a kind
    reason = str(outcome.reason or "")
    entry = result.log
    return CallOutcome(
        kind, reason, dict(outcome.captured or {}), {**variables, **dict(outcome.variables or {})},
        ms, not_sent=reason.startswith(NOT_SENT_PREFIX),
        log_id=entry.pk if entry is not None else None,
        log_entry=entry if entry is not None and entry.pk is None else None,
    )  # fmt: skip


# --- result rows in raw statements --------------------------------------------------------
#
# A distribution writes a result row per offer and updates it two or three times: on the
# path of every buyer call. The ORM spends far more CPU composing those statements than
# PostgreSQL spends running them (docs/benchmarks.md, bench-pingtree), so on PostgreSQL
# they are raw statements whose text is built once per process and whose values are
# prepared exactly as the ORM prepares them (get_db_prep_save). Elsewhere, the ORM.

_RESULT_FIELDS = [f for f in OfferResult._meta.concrete_fields if not f.primary_key]
# What settling a ping writes (column: its PostgreSQL type), for _Driver._pings_write.
_PING_COLUMNS = {
    "stage": "text", "ping_run_id": "bigint", "ping_status": "text", "ping_log_id": "bigint",
    "bid": "numeric", "ping_ms": "int", "reason": "text", "status": "text",
    "finished_at": "timestamptz",
}  # fmt: skip
_sql_texts: dict[Any, str] = {}


# A result row's write that is its own transaction (integration_services.own_transaction)
# commits without waiting for the WAL flush, as a request's log row and a scenario step's
# record do. A result row says where the offer stands, not what anyone was told:
# PostgreSQL itself crashing within ~3 x wal_writer_delay could take back the last ones,
# and only with everything committed after them; the sale, the caps and the decision to
# the partner commit synchronously, and their flush makes every earlier row durable
# first. Taken back, the offer is asked again when the distribution is re-driven (at
# least once, as after a worker killed mid-call).
_no_flush = integration_services.own_transaction
_OWN = f"{integration_services.NO_FLUSH_SOURCE} AS own"


def _results_insert(rows: list[OfferResult]) -> None:
    """INSERT the rows in one statement, their ids set. IntegrityError as the ORM's."""
    if connection.vendor != "postgresql":
        OfferResult.objects.bulk_create(rows)
        return
    # One row may commit without the flush; several keep VALUES, whose RETURNING order
    # is the rows' order (a join with the one-row source would not promise it).
    own = len(rows) == 1 and _no_flush()
    key = ("insert", len(rows), own)
    sql = _sql_texts.get(key)
    if sql is None:
        q = connection.ops.quote_name
        columns = ", ".join(q(f.column) for f in _RESULT_FIELDS)
        values = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in _RESULT_FIELDS)
        source = (
            f"SELECT {values} FROM {_OWN}"  # noqa: S608 - constants
            if own
            else "VALUES " + ", ".join([f"({values})"] * len(rows))
        )
        sql = _sql_texts[key] = (
            f"INSERT INTO {q(OfferResult._meta.db_table)} ({columns}) {source} RETURNING id"  # noqa: S608
        )
    params: list[Any] = []
    for row in rows:
        params += [f.get_db_prep_save(f.pre_save(row, True), connection) for f in _RESULT_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [r[0] for r in cursor.fetchall()]
    for row, pk in zip(rows, ids, strict=True):
        row.pk = pk
        row._state.adding = False
        row._state.db = connection.alias


@dataclass
class _Behind:
    """A result record written behind: in memory at once, in the database with the
    driver's next statement (merged into it where it can be: the next row's open, the
    finish), never later than that statement (_Driver._behind_guard)."""

    rows: list[OfferResult]
    values: dict[str, Any]
    log: Any = None  # a deferred request log row, linked as the rows' post_log
    # Instead: delete the rows, claims made ahead and never posted (_Driver._unclaim),
    # only while they are still untouched claims.
    delete: bool = False

    def shape(self) -> tuple[Any, ...]:
        return ("delete",) if self.delete else (tuple(self.values), self.log is not None)

    def ctes(self, *, own: bool = False) -> str:
        """``lg`` (the log row) and ``u`` (the update or delete), to open a WITH list."""
        if self.delete:
            q = connection.ops.quote_name
            return (
                f"u AS (DELETE FROM {q(OfferResult._meta.db_table)} "  # noqa: S608
                f"{f'USING {_OWN} ' if own else ''}WHERE id = ANY(%b::bigint[]) "
                f"AND stage = '{ResultStage.POSTED.value}' AND post_status = '' "
                "AND finished_at IS NULL RETURNING 1)"
            )
        update = _set_update_text(tuple(self.values), log=self.log is not None, own=own)
        lg = (
            f"lg AS ({integration_services.log_insert_sql_text()}), "  # noqa: S608
            if self.log is not None
            else ""
        )
        return f"{lg}u AS ({update} RETURNING 1)"

    def log_id_sql(self) -> str:
        return "(SELECT id FROM lg)" if self.log is not None else "NULL"

    def params(self) -> list[Any]:
        if self.delete:
            return [[r.pk for r in self.rows]]
        return _set_params([r.pk for r in self.rows], self.values, self.log)

    def write(self) -> None:
        """By itself, in its own statement."""
        own = _no_flush()
        key = ("behind", self.shape(), own)
        sql = _sql_texts.get(key)
        if sql is None:
            sql = _sql_texts[key] = f"WITH {self.ctes(own=own)} SELECT {self.log_id_sql()}"
        with connection.cursor() as cursor:
            cursor.execute(sql, self.params())
            log_id = cursor.fetchone()[0]
        self.written(log_id)

    def written(self, log_id: int | None) -> None:
        """The statement that carried it ran: the log row's id on it and its rows."""
        if self.log is not None:
            self.log.pk = log_id
            self.log._state.adding = False
            for row in self.rows:
                row.post_log_id = log_id


def _results_open(
    rows: list[OfferResult], *, state_of: int | None = None, behind: _Behind | None = None
) -> tuple[str, int] | None:
    """INSERT fresh rows (pending, nothing said yet: what _Driver._open makes for an
    offer it asks, and _open_many for an auction) in one
    statement whose text does not depend on their number: the values they share once,
    the three that differ as arrays. Their ids set. PostgreSQL only.

    ``state_of``: an integration whose (status, config_version) the same statement reads
    and returns (None when it is gone): the state a post reads just before its call
    (``_Driver._direct``), one round trip less on a waterfall's every post. ``behind``:
    the record of the previous row's answer, written by the same statement (a
    waterfall's rejected post and the next post's claim: one round trip, not two)."""
    first = rows[0]
    own = _no_flush()
    key = ("open", own, state_of is not None, behind.shape() if behind else None)
    sql = _sql_texts.get(key)
    if sql is None:
        q = connection.ops.quote_name
        insert = (
            f"INSERT INTO {q(OfferResult._meta.db_table)} (workspace_id, distribution_id, "  # noqa: S608
            "tier_id, stage, status, reason, is_test, ping_status, post_status, "
            "redirect_url, buyer_lead_id, reservations, is_sold, created_at, offer_id, "
            "position, is_exclusive) "
            "SELECT %s, %s, %s, %s, %s, '', %s, '', '', '', '', '[]'::jsonb, false, %s, "
            "v.offer_id, v.position, v.is_exclusive "
            "FROM unnest(%b::bigint[], %b::int[], %b::bool[]) AS v(offer_id, position, "
            f"is_exclusive){f' CROSS JOIN {_OWN}' if own else ''} RETURNING id, offer_id"
        )
        state = (
            f"i.{q('status')}, i.{q('config_version')}" if state_of is not None else "NULL, NULL"
        )
        log_id = behind.log_id_sql() if behind is not None else "NULL"
        join = (
            f" LEFT JOIN {q(Integration._meta.db_table)} AS i ON i.{q('id')} = %s"
            if state_of is not None
            else ""
        )
        sql = _sql_texts[key] = (
            f"WITH {behind.ctes() + ', ' if behind else ''}r AS ({insert}) "  # noqa: S608
            f"SELECT r.id, r.offer_id, {state}, {log_id} FROM r{join}"
        )
    now = timezone.now()
    params = behind.params() if behind is not None else []
    params += [
        first.workspace_id, first.distribution_id, first.tier_id, first.stage, first.status,
        first.is_test, now, [r.offer_id for r in rows], [r.position for r in rows],
        [r.is_exclusive for r in rows],
    ]  # fmt: skip
    if state_of is not None:
        params.append(state_of)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    if behind is not None:
        behind.written(fetched[0][4])
    ids = {found[1]: found[0] for found in fetched}
    for row in rows:
        row.pk, row.created_at = ids[row.offer_id], now
        row._state.adding = False
        row._state.db = connection.alias
    if state_of is None or fetched[0][2] is None:
        return None
    return (fetched[0][2], fetched[0][3])


def _set_update_text(names: tuple[str, ...], *, log: bool, own: bool) -> str:
    """``UPDATE`` of result rows ``WHERE id = ANY(...)`` setting these fields (names or
    attnames) to one value each; with ``log``, also ``post_log_id`` to the id of a log row
    inserted by a CTE named ``lg`` of the same statement. Built once per shape."""
    key = ("set_update", names, log, own)
    sql = _sql_texts.get(key)
    if sql is None:
        q = connection.ops.quote_name
        fields = [OfferResult._meta.get_field(name) for name in names]
        sets = ", ".join(f"{q(f.column)} = CAST(%s AS {f.db_type(connection)})" for f in fields)
        if log:
            sets += ", post_log_id = (SELECT id FROM lg)"
        sql = _sql_texts[key] = (
            f"UPDATE {q(OfferResult._meta.db_table)} SET {sets} "  # noqa: S608
            f"{f'FROM {_OWN} ' if own else ''}WHERE id = ANY(%b::bigint[])"
        )
    return sql


def _set_params(pks: list[int], values: dict[str, Any], log: Any = None) -> list[Any]:
    """The parameters of _set_update_text (with ``log``: the log row's first)."""
    params: list[Any] = []
    if log is not None:
        params += integration_services.log_insert_sql(log)[1]
    for name, value in values.items():
        f = OfferResult._meta.get_field(name)
        if isinstance(value, models.Model):
            value = value.pk
        target = f.target_field if f.is_relation else f
        params.append(target.get_db_prep_save(value, connection))
    params.append(list(pks))
    return params


def _results_set(pks: list[int], values: dict[str, Any]) -> int:
    """UPDATE these rows' fields (names or attnames) to the same values; rows changed. (A
    record with its call's deferred log row is written behind: _Behind.)"""
    if not pks:
        return 0
    if connection.vendor != "postgresql":
        return OfferResult.objects.filter(pk__in=pks).update(**values)
    sql = _set_update_text(tuple(values), log=False, own=_no_flush())
    with connection.cursor() as cursor:
        cursor.execute(sql, _set_params(pks, values))
        return cursor.rowcount


# --- offers: pause, resume, health --------------------------------------------------------


def offer_pause(*, offer: Offer, reason: str, actor: str = "operator") -> bool:
    """Pause an active offer with a reason; False when it was not active."""
    paused = Offer.objects.filter(pk=offer.pk, status=OfferStatus.ACTIVE).update(
        status=OfferStatus.PAUSED, pause_reason=reason[:300], paused_at=timezone.now()
    )
    if paused:
        # update() sends no signal: the next lead of every process reads the tree again.
        config_bump(workspace_id=offer.workspace_id)
        log.warning("pingtree.offer_paused", offer_id=offer.pk, reason=reason, actor=actor)
        offer.refresh_from_db(fields=["status", "pause_reason", "paused_at"])
    return bool(paused)


def offer_resume(*, offer: Offer, actor: str = "operator") -> Offer:
    """Resume a paused offer: active again, its error streak forgotten."""
    if offer.status != OfferStatus.PAUSED:
        raise OfferStateError(f"The offer is {offer.get_status_display().lower()}, not paused.")
    if Offer.objects.filter(pk=offer.pk, status=OfferStatus.PAUSED).update(
        status=OfferStatus.ACTIVE, pause_reason="", paused_at=None, consecutive_error_count=0
    ):
        config_bump(workspace_id=offer.workspace_id)
    log.info("pingtree.offer_resumed", offer_id=offer.pk, actor=actor)
    offer.refresh_from_db(fields=["status", "pause_reason", "paused_at", "consecutive_error_count"])
    return offer


def _offer_health_record(*, offer: Offer, failed: bool) -> None:
    """N consecutive post errors or timeouts pause the offer; any answer resets the count.

    The count in memory is the one of the workspace's tree snapshot (pingtree.tree_cache):
    every change of it bumps the workspace's configuration version, so the next lead
    reads it afresh. A success with no errors counted writes nothing."""
    if not failed:
        if offer.consecutive_error_count:
            Offer.objects.filter(pk=offer.pk).update(consecutive_error_count=0)
            offer.consecutive_error_count = 0
            config_bump(workspace_id=offer.workspace_id)
        return
    Offer.objects.filter(pk=offer.pk).update(
        consecutive_error_count=F("consecutive_error_count") + 1
    )
    config_bump(workspace_id=offer.workspace_id)
    if offer.auto_pause_after <= 0:
        return
    count = Offer.objects.filter(pk=offer.pk).values_list("consecutive_error_count", flat=True)[0]
    if count >= offer.auto_pause_after:
        offer_pause(
            offer=offer,
            reason=f"Auto-paused after {count} consecutive post errors or timeouts.",
            actor="system",
        )


# --- trees and distributions --------------------------------------------------------------


def tree_for_lead(lead: Lead, *, workspace_fresh: bool = False) -> PingTree | None:
    """The active tree serving the lead: one listing its partner, else its structure,
    else the workspace's default tree. From the workspace's trees as of its current
    configuration version (pingtree.tree_cache): the instance is shared, read only.
    ``workspace_fresh``: ``lead.workspace`` was read with the lead just now, so its
    version is current; otherwise the version is read (one small query)."""
    workspace = lead.workspace if workspace_fresh else tree_cache.workspace_now(lead.workspace_id)
    snapshot = tree_cache.tree_serving(workspace, lead.partner_id, lead.structure_id)
    return snapshot.tree if snapshot is not None else None


def distribution_ensure(*, lead: Lead) -> Distribution:
    """The lead's distribution, created pending (or at once unsold when no tree serves
    it). Safe under concurrency: the lead is unique."""
    existing = Distribution.objects.filter(lead_id=lead.pk).first()
    if existing is not None:
        return existing
    tree = tree_for_lead(lead)
    now = timezone.now()
    dist = Distribution(
        workspace_id=lead.workspace_id,
        lead=lead,
        tree=tree,
        is_test=lead.is_test,
        status=DistributionStatus.PENDING if tree else DistributionStatus.UNSOLD,
        reason="" if tree else selectors.NO_TREE_REASON,
        next_check_at=now + PENDING_GRACE if tree else None,
        finished_at=None if tree else now,
    )
    try:
        # No history row when no tree serves the lead: a workspace without ping trees
        # keeps its leads' history as it was.
        with transaction.atomic():
            dist.save(force_insert=True)
    except IntegrityError:
        return Distribution.objects.get(lead_id=lead.pk)
    return dist


def distribution_start(*, lead_id: int, inline: bool = False) -> Distribution | None:
    """Create the lead's distribution and queue its run after commit (``inline``: the
    caller drives it itself, e.g. a partner waiting synchronously)."""
    lead = Lead.objects.select_related("workspace").filter(pk=lead_id).first()
    if lead is None:
        return None
    dist = distribution_ensure(lead=lead)
    if dist.status == DistributionStatus.PENDING and not inline:
        from pingtree.tasks import distribution_run_task

        dist_id = dist.pk
        transaction.on_commit(lambda: distribution_run_task.delay(dist_id), robust=True)
    return dist


def _lead_status(lead_id: int) -> str:
    """The lead's status as it is now (the portable finish; on PostgreSQL the finish
    statement reads it itself)."""
    return Lead.objects.filter(pk=lead_id).values_list("status", flat=True)[0]


def _history(dist: Distribution, kind: str, message: str, data: dict | None = None) -> None:
    LeadEvent.objects.create(
        workspace_id=dist.workspace_id,
        lead_id=dist.lead_id,
        kind=kind,
        message=message[:500],
        data=data or {},
        actor="ping tree",
    )


def _history_row(
    dist: Distribution, kind: str, message: str, data: dict | None = None
) -> LeadEvent:
    return LeadEvent(
        workspace_id=dist.workspace_id, lead_id=dist.lead_id, kind=kind,
        message=message[:500], data=data or {}, actor="ping tree",
    )  # fmt: skip


_EVENT_FIELDS = [f for f in LeadEvent._meta.concrete_fields if not f.primary_key]


@dataclass
class _SaleEnd:
    """A sale that ends the tree, written by the finish's statement (_finish_statement):
    the sold row's values (in _SALE_ROW_COLUMNS' order) and its call's deferred log."""

    row_pk: int
    exclusive: bool
    redirect: str
    values: list[Any]
    log: Any = None


_SALE_ROW_COLUMNS = (
    "stage", "status", "post_status", "post_ms", "price", "redirect_url", "buyer_lead_id",
)  # fmt: skip


def _finish_statement(
    dist: Distribution, final: dict[str, Any], left: dict[str, Any] | None, event: LeadEvent,
    *, lead_id: int, rejected: bool, behind: _Behind | None = None, sale: _SaleEnd | None = None,
) -> tuple[bool, str | None]:  # fmt: skip
    """PostgreSQL: finish the distribution (only while it is still our attempt and
    running, and the lead is rejected or not as ``rejected`` says: the payout was
    computed so), close the rows left open (``left``) and write the history entry, in
    one statement, with ``behind``: the last answer's record (whatever becomes of the
    finish). With ``sale``: the sale that ends the tree is counted by the same update
    of the distribution (as _Driver._sale_statement counts it, on the same conditions),
    and its row recorded sold, only if all of it holds; its call's log row is written
    either way. (True when it finished, the lead's status now.)"""
    key = (
        "finish", tuple(final), left is not None, behind.shape() if behind else None,
        None if sale is None else sale.log is not None,
    )  # fmt: skip
    sql = _sql_texts.get(key)
    q = connection.ops.quote_name
    dist_fields = [Distribution._meta.get_field(name) for name in final]
    if sql is None:
        sets = ", ".join(
            f"{q(f.column)} = CAST(%s AS {f.db_type(connection)})" for f in dist_fields
        )
        parts = [behind.ctes()] if behind is not None else []
        if sale is not None and sale.log is not None:
            parts.append(f"sl AS ({integration_services.log_insert_sql_text()})")
        counts = ""
        if sale is not None:
            sets += (
                ", sold_count = sold_count + 1, is_exclusive_sold = %s, redirect_url = "
                "CASE WHEN redirect_url = '' THEN %s ELSE redirect_url END"
            )
            counts = "AND NOT is_exclusive_sold AND (NOT %s OR sold_count = 0) "
        parts.append(
            f"d AS (UPDATE {q(Distribution._meta.db_table)} SET {sets} "  # noqa: S608
            f"WHERE id = %s AND attempt = %s AND status = 'running' {counts}"
            f"AND EXISTS (SELECT 1 FROM {q(Lead._meta.db_table)} "
            f"WHERE id = %s AND (status = '{LeadStatus.REJECTED.value}') = %s) RETURNING id)"
        )
        if sale is not None:
            result_fields = [OfferResult._meta.get_field(name) for name in _SALE_ROW_COLUMNS]
            row_sets = ", ".join(
                f"{q(f.column)} = CAST(%s AS {f.db_type(connection)})" for f in result_fields
            )
            log_ref = "(SELECT id FROM sl), " if sale.log is not None else ""
            parts.append(
                f"s AS (UPDATE {q(OfferResult._meta.db_table)} SET {row_sets}, "  # noqa: S608
                f"post_log_id = COALESCE({log_ref}%s, post_log_id), reason = %s, "
                "is_sold = true, finished_at = %s WHERE id = %s AND EXISTS (SELECT 1 FROM d))"
            )
        if left is not None:
            # Not the rows the record behind sets (one statement must not update a row
            # twice).
            parts.append(
                f"o AS (UPDATE {q(OfferResult._meta.db_table)} SET status = %s, "  # noqa: S608
                "reason = %s, finished_at = %s WHERE distribution_id = %s "
                "AND finished_at IS NULL AND EXISTS (SELECT 1 FROM d)"
                f"{' AND id <> ALL(%b::bigint[])' if behind is not None else ''}"
                f"{' AND id <> %s' if sale is not None else ''})"
            )
        columns = ", ".join(q(f.column) for f in _EVENT_FIELDS)
        values = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in _EVENT_FIELDS)
        parts.append(
            f"e AS (INSERT INTO {q(LeadEvent._meta.db_table)} ({columns}) "  # noqa: S608
            f"SELECT {values} FROM d)"
        )
        log_id = behind.log_id_sql() if behind is not None else "NULL"
        sale_log_id = "(SELECT id FROM sl)" if sale is not None and sale.log is not None else "NULL"
        sql = _sql_texts[key] = (
            "WITH " + ", ".join(parts) + " SELECT (SELECT count(*) FROM d), "  # noqa: S608
            f"(SELECT status FROM {q(Lead._meta.db_table)} WHERE id = %s), {log_id}, "
            f"{sale_log_id}"
        )
    params: list[Any] = behind.params() if behind is not None else []
    if sale is not None and sale.log is not None:
        params += integration_services.log_insert_sql(sale.log)[1]
    params += [
        f.get_db_prep_save(value, connection)
        for f, value in zip(dist_fields, final.values(), strict=True)
    ]
    if sale is not None:
        params += [sale.exclusive, sale.redirect]
    params += [dist.pk, dist.attempt]
    if sale is not None:
        params.append(sale.exclusive)
    params += [lead_id, rejected]
    if sale is not None:
        params += sale.values + [sale.row_pk]
    if left is not None:
        params += [left["status"], str(left["reason"])[:500], left["finished_at"], dist.pk]
        if behind is not None:
            params.append([r.pk for r in behind.rows])
        if sale is not None:
            params.append(sale.row_pk)
    params += [f.get_db_prep_save(f.pre_save(event, True), connection) for f in _EVENT_FIELDS]
    params.append(lead_id)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        done, status, log_id, sale_log_id = cursor.fetchone()
    if behind is not None:
        behind.written(log_id)
    if sale is not None and sale.log is not None:
        sale.log.pk = sale_log_id
        sale.log._state.adding = False
    return bool(done), status


def _claim(dist_id: int) -> Distribution | None:
    """Take the distribution for this driver: pending, waiting, or running with its lease
    run out. Returns it with its new attempt, or None when someone else has it."""
    dist = Distribution.objects.select_related("tree").filter(pk=dist_id).first()
    if dist is None or dist.status in DISTRIBUTION_FINISHED:
        return None
    now = timezone.now()
    claimable = Q(status__in=(DistributionStatus.PENDING, DistributionStatus.WAITING)) | Q(
        status=DistributionStatus.RUNNING, lease_until__lt=now
    )
    tree_seconds = dist.tree.deadline_seconds if dist.tree else 0.0
    deadline = dist.deadline_at or now + timedelta(seconds=tree_seconds)
    if dist.status == DistributionStatus.WAITING and dist.time_left_seconds is not None:
        # Back from a buyer's callback: the time spent waiting for it does not count.
        deadline = now + timedelta(seconds=dist.time_left_seconds)
    lease = max(deadline, now) + LEASE_MARGIN
    claimed = (
        Distribution.objects.filter(pk=dist_id, attempt=dist.attempt)
        .filter(claimable)
        .update(
            status=DistributionStatus.RUNNING,
            attempt=dist.attempt + 1,
            lease_until=lease,
            next_check_at=lease,
            started_at=dist.started_at or now,
            deadline_at=deadline,
            time_left_seconds=None,
        )
    )
    if not claimed:
        return None
    dist.refresh_from_db()
    return dist


def distribution_run(*, distribution_id: int, budget_seconds: float | None = None) -> Distribution:
    """Claim and drive one distribution until it finishes, waits on a buyer's callback,
    or this call's ``budget_seconds`` runs out (then it is handed to a worker). Running
    it twice, or while another driver has it, changes nothing."""
    dist = _claim(distribution_id)
    if dist is None:
        return Distribution.objects.get(pk=distribution_id)
    lead = _lead_read(dist.lead_id)
    if lead is None:
        raise Lead.DoesNotExist(f"lead {dist.lead_id}")
    return _drive(dist, lead, budget_seconds=budget_seconds, fresh=False)


def _drive(
    dist: Distribution, lead: Lead, *, budget_seconds: float | None, fresh: bool,
    states: dict[int, tuple[str, int] | None] | None = None,
) -> Distribution:  # fmt: skip
    """Drive a distribution this thread has claimed; returns it as it now is. ``states``:
    integrations' (status, config_version) read just now (its first tier's)."""
    with structlog.contextvars.bound_contextvars(lead_id=lead.pcid, distribution_id=dist.pk):
        driver = _Driver(dist=dist, lead=lead, budget_seconds=budget_seconds, fresh=fresh)
        if states:
            driver._states.update(states)
        driver.drive()
    if driver.finished:
        return driver.dist  # as _finish wrote it: no need to read it back
    return Distribution.objects.get(pk=dist.pk)


def _distribution_create_claimed(
    *, lead: Lead
) -> tuple[Distribution, dict[int, tuple[str, int] | None]] | None:
    """The lead's distribution created already claimed by this driver (running, attempt
    1, its lease): what distribution_ensure + _claim would leave, in one INSERT, with
    the state of its first tier's integrations read by the same statement (what the
    tier would read as it starts). None when it exists already (the unique lead key) or
    no tree serves the lead: the caller takes the general path. The lead was read with
    its workspace just now."""
    tree = tree_for_lead(lead, workspace_fresh=True)
    if tree is None:
        return None
    snapshot = tree_cache.tree_snapshot(lead.workspace, tree.pk)
    first_tier = snapshot.tiers[0].tier_offers if snapshot and snapshot.tiers else ()
    integration_ids = sorted({to.offer.integration_id for to in first_tier or ()})
    states: dict[int, tuple[str, int] | None] = {}
    now = timezone.now()
    deadline = now + timedelta(seconds=tree.deadline_seconds)
    lease = max(deadline, now) + LEASE_MARGIN
    dist = Distribution(
        workspace_id=lead.workspace_id,
        lead=lead,
        tree=tree,
        is_test=lead.is_test,
        status=DistributionStatus.RUNNING,
        attempt=1,
        lease_until=lease,
        next_check_at=lease,
        started_at=now,
        deadline_at=deadline,
    )
    try:
        # In autocommit a failed INSERT costs nothing; inside a transaction it needs a
        # savepoint.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            if connection.vendor == "postgresql":
                states = _distribution_insert(dist, integration_ids)
            else:
                dist.save(force_insert=True)
    except IntegrityError:
        return None
    return dist, states


_DIST_FIELDS = [f for f in Distribution._meta.concrete_fields if not f.primary_key]
_DIST_PREP = integration_services.insert_prep(_DIST_FIELDS, defaults_set=True)


def _distribution_insert(
    dist: Distribution, integration_ids: list[int] = ()
) -> dict[int, tuple[str, int] | None]:  # fmt: skip
    """INSERT a new distribution, its id set: what ``save(force_insert=True)`` writes (no
    signal listens to it), by a statement built once per process and values prepared as
    the ORM prepares them (integration_services.insert_values): the ORM's save was a
    tenth of the CPU the ping tree spent on a lead's own rows (bench-pingtree). Returns
    the (status, config_version) of these integrations, read by the same statement (None
    for one that is gone)."""
    sql = _sql_texts.get("dist_insert")
    if sql is None:
        q = connection.ops.quote_name
        columns = ", ".join(q(f.column) for f in _DIST_FIELDS)
        values = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in _DIST_FIELDS)
        sql = _sql_texts["dist_insert"] = (
            f"WITH d AS (INSERT INTO {q(Distribution._meta.db_table)} ({columns}) "  # noqa: S608
            f"VALUES ({values}) RETURNING {q('id')}) "
            f"SELECT d.id, i.{q('id')}, i.{q('status')}, i.{q('config_version')} FROM d "
            f"LEFT JOIN {q(Integration._meta.db_table)} AS i ON i.{q('id')} = ANY(%b::bigint[])"
        )
    params = integration_services.insert_values(dist, _DIST_PREP)
    params.append(list(integration_ids))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        fetched = cursor.fetchall()
    dist.pk = fetched[0][0]
    dist._state.adding = False
    dist._state.db = connection.alias
    states: dict[int, tuple[str, int] | None] = dict.fromkeys(integration_ids)
    for _dist_id, integration_id, status, version in fetched:
        if integration_id is not None:
            states[integration_id] = (status, version)
    return states


_LEAD_RELATIONS = ("workspace", "partner", "structure")


@functools.cache
def _lead_query() -> tuple[Any, ...]:
    """The statement of ``Lead.objects.select_related(*_LEAD_RELATIONS).filter(pk=...)``
    and what the ORM needs to build its objects from a row, taken from Django's own
    compiler once per process: compiling that three-join query cost ~3 ms of CPU for
    every lead distributed, ~0.1 ms running it (bench-pingtree)."""
    query = Lead.objects.select_related(*_LEAD_RELATIONS).filter(pk=-1).query
    compiler = query.get_compiler(DEFAULT_DB_ALIAS)
    sql, params = compiler.as_sql()
    if list(params) != [-1]:
        raise RuntimeError(f"unexpected parameters of the lead query: {params}")
    select, klass_info = compiler.select, compiler.klass_info
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    init_list = [column[0].target.attname for column in select[start:end]]
    populators = get_related_populators(klass_info, select, DEFAULT_DB_ALIAS)
    converters = compiler.get_converters([column[0] for column in select])
    return compiler, sql, start, end, init_list, populators, converters


def _lead_read(lead_id: int) -> Lead | None:
    """The lead with its workspace, partner and structure, as the ORM builds them with
    ``select_related`` (same objects, same values, its converters applied), read with
    the statement compiled once (_lead_query). The workspace's configuration version
    is then current: the tree snapshot is chosen by it."""
    compiler, sql, start, end, init_list, populators, converters = _lead_query()
    row = step_cache.fetch_one(sql, [lead_id])
    if row is None:
        return None
    if converters:
        row = next(iter(compiler.apply_converters([row], converters)))
    lead = Lead.from_db(DEFAULT_DB_ALIAS, init_list, row[start:end])
    for populator in populators:
        populator.populate(row, lead)
    return lead


def distribution_for_lead_run(*, lead_id: int) -> Distribution | None:
    """The task's entry point by lead: ensure and drive. An approved lead is distributed;
    a pending one only through the refusal policy's ping tree gate; a rejected one when
    the policy processes refused leads (without paying the partner)."""
    lead = _lead_read(lead_id)
    if lead is None:
        return None
    if lead.status == LeadStatus.REJECTED:
        if not refusal_policy_process_refused(lead.workspace_id):
            return None
    elif lead.status != LeadStatus.APPROVED:
        return Distribution.objects.filter(lead_id=lead_id).first()
    created = _distribution_create_claimed(lead=lead)
    if created is not None:
        dist, states = created
        return _drive(dist, lead, budget_seconds=None, fresh=True, states=states)
    dist = distribution_ensure(lead=lead)
    return distribution_run(distribution_id=dist.pk)


@dataclass
class _Candidate:
    offer: Offer
    priority: int
    weight: int
    result: OfferResult | None = None
    value: Decimal | None = None  # what a sale would earn, for ranking
    ping: CallOutcome | None = None


def _rank(cand: _Candidate) -> tuple[Any, ...]:
    """Who is posted first: the highest value, then priority, then the offer."""
    return (-cand.value, cand.priority, cand.offer.pk)


class _Stop(Exception):
    """This driver must stop: our claim was lost, or we handed off or parked."""


class _Driver:
    """Walks one claimed distribution through its tree."""

    def __init__(
        self, *, dist: Distribution, lead: Lead, budget_seconds: float | None, fresh: bool = False
    ) -> None:
        self.dist = dist
        self.lead = lead
        self.tree = dist.tree
        self.deadline = dist.deadline_at or timezone.now()
        now = timezone.now()
        self.until = (
            min(self.deadline, now + timedelta(seconds=budget_seconds))
            if budget_seconds is not None
            else self.deadline
        )
        self.tz = lead.workspace.timezone
        self._layer: dict[str, Any] | None = None
        # A distribution this driver has just created has no result rows yet.
        self.results: dict[int, OfferResult] = (
            {} if fresh else {r.offer_id: r for r in OfferResult.objects.filter(distribution=dist)}
        )
        # The tree's tiers and offers as of the workspace's configuration version, read
        # with the lead (None: the tree is no longer active; then read as it is now).
        # Every caller of _drive reads the lead with its workspace just before.
        self.snapshot = tree_cache.tree_snapshot(lead.workspace, dist.tree_id)
        self.finished = False
        self.external_checks: dict[str, bool] = {}
        self._ping_cache: dict[int, bool] = {}
        self._states: dict[int, tuple[str, int] | None] = {}
        # The integration whose state the last row insert read with it, for its post.
        self._state_fresh: int | None = None
        # A record written behind (_defer): at most one, out by the next statement.
        self._behind: _Behind | None = None
        # A waterfall's rows claimed ahead (by offer) and the offer to claim next.
        self._ahead: dict[int, OfferResult] = {}
        self._claim_next: tuple[Offer, Tier] | None = None
        self._opened = False  # the last _open inserted its row (not found it)
        # Set while a sale would end the tree (one sale at most, nothing after it): the
        # reason for the bids then left unposted ("": the finish's own).
        self._ends_with_sale: str | None = None

    # -- the walk ------------------------------------------------------------------------

    def drive(self) -> None:
        try:
            if self._settle_in_flight():
                return
            if self.dist.sold_count == 0:
                for tier, tier_offers in self._tiers():
                    if self._time_up():
                        break
                    # Only this driver's attempt can sell (every sale is conditional on
                    # it), and _sale counts each in memory: no need to read them back.
                    self._tier_run(tier, tier_offers)
                    if self.dist.sold_count:
                        break  # the first tier that sells ends the tree
            if (
                self.dist.sold_count == 0
                and _seconds_left(self.deadline) > 0
                and self._budget_over()
            ):
                self._hand_off()
                return
            self._finish()
        except _Stop:
            return
        finally:
            self._behind_flush()

    # -- records written behind -----------------------------------------------------------
    #
    # A rejected post's record (and an auction's outbid rows) need not be committed before
    # the driver's next statement: nothing reads them in between, and that statement is
    # the next post's claim or the finish, which carry the record (one round trip each
    # instead of two). Any other statement on this thread's connection first writes the
    # record by itself (an execute wrapper, installed only while a record waits), and so
    # does the end of the drive, so no statement of this driver sees the row unrecorded.
    # Only records wait, never a claim: nothing is sent on its strength. Kill -9 between
    # the answer and that next statement leaves the row in flight, as it would a moment
    # earlier: the next driver settles it as an error (nothing sold, nothing sent twice).

    def _defer(self, behind: _Behind) -> None:
        if self._behind is not None:
            self._behind_flush()
        self._behind = behind
        connection.execute_wrappers.append(self._behind_guard)

    def _behind_take(self) -> _Behind | None:
        """The waiting record, now the caller's to write in its own statement."""
        behind, self._behind = self._behind, None
        if behind is not None:
            with contextlib.suppress(ValueError):
                connection.execute_wrappers.remove(self._behind_guard)
        return behind

    def _behind_guard(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        self._behind_flush()
        return execute(sql, params, many, context)

    def _behind_flush(self) -> None:
        behind = self._behind_take()
        if behind is None:
            return
        try:
            behind.write()
        except Exception:
            # Every call is logged, whatever became of recording its answer.
            if behind.log is not None and behind.log.pk is None:
                with contextlib.suppress(Exception):
                    integration_services.log_write(behind.log)
            raise

    def _behind_holds(self, entry: Any) -> bool:
        return self._behind is not None and self._behind.log is entry

    def _tiers(self) -> list[tuple[Tier, tuple[TierOffer, ...] | None]]:
        """The tree's tiers in order, each with its offers when the snapshot has them
        (None: the tier reads them itself)."""
        if self.snapshot is not None:
            return [(t.tier, t.tier_offers) for t in self.snapshot.tiers]
        if self.tree is None:
            return []
        tiers = Tier.objects.filter(tree=self.tree).order_by("position", "id")
        return [(tier, None) for tier in tiers]

    def _time_up(self) -> bool:
        return _seconds_left(self.until) <= MIN_CALL_SECONDS

    def _budget_over(self) -> bool:
        return self.until < self.deadline and _seconds_left(self.until) <= MIN_CALL_SECONDS

    def _hand_off(self) -> None:
        """This call's budget is over but the tree's is not: a worker continues."""
        from pingtree.tasks import distribution_run_task

        handed = Distribution.objects.filter(
            pk=self.dist.pk, attempt=self.dist.attempt, status=DistributionStatus.RUNNING
        ).update(
            status=DistributionStatus.PENDING,
            lease_until=None,
            next_check_at=timezone.now() + PENDING_GRACE,
        )
        if handed:
            dist_id = self.dist.pk
            transaction.on_commit(lambda: distribution_run_task.delay(dist_id), robust=True)

    def _alive(self) -> None:
        """Stop before calling a buyer once our lease is over (another driver may have the
        lead). No query: the lease is ours until lease_until; sales and the finish are
        conditional on our attempt anyway."""
        if self.dist.lease_until is not None and timezone.now() >= self.dist.lease_until:
            log.warning("pingtree.lease_over", attempt=self.dist.attempt)
            raise _Stop

    # -- tiers ---------------------------------------------------------------------------

    def _tier_until(self, tier: Tier) -> datetime:
        until = self.until
        if tier.deadline_seconds:
            started = min(
                (r.created_at for r in self.results.values() if r.tier_id == tier.pk),
                default=timezone.now(),
            )
            until = min(until, started + timedelta(seconds=tier.deadline_seconds))
        return until

    def _tier_run(self, tier: Tier, tier_offers: tuple[TierOffer, ...] | None = None) -> None:
        until = self._tier_until(tier)
        self._tier_resume(tier, until)
        if self.dist.sold_count:
            return
        if tier_offers is None:
            tier_offers = tuple(
                tier.tier_offers.select_related("offer__integration")
                .prefetch_related("offer__caps")
                .order_by("priority", "id")
            )
        candidates = [
            # The snapshot's offers are shared by every driver of this process: each
            # works on its own copy (the health record and a pause change it).
            _Candidate(offer=tree_cache.offer_copy(to.offer), priority=to.priority,
                       weight=to.weight)
            for to in tier_offers
            if to.offer_id not in self.results
        ]  # fmt: skip
        eligible: list[_Candidate] = []
        for cand in candidates:
            why = self._ineligible(cand.offer, tier)
            if why:
                self._skip(cand.offer, tier, why)
            else:
                eligible.append(cand)
        if not eligible:
            return
        if tier.mode == TierMode.WEIGHTED:
            eligible = self._weighted_order(eligible)
        if tier.mode in (TierMode.AUCTION, TierMode.MULTI_SALE):
            self._auction(tier, eligible, until, max_sales=tier.max_sales
                          if tier.mode == TierMode.MULTI_SALE else 1)  # fmt: skip
        else:
            self._waterfall(tier, eligible, until)

    def _tier_resume(self, tier: Tier, until: datetime) -> None:
        """Post the valid bids a previous driver of this tier left unposted (it parked on
        a buyer's callback, or died), highest first, as the auction would have."""
        rows = [
            r
            for r in self.results.values()
            if r.tier_id == tier.pk
            and r.finished_at is None
            and r.stage == ResultStage.PINGED
            and r.ping_status == ResultStatus.ACCEPTED
        ]
        if not rows:
            return
        offers = {
            o.pk: o
            for o in Offer.objects.filter(pk__in=[r.offer_id for r in rows])
            .select_related("integration")
            .prefetch_related("caps")
        }
        variables = dict(
            ScenarioRun.objects.filter(pk__in=[r.ping_run_id for r in rows if r.ping_run_id])
            .values_list("pk", "variables")
        )  # fmt: skip
        cands = []
        for row in rows:
            offer = offers[row.offer_id]
            cand = _Candidate(offer=offer, priority=row.position, weight=100, result=row)
            cand.value = self._expected_value(offer, row.bid)
            cand.ping = CallOutcome("accepted", variables=variables.get(row.ping_run_id) or {})
            cands.append(cand)
        max_sales = tier.max_sales if tier.mode == TierMode.MULTI_SALE else 1
        self._post_ranked(cands, until, max_sales=max_sales)

    def _weighted_order(self, eligible: list[_Candidate]) -> list[_Candidate]:
        """A random order drawn by weight (each draw picks an offer with probability
        weight / remaining weights); weight 0 comes last. Seeded by the lead, so a re-drive
        walks the same order."""
        rng = random.Random(self.lead.pcid)  # noqa: S311  (not security)
        keyed = [
            (rng.random() ** (1.0 / c.weight) if c.weight > 0 else -1.0 + rng.random() / 10, c)
            for c in eligible
        ]
        return [c for _, c in sorted(keyed, key=lambda kc: kc[0], reverse=True)]

    def _waterfall(self, tier: Tier, eligible: list[_Candidate], until: datetime) -> None:
        self._ends_with_sale = ""  # the first sale ends the walk, and the tree
        try:
            self._waterfall_walk(tier, eligible, until)
        finally:
            self._ends_with_sale = None
            # A claim made ahead for a post that will not happen (sold, a callback to
            # wait for, the driver stopped) is taken back: the offer was never asked.
            self._claim_next = None
            for row in list(self._ahead.values()):
                self._unclaim(row)

    def _claims_ahead(self, offer: Offer) -> bool:
        """The offer is posted straight away when its turn comes (a fixed price, no
        ping, no cap to reserve), so its row may be claimed while the post before it is
        in flight (_post_direct): the claim is then off the path between two posts."""
        return (
            connection.vendor == "postgresql"
            and offer.price_model == PriceModel.FIXED
            and not self._caps_to_count(offer)
            and offer.pk not in self.results
        )

    def _claim_ahead(self, future: Future) -> None:
        """While a post is in flight: claim the next offer's row of a waterfall (posted,
        in flight), with the record waiting behind and the state of its integration (what
        its post reads), unless the answer is in already; with no row to claim, write
        the record waiting behind (the last post's), so the answer's is the only one
        left to write after it."""
        nxt, self._claim_next = self._claim_next, None
        if nxt is None and self._behind is None:
            return
        with contextlib.suppress(FutureTimeout):
            future.result(timeout=CLAIM_AHEAD_AFTER_SECONDS)
        if future.done():
            return
        if nxt is None:
            self._behind_flush()
            return
        offer, tier = nxt
        if offer.pk in self.results:
            return
        row = self._open(offer, tier, posting=True)
        if self._opened:
            self._ahead[offer.pk] = row

    def _unclaim(self, row: OfferResult | None) -> None:
        """Take back a row claimed ahead and not posted: deleted (while still an
        untouched claim) with the driver's next statement, as if never opened."""
        if row is None:
            return
        self._ahead.pop(row.offer_id, None)
        self.results.pop(row.offer_id, None)
        if self._state_fresh == row.offer.integration_id:
            self._state_fresh = None
        self._defer(_Behind([row], {}, delete=True))

    def _waterfall_walk(self, tier: Tier, eligible: list[_Candidate], until: datetime) -> None:
        for i, cand in enumerate(eligible):
            ahead = self._ahead.pop(cand.offer.pk, None)
            if _seconds_left(until) <= MIN_CALL_SECONDS:
                self._unclaim(ahead)
                self._skip(cand.offer, tier, self._deadline_reason(until))
                continue
            if self.dist.sold_count and not self._may_sell(cand.offer, 1):
                self._unclaim(ahead)
                self._skip(cand.offer, tier, "the lead is sold already")
                continue
            # _ping_capable reads the state of an integration this driver has not seen:
            # then that read is the ping's (no second one a moment later).
            state_read_now = cand.offer.integration_id not in self._states
            pings = (
                cand.offer.price_model != PriceModel.FIXED
                and cand.offer.integration_id in self._ping_capable([cand.offer])
            )
            # Posted at once, with no cap to reserve first: the row is written "posted"
            # (in flight) from the start, one statement less before the call; claimed
            # already while the post before it was in flight (_claim_ahead).
            result = ahead or self._open(
                cand.offer, tier,
                posting=not pings and not self._caps_to_count(cand.offer),
            )  # fmt: skip
            following = eligible[i + 1].offer if i + 1 < len(eligible) else None
            self._claim_next = (
                (following, tier) if following and self._claims_ahead(following) else None
            )
            if pings:
                started = time.monotonic()
                call, future, variables = self._ping_submit(
                    cand.offer, until, fresh=not state_read_now
                )
                seconds = min(_seconds_left(until), cand.offer.timeout_seconds)
                outcome, run_id = self._ping_finish(
                    call, future, started, timeout=seconds,
                    cancel_reason=self._cut_reason(cand, until), variables=variables,
                )  # fmt: skip
                if not self._ping_settle(cand, result, outcome, run_id):
                    continue
            if self._post(cand, result, until):
                return

    def _auction(
        self, tier: Tier, eligible: list[_Candidate], until: datetime, *, max_sales: int
    ) -> None:
        capable = self._ping_capable([c.offer for c in eligible])
        pinged: list[tuple[_Candidate, _PingCall, Future, float, dict[str, Any]]] = []
        taken = _Countdown(sum(c.offer.integration_id in capable for c in eligible))
        for cand in eligible:
            if cand.offer.integration_id in capable:
                started = time.monotonic()
                call, future, variables = self._ping_submit(
                    cand.offer, until, defer_log=True, started=taken
                )
                pinged.append((cand, call, future, started, variables))
            else:
                cand.value = self._expected_value(cand.offer, None)
        # The result rows are written while the pings are on their way (this thread would
        # only wait): a driver lost in between leaves no row, so its successor pings
        # again, which sells nothing; nothing is posted before the rows exist. Written
        # once every ping is in a pool thread's hands (or the earliest could have timed
        # out): the pings go out first, the rows are not needed before the answers.
        if pinged:
            first_deadline = min(cand.offer.timeout_seconds for cand, *_ in pinged)
            taken.done.wait(min(first_deadline, _seconds_left(until)))
        self._open_many([c.offer for c in eligible], tier)
        for cand in eligible:
            cand.result = self.results[cand.offer.pk]
        # Each ping may take its offer's timeout, none more than the tier's time. Waited
        # for all at once until every one has answered or passed its own deadline (one
        # wake-up of this thread in the usual case, not one per answer while the pool
        # threads read theirs), then each is taken (at once, or cut at its deadline).
        pending = {
            future: started + min(cand.offer.timeout_seconds, _seconds_left(until))
            for cand, _call, future, started, _variables in pinged
        }
        while pending:
            now = time.monotonic()
            pending = {f: d for f, d in pending.items() if d > now and not f.done()}
            if pending:
                futures_wait(list(pending), timeout=min(pending.values()) - now)
        for cand, call, future, started, variables in pinged:
            own = min(cand.offer.timeout_seconds, _seconds_left(until))
            outcome, run_id = self._ping_finish(
                call, future, started,
                timeout=max(own - (time.monotonic() - started), 0),
                cancel_reason=self._cut_reason(cand, until), variables=variables,
            )  # fmt: skip
            self._ping_settle(cand, cand.result, outcome, run_id, write=False)
        postable = [
            c for c in eligible if c.value is not None and c.result.status == ResultStatus.PENDING
        ]
        first = min(postable, key=_rank, default=None)
        if (
            first is not None
            and first.result.stage == ResultStage.PINGED
            and not (self.dist.sold_count and not self._may_sell(first.offer, max_sales))
            and _seconds_left(until) > MIN_CALL_SECONDS
            and not self._caps_to_count(first.offer)
        ):
            # The best bid is posted next with no cap to reserve: it is written in
            # flight (posted) with the answers, one statement less before its post, and
            # its integration's state for that post is read with them.
            first.result.stage = ResultStage.POSTED
        # Every answer, and the log rows of the calls, in one statement, before anything
        # is posted.
        self._pings_write(
            [cand.result for cand, *_ in pinged],
            [cand.ping.log_entry if cand.ping else None for cand, *_ in pinged],
            state_of=(
                first.offer.integration_id
                if first is not None and first.result.stage == ResultStage.POSTED
                else None
            ),
        )
        self._post_ranked(
            [
                c
                for c in eligible
                if c.value is not None and c.result.status == ResultStatus.PENDING
            ],
            until,
            max_sales=max_sales,
        )

    def _post_ranked(self, cands: list[_Candidate], until: datetime, *, max_sales: int) -> None:
        """Post to the highest value first, then the next, up to ``max_sales`` sales."""
        ranked = sorted(cands, key=_rank)
        losers: list[OfferResult] = []
        outbid = "outbid: the lead went to a higher bid"
        if max_sales == 1:
            self._ends_with_sale = outbid  # the first sale ends the tree
        try:
            sales = self._post_ranked_walk(ranked, until, max_sales, losers)
        finally:
            self._ends_with_sale = None
        if losers and not self.finished:  # (a sale that ended the tree closed them)
            # One statement for every bidder the sale left behind.
            why = outbid if sales else "the lead is sold"
            values = {"status": ResultStatus.OUTBID, "reason": why, "finished_at": timezone.now()}
            if connection.vendor == "postgresql":
                self._defer(_Behind(losers, values))  # with the finish, usually
            else:
                _results_set([r.pk for r in losers], values)
            for row in losers:
                for key, value in values.items():
                    setattr(row, key, value)

    def _post_ranked_walk(
        self, ranked: list[_Candidate], until: datetime, max_sales: int,
        losers: list[OfferResult],
    ) -> int:  # fmt: skip
        """Post in rank order; the bids left unposted in ``losers``; the sales made."""
        sales = 0
        for cand in ranked:
            if sales >= max_sales or (
                self.dist.sold_count and not self._may_sell(cand.offer, max_sales)
            ):
                losers.append(cand.result)
                continue
            if _seconds_left(until) <= MIN_CALL_SECONDS:
                self._result_update(
                    cand.result, status=ResultStatus.TIMEOUT,
                    reason=f"not posted: {self._deadline_reason(until)}", finished=True,
                    **({"stage": ResultStage.PINGED} if cand.result.ping_status else {}),
                )  # fmt: skip
                continue
            if self._post(cand, cand.result, until):
                sales += 1
                if self.dist.is_exclusive_sold:
                    max_sales = sales
        return sales

    def _cut_reason(self, cand: _Candidate, until: datetime) -> str:
        if cand.offer.timeout_seconds <= _seconds_left(until):
            return f"the offer's timeout ({cand.offer.timeout_seconds:g} s) passed"
        return self._deadline_reason(until)

    def _deadline_reason(self, until: datetime) -> str:
        if until >= self.deadline:
            return "the ping tree's deadline passed"
        if until >= self.until and self.until < self.deadline:
            return "the time budget ran out"
        return "the tier's deadline passed"

    # -- eligibility ---------------------------------------------------------------------

    def _ineligible(self, offer: Offer, tier: Tier) -> str:
        if offer.status != OfferStatus.ACTIVE:
            why = f"offer is {offer.get_status_display().lower()}"
            return f"{why}: {offer.pause_reason}" if offer.pause_reason else why
        integration: Integration = offer.integration
        if integration.status == "disabled":
            return "the offer's integration is disabled"
        if integration.status == "test" and not self.lead.is_test:
            return "the offer's integration is in test mode (test leads only)"
        if offer.sale_mode == SaleMode.EXCLUSIVE and tier.mode == TierMode.MULTI_SALE:
            if self.dist.sold_count:
                return "exclusive offer: the lead is sold already"
        if self.dist.is_exclusive_sold:
            return "the lead is sold exclusively"
        if not self.lead.is_test:
            full = self._cap_full(offer)
            if full:
                return full
        return self._filters(offer)

    def _cap_full(self, offer: Offer) -> str:
        """A read-only look before pinging (the reservation before posting decides)."""
        now = timezone.now()
        for cap in offer.caps.all():
            if not cap.is_active:
                continue
            start = caps_service.period_start(period=cap.period, now=now, tz_name=self.tz)
            used = CapCounter.objects.filter(cap=cap, period_start=start).values_list(
                "used", flat=True
            ).first() or Decimal("0")
            step = Decimal("1") if cap.metric != CapMetric.REVENUE else Decimal("0")
            if used + step > cap.limit or (step == 0 and used >= cap.limit):
                label = CapMetric(cap.metric).label.lower()
                return f"cap reached: {cap.limit.normalize():f} {label} per {cap.period}"
        return ""

    def _filters(self, offer: Offer) -> str:
        from pingtree import filters

        definition = offer.filters or {}
        if not definition:
            return ""
        checks: dict[str, bool] = {}
        for integration_id in filters.external_checks_needed(definition):
            checks[str(integration_id)] = self._external_check(integration_id)
        result = filters.filters_evaluate(
            definition,
            lead_values=self.lead.data,
            partner_id=self.lead.partner_id,
            now=timezone.now(),
            history=offer_history(offer=offer, lead=self.lead, exclude_distribution=self.dist.pk)
            if filters.history_lookback(definition)
            else None,
            external_checks=checks,
        )
        return "" if result.passed else f"filters: {result.reason}"

    def _external_check(self, integration_id: int) -> bool:
        key = str(integration_id)
        if key in self.external_checks:
            return self.external_checks[key]
        integration = Integration.objects.filter(
            pk=integration_id, workspace_id=self.lead.workspace_id
        ).first()
        ok = False
        seconds = min(_seconds_left(self.until), 10.0)
        if integration is not None and seconds > MIN_CALL_SECONDS:
            try:
                run = engine.run_start(
                    integration=integration, lead=self.lead, meaning="post",
                    variables={"CHECK": "1"}, deadline_seconds=seconds,
                )  # fmt: skip
            except engine.EngineError:
                run = None
            if run is not None:
                future = POOL.submit(_drive_run, run.pk, seconds)
                outcome = self._call_finish(run, future, time.monotonic(), timeout=seconds)
                ok = outcome.kind == "accepted"
        self.external_checks[key] = ok
        return ok

    def _may_sell(self, offer: Offer, max_sales: int) -> bool:
        if self.dist.is_exclusive_sold:
            return False
        if offer.sale_mode == SaleMode.EXCLUSIVE:
            return self.dist.sold_count == 0
        return self.dist.sold_count < max_sales

    # -- result rows ---------------------------------------------------------------------

    def _skip(self, offer: Offer, tier: Tier, reason: str) -> None:
        self._open(offer, tier, skipped_reason=reason)

    def _open(
        self, offer: Offer, tier: Tier, *, skipped_reason: str | None = None,
        posting: bool = False,
    ) -> OfferResult:  # fmt: skip
        """The offer's result row in this distribution (one per offer); ``posting``: it
        is posted next, nothing before (written in flight: stage posted)."""
        skipped = skipped_reason is not None
        now = timezone.now()
        self._opened = False
        row = OfferResult(
            workspace_id=self.dist.workspace_id,
            distribution=self.dist,
            offer=offer,
            tier=tier,
            position=len(self.results),
            stage=ResultStage.POSTED if posting and not skipped else ResultStage.SKIPPED,
            status=ResultStatus.SKIPPED if skipped else ResultStatus.PENDING,
            reason=(skipped_reason or "")[:500],
            is_test=self.lead.is_test,
            is_exclusive=offer.sale_mode == SaleMode.EXCLUSIVE,
            finished_at=now if skipped else None,
        )
        try:
            # In autocommit a failed INSERT costs nothing; inside a transaction (tests) it
            # needs a savepoint.
            with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
                if connection.vendor == "postgresql" and not skipped:
                    # The lean statement: nothing to say yet. A row posted next reads the
                    # integration's state for that post in the same round trip, and the
                    # statement writes the record waiting behind (the last answer).
                    integration_id = offer.integration_id if posting else None
                    behind = self._behind_take()
                    try:
                        state = _results_open([row], state_of=integration_id, behind=behind)
                    except BaseException:
                        if behind is not None:  # not written: it waits again
                            self._defer(behind)
                        raise
                    self._state_fresh = integration_id
                    if integration_id is not None:
                        self._states[integration_id] = state
                else:
                    _results_insert([row])
            self._opened = True
        except IntegrityError:
            row = OfferResult.objects.get(distribution=self.dist, offer=offer)
        self.results[offer.pk] = row
        return row

    def _open_many(self, offers: list[Offer], tier: Tier) -> None:
        """Result rows for an auction's offers in one statement."""
        rows = [
            OfferResult(
                workspace_id=self.dist.workspace_id,
                distribution=self.dist,
                offer=offer,
                tier=tier,
                position=len(self.results) + i,
                stage=ResultStage.SKIPPED,
                status=ResultStatus.PENDING,
                is_test=self.lead.is_test,
                is_exclusive=offer.sale_mode == SaleMode.EXCLUSIVE,
            )  # fmt: skip
            for i, offer in enumerate(offers)
        ]
        try:
            with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
                if connection.vendor == "postgresql":
                    _results_open(rows)
                else:
                    _results_insert(rows)
        except IntegrityError:
            for offer in offers:
                self._open(offer, tier)
            return
        for row in rows:
            self.results[row.offer_id] = row

    def _states_read(self, integration_ids: set[int]) -> None:
        """(status, config_version) of these integrations, read now in one statement
        (what request_run would read per call: an operator's change applies to the next
        call); their scenario graphs come from the per-process cache under that version."""
        if not integration_ids:
            return
        global _STATES_SQL
        if _STATES_SQL is None:
            q = connection.ops.quote_name
            _STATES_SQL = (
                f"SELECT {q('id')}, {q('status')}, {q('config_version')} "  # noqa: S608
                f"FROM {q(Integration._meta.db_table)} WHERE {q('id')} = ANY(%b::bigint[])"
            )
        ids = sorted(integration_ids)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(_STATES_SQL, [ids])
                rows = cursor.fetchall()
        else:
            rows = list(
                Integration.objects.filter(pk__in=ids).values_list("id", "status", "config_version")
            )
        for integration_id in ids:
            self._states[integration_id] = None
        for integration_id, status, version in rows:
            self._states[integration_id] = (status, version)

    def _direct(self, offer: Offer, meaning: str, *, fresh: bool) -> Direct | None:
        """The request to call directly for this offer's ``meaning`` call, with the
        integration's state (read now when ``fresh``, else the tier's read)."""
        integration_id = offer.integration_id
        if self._state_fresh == integration_id:
            # Read by the statement that opened this post's row, a moment ago (once).
            self._state_fresh = None
        elif fresh or integration_id not in self._states:
            self._states[integration_id] = step_cache.integration_state(integration_id)
        state = self._states[integration_id]
        step = _direct_request(integration_id, meaning, state)
        return (step, state) if step is not None and state is not None else None

    def _ping_capable(self, offers: list[Offer]) -> set[int]:
        """Integration ids (of these offers) that have a ping start: their start
        elements, or, for an integration without a scenario yet (its default scenario is
        built on its first run), a request whose step meaning is ping."""
        wanted = {o.integration_id for o in offers} - set(self._ping_cache)
        if wanted:
            missing = wanted - set(self._states)
            self._states_read(missing)
            with_starts: set[int] = set()
            for integration_id in wanted:
                state = self._states.get(integration_id)
                if state is None:
                    continue
                graph = graph_get(integration_id, version=state[1])
                for element in graph.elements.values():
                    if element.kind == Element.Kind.START:
                        with_starts.add(integration_id)
                        if element.meaning == "ping":
                            self._ping_cache[integration_id] = True
            bare = wanted - with_starts
            if bare:
                for integration_id in RequestStep.objects.filter(
                    integration_id__in=bare, meaning="ping"
                ).values_list("integration_id", flat=True):
                    self._ping_cache[integration_id] = True
            for integration_id in wanted:
                self._ping_cache.setdefault(integration_id, False)
        return {o.integration_id for o in offers if self._ping_cache[o.integration_id]}

    def _result_update(
        self, row: OfferResult, *, finished: bool = False, log: Any = None, behind: bool = False,
        **values: Any,
    ) -> OfferResult:  # fmt: skip
        """Update the row (and memory); ``behind``: written behind (_defer), on PostgreSQL,
        with ``log``: the call's deferred log row (deferred on PostgreSQL only), written
        by the same statement and linked as the row's post_log."""
        if "reason" in values:
            values["reason"] = str(values["reason"])[:500]
        if finished:
            values["finished_at"] = timezone.now()
        if behind and connection.vendor == "postgresql":
            if log is not None:
                values.pop("post_log_id", None)
            self._defer(_Behind([row], values, log))
        else:
            if log is not None:
                raise ValueError("a deferred log row is written behind (behind=True)")
            _results_set([row.pk], values)
        for key, value in values.items():
            setattr(row, key, value)
        return row

    # -- calls ---------------------------------------------------------------------------

    def _lead_layer(self) -> dict[str, Any]:
        """The lead's fields and system values, the same for each of its calls (the
        clock's values are read per call): taken once per distribution (the lead is not
        changed in memory while it is driven)."""
        if self._layer is None:
            self._layer = lead_layer_of(self.lead)
        return self._layer

    def _variables(self, offer: Offer, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        values = {
            "OFFER_ID": str(offer.pk),
            "ADVERTISER_ID": str(offer.advertiser_id),
            "DISTRIBUTION_ID": str(self.dist.pk),
        }
        if extra:
            values.update(extra)
        return values

    def _post_start(
        self, offer: Offer, row: OfferResult, until: datetime, variables: dict[str, Any]
    ) -> tuple[ScenarioRun | None, Future | None]:
        """Start the offer's post run (pings start on the pool: _ping_submit) and drive
        it on the pool; (None, None) when it cannot start (the row says why)."""
        seconds = min(_seconds_left(until), offer.timeout_seconds)
        try:
            # A post may park on a buyer's callback longer than the tree's deadline
            # (blocking webhook): no run deadline; the driver's wait cuts it and cancels
            # it if still unfinished.
            run = engine.run_start(
                integration=offer.integration, lead=self.lead, meaning="post",
                variables=self._variables(offer, variables),
            )  # fmt: skip
        except engine.EngineError as exc:
            self._result_update(
                row, stage=ResultStage.POSTED, status=ResultStatus.ERROR, reason=str(exc),
                finished=True, post_status=ResultStatus.ERROR,
            )  # fmt: skip
            return None, None
        self._result_update(row, stage=ResultStage.POSTED, post_run=run)
        return run, POOL.submit(_drive_run, run.pk, seconds)

    def _call_finish(
        self,
        run: ScenarioRun,
        future: Future,
        started: float,
        *,
        timeout: float | None = None,
        cancel_reason: str = "the deadline passed",
    ) -> CallOutcome:
        if timeout is not None:
            with contextlib.suppress(FutureTimeout):
                future.result(timeout=max(timeout, 0))
        error = None
        if future.done() and not future.cancelled():
            error = future.exception()
        ms = int((time.monotonic() - started) * 1000)
        if future.done() and error is None and isinstance(future.result(), ScenarioRun):
            fresh = future.result()  # the run as its driver left it: no query
        else:
            fresh = ScenarioRun.objects.get(pk=run.pk)
        parked_on_webhook = (fresh.result or {}).get("waiting") in _HOLDING_WAITS
        if not future.done() or (
            fresh.status in (RunStatus.RUNNING, RunStatus.WAITING) and not parked_on_webhook
        ):
            # Still talking to the buyer: stop waiting, and cancel the run so a late
            # answer changes nothing.
            fresh = engine.run_cancel(run_id=run.pk, reason=cancel_reason)
            if fresh.status == RunStatus.CANCELLED:
                return CallOutcome("timeout", f"no answer: {cancel_reason}", ms=ms)
        if error is not None and fresh.status not in ScenarioRun.FINISHED:
            return CallOutcome("error", f"the call failed: {error}", ms=ms)
        return _outcome_of(fresh, ms)

    def _ping_submit(
        self, offer: Offer, until: datetime, *, fresh: bool = False, defer_log: bool = False,
        started: _Countdown | None = None,
    ) -> tuple[_PingCall, Future, dict[str, Any]]:  # fmt: skip
        """Ping on the pool; ``defer_log`` (an auction's pings): a direct call's log row
        is left to the driver, which writes it with the answers (_pings_write);
        ``started`` is counted down when a pool thread takes the call."""
        seconds = min(_seconds_left(until), offer.timeout_seconds)
        call = _PingCall(started)
        variables = self._variables(offer)
        future = POOL.submit(
            call.job, offer.integration, self.lead, variables, seconds,
            self._direct(offer, "ping", fresh=fresh),
            defer_log and connection.vendor == "postgresql", self._lead_layer(),
        )  # fmt: skip
        return call, future, variables

    def _ping_finish(
        self, call: _PingCall, future: Future, started: float, *, timeout: float,
        cancel_reason: str, variables: dict[str, Any], failed: str = "",
    ) -> tuple[CallOutcome, int | None]:  # fmt: skip
        """Wait for a call on the pool up to ``timeout``: its outcome and its run's id
        (None for a direct call, whose request log id is in the outcome)."""
        with contextlib.suppress(FutureTimeout):
            future.result(timeout=max(timeout, 0))
        ms = int((time.monotonic() - started) * 1000)
        if not future.done():
            run_id, delivered = call.give_up()
            if delivered:
                # It answered just now and its log is ours to write: take the answer.
                return self._ping_finish(
                    call, future, started, timeout=5.0, cancel_reason=cancel_reason,
                    variables=variables, failed=failed,
                )  # fmt: skip
            if run_id is None:
                return CallOutcome("timeout", f"no answer: {cancel_reason}", ms=ms), None
            run = engine.run_cancel(run_id=run_id, reason=cancel_reason)
            if run.status == RunStatus.CANCELLED:
                return CallOutcome("timeout", f"no answer: {cancel_reason}", ms=ms), run_id
            return _outcome_of(run, ms), run_id
        error = future.exception()
        if error is not None:
            return CallOutcome("error", f"{failed}{error}", ms=ms), call.run_id
        run = future.result()
        if run is None:
            return CallOutcome("timeout", f"no answer: {cancel_reason}", ms=ms), None
        if isinstance(run, integration_services.RunResult):
            return _outcome_direct(run, variables, ms), None
        run_id = run.pk
        if run.status in (RunStatus.RUNNING, RunStatus.WAITING):
            # Not finished within its time (a multi-step ping, a wait): stop it.
            run = engine.run_cancel(run_id=run_id, reason=cancel_reason)
        return _outcome_of(run, ms), run_id

    def _ping_settle(
        self, cand: _Candidate, row: OfferResult, ping: CallOutcome, run_id: int | None,
        *, write: bool = True,
    ) -> bool:  # fmt: skip
        """Record the ping and whether its answer lets us post, in one statement
        (``write`` False: in memory only, the caller writes a batch: _pings_write)."""
        cand.ping = ping
        bid = _money(ping.captured.get("price"))
        reason = str(ping.reason)[:500]
        fields: dict[str, Any] = {
            "stage": ResultStage.PINGED,
            "ping_run_id": run_id,
            "ping_status": ping.status if not ping.blocking else ResultStatus.TIMEOUT,
            "ping_log_id": ping.log_id,
            "bid": bid,
            "ping_ms": ping.ms,
            "reason": reason,
        }
        why = ""
        if ping.kind != "accepted" or ping.blocking:
            fields["status"] = fields["ping_status"]
            why = f"ping: {ping.reason or ping.kind}"
        elif cand.offer.price_model == PriceModel.BID and bid is None:
            fields["status"] = ResultStatus.REJECTED
            why = "ping: no bid in the answer"
        elif bid is not None and bid < cand.offer.min_price:
            fields["status"] = ResultStatus.REJECTED
            why = (
                f"bid {bid.normalize():f} is under the minimum price "
                f"{cand.offer.min_price.normalize():f}"
            )
        if why:
            fields["reason"] = why[:500]
            if write:
                self._result_update(row, finished=True, **fields)
            else:
                fields["finished_at"] = timezone.now()
                for key, value in fields.items():
                    setattr(row, key, value)
            return False
        if write:
            self._result_update(row, **fields)
        else:
            for key, value in fields.items():
                setattr(row, key, value)
        cand.value = self._expected_value(cand.offer, bid)
        return True

    def _pings_write(
        self, rows: list[OfferResult], entries: list[Any] | None = None,
        state_of: int | None = None,
    ) -> None:  # fmt: skip
        """Write the settled pings of these rows (as _ping_settle left them in memory) in
        one statement, with ``entries``: their calls' deferred log rows (None where the
        call wrote its own, or made none), each linked as its row's ping_log; with
        ``state_of``, the integration whose state the statement reads for the post
        that follows (as _open does for a waterfall's post)."""
        if not rows:
            return
        entries = entries or [None] * len(rows)
        names = list(_PING_COLUMNS)
        if connection.vendor != "postgresql":
            for row in rows:
                _results_set([row.pk], {name: getattr(row, name) for name in names})
            return
        deferred = [e is not None and e.pk is None for e in entries]
        own = _no_flush()
        key = ("pings", own)
        sql = _sql_texts.get(key)
        if sql is None:
            # One text for any number of rows and deferred log rows (psycopg parses it
            # and PostgreSQL plans it once): the logs inserted from arrays (none when
            # every call wrote its own), each linked to its result row by its rank.
            q = connection.ops.quote_name
            sets = ", ".join(f"{q(name)} = v.{q(name)}" for name in names if name != "ping_log_id")
            arrays = ", ".join(f"%b::{kind}[]" for kind in _PING_COLUMNS.values())
            sql = _sql_texts[key] = (
                f"WITH lg AS ({integration_services.log_insert_many_sql_text()}), "  # noqa: S608
                "li AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM lg), "
                f"u AS (UPDATE {q(OfferResult._meta.db_table)} AS r SET {sets}, "
                "ping_log_id = COALESCE(li.id, v.ping_log_id) "
                f"FROM unnest(%b::bigint[], {arrays}, %b::bigint[]) "
                f"AS v(id, {', '.join(names)}, n) LEFT JOIN li ON li.n = v.n"
                f"{f' CROSS JOIN {_OWN}' if own else ''} WHERE r.id = v.id RETURNING 1) "
                "SELECT (SELECT array_agg(id ORDER BY n) FROM li), "
                f"i.{q('status')}, i.{q('config_version')} FROM (VALUES (1)) AS one "
                f"LEFT JOIN {q(Integration._meta.db_table)} AS i ON i.{q('id')} = %s"
            )
        logs = [e for e, d in zip(entries, deferred, strict=True) if d]
        params: list[Any] = integration_services.log_insert_many_params(logs)
        params.append([row.pk for row in rows])
        params += [[getattr(row, name) for row in rows] for name in names]
        ranks, n = [], 0
        for d in deferred:
            n += d
            ranks.append(n if d else None)
        params.append(ranks)
        params.append(state_of)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                found, status, version = cursor.fetchone()
                ids = found or []
        except Exception:
            # Every call is logged, whatever became of recording the answers.
            for entry in logs:
                with contextlib.suppress(Exception):
                    integration_services.log_write(entry)
            raise
        written = iter(ids)
        for row, entry, d in zip(rows, entries, deferred, strict=True):
            if d:
                entry.pk = next(written)
                entry._state.adding = False
                row.ping_log_id = entry.pk
        if state_of is not None:
            self._states[state_of] = (status, version) if status is not None else None
            self._state_fresh = state_of

    def _expected_value(self, offer: Offer, bid: Decimal | None) -> Decimal:
        if offer.price_model == PriceModel.FIXED:
            return offer.price
        if offer.price_model == PriceModel.BID:
            return bid or Decimal("0")
        return ((bid or Decimal("0")) * offer.revenue_share_percent / 100).quantize(CENT)

    def _caps_to_count(self, offer: Offer) -> list[Cap]:
        """The offer's active caps this lead counts in: none for a test lead (test leads
        never count in caps, figures or money)."""
        if self.lead.is_test:
            return []
        return [c for c in offer.caps.all() if c.is_active]

    def _reserve(self, cand: _Candidate, row: OfferResult) -> str:
        caps = self._caps_to_count(cand.offer)
        if not caps:
            return ""
        amounts = {CapMetric.SENT: Decimal("1"), CapMetric.SOLD: Decimal("1")}
        expected = self._expected_value(cand.offer, row.bid)
        if expected > 0:
            amounts[CapMetric.REVENUE] = expected
        self._behind_flush()  # committed on its own, not with this transaction's fate
        with transaction.atomic():
            reservations, why = caps_service.caps_reserve(
                caps=caps, amounts=amounts, now=timezone.now(), tz_name=self.tz
            )
            if why:
                return why
            self._result_update(row, reservations=reservations)
        return ""

    def _post(self, cand: _Candidate, row: OfferResult, until: datetime) -> bool:
        """Post the lead to the offer; True when it sold."""
        self._alive()
        why = self._reserve(cand, row)
        if why:
            self._result_update(row, status=ResultStatus.SKIPPED, reason=why, finished=True)
            return False
        extra = {}
        if cand.ping is not None:
            extra = {k: v for k, v in cand.ping.variables.items() if not k.startswith("_")}
        if row.bid is not None:
            extra["BID"] = str(row.bid)
        started = time.monotonic()
        direct = self._direct(cand.offer, "post", fresh=True)
        if direct is not None:
            return self._post_direct(cand, row, until, extra, direct, started)
        run, future = self._post_start(cand.offer, row, until, extra)
        if run is None:
            self._release(row)
            return False
        seconds = min(_seconds_left(until), cand.offer.timeout_seconds)
        outcome = self._call_finish(
            run, future, started, timeout=seconds, cancel_reason=self._cut_reason(cand, until)
        )
        if outcome.blocking:
            self._park(row, outcome)
        return self._post_record(cand.offer, row, outcome)

    def _post_direct(
        self, cand: _Candidate, row: OfferResult, until: datetime, extra: dict[str, Any],
        direct: Direct, started: float,
    ) -> bool:  # fmt: skip
        """Post through request_run on the pool; the row says it is in flight first (a
        driver that takes over finds it and does not post again)."""
        if row.stage != ResultStage.POSTED:
            self._result_update(row, stage=ResultStage.POSTED)
        seconds = min(_seconds_left(until), cand.offer.timeout_seconds)
        call = _PingCall()
        variables = self._variables(cand.offer, extra)
        future = POOL.submit(
            call.job, cand.offer.integration, self.lead, variables, seconds, direct,
            connection.vendor == "postgresql", self._lead_layer(),
        )  # fmt: skip
        submitted = time.monotonic()
        try:
            self._claim_ahead(future)
        except DatabaseError:
            # Not needed: the next offer's row is opened when its turn comes. The post
            # in flight is waited for and recorded (and logged) as ever.
            log.warning("pingtree.claim_ahead_failed", exc_info=True)
        outcome, _run_id = self._ping_finish(
            call, future, started, timeout=seconds - (time.monotonic() - submitted),
            cancel_reason=self._cut_reason(cand, until), variables=variables,
            failed="the call failed: ",
        )  # fmt: skip
        try:
            return self._post_record(cand.offer, row, outcome)
        finally:
            # Every call is logged: if recording failed, its log row still is written.
            entry = outcome.log_entry
            if entry is not None and entry.pk is None and not self._behind_holds(entry):
                integration_services.log_write(entry)

    def _park(self, row: OfferResult, outcome: CallOutcome) -> None:
        """The buyer answers by callback and holds the lead: wait for run_finished."""
        # What the buyer said so far (its lead id, a redirect) is kept for the sale: the
        # post request's own captures (the run's result is the webhook step's answer).
        from integrations.models import RunStep

        said = (
            RunStep.objects.filter(run_id=row.post_run_id, element__kind="request")
            .order_by("-id")
            .values_list("output", flat=True)
            .first()
        ) or {}
        captured = {**dict((said.get("outcome") or {}).get("captured") or {}), **{
            k: v for k, v in outcome.captured.items() if v not in (None, "")
        }}  # fmt: skip
        outcome = CallOutcome(
            outcome.kind, outcome.reason, captured, outcome.variables, outcome.ms, blocking=True
        )
        self._result_update(
            row, stage=ResultStage.POSTED, post_status=ResultStatus.PENDING, post_ms=outcome.ms,
            reason=outcome.reason,
            buyer_lead_id=str(outcome.captured.get("buyer_lead_id") or row.buyer_lead_id)[:255],
            redirect_url=str(outcome.captured.get("redirect_url") or row.redirect_url)[:2000],
        )  # fmt: skip
        parked = Distribution.objects.filter(
            pk=self.dist.pk, attempt=self.dist.attempt, status=DistributionStatus.RUNNING
        ).update(
            status=DistributionStatus.WAITING,
            lease_until=None,
            next_check_at=timezone.now() + WAIT_RECHECK,
            time_left_seconds=max(_seconds_left(self.deadline), 0.0),
        )
        if parked:
            _history(self.dist, "distribution", f"Waiting for {row.offer}'s callback.")
            # The run may have finished between our look and the park: look again.
            run = ScenarioRun.objects.get(pk=row.post_run_id)
            if run.status in ScenarioRun.FINISHED:
                _continue_later(self.dist.pk)
        raise _Stop

    def _post_record(self, offer: Offer, row: OfferResult, outcome: CallOutcome) -> bool:
        status = outcome.status
        if not self.lead.is_test and not outcome.not_sent:
            _offer_health_record(
                offer=offer, failed=status in (ResultStatus.ERROR, ResultStatus.TIMEOUT)
            )
        if status != ResultStatus.ACCEPTED:
            self._release(row)
            # Written behind: with the next post's claim, or the finish.
            self._result_update(
                row, stage=ResultStage.POSTED, status=status, post_status=status,
                post_ms=outcome.ms, reason=outcome.reason or status, finished=True,
                log=outcome.log_entry, behind=True,
                **({"post_log_id": outcome.log_id} if outcome.log_id else {}),
            )  # fmt: skip
            return False
        return self._sale(offer, row, outcome)

    def _release(self, row: OfferResult, metrics: tuple[str, ...] = ("sold", "revenue")) -> None:
        if row.reservations:
            caps_service.caps_release(reservations=row.reservations, metrics=metrics)
            kept = [r for r in row.reservations if r["metric"] not in metrics]
            self._result_update(row, reservations=kept)

    def _sale(self, offer: Offer, row: OfferResult, outcome: CallOutcome) -> bool:
        reported = _money(outcome.captured.get("price"))
        if offer.price_model == PriceModel.FIXED:
            price = offer.price
        elif offer.price_model == PriceModel.BID:
            price = reported if reported is not None else (row.bid or Decimal("0"))
        else:
            base = reported if reported is not None else (row.bid or Decimal("0"))
            price = (base * offer.revenue_share_percent / 100).quantize(CENT)
        exclusive = offer.sale_mode == SaleMode.EXCLUSIVE
        redirect = str(outcome.captured.get("redirect_url") or row.redirect_url or "")[:2000]
        buyer_lead_id = str(outcome.captured.get("buyer_lead_id") or row.buyer_lead_id or "")
        counted = Decimal("0") if self.lead.is_test else price
        reason = (outcome.reason or "accepted")[:500]  # the column's length
        if connection.vendor == "postgresql" and not self._caps_to_count(offer):
            if self._ends_with_sale is not None and self._sale_and_finish(
                offer, row, outcome, price=price, exclusive=exclusive, redirect=redirect,
                buyer_lead_id=buyer_lead_id, counted=counted, reason=reason,
            ):  # fmt: skip
                return True
            # No cap to settle: the sale and its row in one statement (atomic by itself).
            entry = outcome.log_entry
            sold = self._sale_statement(
                row, exclusive=exclusive, counted=counted, redirect=redirect, values=[
                    ResultStage.POSTED, ResultStatus.ACCEPTED, ResultStatus.ACCEPTED,
                    outcome.ms, price, redirect, buyer_lead_id[:255], outcome.log_id,
                ],
                reason=reason, log=entry if entry is not None and entry.pk is None else None,
            )  # fmt: skip
            if outcome.log_entry is not None:
                outcome.log_id = outcome.log_entry.pk
            self._result_sold(row, outcome, price, redirect, buyer_lead_id, reason, sold)
        else:
            if outcome.log_entry is not None:
                integration_services.log_write(outcome.log_entry)
                outcome.log_id = outcome.log_entry.pk
            sold = self._sale_transaction(
                offer, row, outcome, price, exclusive, redirect, buyer_lead_id, counted
            )
        if not sold:
            self._release(row)
            return False
        self._sold_in_memory(offer, price, exclusive, redirect, counted)
        return True

    def _sold_in_memory(
        self, offer: Offer, price: Decimal, exclusive: bool, redirect: str, counted: Decimal,
        *, log_line: bool = True,
    ) -> None:  # fmt: skip
        self.dist.sold_count += 1
        self.dist.is_exclusive_sold = self.dist.is_exclusive_sold or exclusive
        self.dist.revenue += counted
        self.dist.margin += counted
        if redirect and not self.dist.redirect_url:
            self.dist.redirect_url = redirect
        if log_line:
            log.info("pingtree.sold", offer_id=offer.pk, price=str(price))

    def _sale_and_finish(
        self, offer: Offer, row: OfferResult, outcome: CallOutcome, *, price: Decimal,
        exclusive: bool, redirect: str, buyer_lead_id: str, counted: Decimal, reason: str,
    ) -> bool:  # fmt: skip
        """A sale that ends the tree (PostgreSQL, no cap to settle) and the finish, in
        one statement (_finish_statement's ``sale``): one commit instead of two. True
        when both happened. False: nothing was counted (another driver's attempt, or the
        lead's status changed under the payout), only the call's log row was written;
        the caller sells as usual and the finish follows as usual."""
        for ahead in list(self._ahead.values()):
            self._unclaim(ahead)  # taken back by the same statement
        dist = self.dist
        revenue = Decimal("0") if dist.is_test else dist.revenue + counted
        lead_status = self.lead.status
        final, left, event = self._finish_values(True, revenue, "", str(offer), lead_status)
        if self._ends_with_sale:
            left["reason"] = self._ends_with_sale
        open_rows = [r for r in self.results.values() if r.finished_at is None and r is not row]
        now = timezone.now()
        sale = _SaleEnd(
            row.pk, exclusive, redirect,
            [ResultStage.POSTED, ResultStatus.ACCEPTED, ResultStatus.ACCEPTED, outcome.ms,
             price, redirect, buyer_lead_id[:255], outcome.log_id, reason, now],
            log=outcome.log_entry,
        )  # fmt: skip
        behind = self._behind_take()
        try:
            done, _current = _finish_statement(
                dist, final, left if open_rows else None, event, lead_id=self.lead.pk,
                rejected=lead_status == LeadStatus.REJECTED, behind=behind, sale=sale,
            )  # fmt: skip
        except BaseException:
            if behind is not None:  # not written: it waits again
                self._defer(behind)
            raise
        if outcome.log_entry is not None:
            outcome.log_id = outcome.log_entry.pk
        if not done:
            return False
        self._result_sold(row, outcome, price, redirect, buyer_lead_id, reason, True)
        row.finished_at = now
        self._sold_in_memory(offer, price, exclusive, redirect, counted, log_line=False)
        for open_row in open_rows:
            for key, value in left.items():
                setattr(open_row, key, value)
        # One line for both: pingtree.finished with the offer and the price.
        self._finished(final, lead_status, revenue, sold=(offer.pk, price))
        return True

    def _sale_statement(
        self, row: OfferResult, *, exclusive: bool, counted: Decimal, redirect: str,
        values: list[Any], reason: str, log: Any = None,
    ) -> bool:  # fmt: skip
        """Count the sale on the distribution (still our attempt, running, not sold
        exclusively, no sale yet for an exclusive offer) and record the row's answer,
        sold or not, in one statement (with ``log``, the call's deferred log row too).
        True when it counted."""
        sql = _sql_texts.get(("sale", log is not None))
        if sql is None:
            q = connection.ops.quote_name
            dist_t, result_t = q(Distribution._meta.db_table), q(OfferResult._meta.db_table)
            sql = (
                f"WITH d AS (UPDATE {dist_t} SET sold_count = sold_count + 1, "  # noqa: S608
                "is_exclusive_sold = %s, revenue = revenue + %s, margin = margin + %s, "
                "redirect_url = CASE WHEN redirect_url = '' THEN %s ELSE redirect_url END "
                "WHERE id = %s AND attempt = %s AND status = 'running' "
                "AND NOT is_exclusive_sold AND (NOT %s OR sold_count = 0) RETURNING id) "
                f"UPDATE {result_t} SET stage = %s, status = %s, post_status = %s, "
                "post_ms = %s, price = %s, redirect_url = %s, buyer_lead_id = %s, "
                "post_log_id = COALESCE(%s, post_log_id), "
                "reason = CASE WHEN EXISTS (SELECT 1 FROM d) THEN %s ELSE %s END, "
                "is_sold = EXISTS (SELECT 1 FROM d), finished_at = %s "
                "WHERE id = %s RETURNING is_sold"
            )
            if log is not None:
                sql = (
                    f"WITH lg AS ({integration_services.log_insert_sql_text()}), "  # noqa: S608
                    + sql.removeprefix("WITH ").replace(
                        "post_log_id = COALESCE(%s, post_log_id)",
                        "post_log_id = COALESCE((SELECT id FROM lg), %s, post_log_id)",
                    )
                    + ", (SELECT id FROM lg)"
                )
            _sql_texts[("sale", log is not None)] = sql
        params = [
            exclusive, counted, counted, redirect, self.dist.pk, self.dist.attempt, exclusive,
            *values, reason, NOT_COUNTED, timezone.now(), row.pk,
        ]  # fmt: skip
        if log is not None:
            params = integration_services.log_insert_sql(log)[1] + params
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            answer = cursor.fetchone()
        if log is not None:
            log.pk = answer[1]
            log._state.adding = False
        return bool(answer[0])

    def _result_sold(
        self, row: OfferResult, outcome: CallOutcome, price: Decimal, redirect: str,
        buyer_lead_id: str, reason: str, sold: bool,
    ) -> None:  # fmt: skip
        """The row in memory as _sale_statement wrote it."""
        row.stage, row.status, row.post_status = (
            ResultStage.POSTED, ResultStatus.ACCEPTED, ResultStatus.ACCEPTED,
        )  # fmt: skip
        row.post_ms, row.price, row.redirect_url = outcome.ms, price, redirect
        row.buyer_lead_id = buyer_lead_id[:255]
        if outcome.log_id:
            row.post_log_id = outcome.log_id
        row.reason = reason[:500] if sold else NOT_COUNTED
        row.is_sold, row.finished_at = sold, timezone.now()

    def _sale_transaction(
        self, offer: Offer, row: OfferResult, outcome: CallOutcome, price: Decimal,
        exclusive: bool, redirect: str, buyer_lead_id: str, counted: Decimal,
    ) -> bool:  # fmt: skip
        """The sale with its caps settled, in one transaction. True when it counted."""
        self._behind_flush()  # committed on its own, not with this transaction's fate
        with transaction.atomic():
            sale_ok = Q(is_exclusive_sold=False) & (Q(sold_count=0) if exclusive else Q())
            sold = (
                Distribution.objects.filter(
                    pk=self.dist.pk, attempt=self.dist.attempt, status=DistributionStatus.RUNNING
                )
                .filter(sale_ok)
                .update(
                    sold_count=F("sold_count") + 1,
                    is_exclusive_sold=exclusive,
                    revenue=F("revenue") + counted,
                    margin=F("margin") + counted,  # no payout until the end
                )
            )
            fields: dict[str, Any] = dict(
                stage=ResultStage.POSTED, status=ResultStatus.ACCEPTED,
                post_status=ResultStatus.ACCEPTED, post_ms=outcome.ms, price=price,
                redirect_url=redirect,
                buyer_lead_id=buyer_lead_id[:255],
                reason=outcome.reason or "accepted", is_sold=bool(sold),
            )  # fmt: skip
            if outcome.log_id:
                fields["post_log_id"] = outcome.log_id
            if not sold:
                fields["reason"] = NOT_COUNTED
            self._result_update(row, finished=True, **fields)
            if sold and not self.lead.is_test:
                self._settle_revenue_caps(offer, row, price)
            if sold and redirect:
                Distribution.objects.filter(pk=self.dist.pk, redirect_url="").update(
                    redirect_url=redirect
                )
        return bool(sold)

    def _settle_revenue_caps(self, offer: Offer, row: OfferResult, price: Decimal) -> None:
        """The revenue reserved was the expected price; count the real one."""
        reserved = sum(
            (Decimal(r["amount"]) for r in row.reservations if r["metric"] == CapMetric.REVENUE),
            Decimal("0"),
        )
        if reserved == price:
            return
        self._release(row, metrics=(CapMetric.REVENUE,))
        caps = self._caps_to_count(offer)
        added = caps_service.caps_add(
            caps=caps, metric=CapMetric.REVENUE, amount=price, now=timezone.now(), tz_name=self.tz
        )
        self._result_update(row, reservations=row.reservations + added)

    # -- in flight after a crash or a callback -------------------------------------------

    def _settle_in_flight(self) -> bool:
        """Settle result rows a previous driver left open. True when the distribution
        must go on waiting (a blocking callback still outstanding)."""
        for row in list(self.results.values()):
            if row.status != ResultStatus.PENDING or row.finished_at is not None:
                continue
            offer = Offer.objects.select_related("integration").get(pk=row.offer_id)
            if row.post_run_id:
                run = ScenarioRun.objects.get(pk=row.post_run_id)
                if run.status not in ScenarioRun.FINISHED:
                    if (run.result or {}).get("blocking") and run.status == RunStatus.WAITING:
                        self._park(row, _outcome_of(run, row.post_ms or 0))
                    run = engine.run_cancel(
                        run_id=run.pk, reason="the ping tree's driver was lost mid-post"
                    )
                if run.status == RunStatus.CANCELLED:
                    self._release(row)
                    self._result_update(
                        row, stage=ResultStage.POSTED, status=ResultStatus.ERROR,
                        post_status=ResultStatus.ERROR,
                        reason="the driver was lost mid-post; the run was cancelled",
                        finished=True,
                    )  # fmt: skip
                    continue
                outcome = _outcome_of(run, row.post_ms or 0)
                if (
                    outcome.kind == "accepted"
                    and self.dist.sold_count
                    and not self._may_sell(offer, 1_000_000)
                ):
                    outcome = CallOutcome("rejected", "the lead was sold meanwhile")
                self._post_record(offer, row, outcome)
                self.dist.refresh_from_db(fields=["sold_count", "is_exclusive_sold"])
                continue
            if row.stage == ResultStage.POSTED:
                # A direct post in flight when its driver was lost: its answer, if any,
                # is in the request log only; nothing was counted.
                self._release(row)
                self._result_update(
                    row, status=ResultStatus.ERROR, post_status=ResultStatus.ERROR,
                    reason="the driver was lost mid-post; its answer was not recorded",
                    finished=True,
                )  # fmt: skip
                continue
            if row.stage == ResultStage.PINGED and row.ping_status == ResultStatus.ACCEPTED:
                continue  # a valid bid not posted yet: its tier posts it (_tier_run)
            # Opened, or its ping never settled: nothing was sold.
            if row.ping_run_id:
                engine.run_cancel(run_id=row.ping_run_id, reason="the ping tree's driver stopped")
            self._release(row)
            self._result_update(
                row, status=ResultStatus.ERROR,
                reason="not posted: the driver stopped before posting (lost, or waited for "
                "another buyer's callback)",
                finished=True,
            )  # fmt: skip
        return False

    # -- finishing -----------------------------------------------------------------------

    def _finish(self) -> None:
        if self.finished:
            return  # with the sale that ended the tree (_sale_and_finish)
        # The distribution as this driver knows it: read at its claim, and every sale
        # since is ours (conditional on our attempt) and counted in memory by _sale.
        dist = self.dist
        sold = dist.sold_count > 0
        revenue = Decimal("0") if dist.is_test else dist.revenue
        if sold:
            reason = ""
        elif _seconds_left(self.deadline) <= MIN_CALL_SECONDS and self._left_untried():
            reason = "The ping tree's deadline passed before a buyer bought the lead."
        else:
            reason = self._unsold_reason()
        # Valid bids never posted (the lead sold first, or the time ran out).
        open_rows = [r for r in self.results.values() if r.finished_at is None]
        buyers = ""
        if sold:
            buyers = ", ".join(str(r.offer) for r in self._rows_with_offers() if r.is_sold)
        pg = connection.vendor == "postgresql"
        # The refusal policy may have rejected the lead meanwhile (then no payout). On
        # PostgreSQL the finish statement checks the status this driver read with the
        # lead and returns the current one: read again and redone only if it changed so.
        lead_status = self.lead.status if pg else _lead_status(self.lead.pk)
        for _ in range(3):
            final, left, event = self._finish_values(sold, revenue, reason, buyers, lead_status)
            if not pg:
                with transaction.atomic():
                    done = Distribution.objects.filter(
                        pk=dist.pk, attempt=dist.attempt, status=DistributionStatus.RUNNING
                    ).update(**final)
                    if done:
                        OfferResult.objects.filter(
                            distribution=dist, finished_at__isnull=True
                        ).update(**left)
                        event.save(force_insert=True)
                break
            # One statement, atomic by itself: the finish (still our attempt, the lead
            # still as rejected or not as assumed), the rows left open, the history entry.
            behind = self._behind_take()
            try:
                done, current = _finish_statement(
                    dist, final, left if open_rows else None, event,
                    lead_id=self.lead.pk, rejected=lead_status == LeadStatus.REJECTED,
                    behind=behind,
                )  # fmt: skip
            except BaseException:
                if behind is not None:  # not written: it waits again
                    self._defer(behind)
                raise
            changed = current is not None and (current == LeadStatus.REJECTED) != (
                lead_status == LeadStatus.REJECTED
            )
            lead_status = current or lead_status
            if done or not changed:
                break
        if not done:
            raise _Stop
        for row in open_rows:
            for key, value in left.items():
                setattr(row, key, value)
        self._finished(final, lead_status, revenue)

    def _finished(
        self, final: dict[str, Any], lead_status: str, revenue: Decimal,
        sold: tuple[int, Decimal] | None = None,
    ) -> None:  # fmt: skip
        """The finish is written: in memory, and what follows it. ``sold``: the offer
        and the price of the sale written with it (its line is this one)."""
        lead_id = self.lead.pk
        if lead_status == LeadStatus.PENDING:
            transaction.on_commit(lambda: _lead_process_later(lead_id), robust=True)
        for key, value in final.items():
            setattr(self.dist, key, value)
        self.finished = True
        extra = {} if sold is None else {"offer_id": sold[0], "price": str(sold[1])}
        log.info(
            "pingtree.finished",
            sold=final["status"] == DistributionStatus.SOLD,
            revenue=str(revenue),
            **extra,
        )

    def _finish_values(
        self, sold: bool, revenue: Decimal, reason: str, buyers: str, lead_status: str
    ) -> tuple[dict[str, Any], dict[str, Any], LeadEvent]:
        """The finish for a lead of this status: the distribution's final fields, the
        fields of the rows left open, the history entry."""
        payout = Decimal("0")
        if sold and self.tree and lead_status != LeadStatus.REJECTED:
            payout = (revenue * self.tree.payout_percent / 100).quantize(CENT, ROUND_HALF_UP)
        now = timezone.now()
        final = {
            "status": DistributionStatus.SOLD if sold else DistributionStatus.UNSOLD,
            "reason": reason[:500],
            "revenue": revenue,
            "payout": payout,
            "margin": revenue - payout,
            "finished_at": now,
            "lease_until": None,
            "next_check_at": None,
        }
        left = {
            "status": ResultStatus.OUTBID if sold else ResultStatus.TIMEOUT,
            "reason": "not posted: the lead was sold" if sold else "not posted in time",
            "finished_at": now,
        }
        if sold:
            # Money as money; a test lead's sale is counted nowhere, so no "for 0".
            money = " (a test lead: not counted)" if self.dist.is_test else f" for {revenue:.2f}"
            event = _history_row(
                self.dist, "sold", f"Sold to {buyers}{money}.",
                {"revenue": str(revenue), "payout": str(payout)},
            )  # fmt: skip
        else:
            event = _history_row(self.dist, "unsold", f"Not sold: {reason}")
        return final, left, event

    def _rows_with_offers(self) -> list[OfferResult]:
        """This distribution's result rows in order, with their offers: from memory (the
        driver holds every row: read at its start, or written by it), the offers of
        rows read at the start loaded in one query."""
        rows = sorted(self.results.values(), key=lambda r: (r.position, r.pk or 0))
        missing = [r for r in rows if not OfferResult.offer.is_cached(r)]
        if missing:
            offers = Offer.objects.in_bulk({r.offer_id for r in missing})
            for row in missing:
                row.offer = offers[row.offer_id]
        return rows

    def _left_untried(self) -> bool:
        if self.tree is None:
            return False
        untried = (
            TierOffer.objects.filter(tier__tree=self.tree)
            .exclude(offer_id__in=set(self.results))
            .select_related("offer", "tier")
            .order_by("tier__position", "tier_id", "priority", "id")
        )
        found = False
        for tier_offer in untried:
            if tier_offer.offer_id in self.results:
                continue  # in two tiers
            found = True
            self._skip(tier_offer.offer, tier_offer.tier, "not reached before the deadline")
        return found

    def _unsold_reason(self) -> str:
        rows = self._rows_with_offers()
        if not rows:
            return "No offer in the ping tree."
        if all(r.status == ResultStatus.SKIPPED for r in rows):
            return "No offer was eligible: " + "; ".join(f"{r.offer}: {r.reason}" for r in rows[:5])
        asked = [r for r in rows if r.status != ResultStatus.SKIPPED]
        return "No buyer bought the lead: " + "; ".join(
            f"{r.offer}: {r.get_status_display().lower()}" + (f" ({r.reason})" if r.reason else "")
            for r in asked[:5]
        )


def _lead_process_later(lead_id: int) -> None:
    from structures.tasks import lead_process_task

    lead_process_task.delay(lead_id)


def _continue_later(distribution_id: int) -> None:
    from pingtree.tasks import distribution_run_task

    transaction.on_commit(lambda: distribution_run_task.delay(distribution_id), robust=True)


# --- history of an offer with a person ----------------------------------------------------


def offer_history(*, offer: Offer, lead: Lead, exclude_distribution: int | None = None) -> Any:
    """This offer's past with the lead's identity (same email or phone), for the history
    filters: when it was sent (posted), rejected (with the reason) and accepted."""
    from pingtree.filters import History, history_lookback

    lookback = history_lookback(offer.filters or {}) or timedelta(days=30)
    identity = Q()
    for name in ("g_email", "g_phone"):
        value = (lead.data or {}).get(name)
        if value:
            identity |= Q(**{f"distribution__lead__data__{name}": value})
    sent: list[datetime] = []
    rejected: list[tuple[datetime, str]] = []
    accepted: list[datetime] = []
    if identity:
        rows = (
            OfferResult.objects.filter(
                offer=offer, created_at__gte=timezone.now() - lookback, stage=ResultStage.POSTED
            )
            .filter(identity)
            .exclude(distribution_id=exclude_distribution)
            .values_list("created_at", "status", "reason")
        )
        for created_at, status, reason in rows:
            sent.append(created_at)
            if status == ResultStatus.ACCEPTED:
                accepted.append(created_at)
            elif status == ResultStatus.REJECTED:
                rejected.append((created_at, reason))
    return History(sent_at=sent, rejected=rejected, accepted_at=accepted)


# --- continuing and sweeping --------------------------------------------------------------


def distribution_on_run_finished(*, run_id: int) -> None:
    """A buyer's run finished (callback received or timed out): continue the
    distribution that waits on it."""
    dist_id = (
        OfferResult.objects.filter(
            post_run_id=run_id,
            status=ResultStatus.PENDING,
            distribution__status=DistributionStatus.WAITING,
        )
        .values_list("distribution_id", flat=True)
        .first()
    )
    if dist_id is not None:
        from pingtree.tasks import distribution_run_task

        distribution_run_task.delay(dist_id)


def distributions_sweep(*, limit: int = 200) -> int:
    """Re-drive distributions whose task was lost (pending), whose driver died (running,
    lease over) or whose callback signal was missed (waiting); start the distributions of
    accepted leads that never got one. Each claimed by a conditional UPDATE of its next
    check. Returns how many were queued."""
    from pingtree.tasks import distribution_run_task

    now = timezone.now()
    queued = 0
    due = list(
        Distribution.objects.filter(
            status__in=(
                DistributionStatus.PENDING,
                DistributionStatus.RUNNING,
                DistributionStatus.WAITING,
            ),
            next_check_at__lte=now,
        )
        .order_by("next_check_at")
        .values_list("id", "status", "next_check_at")[:limit]
    )
    for dist_id, status, next_check_at in due:
        if status == DistributionStatus.WAITING:
            waiting_on = OfferResult.objects.filter(
                distribution_id=dist_id, status=ResultStatus.PENDING, post_run__isnull=False
            ).values_list("post_run__status", flat=True)
            if all(s not in ScenarioRun.FINISHED for s in waiting_on) and waiting_on:
                Distribution.objects.filter(pk=dist_id, next_check_at=next_check_at).update(
                    next_check_at=now + WAIT_RECHECK
                )
                continue
        claimed = Distribution.objects.filter(pk=dist_id, next_check_at=next_check_at).update(
            next_check_at=now + PENDING_GRACE
        )
        if claimed:
            log.warning("pingtree.redriven", distribution_id=dist_id, status=status)
            distribution_run_task.delay(dist_id)
            queued += 1
    # Accepted leads of the last hour without a distribution (lost between the intake's
    # commit and the signal). Pending leads get theirs from the refusal policy's gate.
    # Per workspace, so each query walks the (workspace, -created_at) index instead of
    # the whole lead table.
    from structures.models import Workspace

    recent = now - MISSING_LOOKBACK
    missing: list[int] = []
    # Only workspaces that sell through a ping tree: the others' leads are never queued
    # (receivers.on_lead_accepted).
    selling = Workspace.objects.filter(ping_trees__is_active=True).distinct()
    for workspace_id in selling.values_list("id", flat=True):
        missing += Lead.objects.filter(
            workspace_id=workspace_id,
            created_at__gte=recent,
            created_at__lte=now - PENDING_GRACE,
            status=LeadStatus.APPROVED,
            distribution__isnull=True,
        ).values_list("id", flat=True)[: max(limit - len(missing), 0)]
        if len(missing) >= limit:
            break
    for lead_id in missing:
        distribution_start(lead_id=lead_id)
        queued += 1
    return queued


# --- the partner's decision ---------------------------------------------------------------


def distribution_decision(dist: Distribution | None) -> dict[str, Any]:
    """What the partner is told: sold + price (its payout) + redirect URL, unsold +
    reason, or pending."""
    if dist is None:
        return {"status": "pending", "price": None, "redirect_url": "", "reason": ""}
    if dist.status == DistributionStatus.SOLD:
        return {
            "status": "sold",
            "price": str(dist.payout.quantize(Decimal("0.01"))),
            "redirect_url": dist.redirect_url,
            "reason": "",
        }
    if dist.status == DistributionStatus.UNSOLD:
        return {"status": "unsold", "price": None, "redirect_url": "", "reason": dist.reason}
    return {"status": "pending", "price": None, "redirect_url": "", "reason": ""}


def distribution_await(lead: Lead, budget_seconds: float) -> dict[str, Any]:
    """A partner waits synchronously: drive the lead's distribution in this process
    within the budget (or wait for the worker that has it), then answer. The lead is
    saved already: whatever goes wrong here, the partner is told pending (the sweeper
    re-drives the distribution), never an error."""
    try:
        return _distribution_await(lead, budget_seconds)
    except Exception:
        log.exception("pingtree.sync_decision_failed", lead_id=lead.pcid)
        return distribution_decision(None)


def _distribution_await(lead: Lead, budget_seconds: float) -> dict[str, Any]:
    until = time.monotonic() + max(budget_seconds, 0.0)
    dist = Distribution.objects.filter(lead_id=lead.pk).first()
    while True:
        if dist is None:
            lead.refresh_from_db(fields=["status"])
            if lead.status in (LeadStatus.APPROVED,):
                dist = distribution_ensure(lead=lead)
        if dist is not None and dist.status not in DISTRIBUTION_FINISHED:
            if dist.status == DistributionStatus.PENDING:
                dist = distribution_run(
                    distribution_id=dist.pk, budget_seconds=max(until - time.monotonic(), 0.0)
                )
        if dist is not None and dist.status in DISTRIBUTION_FINISHED:
            break
        if time.monotonic() >= until:
            break
        time.sleep(0.02)
        dist = Distribution.objects.filter(lead_id=lead.pk).first()
    return distribution_decision(dist)


@contextlib.contextmanager
def pool_connections_closed() -> Iterator[None]:
    """For tests: stop the pool's threads (and their connections) afterwards."""
    try:
        yield
    finally:
        pool_shutdown()


def refusal_policy_process_refused(workspace_id: int) -> bool:
    return bool(
        RefusalPolicy.objects.filter(workspace_id=workspace_id)
        .values_list("process_refused", flat=True)
        .first()
    )


__all__ = [
    "Cap",
    "distribution_await",
    "distribution_ensure",
    "distribution_run",
    "distribution_start",
    "distributions_sweep",
    "offer_pause",
    "offer_resume",
]
