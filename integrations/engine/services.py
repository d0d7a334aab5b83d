"""Writes of the scenario engine: start a run, execute one step, drive a run in-process
with a deadline, sweep what is due or was lost.

How a step runs exactly once:

1. claim: ``UPDATE ... SET status=running WHERE id=%s AND status=pending AND due_at<=now``;
   0 rows means someone else has it (a duplicate delivery) or it is not due;
2. execute the element (a request's HTTP call happens outside any transaction);
3. record: in one transaction holding the run's row lock, finish the step only if it is
   still ours (``status=running AND attempt=<ours>``: the sweeper may have handed it to
   another worker after our lease ran out), merge variables, schedule the next steps
   (a unique constraint makes "the same child of the same parent" impossible twice) and
   finish the run when nothing is pending or running any more.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from django.db import DEFAULT_DB_ALIAS, connection, transaction
from django.db.models import Q
from django.db.models.base import ModelState
from django.utils import timezone

from integrations import services, step_cache, templating
from integrations.context import lead_context
from integrations.engine.conditions import conditions_hold
from integrations.engine.graph import graph_get, graph_version
from integrations.engine.overrides import (
    OVERRIDES_KEY,
    OverrideConfigError,
    overrides_merge,
    overrides_read,
    spec_apply_overrides,
)
from integrations.engine.registry import ELEMENT_HANDLERS, Effect, StepCall
from integrations.engine.signals import run_finished
from integrations.engine.waits import WaitConfigError, wait_until
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestStep,
    RunStep,
    ScenarioRun,
)
from structures.models import Lead

log = structlog.get_logger(__name__)

# A running step whose worker has not reported for this long is presumed dead and
# handed out again. A request step's lease starts at its request's deadline (claimed_at
# is moved to it before sending), so a slow buyer is never sent the same lead twice
# while the first call is still in flight.
LEASE_SECONDS = 60
# A step created already claimed by the driver that will run it (input flag): its
# claimed_at already covers its request's timeout.
LEASE_SET_KEY = "lease_set"
# A task sent for a pending due step is sent again by the sweeper after this long.
REQUEUE_GRACE_SECONDS = 30
# A step handed out this many times (each time its worker died) fails the run.
MAX_ATTEMPTS = 5
BREAKER_REASON = "breaker limit reached"
REPEATER_REASON = "repeater limit reached"
DEADLINE_REASON = "deadline passed"
LOST_REASON = "the worker running this step was lost too often"
FAILING_KINDS = ("error", "timeout")
_EMPTY_OUTCOME: dict[str, Any] = {"kind": "", "reason": "", "captured": {}}

Kind = Element.Kind
StepStatus = RunStep.Status
RunStatus = ScenarioRun.Status


class EngineError(Exception):
    """A run cannot be started or continued as asked."""


def _timezone_name(run: ScenarioRun) -> str:
    if run.lead_id is not None:
        return run.lead.workspace.timezone
    return run.integration.workspace.timezone


def _outcome_dict(outcome: Any) -> dict[str, Any]:
    return {
        "kind": str(outcome.kind),
        "reason": outcome.reason,
        "captured": dict(outcome.captured),
    }


# --- starting -----------------------------------------------------------------------------


def run_start(
    *,
    integration: Integration,
    lead: Lead | None = None,
    meaning: str = "post",
    variables: dict[str, Any] | None = None,
    dry_run: bool = False,
    trigger: str = "default",
    deadline_seconds: float | None = None,
    claim: bool = False,
) -> ScenarioRun:
    """Create a run, execute its matching start elements (same step meaning and
    trigger: ``default``, ``action``, ``webhook``) and leave the steps they lead to due
    now. A start does nothing but choose its next steps, so it is recorded done here, in
    the transaction that creates the run. Nothing is dispatched: the caller drives the
    run (run_drive), enqueues its steps, or leaves them to the sweeper. With
    ``deadline_seconds`` the run is timed out if still unfinished by then. An
    integration without any element gets its default scenario first
    (``scenario_default_build``). ``claim``: this thread drives the run at once
    (run_drive): on PostgreSQL outside a transaction its first steps are written
    already claimed for it, which saves the driver's claim (a caller that then does not
    drive leaves them to the sweeper once their lease is over)."""
    postgresql = connection.vendor == "postgresql"
    # On PostgreSQL the run's insert reads the integration's state itself and inserts
    # only if its config_version is still the one of the graph this process has cached
    # (checked in the database, never trusted); otherwise it is read here first.
    version = graph_version(integration.pk) if postgresql else None
    state = None if version is not None else step_cache.integration_state(integration.pk)
    if state is not None:
        version = state[1]
    for _attempt in range(5):
        graph = graph_get(integration.pk, version=version)
        plan = None
        if graph.elements:
            plan = _run_plan(integration, graph, lead, meaning, variables, dry_run, trigger,
                             deadline_seconds)  # fmt: skip
        if plan is None and state is None:
            # The cached graph may be older than the integration: check before building a
            # default scenario or refusing.
            state = step_cache.integration_state(integration.pk)
            if state is not None and state[1] != version:
                version = state[1]
                continue
        if not graph.elements:
            made = scenario_default_build(integration=integration)
            # A build bumps the version, this one's or another first run's that made
            # the elements meanwhile (then this build made none): read it again, or the
            # driver would look for the elements in the empty graph cached under the old
            # one.
            fresh = step_cache.integration_state(integration.pk)
            if made or (fresh is not None and fresh[1] != version):
                state = fresh
                version = fresh[1] if fresh else None
                continue
        if plan is None:
            raise EngineError(
                f"The integration {integration.name!r} has no {trigger} start for {meaning!r}."
            )
        run, start_steps, next_by_start, now = plan
        if postgresql and version is not None and any(next_by_start):
            claim = claim and not connection.in_atomic_block
            inserted = _run_insert(
                run, start_steps, next_by_start, now, claim=claim, graph=graph, version=version
            )
            if inserted is None:
                raise EngineError(f"The integration {integration.name!r} no longer exists.")
            if run.pk is None:  # changed since this process cached its graph: plan again
                state, version = inserted, inserted[1]
                continue
            _just_started.state = inserted
            log.info("engine.run_start", run_id=run.pk, integration_id=integration.pk)
            return run
        if state is None:
            state = step_cache.integration_state(integration.pk)
            if state is not None and state[1] != version:
                version = state[1]
                continue
        break
    else:
        raise EngineError(f"The integration {integration.name!r} kept changing; try again.")
    with transaction.atomic():
        run.save(force_insert=True)
        steps = RunStep.objects.bulk_create(
            RunStep(
                workspace_id=integration.workspace_id, run=run, element=element, due_at=now,
                status=StepStatus.DONE, started_at=now, finished_at=now, duration_ms=0,
                output=output, input={"variables": run.variables},
            )
            for element, output in start_steps
        )  # fmt: skip
        kids = [
            RunStep(
                workspace_id=integration.workspace_id, run=run, element=element,
                parent_step=step, due_at=now, input={"outcome": dict(_EMPTY_OUTCOME)},
            )
            for step, next_elements in zip(steps, next_by_start, strict=True)
            for element in next_elements
        ]  # fmt: skip
        RunStep.objects.bulk_create(kids)
        if not kids:
            _run_settle(run=run, last_outcome=_EMPTY_OUTCOME, now=now, failed=False)
    log.info(
        "engine.run_start", run_id=run.pk, integration_id=integration.pk, starts=len(start_steps)
    )
    return run


def _run_plan(
    integration: Integration,
    graph: Any,
    lead: Lead | None,
    meaning: str,
    variables: dict[str, Any] | None,
    dry_run: bool,
    trigger: str,
    deadline_seconds: float | None,
) -> tuple[ScenarioRun, list[tuple[Element, dict[str, Any]]], list[list[Element]], datetime] | None:
    """The run, its matching starts (each with its output: recorded done) and the
    elements each leads to, not yet written; None when the graph has no matching
    start."""
    starts = sorted(
        (
            element
            for element in graph.elements.values()
            if element.kind == Kind.START
            and element.meaning == meaning
            and str(element.config.get("trigger") or "default") == trigger
        ),
        key=lambda element: (element.position, element.pk),
    )
    if not starts:
        return None
    now = timezone.now()
    run = ScenarioRun(
        workspace_id=integration.workspace_id,
        integration=integration,
        lead=lead,
        meaning=meaning,
        variables=dict(variables or {}),
        is_dry_run=dry_run,
        deadline_at=(
            now + timedelta(seconds=deadline_seconds) if deadline_seconds is not None else None
        ),
    )
    context: dict[str, Any] = {}
    if any(c.conditions for element in starts for c in graph.outgoing.get(element.pk, ())):
        context = lead_context(lead, variables=run.variables)
    start_steps: list[tuple[Element, dict[str, Any]]] = []
    next_by_start: list[list[Element]] = []
    for element in starts:
        next_elements = [
            connection_.to_element
            for connection_ in graph.outgoing.get(element.pk, ())
            if conditions_hold(
                connection_.conditions or [],
                outcome=_EMPTY_OUTCOME,
                variables=run.variables,
                context=context,
            )
        ]
        output: dict[str, Any] = {"outcome": dict(_EMPTY_OUTCOME)}
        if not next_elements:
            output["ended"] = "no connection matched" if element.pk in graph.outgoing else "end"
        start_steps.append((element, output))
        next_by_start.append(next_elements)
    return run, start_steps, next_by_start, now


_RUN_FIELDS = [f for f in ScenarioRun._meta.concrete_fields if not f.primary_key]


# Runs in hand were built by Model.__init__: their defaults are values already.
_RUN_PREP = services.insert_prep(_RUN_FIELDS, defaults_set=True)
# The run this thread started last (committed: run_start's statement is its own
# transaction): run_drive right after it uses the object in hand instead of reading it
# back. Only outside a transaction, where the insert is known to be committed.
_just_started = threading.local()


def _run_insert(
    run: ScenarioRun,
    start_steps: list[tuple[Element, dict[str, Any]]],
    next_by_start: list[list[Element]],
    now: Any,
    *,
    claim: bool,
    graph: Any,
    version: int,
) -> tuple[str, int] | None:
    """PostgreSQL: the run, its starts (done) and the steps they lead to (due now), in
    one statement: one round trip and one commit for every run a partner waits on.

    The same statement reads the integration's ``(status, config_version)`` (returned:
    the state its first step's request uses, read as freshly as the read every request
    makes) and inserts only while the version is still ``version``, the one ``graph``
    was built at: when it has moved on, nothing is written and ``run.pk`` stays None
    (the caller plans again at the returned version). None: the integration is gone.

    A run this thread drives at once (``claim``) commits without waiting for the WAL
    flush, as its steps' records do (see _DONE_SET_OWN): its caller is still there to
    see a failure and holds the work's own durable origin. A run left to the workers is
    the only record of its work: that commit waits for the disk."""
    params: list[Any] = [run.integration_id, *services.insert_values(run, _RUN_PREP)]
    params += [version, run.workspace_id, now, now, now]
    start_input = json.dumps({"variables": run.variables})
    for element, output in start_steps:
        params += [element.pk, json.dumps(output), start_input]
    triples = [
        (element.pk, kid.pk, _lease_start(graph.acting(kid), now) if claim else None)
        for (element, _output), kids in zip(start_steps, next_by_start, strict=True)
        for kid in kids
    ]
    params += [value for triple in triples for value in triple]
    params += [
        run.workspace_id, "running" if claim else "pending", now,
        json.dumps({"outcome": _EMPTY_OUTCOME}), now if claim else None,
    ]  # fmt: skip
    sql = _run_insert_sql(len(start_steps), len(triples), claim and services.own_transaction())
    run_id, kid_ids, kid_elements, status, current = step_cache.fetch_one(sql, params)
    if status is None:
        return None
    if run_id is None:
        return status, current
    run.pk = run_id
    run._state.adding = False
    run._state.db = DEFAULT_DB_ALIAS
    _just_started.run = run
    _just_started.claims = (
        [
            _Claim(kid_id, element_id, 1, {"outcome": dict(_EMPTY_OUTCOME), LEASE_SET_KEY: True})
            for kid_id, element_id in zip(kid_ids or (), kid_elements or (), strict=True)
        ]
        if claim
        else []
    )
    return status, current


@functools.cache
def _run_insert_sql(starts: int, kids: int, own: bool) -> str:
    """_run_insert's statement, built once per process and shape."""
    q = connection.ops.quote_name
    step_t, run_t = _tables()
    integration_t = q(Integration._meta.db_table)
    columns = ", ".join(q(f.column) for f in _RUN_FIELDS)
    placeholders = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in _RUN_FIELDS)
    start_values = ", ".join(["(%s::bigint, %s::jsonb, %s::jsonb)"] * starts)
    kid_values = ", ".join(["(%s::bigint, %s::bigint, %s::timestamptz)"] * kids)
    no_flush = f" CROSS JOIN {services.NO_FLUSH_SOURCE} AS own" if own else ""
    return (
        f"WITH st AS (SELECT status, config_version FROM {integration_t} "  # noqa: S608
        "WHERE id = %s), "
        f"r AS (INSERT INTO {run_t} ({columns}) SELECT {placeholders} "
        f"FROM st{no_flush} WHERE st.config_version = %s RETURNING id), "
        f"s AS (INSERT INTO {step_t} (workspace_id, run_id, element_id, status, due_at, "
        "attempt, input, output, started_at, finished_at, duration_ms) "
        "SELECT %s, r.id, v.element_id, 'done', %s, 1, v.input, v.output, %s, %s, 0 "
        f"FROM r CROSS JOIN (VALUES {start_values}) AS v(element_id, output, input) "
        "RETURNING id, element_id), "
        "p AS (SELECT * FROM (VALUES "  # noqa: S608
        f"{kid_values}) AS p(start_element, element_id, claimed_at)), "
        f"k AS (INSERT INTO {step_t} (workspace_id, run_id, element_id, parent_step_id, "
        "status, due_at, attempt, input, output, claimed_at, started_at) "
        "SELECT %s, r.id, p.element_id, s.id, %s, %s, 1, %s::jsonb, '{}'::jsonb, "
        "p.claimed_at, %s::timestamptz "
        "FROM r CROSS JOIN s JOIN p ON p.start_element = s.element_id "
        "RETURNING id, element_id) "
        "SELECT (SELECT id FROM r), (SELECT array_agg(id ORDER BY id) FROM k), "
        "(SELECT array_agg(element_id ORDER BY id) FROM k), "
        "(SELECT status FROM st), (SELECT config_version FROM st)"
    )


