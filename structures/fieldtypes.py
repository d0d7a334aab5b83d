"""A field type knows itself: parse, validate, normalise, mask, components, operators.

Validation, filters, templates and duplicate keys all ask the type (DESIGN.md) instead of
special-casing. Every ``normalize`` returns the canonical *string* stored on the lead, or
raises ``FieldValueError`` with a message for the partner.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django_countries import countries
from email_validator import EmailNotValidError, validate_email

from structures.choices import FieldType


class FieldValueError(ValueError):
    """A value that the field's type refuses; the message is shown to the partner."""


@dataclass(frozen=True)
class TypeContext:
    """What a type needs to know about where the value comes from."""

    default_region: str = "US"
    choices: tuple[str, ...] = field(default_factory=tuple)


TEXT_OPERATORS = (
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "matches",
    "is_empty",
    "is_not_empty",
    "in_list",
    "not_in_list",
)
NUMERIC_OPERATORS = (
    "equals",
    "not_equals",
    "bigger_than",
    "smaller_than",
    "between",
    "is_empty",
    "is_not_empty",
)
BOOLEAN_OPERATORS = ("is_true", "is_false", "is_empty", "is_not_empty")

_TRUE = {"true", "1", "yes", "y", "on", "checked"}
_FALSE = {"false", "0", "no", "n", "off", "unchecked", ""}

US_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "DC": "District of Columbia",
    "FL": "Florida", "GA": "Georgia", "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois",
    "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana",
    "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan",
    "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey",
    "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming", "PR": "Puerto Rico",
    "GU": "Guam", "VI": "U.S. Virgin Islands", "AS": "American Samoa",
    "MP": "Northern Mariana Islands",
}  # fmt: skip
_STATE_BY_NAME = {name.lower(): code for code, name in US_STATES.items()}

_MAX_TEXT = 2000


def _as_text(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int | float | Decimal):
        return str(raw)
    if isinstance(raw, str):
        return raw.strip()
    raise FieldValueError("Expected a text, number or boolean value.")


class BaseType:
    """Text: trimmed, at most 2000 characters."""

    name: str = FieldType.TEXT
    operators: tuple[str, ...] = TEXT_OPERATORS

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        if len(value) > _MAX_TEXT:
            raise FieldValueError(f"At most {_MAX_TEXT} characters.")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise FieldValueError("Control characters are not allowed.")
        return value

    def mask(self, value: str) -> str:
        if len(value) <= 2:
            return "*" * len(value)
        return value[0] + "*" * (len(value) - 2) + value[-1]

    def components(self, value: str) -> dict[str, str]:
        return {}


class TextType(BaseType):
    pass


class NumberType(BaseType):
    """Integer or decimal; sign kept, leading zeros stripped (``007`` -> ``7``)."""

    name = FieldType.NUMBER
    operators = NUMERIC_OPERATORS
    _re = re.compile(r"^([+-]?)(\d+)(?:\.(\d+))?$")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        if isinstance(raw, bool):
            raise FieldValueError("Enter a number.")
        value = _as_text(raw).replace(" ", "")
        match = self._re.match(value)
        if not match:
            raise FieldValueError("Enter a number.")
        sign, whole, frac = match.groups()
        whole = whole.lstrip("0") or "0"
        text = whole + (f".{frac}" if frac else "")
        if sign == "-" and text.strip("0.") != "":
            text = "-" + text
        return text

    def mask(self, value: str) -> str:
        return value


class MoneyType(NumberType):
    """An amount with at most two decimals; ``1,234.5`` and ``$1234.50`` -> ``1234.50``."""

    name = FieldType.MONEY

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        if isinstance(raw, bool):
            raise FieldValueError("Enter an amount.")
        value = _as_text(raw).replace(",", "").replace(" ", "").lstrip("$€£")
        try:
            amount = Decimal(value)
        except InvalidOperation as exc:
            raise FieldValueError("Enter an amount, e.g. 1500 or 1500.00.") from exc
        if not amount.is_finite() or amount.as_tuple().exponent < -2:  # type: ignore[operator]
            raise FieldValueError("Enter an amount with at most two decimals.")
        if abs(amount) >= Decimal("1e12"):
            raise FieldValueError("Amount is too large.")
        return f"{amount.quantize(Decimal('0.01'))}"


class EmailType(BaseType):
    """Syntax-checked, trimmed, lower-cased; components: domain, local part."""

    name = FieldType.EMAIL

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        try:
            info = validate_email(value, check_deliverability=False)
        except EmailNotValidError as exc:
            raise FieldValueError("Enter a valid email address.") from exc
        return info.normalized.lower()

    def mask(self, value: str) -> str:
        local, _, domain = value.partition("@")
        return (local[:1] + "***@" + domain) if domain else "***"

    def components(self, value: str) -> dict[str, str]:
        local, _, domain = value.partition("@")
        return {"local": local, "domain": domain}


class PhoneType(BaseType):
    """Parsed with the workspace's default region, stored as E.164 (``+12024561111``)."""

    name = FieldType.PHONE

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        try:
            number = phonenumbers.parse(value, ctx.default_region or None)
        except phonenumbers.NumberParseException as exc:
            raise FieldValueError("Enter a valid phone number.") from exc
        if not phonenumbers.is_valid_number(number):
            raise FieldValueError("Enter a valid phone number.")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def mask(self, value: str) -> str:
        return value[:-4].rstrip() + "****" if len(value) > 6 else "****"

    def components(self, value: str) -> dict[str, str]:
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            return {}
        national = str(number.national_number)
        parts = {"country_code": str(number.country_code), "national": national}
        if number.country_code == 1 and len(national) == 10:
            parts["area_code"] = national[:3]
        return parts


