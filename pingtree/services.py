"""Writes of the ping tree (placeholder while the distribution services are written)."""

from __future__ import annotations

from typing import Any


def offer_filters_errors(definition: dict[str, Any]) -> dict[str, list[str]]:
    """Errors of an offer's filter definition by path (pingtree.filters, once present)."""
    try:
        from pingtree.filters import filters_validate
    except ImportError:
        return {}
    return filters_validate(definition)
