"""Offer filters: whether one lead may be offered to one offer, and why not.

Pure: no database, no network. The caller (the ping tree) reads the offer's definition
from ``Offer.filters``, the lead's values, its partner, this offer's history for the
lead's identity, and the results of any external-check integrations it ran, and passes
them in. docs/pingtree-filters.md is the operators' guide; this docstring is the shape.

A definition is a JSON object; every section is optional and ``{}`` passes every lead::

    {
      "match": "all" | "any",                       # how the groups combine (default all)
      "groups": [{"match": "all" | "any",           # how the conditions combine
                  "conditions": [{"field": "g_loan_amount", "operator": "bigger_than",
                                  "value": "1000", "value2": ""}]}],
      "partners": {"mode": "include" | "exclude", "ids": [3, 7]},
      "history": [{"kind": "sent" | "rejected" | "accepted",
                   "within_days": 30,               # or "within_hours": 12
                   "reason": "dup*|duplicate"}],    # rejected only, optional
      "ratio": [{"numerator": "g_loan_amount", "denominator": "g_monthly_income",
                 "operator": "smaller_than", "value": "10", "value2": ""}],
      "external": [{"integration": 12}],
      "schedule": {"timezone": "America/New_York", "days": [0, 1, 2, 3, 4],
                   "from": "09:00", "to": "18:00"},
      "geo": {"mode": "include" | "exclude", "states": ["CA"], "zips": ["90210"],
              "zip_prefixes": ["902"], "field_state": "g_state", "field_zip": "g_zip"}
    }

Every section present must pass (AND); the first that fails gives the reason, checked
cheapest first: partners, schedule, geo, groups, ratio, history, external.

Conditions use the response rules' operators with their exact semantics: the operator
function is ``integrations.reading._apply`` itself (as connection conditions use it), so
"equals approved|app*" or "bigger than $1,000" mean the same everywhere. Field names are
case-insensitive, a missing field reads as empty, and ``field.component`` reads a
component that the field's type exposes (``g_phone.area_code``, ``g_email.domain``,
``g_zip.prefix3``, ``g_date_of_birth.year``; see ``structures.fieldtypes``).

Reasons name the filter, the field, the operator and the value seen. Email and phone
values (and the catalogue's sensitive fields) are masked as the field type masks them;
a local field whose type this module cannot know is masked when it looks like an email
or a phone number.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The operator semantics of response rules, reused (as integrations.engine.conditions
# does) so that a filter and a response rule never disagree on what an operator means.
from integrations.reading import _apply as apply_condition
from integrations.reading import _check_regex as check_regex
from integrations.reading import _matches_alternatives as matches_alternatives
from integrations.reading import parse_amount
from integrations.spec import Condition, KeyKind, Operator, Source
from structures.catalogue import GLOBAL_FIELDS
from structures.fieldtypes import TYPES, US_STATES

EXPORT_FORMAT = "leadrelay.filters/1"

MATCH_MODES = ("all", "any")
LIST_MODES = ("include", "exclude")
HISTORY_KINDS = ("sent", "rejected", "accepted")
SECTIONS = ("match", "groups", "partners", "history", "ratio", "external", "schedule", "geo")
CONDITION_KEYS = ("field", "operator", "value", "value2")
RATIO_KEYS = ("numerator", "denominator", "operator", "value", "value2")
RATIO_OPERATORS = (Operator.BIGGER_THAN, Operator.SMALLER_THAN, Operator.BETWEEN)
NUMERIC_OPERATORS = (Operator.BIGGER_THAN, Operator.SMALLER_THAN, Operator.BETWEEN)
# Operators that look at nothing but the value seen: their value is not used.
VALUELESS_OPERATORS = (
    Operator.IS_TRUE,
    Operator.IS_FALSE,
    Operator.IS_EMPTY,
    Operator.IS_NOT_EMPTY,
    Operator.ALWAYS,
)
# Other spellings of the response rules' operators, accepted and read as the operator.
OPERATOR_ALIASES = {
    "string_contains": Operator.CONTAINS,
    "string_not_contains": Operator.NOT_CONTAINS,
    "string_starts_with": Operator.STARTS_WITH,
    "string_ends_with": Operator.ENDS_WITH,
}
# Operators a field type lists (structures.fieldtypes) that response rules do not have.
OPERATOR_HINTS = {
    "in_list": "use 'equals' with alternatives separated by '|', e.g. CA|NY|TX",
    "not_in_list": "use 'not_equals' with alternatives separated by '|', e.g. CA|NY|TX",
    "zip_prefix": "use 'starts_with' on the zip field, or the geo filter's zip_prefixes",
}
OPERATOR_LABELS = {
    Operator.EQUALS: "equals",
    Operator.NOT_EQUALS: "does not equal",
    Operator.IS_TRUE: "is true",
    Operator.IS_FALSE: "is false",
    Operator.BIGGER_THAN: "is bigger than",
    Operator.SMALLER_THAN: "is smaller than",
    Operator.BETWEEN: "is between",
    Operator.CONTAINS: "contains",
    Operator.NOT_CONTAINS: "does not contain",
    Operator.STARTS_WITH: "starts with",
    Operator.ENDS_WITH: "ends with",
    Operator.IS_EMPTY: "is empty",
    Operator.IS_NOT_EMPTY: "is not empty",
    Operator.MATCHES: "matches",
    Operator.ALWAYS: "always holds",
}
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Sizes an operator will not reach by hand; they keep a pasted document from making
# every evaluation slow.
MAX_GROUPS = 50
MAX_CONDITIONS = 100
MAX_RULES = 50  # history, ratio and external entries each
MAX_IDS = 10_000
MAX_GEO_ENTRIES = 50_000
MAX_VALUE_CHARS = 2_000
MAX_NAME_CHARS = 200
MAX_WITHIN_DAYS = 3_660
MAX_SHOWN_CHARS = 60
MAX_MEMO_CHARS = 20_000  # larger definitions (long zip lists) are validated each time

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIME_RE = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])|24:00")
_PHONE_LIKE_RE = re.compile(r"\+?[0-9][0-9 ().-]{8,}[0-9]")

# Field types of the global catalogue: how to mask and which components a field has.
_GLOBAL_TYPES = {name: type_ for name, _label, type_, _extra in GLOBAL_FIELDS}
_GLOBAL_SENSITIVE = {
    name for name, _label, _type, extra in GLOBAL_FIELDS if extra.get("is_sensitive")
}
_MASKED_TYPES = ("email", "phone")
# A sample value per type that has components: which type exposes which component is
# asked of the types themselves, so a renamed or added component follows them.
_COMPONENT_SAMPLES = {
    "phone": "+12125550123",
    "email": "someone@example.com",
    "zip": "90210",
    "date": "2000-01-02",
}
COMPONENT_TYPES: dict[str, str] = {
    component: type_name
    for type_name, sample in _COMPONENT_SAMPLES.items()
    if type_name in TYPES
    for component in TYPES[type_name].components(sample)
}
# Components that are most of the value they come from: masked like it.
_MASKED_COMPONENTS = ("local", "national")
_STATE_BY_NAME = {name.casefold(): code for code, name in US_STATES.items()}


class FilterError(ValueError):
    """A filter definition or template that cannot be used; ``errors`` by path."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        first = next(iter(errors.items()), ("", ["invalid"]))
        where = f"{first[0]}: " if first[0] else ""
        super().__init__(f"{where}{first[1][0]}")