class DateType(BaseType):
    """Stored as ISO ``YYYY-MM-DD``. Accepts ISO, ``YYYY/MM/DD``, ``DD.MM.YYYY`` and a
    slashed ``MM/DD/YYYY`` (US workspaces) or ``DD/MM/YYYY`` (elsewhere)."""

    name = FieldType.DATE
    operators = NUMERIC_OPERATORS

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        slashed = "%m/%d/%Y" if ctx.default_region in ("US", "CA", "PH") else "%d/%m/%Y"
        for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", slashed):
            try:
                parsed = datetime.strptime(value, fmt).date()
            except ValueError:
                continue
            if not date(1900, 1, 1) <= parsed <= date(2200, 1, 1):
                raise FieldValueError("Date is out of range.")
            return parsed.isoformat()
        raise FieldValueError("Enter a date as YYYY-MM-DD.")

    def mask(self, value: str) -> str:
        return value[:4] + "-**-**" if len(value) == 10 else "****"

    def components(self, value: str) -> dict[str, str]:
        year, _, rest = value.partition("-")
        month, _, day = rest.partition("-")
        return {"year": year, "month": month, "day": day}


class CheckboxType(BaseType):
    """Only ``true`` or ``false``."""

    name = FieldType.CHECKBOX
    operators = BOOLEAN_OPERATORS

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw).lower()
        if value in _TRUE:
            return "true"
        if value in _FALSE:
            return "false"
        raise FieldValueError("Enter true or false.")

    def mask(self, value: str) -> str:
        return value


class SelectType(BaseType):
    """One of the field's choices, matched without regard to case, stored as written in
    the choice list."""

    name = FieldType.SELECT
    operators = ("equals", "not_equals", "in_list", "not_in_list", "is_empty", "is_not_empty")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        for choice in ctx.choices:
            if choice.lower() == value.lower():
                return choice
        allowed = ", ".join(ctx.choices[:20])
        raise FieldValueError(f"Choose one of: {allowed}.")

    def mask(self, value: str) -> str:
        return value


class ZipType(BaseType):
    """US: five digits or ZIP+4 (``12345-6789``); elsewhere an upper-cased postal code."""

    name = FieldType.ZIP
    operators = (*TEXT_OPERATORS, "zip_prefix")
    _us = re.compile(r"^(\d{5})(?:[- ]?(\d{4}))?$")
    _other = re.compile(r"^[A-Z0-9][A-Z0-9 -]{1,9}$")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw).upper()
        if ctx.default_region == "US":
            if isinstance(raw, int) and 0 < raw < 100000:
                value = f"{raw:05d}"
            match = self._us.match(value)
            if not match:
                raise FieldValueError("Enter a 5-digit ZIP code.")
            return match.group(1) + (f"-{match.group(2)}" if match.group(2) else "")
        if not self._other.match(value):
            raise FieldValueError("Enter a valid postal code.")
        return value

    def mask(self, value: str) -> str:
        return value[:3] + "**"

    def components(self, value: str) -> dict[str, str]:
        return {"zip5": value[:5], "prefix3": value[:3]}


class StateType(BaseType):
    """US states as two-letter codes (names accepted); elsewhere trimmed text."""

    name = FieldType.STATE
    operators = ("equals", "not_equals", "in_list", "not_in_list", "is_empty", "is_not_empty")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        if ctx.default_region != "US":
            return BaseType.normalize(self, value, ctx)
        if value.upper() in US_STATES:
            return value.upper()
        code = _STATE_BY_NAME.get(value.lower())
        if code is None:
            raise FieldValueError("Enter a US state code such as CA or TX.")
        return code

    def mask(self, value: str) -> str:
        return value


class CountryType(BaseType):
    """ISO 3166-1 alpha-2 code; alpha-3 codes and English names are accepted."""

    name = FieldType.COUNTRY
    operators = ("equals", "not_equals", "in_list", "not_in_list", "is_empty", "is_not_empty")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        code = countries.by_name(value) or (countries.alpha2(value) if len(value) in (2, 3) else "")
        if not code:
            raise FieldValueError("Enter a country code such as US or GB.")
        return code

    def mask(self, value: str) -> str:
        return value


class IPType(BaseType):
    """IPv4 or IPv6 in its compressed form."""

    name = FieldType.IP
    operators = ("equals", "not_equals", "starts_with", "is_empty", "is_not_empty")

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        try:
            return ipaddress.ip_address(_as_text(raw)).compressed
        except ValueError as exc:
            raise FieldValueError("Enter a valid IPv4 or IPv6 address.") from exc

    def mask(self, value: str) -> str:
        return value.rsplit(".", 1)[0] + ".*" if "." in value else value.split(":")[0] + ":*"


class URLType(BaseType):
    """An absolute http(s) URL."""

    name = FieldType.URL
    _validator = URLValidator(schemes=["http", "https"])

    def normalize(self, raw: Any, ctx: TypeContext) -> str:
        value = _as_text(raw)
        try:
            self._validator(value)
        except ValidationError as exc:
            raise FieldValueError("Enter a valid http(s) URL.") from exc
        return value

    def mask(self, value: str) -> str:
        return value.split("?", 1)[0]


TYPES: dict[str, BaseType] = {
    handler.name: handler
    for handler in (
        TextType(),
        NumberType(),
        MoneyType(),
        EmailType(),
        PhoneType(),
        DateType(),
        CheckboxType(),
        SelectType(),
        ZipType(),
        StateType(),
        CountryType(),
        IPType(),
        URLType(),
    )
}


def get_type(name: str) -> BaseType:
    """The handler for a field type name."""
    return TYPES[name]
