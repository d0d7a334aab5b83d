"""The operator template language used for every value of an outbound request.

URLs, header values, query parameters and body fields are all templates. An operator
types them in the admin, so the language is deliberately tiny, logic-free and bounded:
it can read named values and pass them through a fixed list of filters, nothing else.
It is parsed by the small tokenizer below; no Python evaluation, ``str.format``, ``%``
formatting, Jinja or Django template engine is involved, so text such as
``{{ ''.__class__ }}`` or ``{% for %}`` can never run as code.

Syntax
------
Text outside ``{{ ... }}`` is copied as it is. Inside the braces::

    {{ NAME }}
    {{ NAME | filter | filter:ARG | filter:ARG,ARG }}
    {{ "quoted text" | filter }}

- ``NAME`` is letters, digits and ``_`` (not starting with a digit) and is looked up
  without regard to case: ``{{G_EMAIL}}`` and ``{{g_email}}`` are the same value. There is
  no ``.``, no ``[...]``: a name is a key, never an attribute or an index. An unknown name
  renders as an empty string and adds a warning to the result (it never raises).
- Filters are applied left to right, separated by ``|``. Filter names also ignore case.
- Arguments follow a ``:`` and are separated by ``,``. An argument is ``"quoted text"``
  (inside quotes ``\\"`` is a quote and ``\\\\`` a backslash; any other backslash is kept,
  so ``"\\d+"`` is the regular expression ``\\d+``) or a whole number such as ``10``.
  Only ``default`` and ``combine`` also take bare names, which are looked up like the
  head: ``{{ g_first_name | combine:" ",g_last_name }}``.
- Spaces and line breaks between the parts inside the braces are ignored.
- To produce a literal ``{{``, write it as quoted text: ``{{ "{{" }}``.

Results
-------
``render()`` returns a ``RenderResult`` with the text, warnings (unknown names, values a
filter could not use) and ``dropped``: true when ``do_not_send`` asked for the field to be
left out of the request. Mistakes in the template itself (syntax, unknown filter, wrong
arguments, an unsafe regular expression, a size limit) raise ``TemplateError``;
``check_template()`` reports the same mistakes as a list with positions, for the admin.
Values are plain strings: escaping for JSON, XML, forms or query strings is the
serializer's job, except that ``render_header_value()`` refuses CR/LF.

Context
-------
Values come from any mapping, looked up without regard to case; ``TemplateContext``
layers several mappings explicitly and ``build_context()`` layers lead fields, system
values, event data, extra values and captured variables in that order (a later source
wins when two use the same name). Only text, numbers, booleans, dates and ``None`` are
rendered; any other object (a model, a dict, a request) renders empty with a warning, so
nothing can be reached through it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import enum
import functools
import hashlib
import inspect
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from uuid import UUID

# Bounds. They keep a careless (or hostile) template or lead value from tying up a worker
# or producing a huge request; every one of them raises TemplateError when crossed.
MAX_TEMPLATE_LENGTH = 8_192  # characters of template text
MAX_EXPRESSIONS = 100  # {{ ... }} blocks in one template
MAX_FILTERS = 20  # filters in one {{ ... }} block
MAX_OUTPUT_BYTES = 64 * 1024  # UTF-8 bytes of a rendered value, also checked after each filter
MAX_REGEX_PATTERN_LENGTH = 200  # characters of a regular expression
# Python's `re` backtracks and has no timeout. Nested repetition such as (a+)+ is refused
# outright; what remains is polynomial in the input length with a degree that grows with
# the number of unbounded quantifiers (`\d*\d*\d*x` takes ~10 s on 500 digits with three,
# ~0.5 s on 1000 characters with two). So a pattern may hold at most two unbounded
# quantifiers and only runs on values up to 1000 characters.
MAX_REGEX_INPUT_LENGTH = 1_000
MAX_REGEX_UNBOUNDED_QUANTIFIERS = 2


class TemplateError(ValueError):
    """A template that cannot be rendered: bad syntax, unknown filter, bad arguments or a
    bound crossed. Raised instead of guessing, so a wrong request is never sent.

    ``code`` is one of the Problem codes, or ``bad_value`` for a header value with CR/LF.
    """

    def __init__(self, message: str, *, position: int | None = None, code: str = "syntax") -> None:
        self.message = message
        self.position = position
        self.code = code
        super().__init__(message if position is None else f"{message} (at position {position})")


class DoNotSend(enum.Enum):
    """Marker for "leave this field out of the request"; one member, compared with ``is``."""

    DO_NOT_SEND = "DO_NOT_SEND"


DO_NOT_SEND = DoNotSend.DO_NOT_SEND


@dataclass(frozen=True)
class RenderResult:
    """The outcome of rendering one template: the text, what the operator should know
    about (unknown names, values a filter could not use), and whether to drop the field."""

    value: str
    warnings: tuple[str, ...] = ()
    dropped: bool = False


@dataclass(frozen=True)
class Problem:
    """One mistake found by ``check_template``; ``position`` is a 0-based character offset
    into the template, ``line`` and ``column`` are 1-based for people."""

    code: str  # syntax, unknown_name, unknown_filter, bad_argument, limit
    message: str
    position: int
    line: int
    column: int


class _DataError(Exception):
    """A filter could not use this particular value (e.g. a date that is not a date).
    The template is fine, so rendering goes on with an empty value and a warning."""


# --------------------------------------------------------------------------- context


class TemplateContext(Mapping[str, Any]):
    """Values a template can name, looked up without regard to case.

    Layers are applied in the order given; a later layer wins for a name that appears in
    an earlier one. Keys are compared in lower case, so ``PCID`` and ``pcid`` are one name
    (within one mapping, the key that comes later in its iteration order wins).
    """

    def __init__(self, *layers: Mapping[str, Any]) -> None:
        values: dict[str, Any] = {}
        for layer in layers:
            for key, value in layer.items():
                values[str(key).lower()] = value
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def build_context(
    *,
    lead_fields: Mapping[str, Any] | None = None,
    system_values: Mapping[str, Any] | None = None,
    event_data: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    captured: Mapping[str, Any] | None = None,
) -> TemplateContext:
    """Layer the value sources in one fixed order; a later source wins for a shared name.

    The order is the one ``integrations.context.lead_context`` uses: lead fields, system
    values (PCID, LEAD_ID, TIMESTAMP, PARTNER_ID, ...), event data with its custom keys,
    extra values from the caller (OFFER_ID, ...), then variables captured from earlier
    responses, the most specific thing an operator can name.
    """
    layers = (lead_fields, system_values, event_data, extra, captured)
    return TemplateContext(*(layer for layer in layers if layer is not None))


def _to_text(value: Any) -> str | None:
    """Turn a context value into text, or None when it is not a plain value.

    Only plain values are rendered. Anything else (a model instance, a dict, a request
    object) would otherwise leak its repr into an outbound request.
    """
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")  # no exponent: 1E+2 would surprise a buyer
    if isinstance(value, int | float | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return None


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filter:
    """One entry of the filter registry; ``doc`` is the help text the admin shows."""

    name: str
    function: Callable[..., str | DoNotSend]
    usage: str
    min_args: int = 0
    max_args: int = 0
    accepts_names: bool = False
    # Runs at parse time on the (always literal) arguments; raises TemplateError.
    check_args: Callable[[tuple[str, ...]], None] | None = None

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.function.__doc__ or "")

    def __call__(self, value: str, *args: str) -> str | DoNotSend:
        return self.function(value, *args)


def _utf8(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates from badly decoded input
        raise _DataError("the value is not valid Unicode text") from error


def _filter_default(value: str, fallback: str) -> str:
    """Use the argument when the value is empty: {{ g_phone | default:"n/a" }}.
    Only an empty value counts; put trim first to treat spaces as empty."""
    return fallback if value == "" else value


def _filter_lower(value: str) -> str:
    """Lower case: {{ g_email | lower }}."""
    return value.lower()


def _filter_upper(value: str) -> str:
    """Upper case: {{ g_country | upper }}."""
    return value.upper()


def _filter_trim(value: str) -> str:
    """Remove spaces, tabs and line breaks at both ends: {{ g_first_name | trim }}."""
    return value.strip()


def _filter_replace(value: str, search: str, replacement: str) -> str:
    """Replace every occurrence of a text (not a pattern): {{ x | replace:"a","b" }}."""
    return value.replace(search, replacement)


def _check_replace(args: tuple[str, ...]) -> None:
    if args[0] == "":
        raise TemplateError("replace: the text to search for cannot be empty")


def _filter_regex_replace(value: str, pattern: str, replacement: str) -> str:
    """Replace every match of a regular expression (Python syntax); the replacement may
    use \\1 for a group: {{ g_phone | regex_replace:"^00","+" }}.
    Patterns are limited in length and repetition, values to 1000 characters."""
    compiled = _compile_regex(pattern)
    _check_regex_input(value, "regex_replace")
    return compiled.sub(replacement, value)


def _check_regex_replace(args: tuple[str, ...]) -> None:
    compiled = _compile_regex(args[0])
    try:
        # A bad group reference (\3 with one group) is found when the replacement is
        # compiled, which Python does even when nothing matches.
        compiled.sub(args[1], "")
    except (re.error, IndexError) as error:
        raise TemplateError(f"regex_replace: bad replacement: {error}") from error


def _filter_first_regex_match(value: str, pattern: str) -> str:
    """The first match of a regular expression, or its first group when it has one;
    empty when nothing matches: {{ g_zip | first_regex_match:"^([0-9]{5})" }}."""
    compiled = _compile_regex(pattern)
    _check_regex_input(value, "first_regex_match")
    match = compiled.search(value)
    if match is None:
        return ""
    if compiled.groups:
        return match.group(1) or ""
    return match.group(0)


def _check_one_regex(args: tuple[str, ...]) -> None:
    _compile_regex(args[0])


def _filter_combine(value: str, separator: str, *parts: str) -> str:
    """Join the value with more names or texts, the first argument being the separator:
    {{ g_first_name | combine:" ",g_last_name }}. Empty parts are skipped, so a
    missing middle name does not leave a double space."""
    return separator.join(part for part in (value, *parts) if part != "")


def _filter_urlencode(value: str) -> str:
    """Percent-encode everything except letters, digits and - . _ ~ (RFC 3986), so the
    value can sit inside a URL: {{ g_email | urlencode }}. Spaces become %20."""
    return urllib.parse.quote(value, safe="")


def _filter_urldecode(value: str) -> str:
    """Decode %XX sequences: {{ sub1 | urldecode }}. A + stays a + (it is often a phone
    number's plus, not an encoded space)."""
    return urllib.parse.unquote(value)


def _filter_to_base64(value: str) -> str:
    """Standard Base64 of the UTF-8 text, e.g. for a Basic auth header:
    {{ user | combine:":",password | to_base64 }}."""
    return base64.b64encode(_utf8(value)).decode("ascii")


def _filter_from_base64(value: str) -> str:
    """Decode Base64 (standard or URL-safe, padding optional) to UTF-8 text:
    {{ token | from_base64 }}. Empty with a warning when the value is not Base64 text."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _DataError("the value is not valid Base64") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _DataError("the decoded Base64 is not UTF-8 text") from error


_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _format_offset(moment: datetime) -> str:
    offset = moment.utcoffset()
    if offset is None:
        return ""
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{minutes:02d}"


def _unix_seconds(moment: datetime) -> str:
    # A value without an offset is taken as UTC, never as the server's local time.
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return str(int(aware.timestamp()))


# The whitelist of format_date directives. Written out here instead of calling strftime so
# the output never depends on the server's locale or platform (strftime passes unknown
# directives through differently on glibc, musl and macOS).
_DATE_DIRECTIVES: dict[str, Callable[[datetime], str]] = {
    "Y": lambda moment: f"{moment.year:04d}",
    "y": lambda moment: f"{moment.year % 100:02d}",
    "m": lambda moment: f"{moment.month:02d}",
    "d": lambda moment: f"{moment.day:02d}",
    "H": lambda moment: f"{moment.hour:02d}",
    "I": lambda moment: f"{(moment.hour % 12) or 12:02d}",
    "p": lambda moment: "AM" if moment.hour < 12 else "PM",
    "M": lambda moment: f"{moment.minute:02d}",
    "S": lambda moment: f"{moment.second:02d}",
    "f": lambda moment: f"{moment.microsecond:06d}",
    "j": lambda moment: f"{moment.timetuple().tm_yday:03d}",
    "b": lambda moment: _MONTHS[moment.month - 1][:3],
    "B": lambda moment: _MONTHS[moment.month - 1],
    "a": lambda moment: _WEEKDAYS[moment.weekday()][:3],
    "A": lambda moment: _WEEKDAYS[moment.weekday()],
    "u": lambda moment: str(moment.isoweekday()),
    "z": _format_offset,
    "s": _unix_seconds,
    "%": lambda moment: "%",
}

_TIMESTAMP_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _parse_moment(value: str) -> tuple[datetime, bool]:
    """Read an ISO date, an ISO date-time or a Unix timestamp in seconds.

    Returns the moment and whether the input was a date without a time. A value made only
    of digits is a Unix timestamp (so write dates as 2024-05-01, not 20240501).
    """
    text = value.strip()
    if text == "":
        raise _DataError("the value is empty, not a date")
    if _TIMESTAMP_RE.fullmatch(text):
        try:
            return datetime.fromtimestamp(float(text), tz=UTC), False
        except (OverflowError, OSError, ValueError) as error:
            raise _DataError(f"{text!r} is out of range for a Unix timestamp") from error
    try:
        return datetime.combine(date.fromisoformat(text), time()), True
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text), False
    except ValueError as error:
        raise _DataError(f"{text!r} is not an ISO date, date-time or Unix timestamp") from error


def _format_moment(moment: datetime, fmt: str) -> str:
    pieces: list[str] = []
    index = 0
    while index < len(fmt):
        char = fmt[index]
        if char == "%" and index + 1 < len(fmt):
            pieces.append(_DATE_DIRECTIVES[fmt[index + 1]](moment))
            index += 2
        else:
            pieces.append(char)
            index += 1
    return "".join(pieces)


def _filter_format_date(value: str, fmt: str) -> str:
    """Write a date in another format: {{ g_birth_date | format_date:"%d/%m/%Y" }}.
    Reads ISO dates (2024-05-01), ISO date-times (2024-05-01T10:00:00+02:00) and Unix
    timestamps in seconds. Directives: %Y %y %m %d %H %I %p %M %S %f %j %b %B %a %A %u
    %z %s (Unix seconds; no offset means UTC) and %% for a percent sign. Names are in
    English whatever the server's language."""
    moment, _is_date_only = _parse_moment(value)
    return _format_moment(moment, fmt)


def _check_format_date(args: tuple[str, ...]) -> None:
    fmt = args[0]
    if fmt == "":
        raise TemplateError("format_date: the format cannot be empty")
    index = 0
    while index < len(fmt):
        if fmt[index] == "%":
            directive = fmt[index + 1 : index + 2]
            if directive == "":
                raise TemplateError('format_date: a lone "%" ends the format; write %% for a %')
            if directive not in _DATE_DIRECTIVES:
                allowed = " ".join(f"%{name}" for name in _DATE_DIRECTIVES)
                raise TemplateError(
                    f"format_date: unknown directive %{directive} (allowed: {allowed})"
                )
            index += 2
        else:
            index += 1


_SHIFT_RE = re.compile(
    r"([+-]?)\s*([0-9]{1,5})\s*(second|minute|hour|day|week|month|year)s?", re.IGNORECASE
)
_WEEKDAY_JUMP_RE = re.compile(r"(next|last)\s+([a-z]+)", re.IGNORECASE)
_DATE_UNITS = {"day", "week", "month", "year"}


def _add_months(moment: datetime, months: int) -> datetime:
    """Calendar months; the day is clamped to the month's length (31 Jan + 1 month is
    28 or 29 Feb), which is what people mean by "a month later"."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month_index = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise _DataError("the date moves outside the years 1 to 9999")
    day = min(moment.day, calendar.monthrange(year, month_index + 1)[1])
    return moment.replace(year=year, month=month_index + 1, day=day)


def _shift(moment: datetime, expression: str) -> tuple[datetime, bool]:
    """Apply a modify_date expression; also says whether the result is still a whole date
    (so a date stays a date after "+1 day" but becomes a date-time after "+2 hours")."""
    text = expression.strip()
    jump = _WEEKDAY_JUMP_RE.fullmatch(text)
    if jump is not None:
        target = [day.lower() for day in _WEEKDAYS].index(jump.group(2).lower())
        if jump.group(1).lower() == "next":
            days = (target - moment.weekday() - 1) % 7 + 1
        else:
            days = -((moment.weekday() - target - 1) % 7 + 1)
        return moment + timedelta(days=days), True
    shift = _SHIFT_RE.fullmatch(text)
    if shift is None:  # the parse-time check makes this unreachable for literal arguments
        raise _DataError(f"cannot read {expression!r}")
    amount = int(shift.group(2)) * (-1 if shift.group(1) == "-" else 1)
    unit = shift.group(3).lower()
    if unit == "year":
        return _add_months(moment, amount * 12), True
    if unit == "month":
        return _add_months(moment, amount), True
    step = {
        "second": timedelta(seconds=1),
        "minute": timedelta(minutes=1),
        "hour": timedelta(hours=1),
        "day": timedelta(days=1),
        "week": timedelta(weeks=1),
    }[unit]
    return moment + step * amount, unit in _DATE_UNITS


def _filter_modify_date(value: str, expression: str) -> str:
    """Move a date: "+1 day", "-2 hours", "+3 weeks", "1 month", "next monday",
    "last friday" (units: second minute hour day week month year). The result is ISO
    8601, a date stays a date unless hours/minutes/seconds are added; chain format_date
    for another layout: {{ TIMESTAMP | modify_date:"+1 day" | format_date:"%Y-%m-%d" }}.
    "next monday" is the first Monday strictly after the date."""
    moment, is_date_only = _parse_moment(value)
    try:
        shifted, keeps_date = _shift(moment, expression)
    except OverflowError as error:
        raise _DataError("the date moves outside the years 1 to 9999") from error
    if is_date_only and keeps_date:
        return shifted.date().isoformat()
    return shifted.isoformat()


def _check_modify_date(args: tuple[str, ...]) -> None:
    text = args[0].strip()
    jump = _WEEKDAY_JUMP_RE.fullmatch(text)
    if jump is not None:
        if jump.group(2).lower() not in [day.lower() for day in _WEEKDAYS]:
            raise TemplateError(f"modify_date: {jump.group(2)!r} is not a day of the week")
        return
    if _SHIFT_RE.fullmatch(text) is None:
        raise TemplateError(
            f'modify_date: cannot read {args[0]!r}; write e.g. "+1 day", "-2 hours", '
            '"+3 weeks" or "next monday"'
        )


def _filter_digits(value: str) -> str:
    """Keep only the digits 0-9: {{ g_phone | digits }}."""
    return re.sub(r"[^0-9]", "", value)


def _normalise_phone_digits(value: str) -> str:
    # Meta: "Remove symbols, letters, and any leading zeros"; the number must already
    # hold its country code. Leading zeros also cover the 00 international prefix.
    return re.sub(r"[^0-9]", "", value).lstrip("0")


def _filter_sha256(value: str, mode: str = "email") -> str:
    """SHA-256 in lower-case hex, after the ad platforms' normalisation:
    {{ g_email | sha256 }} trims and lower-cases (emails, names, cities);
    {{ g_phone | sha256:"phone" }} keeps digits only, no leading zeros, country code
    included (Meta); {{ g_phone | sha256:"phone_e164" }} is the same with a leading +
    (TikTok); {{ x | sha256:"raw" }} hashes the value exactly as it is.
    An empty value stays empty: platforms reject the hash of nothing."""
    # Normalisation rules: Meta Conversions API customer information parameters
    # https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters
    # (em: trim + lower case; ph: digits only with country code, no leading zeros) and
    # the TikTok Events API user parameters (email trimmed and lower-cased; phone in E.164,
    # i.e. + and the digits) https://business-api.tiktok.com/portal/docs
    if mode == "raw":
        normalised = value
    elif mode == "phone":
        normalised = _normalise_phone_digits(value)
    elif mode == "phone_e164":
        digits = _normalise_phone_digits(value)
        normalised = f"+{digits}" if digits else ""
    else:
        normalised = value.strip().lower()
    if normalised == "":
        return ""
    return hashlib.sha256(_utf8(normalised)).hexdigest()


_SHA256_MODES = ("email", "phone", "phone_e164", "raw")


def _check_sha256(args: tuple[str, ...]) -> None:
    if args and args[0] not in _SHA256_MODES:
        raise TemplateError(
            f"sha256: unknown mode {args[0]!r} (allowed: {', '.join(_SHA256_MODES)})"
        )


def _filter_do_not_send(value: str, mode: str = "always") -> str | DoNotSend:
    """Leave the field out of the request: {{ x | do_not_send }} always drops it,
    {{ g_phone | do_not_send:"if_empty" }} drops it only when the value is empty (so an
    optional field is not sent blank)."""
    if mode == "if_empty" and value != "":
        return value
    return DO_NOT_SEND


def _check_do_not_send(args: tuple[str, ...]) -> None:
    if args and args[0] != "if_empty":
        raise TemplateError(f'do_not_send: the only option is "if_empty", not {args[0]!r}')


FILTERS: Mapping[str, Filter] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            Filter(
                name="default",
                function=_filter_default,
                usage='default:"text" or default:other_name',
                min_args=1,
                max_args=1,
                accepts_names=True,
            ),
            Filter(name="lower", function=_filter_lower, usage="lower"),
            Filter(name="upper", function=_filter_upper, usage="upper"),
            Filter(name="trim", function=_filter_trim, usage="trim"),
            Filter(
                name="replace",
                function=_filter_replace,
                usage='replace:"search","replacement"',
                min_args=2,
                max_args=2,
                check_args=_check_replace,
            ),
            Filter(
                name="regex_replace",
                function=_filter_regex_replace,
                usage='regex_replace:"pattern","replacement"',
                min_args=2,
                max_args=2,
                check_args=_check_regex_replace,
            ),
            Filter(
                name="first_regex_match",
                function=_filter_first_regex_match,
                usage='first_regex_match:"pattern"',
                min_args=1,
                max_args=1,
                check_args=_check_one_regex,
            ),
            Filter(
                name="combine",
                function=_filter_combine,
                usage='combine:"separator",name_or_text,...',
                min_args=2,
                max_args=10,
                accepts_names=True,
            ),
            Filter(name="urlencode", function=_filter_urlencode, usage="urlencode"),
            Filter(name="urldecode", function=_filter_urldecode, usage="urldecode"),
            Filter(name="to_base64", function=_filter_to_base64, usage="to_base64"),
            Filter(name="from_base64", function=_filter_from_base64, usage="from_base64"),
            Filter(
                name="format_date",
                function=_filter_format_date,
                usage='format_date:"%Y-%m-%d"',
                min_args=1,
                max_args=1,
                check_args=_check_format_date,
            ),
            Filter(
                name="modify_date",
                function=_filter_modify_date,
                usage='modify_date:"+1 day"',
                min_args=1,
                max_args=1,
                check_args=_check_modify_date,
            ),
            Filter(name="digits", function=_filter_digits, usage="digits"),
            Filter(
                name="sha256",
                function=_filter_sha256,
                usage='sha256 or sha256:"phone"',
                max_args=1,
                check_args=_check_sha256,
            ),
            Filter(
                name="do_not_send",
                function=_filter_do_not_send,
                usage='do_not_send or do_not_send:"if_empty"',
                max_args=1,
                check_args=_check_do_not_send,
            ),
        )
    }
)


# --------------------------------------------------------------------------- regex safety


def _is_repeat(pattern: str, index: int) -> bool:
    """Whether a quantifier that can repeat (*, +, {n}, {n,m}) starts at ``index``."""
    if index >= len(pattern):
        return False
    if pattern[index] in "*+":
        return True
    # {n}, {n,m} and {,m}; a "{" followed by anything else is a literal brace.
    return pattern[index] == "{" and pattern[index + 1 : index + 2] in tuple("0123456789,")


def _is_unbounded(pattern: str, index: int) -> bool:
    """*, + and ranges {n,} / {n,m}: the quantifiers that make backtracking grow."""
    if pattern[index] in "*+":
        return True
    if pattern[index] != "{":
        return False
    match = re.match(r"\{[0-9]*,[0-9]*\}", pattern[index:])
    return match is not None


def _refuse_costly_pattern(pattern: str) -> None:
    """Refuse the shapes that make backtracking explode, by reading the pattern text.

    A repeated group may not itself contain a quantifier or an alternation: ``(a+)+``,
    ``(\\w+\\s?)*`` and ``(a|aa)+`` are refused, ``(\\d{3})-`` and ``(ab)+`` are fine. The
    number of unbounded quantifiers is capped as well (see MAX_REGEX_UNBOUNDED_QUANTIFIERS).
    The pattern has already compiled, so brackets and escapes are well formed.
    """
    open_groups: list[bool] = []  # per open group: does it contain a quantifier or "|"?
    unbounded = 0
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
            index += 1
            continue
        if char == "[":
            in_class = True
            index += 1
            # A "]" first in a class (after an optional "^") is a literal bracket.
            if pattern[index : index + 1] == "^":
                index += 1
            if pattern[index : index + 1] == "]":
                index += 1
            continue
        if char == "(":
            if pattern.startswith("(?#", index):
                # A comment's text is not pattern, so reading it as one (a "[" in it)
                # could hide a real (a+)+ from this check.
                raise TemplateError(
                    "regular expression comments (?#...) are not allowed", code="bad_argument"
                )
            open_groups.append(False)
            index += 1
            if pattern[index : index + 1] == "?":  # (?:, (?P<, (?= ... not a quantifier
                index += 1
            continue
        if char == ")":
            risky = open_groups.pop() if open_groups else False
            if risky and _is_repeat(pattern, index + 1):
                raise TemplateError(
                    "regular expression repeats a group that already contains a repetition "
                    "or an alternation, e.g. (a+)+; this can take forever on some values",
                    code="bad_argument",
                )
            if open_groups and risky:
                open_groups[-1] = True
            index += 1
            continue
        if char in "*+?|" or _is_repeat(pattern, index):
            if open_groups:
                open_groups[-1] = True
            if char != "?" and char != "|" and _is_unbounded(pattern, index):
                unbounded += 1
        index += 1
    if unbounded > MAX_REGEX_UNBOUNDED_QUANTIFIERS:
        raise TemplateError(
            f"regular expression has {unbounded} open-ended repetitions (*, +, {{n,m}}); "
            f"at most {MAX_REGEX_UNBOUNDED_QUANTIFIERS} are allowed (use trim or digits first)",
            code="bad_argument",
        )


def _compile_regex(pattern: str) -> re.Pattern[str]:
    if pattern == "":
        raise TemplateError("regular expression cannot be empty", code="bad_argument")
    if len(pattern) > MAX_REGEX_PATTERN_LENGTH:
        raise TemplateError(
            f"regular expression is longer than {MAX_REGEX_PATTERN_LENGTH} characters",
            code="bad_argument",
        )
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise TemplateError(f"invalid regular expression: {error}", code="bad_argument") from error
    if compiled.flags & re.VERBOSE:
        # Verbose mode has # comments and ignored spaces, which the text check below
        # would misread; nobody needs it in a one-line filter argument.
        raise TemplateError("verbose regular expressions (?x) are not allowed", code="bad_argument")
    _refuse_costly_pattern(pattern)
    return compiled


def _check_regex_input(value: str, filter_name: str) -> None:
    if len(value) > MAX_REGEX_INPUT_LENGTH:
        raise TemplateError(
            f"{filter_name}: value has {len(value)} characters, regular expressions only run "
            f"on values up to {MAX_REGEX_INPUT_LENGTH}",
            code="limit",
        )


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Token:
    kind: str  # name, string, number, or the punctuation itself: | : ,
    text: str
    position: int


@dataclass(frozen=True)
class _Operand:
    is_name: bool
    text: str  # the name, or the literal value
    position: int


@dataclass(frozen=True)
class _FilterCall:
    filter: Filter
    args: tuple[_Operand, ...]
    position: int


@dataclass(frozen=True)
class _Expression:
    head: _Operand
    filters: tuple[_FilterCall, ...]
    position: int


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _read_string(template: str, start: int) -> tuple[str, int]:
    """Read "quoted text" starting at the opening quote; returns text and the next index."""
    pieces: list[str] = []
    index = start + 1
    while index < len(template):
        char = template[index]
        if char == '"':
            return "".join(pieces), index + 1
        if char == "\\" and template[index + 1 : index + 2] in ('"', "\\"):
            pieces.append(template[index + 1])
            index += 2
            continue
        pieces.append(char)
        index += 1
    raise TemplateError("quoted text is never closed with a quote", position=start)


def _tokenize(template: str, opened_at: int) -> tuple[list[_Token], int]:
    """Split one {{ ... }} block into tokens; returns them and the index after "}}"."""
    tokens: list[_Token] = []
    index = opened_at + 2
    while True:
        while index < len(template) and template[index] in " \t\r\n":
            index += 1
        if index >= len(template):
            raise TemplateError('"{{" is never closed with "}}"', position=opened_at)
        if template.startswith("}}", index):
            return tokens, index + 2
        char = template[index]
        if char in "|:,":
            tokens.append(_Token(char, char, index))
            index += 1
            continue
        if char == '"':
            text, after = _read_string(template, index)
            tokens.append(_Token("string", text, index))
            index = after
            continue
        for kind, pattern in (("name", _NAME_RE), ("number", _NUMBER_RE)):
            match = pattern.match(template, index)
            if match is not None:
                tokens.append(_Token(kind, match.group(0), index))
                index = match.end()
                break
        else:
            raise TemplateError(
                f"unexpected character {char!r}; only names, quoted text, numbers, "
                '"|", ":" and "," may appear between {{ and }}',
                position=index,
            )


def _operand(token: _Token) -> _Operand:
    return _Operand(is_name=token.kind == "name", text=token.text, position=token.position)


def _is_value_token(token: _Token) -> bool:
    return token.kind in ("name", "string", "number")


def _bind_filter(
    name_token: _Token, args: list[_Operand], problems: list[Problem], template: str
) -> _FilterCall | None:
    """Look the filter up and check its arguments; problems are collected, not raised,
    so the admin can show every mistake in a template at once."""
    entry = FILTERS.get(name_token.text.lower())
    if entry is None:
        problems.append(
            _problem(
                template,
                "unknown_filter",
                f"unknown filter {name_token.text!r} (known: {', '.join(FILTERS)})",
                name_token.position,
            )
        )
        return None
    if not entry.min_args <= len(args) <= entry.max_args:
        if entry.max_args == 0:
            expected = "takes no arguments"
        elif entry.min_args == entry.max_args:
            expected = f"takes {entry.min_args} argument(s)"
        else:
            expected = f"takes {entry.min_args} to {entry.max_args} arguments"
        problems.append(
            _problem(
                template,
                "bad_argument",
                f"{entry.name} {expected}, got {len(args)}; write it as {entry.usage}",
                name_token.position,
            )
        )
        return None
    if not entry.accepts_names:
        for arg in args:
            if arg.is_name:
                problems.append(
                    _problem(
                        template,
                        "bad_argument",
                        f"{entry.name} takes quoted text, not the name {arg.text}; "
                        f'did you mean "{arg.text}"?',
                        arg.position,
                    )
                )
                return None
        if entry.check_args is not None:
            try:
                entry.check_args(tuple(arg.text for arg in args))
            except TemplateError as error:
                position = args[0].position if args else name_token.position
                problems.append(_problem(template, "bad_argument", error.message, position))
                return None
    return _FilterCall(filter=entry, args=tuple(args), position=name_token.position)


def _parse_expression(
    tokens: list[_Token], opened_at: int, problems: list[Problem], template: str
) -> _Expression:
    """Parse ``head (| filter (: arg (, arg)*)?)*``; syntax errors raise TemplateError."""
    if not tokens:
        raise TemplateError("empty {{ }}: put a name inside", position=opened_at)
    head = tokens[0]
    if not _is_value_token(head):
        raise TemplateError(
            f"expected a name or quoted text, found {head.text!r}", position=head.position
        )
    filters: list[_FilterCall] = []
    filter_count = 0
    cursor = 1
    while cursor < len(tokens):
        pipe = tokens[cursor]
        if pipe.kind != "|":
            raise TemplateError(f'expected "|" before {pipe.text!r}', position=pipe.position)
        cursor += 1
        if cursor >= len(tokens) or tokens[cursor].kind != "name":
            raise TemplateError('expected a filter name after "|"', position=pipe.position)
        name_token = tokens[cursor]
        cursor += 1
        filter_count += 1
        if filter_count > MAX_FILTERS:
            raise TemplateError(
                f"more than {MAX_FILTERS} filters in one {{{{ }}}}",
                position=name_token.position,
                code="limit",
            )
        args: list[_Operand] = []
        if cursor < len(tokens) and tokens[cursor].kind == ":":
            colon = tokens[cursor]
            cursor += 1
            while True:
                if cursor >= len(tokens) or not _is_value_token(tokens[cursor]):
                    raise TemplateError(
                        f"expected an argument after {tokens[cursor - 1].text!r}",
                        position=colon.position
                        if cursor >= len(tokens)
                        else tokens[cursor].position,
                    )
                args.append(_operand(tokens[cursor]))
                cursor += 1
                if cursor < len(tokens) and tokens[cursor].kind == ",":
                    cursor += 1
                    continue
                break
        call = _bind_filter(name_token, args, problems, template)
        if call is not None:
            filters.append(call)
    return _Expression(head=_operand(head), filters=tuple(filters), position=opened_at)


def _problem(template: str, code: str, message: str, position: int) -> Problem:
    line = template.count("\n", 0, position) + 1
    column = position - (template.rfind("\n", 0, position) + 1) + 1
    return Problem(code=code, message=message, position=position, line=line, column=column)


def _parse(template: str) -> tuple[list[str | _Expression], list[Problem]]:
    """Split a template into literal text and expressions, collecting every problem.

    Parsed once per process and template text: the same few templates render for every
    lead (the parsed nodes are immutable; callers get fresh lists)."""
    nodes, problems = _parse_cached(template)
    return list(nodes), list(problems)


@functools.lru_cache(maxsize=2048)
def _parse_cached(template: str) -> tuple[tuple[str | _Expression, ...], tuple[Problem, ...]]:
    nodes, problems = _parse_uncached(template)
    return tuple(nodes), tuple(problems)


def _parse_uncached(template: str) -> tuple[list[str | _Expression], list[Problem]]:
    if len(template) > MAX_TEMPLATE_LENGTH:
        message = f"template is {len(template)} characters long; the limit is {MAX_TEMPLATE_LENGTH}"
        return [], [_problem(template, "limit", message, MAX_TEMPLATE_LENGTH)]
    nodes: list[str | _Expression] = []
    problems: list[Problem] = []
    expression_count = 0
    index = 0
    while index < len(template):
        opened_at = template.find("{{", index)
        if opened_at == -1:
            nodes.append(template[index:])
            break
        if opened_at > index:
            nodes.append(template[index:opened_at])
        expression_count += 1
        if expression_count > MAX_EXPRESSIONS:
            message = f"more than {MAX_EXPRESSIONS} {{{{ }}}} blocks in one template"
            problems.append(_problem(template, "limit", message, opened_at))
            break
        try:
            tokens, index = _tokenize(template, opened_at)
            nodes.append(_parse_expression(tokens, opened_at, problems, template))
        except TemplateError as error:
            position = opened_at if error.position is None else error.position
            problems.append(_problem(template, error.code, error.message, position))
            # Go on after the next "}}" so the admin sees the later mistakes too.
            closing = template.find("}}", position)
            if closing == -1:
                break
            index = closing + 2
    return nodes, problems


# --------------------------------------------------------------------------- rendering


def _value_of(operand: _Operand, context: Mapping[str, Any], warnings: list[str]) -> str:
    if not operand.is_name:
        return operand.text
    if operand.text not in context:
        warnings.append(f"unknown name {operand.text!r} at position {operand.position}")
        return ""
    text = _to_text(context[operand.text])
    if text is None:
        warnings.append(
            f"{operand.text!r} at position {operand.position} is not text, a number, a date "
            "or a boolean; rendered empty"
        )
        return ""
    return text


def _check_size(value: str, position: int | None) -> None:
    if len(value) * 4 <= MAX_OUTPUT_BYTES:  # no character takes more than 4 UTF-8 bytes
        return
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_OUTPUT_BYTES:
        raise TemplateError(
            f"value is {size} bytes; the limit is {MAX_OUTPUT_BYTES}",
            position=position,
            code="limit",
        )


def _evaluate(
    expression: _Expression, context: Mapping[str, Any], warnings: list[str]
) -> str | DoNotSend:
    value = _value_of(expression.head, context, warnings)
    _check_size(value, expression.position)
    for call in expression.filters:
        args = [_value_of(arg, context, warnings) for arg in call.args]
        try:
            result = call.filter(value, *args)
        except _DataError as error:
            warnings.append(f"{call.filter.name} at position {call.position}: {error}")
            result = ""
        if isinstance(result, DoNotSend):
            return result
        _check_size(result, call.position)
        value = result
    return value


def render(template: str, context: Mapping[str, Any]) -> RenderResult:
    """Render a template against a context.

    Raises TemplateError for a mistake in the template; an unknown name or a value a
    filter cannot use only adds a warning, because those depend on the lead, and one odd
    lead must not make a whole integration fail.
    """
    nodes, problems = _parse_cached(template)  # read only here: no copies
    if problems:
        first = problems[0]
        raise TemplateError(
            f"{first.message} (line {first.line}, column {first.column})",
            position=first.position,
            code=first.code,
        )
    # The case-blind view of the context is made on the first expression: a template of
    # plain text (most rules' reasons, constant fields) never needs it.
    lookup: TemplateContext | None = context if isinstance(context, TemplateContext) else None
    warnings: list[str] = []
    pieces: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            pieces.append(node)
            continue
        if lookup is None:
            lookup = TemplateContext(context)
        value = _evaluate(node, lookup, warnings)
        if isinstance(value, DoNotSend):
            return RenderResult(value="", warnings=tuple(warnings), dropped=True)
        pieces.append(value)
    text = "".join(pieces)
    _check_size(text, None)
    return RenderResult(value=text, warnings=tuple(warnings), dropped=False)


def render_value(template: str, context: Mapping[str, Any]) -> str | DoNotSend:
    """Render and return just the value, or DO_NOT_SEND when the field is to be dropped."""
    result = render(template, context)
    return DO_NOT_SEND if result.dropped else result.value


# Control characters other than tab are refused in header values: CR and LF would let a
# lead value start a new header or a body (header injection), and RFC 9110 section 5.5
# forbids NUL and advises rejecting the other control characters.
_HEADER_FORBIDDEN_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def render_header_value(template: str, context: Mapping[str, Any]) -> RenderResult:
    """Render a header value and refuse CR, LF and other control characters in it."""
    result = render(template, context)
    bad = _HEADER_FORBIDDEN_RE.search(result.value)
    if bad is not None:
        raise TemplateError(
            f"header value contains the control character {bad.group(0)!r} "
            f"at position {bad.start()} of the rendered value; CR/LF are never allowed",
            code="bad_value",
        )
    return result


def check_template(text: str, known_names: set[str] | None = None) -> list[Problem]:
    """Find the mistakes in a template without rendering it, for saving and preview.

    Reports syntax errors, unknown filters, bad arguments and crossed limits; with
    ``known_names`` (compared without regard to case) also names that no source provides.
    """
    nodes, problems = _parse(text)
    if known_names is not None:
        known = {name.lower() for name in known_names}
        for node in nodes:
            if isinstance(node, str):
                continue
            operands = [node.head, *(arg for call in node.filters for arg in call.args)]
            for operand in operands:
                if operand.is_name and operand.text.lower() not in known:
                    problems.append(
                        _problem(
                            text, "unknown_name", f"unknown name {operand.text!r}", operand.position
                        )
                    )
    return sorted(problems, key=lambda problem: problem.position)


def names_in(text: str) -> list[str]:
    """The names a template reads, in order of first use, as written (for test forms).

    Expressions that do not parse are skipped: ``check_template`` reports those.
    """
    nodes, _problems = _parse(text)
    names: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, str):
            continue
        for operand in (node.head, *(arg for call in node.filters for arg in call.args)):
            if operand.is_name:
                names.setdefault(operand.text.lower(), operand.text)
    return list(names.values())