class FilterImportError(FilterError):
    """A template document that cannot be imported: foreign format or invalid definition."""


@dataclass(frozen=True)
class FilterResult:
    """Whether the lead may go to the offer; when not, why (shown to operators)."""

    passed: bool
    reason: str = ""  # "" when passed
    # Which filter refused it ("partners", "schedule", "geo", "groups", "ratio",
    # "history", "external", "definition"): for "skipped by" figures. "" when passed.
    section: str = ""


PASSED = FilterResult(passed=True)


@dataclass(frozen=True)
class History:
    """This offer's past with this lead's identity, read from the database by the caller.

    Naive datetimes are taken as UTC.
    """

    sent_at: list[datetime]
    rejected: list[tuple[datetime, str]]  # (when, reason)
    accepted_at: list[datetime]


# --- validation -------------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.by_path: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.by_path.setdefault(path, []).append(message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | Decimal)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_object(
    value: Any, path: str, allowed: tuple[str, ...], errors: _Errors, what: str
) -> bool:
    """True when ``value`` is an object; unknown keys are reported (and the rest checked)."""
    if not isinstance(value, dict):
        errors.add(
            path or "definition",
            f"{what[:1].upper()}{what[1:]} must be an object, not {_type_name(value)}.",
        )
        return False
    for key in value:
        if key not in allowed:
            errors.add(
                _join(path, str(key)),
                f"Unknown key {str(key)!r} in {what}; expected one of: {', '.join(allowed)}.",
            )
    return True


def _check_list(value: Any, path: str, errors: _Errors, what: str, limit: int) -> bool:
    what = what[:1].upper() + what[1:]
    if not isinstance(value, list):
        errors.add(path, f"{what} must be a list, not {_type_name(value)}.")
        return False
    if len(value) > limit:
        errors.add(path, f"{what} has {len(value)} entries; at most {limit} are allowed.")
        return False
    return True


def _check_choice(
    container: dict, key: str, path: str, choices: tuple[str, ...], errors: _Errors, default: bool
) -> None:
    if key not in container and default:
        return
    value = container.get(key)
    if value not in choices:
        errors.add(
            _join(path, key),
            f"{key!r} must be one of {', '.join(repr(c) for c in choices)}, not {value!r}."
            if isinstance(value, str)
            else f"{key!r} must be one of {', '.join(repr(c) for c in choices)}, "
            f"not {_type_name(value)}.",
        )


