"""Read: turn a request and its response into an outcome, a reason and captured values.

Pure: no network, no database. The real send, replays and the admin's "paste a sample
response" check (``evaluate_sample``) run the same code, and an outcome carries a
``trace`` of each condition and capture so the admin can show why it decided (not built
for a call nobody shows it for: ``read_response(..., trace=False)``, the ping tree's and
the engine's calls; the decision is the same either way).

Order of work:

1. A transport error (no complete answer) decides alone: ``timeout`` for a timeout,
   ``error`` otherwise, with the transport's message. Rules and captures are not
   evaluated on a partial answer; the trace says so.
2. The body is parsed once, by Content-Type and by its shape: JSON, XML, form-encoded
   (``a=1&b=2``) or plain text. XML with a DTD or entity declarations is never parsed
   (XXE, "billion laughs"): it stays text and the trace notes why.
3. Every rule is evaluated (for the trace); the first whose conditions all hold (AND)
   decides the outcome, and its reason is rendered as a template with the context.
   When none holds, a 2xx answer means ``spec.default_outcome`` and anything else is an
   ``error`` with reason ``HTTP <code>``.
4. Every capture is evaluated, whatever the outcome. A rejected outcome without a reason
   from its rule takes the captured reject reason.

Keys. ``json_path``: ``data.items[0].status``, an optional leading ``$.``, ``[-1]`` for the
last item, ``["odd key"]`` and ``*`` / ``[*]`` wildcards; with a wildcard the first value
found is used (``items[*].id`` is the first item's id). Keys are case-sensitive, as JSON
is. On a form-encoded body the key is the parameter name. ``xpath``: XPath 1.0 on the XML
with namespaces removed (``//status`` matches ``<ns:status>``); text and attribute
results are strings, ``count()`` and boolean results are allowed. ``regex``: the first
group, or the whole match without groups. ``none``: the whole value.

Operators compare text without regard to case and ignore spaces at the ends where
noted. A missing value (nothing at the key, JSON null) is read as empty text, so
``not_equals``/``not_contains`` hold for it and ``is_empty`` does.

- ``equals`` / ``not_equals``: alternatives ``approved|accepted``, ``*`` wildcard
  (``app*``); ends trimmed.
- ``is_true``: true, 1, yes, on, success, ok. ``is_false``: false, 0, no, off, fail,
  failed, failure, error, or empty/missing (so ``success is_false`` catches an answer
  that left ``success`` out). A value such as ``pending`` is neither.
- ``bigger_than`` / ``smaller_than`` / ``between`` (``value <= x <= value2``): numbers
  read by ``parse_amount`` (``12.50``, ``$12.50``, ``1,234.50``); not a number -> false.
- ``contains`` / ``not_contains`` / ``starts_with`` / ``ends_with``: substring tests.
- ``is_empty`` / ``is_not_empty``: spaces only count as empty.
- ``matches``: regular expression search, as written (use ``(?i)`` to ignore case).
- ``always``: holds.

Regular expressions run on at most ``MAX_REGEX_INPUT_CHARS`` of text with patterns of at
most ``MAX_REGEX_PATTERN_LENGTH`` characters, and patterns that repeat a group already
holding a repetition or alternation (``(a+)+``) are refused. Python's ``re`` has no time
limit, so this removes exponential blow-ups, not every slow pattern (``\\w+\\w+x`` stays
cubic in the input length).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import defusedxml
import defusedxml.ElementTree
import regex
from lxml import etree

from integrations import templating
from integrations.building import BuiltRequest
from integrations.outbound import ErrorCode, OutboundResult, mask_secrets
from integrations.spec import (
    Capture,
    CaptureTarget,
    Condition,
    KeyKind,
    Operator,
    OutcomeKind,
    RequestSpec,
    Source,
)

MAX_REGEX_INPUT_CHARS = 64 * 1024
MAX_REGEX_PATTERN_LENGTH = 1_000
# Operators' patterns run on buyers' answers with the `regex` package, which can stop a
# search: Python's `re` cannot, and some polynomial patterns take seconds on 64 KiB.
REGEX_TIMEOUT_SECONDS = 0.25
MAX_XPATH_LENGTH = 1_000
MAX_TRACE_VALUE_CHARS = 500  # a trace shows values, not whole bodies

TRUE_WORDS = frozenset({"true", "1", "yes", "on", "success", "ok"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", "fail", "failed", "failure", "error"})

_DTD_RE = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_DECLARATION_RE = re.compile(r"\A\s*<\?xml[^>]*\?>")
_XML_ENCODING_RE = re.compile(rb"\A\s*<\?xml[^>]*encoding=[\"']([A-Za-z0-9._\-]+)[\"']")
_FORM_BODY_RE = re.compile(r"[^=&\s]+=[^&\s]*(?:&[^=&\s]+=[^&\s]*)*")
_CHARSET_RE = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._\-]+)", re.IGNORECASE)
_JSON_PATH_STEP_RE = re.compile(
    r"""\.?(?P<name>[^.\[\]]+)|\[(?P<index>-?[0-9]+)\]|\[(?P<star>\*)\]"""
    r"""|\[(?:'(?P<single>[^']*)'|"(?P<double>[^"]*)")\]"""
)
# An amount: optional sign and currency around digits with , . ' or space separators.
_AMOUNT_RE = re.compile(
    r"(?P<sign>[-+]?)\s*(?:[$€£¥₹]|[A-Za-z]{3})?\s*(?P<sign2>[-+]?)\s*"
    r"(?P<number>[0-9][0-9.,' ]*|[.,][0-9]+)\s*(?:[$€£¥₹]|[A-Za-z]{3})?"
)


