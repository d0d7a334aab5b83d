"""Writes of the webhooks app: endpoints and their secrets, receiving a callback (stored
raw and matched to a waiting lead, the parked run resumed), parking and waking webhook
steps, and the sweep that matches early callbacks.

How one callback changes state once:

1. one statement (``_receive_sql``) stores the raw request with its final status and,
   in the same transaction, claims the oldest waiting row for the identifier
   (``UPDATE ... WHERE id = (SELECT ... status='waiting' ...) AND status='waiting'``)
   and resumes its parked step the way ``engine.step_resume`` does: of two identical
   callbacks arriving together one claims it, the other updates nothing and is stored
   and answered 2xx as a duplicate. Nothing is processed that is not stored with it.
   A signed callback is stored first on its own (its replay check on the message id
   must refuse it before anything is claimed), then matched by ``_match_sql``; so is any
   callback whose one statement failed, so a failure while processing never loses it;
2. the step's task is sent after that commit (one Redis command, ``publish.py``); the
   scenario goes on on a worker. A failed send is re-driven by the engine's sweeper.

If the step's deadline fired first (the step is running its timeout visit), the row is
claimed but the step is not parked any more: the handler finds the row matched and uses
the callback instead of timing out. A run cancelled meanwhile makes the callback a 404.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import secrets as pysecrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.utils import timezone

from integrations import secrets, step_cache
from integrations.engine import services as engine
from integrations.engine.registry import Effect, StepCall
from integrations.models import Integration, RunStep, ScenarioRun
from integrations.outbound import is_sensitive_header
from integrations.services import NO_FLUSH_SOURCE, own_transaction
from structures.models import Advertiser, Lead, Workspace
from webhooks import publish, signing
from webhooks.models import InboundWebhookRequest, WaitingWebhook, WebhookEndpoint
from webhooks.payloads import MAX_IDENTIFIER, Callback, clean_text
from webhooks.step import WebhookStepConfig, callback_effect, deadline_for

log = structlog.get_logger(__name__)

Inbound = InboundWebhookRequest.Status
Waiting = WaitingWebhook.Status

NOT_FOUND_BODY = {
    "code": 404,
    "message": "Waiting Webhook not found for provided token and identifiers",
}
# An unknown (or revoked) URL: this many misses per source address and minute, then 429.
UNKNOWN_LIMIT_PER_MINUTE = int(getattr(settings, "WEBHOOK_UNKNOWN_LIMIT_PER_MINUTE", 30))
# A callback that found nothing waiting is kept this long: the waiting row may be in a
# transaction not yet committed (the buyer answered faster than we parked).
EARLY_MATCH_SECONDS = max(60.0, 3 * float(getattr(settings, "SWEEPER_INTERVAL_SECONDS", 5.0)))
MAX_BODY_BYTES = int(getattr(settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", 256 * 1024) or 256 * 1024)
MAX_STORED_HEADERS = 60
# A callback still "received" after this long was stored but never processed.
STUCK_SECONDS = 30
# The inbound log is kept this long (no waiting webhook outlives it: see step.py).
LOG_RETENTION_DAYS = int(getattr(settings, "WEBHOOK_LOG_RETENTION_DAYS", 35))
MASK = "***"


class WebhookError(Exception):
    """A refused operator action (shown as an admin message)."""


# --- endpoints and their secrets -------------------------------------------------------------


def token_hash(token: str) -> str:
    """Tokens are 192 random bits: a plain SHA-256 is enough to make a leaked table
    useless for calling us, and cheap on every callback."""
    return hashlib.sha256(token.encode()).hexdigest()


def _token_new() -> str:
    return pysecrets.token_urlsafe(24)


def endpoint_create(
    *,
    workspace: Workspace,
    name: str,
    webhook_id: str | None = None,
    advertiser: Advertiser | None = None,
    match_by: str = WebhookEndpoint.MatchBy.PCID,
    id_location: str = WebhookEndpoint.Location.ANY,
    id_key: str = "pcid",
    advertiser_key: str = "",
    allowed_ips: str = "",
    trigger_integration: Integration | None = None,
    is_enabled: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint; returns it and its token. Given the webhook id of a deleted
    endpoint of the same workspace, the new one takes over its token (and its waiting
    leads), so the URL the buyer has keeps working."""
    endpoint = WebhookEndpoint(
        workspace=workspace,
        name=name,
        advertiser=advertiser,
        match_by=match_by,
        id_location=id_location,
        id_key=id_key,
        advertiser_key=advertiser_key,
        allowed_ips=allowed_ips,
        trigger_integration=trigger_integration,
        is_enabled=is_enabled,
    )
    if webhook_id:
        endpoint.webhook_id = webhook_id
    return endpoint_save_new(endpoint=endpoint)