def _lease_start(element: Element, now: Any) -> Any:
    """claimed_at of a step claimed now: a request's lease starts at its deadline."""
    if element.kind == Kind.REQUEST and element.request_step is not None:
        return now + timedelta(seconds=element.request_step.timeout_seconds)
    return now


def scenario_default_build(*, integration: Integration) -> int:
    """Give an integration without elements the scenario its requests imply: for each
    step meaning among its requests, a start of that meaning followed by those requests
    in order, each next one only when the one before was accepted. So an integration
    installed from the library (a ping and a post request) runs as ping and post at
    once, and shows in the scenario editor like any other. Returns how many elements
    were made (0 when another process made them first or there are already some)."""
    with transaction.atomic():
        # Two first runs at once: the row lock makes the second see the first's graph.
        Integration.objects.select_for_update().filter(pk=integration.pk).first()
        if integration.elements.exists():
            return 0
        made = 0
        by_meaning: dict[str, list[Any]] = {}
        for request_step in integration.requests.order_by("position", "id"):
            by_meaning.setdefault(request_step.meaning or "post", []).append(request_step)
        accepted = [{"source": "outcome", "operator": "equals", "value": "accepted"}]
        for position, (meaning, request_steps) in enumerate(by_meaning.items()):
            previous = Element.objects.create(
                workspace_id=integration.workspace_id,
                integration=integration,
                name=f"Start ({meaning.replace('_', ' ')})",
                kind=Kind.START,
                meaning=meaning,
                position=position * 100,
            )
            made += 1
            for index, request_step in enumerate(request_steps, start=1):
                element = Element.objects.create(
                    workspace_id=integration.workspace_id,
                    integration=integration,
                    name=request_step.name or f"Request {index}",
                    kind=Kind.REQUEST,
                    meaning=meaning,
                    request_step=request_step,
                    position=position * 100 + index,
                )
                made += 1
                Connection.objects.create(
                    workspace_id=integration.workspace_id,
                    integration=integration,
                    from_element=previous,
                    to_element=element,
                    conditions=[] if previous.kind == Kind.START else accepted,
                )
                previous = element
    log.info("engine.scenario_default_build", integration_id=integration.pk, elements=made)
    return made