class TraceKind(StrEnum):
    CONDITION = "condition"  # one condition of a rule
    RULE = "rule"  # whether a whole rule held
    CAPTURE = "capture"  # one capture
    NOTE = "note"  # something the operator should know (parsing, skipped steps)


@dataclass(frozen=True)
class TraceEntry:
    """One line of "what the reader looked at": shown by the admin under a response."""

    kind: TraceKind
    rule: int | None = None  # index of the rule (conditions and rules)
    source: str = ""
    key_kind: str = ""
    key: str = ""
    value: str | None = None  # what was extracted (None: nothing there); masked, shortened
    operator: str = ""
    expected: str = ""
    expected2: str = ""
    held: bool | None = None  # conditions and rules; for captures: whether it captured
    target: str = ""  # captures: target and name, e.g. "lead_field:g_status"
    note: str = ""


@dataclass
class Outcome:
    """What a response meant: the decision, why, and what was read from it."""

    kind: OutcomeKind
    reason: str = ""
    # Every captured value, by target: "price", "redirect_url", "buyer_lead_id",
    # "reject_reason", "lead_field:<name>", "variable:<name>" (for the request log).
    captured: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # lead_field captures
    variables: dict[str, str] = field(default_factory=dict)  # variable captures
    price: Decimal | None = None
    redirect_url: str | None = None
    buyer_lead_id: str | None = None
    matched_rule: int | None = None  # index into spec.rules
    trace: list[TraceEntry] = field(default_factory=list)

    @classmethod
    def error(cls, reason: str) -> Outcome:
        """An error outcome without a response (not built, not sent)."""
        return cls(kind=OutcomeKind.ERROR, reason=reason)


def read_response(
    spec: RequestSpec,
    built: BuiltRequest | None,
    result: OutboundResult,
    context: Mapping[str, Any] | None = None,
    *,
    trace: bool = True,
) -> Outcome:
    """Decide what the transport's result means for this step.

    ``trace=False``: the outcome's trace is left empty (a call nobody shows it for: the
    ping tree's and the engine's calls; the admin's test send keeps it). The decision,
    the reason and the captures are the same either way; only the "what the reader
    looked at" lines, each masked and shortened, are not built (docs/benchmarks.md:
    about a fifth of a buyer call's Python on a small JSON answer)."""
    secrets = _secrets(spec, built)
    if result.error_kind is not None:
        kind = OutcomeKind.TIMEOUT if result.error_code == ErrorCode.TIMEOUT else OutcomeKind.ERROR
        message = result.error_message or str(result.error_code or result.error_kind)
        return Outcome(
            kind=kind,
            reason=mask_secrets(message, secrets),
            trace=[
                _note(
                    f"The request failed ({result.error_code}): no complete answer, so rules "
                    "and captures were not evaluated."
                )
            ],
        )
    if result.status_code is None:
        return Outcome(
            kind=OutcomeKind.ERROR,
            reason="no response",
            trace=[_note("No status code: rules and captures were not evaluated.")],
        )
    return _Reader(
        spec=spec,
        built=built,
        status_code=result.status_code,
        headers=list(result.headers),
        body=result.body,
        truncated=result.truncated,
        context=context or {},
        secrets=secrets,
        tracing=trace,
    ).outcome()


