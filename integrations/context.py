"""Template contexts: what ``{{NAME}}`` can resolve to when a request is built.

Layers, later ones winning: sample values (previews only), the lead's fields, system
values (PCID, LEAD_ID, TIMESTAMP, PARTNER_ID, ...), event data, extra values given by
the caller (OFFER_ID, ...), and variables captured by earlier steps. Names are looked up
without regard to case by the template language.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from structures.models import Field, Lead

# A plausible value per field type, for previews and "run with sample values".
SAMPLE_BY_TYPE: dict[str, str] = {
    "text": "Sample",
    "number": "42",
    "money": "2500.00",
    "email": "jane.doe@example.com",
    "phone": "+12024561111",
    "date": "1990-07-04",
    "checkbox": "true",
    "select": "",
    "zip": "20500",
    "state": "DC",
    "country": "US",
    "ip": "203.0.113.7",
    "url": "https://example.com/landing",
}
SAMPLE_BY_NAME: dict[str, str] = {
    "g_first_name": "Jane",
    "g_last_name": "Doe",
    "g_city": "Washington",
    "g_address": "1600 Pennsylvania Ave NW",
    "g_user_agent": "Mozilla/5.0",
}

SYSTEM_NAMES = (
    "PCID", "LEAD_ID", "LEAD_STATUS", "PARTNER_ID", "PARTNER_NAME", "STRUCTURE",
    "WORKSPACE", "EXTERNAL_ID", "SUB1", "SUB2", "SUB3", "SUB4", "SUB5", "IP", "CREATED_AT",
    "TIMESTAMP", "TIMESTAMP_MS", "DATE", "DATETIME", "IS_TEST", "TRL_TEST", "OFFER_ID",
    "ADVERTISER_ID", "CLICK_ID", "SECRET",
)  # fmt: skip


def system_values(lead: Lead | None) -> dict[str, Any]:
    values = _clock_values()
    if lead is not None:
        values.update(_lead_values(lead))
    return values


def _clock_values() -> dict[str, Any]:
    """The values read off the clock, fresh for each call (one reading for all four)."""
    seconds = time.time()
    now = datetime.fromtimestamp(seconds, UTC)
    return {
        "TIMESTAMP": str(int(seconds)),
        "TIMESTAMP_MS": str(int(seconds * 1000)),
        "DATE": now.date().isoformat(),
        "DATETIME": now.isoformat(timespec="seconds"),
    }


def _lead_values(lead: Lead) -> dict[str, Any]:
    return {
        "PCID": lead.pcid,
        "LEAD_ID": lead.pcid,
        "LEAD_STATUS": lead.status,
        "PARTNER_ID": str(lead.partner_id or ""),
        "PARTNER_NAME": str(lead.partner) if lead.partner_id else "",
        "STRUCTURE": lead.structure.slug if lead.structure_id else "",
        "WORKSPACE": lead.workspace.slug if lead.workspace_id else "",
        "EXTERNAL_ID": lead.external_id,
        "SUB1": lead.sub1, "SUB2": lead.sub2, "SUB3": lead.sub3, "SUB4": lead.sub4,
        "SUB5": lead.sub5,
        "IP": lead.ip or "",
        "CREATED_AT": lead.created_at.isoformat(timespec="seconds") if lead.created_at else "",
        "IS_TEST": "true" if lead.is_test else "false",
        "TRL_TEST": "1" if lead.is_test else "0",
    }  # fmt: skip


def lead_context(
    lead: Lead | None,
    *,
    event: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    lead_layer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context a real send uses.

    ``lead_layer``: ``lead_layer_of(lead)`` taken earlier, for a caller that makes many
    calls for one lead (the ping tree: a lead's fields and its system values are read
    once per distribution, the clock on every call)."""
    context: dict[str, Any] = dict(lead_layer) if lead_layer is not None else lead_layer_of(lead)
    context.update(_clock_values())
    for layer in (event, extra, variables):
        if layer:
            context.update(layer)
    return context


def lead_layer_of(lead: Lead | None) -> dict[str, Any]:
    """A lead's fields, then its system values (PCID, PARTNER_ID, ...; not the clock's,
    which ``lead_context`` adds): the part of a call's context that is the same for every
    call made for the lead while it is not changed."""
    if lead is None:
        return {}
    context = dict(lead.data)
    context.update(_lead_values(lead))
    return context


def sample_context(
    *, workspace_id: int | None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Sample values for every field the workspace can use, plus system values."""
    context: dict[str, Any] = {}
    fields = Field.objects.filter(workspace__isnull=True) | Field.objects.filter(
        workspace_id=workspace_id
    )
    for field in fields.only("name", "type", "choices"):
        sample = SAMPLE_BY_NAME.get(field.name) or SAMPLE_BY_TYPE.get(field.type, "")
        if field.type == "select" and field.choices:
            sample = field.choices[0]
        context[field.name] = sample
    context.update(system_values(None))
    context.update(
        PCID="0f1e2d3c4b5a69788796a5b4c3d2e1f0", LEAD_ID="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        LEAD_STATUS="approved", PARTNER_ID="1", PARTNER_NAME="Sample Publisher",
        STRUCTURE="sample-form", WORKSPACE="sample", EXTERNAL_ID="ext-1",
        SUB1="sub1", SUB2="sub2", SUB3="sub3", SUB4="sub4", SUB5="sub5", IP="203.0.113.7",
        CREATED_AT=context["DATETIME"], IS_TEST="true", TRL_TEST="1", OFFER_ID="1",
        ADVERTISER_ID="1", CLICK_ID="sample-click-id",
    )  # fmt: skip
    if overrides:
        context.update(overrides)
    return context


def known_names(*, workspace_id: int | None) -> set[str]:
    """Every name a template may use in this workspace (for save-time checks)."""
    names = set(
        (
            Field.objects.filter(workspace__isnull=True)
            | Field.objects.filter(workspace_id=workspace_id)
        ).values_list("name", flat=True)
    )
    return {n.lower() for n in names | set(SYSTEM_NAMES)}
