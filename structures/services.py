"""Writes of the structures app: lead intake and decisions, partner keys, workspaces."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from structures import hooks, intake_config
from structures.choices import LeadSource, LeadStatus, MustPass, PartnerScope, PartnerStatus
from structures.exceptions import IdempotencyConflict, LeadInvalid, PartnerInactive
from structures.fieldtypes import FieldValueError, TypeContext, get_type
from structures.intake_config import PolicySnapshot
from structures.models import (
    DuplicateKey,
    IdempotencyRecord,
    Lead,
    LeadEvent,
    Partner,
    PartnerAPIKey,
    RefusalPolicy,
    Structure,
    Workspace,
)
from structures.selectors import FieldSpec, refusal_policy_for

log = structlog.get_logger(__name__)

RESERVED_KEYS = ("external_id", "sub1", "sub2", "sub3", "sub4", "sub5", "test", "structure")
# A pending lead whose processing task was lost is re-driven by the sweeper after this.
PROCESS_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class IntakeResult:
    """What the partner is told: HTTP status and JSON body."""

    status_code: int
    body: dict[str, Any]
    lead: Lead | None = None
    replayed: bool = False


# --- validation ---------------------------------------------------------------------------


def lead_values_validate(
    *, specs: list[FieldSpec], payload: dict[str, Any], default_region: str
) -> tuple[dict[str, str], dict[str, Any], dict[str, list[str]]]:
    """Validate and normalise ``payload`` against a structure's fields.

    Returns (values by field name, reserved keys, errors by field name). Unknown keys are
    errors: a partner sending a misspelled field learns it at once instead of losing data.
    """
    errors: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    known = {spec.name for spec in specs}
    for key in payload:
        if key not in known and key not in RESERVED_KEYS:
            errors[str(key)[:100]] = ["Unknown field for this structure."]
    for spec in specs:
        raw = payload.get(spec.name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            raw = spec.default or None
        if raw is None:
            if spec.is_required:
                errors[spec.name] = ["This field is required."]
            continue
        try:
            value = get_type(spec.type).normalize(
                raw, TypeContext(default_region=default_region, choices=spec.choices)
            )
        except FieldValueError as exc:
            errors[spec.name] = [str(exc)]
            continue
        if value == "" and spec.is_required:
            errors[spec.name] = ["This field is required."]
            continue
        if spec.regex and value and not re.fullmatch(spec.regex, value):
            errors[spec.name] = ["Does not match the expected format."]
            continue
        if value != "":
            values[spec.name] = value
    extras: dict[str, Any] = {}
    for key in ("external_id", "sub1", "sub2", "sub3", "sub4", "sub5"):
        raw = payload.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str | int):
            errors[key] = ["Expected a text value."]
            continue
        text = str(raw).strip()
        limit = 120 if key == "external_id" else 255
        if len(text) > limit:
            errors[key] = [f"At most {limit} characters."]
            continue
        extras[key] = text
    if "test" in payload:
        try:
            extras["is_test"] = (
                get_type("checkbox").normalize(payload["test"], TypeContext()) == "true"
            )
        except FieldValueError:
            errors["test"] = ["Enter true or false."]
    return values, extras, errors


# --- intake -------------------------------------------------------------------------------


def _request_hash(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _policy_applies(policy: PolicySnapshot | None, *, source: str, partner: Partner) -> bool:
    if policy is None or not policy.is_enabled:
        return False
    if source == LeadSource.API and not policy.applies_to_api:
        return False
    if source == LeadSource.IFRAME and not policy.applies_to_iframe:
        return False
    if policy.partner_scope == PartnerScope.ALL:
        return True
    listed = partner.id in policy.partner_ids
    return listed if policy.partner_scope == PartnerScope.INCLUDE else not listed


class _Duplicate(Exception):
    def __init__(self, holder_id: int, rule_name: str) -> None:
        self.holder_id = holder_id
        self.rule_name = rule_name


def _duplicate_keys(*, lead: Lead, version: str) -> list[tuple[str, str, timedelta]]:
    """(key hash, rule name, window) for every active rule whose fields the lead has."""
    keys = []
    for rule in intake_config.duplicate_rules(lead.workspace_id, version):
        values = [lead.data.get(name, "") for name in rule.field_names]
        if not rule.field_names or any(v == "" for v in values):
            continue
        scope = f"p{lead.partner_id}" if rule.scope == "partner" else "ws"
        material = "\x1f".join([str(rule.id), scope, *rule.field_names, *values])
        keys.append(
            (
                hashlib.sha256(material.encode()).hexdigest(),
                rule.name,
                timedelta(hours=rule.window_hours),
            )
        )
    return keys


def _keys_insert(*, lead: Lead, keys: list[tuple[str, str, timedelta]], now: Any) -> set[str]:
    """Claim the free keys in one ``INSERT ... ON CONFLICT DO NOTHING``; returns them."""
    table = quote(DuplicateKey._meta.db_table)
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(keys))
    params: list[Any] = []
    for key, _, window in keys:
        params += [lead.workspace_id, key, lead.pk, now + window]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (workspace_id, {quote('key')}, lead_id, expires_at) "  # noqa: S608
            f"VALUES {rows} ON CONFLICT (workspace_id, {quote('key')}) DO NOTHING "
            f"RETURNING {quote('key')}",
            params,
        )
        return {row[0] for row in cursor.fetchall()}


def _keys_resolve_taken(
    *, lead: Lead, keys: list[tuple[str, str, timedelta]], claimed: set[str], now: Any
) -> None:
    """The keys the insert could not claim: take over those whose window is over, or
    raise _Duplicate after giving back what this lead claimed (no claim is left behind).

    The unique constraint decides races: a concurrent insert of the same key waits for the
    first transaction and then does nothing, so of 50 identical concurrent posts exactly
    one claims the key. This runs only for duplicates and expired keys.
    """
    taken = [(key, name, window) for key, name, window in keys if key not in claimed]
    if not taken:
        return
    try:
        with transaction.atomic():
            for key, rule_name, window in taken:
                # A conditional UPDATE takes over an expired key; 0 rows means it is still
                # held (or another request renewed it first).
                if DuplicateKey.objects.filter(
                    workspace_id=lead.workspace_id, key=key, expires_at__lte=now
                ).update(lead=lead, expires_at=now + window):
                    continue
                holder = (
                    DuplicateKey.objects.filter(workspace_id=lead.workspace_id, key=key)
                    .values_list("lead_id", flat=True)
                    .first()
                )
                raise _Duplicate(holder_id=holder or 0, rule_name=rule_name)
    except _Duplicate:
        DuplicateKey.objects.filter(workspace_id=lead.workspace_id, key__in=claimed).delete()
        raise


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


@functools.cache
def _insert_shape(model: type[Any], skip: tuple[str, ...]) -> tuple[list[Any], str, str]:
    """Fields, column list and cast placeholders of an INSERT into ``model`` (computed once
    per process: the intake path runs it for every lead)."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key and f.name not in skip]
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in fields)
    return fields, columns, placeholders