# --- one step -----------------------------------------------------------------------------


def step_execute(*, step_id: int) -> list[int]:
    """Claim, execute and record one step; return the ids of the next steps that are due
    now (the caller runs or enqueues them). ``[]`` when the step is not ours to run."""
    now = timezone.now()
    claimed = RunStep.objects.filter(pk=step_id, status=StepStatus.PENDING, due_at__lte=now).update(
        status=StepStatus.RUNNING, claimed_at=now, started_at=now
    )
    if not claimed:
        return []
    step = RunStep.objects.select_related(
        "run__integration__workspace",
        "run__lead__workspace",
        "run__lead__partner",
        "run__lead__structure",
        "element__request_step",
        "element__mirror_of__request_step",
    ).get(pk=step_id)
    run = step.run
    if run.status not in ScenarioRun.FINISHED and run.deadline_at and run.deadline_at <= now:
        _run_finish_early(run_id=run.pk, status=RunStatus.TIMED_OUT, reason=DEADLINE_REASON)
        run.status = RunStatus.TIMED_OUT
    if run.status in ScenarioRun.FINISHED:
        # A cancelled or timed-out run executes nothing more.
        RunStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING).update(
            status=StepStatus.SKIPPED,
            finished_at=timezone.now(),
            output={"ended": f"the run is {run.status}"},
        )
        return []
    started = time.monotonic()
    effect = None
    if _acting(step.element).kind == Kind.REQUEST:
        effect = _request_effect(step, run)  # the HTTP call, outside any transaction
    with transaction.atomic():
        return _record_locked(step, run, effect, started)[1]


def _record_locked(
    step: RunStep, run: ScenarioRun, effect: Effect | None, started: float
) -> tuple[ScenarioRun, list[int]]:
    """Inside a transaction: lock the run (keeping the lead already in hand, loaded with
    what the template context reads), execute the tool when ``effect`` is None (tools
    read and write the run's counters and variables under its lock), record the step.
    Returns the locked run as recorded and the ids of the next steps due now."""
    lead = run.lead
    locked = ScenarioRun.objects.select_for_update().get(pk=run.pk)
    if locked.lead_id is not None and lead is not None and lead.pk == locked.lead_id:
        locked.lead = lead
    if effect is None:
        effect = _tool_effect(step, locked)
    return locked, _record(step, locked, effect, started)


def _acting(element: Element) -> Element:
    """The element whose settings apply: a mirror's master, otherwise itself."""
    if element.kind == Kind.MIRROR and element.mirror_of is not None:
        return element.mirror_of
    return element


def _context(step: RunStep, run: ScenarioRun) -> dict[str, Any]:
    return lead_context(run.lead, variables=run.variables)


def _request_effect(
    step: RunStep,
    run: ScenarioRun,
    *,
    state: tuple[str, int] | None = None,
    defer_log: bool = False,
    holder: dict[str, Any] | None = None,
) -> Effect:
    """Send the element's request. ``defer_log``: the call's log row is left in
    ``holder["log"]`` for the caller to write with its record (one commit)."""
    element = _acting(step.element)
    timeout = element.request_step.timeout_seconds
    if not step.input.get(LEASE_SET_KEY):
        in_flight_until = timezone.now() + timedelta(seconds=timeout)
        RunStep.objects.filter(pk=step.pk, status=StepStatus.RUNNING, attempt=step.attempt).update(
            claimed_at=in_flight_until
        )
    overrides = run.variables.get(OVERRIDES_KEY) or None
    context = _context(step, run)
    if holder is not None:
        holder["context"] = context
    result = services.request_run(
        step=element.request_step,
        context=context,
        lead=run.lead,
        origin="scenario",
        dry_run=run.is_dry_run,
        spec_overrides=(
            (lambda spec: spec_apply_overrides(spec, overrides)) if overrides else None
        ),
        state=state,
        defer_log=defer_log,
        run_step_id=step.pk,
        trace=False,  # the run keeps the outcome's fields, never its trace
    )
    if holder is not None:
        holder["log"] = result.log
    outcome = result.outcome
    return Effect(
        outcome=_outcome_dict(outcome),
        variables=dict(outcome.variables),
        overrides_used=bool(overrides),
    )


_BUILT_IN_TOOLS = frozenset(
    (Kind.START, Kind.MODIFY_FIELD, Kind.SET_VARIABLE, Kind.SET_EVENT, Kind.MODIFY_REQUEST,
     Kind.WAIT, Kind.BREAKER, Kind.REPEATER, Kind.MIRROR)
)  # fmt: skip


