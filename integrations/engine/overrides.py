"""The "modify request" tool: overrides set by one element and applied to the next request
of the run. Pure functions: reading the element's settings, and building the changed
copy of a request's spec (the cached spec is never changed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from integrations.spec import RequestSpec

# The run variable holding the overrides waiting for the next request. Reserved: a set
# variable element or a capture should not use this name.
OVERRIDES_KEY = "_request_overrides"
PARTS = ("headers", "query", "body")


class OverrideConfigError(ValueError):
    """The modify request element's settings cannot be read."""


def overrides_read(config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{headers|query|body: {name: template}}`` from the element's settings."""
    result: dict[str, dict[str, str]] = {}
    for part in PARTS:
        values = config.get(part) or {}
        if not isinstance(values, Mapping):
            raise OverrideConfigError(f"{part} must map names to templates, not {values!r}")
        if values:
            result[part] = {str(name): str(template) for name, template in values.items()}
    if not result:
        raise OverrideConfigError("a modify request element needs headers, query or body")
    return result


def overrides_merge(
    earlier: Mapping[str, Any] | None, later: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """Two modify request elements before one request: the later wins per name."""
    merged = {part: dict(values) for part, values in (earlier or {}).items()}
    for part, values in later.items():
        merged.setdefault(part, {}).update(values)
    return merged


def _pairs(
    pairs: tuple[tuple[str, str], ...], values: Mapping[str, str], *, fold: bool
) -> tuple[tuple[str, str], ...]:
    """Replace the pairs with the same name (case-insensitively for headers), add the rest."""

    def key(name: str) -> str:
        return name.casefold() if fold else name

    replaced = {key(name): (name, template) for name, template in values.items()}
    result = [replaced.pop(key(name), (name, value)) for name, value in pairs]
    return (*result, *replaced.values())


def spec_apply_overrides(spec: RequestSpec, overrides: Mapping[str, Any]) -> RequestSpec:
    """A copy of the spec with the overridden headers, query parameters and body fields
    (values are templates, rendered with the run's context like the spec's own)."""
    if not overrides:
        return spec
    changes = {
        part: _pairs(getattr(spec, part), overrides[part], fold=part == "headers")
        for part in PARTS
        if overrides.get(part)
    }
    return dataclasses.replace(spec, **changes)