def _insert_values(obj: Any, *, skip: tuple[str, ...] = ()) -> tuple[str, str, list[Any]]:
    """Columns, cast placeholders and parameters of an INSERT of ``obj``, prepared exactly
    as the ORM prepares them (defaults, auto_now_add, JSON adaptation)."""
    fields, columns, placeholders = _insert_shape(type(obj), skip)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    return columns, placeholders, params


class _KeysTaken(Exception):
    """The optimistic single-statement insert found a duplicate key taken: nothing was
    written; take the transactional path."""


def _lead_insert(
    *,
    lead: Lead,
    event: LeadEvent,
    keys: list[tuple[str, str, timedelta]],
    now: Any,
    all_or_nothing: bool = False,
) -> set[str]:
    """Write the lead, its history row and its free duplicate keys; return the keys
    claimed. On PostgreSQL that is one statement (three data-modifying CTEs): this is the
    hottest write of the product and each round trip and ORM save costs (see
    docs/benchmarks.md). Elsewhere, the ORM."""
    if connection.vendor != "postgresql":
        lead.save()
        event.lead = lead
        event.save()
        return _keys_insert(lead=lead, keys=keys, now=now) if keys else set()
    lead_cols, lead_ph, params = _insert_values(lead)
    event_cols, event_ph, event_params = _insert_values(event, skip=("lead",))
    sql = [
        f"WITH l AS (INSERT INTO {quote(Lead._meta.db_table)} ({lead_cols}) "  # noqa: S608
        f"VALUES ({lead_ph}) RETURNING id), "
        f"e AS (INSERT INTO {quote(LeadEvent._meta.db_table)} "
        f"({event_cols}, lead_id) SELECT {event_ph}, l.id FROM l "
        "RETURNING id)"
    ]
    params += event_params
    if keys:
        values = ", ".join(
            ["(CAST(%s AS bigint), CAST(%s AS varchar), CAST(%s AS timestamptz))"] * len(keys)
        )
        sql.append(
            f", k AS (INSERT INTO {quote(DuplicateKey._meta.db_table)} "  # noqa: S608
            f"(workspace_id, {quote('key')}, lead_id, expires_at) "
            f"SELECT v.w, v.k, l.id, v.x FROM l, (VALUES {values}) AS v(w, k, x) "
            f"ON CONFLICT (workspace_id, {quote('key')}) DO NOTHING RETURNING {quote('key')})"
        )
        for key, _, window in keys:
            params += [lead.workspace_id, key, now + window]
        sql.append(
            f" SELECT (SELECT id FROM l), (SELECT id FROM e), ARRAY(SELECT {quote('key')} FROM k)"  # noqa: S608
        )
        if all_or_nothing:
            # Outside a transaction the statement is the transaction: when a key is taken
            # it fails (division by zero) and PostgreSQL undoes all of it.
            sql.append(", 1 / (CASE WHEN (SELECT count(*) FROM k) = %s THEN 1 ELSE 0 END)")
            params.append(len(keys))
    else:
        sql.append(" SELECT (SELECT id FROM l), (SELECT id FROM e), ARRAY[]::varchar[]")
    with connection.cursor() as cursor:
        try:
            cursor.execute("".join(sql), params)
        except DataError as exc:
            if all_or_nothing:
                raise _KeysTaken from exc
            raise
        lead_id, event_id, claimed, *_ = cursor.fetchone()
    lead.pk, event.pk = lead_id, event_id
    lead._state.adding = event._state.adding = False
    event.lead = lead
    return set(claimed)