def _tool_effect(step: RunStep, run: ScenarioRun) -> Effect:
    """Every element but a request; runs under the run's lock (counters, variables)."""
    element = _acting(step.element)
    config = element.config or {}
    # Tools and flow control pass the previous outcome on, so a connection after a wait
    # can still branch on what the request before it answered.
    outcome = dict(step.input.get("outcome") or {"kind": "", "reason": "", "captured": {}})
    effect = Effect(outcome=outcome)
    kind = element.kind
    handler = ELEMENT_HANDLERS.get(kind)
    if handler is not None:
        return handler(
            StepCall(
                step=step,
                run=run,
                element=element,
                config=config,
                previous_outcome=outcome,
                context=_context(step, run),
                resumed=step.input.get("resumed"),
                parked=bool(step.input.get("parked")),
            )
        )
    if kind not in _BUILT_IN_TOOLS:
        effect.outcome = {
            "kind": "error",
            "reason": f"{element.name}: no handler for {kind!r} elements is installed",
            "captured": {},
        }
        effect.failed = True
        return effect
    try:
        if kind in (Kind.MODIFY_FIELD, Kind.SET_VARIABLE):
            name = str(config.get("field") if kind == Kind.MODIFY_FIELD else config.get("name"))
            value = templating.render_value(str(config.get("template") or ""), _context(step, run))
            if value is not templating.DO_NOT_SEND:
                effect.variables[name] = value
                if kind == Kind.MODIFY_FIELD:
                    effect.lead_fields[name] = value
        elif kind == Kind.SET_EVENT:
            name = str(config.get("name") or "event")
            count = int(run.counters.get(f"event:{name}", 0)) + int(config.get("increment", 1))
            run.counters[f"event:{name}"] = count
            effect.variables[name] = count
        elif kind == Kind.MODIFY_REQUEST:
            effect.variables[OVERRIDES_KEY] = overrides_merge(
                run.variables.get(OVERRIDES_KEY), overrides_read(config)
            )
        elif kind == Kind.WAIT:
            effect.due_at = wait_until(
                config=config,
                now=timezone.now(),
                tz_name=_timezone_name(run),
                variables=run.variables,
                lead_created_at=run.lead.created_at if run.lead_id is not None else None,
            )
        elif kind in (Kind.BREAKER, Kind.REPEATER):
            key = f"visits:{step.element_id}"
            visits = int(run.counters.get(key, 0)) + 1
            run.counters[key] = visits
            limit = config.get("limit")
            # The first pass counts: a limit of 4 lets 4 passes through and stops the 5th.
            if limit is not None and visits > int(limit):
                if kind == Kind.BREAKER:
                    effect.stop_reason = BREAKER_REASON
                else:
                    # A repeater's limit ends the loop, not the run: the branch ends here
                    # without an error, so the run succeeds unless another branch fails.
                    effect.end_reason = REPEATER_REASON
                    effect.outcome = {"kind": "", "reason": REPEATER_REASON, "captured": {}}
    except (
        templating.TemplateError,
        WaitConfigError,
        OverrideConfigError,
        TypeError,
        ValueError,
        OverflowError,  # a wait or a date past what datetime holds
    ) as exc:
        effect.outcome = {"kind": "error", "reason": f"{element.name}: {exc}", "captured": {}}
        effect.failed = True
    return effect


