"""Plain descriptions of a request step and its response rules.

The models (integrations.models) turn into these, the library files and the export
format are these as JSON, and the two pure functions work on them:

- ``building.build_request(spec, context) -> BuiltRequest`` turns a spec and a template
  context into the exact request (no network);
- ``reading.read_response(spec, built, response) -> Outcome`` turns the request and the
  response into an outcome, a reason and captured values (no network).

Only ``integrations.outbound`` touches the network. Preview, the test endpoint, sample
response checks, dry runs, replays and the real send are then the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Method(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class BodyFormat(StrEnum):
    JSON = "json"
    FORM = "form"  # application/x-www-form-urlencoded
    MULTIPART = "multipart"  # multipart/form-data
    XML = "xml"
    QUERY = "query"  # no body: body fields go to the query string


class AuthType(StrEnum):
    NONE = "none"
    BASIC = "basic"  # username + secret (password)
    BEARER = "bearer"  # secret is the token
    HEADER_KEY = "header_key"  # header `auth_name: secret`
    QUERY_KEY = "query_key"  # query parameter `auth_name=secret`


class Source(StrEnum):
    BODY = "body"
    HEADER = "header"
    STATUS = "status"  # HTTP status code
    CONSTANT = "constant"  # the rule's key is rendered as a template and compared
    QUERY = "query"  # the request's query parameters (callbacks reuse this)


class KeyKind(StrEnum):
    JSON_PATH = "json_path"  # `data.items[0].status`, `$.data.status`, `items[*].id`
    XPATH = "xpath"  # `//result/status/text()`
    REGEX = "regex"  # first group (or whole match) of the pattern in the text
    NONE = "none"  # the whole value of the source


class Operator(StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    IS_TRUE = "is_true"
    IS_FALSE = "is_false"
    BIGGER_THAN = "bigger_than"
    SMALLER_THAN = "smaller_than"
    BETWEEN = "between"  # value <= x <= value2
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    IS_EMPTY = "is_empty"
    IS_NOT_EMPTY = "is_not_empty"
    MATCHES = "matches"  # regex search
    ALWAYS = "always"


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    PENDING = "pending"
    ERROR = "error"
    TIMEOUT = "timeout"


class CaptureTarget(StrEnum):
    LEAD_FIELD = "lead_field"  # target_name = field name
    VARIABLE = "variable"  # target_name = variable name for later steps
    REJECT_REASON = "reject_reason"
    PRICE = "price"  # bid / price
    REDIRECT_URL = "redirect_url"
    BUYER_LEAD_ID = "buyer_lead_id"


@dataclass(frozen=True)
class Condition:
    """source x key x operator x value(s). ``value`` accepts alternatives
    ``approved|rejected`` and wildcards ``app*`` for the text operators equals /
    not_equals."""

    source: Source
    operator: Operator
    key_kind: KeyKind = KeyKind.NONE
    key: str = ""
    value: str = ""
    value2: str = ""


@dataclass(frozen=True)
class Rule:
    """When every condition holds (AND), the response means ``outcome``; rules are
    checked in order and the first that holds decides. ``reason`` is a template."""

    conditions: tuple[Condition, ...]
    outcome: OutcomeKind
    reason: str = ""


@dataclass(frozen=True)
class Capture:
    """Read a value from the response into a target (always evaluated)."""

    source: Source
    key_kind: KeyKind
    key: str
    target: CaptureTarget
    target_name: str = ""


@dataclass(frozen=True)
class RequestSpec:
    """Everything needed to build one HTTP request and read its answer. Values are
    templates (``{{g_email | lower}}``); names with dots and brackets build nested JSON
    and XML (``customer.name``, ``orders[0].price``)."""

    method: Method
    url: str
    body_format: BodyFormat = BodyFormat.JSON
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    body: tuple[tuple[str, str], ...] = ()
    xml_root: str = "request"
    timeout_seconds: float = 40.0
    auth_type: AuthType = AuthType.NONE
    auth_name: str = ""  # username (basic), header name or query parameter name
    auth_secret: str = ""  # decrypted secret; never logged (masked)
    rules: tuple[Rule, ...] = ()
    captures: tuple[Capture, ...] = ()
    # Outcome when no rule holds: 2xx -> default_outcome, otherwise error.
    default_outcome: OutcomeKind = OutcomeKind.ACCEPTED
    secrets: tuple[str, ...] = field(default=())  # extra values to mask in logs