def lead_body(lead: Lead) -> dict[str, Any]:
    """The partner's view of a lead (intake answer and GET)."""
    body: dict[str, Any] = {
        "id": lead.pcid,
        "status": lead.status,
        "reason": lead.reason,
        "external_id": lead.external_id,
        "test": lead.is_test,
        "status_url": lead.status_url,
    }
    return body


def lead_intake(
    *,
    api_key: PartnerAPIKey,
    payload: dict[str, Any],
    source: str = LeadSource.API,
    ip: str | None = None,
    idempotency_key: str | None = None,
) -> IntakeResult:
    """Take a lead in: validate, normalise, check duplicates, apply the refusal policy,
    save it with its history and queue its processing after commit.

    The lead is a database row before the partner hears "accepted" (DESIGN.md invariant).
    """
    partner = api_key.partner
    workspace: Workspace = partner.workspace
    if partner.status != PartnerStatus.ACTIVE:
        raise PartnerInactive(f"Partner is {partner.get_status_display().lower()}.")

    request_hash = _request_hash(payload) if idempotency_key else ""
    if idempotency_key:
        replay = _idempotent_replay(api_key=api_key, key=idempotency_key, request_hash=request_hash)
        if replay:
            return replay

    structure = _structure_for(partner=partner, payload=payload)
    specs = list(intake_config.structure_specs(structure.pk, workspace.config_key))
    values, extras, errors = lead_values_validate(
        specs=specs, payload=payload, default_region=str(workspace.default_country) or "US"
    )
    if errors:
        raise LeadInvalid("Some fields are not valid.", errors=errors)

    policy = intake_config.refusal_policy(workspace.pk, workspace.config_key)
    pending = _policy_applies(policy, source=source, partner=partner)
    save = functools.partial(
        _lead_save,
        workspace=workspace,
        partner=partner,
        structure=structure,
        values=values,
        extras=extras,
        source=source,
        ip=ip,
        pending=pending,
        actor=f"key {api_key.prefix}",
    )
    if connection.vendor == "postgresql" and not idempotency_key and not connection.in_atomic_block:
        # The common case, a new person: one statement, no BEGIN/COMMIT round trips.
        # When a duplicate key is taken nothing is written and the transactional path
        # below decides (duplicate, or an expired key taken over).
        try:
            return save(optimistic=True)
        except _KeysTaken:
            pass
    try:
        with transaction.atomic():
            result = save()
            if idempotency_key:
                IdempotencyRecord.objects.create(
                    api_key=api_key,
                    key=idempotency_key,
                    request_hash=request_hash,
                    status_code=result.status_code,
                    response=result.body,
                )
    except IntegrityError:
        # Only the idempotency row can conflict here (duplicate keys are claimed with
        # ON CONFLICT DO NOTHING): a concurrent request with the same key won; answer as
        # it did.
        if idempotency_key:
            replay = _idempotent_replay(
                api_key=api_key, key=idempotency_key, request_hash=request_hash
            )
            if replay:
                return replay
        raise
    return result