def _record(step: RunStep, run: ScenarioRun, effect: Effect, started: float) -> list[int]:
    """Finish the step (if still ours), schedule the next ones, maybe finish the run."""
    now = timezone.now()
    output: dict[str, Any] = {"outcome": effect.outcome}
    if effect.variables:
        output["variables"] = effect.variables
    run_over = run.status in ScenarioRun.FINISHED  # cancelled or timed out meanwhile
    acting_kind = _acting(step.element).kind
    if effect.outcome.get("kind") and (
        acting_kind == Kind.REQUEST or acting_kind in ELEMENT_HANDLERS
    ):
        run.result = dict(effect.outcome)
    if effect.park_until is not None and not run_over:
        return _park(step, run, effect, now)
    if effect.overrides_used:
        run.variables.pop(OVERRIDES_KEY, None)  # they apply to one request only
    run.variables.update(effect.variables)
    next_elements: list[Element] = []
    if run_over:
        output["ended"] = f"the run is {run.status}"
    elif effect.stop_reason:
        output["stopped"] = effect.stop_reason
        run.reason = effect.stop_reason
    elif effect.end_reason:
        output["ended"] = effect.end_reason
        run.reason = effect.end_reason
    elif not effect.failed:
        context = _context(step, run)
        has_outgoing = False
        for connection in (
            Connection.objects.filter(from_element_id=step.element_id)
            .select_related("to_element")
            .order_by("position", "id")
        ):
            has_outgoing = True
            if conditions_hold(
                connection.conditions or [],
                outcome=effect.outcome,
                variables=run.variables,
                context=context,
            ):
                next_elements.append(connection.to_element)
        if not next_elements:
            output["ended"] = "no connection matched" if has_outgoing else "end"
    finished = RunStep.objects.filter(
        pk=step.pk, status=StepStatus.RUNNING, attempt=step.attempt
    ).update(
        status=StepStatus.FAILED if effect.failed or effect.stop_reason else StepStatus.DONE,
        output=output,
        finished_at=now,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    if not finished:
        # Our lease ran out and the sweeper handed the step to another worker: its result
        # is the one that counts. Nothing of ours is written.
        log.warning("engine.step_lost_lease", step_id=step.pk, attempt=step.attempt)
        transaction.set_rollback(True)
        return []
    if effect.lead_fields and run.lead_id is not None and not run.is_dry_run:
        lead = Lead.objects.select_for_update().get(pk=run.lead_id)
        lead.data.update(effect.lead_fields)
        Lead.objects.filter(pk=lead.pk).update(data=lead.data)
    if run_over:
        # The run was finished by someone else (cancel, deadline) while this step ran:
        # keep its status and reason, record what the step did and go no further.
        run.save(update_fields=["variables", "counters", "result"])
        return []
    due_at = effect.due_at or now
    due_now = due_at <= now
    if not due_now and next_elements and not effect.failed:
        # A wait (a buyer polled again later): the run holds for a while. Whoever holds
        # a lead for this run (a ping tree) waits for it as for a buyer's callback; the
        # next request's answer replaces the marker.
        run.result = {**(run.result or {}), "waiting": "wait", "blocking": True}
    RunStep.objects.bulk_create(
        [
            RunStep(
                workspace_id=run.workspace_id,
                run=run,
                element=element,
                parent_step=step,
                due_at=due_at,
                enqueued_at=now if due_now else None,
                input={"outcome": effect.outcome},
            )
            for element in next_elements
        ],
        ignore_conflicts=True,
    )
    _run_settle(
        run=run,
        last_outcome=effect.outcome,
        now=now,
        failed=effect.failed,
        timed_out=effect.timed_out,
    )
    if not due_now:
        return []
    return list(
        RunStep.objects.filter(parent_step=step, status=StepStatus.PENDING, due_at__lte=now)
        .order_by("id")
        .values_list("id", flat=True)
    )


def _park(step: RunStep, run: ScenarioRun, effect: Effect, now: datetime) -> list[int]:
    """Leave the step pending until it is resumed (step_resume) or its time comes."""
    parked = RunStep.objects.filter(
        pk=step.pk, status=StepStatus.RUNNING, attempt=step.attempt
    ).update(
        status=StepStatus.PENDING,
        due_at=effect.park_until,
        claimed_at=None,
        enqueued_at=None,
        input={
            **{k: v for k, v in step.input.items() if k != LEASE_SET_KEY},
            "parked": True,
            "blocking": effect.park_blocking,
        },
        output={"parked": effect.park_note or "waiting", "outcome": effect.outcome},
    )
    if not parked:
        log.warning("engine.step_lost_lease", step_id=step.pk, attempt=step.attempt)
        transaction.set_rollback(True)
        return []
    run.variables.update(effect.variables)
    run.result = {**effect.outcome, "waiting": "webhook", "blocking": effect.park_blocking}
    _run_settle(run=run, last_outcome=effect.outcome, now=now, failed=False)
    return []


def step_resume(*, step_id: int, data: dict[str, Any]) -> bool:
    """Resume a parked step with ``data`` (a callback's payload): it becomes due now and
    a task is sent after commit. False when the step is not parked any more (resumed
    already, timed out, cancelled): a second identical callback changes nothing."""
    from integrations.tasks import step_execute_task

    with transaction.atomic():
        step = (
            RunStep.objects.select_for_update()
            .filter(pk=step_id, status=StepStatus.PENDING)
            .only("id", "run_id", "input")
            .order_by()  # the default ordering joins the run, which would lock it too
            .first()
        )
        if step is None or not step.input.get("parked") or "resumed" in step.input:
            return False
        now = timezone.now()
        RunStep.objects.filter(pk=step_id).update(
            input={**step.input, "resumed": data}, due_at=now, enqueued_at=now
        )
        ScenarioRun.objects.filter(pk=step.run_id, status=RunStatus.WAITING).update(
            status=RunStatus.RUNNING
        )
        transaction.on_commit(lambda: step_execute_task.delay(step_id), robust=True)
    log.info("engine.step_resumed", step_id=step_id, run_id=step.run_id)
    return True


def _run_settle(
    *,
    run: ScenarioRun,
    last_outcome: dict[str, Any],
    now: datetime,
    failed: bool,
    timed_out: bool = False,
) -> None:
    """Under the run's lock: finished when nothing is pending or running, waiting when
    all that is left is due later, running otherwise."""
    # One read of what is left: a run has a handful of live steps at most.
    live = list(
        RunStep.objects.filter(
            run=run, status__in=(StepStatus.PENDING, StepStatus.RUNNING)
        ).values_list("status", "due_at")[:100]
    )
    if not live:
        if timed_out:
            run.status = RunStatus.TIMED_OUT
            run.reason = str(last_outcome.get("reason") or DEADLINE_REASON)[:500]
        elif run.reason == BREAKER_REASON:
            run.status = RunStatus.FAILED
        elif failed or (last_outcome.get("kind") in FAILING_KINDS and not run.is_dry_run):
            run.status = RunStatus.FAILED
            run.reason = str(last_outcome.get("reason") or "")[:500]
        else:
            run.status = RunStatus.SUCCEEDED
        run.finished_at = now
        _announce_finished(run.pk, run.status, run.result, run.variables)
    elif not any(status == StepStatus.RUNNING or due_at <= now for status, due_at in live):
        run.status = RunStatus.WAITING
    else:
        run.status = RunStatus.RUNNING
    run.save(update_fields=["status", "reason", "variables", "counters", "finished_at", "result"])


def _announce_finished(
    run_id: int, status: str, result: dict[str, Any], variables: dict[str, Any]
) -> None:
    transaction.on_commit(
        lambda: run_finished.send(
            sender=ScenarioRun, run_id=run_id, status=status, result=result, variables=variables
        ),
        robust=True,
    )


# --- ending early -------------------------------------------------------------------------


def _run_finish_early(*, run_id: int, status: str, reason: str) -> bool:
    """Finish a live run (cancelled, timed out) by a conditional UPDATE and skip its
    pending steps. A step running now finishes, but schedules nothing and leaves the
    run's status alone. False when the run was already finished (nothing changes)."""
    now = timezone.now()
    with transaction.atomic():
        ended = ScenarioRun.objects.filter(
            pk=run_id, status__in=(RunStatus.RUNNING, RunStatus.WAITING)
        ).update(status=status, reason=reason[:500], finished_at=now)
        if ended:
            RunStep.objects.filter(run_id=run_id, status=StepStatus.PENDING).update(
                status=StepStatus.SKIPPED, finished_at=now, output={"ended": reason[:500]}
            )
            result, variables = ScenarioRun.objects.filter(pk=run_id).values_list(
                "result", "variables"
            ).first() or ({}, {})
            _announce_finished(run_id, status, result or {}, variables or {})
    if ended:
        log.info("engine.run_ended_early", run_id=run_id, status=status, reason=reason)
    return bool(ended)


def run_cancel(*, run_id: int, reason: str) -> ScenarioRun:
    """Cancel a running or waiting run: its pending steps are skipped. Cancelling a
    finished run changes nothing (idempotent); the run is returned as it now is."""
    _run_finish_early(run_id=run_id, status=RunStatus.CANCELLED, reason=reason or "cancelled")
    return ScenarioRun.objects.get(pk=run_id)


def runs_time_out(*, limit: int = 500) -> int:
    """Time out the live runs whose deadline has passed; returns how many."""
    ids = list(
        ScenarioRun.objects.filter(
            status__in=(RunStatus.RUNNING, RunStatus.WAITING), deadline_at__lte=timezone.now()
        )
        .order_by("deadline_at")
        .values_list("id", flat=True)[:limit]
    )
    return sum(
        _run_finish_early(run_id=run_id, status=RunStatus.TIMED_OUT, reason=DEADLINE_REASON)
        for run_id in ids
    )


# --- drivers ------------------------------------------------------------------------------


def run_drive(*, run_id: int, deadline_seconds: float, hand_off: bool = True) -> ScenarioRun:
    """Execute the run's due steps in this process until none is due or the deadline
    passes (a partner waiting synchronously). What is left continues on the workers: due
    steps are enqueued after commit (``hand_off``), later ones wait for the sweeper."""
    from integrations.tasks import step_execute_task

    deadline = time.monotonic() + deadline_seconds
    if connection.vendor == "postgresql":
        run = _drive_in_process(run_id=run_id, deadline=deadline)
        if run is not None:
            return run  # nothing of it is due any more: nothing to hand off
    while time.monotonic() < deadline:
        due = list(
            RunStep.objects.filter(
                run_id=run_id, status=StepStatus.PENDING, due_at__lte=timezone.now()
            )
            .order_by("due_at", "id")
            .values_list("id", flat=True)[:50]
        )
        if not due:
            break
        for step_id in due:
            if time.monotonic() >= deadline:
                break
            step_execute(step_id=step_id)
    if hand_off:
        left = list(
            RunStep.objects.filter(
                run_id=run_id, status=StepStatus.PENDING, due_at__lte=timezone.now()
            ).values_list("id", flat=True)
        )
        RunStep.objects.filter(pk__in=left).update(enqueued_at=timezone.now())
        for step_id in left:
            transaction.on_commit(lambda s=step_id: step_execute_task.delay(s))
    return ScenarioRun.objects.get(pk=run_id)


# --- the in-process driver (PostgreSQL) ----------------------------------------------------
#
# A web request or task driving one run executes its steps back to back. Instead of a
# claim, a load and a locked transaction per step (the task path above), it claims the
# due steps once, keeps the run, its lead and the graph in hand, and records each plain
# step (a start or a request that led somewhere) with ONE statement that writes the
# call's log row, finishes the step (only if still ours and the run still live), merges
# the variables into the run and inserts the next steps already claimed by this driver.
# Everything else (tools that count, waits, parks, failures, a branch's end) takes the
# general path under the run's row lock. A driver that dies leaves claimed steps whose
# lease runs out: the sweeper hands them out again, as for a dead worker.


@dataclass
class _Claim:
    id: int
    element_id: int
    attempt: int
    input: dict[str, Any]


def _tables() -> tuple[str, str]:
    q = connection.ops.quote_name
    return q(RunStep._meta.db_table), q(ScenarioRun._meta.db_table)


def _json_value(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, (str, bytes)) else dict(value or {})


@functools.cache
def _claim_due_sql() -> str:
    step_t, _run_t = _tables()
    q = connection.ops.quote_name
    element_t = q(Element._meta.db_table)
    request_t = q(RequestStep._meta.db_table)
    # A request's lease starts where its deadline ends (claimed_at moved forward by its
    # timeout), as _request_effect does on the task path, in the same statement.
    return (
        f"UPDATE {step_t} AS s SET status = 'running', started_at = %s, "  # noqa: S608
        "claimed_at = %s + make_interval(secs => COALESCE(("
        f"SELECT COALESCE(r.timeout_seconds, mr.timeout_seconds) FROM {element_t} e "
        f"LEFT JOIN {request_t} r ON r.id = e.request_step_id "
        f"LEFT JOIN {element_t} m ON m.id = e.mirror_of_id "
        f"LEFT JOIN {request_t} mr ON mr.id = m.request_step_id "
        "WHERE e.id = s.element_id), 0)) "
        "WHERE s.run_id = %s AND s.status = 'pending' AND s.due_at <= %s "
        "RETURNING s.id, s.element_id, s.attempt, s.input"
    )


def _claim_due(run_id: int) -> list[_Claim]:
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_claim_due_sql(), [now, now, run_id, now])
        rows = cursor.fetchall()
    return sorted(
        (
            _Claim(row[0], row[1], row[2], {**_json_value(row[3]), LEASE_SET_KEY: True})
            for row in rows
        ),
        key=lambda claim: claim.id,
    )