def _field_error(name: Any) -> str | None:
    """Why a field reference (``g_zip`` or ``g_phone.area_code``) is refused, or None."""
    if isinstance(name, str) and not name.strip():
        return "A field name is required, such as g_zip."
    if not isinstance(name, str):
        return f"A field name is required (a text such as g_zip), not {_type_name(name)}."
    base, dot, component = name.strip().partition(".")
    if not _FIELD_RE.fullmatch(base):
        return (
            f"{name!r} is not a field name: letters, digits and '_' "
            "(optionally .component, e.g. g_phone.area_code)."
        )
    if not dot:
        return None
    component = component.lower()
    if component not in COMPONENT_TYPES:
        known = ", ".join(sorted(COMPONENT_TYPES))
        return f"Unknown component {component!r} in {name!r}; field types expose: {known}."
    global_type = _GLOBAL_TYPES.get(base.lower())
    if global_type is not None and global_type != COMPONENT_TYPES[component]:
        return (
            f"{base} is of type {global_type} and has no component {component!r} "
            f"(a component of type {COMPONENT_TYPES[component]})."
        )
    return None


def _operator(value: Any) -> Operator | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if text in OPERATOR_ALIASES:
        return OPERATOR_ALIASES[text]
    try:
        return Operator(text)
    except ValueError:
        return None


def _operator_error(value: Any, allowed: tuple[Operator, ...]) -> str:
    names = ", ".join(str(o) for o in allowed)
    if not isinstance(value, str):
        return f"The operator must be a text, not {_type_name(value)}; one of: {names}."
    hint = OPERATOR_HINTS.get(value.strip().lower())
    if hint:
        return f"Unknown operator {value!r}: {hint}."
    return f"Unknown operator {value!r}; use one of: {names}."


def _check_operand(entry: dict, operator: Operator, path: str, errors: _Errors) -> None:
    """The value (and value2) an operator needs: text or a number, numeric where it must."""
    for key in ("value", "value2"):
        if key in entry and entry[key] is not None:
            raw = entry[key]
            if not (isinstance(raw, str) or _is_number(raw)):
                errors.add(
                    _join(path, key), f"{key!r} must be a text or a number, not {_type_name(raw)}."
                )
            elif isinstance(raw, str) and len(raw) > MAX_VALUE_CHARS:
                errors.add(
                    _join(path, key), f"{key!r} is longer than {MAX_VALUE_CHARS} characters."
                )
    if any(_join(path, key) in errors.by_path for key in ("value", "value2")):
        return
    value = _text(entry.get("value"))
    value2 = _text(entry.get("value2"))
    if operator in NUMERIC_OPERATORS:
        if parse_amount(value) is None:
            errors.add(
                _join(path, "value"),
                f"{str(operator)!r} needs a number as value, not {value!r}.",
            )
        if operator is Operator.BETWEEN:
            if value2.strip() == "":
                errors.add(_join(path, "value2"), "'between' needs value2 (value <= x <= value2).")
            elif parse_amount(value2) is None:
                errors.add(
                    _join(path, "value2"), f"'between' needs a number as value2, not {value2!r}."
                )
            elif (low := parse_amount(value)) is not None and low > parse_amount(value2):  # type: ignore[operator]
                errors.add(
                    _join(path, "value2"),
                    f"value2 ({value2}) is smaller than value ({value}): nothing is between them.",
                )
    elif operator is Operator.MATCHES:
        compiled = check_regex(value)
        if isinstance(compiled, str):
            errors.add(_join(path, "value"), compiled[:1].upper() + compiled[1:] + ".")
    elif operator not in VALUELESS_OPERATORS and value.strip() == "":
        # equals "" is is_empty said twice, contains "" always holds and not_contains ""
        # never does: an empty value is a forgotten one.
        errors.add(
            _join(path, "value"),
            f"{str(operator)!r} needs a value (for empty values use is_empty / is_not_empty).",
        )


def _validate_groups(definition: dict, errors: _Errors) -> None:
    _check_choice(definition, "match", "", MATCH_MODES, errors, default=True)
    if "groups" not in definition:
        return
    groups = definition["groups"]
    if not _check_list(groups, "groups", errors, "groups", MAX_GROUPS):
        return
    allowed_ops = tuple(Operator)
    for g, group in enumerate(groups):
        path = f"groups[{g}]"
        if not _check_object(group, path, ("match", "conditions"), errors, "a condition group"):
            continue
        _check_choice(group, "match", path, MATCH_MODES, errors, default=True)
        conditions = group.get("conditions")
        cpath = _join(path, "conditions")
        if conditions is None:
            errors.add(cpath, "A condition group needs a list of conditions.")
            continue
        if not _check_list(conditions, cpath, errors, "conditions", MAX_CONDITIONS):
            continue
        if not conditions:
            errors.add(cpath, "A condition group needs at least one condition (or remove it).")
        for c, condition in enumerate(conditions):
            path_c = f"{cpath}[{c}]"
            if not _check_object(condition, path_c, CONDITION_KEYS, errors, "a condition"):
                continue
            problem = _field_error(condition.get("field"))
            if problem:
                errors.add(_join(path_c, "field"), problem)
            operator = _operator(condition.get("operator"))
            if operator is None:
                errors.add(
                    _join(path_c, "operator"),
                    _operator_error(condition.get("operator"), allowed_ops),
                )
                continue
            _check_operand(condition, operator, path_c, errors)


