"""Standard Webhooks signatures (https://www.standardwebhooks.com/, spec
https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md).

The sender puts three headers on each message: ``webhook-id`` (a unique message id),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (space-separated
``v1,<base64 HMAC-SHA256>`` entries, several during a secret rotation). The signed content
is ``<id>.<timestamp>.<raw body>``; the secret is ``whsec_`` + base64 of the key bytes.

Written here rather than taking the ``standardwebhooks`` package: it is these thirty
lines, the package pulls in an HTTP client generator we do not use, and the replay check
(a message id seen before) needs the database anyway. The unit tests check the spec's
published test vector.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

PREFIX = "whsec_"
TOLERANCE_SECONDS = 5 * 60


class SignatureError(Exception):
    """The message is not signed as it must be; the text says why (safe to log)."""


def secret_generate() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    raw = secret.strip()
    raw = raw[len(PREFIX) :] if raw.startswith(PREFIX) else raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a signing secret is whsec_ followed by base64") from exc


def secret_check(secret: str) -> None:
    """Raises ValueError when ``secret`` is not a usable Standard Webhooks secret."""
    if len(_key(secret)) < 16:
        raise ValueError("the signing secret is too short (at least 16 bytes)")


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for a message (what a sender puts on it)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    *,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Check a message; return its id. ``headers`` are keyed by lower-case name."""
    msg_id = headers.get("webhook-id", "").strip()
    stamp = headers.get("webhook-timestamp", "").strip()
    given = headers.get("webhook-signature", "").strip()
    if not (msg_id and stamp and given):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if len(msg_id) > 120:
        raise SignatureError("webhook-id is too long")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise SignatureError("webhook-timestamp is not a number") from exc
    if abs(now - timestamp) > tolerance:
        raise SignatureError("webhook-timestamp is outside the 5 minute tolerance")
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, body=body).encode()
    for candidate in given.split():
        version, _, _signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureError("no valid v1 signature")