def _unclaim(ids: list[int]) -> None:
    """Give back steps this driver claimed but will not run (its deadline passed)."""
    if ids:
        RunStep.objects.filter(pk__in=ids, status=StepStatus.RUNNING).update(
            status=StepStatus.PENDING, claimed_at=None, started_at=None, enqueued_at=None
        )


def _drive_in_process(*, run_id: int, deadline: float) -> ScenarioRun | None:
    """Drive until nothing of the run is due (returns the run as it now is) or the
    deadline passes (returns None: the caller hands what is left to the workers)."""
    run = getattr(_just_started, "run", None)
    claims: list[_Claim] = getattr(_just_started, "claims", None) or []
    state = getattr(_just_started, "state", None)
    _just_started.run, _just_started.claims, _just_started.state = None, [], None
    if run is None or run.pk != run_id or connection.in_atomic_block:
        claims, state = [], None
        run = (
            ScenarioRun.objects.select_related(
                "integration__workspace", "lead__workspace", "lead__partner", "lead__structure"
            )
            .filter(pk=run_id)
            .first()
        )
    if run is None:
        return None
    while time.monotonic() < deadline:
        # The steps run_start claimed for this thread, then whatever is due.
        queue = deque(claims) if claims else deque(_claim_due(run_id))
        claims = []
        if not queue:
            return run
        while queue:
            if time.monotonic() >= deadline:
                _unclaim([claim.id for claim in queue])
                return None
            # The integration's state read by run_start a moment ago serves its first
            # step; each later one, the state its previous step's record read (or its
            # own read).
            kids, state = _execute_claimed(run, queue.popleft(), state=state)
            queue.extend(kids)
        if run.status in ScenarioRun.FINISHED:
            return run
    return None


def _execute_claimed(
    run: ScenarioRun, claim: _Claim, *, state: tuple[str, int] | None = None
) -> tuple[list[_Claim], tuple[str, int] | None]:
    """Execute one step this driver holds; return the next steps it holds now, and the
    integration's (status, config_version) when its record read them (else None)."""
    now = timezone.now()
    if run.status not in ScenarioRun.FINISHED and run.deadline_at and run.deadline_at <= now:
        _run_finish_early(run_id=run.pk, status=RunStatus.TIMED_OUT, reason=DEADLINE_REASON)
        run.status = RunStatus.TIMED_OUT
    if run.status in ScenarioRun.FINISHED:
        RunStep.objects.filter(pk=claim.id, status=StepStatus.RUNNING).update(
            status=StepStatus.SKIPPED, finished_at=now, output={"ended": f"the run is {run.status}"}
        )
        return [], None
    reused = state is not None
    if state is None:
        state = step_cache.integration_state(run.integration_id)
    graph = graph_get(run.integration_id, version=state[1] if state else None)
    element = graph.elements.get(claim.element_id)
    if element is None and reused:
        # The state handed over by run_start is older than this element: read it now.
        state = step_cache.integration_state(run.integration_id)
        graph = graph_get(run.integration_id, version=state[1] if state else None)
        element = graph.elements.get(claim.element_id)
    if state is None or element is None:
        return [], None  # the integration or the element was deleted: its steps went with it
    step = _step_in_hand(claim, run, element, now)
    acting = graph.acting(element)
    started = time.monotonic()
    holder: dict[str, Any] = {}
    if acting.kind == Kind.REQUEST:
        effect = _request_effect(step, run, state=state, defer_log=True, holder=holder)
    elif acting.kind == Kind.START:
        effect = Effect(outcome=dict(claim.input.get("outcome") or _EMPTY_OUTCOME))
    else:
        effect = None
    entry = holder.get("log")
    if effect is not None and _is_plain(effect):
        variables = {**run.variables, **effect.variables}
        outgoing = graph.outgoing.get(element.id, ())
        context: dict[str, Any] = {}
        if any(connection_.conditions for connection_ in outgoing):
            # The request's own context plus what it set (variables are its last layer):
            # the same as building it again, without reading the lead a second time.
            context = holder.get("context") or lead_context(run.lead, variables=run.variables)
            context = {**context, **effect.variables}
        next_elements = [
            connection_.to_element
            for connection_ in outgoing
            if conditions_hold(
                connection_.conditions or [],
                outcome=effect.outcome,
                variables=variables,
                context=context,
            )
        ]
        if next_elements:
            return _record_fast(step, run, effect, entry, next_elements, graph, started)
        _record_end_fast(step, run, effect, entry, graph, started)
        return [], None
    with transaction.atomic():
        if entry is not None:
            services.log_write(entry)
        locked, _due = _record_locked(step, run, effect, started)
    run.status, run.variables, run.counters = locked.status, locked.variables, locked.counters
    run.result, run.reason, run.finished_at = locked.result, locked.reason, locked.finished_at
    return [], None  # what it made due is claimed by the driver's next pass


# Every column of a RunStep with its default: a step in hand has all of them set, so
# reading any never falls back to a deferred-field query.
_STEP_DEFAULTS = {field.attname: field.get_default() for field in RunStep._meta.concrete_fields}


def _step_in_hand(claim: _Claim, run: ScenarioRun, element: Element, now: datetime) -> RunStep:
    """The claimed step as a saved RunStep, built without Model.__init__ (a tenth of a
    millisecond per step on the driver's hot path): its columns are the claim's and the
    defaults, its run and element the objects already in hand."""
    step = RunStep.__new__(RunStep)
    step.__dict__.update(_STEP_DEFAULTS)
    step.__dict__.update(
        id=claim.id,
        workspace_id=run.workspace_id,
        run_id=run.id,
        element_id=element.id,
        status=StepStatus.RUNNING,
        attempt=claim.attempt,
        input=claim.input,
        output={},  # its own: the defaults' dict is shared
        due_at=now,
    )
    step._state = ModelState()
    step._state.adding = False
    step._state.db = DEFAULT_DB_ALIAS  # `connection` is the default database's
    step._state.fields_cache = {"run": run, "element": element}
    return step


def _is_plain(effect: Effect) -> bool:
    return not (
        effect.park_until
        or effect.failed
        or effect.stop_reason
        or effect.end_reason
        or effect.overrides_used
        or effect.lead_fields
        or effect.due_at
        or effect.timed_out
    )


