"""Hooks that higher apps fill (DESIGN.md: dependencies point one way; a lower app that
must react to a higher one exposes a registry or a signal).

- ``DECISION_GATES``: what a lead must pass before a refusal policy approves it. The
  pingtree app registers its ``filters`` and ``pingtree`` gates; ``validation`` gates
  (external validation integrations) come from integrations.
- ``OUTCOME_PROVIDERS``: add to the outcome shown by ``GET /api/v1/leads/<id>/``.
- ``lead_accepted``: sent after commit for every approved or pending lead (distribution).
- ``lead_decided``: sent after commit when a pending lead is approved or rejected.
- ``DECISION_WAITERS``: a partner asking for a synchronous decision: the first waiter
  drives or awaits the lead's distribution within the time budget and returns the
  decision (pingtree). ``inline_decision`` is set while the intake API takes such a lead
  in, so the distribution is driven by that request instead of being queued.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal

if TYPE_CHECKING:
    from structures.models import Lead


@dataclass(frozen=True)
class GateResult:
    """``passed`` None means "not decided yet, look again later"."""

    passed: bool | None
    reason: str = ""


Gate = Callable[["Lead"], GateResult]

DECISION_GATES: dict[str, list[Gate]] = {"validation": [], "filters": [], "pingtree": []}
OUTCOME_PROVIDERS: list[Callable[[Lead], dict[str, Any]]] = []

# Sent with ``lead_id`` after the transaction that accepted the lead committed, and (from
# the intake) ``workspace_id`` and ``config_key``: the workspace's configuration key as the
# intake read it (Workspace.config_key), for receivers that cache per configuration.
lead_accepted = Signal()
# Sent with ``lead_id`` and ``status`` after a pending lead was approved or rejected.
lead_decided = Signal()

# (lead, budget in seconds) -> the decision shown to the partner: {"status": "sold" |
# "unsold" | "pending", "price", "redirect_url", "reason"}.
DECISION_WAITERS: list[Callable[[Lead, float], dict[str, Any]]] = []
inline_decision: ContextVar[bool] = ContextVar("inline_decision", default=False)


# (request, lead) -> HTML shown on the lead's admin page under its values (the ping
# tree's distribution); "" shows nothing. Each provider checks its own permissions.
LEAD_PANELS: list[Callable[[Any, Lead], str]] = []


def register_gate(stage: str, gate: Gate) -> Gate:
    """Add a gate to a stage (``validation``, ``filters``, ``pingtree``)."""
    DECISION_GATES[stage].append(gate)
    return gate