def endpoint_save_new(*, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """Save a new endpoint built by the caller (the admin form), with a token."""
    with transaction.atomic():
        previous = (
            WebhookEndpoint.objects.select_for_update()
            .filter(
                workspace_id=endpoint.workspace_id,
                webhook_id=endpoint.webhook_id,
                deleted_at__isnull=False,
            )
            .order_by("-deleted_at")
            .first()
        )
        if previous is not None and previous.token_encrypted:
            token = secrets.decrypt(previous.token_encrypted)
            endpoint.token_encrypted = previous.token_encrypted
        else:
            token = _token_new()
            endpoint.token_encrypted = secrets.encrypt(token)
        endpoint.token_hash = token_hash(token)
        endpoint.full_clean()
        endpoint.save()
        if previous is not None:
            WaitingWebhook.objects.filter(endpoint=previous, status=Waiting.WAITING).update(
                endpoint=endpoint
            )
    log.info("webhooks.endpoint_created", endpoint_id=endpoint.pk, reused=previous is not None)
    return endpoint, token


def endpoint_token_rotate(*, endpoint: WebhookEndpoint) -> str:
    """A new token: the old URL stops working at once (answered like an unknown one)."""
    token = _token_new()
    endpoint.token_encrypted = secrets.encrypt(token)
    endpoint.token_hash = token_hash(token)
    endpoint.save(update_fields=["token_encrypted", "token_hash"])
    log.info("webhooks.token_rotated", endpoint_id=endpoint.pk)
    return token


def endpoint_signing_secret_set(*, endpoint: WebhookEndpoint, secret: str | None) -> str:
    """Require Standard Webhooks signatures with ``secret`` (a new one when empty);
    returns it. ``None`` turns the check off."""
    if secret is None:
        endpoint.signing_secret_encrypted = ""
        endpoint.save(update_fields=["signing_secret_encrypted"])
        return ""
    secret = secret.strip() or signing.secret_generate()
    try:
        signing.secret_check(secret)
    except ValueError as exc:
        raise ValidationError({"signing_secret": str(exc)}) from exc
    endpoint.signing_secret_encrypted = secrets.encrypt(secret)
    endpoint.save(update_fields=["signing_secret_encrypted"])
    return secret


def endpoint_disable(*, endpoint: WebhookEndpoint) -> None:
    """Revoke the URL: from the next callback on, on every process, it is answered like
    an unknown one (the storing statement checks the endpoint is still enabled)."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_enabled=False)
    log.info("webhooks.endpoint_disabled", endpoint_id=endpoint.pk)


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Soft delete: the URL stops answering, the log stays, and the webhook id (with its
    token) can be given to a new endpoint of the workspace."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk, deleted_at__isnull=True).update(
        deleted_at=timezone.now(), is_enabled=False
    )
    log.info("webhooks.endpoint_deleted", endpoint_id=endpoint.pk)


_ENDPOINT_COLUMNS = (
    "id", "workspace_id", "webhook_id", "token_hash", "advertiser_id", "match_by",
    "id_location", "id_key", "advertiser_key", "signing_secret_encrypted", "allowed_ips",
    "trigger_integration_id", "is_enabled",
)  # fmt: skip


def _fingerprint_sql(prefix: str = "") -> str:
    """Every column the callback path decides with, and those that say the URL is live,
    as one value: a request is stored only while it is what the process used."""
    return f"md5(row({', '.join(prefix + c for c in (*_ENDPOINT_COLUMNS, 'deleted_at'))})::text)"


_ENDPOINT_SQL = (
    f"SELECT {', '.join(_ENDPOINT_COLUMNS)}, {_fingerprint_sql()} "  # noqa: S608
    "FROM webhooks_webhookendpoint WHERE webhook_id = %s AND deleted_at IS NULL"
)
# Endpoints as last read by this process, by webhook id: (row, fingerprint). Never trusted
# on their own: the statement that stores a callback also checks, in the database, that
# the endpoint is still live with this very token and configuration (fingerprint), and
# stores nothing otherwise (then the endpoint is read again). A revoked or rotated
# token, a deleted endpoint or a changed allowlist, secret or pairing thus takes effect
# at once on every process; the memo only saves the lookup's round trip (bench-callbacks).
_ENDPOINT_MEMO: dict[str, tuple[tuple[Any, ...], str]] = {}
_ENDPOINT_MEMO_SIZE = 1000
_TOKEN_AT = _ENDPOINT_COLUMNS.index("token_hash")


def _portable() -> bool:
    """Not PostgreSQL (the embedded default runs on SQLite): the ORM does what the
    hand-written PostgreSQL statements of the callback path do, in a transaction
    (SQLite's are immediate: one writer at a time, so the claims cannot race)."""
    return connection.vendor != "postgresql"


def _fingerprint_of(row: tuple[Any, ...]) -> str:
    """The portable path's fingerprint of a live endpoint (PostgreSQL computes its own)."""
    return hashlib.md5(repr(tuple(row)).encode(), usedforsecurity=False).hexdigest()


def _endpoint_from(row: tuple[Any, ...], fingerprint: str, *, memo: bool) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(**dict(zip(_ENDPOINT_COLUMNS, row, strict=True)))
    endpoint.fingerprint = fingerprint  # type: ignore[attr-defined]
    endpoint.from_memo = memo  # type: ignore[attr-defined]
    return endpoint


def _endpoint_read(webhook_id: str, hashed: str) -> WebhookEndpoint | None:
    """The live endpoint from the database if ``hashed`` is its token's hash and it is
    enabled (the memo is refreshed either way)."""
    if _portable():
        live = WebhookEndpoint.objects.filter(webhook_id=webhook_id, deleted_at__isnull=True)
        found = live.values_list(*_ENDPOINT_COLUMNS).first()
        if found is not None:
            found = (*found, _fingerprint_of(found))
    else:
        # Hand-written: on the callback path the ORM spent ~1 ms of CPU building this
        # query (bench-callbacks); the columns are the ones the callback path reads.
        with connection.cursor() as cursor:
            cursor.execute(_ENDPOINT_SQL, [webhook_id])
            found = cursor.fetchone()
    if found is None:
        _ENDPOINT_MEMO.pop(webhook_id, None)
        hmac.compare_digest(hashed, hashed)  # the same work either way
        return None
    row, fingerprint = tuple(found[:-1]), found[-1]
    endpoint = _endpoint_from(row, fingerprint, memo=False)
    if not endpoint.is_enabled:
        _ENDPOINT_MEMO.pop(webhook_id, None)
        return None
    if len(_ENDPOINT_MEMO) >= _ENDPOINT_MEMO_SIZE:
        _ENDPOINT_MEMO.clear()
    _ENDPOINT_MEMO[webhook_id] = (row, fingerprint)
    return endpoint if hmac.compare_digest(hashed, endpoint.token_hash) else None


def endpoint_for_token(
    *, webhook_id: str, token: str, fresh: bool = False
) -> WebhookEndpoint | None:
    """The live, enabled endpoint this URL names, or None (unknown, revoked or a wrong
    token are one answer). The token is compared by its hash in constant time. Without
    ``fresh`` it may come from this process's memo: then only for a callback that is
    stored, which checks it again in the same statement (see ``_ENDPOINT_MEMO``)."""
    if len(webhook_id) > 64 or len(token) > 200:
        return None
    hashed = token_hash(token)
    known = None if fresh else _ENDPOINT_MEMO.get(webhook_id)
    if known is not None and hmac.compare_digest(hashed, known[0][_TOKEN_AT]):
        return _endpoint_from(*known, memo=True)
    return _endpoint_read(webhook_id, hashed)


def endpoint_memo_clear() -> None:
    """Forget the endpoints this process read (tests)."""
    _ENDPOINT_MEMO.clear()


# --- rate limit for unknown URLs ----------------------------------------------------------------


def _miss_key(ip: str) -> str:
    return f"webhooks:miss:{ip}:{int(time.time() // 60)}"


def source_miss(*, ip: str) -> bool:
    """Count a call to an unknown (or revoked) URL; True when this address is past its
    limit for the minute (answer 429). Only misses touch the cache: a buyer's valid
    callback costs no cache round trip, and a guesser learns nothing more from a 429
    than from a 404."""
    key = _miss_key(ip)
    if cache.add(key, 1, timeout=120):
        return UNKNOWN_LIMIT_PER_MINUTE < 1
    try:
        count = cache.incr(key)
    except ValueError:  # expired in between
        cache.add(key, 1, timeout=120)
        count = 1
    return count > UNKNOWN_LIMIT_PER_MINUTE


# --- receiving a callback ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def _answer(code: int, message: str) -> Answer:
    return Answer(code, {"code": code, "message": message})


MATCHED = _answer(200, "Webhook received")
DUPLICATE = _answer(200, "Webhook already received")
NOT_FOUND = Answer(404, NOT_FOUND_BODY)
# The same answer as NOT_FOUND, for a URL that is not (or no longer) live: the view also
# counts it against the caller's address, like any unknown URL.
UNKNOWN_URL = Answer(404, NOT_FOUND_BODY)


def ip_allowed(allowed: str, ip: str) -> bool:
    entries = [e.strip() for e in allowed.replace(",", "\n").splitlines() if e.strip()]
    if not entries:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for entry in entries:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _masked_headers(headers: list[tuple[str, str]]) -> list[list[str]]:
    out = []
    for name, value in headers[:MAX_STORED_HEADERS]:
        keep = name.lower() in ("webhook-id", "webhook-timestamp")
        shown = value if keep or not is_sensitive_header(name) else MASK
        out.append([clean_text(name)[:100], clean_text(shown)[:1000]])
    return out


def _masked_query(query: list[tuple[str, str]]) -> list[list[str]]:
    return [
        [clean_text(n)[:200], MASK if is_sensitive_header(n) else clean_text(v)[:2000]]
        for n, v in query[:200]
    ]


def _identifiers(endpoint: WebhookEndpoint, call: Callback) -> tuple[str | None, str | None]:
    """(identifier, advertiser as sent) read where the endpoint says."""
    identifier = call.read(endpoint.id_location, endpoint.id_key)
    advertiser = None
    if endpoint.match_by == WebhookEndpoint.MatchBy.EXTERNAL_ID and endpoint.advertiser_key:
        advertiser = call.read(endpoint.id_location, endpoint.advertiser_key)
    return identifier, advertiser


def _advertiser_id(endpoint: WebhookEndpoint, sent: str | None) -> int | None:
    if endpoint.advertiser_id is not None:
        return endpoint.advertiser_id
    if sent and sent.isdigit() and len(sent) < 19:
        return int(sent)
    return None


def callback_receive(
    *, endpoint: WebhookEndpoint, call: Callback, ip: str, path: str, again: bool = True
) -> Answer:
    """Store the callback, check it, and match it (or start the trigger's scenario).
    ``UNKNOWN_URL`` when the endpoint turned out revoked (the view answers as for an
    unknown URL)."""
    identifier, advertiser_sent = _identifiers(endpoint, call)
    status, note, message_id = Inbound.RECEIVED, "", ""
    refusal: Answer | None = None
    if not ip_allowed(endpoint.allowed_ips, ip):
        status, note = Inbound.REFUSED, f"source address {ip} is not allowed"
        refusal = _answer(403, "Source address not allowed")
    elif endpoint.signing_secret_encrypted:
        try:
            message_id = signing.verify(
                secrets.decrypt(endpoint.signing_secret_encrypted),
                headers={n.lower(): v for n, v in call.headers},
                body=call.body,
                now=time.time(),
            )
        except signing.SignatureError as exc:
            status, note = Inbound.REFUSED, f"signature: {exc}"
            refusal = _answer(401, f"Invalid signature: {exc}")
    if refusal is None and endpoint.trigger_integration_id is None and not identifier:
        status = Inbound.INVALID
        note = f"no {endpoint.id_key!r} in the {endpoint.get_id_location_display().lower()}"
        refusal = _answer(400, f"Missing identifier {endpoint.id_key!r}")

    values = {
        "workspace": endpoint.workspace_id,
        "endpoint": endpoint.pk,
        "method": call.method[:10],
        "path": path[:200],
        "query": json.dumps(_masked_query(call.query)),
        "headers": json.dumps(_masked_headers(call.headers)),
        "content_type": clean_text(call.content_type)[:200],
        "body": call.text,
        "ip": ip or None,
        "at": timezone.now(),
        "status": status,
        "note": note[:300],
        "identifier": (identifier or "")[:MAX_IDENTIFIER],
        "advertiser": (advertiser_sent or "")[:64],
        "message": message_id,
        "fingerprint": getattr(endpoint, "fingerprint", ""),
    }
    advertiser_id = _advertiser_id(endpoint, advertiser_sent)
    if (
        refusal is None
        and not message_id
        and endpoint.trigger_integration_id is None
        and identifier
        and len(identifier) <= MAX_IDENTIFIER
        and (endpoint.match_by != WebhookEndpoint.MatchBy.EXTERNAL_ID or advertiser_id is not None)
        and not _portable()
    ):
        stored = _receive(endpoint=endpoint, values=values, advertiser_id=advertiser_id)
        if stored is not None:
            return stored
        inbound_id = None  # not stored: the endpoint is no longer what this process read
    else:
        inbound_id = _inbound_insert(values)
    if inbound_id is None:
        current = _endpoint_read(endpoint.webhook_id, endpoint.token_hash)
        if current is None:
            return UNKNOWN_URL  # revoked, rotated or deleted since this process read it
        if current.fingerprint != values["fingerprint"] or not message_id:  # type: ignore[attr-defined]
            if not again:
                return _answer(503, "The webhook changed while receiving this call: retry")
            # Changed since this process read it: decide again with what it is now.
            return callback_receive(endpoint=current, call=call, ip=ip, path=path, again=False)
        # The unique (endpoint, message id) refused it: a replay of a signed message.
        values.update(
            message="", status=Inbound.REPLAY, note=f"webhook-id {message_id} seen before"
        )
        _inbound_insert(values)
        return _answer(409, "Message already received (webhook-id)")
    if refusal is not None:
        return refusal
    if endpoint.trigger_integration_id is not None:
        return _trigger_start(
            endpoint=endpoint, inbound_id=inbound_id, call=call, identifier=identifier
        )
    if identifier is None or len(identifier) > MAX_IDENTIFIER:
        _inbound_set(inbound_id, Inbound.NOT_FOUND, "identifier too long")
        return NOT_FOUND
    return _match(endpoint=endpoint, inbound_id=inbound_id, identifier=identifier,
                  advertiser_id=advertiser_id, fresh=True)  # fmt: skip


_INBOUND_COLUMNS = """
    INSERT INTO webhooks_inboundwebhookrequest
        (workspace_id, endpoint_id, method, path, query, headers, content_type, body,
         source_ip, received_at, status, note, identifier, advertiser_ref, message_id)
"""
_INBOUND_VALUES = """
    %(workspace)s, %(endpoint)s, %(method)s, %(path)s, %(query)s::jsonb,
    %(headers)s::jsonb, %(content_type)s, %(body)s, %(ip)s, %(at)s, %(status)s,
    %(note)s, %(identifier)s, %(advertiser)s, %(message)s
"""
# Stored only while the endpoint is live with the token and configuration this process
# decided with (it may have come from the memo): see _ENDPOINT_MEMO.
_INBOUND_GUARD = f"""
    WHERE EXISTS (SELECT 1 FROM webhooks_webhookendpoint e
                  WHERE e.id = %(endpoint)s AND e.deleted_at IS NULL AND e.is_enabled
                    AND {_fingerprint_sql("e.")} = %(fingerprint)s)
"""  # noqa: S608 - constants only, values bound
_INBOUND_CONFLICT = """
    ON CONFLICT (endpoint_id, message_id) WHERE message_id <> '' DO NOTHING
    RETURNING id
"""
_INBOUND_INSERT = (
    f"{_INBOUND_COLUMNS} SELECT {_INBOUND_VALUES} {_INBOUND_GUARD} {_INBOUND_CONFLICT}"  # noqa: S608
)
# Its own transaction, committed without waiting for the WAL flush (synchronous_commit
# off for this statement only: set_config(..., true) is SET LOCAL). The row is committed
# and visible at once, so it is stored before it is processed; it is on disk before
# any answer that promises something, because every such answer (200, 202, the 404
# that keeps an early callback) follows a write of ours committed synchronously, and
# that flush covers the WAL written before it. Only a PostgreSQL crash in the
# following ~0.6 s could lose it, and then the buyer had no answer and retries. Saves
# one fsync wait per callback (bench-callbacks).
_INBOUND_INSERT_ASYNC = (
    f"{_INBOUND_COLUMNS} SELECT {_INBOUND_VALUES} "  # noqa: S608 - constants, values bound
    f"FROM {NO_FLUSH_SOURCE} AS async_commit "
    f"{_INBOUND_GUARD} {_INBOUND_CONFLICT}"
)


def _inbound_insert(values: dict[str, Any]) -> int | None:
    """Store the raw callback (its own transaction: committed before anything else);
    None when its signed message id was seen before, or when the endpoint is no longer
    what the caller read (revoked, rotated, changed). Hand-written like the endpoint
    lookup: the ORM's save cost more than the insert itself on this path."""
    if _portable():
        return _inbound_insert_orm(values)
    # Inside a caller's transaction the setting would cover that whole transaction.
    sql = _INBOUND_INSERT_ASYNC if own_transaction() else _INBOUND_INSERT
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    return row[0] if row else None


def _inbound_insert_orm(values: dict[str, Any]) -> int | None:
    """``_inbound_insert`` on the portable path: the same guard and replay check."""
    try:
        with transaction.atomic():
            live = WebhookEndpoint.objects.filter(
                pk=values["endpoint"], deleted_at__isnull=True, is_enabled=True
            ).values_list(*_ENDPOINT_COLUMNS)
            found = live.first()
            if found is None or _fingerprint_of(found) != values["fingerprint"]:
                return None
            if (
                values["message"]
                and InboundWebhookRequest.objects.filter(
                    endpoint_id=values["endpoint"], message_id=values["message"]
                ).exists()
            ):
                return None
            return InboundWebhookRequest.objects.create(
                workspace_id=values["workspace"], endpoint_id=values["endpoint"],
                method=values["method"], path=values["path"], query=json.loads(values["query"]),
                headers=json.loads(values["headers"]), content_type=values["content_type"],
                body=values["body"], source_ip=values["ip"], status=values["status"],
                note=values["note"], identifier=values["identifier"],
                advertiser_ref=values["advertiser"], message_id=values["message"],
            ).pk  # fmt: skip
    except IntegrityError:  # the same signed message id stored meanwhile: a replay
        return None


def _waiting_rows(endpoint: WebhookEndpoint, identifier: str, advertiser_id: int | None) -> Any:
    """The waiting rows of the callback's identifier, by pairing mode (the ORM's
    ``_waiting_where``)."""
    if endpoint.match_by == WebhookEndpoint.MatchBy.EXTERNAL_ID:
        return WaitingWebhook.objects.filter(
            endpoint_id=endpoint.pk, external_id=identifier, advertiser_id=advertiser_id
        )
    return WaitingWebhook.objects.filter(endpoint_id=endpoint.pk, pcid=identifier)


def _claim_orm(
    *, endpoint: WebhookEndpoint, identifier: str, advertiser_id: int | None, inbound_id: int
) -> tuple[int, int, int | None] | None:
    """``_match``'s statement on the portable path: claim the oldest waiting row, resume
    its parked step as ``engine.step_resume`` does, mark the callback matched."""
    now = timezone.now()
    with transaction.atomic():
        rows = _waiting_rows(endpoint, identifier, advertiser_id)
        first = rows.filter(status=Waiting.WAITING).order_by("id")
        found = first.values_list("id", "step_id").first()
        if found is None:
            return None
        waiting_id, step_id = found
        claimed = WaitingWebhook.objects.filter(pk=waiting_id, status=Waiting.WAITING).update(
            status=Waiting.MATCHED, matched_at=now
        )
        if not claimed:
            return None
        resumed = None
        pending = RunStep.objects.filter(pk=step_id, status=RunStep.Status.PENDING)
        step = pending.values_list("input", "run_id").first()
        if step is not None and "parked" in (step[0] or {}) and "resumed" not in step[0]:
            data = {**step[0], "resumed": {"inbound_id": inbound_id}}
            if pending.update(input=data, due_at=now, enqueued_at=now):
                resumed = step_id
                ScenarioRun.objects.filter(pk=step[1], status=ScenarioRun.Status.WAITING).update(
                    status=ScenarioRun.Status.RUNNING
                )
        InboundWebhookRequest.objects.filter(pk=inbound_id).update(
            status=Inbound.MATCHED, waiting_id=waiting_id
        )
    return waiting_id, step_id, resumed


def _inbound_set(inbound_id: int, status: str, note: str = "", **extra: Any) -> None:
    InboundWebhookRequest.objects.filter(pk=inbound_id).update(
        status=status, note=note[:300], **extra
    )


def _waiting_where(external: bool) -> str:
    """The waiting rows of the callback's identifier, by pairing mode."""
    if external:
        return "endpoint_id = %(endpoint)s AND external_id = %(ident)s AND advertiser_id = %(adv)s"
    return "endpoint_id = %(endpoint)s AND pcid = %(ident)s"


def _claim_cte(external: bool, *, guard: str = "") -> str:
    """CTE ``w``: claim the oldest waiting row for the identifier (``guard``: a further
    condition). Lock order: waiting row, step, run; the step's own handler locks the
    run, then its waiting row, but only after claiming the step, which the step lock
    of ``_resume_ctes`` excludes."""
    where = _waiting_where(external)
    waiting = WaitingWebhook._meta.db_table
    return f"""
        w AS (
            UPDATE {waiting} SET status = 'matched', matched_at = %(now)s
            WHERE id = (SELECT id FROM {waiting} WHERE {where} AND status = 'waiting'
                        ORDER BY id LIMIT 1)
              AND status = 'waiting' {guard}
            RETURNING id, step_id
        )"""  # noqa: S608 - table names from the models, values bound


def _resume_ctes(resumed: str) -> str:
    """CTEs ``s`` and ``r``: resume the claimed row's parked step exactly as
    engine.step_resume does (``resumed`` merged into its input, due now, the run running
    again) when it is still parked and not resumed."""
    step_table = RunStep._meta.db_table
    run_table = ScenarioRun._meta.db_table
    return f"""
        s AS (
            UPDATE {step_table} SET input = input || {resumed}, due_at = %(now)s,
                enqueued_at = %(now)s
            WHERE id = (SELECT step_id FROM w) AND status = 'pending'
              AND input ? 'parked' AND NOT input ? 'resumed'
            RETURNING id, run_id
        ), r AS (
            UPDATE {run_table} SET status = 'running'
            WHERE id = (SELECT run_id FROM s) AND status = 'waiting'
        )"""  # noqa: S608 - table names from the models, values bound


@functools.cache
def _match_sql(external: bool) -> str:
    """``_match``'s statement for a pairing mode (built once per process): claim the
    waiting row, resume the parked step, mark the stored callback matched. One
    statement, one round trip (its own transaction outside an atomic block): the
    callback path is the hot one (bench-callbacks)."""
    inbound = InboundWebhookRequest._meta.db_table
    return f"""
        WITH {_claim_cte(external)}, {_resume_ctes("%(resumed)s::jsonb")}, i AS (
            UPDATE {inbound} SET status = 'matched', waiting_id = (SELECT id FROM w)
            WHERE id = %(inbound)s AND EXISTS (SELECT 1 FROM w)
        )
        SELECT w.id, w.step_id, (SELECT id FROM s) FROM w
    """  # noqa: S608 - table names from the models, values bound


def _match(
    *,
    endpoint: WebhookEndpoint,
    inbound_id: int,
    identifier: str,
    advertiser_id: int | None,
    fresh: bool,
) -> Answer:
    """Claim the oldest waiting row for the identifier and resume its step. ``fresh``:
    the callback just arrived (an unmatched one is kept for a late waiting row)."""
    external = endpoint.match_by == WebhookEndpoint.MatchBy.EXTERNAL_ID
    if external and advertiser_id is None:
        _inbound_set(inbound_id, Inbound.NOT_FOUND, "no advertiser to pair the buyer's id with")
        return NOT_FOUND
    now = timezone.now()
    params = {"endpoint": endpoint.pk, "ident": identifier, "adv": advertiser_id,
              "inbound": inbound_id, "now": now,
              "resumed": json.dumps({"resumed": {"inbound_id": inbound_id}})}  # fmt: skip
    if _portable():
        claimed = _claim_orm(endpoint=endpoint, identifier=identifier,
                             advertiser_id=advertiser_id, inbound_id=inbound_id)  # fmt: skip
    else:
        with connection.cursor() as cursor:
            cursor.execute(_match_sql(external), params)
            claimed = cursor.fetchone()
    if claimed is not None:
        return _claimed(inbound_id, *claimed)
    return _unclaimed(endpoint=endpoint, inbound_id=inbound_id, identifier=identifier,
                      advertiser_id=advertiser_id, fresh=fresh)  # fmt: skip


def _claimed(inbound_id: int, waiting_id: int, step_id: int, resumed: int | None) -> Answer:
    """The answer to a callback that claimed a waiting row (``resumed``: the parked step
    it resumed, None when the step was not parked any more)."""
    if resumed is not None:
        # One LPUSH (see publish.py); a failed send is re-driven by the sweeper.
        transaction.on_commit(lambda: publish.step_execute_send(step_id), robust=True)
        return MATCHED
    step_status = RunStep.objects.filter(pk=step_id).values_list("status", flat=True).first()
    if step_status not in (RunStep.Status.SKIPPED, None):
        # Its deadline fired while we claimed it: the timeout visit of the step
        # finds the row matched and takes this callback instead of timing out.
        return MATCHED
    # The run ended (cancelled, deadline: its pending steps were skipped).
    WaitingWebhook.objects.filter(pk=waiting_id).update(status=Waiting.CANCELLED)
    _inbound_set(inbound_id, Inbound.NOT_FOUND, "the run ended before the callback")
    return NOT_FOUND


def _unclaimed(
    *,
    endpoint: WebhookEndpoint,
    inbound_id: int,
    identifier: str,
    advertiser_id: int | None,
    fresh: bool,
) -> Answer:
    """Nothing waiting was claimed: a duplicate of a matched callback, a late one, or an
    early one (kept, when ``fresh``, for the sweep to match)."""
    rows = _waiting_rows(endpoint, identifier, advertiser_id)
    last = rows.order_by("-id").values_list("id", "status").first()
    if last is not None and last[1] == Waiting.MATCHED:
        _inbound_set(inbound_id, Inbound.DUPLICATE, "already matched", waiting_id=last[0])
        return DUPLICATE
    if last is not None and fresh:
        _inbound_set(inbound_id, Inbound.NOT_FOUND, f"the waiting webhook is {last[1]}")
    elif fresh:
        _inbound_set(inbound_id, Inbound.UNMATCHED, "nothing waiting yet")
    return NOT_FOUND


_RECEIVE_COLUMNS = """
    workspace_id, endpoint_id, method, path, query, headers, content_type, body, source_ip,
    received_at, identifier, advertiser_ref, message_id, status, note, waiting_id
"""


@functools.cache
def _receive_sql(external: bool) -> str:
    """``_receive``'s statement for a pairing mode (built once per process)."""
    where = _waiting_where(external)
    waiting = WaitingWebhook._meta.db_table
    inbound = InboundWebhookRequest._meta.db_table
    # live: the endpoint as this process decided with it (see _ENDPOINT_MEMO); nothing is
    # claimed or stored otherwise. w, s, r: the claim and the resume of _match_sql. last:
    # what the identifier's newest waiting row is when nothing was claimed (a duplicate,
    # a late or an early callback), so the stored request has its final status at once;
    # when that row reads 'waiting' (claimed by a concurrent callback after this
    # statement's snapshot) the caller decides again with a fresh read. The step's
    # resumed input names the stored request, which the insert returns.
    resumed = "jsonb_build_object('resumed', jsonb_build_object('inbound_id', (SELECT id FROM i)))"
    claim = _claim_cte(external, guard="AND EXISTS (SELECT 1 FROM live)")
    return f"""
        WITH live AS (SELECT 1 {_INBOUND_GUARD}), {claim}, last AS (
            SELECT id, status FROM {waiting}
            WHERE {where} AND NOT EXISTS (SELECT 1 FROM w) ORDER BY id DESC LIMIT 1
        ), i AS (
            INSERT INTO {inbound} ({_RECEIVE_COLUMNS})
            SELECT %(workspace)s, %(endpoint)s, %(method)s, %(path)s, %(query)s::jsonb,
                %(headers)s::jsonb, %(content_type)s, %(body)s, %(ip)s, %(now)s,
                %(identifier)s, %(advertiser)s, '',
                CASE WHEN w.id IS NOT NULL THEN %(matched)s
                     WHEN last.status = 'matched' THEN %(duplicate)s
                     WHEN last.id IS NOT NULL THEN %(not_found)s
                     ELSE %(unmatched)s END,
                CASE WHEN w.id IS NOT NULL THEN ''
                     WHEN last.status = 'matched' THEN 'already matched'
                     WHEN last.id IS NOT NULL THEN 'the waiting webhook is ' || last.status
                     ELSE 'nothing waiting yet' END,
                COALESCE(w.id, CASE WHEN last.status = 'matched' THEN last.id END)
            FROM live LEFT JOIN w ON true LEFT JOIN last ON true
            RETURNING id
        ), {_resume_ctes(resumed)}
        SELECT (SELECT id FROM i), w.id, w.step_id, (SELECT id FROM s),
               (SELECT status FROM last)
        FROM (SELECT 1) AS one LEFT JOIN w ON true
    """  # noqa: S608 - table names from the models, values bound


def _receive_row(sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run ``_receive``'s statement; it is also the connection's health check.

    Django checks a kept connection with a ``SELECT 1`` round trip before the first query
    of each request (``CONN_HEALTH_CHECKS``): one more wait and one more query per
    callback (bench-callbacks, docs/benchmarks.md). Here the statement checks it: when it
    fails and the connection turns out dead, the connection is dropped and the statement
    runs once more on a new one. That is safe: a statement sent on a dead connection
    committed nothing; one whose connection died after its commit is found matched by
    the second run, which answers a duplicate (the resumed step's task then comes from
    the sweeper, as after a lost send). A failure on a live connection is raised as is."""
    unchecked = (
        connection.health_check_enabled
        and not connection.health_check_done
        and connection.connection is not None
    )
    if unchecked:
        connection.health_check_done = True
    try:
        return step_cache.fetch_one(sql, params)
    except (OperationalError, InterfaceError):
        if not unchecked or connection.is_usable():
            raise
    log.info("webhooks.receive_reconnected")
    connection.close()
    return step_cache.fetch_one(sql, params)


def _receive(
    *, endpoint: WebhookEndpoint, values: dict[str, Any], advertiser_id: int | None
) -> Answer | None:
    """Store a callback and match it in one statement (PostgreSQL; a callback to match,
    unsigned, so no replay check must come first). The stored request, the claim of the
    waiting row and the resumed step commit together, synchronously, before any answer:
    one round trip, one transaction and no rewrite of the stored row per callback, where
    storing first took two of each (bench-callbacks: database CPU per callback halved).
    If that statement fails, the request is stored on its own first and then matched,
    as for a signed callback, so a failure while processing never loses it (the sweep
    matches a stored request left unprocessed). None when nothing was stored (the
    endpoint changed: the caller reads it again)."""
    external = endpoint.match_by == WebhookEndpoint.MatchBy.EXTERNAL_ID
    params = {**values, "now": values["at"], "adv": advertiser_id, "ident": values["identifier"],
              "matched": Inbound.MATCHED, "duplicate": Inbound.DUPLICATE,
              "not_found": Inbound.NOT_FOUND, "unmatched": Inbound.UNMATCHED}  # fmt: skip
    try:
        row = _receive_row(_receive_sql(external), params)
        inbound_id, waiting_id, step_id, resumed, last = row
    except DatabaseError:
        if not own_transaction():
            raise  # the caller's transaction is aborted: nothing more can be written in it
        log.warning("webhooks.receive_failed", endpoint_id=endpoint.pk, exc_info=True)
        inbound_id = _inbound_insert(values)
        if inbound_id is None:
            return None
        return _match(endpoint=endpoint, inbound_id=inbound_id, identifier=values["identifier"],
                      advertiser_id=advertiser_id, fresh=True)  # fmt: skip
    if inbound_id is None:
        return None
    if waiting_id is not None:
        return _claimed(inbound_id, waiting_id, step_id, resumed)
    if last == Waiting.WAITING:
        # Claimed by a concurrent callback after this statement's snapshot was taken:
        # decide with what is committed now (a duplicate, most likely).
        return _unclaimed(endpoint=endpoint, inbound_id=inbound_id,
                          identifier=values["identifier"], advertiser_id=advertiser_id,
                          fresh=True)  # fmt: skip
    return DUPLICATE if last == Waiting.MATCHED else NOT_FOUND


def _trigger_start(
    *, endpoint: WebhookEndpoint, inbound_id: int, call: Callback, identifier: str | None
) -> Answer:
    """A webhook trigger: start the scenario with the payload as variables (and the lead
    named by its pcid, when the callback carries one of this workspace)."""
    from integrations.tasks import step_execute_task

    integration = Integration.objects.filter(
        pk=endpoint.trigger_integration_id, workspace_id=endpoint.workspace_id
    ).first()
    lead = None
    if identifier and endpoint.match_by == WebhookEndpoint.MatchBy.PCID:
        lead = Lead.objects.filter(workspace_id=endpoint.workspace_id, pcid=identifier).first()
    if integration is None:
        _inbound_set(inbound_id, Inbound.INVALID, "the trigger's integration is gone")
        return NOT_FOUND
    payload = call.payload()
    payload.setdefault("WEBHOOK_ID", endpoint.webhook_id)
    try:
        with transaction.atomic():
            run = engine.run_start(
                integration=integration, lead=lead, trigger="webhook", variables=payload
            )
            _inbound_set(inbound_id, Inbound.STARTED, "", started_run_id=run.pk)
            due = list(
                RunStep.objects.filter(run=run, status=RunStep.Status.PENDING).values_list(
                    "id", flat=True
                )
            )
            RunStep.objects.filter(pk__in=due).update(enqueued_at=timezone.now())
            for step_id in due:
                transaction.on_commit(lambda s=step_id: step_execute_task.delay(s), robust=True)
    except engine.EngineError as exc:
        _inbound_set(inbound_id, Inbound.INVALID, str(exc))
        return _answer(422, "This webhook cannot start its scenario (no webhook start)")
    return _answer(202, "Scenario started")


# --- the webhook step (called by the engine under the run's lock) -----------------------------


def _error(call: StepCall, reason: str) -> Effect:
    return Effect(
        outcome={"kind": "error", "reason": f"{call.element.name}: {reason}", "captured": {}},
        failed=True,
    )


def waiting_park(*, call: StepCall, config: WebhookStepConfig) -> Effect:
    """First visit: write the waiting row and park the step (or, when the buyer already
    called back for this lead a moment ago, take that callback at once)."""
    run = call.run
    if run.is_dry_run:
        # A dry run shows the path; it must not leave a lead waiting for a real buyer.
        return Effect(
            outcome={"kind": "pending", "reason": "dry run: would wait for the callback",
                     "captured": {}},
        )  # fmt: skip
    endpoint = (
        WebhookEndpoint.objects.filter(
            workspace_id=run.workspace_id, webhook_id=config.endpoint, deleted_at__isnull=True
        )
        .only("id", "match_by", "advertiser_id", "is_enabled")
        .first()
    )
    if endpoint is None:
        return _error(call, f"no webhook endpoint {config.endpoint!r} in this workspace")
    lead = run.lead if run.lead_id is not None else None
    pcid = lead.pcid if lead is not None else ""
    external_id = ""
    if config.external_id:
        from integrations import templating

        try:
            rendered = templating.render(config.external_id, call.context)
            external_id = "" if rendered.dropped else str(rendered.value)
        except templating.TemplateError as exc:
            return _error(call, f"external_id: {exc}")
    if not external_id:
        external_id = str((call.previous_outcome.get("captured") or {}).get("buyer_lead_id") or "")
    external_id = external_id.strip()[:MAX_IDENTIFIER]
    advertiser_id = endpoint.advertiser_id
    offered = str(run.variables.get("ADVERTISER_ID") or "")
    if offered.isdigit() and len(offered) < 19:
        advertiser_id = (
            Advertiser.objects.filter(pk=int(offered), workspace_id=run.workspace_id)
            .values_list("pk", flat=True)
            .first()
        ) or advertiser_id
    external = endpoint.match_by == WebhookEndpoint.MatchBy.EXTERNAL_ID
    if external and not external_id:
        return _error(call, "pairing by the buyer's lead id, but there is none (capture it)")
    if external and advertiser_id is None:
        return _error(call, "pairing by the buyer's lead id needs an advertiser")
    if not external and not pcid:
        return _error(call, "pairing by pcid needs a lead")
    deadline = deadline_for(config)
    identifier = external_id if external else pcid
    early = _early_callback(
        endpoint=endpoint, identifier=identifier, advertiser_id=advertiser_id if external else None
    )
    waiting = WaitingWebhook.objects.create(
        workspace_id=run.workspace_id,
        endpoint=endpoint,
        run=run,
        step=call.step,
        lead=lead,
        pcid=pcid,
        external_id=external_id,
        advertiser_id=advertiser_id,
        is_blocking=config.wait,
        deadline_at=deadline,
        status=Waiting.MATCHED if early is not None else Waiting.WAITING,
        matched_at=timezone.now() if early is not None else None,
    )
    if early is not None:
        _inbound_set(early.pk, Inbound.MATCHED, "matched when the lead started waiting",
                     waiting_id=waiting.pk)  # fmt: skip
        log.info("webhooks.early_callback_matched", waiting_id=waiting.pk, inbound_id=early.pk)
        return callback_effect(
            config=config,
            inbound=early,
            context=call.context,
            payload=_payload_of(early),
            earlier=_earlier(call),
        )
    return Effect(
        outcome={
            "kind": "pending",
            "reason": "waiting for the buyer's callback",
            "captured": dict((call.previous_outcome or {}).get("captured") or {}),
        },
        park_until=deadline,
        park_blocking=config.wait,
        park_note=f"waiting for a callback on {config.endpoint} until {deadline:%Y-%m-%d %H:%M:%S}",
    )


def _early_callback(
    *, endpoint: WebhookEndpoint, identifier: str, advertiser_id: int | None
) -> InboundWebhookRequest | None:
    """Claim a callback for this lead that arrived before it was waiting (unmatched and
    recent); under the run's lock, so it commits with the waiting row or not at all."""
    since = timezone.now() - timedelta(seconds=EARLY_MATCH_SECONDS)
    candidates = InboundWebhookRequest.objects.filter(
        endpoint_id=endpoint.pk,
        identifier=identifier,
        status=Inbound.UNMATCHED,
        received_at__gte=since,
    ).order_by("id")
    for inbound in candidates[:5]:
        if advertiser_id is not None and _advertiser_id(endpoint, inbound.advertiser_ref) != (
            advertiser_id
        ):
            continue
        claimed = InboundWebhookRequest.objects.filter(
            pk=inbound.pk, status=Inbound.UNMATCHED
        ).update(status=Inbound.MATCHED)
        if claimed:
            return inbound
    return None


def _earlier(call: StepCall) -> dict[str, Any]:
    return dict((call.previous_outcome or {}).get("captured") or {})


def _payload_of(inbound: InboundWebhookRequest) -> dict[str, Any]:
    return Callback(
        method=inbound.method,
        query=[(str(k), str(v)) for k, v in inbound.query],
        headers=[(str(k), str(v)) for k, v in inbound.headers],
        content_type=inbound.content_type,
        body=inbound.body.encode(),
    ).payload()


def waiting_resumed(*, call: StepCall, config: WebhookStepConfig) -> Effect:
    """The step resumed by a callback: what the callback means."""
    inbound_id = (call.resumed or {}).get("inbound_id")
    inbound = InboundWebhookRequest.objects.filter(
        pk=inbound_id, workspace_id=call.run.workspace_id
    ).first()
    if inbound is None:
        return _error(call, "the matched callback is no longer stored")
    return callback_effect(
        config=config,
        inbound=inbound,
        context=call.context,
        payload=_payload_of(inbound),
        earlier=_earlier(call),
    )


def waiting_expire(*, call: StepCall, config: WebhookStepConfig) -> Effect:
    """The step's deadline passed: timed out, unless a callback claimed the waiting row
    at that very moment (then it counts)."""
    expired = WaitingWebhook.objects.filter(step_id=call.step.pk, status=Waiting.WAITING).update(
        status=Waiting.TIMED_OUT
    )
    if not expired:
        inbound = InboundWebhookRequest.objects.filter(
            waiting__step_id=call.step.pk,
            waiting__status=Waiting.MATCHED,
            status=Inbound.MATCHED,
        ).first()
        if inbound is not None:
            return callback_effect(
                config=config,
                inbound=inbound,
                context=call.context,
                payload=_payload_of(inbound),
                earlier=_earlier(call),
            )
    seconds = config.park_seconds
    return Effect(
        outcome={
            "kind": "timeout",
            "reason": f"no callback within {seconds} s" if config.wait else "no callback",
            "captured": {},
        },
        failed=True,
        timed_out=True,
    )


# --- the sweep ---------------------------------------------------------------------------------


def waiting_sweep(*, limit: int = 500) -> dict[str, int]:
    """Match callbacks that arrived before their waiting row committed, give up on those
    older than the early window, close waiting rows whose run ended without them
    (cancelled, run deadline), and drop log rows past the retention. Idempotent; safe to
    run on several workers; each part bounded by ``limit``."""
    now = timezone.now()
    since = now - timedelta(seconds=EARLY_MATCH_SECONDS)
    matched = 0
    early = list(
        InboundWebhookRequest.objects.filter(status=Inbound.UNMATCHED, received_at__gte=since)
        .select_related("endpoint")
        .order_by("id")[:limit]
    )
    for inbound in early:
        endpoint = inbound.endpoint
        if endpoint.deleted_at is not None or not endpoint.is_enabled:
            continue
        answer = _match(
            endpoint=endpoint,
            inbound_id=inbound.pk,
            identifier=inbound.identifier,
            advertiser_id=_advertiser_id(endpoint, inbound.advertiser_ref),
            fresh=False,
        )
        if answer is MATCHED:
            matched += 1
    # Stored, then the process died before matching it (the buyer saw no answer and
    # may retry; a retry is then a duplicate): the raw row is matched here.
    stuck = list(
        InboundWebhookRequest.objects.filter(
            status=Inbound.RECEIVED,
            received_at__lt=now - timedelta(seconds=STUCK_SECONDS),
            endpoint__trigger_integration__isnull=True,
        )
        .select_related("endpoint")
        .order_by("received_at")[:limit]
    )
    for inbound in stuck:
        endpoint = inbound.endpoint
        if not inbound.identifier:
            _inbound_set(inbound.pk, Inbound.INVALID, "no identifier")
            continue
        answer = _match(
            endpoint=endpoint,
            inbound_id=inbound.pk,
            identifier=inbound.identifier,
            advertiser_id=_advertiser_id(endpoint, inbound.advertiser_ref),
            fresh=True,
        )
        matched += answer is MATCHED
    given_up = InboundWebhookRequest.objects.filter(
        status=Inbound.UNMATCHED, received_at__lt=since
    ).update(status=Inbound.NOT_FOUND, note="nothing waiting matched in time")
    ended = WaitingWebhook.objects.filter(
        status=Waiting.WAITING, run__status__in=ScenarioRun.FINISHED
    ).values_list("id", flat=True)[:limit]
    closed = WaitingWebhook.objects.filter(pk__in=list(ended), status=Waiting.WAITING).update(
        status=Waiting.CANCELLED
    )
    old = list(
        InboundWebhookRequest.objects.filter(
            received_at__lt=now - timedelta(days=LOG_RETENTION_DAYS)
        ).values_list("id", flat=True)[:limit]
    )
    pruned = InboundWebhookRequest.objects.filter(pk__in=old).delete()[0] if old else 0
    if matched or given_up or closed or pruned:
        log.info("webhooks.sweep", matched=matched, given_up=given_up, closed=closed, pruned=pruned)
    return {"matched": matched, "given_up": given_up, "closed": closed, "pruned": pruned}