# Both fast records finish their step the same way: only while it is still ours.
_DONE_SET = (
    "SET status = 'done', output = %s::jsonb, finished_at = %s, duration_ms = %s "
    "WHERE id = %s AND status = 'running' AND attempt = %s"
)
# The same, in a statement that is its own transaction: that transaction commits with
# synchronous_commit off (set_config(..., true) lasts until it ends), as a request's log
# row does (integrations.services.log_write). A step's progress is then not waited
# for on disk: it survives any crash of ours, and a crash of the PostgreSQL server
# itself within ~3 x wal_writer_delay can only take back the last steps' records, and
# only together with everything committed after them (the WAL is flushed in order: any
# synchronous commit, such as the sale a run led to or a webhook step's parking, makes
# them durable first). Taken back, a step is running again with its lease and the
# sweeper re-drives it: its request may be sent again (at least once, as after a worker
# killed mid-step), nothing is lost. docs/deployment.md says the trade-off.
_DONE_SET_OWN = _DONE_SET.replace(" WHERE ", f" FROM {services.NO_FLUSH_SOURCE} AS own WHERE ", 1)


def _done_set(own: bool) -> str:
    return _DONE_SET_OWN if own else _DONE_SET


def _statement(with_log: bool, ctes: list[str], columns: list[str]) -> str:
    """``WITH [lg: the call's log row,] <ctes> SELECT <done count>, <log id>, <columns>``
    (its callers are cached per process and shape)."""
    parts = [f"lg AS ({services.log_insert_sql_text()})"] if with_log else []
    head = ["(SELECT count(*) FROM done)", "(SELECT id FROM lg)" if with_log else "NULL"]
    return "WITH " + ", ".join(parts + ctes) + " SELECT " + ", ".join(head + columns)


def _record_params(
    step: RunStep, effect: Effect, entry: Any, started: float, **extra: Any
) -> tuple[list[Any], datetime, str]:
    """The parameters every fast record starts with (the log row's, then the finished
    step's), the time it records at and the outcome as JSON (serialised once: the step's
    output, the run's result and the next steps' input all carry it); ``extra`` goes
    into the step's output."""
    params: list[Any] = []
    if entry is not None:
        # First: the log row's time must fall within the step's (the run timeline
        # pairs them by time for rows written before logs named their step).
        params.extend(services.log_insert_sql(entry)[1])
    now = timezone.now()
    outcome = json.dumps(effect.outcome)
    rest = {"variables": effect.variables} if effect.variables else {}
    rest.update(extra)
    output = f'{{"outcome": {outcome}' + (f", {json.dumps(rest)[1:]}" if rest else "}")
    params += [
        output, now, int((time.monotonic() - started) * 1000), step.id, step.attempt,
    ]  # fmt: skip
    return params, now, outcome


@functools.cache
def _record_fast_sql(kids: int, with_log: bool, own: bool) -> str:
    step_t, run_t = _tables()
    ctes = [
        f"done AS (UPDATE {step_t} {_done_set(own)} AND EXISTS (SELECT 1 FROM {run_t} "  # noqa: S608
        "WHERE id = %s AND status IN ('running', 'waiting')) RETURNING id)"
    ]
    ctes.append(
        f"upd AS (UPDATE {run_t} SET variables = variables || %s::jsonb, "  # noqa: S608
        "result = COALESCE(%s::jsonb, result), status = 'running' "
        "WHERE id = %s AND status IN ('running', 'waiting') "
        "AND EXISTS (SELECT 1 FROM done) RETURNING id)"
    )
    values = ", ".join(["(%s::bigint, %s::jsonb, %s::timestamptz)"] * kids)
    ctes.append(
        f"kids AS (INSERT INTO {step_t} (workspace_id, run_id, element_id, parent_step_id, "  # noqa: S608
        "status, due_at, enqueued_at, claimed_at, started_at, attempt, input, output) "
        "SELECT %s, %s, v.element_id, done.id, 'running', %s, %s, v.claimed_at, %s, 1, "
        f"v.input, '{{}}'::jsonb FROM done CROSS JOIN (VALUES {values}) "
        "AS v(element_id, input, claimed_at) ON CONFLICT DO NOTHING RETURNING id, element_id)"
    )
    # The integration's state for the next step (the read every request makes first,
    # step_cache.integration_state), taken by this statement instead of a round trip
    # of its own: the same freshness, a moment before the next call.
    # One probe of the integration for both (a left join: a deleted one reads NULLs).
    integration_t = connection.ops.quote_name(Integration._meta.db_table)
    columns = [
        "(SELECT array_agg(id ORDER BY id) FROM kids)",
        "(SELECT array_agg(element_id ORDER BY id) FROM kids)",
        "i.status",
        "i.config_version",
    ]
    tail = f" FROM (VALUES (1)) AS one LEFT JOIN {integration_t} AS i ON i.id = %s"
    return _statement(with_log, ctes, columns) + tail


def _record_fast(
    step: RunStep,
    run: ScenarioRun,
    effect: Effect,
    entry: Any,
    next_elements: list[Element],
    graph: Any,
    started: float,
) -> tuple[list[_Claim], tuple[str, int] | None]:
    params, now, outcome = _record_params(step, effect, entry, started)
    is_answer = graph.acting(step.element).kind == Kind.REQUEST and effect.outcome.get("kind")
    kid_input = {"outcome": effect.outcome}
    kid_input_json = f'{{"outcome": {outcome}}}'
    params += [
        run.id,
        json.dumps(effect.variables), outcome if is_answer else None, run.id,
        run.workspace_id, run.id, now, now, now,
    ]  # fmt: skip
    for element in next_elements:
        acting = graph.acting(element)
        claimed_at = now
        if acting.kind == Kind.REQUEST:
            # The lease starts where the request's deadline ends, as for a claim.
            claimed_at = now + timedelta(seconds=acting.request_step.timeout_seconds)
        # The flag stays in memory: a step handed out again after this driver died is
        # claimed afresh and must move its lease itself.
        params += [element.id, kid_input_json, claimed_at]
    params.append(run.integration_id)
    sql = _record_fast_sql(len(next_elements), entry is not None, services.own_transaction())
    done, log_id, kid_ids, kid_elements, status, version = step_cache.fetch_one(sql, params)
    if entry is not None:
        entry.pk = log_id
        entry._state.adding = False
    if not done:
        # Lost lease, or the run was cancelled or timed out meanwhile: the call is
        # logged, nothing else of ours is written.
        log.warning("engine.step_not_recorded", step_id=step.pk, attempt=step.attempt)
        run.refresh_from_db(fields=["status", "reason", "variables", "result"])
        return [], None
    run.variables.update(effect.variables)
    if is_answer:
        run.result = dict(effect.outcome)
    run.status = RunStatus.RUNNING
    claims = [
        _Claim(kid_id, element_id, 1, {**kid_input, LEASE_SET_KEY: True})
        for kid_id, element_id in zip(kid_ids or (), kid_elements or (), strict=True)
    ]
    return claims, ((status, version) if status is not None else None)