def _validate_partners(value: Any, errors: _Errors) -> None:
    if not _check_object(value, "partners", ("mode", "ids"), errors, "partners"):
        return
    _check_choice(value, "mode", "partners", LIST_MODES, errors, default=False)
    ids = value.get("ids")
    if ids is None:
        errors.add("partners.ids", "List the partner ids, e.g. [3, 7].")
        return
    if not _check_list(ids, "partners.ids", errors, "partner ids", MAX_IDS):
        return
    if not ids:
        errors.add("partners.ids", "List at least one partner id (or remove the partner filter).")
    for i, item in enumerate(ids):
        if not _is_int(item) or item <= 0:
            errors.add(
                f"partners.ids[{i}]", f"A partner id is a positive whole number, not {item!r}."
            )


def _validate_history(value: Any, errors: _Errors) -> None:
    if not _check_list(value, "history", errors, "history", MAX_RULES):
        return
    for h, entry in enumerate(value):
        path = f"history[{h}]"
        allowed = ("kind", "within_days", "within_hours", "reason")
        if not _check_object(entry, path, allowed, errors, "a history rule"):
            continue
        _check_choice(entry, "kind", path, HISTORY_KINDS, errors, default=False)
        windows = [key for key in ("within_days", "within_hours") if key in entry]
        if len(windows) != 1:
            errors.add(
                _join(path, "within_days"),
                "Give the period as within_days or within_hours (one of them).",
            )
        for key in windows:
            amount = entry[key]
            limit = MAX_WITHIN_DAYS if key == "within_days" else MAX_WITHIN_DAYS * 24
            if not _is_int(amount) or not 1 <= amount <= limit:
                errors.add(
                    _join(path, key), f"{key} is a whole number from 1 to {limit}, not {amount!r}."
                )
        if "reason" in entry:
            reason = entry["reason"]
            if entry.get("kind") != "rejected":
                errors.add(_join(path, "reason"), "A reason applies to kind 'rejected' only.")
            elif not isinstance(reason, str):
                errors.add(
                    _join(path, "reason"), f"reason must be a text, not {_type_name(reason)}."
                )
            elif len(reason) > MAX_VALUE_CHARS:
                errors.add(
                    _join(path, "reason"), f"reason is longer than {MAX_VALUE_CHARS} characters."
                )


def _validate_ratio(value: Any, errors: _Errors) -> None:
    if not _check_list(value, "ratio", errors, "ratio", MAX_RULES):
        return
    for r, entry in enumerate(value):
        path = f"ratio[{r}]"
        if not _check_object(entry, path, RATIO_KEYS, errors, "a ratio rule"):
            continue
        for key in ("numerator", "denominator"):
            problem = _field_error(entry.get(key))
            if problem:
                errors.add(_join(path, key), problem)
        operator = _operator(entry.get("operator"))
        if operator not in RATIO_OPERATORS:
            errors.add(
                _join(path, "operator"), _operator_error(entry.get("operator"), RATIO_OPERATORS)
            )
            continue
        _check_operand(entry, operator, path, errors)


def _validate_external(value: Any, errors: _Errors) -> None:
    if not _check_list(value, "external", errors, "external", MAX_RULES):
        return
    for e, entry in enumerate(value):
        path = f"external[{e}]"
        if not _check_object(entry, path, ("integration",), errors, "an external check"):
            continue
        integration = entry.get("integration")
        if not _is_int(integration) or integration <= 0:
            errors.add(
                _join(path, "integration"),
                f"The integration is its id, a positive whole number, not {integration!r}.",
            )


def _parse_time(text: Any) -> time | None:
    """``HH:MM``; ``24:00`` is the end of the day (returned as time.max)."""
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text.strip()):
        return None
    if text.strip() == "24:00":
        return time.max
    hours, minutes = text.strip().split(":")
    return time(int(hours), int(minutes))