def _structure_for(*, partner: Partner, payload: dict[str, Any]) -> Structure:
    slug = payload.get("structure")
    if slug is not None:
        structure = Structure.objects.filter(
            workspace_id=partner.workspace_id, slug=str(slug), is_active=True
        ).first()
        if structure is None:
            raise LeadInvalid(
                "Unknown structure.", errors={"structure": ["No active structure with this slug."]}
            )
        return structure
    structure = partner.default_structure
    if structure is None or not structure.is_active:
        raise LeadInvalid(
            "No structure.",
            errors={
                "structure": ["This partner has no default structure; name one with `structure`."]
            },
        )
    return structure


def _idempotent_replay(
    *, api_key: PartnerAPIKey, key: str, request_hash: str
) -> IntakeResult | None:
    record = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise IdempotencyConflict(
            "This Idempotency-Key was used with a different request body.",
            errors={"Idempotency-Key": ["Already used with a different request body."]},
        )
    return IntakeResult(status_code=record.status_code, body=record.response, replayed=True)


def _lead_save(
    *,
    workspace: Workspace,
    partner: Partner,
    structure: Structure,
    values: dict[str, str],
    extras: dict[str, Any],
    source: str,
    ip: str | None,
    pending: bool,
    actor: str,
    optimistic: bool = False,
) -> IntakeResult:
    now = timezone.now()
    lead = Lead(
        workspace=workspace,
        structure=structure,
        partner=partner,
        source=source,
        status=LeadStatus.PENDING if pending else LeadStatus.APPROVED,
        data=values,
        ip=ip,
        next_check_at=now + PROCESS_GRACE if pending else None,
        decided_at=None if pending else now,
        created_at=now,
        **extras,
    )
    structlog.contextvars.bind_contextvars(lead_id=lead.pcid)
    keys = [] if lead.is_test else _duplicate_keys(lead=lead, version=workspace.config_key)
    decision = (
        "pending: the refusal policy decides." if pending else "approved (refusal policy off)."
    )
    # One history row for "received, and what was decided at once": a lead's history is
    # read rarely and written on the hottest path.
    event = LeadEvent(
        workspace=workspace,
        lead=lead,
        kind=lead.status,
        actor=actor,
        message=f"Received from {partner} via {source}: {decision}",
        created_at=now,
    )
    claimed = _lead_insert(lead=lead, event=event, keys=keys, now=now, all_or_nothing=optimistic)
    try:
        _keys_resolve_taken(lead=lead, keys=keys, claimed=claimed, now=now)
    except _Duplicate as dup:
        lead.status = LeadStatus.DUPLICATE
        lead.reason = f"Duplicate of an earlier lead (rule: {dup.rule_name})."
        lead.duplicate_of_id = dup.holder_id or None
        lead.next_check_at = None
        lead.decided_at = now
        lead.save(update_fields=["status", "reason", "duplicate_of", "next_check_at", "decided_at"])
        LeadEvent.objects.filter(pk=event.pk).update(
            kind=LeadStatus.DUPLICATE,
            message=f"Received from {partner} via {source}: {lead.reason}",
        )
    log.info("lead.received", status=lead.status, partner_id=partner.id, test=lead.is_test)
    if lead.status in (LeadStatus.APPROVED, LeadStatus.PENDING):
        config_key = workspace.config_key
        transaction.on_commit(
            lambda: _after_accept(lead.id, lead.status, workspace.pk, config_key), robust=True
        )
    return IntakeResult(status_code=201, body=lead_body(lead), lead=lead)


def _after_accept(lead_id: int, status: str, workspace_id: int, config_key: str) -> None:
    from structures.tasks import lead_process_task

    if status == LeadStatus.PENDING:
        lead_process_task.delay(lead_id)
    hooks.lead_accepted.send(
        sender=Lead, lead_id=lead_id, workspace_id=workspace_id, config_key=config_key
    )


# --- decisions ----------------------------------------------------------------------------

STAGES_FOR = {
    MustPass.EVERYTHING: ("validation", "filters", "pingtree"),
    MustPass.VALIDATION: ("validation",),
    MustPass.FILTERS: ("validation", "filters"),
    MustPass.PINGTREE: ("validation", "pingtree"),
}


def lead_process(*, lead_id: int) -> None:
    """Decide a pending lead by its workspace's refusal policy: run the gates of every
    stage the policy asks for. Safe to run twice: only a pending lead is decided."""
    lead = Lead.objects.select_related("workspace", "partner").filter(pk=lead_id).first()
    if lead is None or lead.status != LeadStatus.PENDING:
        log.info("lead.process.skipped", lead_pk=lead_id)
        return
    with structlog.contextvars.bound_contextvars(lead_id=lead.pcid):
        _lead_gates_run(lead)