@functools.cache
def _record_end_fast_sql(with_log: bool, own: bool) -> str:
    step_t, run_t = _tables()
    ctes = [f"done AS (UPDATE {step_t} {_done_set(own)} RETURNING id)"]  # noqa: S608
    # Read after the run's row lock was taken (a statement of its own, just before):
    # this statement's snapshot sees every other branch's committed steps.
    ctes.append(
        f"live AS (SELECT status, due_at FROM {step_t} WHERE run_id = %s "  # noqa: S608
        "AND status IN ('pending', 'running') AND id <> %s)"
    )
    ctes.append(
        f"upd AS (UPDATE {run_t} SET variables = variables || %s::jsonb, "  # noqa: S608
        "result = COALESCE(%s::jsonb, result), "
        "status = CASE WHEN NOT EXISTS (SELECT 1 FROM live) THEN "
        f"  CASE WHEN reason = '{BREAKER_REASON}' THEN 'failed' ELSE %s END "
        "WHEN EXISTS (SELECT 1 FROM live WHERE status = 'running' OR due_at <= %s) "
        "THEN 'running' ELSE 'waiting' END, "
        "reason = CASE WHEN NOT EXISTS (SELECT 1 FROM live) AND %s::text IS NOT NULL "
        f"  AND reason <> '{BREAKER_REASON}' THEN %s::text ELSE reason END, "
        "finished_at = CASE WHEN NOT EXISTS (SELECT 1 FROM live) THEN %s ELSE NULL END "
        "WHERE id = %s AND status IN ('running', 'waiting') AND EXISTS (SELECT 1 FROM done) "
        "RETURNING status, reason, finished_at)"
    )
    columns = ["(SELECT status FROM upd)", "(SELECT reason FROM upd)"]
    columns.append("(SELECT finished_at FROM upd)")
    return _statement(with_log, ctes, columns)


def _record_end_fast(
    step: RunStep, run: ScenarioRun, effect: Effect, entry: Any, graph: Any, started: float
) -> None:
    """A plain step that leads nowhere: its branch ends here, and the run with it when
    nothing else of it is live. Under the run's row lock (a parallel branch may end at
    the same moment), in one statement after the lock."""
    params, now, outcome = _record_params(
        step, effect, entry, started,
        ended="no connection matched" if step.element_id in graph.outgoing else "end",
    )  # fmt: skip
    is_answer = graph.acting(step.element).kind == Kind.REQUEST and effect.outcome.get("kind")
    if effect.outcome.get("kind") in FAILING_KINDS and not run.is_dry_run:
        final_status, final_reason = RunStatus.FAILED, str(effect.outcome.get("reason") or "")
    else:
        final_status, final_reason = RunStatus.SUCCEEDED, None
    params += [
        run.id, step.id,
        json.dumps(effect.variables), outcome if is_answer else None,
        str(final_status), now, final_reason, (final_reason or "")[:500], now, run.id,
    ]  # fmt: skip
    # A linear scenario has no other branch: the statement alone is the transaction.
    # Its own transaction either way when the caller has none (the lock's atomic block
    # below is then the outermost one).
    own = services.own_transaction()
    with transaction.atomic() if not graph.is_linear else contextlib.nullcontext():
        if not graph.is_linear:
            # Another branch may end at the same moment: the lock orders the two, so the
            # second sees the first's step finished and finishes the run.
            ScenarioRun.objects.select_for_update().filter(pk=run.pk).values_list("id").first()
        sql = _record_end_fast_sql(entry is not None, own)
        done, log_id, status, reason, finished_at = step_cache.fetch_one(sql, params)
        if entry is not None:
            entry.pk = log_id
            entry._state.adding = False
        if not done or status is None:
            log.warning("engine.step_not_recorded", step_id=step.pk, attempt=step.attempt)
            run.refresh_from_db(fields=["status", "reason", "variables", "result", "finished_at"])
            return
        run.variables.update(effect.variables)
        if is_answer:
            run.result = dict(effect.outcome)
        run.status, run.reason, run.finished_at = status, reason, finished_at
        if status in ScenarioRun.FINISHED:
            _announce_finished(run.pk, status, run.result, run.variables)


def engine_sweep(*, limit: int = 500, send: bool = True) -> int:
    """Time out runs past their deadline, wake pending steps that are due and not queued
    recently, and hand out again the running steps whose worker stopped reporting (lease
    expired), each by a conditional UPDATE so two sweepers never queue one twice. Returns
    how many tasks were sent. ``send=False`` (no Celery: scenario_drive --sweep) only
    makes the lost steps pending again; the caller executes the due ones (steps_drive)."""
    from integrations.tasks import step_execute_task

    runs_time_out(limit=limit)
    now = timezone.now()
    queued = 0
    if not send:
        for step_id, claimed_at, attempt in RunStep.objects.filter(
            status=StepStatus.RUNNING, claimed_at__lt=now - timedelta(seconds=LEASE_SECONDS)
        ).values_list("id", "claimed_at", "attempt")[:limit]:
            if attempt >= MAX_ATTEMPTS:
                _step_abandon(step_id=step_id, claimed_at=claimed_at)
            else:
                RunStep.objects.filter(
                    pk=step_id, status=StepStatus.RUNNING, claimed_at=claimed_at
                ).update(
                    status=StepStatus.PENDING, attempt=attempt + 1, claimed_at=None, due_at=now
                )
        return 0
    stale = now - timedelta(seconds=LEASE_SECONDS)
    for step_id, claimed_at, attempt in (
        RunStep.objects.filter(status=StepStatus.RUNNING, claimed_at__lt=stale)
        .order_by("claimed_at")
        .values_list("id", "claimed_at", "attempt")[:limit]
    ):
        if attempt >= MAX_ATTEMPTS:
            _step_abandon(step_id=step_id, claimed_at=claimed_at)
            continue
        handed = RunStep.objects.filter(
            pk=step_id, status=StepStatus.RUNNING, claimed_at=claimed_at
        ).update(
            status=StepStatus.PENDING, attempt=attempt + 1, claimed_at=None, enqueued_at=now,
            due_at=now,
        )  # fmt: skip
        if handed:
            log.warning("engine.step_redriven", step_id=step_id, attempt=attempt + 1)
            step_execute_task.delay(step_id)
            queued += 1
    grace = now - timedelta(seconds=REQUEUE_GRACE_SECONDS)
    for step_id, enqueued_at in (
        RunStep.objects.filter(status=StepStatus.PENDING, due_at__lte=now)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=grace))
        .order_by("due_at")
        .values_list("id", "enqueued_at")[:limit]
    ):
        woken = RunStep.objects.filter(
            pk=step_id, status=StepStatus.PENDING, enqueued_at=enqueued_at
        ).update(enqueued_at=now)
        if woken:
            step_execute_task.delay(step_id)
            queued += 1
    return queued


def _step_abandon(*, step_id: int, claimed_at: datetime) -> None:
    """A step whose worker died MAX_ATTEMPTS times: fail it, and the run with it."""
    with transaction.atomic():
        step = RunStep.objects.select_related("run").get(pk=step_id)
        run = ScenarioRun.objects.select_for_update().get(pk=step.run_id)
        failed = RunStep.objects.filter(
            pk=step_id, status=StepStatus.RUNNING, claimed_at=claimed_at
        ).update(
            status=StepStatus.FAILED,
            finished_at=timezone.now(),
            output={"outcome": {"kind": "error", "reason": LOST_REASON}},
        )
        if failed:
            _run_settle(
                run=run,
                last_outcome={"kind": "error", "reason": LOST_REASON},
                now=timezone.now(),
                failed=True,
            )


def steps_drive(*, deadline_seconds: float, limit: int = 500) -> int:
    """Execute due pending steps of every run in this process (and the steps they make
    due) until none is due or the deadline passes: the engine without Celery (a shell,
    cron). A step claimed elsewhere is skipped by its compare-and-set. Returns how many
    steps this process executed."""
    deadline = time.monotonic() + deadline_seconds
    executed = 0
    while time.monotonic() < deadline:
        due = list(
            RunStep.objects.filter(status=StepStatus.PENDING, due_at__lte=timezone.now())
            .order_by("due_at", "id")
            .values_list("id", flat=True)[:limit]
        )
        if not due:
            break
        for step_id in due:
            if time.monotonic() >= deadline:
                break
            executed += 1
            step_execute(step_id=step_id)
    return executed
