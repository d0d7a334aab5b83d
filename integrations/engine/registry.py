"""Element kinds that higher apps add to the engine (DESIGN.md: a webhook step is an
element type that ``webhooks`` registers here; the engine never imports it).

A handler receives a ``StepCall`` and returns an ``Effect``. It runs inside the
transaction that holds the run's row lock, so what it writes (e.g. a waiting-webhook
row) commits together with the step's record, or not at all.

Parking: an effect with ``park_until`` leaves its step pending, due at that time, and
the run waiting. ``engine.services.step_resume`` (a callback arrived) puts data into the
step's input and makes it due now; the handler then runs again with ``call.resumed``
set. When the due time comes first, it runs again with ``call.resumed`` None: a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from integrations.models import Element, RunStep, ScenarioRun


@dataclass
class Effect:
    """What executing one element did, applied under the run's lock."""

    outcome: dict[str, Any]
    variables: dict[str, Any] = field(default_factory=dict)
    due_at: datetime | None = None  # waits: when the next steps are due
    stop_reason: str = ""  # breaker: the branch stops and the run fails
    failed: bool = False
    lead_fields: dict[str, Any] = field(default_factory=dict)
    end_reason: str = ""  # repeater: the loop ends here and the run goes on (or succeeds)
    overrides_used: bool = False  # a request consumed the pending "modify request"
    # Parking (webhook steps): the step stays pending until resumed or until this time.
    park_until: datetime | None = None
    park_blocking: bool = True  # the caller (ping tree) waits for the resume
    park_note: str = ""
    timed_out: bool = False  # the run ends timed out (a parked step's deadline passed)


@dataclass
class StepCall:
    """What a registered element handler sees."""

    step: RunStep
    run: ScenarioRun
    element: Element  # the acting element (a mirror's master)
    config: dict[str, Any]
    previous_outcome: dict[str, Any]
    context: dict[str, Any]  # the template context (lead, variables, system values)
    resumed: dict[str, Any] | None  # data given to step_resume, None when not resumed
    parked: bool  # this step was parked before (a second visit: resumed or timed out)


ElementHandler = Callable[[StepCall], Effect]
# Checks an element's settings when it is saved (``Element.clean``): called with the
# config and the workspace id; raises ValueError with a message naming the setting.
ElementCheck = Callable[[dict[str, Any], int | None], None]

ELEMENT_HANDLERS: dict[str, ElementHandler] = {}
ELEMENT_CHECKS: dict[str, ElementCheck] = {}


def register_element(
    kind: str, handler: ElementHandler, *, check: ElementCheck | None = None
) -> ElementHandler:
    """Make the engine call ``handler`` for elements of ``kind`` (an Element.Kind), and
    ``check`` (if given) validate their settings when an element is saved."""
    ELEMENT_HANDLERS[kind] = handler
    if check is not None:
        ELEMENT_CHECKS[kind] = check
    return handler