def evaluate_sample(
    spec: RequestSpec,
    status_code: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body_text: str,
    context: Mapping[str, Any] | None = None,
    built: BuiltRequest | None = None,
) -> Outcome:
    """The admin's "paste a sample response": the same rules and captures, no request."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    return _Reader(
        spec=spec,
        built=built,
        status_code=status_code,
        headers=pairs,
        body=body_text,
        truncated=False,
        context=context or {},
        secrets=_secrets(spec, built),
    ).outcome()


def _secrets(spec: RequestSpec, built: BuiltRequest | None) -> list[str]:
    values = list(built.secrets) if built is not None else [spec.auth_secret, *spec.secrets]
    return [value for value in values if value]


def _note(text: str) -> TraceEntry:
    return TraceEntry(kind=TraceKind.NOTE, note=text)


# --- the body ------------------------------------------------------------------------


@dataclass
class _Body:
    text: str
    kind: str  # "json", "xml", "form", "text"
    data: Any = None  # parsed JSON, the lxml root, or the form's dict


def _charset(content_type: str, raw: bytes) -> str:
    match = _CHARSET_RE.search(content_type)
    if match is None:
        match = _XML_ENCODING_RE.match(raw)
        return match.group(1).decode("ascii") if match else "utf-8"
    return match.group(1)


def _decode(raw: bytes, content_type: str) -> str:
    charset = _charset(content_type, raw)
    try:
        text = raw.decode(charset, errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff")


def _parse_body(body: bytes | str, content_type: str, notes: list[TraceEntry]) -> _Body:
    text = body if isinstance(body, str) else _decode(body, content_type)
    media = content_type.split(";", 1)[0].strip().lower()
    stripped = text.strip()
    looks_json = stripped[:1] in ("{", "[")
    if "html" in media:
        return _Body(text, "text")  # an error page, not an answer to parse
    if media.endswith(("/json", "+json")) or (looks_json and "xml" not in media):
        try:
            return _Body(text, "json", json.loads(text, parse_float=Decimal))
        except (ValueError, RecursionError):
            notes.append(_note("The body is not valid JSON: it is read as text."))
            return _Body(text, "text")
    if media.endswith(("/xml", "+xml")) or stripped.startswith("<"):
        root = _parse_xml(text, notes)
        return _Body(text, "xml", root) if root is not None else _Body(text, "text")
    if media == "application/x-www-form-urlencoded" or _FORM_BODY_RE.fullmatch(stripped):
        pairs = parse_qsl(stripped, keep_blank_values=True)
        data: dict[str, str] = {}
        for name, value in pairs:
            data.setdefault(name, value)  # the first of repeated names, like the query
        return _Body(text, "form", data)
    return _Body(text, "text")


def _parse_xml(text: str, notes: list[TraceEntry]) -> Any:
    """The lxml root of a safe XML document, its namespaces stripped for the rules'
    paths, or None (with a note) when refused."""
    root = _safe_xml_root(text, notes)
    if root is not None:
        _strip_namespaces(root)
    return root


def xml_pretty(text: str) -> str | None:
    """A safe XML document indented for reading (the request log's page), namespaces
    kept; None when it is not one (not well-formed, or with a DTD or entities, which
    are never expanded)."""
    root = _safe_xml_root(text, [])
    if root is None:
        return None
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode")


def _safe_xml_root(text: str, notes: list[TraceEntry]) -> Any:
    """The lxml root of a safe XML document, or None (with a note) when refused."""
    if _DTD_RE.search(text):
        notes.append(
            _note(
                "The body declares a DTD or entities: refused for safety (XXE, entity "
                "expansion), read as text and never expanded."
            )
        )
        return None
    # The declaration goes: the text is already decoded, and lxml refuses a str that
    # still names an encoding.
    text = _XML_DECLARATION_RE.sub("", text, count=1)
    try:
        defusedxml.ElementTree.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException:
        notes.append(_note("The body uses DTD, entity or external references: read as text."))
        return None
    except defusedxml.ElementTree.ParseError:
        notes.append(_note("The body is not well-formed XML: it is read as text."))
        return None
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        dtd_validation=False,
        load_dtd=False,
        huge_tree=False,
    )
    try:
        return etree.fromstring(text, parser=parser)  # noqa: S320 (checked above)
    except (etree.XMLSyntaxError, ValueError):
        notes.append(_note("The body is not well-formed XML: it is read as text."))
        return None


def _strip_namespaces(root: Any) -> None:
    """``//status`` should find ``<ns:status>``: buyers' SOAP-style answers are
    namespaced, and an operator cannot declare prefixes in a key."""
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
        for name in [n for n in element.attrib if "}" in n]:
            value = element.attrib.pop(name)
            element.attrib[name.split("}", 1)[1]] = value
    etree.cleanup_namespaces(root)


# --- keys ------------------------------------------------------------------------------


def _json_text(value: Any) -> str | None:
    """A JSON value as text; null is nothing (missing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        # Written out (1e2 -> 100) unless the exponent is absurd: 1e999999999 would
        # otherwise become a billion digits.
        exponent = value.as_tuple().exponent
        return (
            format(value, "f") if isinstance(exponent, int) and abs(exponent) <= 50 else str(value)
        )
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=float)


@functools.lru_cache(maxsize=1024)
def _parse_json_path(key: str) -> tuple[tuple[str, Any], ...] | None:
    """The steps of a JSON path, or None when it cannot be read (remembered: a worker
    reads the same few keys of its buyers' answers on every call)."""
    path = key.strip()
    if path.startswith("$"):
        path = path[1:]
    steps: list[tuple[str, Any]] = []
    index = 0
    while index < len(path):
        match = _JSON_PATH_STEP_RE.match(path, index)
        if match is None or (match.group("name") is not None and index > 0 and path[index] != "."):
            return None
        if match.group("name") is not None:
            name = match.group("name")
            steps.append(("star", None) if name == "*" else ("key", name))
        elif match.group("index") is not None:
            steps.append(("index", int(match.group("index"))))
        elif match.group("star") is not None:
            steps.append(("star", None))
        else:
            quoted = match.group("single")
            steps.append(("key", quoted if quoted is not None else match.group("double")))
        index = match.end()
    return tuple(steps)


def _json_path(data: Any, key: str) -> tuple[str | None, str]:
    steps = _parse_json_path(key)
    if steps is None:
        return None, f"cannot read the JSON path {key!r}"
    candidates = [data]
    for kind, argument in steps:
        found: list[Any] = []
        for candidate in candidates:
            if kind == "key" and isinstance(candidate, dict) and argument in candidate:
                found.append(candidate[argument])
            elif kind == "index" and isinstance(candidate, list):
                if -len(candidate) <= argument < len(candidate):
                    found.append(candidate[argument])
            elif kind == "star" and isinstance(candidate, dict):
                found.extend(candidate.values())
            elif kind == "star" and isinstance(candidate, list):
                found.extend(candidate)
        candidates = found
    for candidate in candidates:
        if candidate is not None:
            return _json_text(candidate), ""
    return None, ""


def _xpath(root: Any, key: str) -> tuple[str | None, str]:
    if len(key) > MAX_XPATH_LENGTH:
        return None, f"XPath longer than {MAX_XPATH_LENGTH} characters"
    try:
        result = root.getroottree().xpath(key)
    except etree.XPathError as error:
        return None, f"XPath {key!r} cannot be evaluated: {error}"
    if isinstance(result, bool):
        return ("true" if result else "false"), ""
    if isinstance(result, float):
        if math.isnan(result) or math.isinf(result):
            return None, ""
        return (str(int(result)) if result.is_integer() else str(result)), ""
    if isinstance(result, str):
        return str(result), ""
    if isinstance(result, list):
        if not result:
            return None, ""
        first = result[0]
        if isinstance(first, str):
            return str(first), ""
        if etree.iselement(first):
            return str(first.xpath("string()")), ""
        return str(first), ""
    return str(result), ""


def _check_regex(pattern: str) -> regex.Pattern[str] | str:
    """The compiled pattern, or why it is refused."""
    if pattern == "":
        return "the regular expression is empty"
    if len(pattern) > MAX_REGEX_PATTERN_LENGTH:
        return f"the regular expression is longer than {MAX_REGEX_PATTERN_LENGTH} characters"
    try:
        compiled = regex.compile(pattern)
    except regex.error as error:
        return f"invalid regular expression: {error}"
    if _repeats_a_repetition(pattern):
        return (
            "the regular expression repeats a group that already holds a repetition or an "
            "alternation, e.g. (a+)+: it can take forever on some answers"
        )
    return compiled


def _repeats_a_repetition(pattern: str) -> bool:
    """True for ``(a+)+``, ``(\\w+\\s?)*``, ``(a|aa)+``: exponential backtracking shapes.
    Reads the (already compiled, so well-formed) pattern text."""
    groups: list[bool] = []  # per open group: holds a quantifier or "|"
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
            if pattern[index : index + 1] == "^":
                index += 1
            if pattern[index : index + 1] == "]":
                index += 1
            continue
        if char == "(":
            groups.append(False)
            index += 2 if pattern[index + 1 : index + 2] == "?" else 1
            continue
        if char == ")":
            risky = groups.pop() if groups else False
            following = pattern[index + 1 : index + 2]
            if risky and (following in ("*", "+") or re.match(r"\{[0-9]*,", pattern[index + 1 :])):
                return True
            if groups and risky:
                groups[-1] = True
            index += 1
            continue
        if char in "*+?|{" and groups:
            groups[-1] = True
        index += 1
    return False


def _regex_first(pattern: str, text: str) -> tuple[str | None, str]:
    compiled = _check_regex(pattern)
    if isinstance(compiled, str):
        return None, compiled
    note = ""
    if len(text) > MAX_REGEX_INPUT_CHARS:
        text = text[:MAX_REGEX_INPUT_CHARS]
        note = f"only the first {MAX_REGEX_INPUT_CHARS} characters were searched"
    try:
        match = compiled.search(text, timeout=REGEX_TIMEOUT_SECONDS)
    except TimeoutError:
        return None, f"the regular expression took longer than {REGEX_TIMEOUT_SECONDS} s"
    if match is None:
        return None, note
    if compiled.groups:
        return match.group(1), note
    return match.group(0), note


# --- operators -------------------------------------------------------------------------


def parse_amount(text: str) -> Decimal | None:
    """A number from buyer text: ``12.50``, ``$12.50``, ``12,50 EUR``, ``1,234.50``.

    With only commas, ``1,234`` (groups of three) is thousands and ``12,50`` a decimal
    comma. None when it is not one finite number.
    """
    if len(text) > 100:
        return None
    match = _AMOUNT_RE.fullmatch(text.strip())
    if match is None or (match.group("sign") and match.group("sign2")):
        return None
    number = match.group("number").replace(" ", "").replace("'", "")
    if "," in number and "." in number:
        decimal_mark = "," if number.rfind(",") > number.rfind(".") else "."
        thousands = "." if decimal_mark == "," else ","
        number = number.replace(thousands, "").replace(decimal_mark, ".")
    elif "," in number:
        if re.fullmatch(r"[0-9]{1,3}(?:,[0-9]{3})+", number):
            number = number.replace(",", "")
        elif number.count(",") == 1:
            number = number.replace(",", ".")
        else:
            return None
    elif number.count(".") > 1:
        if not re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{3})+", number):
            return None
        number = number.replace(".", "")
    if not re.fullmatch(r"[0-9]*\.?[0-9]+|[0-9]+\.", number):
        return None
    try:
        amount = Decimal(number)
    except InvalidOperation:
        return None
    if not amount.is_finite():
        return None
    return -amount if "-" in (match.group("sign") + match.group("sign2")) else amount