def _validate_schedule(value: Any, errors: _Errors) -> None:
    allowed = ("timezone", "days", "from", "to")
    if not _check_object(value, "schedule", allowed, errors, "schedule"):
        return
    zone = value.get("timezone", "UTC")
    if _zone(zone) is None:
        errors.add(
            "schedule.timezone",
            f"Unknown timezone {zone!r}; use an IANA name such as America/New_York or UTC."
            if isinstance(zone, str)
            else f"The timezone is a text such as America/New_York, not {_type_name(zone)}.",
        )
    if "days" in value:
        days = value["days"]
        if _check_list(days, "schedule.days", errors, "days", 7):
            if not days:
                errors.add("schedule.days", "Choose at least one day (or remove days: every day).")
            for d, day in enumerate(days):
                if not _is_int(day) or not 0 <= day <= 6:
                    errors.add(
                        f"schedule.days[{d}]", f"A day is 0 (Monday) to 6 (Sunday), not {day!r}."
                    )
    if ("from" in value) != ("to" in value):
        missing = "to" if "from" in value else "from"
        errors.add(f"schedule.{missing}", "Give both from and to (or neither: all day).")
        return
    if "from" not in value:
        return
    start, end = _parse_time(value["from"]), _parse_time(value["to"])
    for key, parsed in (("from", start), ("to", end)):
        if parsed is None:
            errors.add(f"schedule.{key}", f"A time is HH:MM (00:00 to 24:00), not {value[key]!r}.")
    if start is not None and start == time.max:
        errors.add("schedule.from", "from cannot be 24:00; use 00:00.")
    elif start is not None and start == end:
        errors.add(
            "schedule.to", "from and to are equal: the window is empty (omit both: all day)."
        )


def _zone(name: Any) -> ZoneInfo | None:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _validate_geo(value: Any, errors: _Errors) -> None:
    allowed = ("mode", "states", "zips", "zip_prefixes", "field_state", "field_zip")
    if not _check_object(value, "geo", allowed, errors, "geo"):
        return
    _check_choice(value, "mode", "geo", LIST_MODES, errors, default=False)
    entries = 0
    for key in ("states", "zips", "zip_prefixes"):
        if key not in value:
            continue
        items = value[key]
        if not _check_list(items, f"geo.{key}", errors, key, MAX_GEO_ENTRIES):
            continue
        entries += len(items)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip() or len(item) > 50:
                errors.add(
                    f"geo.{key}[{i}]", f"An entry of {key} is a non-empty text, not {item!r}."
                )
    if entries == 0 and not any(
        f"geo.{k}" in errors.by_path for k in ("states", "zips", "zip_prefixes")
    ):
        errors.add("geo", "List at least one state, zip or zip prefix (or remove the geo filter).")
    for key in ("field_state", "field_zip"):
        if key in value:
            problem = _field_error(value[key])
            if problem:
                errors.add(f"geo.{key}", problem)


