"""Refused business actions of the structures app; one handler turns them into 4xx."""

from __future__ import annotations


class LeadrelayError(Exception):
    """Base for refused business actions. ``status_code`` is the HTTP answer."""

    status_code = 400
    code = "refused"

    def __init__(self, message: str, *, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


class LeadInvalid(LeadrelayError):
    """The lead's values do not pass validation; ``errors`` names each field at fault."""

    code = "invalid"


class PartnerInactive(LeadrelayError):
    status_code = 403
    code = "partner_inactive"


class IdempotencyConflict(LeadrelayError):
    """The Idempotency-Key was used before with a different request body."""

    status_code = 422
    code = "idempotency_key_reused"