def _matches_alternatives(value: str, expected: str) -> bool:
    """``approved|accepted`` and ``app*``: case-insensitive, spaces at the ends ignored."""
    actual = value.strip().casefold()
    exact, patterns = _alternatives(expected)
    return actual in exact or any(pattern.fullmatch(actual) for pattern in patterns)


@functools.lru_cache(maxsize=1024)
def _alternatives(expected: str) -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
    """An expected value's alternatives, folded: the plain ones as a set, those with a
    ``*`` compiled (remembered: rules compare with the same few words on every call)."""
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    for alternative in expected.split("|"):
        text = alternative.strip().casefold()
        if "*" in text:
            pattern = ".*".join(re.escape(part) for part in text.split("*"))
            patterns.append(re.compile(pattern, re.DOTALL))
        else:
            exact.add(text)
    return frozenset(exact), tuple(patterns)


def _apply(condition: Condition, value: str | None) -> tuple[bool, str]:
    """Whether the condition holds for the extracted value (None: nothing found), and a
    note when the answer needs one."""
    operator = Operator(condition.operator)
    text = "" if value is None else value
    expected = condition.value
    folded, wanted = text.casefold(), expected.casefold()
    if operator is Operator.ALWAYS:
        return True, ""
    if operator is Operator.EQUALS:
        return _matches_alternatives(text, expected), ""
    if operator is Operator.NOT_EQUALS:
        return not _matches_alternatives(text, expected), ""
    if operator is Operator.IS_TRUE:
        return text.strip().casefold() in TRUE_WORDS, ""
    if operator is Operator.IS_FALSE:
        word = text.strip().casefold()
        return word in FALSE_WORDS or word == "", ""
    if operator is Operator.CONTAINS:
        return wanted in folded, ""
    if operator is Operator.NOT_CONTAINS:
        return wanted not in folded, ""
    if operator is Operator.STARTS_WITH:
        return folded.startswith(wanted), ""
    if operator is Operator.ENDS_WITH:
        return folded.endswith(wanted), ""
    if operator is Operator.IS_EMPTY:
        return text.strip() == "", ""
    if operator is Operator.IS_NOT_EMPTY:
        return text.strip() != "", ""
    if operator is Operator.MATCHES:
        compiled = _check_regex(expected)
        if isinstance(compiled, str):
            return False, compiled
        try:
            found = compiled.search(text[:MAX_REGEX_INPUT_CHARS], timeout=REGEX_TIMEOUT_SECONDS)
        except TimeoutError:
            return False, f"the regular expression took longer than {REGEX_TIMEOUT_SECONDS} s"
        return found is not None, ""
    if operator in (Operator.BIGGER_THAN, Operator.SMALLER_THAN, Operator.BETWEEN):
        number = parse_amount(text)
        low = parse_amount(expected)
        if number is None:
            return False, "the value is not a number"
        if low is None:
            return False, "the expected value is not a number"
        if operator is Operator.BIGGER_THAN:
            return number > low, ""
        if operator is Operator.SMALLER_THAN:
            return number < low, ""
        high = parse_amount(condition.value2)
        if high is None:
            return False, "the second value is not a number"
        return low <= number <= high, ""
    return False, f"unknown operator {condition.operator!r}"