def _lead_gates_run(lead: Lead) -> None:
    policy = refusal_policy_for(workspace_id=lead.workspace_id)
    stages = STAGES_FOR[MustPass(policy.must_pass if policy else MustPass.EVERYTHING)]
    for stage in stages:
        for gate in hooks.DECISION_GATES[stage]:
            result = gate(lead)
            if result.passed is None:
                Lead.objects.filter(pk=lead.pk, status=LeadStatus.PENDING).update(
                    next_check_at=timezone.now() + PROCESS_GRACE
                )
                return
            if not result.passed:
                lead_decide(lead=lead, approve=False, reason=result.reason, actor="system")
                return
    lead_decide(lead=lead, approve=True, reason="", actor="system")


def lead_decide(*, lead: Lead, approve: bool, reason: str, actor: str) -> bool:
    """Approve or reject a pending lead. Returns False when it was no longer pending
    (someone else decided first): a conditional UPDATE makes the decision happen once."""
    status = LeadStatus.APPROVED if approve else LeadStatus.REJECTED
    now = timezone.now()
    with transaction.atomic():
        changed = Lead.objects.filter(pk=lead.pk, status=LeadStatus.PENDING).update(
            status=status, reason=reason[:300], decided_at=now, next_check_at=None
        )
        if not changed:
            return False
        LeadEvent.objects.create(
            workspace_id=lead.workspace_id,
            lead_id=lead.pk,
            kind=status,
            message=reason or ("Approved." if approve else "Rejected."),
            actor=actor,
        )
    lead.status, lead.reason, lead.decided_at = status, reason, now
    lead_id = lead.pk
    transaction.on_commit(
        lambda: hooks.lead_decided.send(sender=Lead, lead_id=lead_id, status=status), robust=True
    )
    log.info("lead.decided", lead_id=lead.pcid, status=status, reason=reason)
    return True


def leads_sweep(*, limit: int = 500) -> int:
    """Re-drive pending leads whose processing is due (the task was lost or a gate asked
    to look again). Each lead is claimed by moving its next check forward, so two
    sweepers never queue it twice in one interval."""
    from structures.tasks import lead_process_task

    now = timezone.now()
    due = list(
        Lead.objects.filter(status=LeadStatus.PENDING, next_check_at__lte=now)
        .order_by("next_check_at")
        .values_list("id", "next_check_at")[:limit]
    )
    queued = 0
    for lead_id, next_check_at in due:
        claimed = Lead.objects.filter(
            pk=lead_id, status=LeadStatus.PENDING, next_check_at=next_check_at
        ).update(next_check_at=now + PROCESS_GRACE * 2)
        if claimed:
            lead_process_task.delay(lead_id)
            queued += 1
    cutoff = now - timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return queued


# --- partner keys -------------------------------------------------------------------------


def partner_api_key_create(
    *, partner: Partner, name: str, rate_limit_per_minute: int | None = None
) -> tuple[PartnerAPIKey, str]:
    """Create a key and return it with its plaintext, which is never stored nor shown
    again."""
    api_key, plaintext = PartnerAPIKey.objects.create_key(
        partner=partner,
        name=name,
        rate_limit_per_minute=(
            settings.DEFAULT_API_KEY_RATE_LIMIT
            if rate_limit_per_minute is None
            else rate_limit_per_minute
        ),
    )
    return api_key, plaintext


def partner_api_key_revoke(*, api_key: PartnerAPIKey) -> None:
    PartnerAPIKey.objects.filter(pk=api_key.pk).update(revoked=True)


# --- workspaces ---------------------------------------------------------------------------


def workspace_create(*, workspace: Workspace, owner: Any | None) -> Workspace:
    """Create a workspace with its owner, its refusal policy (off) and the usual duplicate
    rules (same email, same phone within 30 days)."""
    from structures.models import DuplicateRule, Field, Membership

    with transaction.atomic():
        workspace.full_clean()
        workspace.save()
        if owner is not None:
            Membership.objects.create(workspace=workspace, user=owner, role="owner")
        RefusalPolicy.objects.get_or_create(workspace=workspace)
        for name, field_name in (
            ("Same email, 30 days", "g_email"),
            ("Same phone, 30 days", "g_phone"),
        ):
            field = Field.objects.filter(workspace__isnull=True, name=field_name).first()
            if field is not None:
                rule = DuplicateRule.objects.create(
                    workspace=workspace, name=name, window_hours=720
                )
                rule.fields.set([field])
    return workspace