def filters_validate(definition: dict) -> dict[str, list[str]]:
    """Errors by path (e.g. ``groups[0].conditions[1].operator``); ``{}`` when valid.

    Never raises on bad input: anything that is not a valid definition gets messages.
    """
    # Every evaluation validates first (an offer saved before a rule changed must not
    # slip through), and validating costs most of an evaluation: plain JSON definitions
    # of a reasonable size are validated once per process. The memo holds only the
    # result of a pure function, so it can never be stale.
    try:
        canonical = json.dumps(definition, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        canonical = ""
    if not canonical or len(canonical) > MAX_MEMO_CHARS:
        return _validate(definition)
    return {path: list(messages) for path, messages in _validate_json(canonical)}


@functools.lru_cache(maxsize=1024)
def _validate_json(canonical: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    errors = _validate(json.loads(canonical))
    return tuple((path, tuple(messages)) for path, messages in errors.items())


def _validate(definition: Any) -> dict[str, list[str]]:
    errors = _Errors()
    try:
        if not _check_object(definition, "", SECTIONS, errors, "the filter definition"):
            return errors.by_path
        _validate_groups(definition, errors)
        validators = {
            "partners": _validate_partners,
            "history": _validate_history,
            "ratio": _validate_ratio,
            "external": _validate_external,
            "schedule": _validate_schedule,
            "geo": _validate_geo,
        }
        for key, validate in validators.items():
            if key in definition:
                validate(definition[key], errors)
    except Exception as error:  # noqa: BLE001 - a promise: bad input gets a message
        errors.add("definition", f"The definition could not be read: {error}")
    return errors.by_path


# --- evaluation ------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A value as the operators see it: text; None is empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Lead:
    """The lead's values by case-insensitive name, with components and masking."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.folded: dict[str, Any] = {}
        for name, value in values.items():
            self.folded.setdefault(str(name).casefold(), value)

    def raw(self, name: str) -> str | None:
        if name in self.values:
            value = self.values[name]
        else:
            value = self.folded.get(name.casefold())
        return None if value is None else _text(value)

    def value(self, reference: str) -> str | None:
        """The value of ``field`` or ``field.component`` (None: not there)."""
        base, dot, component = reference.strip().partition(".")
        value = self.raw(base)
        if not dot or value is None:
            return value
        component = component.lower()
        type_name = COMPONENT_TYPES.get(component)
        if type_name is None or value.strip() == "":
            return None
        try:
            return TYPES[type_name].components(value.strip()).get(component)
        except Exception:  # noqa: BLE001 - a value its type cannot read has no component
            return None

    def shown(self, reference: str, value: str | None) -> str:
        """The value for a reason: masked as the lead page would, shortened."""
        if value is None or value.strip() == "":
            return "empty"
        base, dot, component = reference.strip().partition(".")
        base = base.lower()
        type_name = _GLOBAL_TYPES.get(base)
        if dot:
            if component.lower() in _MASKED_COMPONENTS or base in _GLOBAL_SENSITIVE:
                value = TYPES["text"].mask(value)
        elif base in _GLOBAL_SENSITIVE or type_name in _MASKED_TYPES:
            value = TYPES[type_name or "text"].mask(value)
        elif type_name is None:
            value = _mask_by_shape(value)
        if len(value) > MAX_SHOWN_CHARS:
            value = value[:MAX_SHOWN_CHARS] + "…"
        return repr(value)


def _mask_by_shape(value: str) -> str:
    """A local field's value: this module cannot know its type, so an email or phone
    number is recognised by its shape and masked like one."""
    text = value.strip()
    if "@" in text:
        return TYPES["email"].mask(text)
    if _PHONE_LIKE_RE.fullmatch(text) and sum(c.isdigit() for c in text) >= 10:
        return TYPES["phone"].mask(text)
    return value


def _condition(entry: Mapping[str, Any], operator: Operator) -> Condition:
    return Condition(
        source=Source.CONSTANT,  # unused by the operator function
        operator=operator,
        key_kind=KeyKind.NONE,
        value=_text(entry.get("value")),
        value2=_text(entry.get("value2")),
    )


def _describe(reference: str, operator: Operator, entry: Mapping[str, Any]) -> str:
    label = OPERATOR_LABELS[operator]
    if operator in VALUELESS_OPERATORS:
        return f"{reference} {label}"
    if operator is Operator.BETWEEN:
        return f"{reference} {label} {_text(entry.get('value'))} and {_text(entry.get('value2'))}"
    return f"{reference} {label} {_text(entry.get('value'))!r}"


def _check_condition(entry: Mapping[str, Any], lead: _Lead) -> tuple[bool, str]:
    """Whether one condition holds, and when not, the part of a reason about it."""
    reference = str(entry["field"]).strip()
    operator = _operator(entry["operator"])
    assert operator is not None  # validated
    value = lead.value(reference)
    held, note = apply_condition(_condition(entry, operator), value)
    if held:
        return True, ""
    why = f"{_describe(reference, operator, entry)} does not hold (value seen: "
    why += lead.shown(reference, value)
    return False, why + (f"; {note})" if note else ")")


def _check_groups(definition: Mapping[str, Any], lead: _Lead) -> str:
    groups = definition.get("groups") or []
    match_all = definition.get("match", "all") == "all"
    failures: list[str] = []
    for number, group in enumerate(groups, start=1):
        results = [_check_condition(c, lead) for c in group["conditions"]]
        if group.get("match", "all") == "any":
            held = any(ok for ok, _ in results)
            why = "none of its conditions holds: " + "; ".join(w for _, w in results)
        else:
            held = all(ok for ok, _ in results)
            why = next((w for ok, w in results if not ok), "")
        label = f"field filter, group {number}" if len(groups) > 1 else "field filter"
        if match_all and not held:
            return f"{label}: {why}"
        if not match_all and held:
            return ""
        failures.append(f"{label}: {why}")
    if failures and not match_all:
        return "field filter, no group holds: " + " | ".join(
            failure.removeprefix("field filter, ") for failure in failures
        )
    return ""


def _check_partners(rule: Mapping[str, Any], partner_id: int | None) -> str:
    ids = set(rule["ids"])
    if rule["mode"] == "exclude":
        if partner_id is not None and partner_id in ids:
            return f"partner {partner_id} is excluded by the partner filter"
        return ""
    if partner_id is None:
        return "the lead has no partner, and the partner filter includes only listed partners"
    if partner_id not in ids:
        return f"partner {partner_id} is not among the partners the partner filter includes"
    return ""


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _hhmm(moment: time) -> str:
    return "24:00" if moment == time.max else moment.strftime("%H:%M")


def _check_schedule(rule: Mapping[str, Any], now: datetime) -> str:
    zone_name = str(rule.get("timezone", "UTC")).strip()
    zone = _zone(zone_name)
    assert zone is not None  # validated
    local = _aware(now).astimezone(zone)
    days = set(rule.get("days", range(7)))
    today = local.weekday()
    clock = local.time().replace(tzinfo=None)
    if "from" not in rule:
        is_open = today in days
        window = "all day"
    else:
        start, end = _parse_time(rule["from"]), _parse_time(rule["to"])
        assert start is not None and end is not None  # validated
        window = f"{_hhmm(start)}-{_hhmm(end)}"
        if start < end:
            is_open = today in days and start <= clock < end
        else:
            # Overnight: the window belongs to the day it starts on, so Friday 22:00-06:00
            # covers Saturday 02:00 because Friday is a chosen day.
            yesterday = (today - 1) % 7
            is_open = (today in days and clock >= start) or (yesterday in days and clock < end)
    if is_open:
        return ""
    chosen = ", ".join(DAY_NAMES[d][:3] for d in sorted(days)) if len(days) < 7 else "every day"
    return (
        f"outside the schedule: it is {DAY_NAMES[today]} {local:%H:%M} in {zone_name}, "
        f"the offer takes leads {chosen} {window}"
    )


def _state_code(value: str) -> str:
    text = value.strip()
    return _STATE_BY_NAME.get(text.casefold(), text.upper())


def _zip_text(value: str) -> str:
    return value.strip().upper()


def _check_geo(rule: Mapping[str, Any], lead: _Lead) -> str:
    field_state = str(rule.get("field_state", "g_state")).strip()
    field_zip = str(rule.get("field_zip", "g_zip")).strip()
    states = {_state_code(s) for s in rule.get("states", [])}
    zips = {_zip_text(z) for z in rule.get("zips", [])}
    prefixes = [_zip_text(p).replace(" ", "") for p in rule.get("zip_prefixes", [])]
    state = _state_code(lead.value(field_state) or "")
    zip_code = _zip_text(lead.value(field_zip) or "")
    zip5 = zip_code.split("-", 1)[0]
    compact = zip_code.replace(" ", "")

    matched = ""
    if state and state in states:
        matched = f"state {state}"
    elif zip_code and (zip_code in zips or zip5 in zips):
        matched = f"zip {zip_code}"
    elif compact and (prefix := next((p for p in prefixes if compact.startswith(p)), None)):
        matched = f"zip {zip_code} (prefix {prefix})"
    if rule["mode"] == "exclude":
        return f"{matched} is excluded by the geo filter" if matched else ""
    if matched:
        return ""
    seen = []
    if states:
        seen.append(f"state {state}" if state else f"{field_state} is empty")
    if zips or prefixes:
        seen.append(f"zip {zip_code}" if zip_code else f"{field_zip} is empty")
    return f"{', '.join(seen)}: not included by the geo filter"


def _check_ratio(entry: Mapping[str, Any], lead: _Lead) -> str:
    numerator = str(entry["numerator"]).strip()
    denominator = str(entry["denominator"]).strip()
    operator = _operator(entry["operator"])
    assert operator is not None  # validated
    name = f"{numerator} / {denominator}"
    numbers: list[Decimal] = []
    for reference in (numerator, denominator):
        value = lead.value(reference)
        number = parse_amount(value) if value is not None else None
        if number is None:
            seen = lead.shown(reference, value)
            return (
                f"ratio filter: {reference} is not a number (value seen: {seen}), so {name} "
                "cannot be computed"
            )
        numbers.append(number)
    if numbers[1] == 0:
        return f"ratio filter: {denominator} is 0, so {name} cannot be computed (division by zero)"
    ratio = numbers[0] / numbers[1]
    # Rounded for people; the comparison is on the same text through the operator function.
    text = format(ratio.quantize(Decimal("0.0001")) if abs(ratio) < 10**20 else ratio, "f")
    held, note = apply_condition(_condition(entry, operator), text)
    if held:
        return ""
    shown = text.rstrip("0").rstrip(".") if "." in text else text
    why = f"ratio filter: {name} is {shown}, and the rule is {_describe(name, operator, entry)}"
    return why + (f" ({note})" if note else "")


def _check_history(rules: list[Mapping[str, Any]], history: History | None, now: datetime) -> str:
    if history is None:
        return "history filter: the offer's history was not provided, so the lead is held back"
    now = _aware(now)
    for rule in rules:
        if "within_days" in rule:
            window = timedelta(days=rule["within_days"])
            period = f"within {rule['within_days']} day{'s' if rule['within_days'] != 1 else ''}"
        else:
            window = timedelta(hours=rule["within_hours"])
            period = f"within {rule['within_hours']} hour{'s' if rule['within_hours'] != 1 else ''}"
        since = now - window
        kind = rule["kind"]
        if kind == "rejected":
            pattern = rule.get("reason", "")
            for when, reason in sorted(history.rejected, key=lambda r: _aware(r[0]), reverse=True):
                if _aware(when) < since:
                    continue
                if pattern.strip() and not matches_alternatives(reason or "", pattern):
                    continue
                shown = (reason or "")[:100] or "no reason"
                return (
                    f"history filter: rejected by this offer {_ago(now, when)} "
                    f"(reason {shown!r}), {period}"
                    + (f" matching {pattern!r}" if pattern.strip() else "")
                )
            continue
        moments = history.sent_at if kind == "sent" else history.accepted_at
        recent = [m for m in moments if _aware(m) >= since]
        if recent:
            verb = "already sent to" if kind == "sent" else "already accepted by"
            return (
                f"history filter: {verb} this offer {_ago(now, max(recent, key=_aware))}, {period}"
            )
    return ""


def _ago(now: datetime, when: datetime) -> str:
    delta = now - _aware(when)
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _check_external(rules: list[Mapping[str, Any]], results: Mapping[str, bool]) -> str:
    for rule in rules:
        integration = rule["integration"]
        outcome = results.get(str(integration), results.get(integration))  # type: ignore[call-overload]
        if outcome is None:
            return (
                f"external check: integration {integration} was not run, so the lead is held back"
            )
        if not outcome:
            return f"external check: integration {integration} did not succeed"
    return ""


def filters_evaluate(
    definition: dict,
    *,
    lead_values: Mapping[str, Any],
    partner_id: int | None,
    now: datetime,
    history: History | None = None,
    external_checks: Mapping[str, bool] | None = None,
) -> FilterResult:
    """Whether the lead passes the offer's filters, and the first reason when it does not.

    An invalid definition does not raise: it refuses the lead, naming the first error, so
    a broken offer never receives leads it did not ask for.
    """
    errors = filters_validate(definition)
    if errors:
        path, messages = next(iter(errors.items()))
        return FilterResult(
            passed=False,
            reason=f"the offer's filters are invalid ({path}: {messages[0]})",
            section="definition",
        )
    lead = _Lead(lead_values or {})
    reason = ""
    section = ""
    for section in ("partners", "schedule", "geo", "groups", "ratio", "history", "external"):
        if section == "partners" and "partners" in definition:
            reason = _check_partners(definition["partners"], partner_id)
        elif section == "schedule" and "schedule" in definition:
            reason = _check_schedule(definition["schedule"], now)
        elif section == "geo" and "geo" in definition:
            reason = _check_geo(definition["geo"], lead)
        elif section == "groups":
            reason = _check_groups(definition, lead)
        elif section == "ratio":
            reason = next(
                (
                    why
                    for entry in definition.get("ratio", [])
                    if (why := _check_ratio(entry, lead))
                ),
                "",
            )
        elif section == "history" and definition.get("history"):
            reason = _check_history(definition["history"], history, now)
        elif section == "external" and definition.get("external"):
            reason = _check_external(definition["external"], external_checks or {})
        if reason:
            return FilterResult(passed=False, reason=reason, section=section)
    return PASSED


# --- what the caller must prepare ------------------------------------------------------


def external_checks_needed(definition: dict) -> list[int]:
    """Integration ids whose success the definition requires, in order, once each.

    The caller runs them (for this lead) and passes ``{str(id): succeeded}``. An invalid
    definition needs none: it refuses every lead anyway.
    """
    if filters_validate(definition):
        return []
    needed: list[int] = []
    for rule in definition.get("external", []):
        if rule["integration"] not in needed:
            needed.append(rule["integration"])
    return needed


def history_lookback(definition: dict) -> timedelta | None:
    """How far back the caller must read this offer's history (the longest window), or
    None when the definition has no history rule (no query needed)."""
    if filters_validate(definition) or not definition.get("history"):
        return None
    windows = [
        timedelta(days=r["within_days"])
        if "within_days" in r
        else timedelta(hours=r["within_hours"])
        for r in definition["history"]
    ]
    return max(windows)


# --- templates -------------------------------------------------------------------------


def filters_export(definition: dict, *, name: str) -> dict:
    """A template document another offer (or workspace) can import.

    Raises FilterError when the definition is invalid: a template is always importable.
    """
    errors = filters_validate(definition)
    if not isinstance(name, str) or not name.strip():
        errors = {"name": ["A template needs a name."], **errors}
    elif len(name.strip()) > MAX_NAME_CHARS:
        errors = {"name": [f"The name is longer than {MAX_NAME_CHARS} characters."], **errors}
    if errors:
        raise FilterError(errors)
    return {"format": EXPORT_FORMAT, "name": name.strip(), "definition": copy.deepcopy(definition)}


def filters_import(document: dict) -> dict:
    """The definition inside a template document, validated (a copy).

    Raises FilterImportError with errors by path (``format``, ``name``,
    ``definition.groups[0]...``) for a foreign or invalid document.
    """
    errors = _Errors()
    if not isinstance(document, dict):
        errors.add("document", f"A filter template is an object, not {_type_name(document)}.")
        raise FilterImportError(errors.by_path)
    fmt = document.get("format")
    if fmt != EXPORT_FORMAT:
        errors.add(
            "format",
            f"Not a Leadrelay filter template (format {fmt!r}; expected {EXPORT_FORMAT!r}).",
        )
        raise FilterImportError(errors.by_path)
    for key in document:
        if key not in ("format", "name", "definition"):
            errors.add(str(key), f"Unknown key {str(key)!r} in a filter template.")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.add("name", "A template needs a name.")
    elif len(name) > MAX_NAME_CHARS:
        errors.add("name", f"The name is longer than {MAX_NAME_CHARS} characters.")
    if "definition" not in document:
        errors.add("definition", "The template has no definition.")
    else:
        for path, messages in filters_validate(document["definition"]).items():
            full = "definition" if path == "definition" else f"definition.{path}"
            for message in messages:
                errors.add(full, message)
    if errors.by_path:
        raise FilterImportError(errors.by_path)
    return copy.deepcopy(document["definition"])
