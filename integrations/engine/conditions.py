"""Connection conditions: the response rules' condition model over what the previous
element produced, instead of over an HTTP response.

A condition is ``{source, key_kind, key, operator, value, value2}`` (spec.Condition's
shape). Sources: ``outcome`` (accepted, rejected, duplicate, pending, error, timeout or
empty), ``reason``, ``captured`` (a captured value by its log key, e.g. ``variable:status``
or ``price``), ``variable`` (a run variable), ``field`` (a lead field or any context name),
``constant`` (the key rendered as a template). Operators and values are those of
response rules, evaluated by the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError

from integrations import templating

# The operator semantics of response rules, reused so a connection and a rule never
# disagree on what "equals approved|accepted" or "bigger than 10" means.
from integrations.reading import _apply as apply_condition
from integrations.spec import Condition, KeyKind, Operator, Source

SOURCES = ("outcome", "reason", "captured", "variable", "field", "constant")


CONDITION_KEYS = ("source", "key_kind", "key", "operator", "value", "value2")


def conditions_check(conditions: Any) -> list[dict[str, Any]]:
    """A connection's conditions as typed by an operator: refused here, naming the
    mistake, rather than when a run reaches the arrow (an unknown operator or source
    would stop the step there)."""
    if conditions in (None, ""):
        return []
    example = '[{"source": "outcome", "operator": "equals", "value": "accepted"}]'
    if not isinstance(conditions, list):
        raise ValidationError(f"A list of conditions, e.g. {example}; [] means always.")
    for number, condition in enumerate(conditions, start=1):
        if not isinstance(condition, dict):
            raise ValidationError(f"Condition {number}: an object, e.g. {example[1:-1]}.")
        unknown = sorted(set(condition) - set(CONDITION_KEYS))
        if unknown:
            raise ValidationError(
                f"Condition {number}: unknown setting {', '.join(unknown)}; "
                f"use {', '.join(CONDITION_KEYS)}."
            )
        source = condition.get("source") or "outcome"
        if source not in SOURCES:
            raise ValidationError(
                f"Condition {number}: unknown source {source!r}; use {', '.join(SOURCES)}."
            )
        operator = condition.get("operator") or "equals"
        if operator not in {o.value for o in Operator}:
            raise ValidationError(
                f"Condition {number}: unknown operator {operator!r}; use "
                f"{', '.join(o.value for o in Operator)}."
            )
    return conditions


def _lookup(mapping: Mapping[str, Any], key: str) -> str | None:
    """A value by name, case-insensitively, as text (None: not there)."""
    if key in mapping:
        value = mapping[key]
    else:
        folded = key.casefold()
        for name, candidate in mapping.items():
            if str(name).casefold() == folded:
                value = candidate
                break
        else:
            return None
    return None if value is None else str(value)


def condition_value(
    condition: Mapping[str, Any],
    *,
    outcome: Mapping[str, Any],
    variables: Mapping[str, Any],
    context: Mapping[str, Any],
) -> str | None:
    """The value a connection condition looks at."""
    source = str(condition.get("source") or "outcome")
    key = str(condition.get("key") or "")
    if source == "outcome":
        return str(outcome.get("kind") or "")
    if source == "reason":
        return str(outcome.get("reason") or "")
    if source == "captured":
        return _lookup(outcome.get("captured") or {}, key)
    if source == "variable":
        return _lookup(variables, key)
    if source == "field":
        return _lookup(context, key)
    if source == "constant":
        try:
            result = templating.render(key, context)
        except templating.TemplateError:
            return None
        return None if result.dropped else result.value
    raise ValueError(f"unknown connection source {source!r}; use one of {', '.join(SOURCES)}")


def condition_holds(
    condition: Mapping[str, Any],
    *,
    outcome: Mapping[str, Any],
    variables: Mapping[str, Any],
    context: Mapping[str, Any],
) -> bool:
    value = condition_value(condition, outcome=outcome, variables=variables, context=context)
    spec_condition = Condition(
        source=Source.CONSTANT,  # unused by the operator function
        operator=Operator(condition.get("operator") or Operator.EQUALS),
        key_kind=KeyKind.NONE,
        key=str(condition.get("key") or ""),
        value=str(condition.get("value") or ""),
        value2=str(condition.get("value2") or ""),
    )
    held, _note = apply_condition(spec_condition, value)
    return held


def conditions_hold(
    conditions: Iterable[Mapping[str, Any]],
    *,
    outcome: Mapping[str, Any],
    variables: Mapping[str, Any],
    context: Mapping[str, Any],
) -> bool:
    """All conditions hold (AND); an empty list always holds."""
    return all(
        condition_holds(c, outcome=outcome, variables=variables, context=context)
        for c in conditions
    )