# --- the reader ------------------------------------------------------------------------


def _shorten(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_TRACE_VALUE_CHARS:
        return value
    return value[:MAX_TRACE_VALUE_CHARS] + "…"


def _is_absolute_http_url(value: str) -> bool:
    if re.search(r"[\x00-\x20\x7f]", value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


@dataclass
class _Reader:
    spec: RequestSpec
    built: BuiltRequest | None
    status_code: int
    headers: list[tuple[str, str]]
    body: bytes | str
    truncated: bool
    context: Mapping[str, Any]
    secrets: list[str]
    tracing: bool = True
    trace: list[TraceEntry] = field(default_factory=list)
    _parsed: _Body | None = None

    def mask(self, text: str) -> str:
        return mask_secrets(text, self.secrets)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.strip().lower()]
        return ", ".join(values) if values else None

    @property
    def parsed(self) -> _Body:
        if self._parsed is None:
            notes: list[TraceEntry] = []
            if self.truncated:
                notes.append(_note("The body was cut at the size limit; it may not parse."))
            self._parsed = _parse_body(self.body, self.header("Content-Type") or "", notes)
            self.trace.extend(notes)
        return self._parsed

    def render(self, template: str) -> tuple[str | None, str]:
        try:
            result = templating.render(template, self.context)
        except templating.TemplateError as error:
            return None, f"template error: {error}"
        note = "; ".join(result.warnings)
        return (None if result.dropped else result.value), note

    def extract(self, source: Source, key_kind: KeyKind, key: str) -> tuple[str | None, str]:
        """The value a condition or capture looks at, and a note when there is none."""
        source = Source(source)
        if source is Source.STATUS:
            return str(self.status_code), ""
        if source is Source.HEADER:
            return self.header(key), ""
        if source is Source.CONSTANT:
            return self.render(key)
        if source is Source.QUERY:
            if self.built is None:
                return None, "no request was built, so there is no query"
            for name, value in self.built.query_params:
                if name == key:
                    return value, ""
            return None, ""
        body = self.parsed
        key_kind = KeyKind(key_kind)
        if key_kind is KeyKind.NONE:
            return body.text, ""
        if key_kind is KeyKind.REGEX:
            return _regex_first(key, body.text)
        if key_kind is KeyKind.JSON_PATH:
            if body.kind == "json":
                return _json_path(body.data, key)
            if body.kind == "form":
                name = key.strip().removeprefix("$.")
                return body.data.get(name), ""
            return None, f"the body is {body.kind}, not JSON"
        if body.kind == "xml":
            return _xpath(body.data, key)
        return None, f"the body is {body.kind}, not XML"

    def outcome(self) -> Outcome:
        matched: int | None = None
        for position, rule in enumerate(self.spec.rules):
            holds = True
            for condition in rule.conditions:
                value, note = self.extract(condition.source, condition.key_kind, condition.key)
                held, why = _apply(condition, value)
                holds = holds and held
                if not self.tracing:
                    continue
                self.trace.append(
                    TraceEntry(
                        kind=TraceKind.CONDITION,
                        rule=position,
                        source=str(condition.source),
                        key_kind=str(condition.key_kind),
                        key=self.mask(condition.key),
                        value=_shorten(None if value is None else self.mask(value)),
                        operator=str(condition.operator),
                        expected=self.mask(condition.value),
                        expected2=self.mask(condition.value2),
                        held=held,
                        note=self.mask("; ".join(n for n in (note, why) if n)),
                    )
                )
            if self.tracing:
                self.trace.append(
                    TraceEntry(
                        kind=TraceKind.RULE,
                        rule=position,
                        held=holds,
                        note=f"decides: {rule.outcome}" if holds and matched is None else "",
                    )
                )
            if holds and matched is None:
                matched = position

        outcome = Outcome(kind=OutcomeKind.ERROR, matched_rule=matched, trace=self.trace)
        for capture in self.spec.captures:
            self.capture(capture, outcome)

        if matched is not None:
            rule = self.spec.rules[matched]
            outcome.kind = OutcomeKind(rule.outcome)
            reason, note = self.render(rule.reason)
            outcome.reason = reason or ""
            if note:
                self.trace.append(_note(f"rule {matched} reason: {note}"))
        elif 200 <= self.status_code < 300:
            outcome.kind = OutcomeKind(self.spec.default_outcome)
            self.trace.append(
                _note(f"No rule held: HTTP {self.status_code} means {outcome.kind} (the default).")
            )
        else:
            outcome.kind = OutcomeKind.ERROR
            outcome.reason = f"HTTP {self.status_code}"
            self.trace.append(_note(f"No rule held and HTTP {self.status_code} is not 2xx."))
        if outcome.kind is OutcomeKind.REJECTED and not outcome.reason:
            outcome.reason = outcome.captured.get("reject_reason", "")
        outcome.reason = self.mask(outcome.reason)
        return outcome

    def capture(self, capture: Capture, outcome: Outcome) -> None:
        target = CaptureTarget(capture.target)
        label = str(target)
        if target in (CaptureTarget.LEAD_FIELD, CaptureTarget.VARIABLE):
            label = f"{target}:{capture.target_name}"
        value, note = self.extract(capture.source, capture.key_kind, capture.key)
        captured: str | None = None
        if target in (CaptureTarget.LEAD_FIELD, CaptureTarget.VARIABLE) and not (
            capture.target_name
        ):
            note = "no target name: nothing stored"
        elif value is None:
            note = note or "nothing found"
        elif label in outcome.captured:
            note = "an earlier capture already set this target"
        elif target is CaptureTarget.PRICE:
            price = parse_amount(value)
            if price is None or price < 0:
                note = "not a price (a number such as 12.50 or $12.50): ignored"
            else:
                outcome.price = price
                captured = str(price)
        elif target is CaptureTarget.REDIRECT_URL:
            if _is_absolute_http_url(value.strip()):
                outcome.redirect_url = captured = value.strip()
            else:
                note = "not an absolute http(s) URL: ignored"
        else:
            captured = value
            if target is CaptureTarget.BUYER_LEAD_ID:
                outcome.buyer_lead_id = value
            elif target is CaptureTarget.LEAD_FIELD:
                outcome.fields[capture.target_name] = value
            elif target is CaptureTarget.VARIABLE:
                outcome.variables[capture.target_name] = value
        if captured is not None:
            outcome.captured[label] = captured
        if not self.tracing:
            return
        self.trace.append(
            TraceEntry(
                kind=TraceKind.CAPTURE,
                source=str(capture.source),
                key_kind=str(capture.key_kind),
                key=self.mask(capture.key),
                value=_shorten(None if value is None else self.mask(value)),
                held=captured is not None,
                target=label,
                note=self.mask(note),
            )
        )
