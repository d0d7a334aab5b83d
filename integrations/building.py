"""Build: turn a request spec and a template context into the exact HTTP request.

Pure: no network, no database. Preview, the test endpoint, dry runs, replays and the
real send all call ``build_request`` and differ only in what they do with the result.

Rules, in the order they apply:

- Every value (URL, query parameters, headers, body fields) is a template rendered with
  ``integrations.templating``. A value whose template used ``do_not_send`` is left out
  entirely: no field, no parameter, no header.
- URL: the operator's text is kept as written (they type full URLs), but each
  ``{{ ... }}`` value placed into it is percent-encoded whole (``quote(safe="")``), so a
  lead value such as ``a&b=c``, ``../x`` or ``#`` cannot add a parameter, climb a path
  or cut the URL. Encoding is applied to each expression's *output*, after its filters,
  so ``sha256``, ``format_date`` or ``to_base64`` see the real value. Two exceptions: an
  expression ending with ``| urlencode`` is already encoded and is not encoded twice;
  and a URL template that *starts* with a value whose output is an absolute http(s)
  URL (``{{postback_url}}?x=1``) takes that value as the base URL unencoded.
  Parameters from ``spec.query`` are added after any query the URL already has.
- Body formats: JSON and XML build nested data from names with dots and brackets
  (``customer.name``, ``orders[0].price``) in whatever order they are listed; gaps in an
  array are ``null`` (JSON) or an empty element (XML). Values are always strings: the
  template language produces text and buyers differ in what they accept, so a typed
  JSON value (number, boolean) is not guessed from its text. Form and multipart use the
  names as given (flat). ``query`` has no body: the fields go to the query string.
- GET and DELETE never carry a body: their body fields go to the query string, as with
  the ``query`` format (many servers and proxies drop or refuse a GET body).
- Content-Type is set from the format unless a header of the spec sets it.
- Headers: names must be HTTP tokens; values come from ``render_header_value``, which
  refuses CR, LF and other control characters (header injection).
- Auth: basic, bearer, an API key header or an API key query parameter. The header it
  produces replaces a spec header of the same name. The secret (and the derived Basic
  credentials) are listed in ``BuiltRequest.secrets`` for masking and never appear in a
  warning or an error message.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets as random_tokens
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from integrations import templating
from integrations.outbound import (
    DEFAULT_MAX_RESPONSE_BYTES,
    OutboundRequest,
    mask_secrets,
    mask_url,
)
from integrations.spec import AuthType, BodyFormat, Method, RequestSpec

# An array index above this is a typo or an attack (orders[99999999] would allocate a
# huge list of nulls), never a real buyer format.
MAX_ARRAY_INDEX = 999

# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values: control characters other than tab are refused (same rule as templating,
# applied to values that do not come from a template, such as the auth secret).
_HEADER_FORBIDDEN_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A simplified XML 1.0 Name: a letter or "_" first, then letters, digits, "_", "-", ".".
# No ":" since this builder declares no namespaces.
_XML_NAME_RE = re.compile(r"[^\W\d][\w.\-]*")
# Characters XML 1.0 cannot represent at all, not even as character references.
_XML_INVALID_CHARS_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_PATH_HEAD_RE = re.compile(r"[^.\[\]]+")
_PATH_STEP_RE = re.compile(r"\.([^.\[\]]+)|\[([0-9]+)\]")
_ENDS_WITH_URLENCODE_RE = re.compile(r"\|\s*urlencode\s*}}\Z", re.IGNORECASE)
_WHITESPACE_OR_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")

_BODYLESS_METHODS = frozenset({Method.GET, Method.DELETE})
_CONTENT_TYPES = {
    BodyFormat.JSON: "application/json",
    BodyFormat.FORM: "application/x-www-form-urlencoded",
    BodyFormat.XML: "application/xml; charset=utf-8",
}


class BuildError(ValueError):
    """The request cannot be built from this spec and context; ``field`` names the part at
    fault (``url``, a header, parameter or body field name) for the admin."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, repr=False)
class BuiltRequest:
    """The exact request a step sends, plus what the log and preview need around it."""

    method: str
    url: str  # final, with the query string
    headers: list[tuple[str, str]]
    body: bytes | None
    content_type: str  # the Content-Type sent ("" without a body)
    timeout_seconds: float
    secrets: list[str] = field(default_factory=list)  # values to mask wherever shown
    warnings: list[str] = field(default_factory=list)  # unknown names and the like

    def __repr__(self) -> str:
        """Masked, so that logging the object by accident leaks nothing."""
        return f"<BuiltRequest {self.method} {mask_url(self.url, self.secrets)}>"

    @property
    def query_params(self) -> list[tuple[str, str]]:
        """The query string of the final URL, decoded, in order (repeats kept)."""
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

    def to_outbound(
        self, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    ) -> OutboundRequest:
        """What the transport sends; the timeout is the step's."""
        return OutboundRequest(
            method=self.method,
            url=self.url,
            headers=list(self.headers),
            body=self.body,
            timeout=self.timeout_seconds,
            max_response_bytes=max_response_bytes,
            secrets=list(self.secrets),
        )


def build_request(spec: RequestSpec, context: Mapping[str, Any]) -> BuiltRequest:
    """Render and serialise ``spec`` against ``context``; raises BuildError."""
    builder = _Builder(spec, context)
    return builder.build()


class _Builder:
    """One build: the context, the secrets and the warnings gathered on the way."""

    def __init__(self, spec: RequestSpec, context: Mapping[str, Any]) -> None:
        self.spec = spec
        self.context = (
            context
            if isinstance(context, templating.TemplateContext)
            else templating.TemplateContext(context)
        )
        self.secrets = [s for s in (spec.auth_secret, *spec.secrets) if s]
        self.warnings: list[str] = []

    def build(self) -> BuiltRequest:
        spec = self.spec
        method = Method(spec.method)
        body_format = BodyFormat(spec.body_format)
        url = self._render_url(spec.url)
        query = self._render_pairs(spec.query, "query parameter")
        fields = self._render_pairs(spec.body, "body field")
        headers = self._render_headers()

        body: bytes | None = None
        content_type = ""
        if body_format is BodyFormat.QUERY or method in _BODYLESS_METHODS:
            query.extend(fields)
        else:
            body, content_type = self._serialise(body_format, fields)

        self._add_auth(headers, query)
        if body is not None:
            override = next((v for n, v in headers if n.lower() == "content-type"), None)
            if override is None:
                headers.append(("Content-Type", content_type))
            else:
                content_type = override
        return BuiltRequest(
            method=method.value,
            url=_with_query(url, query),
            headers=headers,
            body=body,
            content_type=content_type,
            timeout_seconds=spec.timeout_seconds,
            secrets=self.secrets,
            warnings=self.warnings,
        )

    # --- rendering -----------------------------------------------------------------

    def _render(self, template: str, where: str, field_name: str) -> templating.RenderResult:
        try:
            result = templating.render(template, self.context)
        except templating.TemplateError as error:
            raise BuildError(f"{where}: {error}", field=field_name) from error
        self._warn(where, result.warnings)
        return result

    def _warn(self, where: str, warnings: tuple[str, ...] | list[str]) -> None:
        for warning in warnings:
            self.warnings.append(mask_secrets(f"{where}: {warning}", self.secrets))

    def _render_url(self, template: str) -> str:
        whole = self._render(template, "URL", "url")  # syntax errors and warnings, once
        if whole.dropped:
            raise BuildError("URL: do_not_send cannot leave out the URL", field="url")
        pieces: list[str] = []
        for is_expression, text in _split_template(template):
            if not is_expression:
                pieces.append(text)
                continue
            value = templating.render(text, self.context).value
            if _ENDS_WITH_URLENCODE_RE.search(text):
                pieces.append(_escape_dot_segment(value))
            elif not pieces and _is_absolute_http_url(value):
                pieces.append(value)  # the whole base URL comes from this value
            else:
                pieces.append(_quote_url_value(value))
        url = "".join(pieces)
        if _WHITESPACE_OR_CONTROL_RE.search(url):
            raise BuildError(
                "URL contains spaces or control characters outside {{ }} values", field="url"
            )
        if not _is_absolute_http_url(url):
            raise BuildError(
                "URL must be an absolute http:// or https:// address with a host", field="url"
            )
        return url

    def _render_pairs(self, pairs: tuple[tuple[str, str], ...], kind: str) -> list[tuple[str, str]]:
        rendered: list[tuple[str, str]] = []
        for name, template in pairs:
            if name == "":
                raise BuildError(f"a {kind} has no name", field=name)
            result = self._render(template, f'{kind} "{name}"', name)
            if not result.dropped:
                rendered.append((name, result.value))
        return rendered

    def _render_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        for name, template in self.spec.headers:
            _check_header_name(name)
            where = f'header "{name}"'
            try:
                result = templating.render_header_value(template, self.context)
            except templating.TemplateError as error:
                if error.code == "bad_value":
                    raise BuildError(
                        f"{where}: the value contains a line break (CR/LF) or another "
                        "control character, which is never sent",
                        field=name,
                    ) from error
                raise BuildError(f"{where}: {error}", field=name) from error
            self._warn(where, result.warnings)
            if not result.dropped:
                headers.append((name, result.value))
        return headers

    # --- auth ------------------------------------------------------------------------

    def _add_auth(self, headers: list[tuple[str, str]], query: list[tuple[str, str]]) -> None:
        spec = self.spec
        auth_type = AuthType(spec.auth_type)
        secret = spec.auth_secret
        if auth_type is AuthType.NONE:
            return
        if auth_type is AuthType.QUERY_KEY:
            if not spec.auth_name:
                raise BuildError("auth: the query parameter name is empty", field="auth_name")
            query.append((spec.auth_name, secret))
            return
        if _HEADER_FORBIDDEN_RE.search(secret):
            # Never say more: the message must not help anyone reconstruct the secret.
            raise BuildError(
                "auth: the secret contains a line break or control character", field="auth"
            )
        if auth_type is AuthType.BASIC:
            if ":" in spec.auth_name or _HEADER_FORBIDDEN_RE.search(spec.auth_name):
                raise BuildError(
                    'auth: a Basic username cannot contain ":" or control characters',
                    field="auth_name",
                )
            token = base64.b64encode(f"{spec.auth_name}:{secret}".encode()).decode("ascii")
            self.secrets.append(token)
            name, value = "Authorization", f"Basic {token}"
        elif auth_type is AuthType.BEARER:
            name, value = "Authorization", f"Bearer {secret}"
        else:  # HEADER_KEY
            if not spec.auth_name:
                raise BuildError("auth: the header name is empty", field="auth_name")
            _check_header_name(spec.auth_name)
            name, value = spec.auth_name, secret
        replaced = [h for h in headers if h[0].lower() == name.lower()]
        if replaced:
            headers[:] = [h for h in headers if h[0].lower() != name.lower()]
            self.warnings.append(f'header "{name}": replaced by the authentication')
        headers.append((name, value))

    # --- bodies ----------------------------------------------------------------------

    def _serialise(
        self, body_format: BodyFormat, fields: list[tuple[str, str]]
    ) -> tuple[bytes, str]:
        if body_format is BodyFormat.JSON:
            data = _to_python(_build_tree(fields))
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            return _utf8(text), _CONTENT_TYPES[body_format]
        if body_format is BodyFormat.FORM:
            try:
                text = urlencode(fields, encoding="utf-8")
            except UnicodeEncodeError as error:
                raise BuildError("body: a value is not valid Unicode text", field="body") from error
            return text.encode("ascii"), _CONTENT_TYPES[body_format]
        if body_format is BodyFormat.XML:
            return self._xml(fields), _CONTENT_TYPES[body_format]
        if body_format is BodyFormat.MULTIPART:
            return _multipart(fields)
        raise BuildError(f"unknown body format {body_format!r}", field="body_format")

    def _xml(self, fields: list[tuple[str, str]]) -> bytes:
        root_name = self.spec.xml_root
        if not _XML_NAME_RE.fullmatch(root_name):
            raise BuildError(
                f'XML root "{root_name}" is not a valid XML element name', field="xml_root"
            )
        clean: list[tuple[str, str]] = []
        for name, value in fields:
            if _XML_INVALID_CHARS_RE.search(value):
                # XML 1.0 has no way to write these, not even as &#...; references.
                # Dropping them beats losing the lead; the operator sees the warning.
                self.warnings.append(
                    f'body field "{name}": characters that XML cannot carry were removed'
                )
                value = _XML_INVALID_CHARS_RE.sub("", value)
            clean.append((name, value))
        root = _build_tree(clean)
        out = ['<?xml version="1.0" encoding="UTF-8"?>']
        _write_xml(root_name, root, out, root_name)
        return _utf8("".join(out))


# --- URL ----------------------------------------------------------------------------


def _split_template(template: str) -> list[tuple[bool, str]]:
    """Split a template (already known to parse) into literal text and ``{{ ... }}``
    blocks, honouring quoted text inside the braces (``{{ "}}" }}``) as the template
    tokenizer does."""
    parts: list[tuple[bool, str]] = []
    index = 0
    length = len(template)
    while index < length:
        start = template.find("{{", index)
        if start == -1:
            parts.append((False, template[index:]))
            break
        if start > index:
            parts.append((False, template[index:start]))
        cursor = start + 2
        while cursor < length:
            if template[cursor] == '"':
                cursor += 1
                while cursor < length and template[cursor] != '"':
                    escaped = template[cursor] == "\\" and template[cursor + 1 : cursor + 2] in (
                        '"',
                        "\\",
                    )
                    cursor += 2 if escaped else 1
                cursor += 1
            elif template.startswith("}}", cursor):
                cursor += 2
                break
            else:
                cursor += 1
        parts.append((True, template[start:cursor]))
        index = cursor
    return parts


def _escape_dot_segment(value: str) -> str:
    """``.`` and ``..`` are left alone by percent-encoding but are path segments that
    clients and servers resolve (``/api/{{id}}/status`` with id ``..``)."""
    return value.replace(".", "%2E") if value and set(value) == {"."} else value


def _quote_url_value(value: str) -> str:
    try:
        return _escape_dot_segment(quote(value, safe=""))
    except UnicodeEncodeError as error:
        raise BuildError("URL: a value is not valid Unicode text", field="url") from error


def _is_absolute_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _with_query(url: str, pairs: list[tuple[str, str]]) -> str:
    """Append encoded pairs after any query the URL has, before any fragment."""
    if not pairs:
        return url
    try:
        extra = urlencode(pairs, quote_via=quote, safe="", encoding="utf-8")
    except UnicodeEncodeError as error:
        raise BuildError("query: a value is not valid Unicode text", field="query") from error
    base, hash_mark, fragment = url.partition("#")
    if "?" not in base:
        base += "?"
    elif not base.endswith(("?", "&")):
        base += "&"
    return f"{base}{extra}{hash_mark}{fragment}"


# --- headers ------------------------------------------------------------------------


def _check_header_name(name: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise BuildError(
            f"header name {name!r} is not valid: use letters, digits and !#$%&'*+-.^_`|~",
            field=name,
        )


# --- nested bodies (JSON, XML) ------------------------------------------------------


@dataclass
class _Node:
    """A place in the nested body; ``origin`` is the body field that created it, so a
    conflict can name both fields."""

    origin: str
    kind: str  # "object", "array" or "value"
    children: dict[Any, _Node] = field(default_factory=dict)  # str keys or int indexes
    value: str = ""


@functools.lru_cache(maxsize=4096)
def _parse_path(name: str) -> tuple[str | int, ...]:
    """A body field's name as its path (``orders[0].price`` -> orders, 0, price); a pure
    function of the name, and a step's names are the same on every call: remembered."""
    head = _PATH_HEAD_RE.match(name)
    if head is None:
        raise BuildError(
            f'body field "{name}" must start with a name, e.g. customer.name', field=name
        )
    path: list[str | int] = [head.group(0)]
    index = head.end()
    while index < len(name):
        step = _PATH_STEP_RE.match(name, index)
        if step is None:
            raise BuildError(
                f'body field "{name}" cannot be read at character {index + 1}: write nested '
                "names as customer.name or orders[0].price",
                field=name,
            )
        if step.group(1) is not None:
            path.append(step.group(1))
        else:
            position = int(step.group(2))
            if position > MAX_ARRAY_INDEX:
                raise BuildError(
                    f'body field "{name}": array index {position} is above {MAX_ARRAY_INDEX}',
                    field=name,
                )
            path.append(position)
        index = step.end()
    return tuple(path)


def _path_text(path: Sequence[str | int]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _kind_of(step: str | int) -> str:
    return "object" if isinstance(step, str) else "array"


def _conflict(existing: _Node, name: str, path: Sequence[str | int], wanted: str) -> BuildError:
    if existing.origin == name:
        return BuildError(f'body field "{name}" is listed twice', field=name)
    return BuildError(
        f'body fields "{existing.origin}" and "{name}" conflict: "{_path_text(path)}" '
        f"cannot be both {_with_article(existing.kind)} and {_with_article(wanted)}",
        field=name,
    )


def _with_article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _build_tree(fields: list[tuple[str, str]]) -> _Node:
    root = _Node(origin="", kind="object")
    for name, value in fields:
        path = _parse_path(name)
        node = root
        for depth, step in enumerate(path):
            child = node.children.get(step)
            if depth == len(path) - 1:
                if child is not None:
                    raise _conflict(child, name, path, "value")
                node.children[step] = _Node(origin=name, kind="value", value=value)
                break
            wanted = _kind_of(path[depth + 1])
            if child is None:
                child = node.children[step] = _Node(origin=name, kind=wanted)
            elif child.kind != wanted:
                raise _conflict(child, name, path[: depth + 1], wanted)
            node = child
    return root


def _to_python(node: _Node) -> Any:
    if node.kind == "value":
        return node.value
    if node.kind == "object":
        return {key: _to_python(child) for key, child in node.children.items()}
    size = max(node.children) + 1
    return [_to_python(node.children[i]) if i in node.children else None for i in range(size)]


def _xml_text(value: str) -> str:
    # CR is written as a reference: a parser turns a literal CR (or CRLF) into LF.
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _check_xml_name(name: str, origin: str) -> None:
    if not _XML_NAME_RE.fullmatch(name):
        raise BuildError(
            f'body field "{origin}": "{name}" is not a valid XML element name (start with a '
            "letter or _, then letters, digits, _, - or .)",
            field=origin,
        )


def _write_xml(name: str, node: _Node, out: list[str], origin: str) -> None:
    _check_xml_name(name, origin)
    if node.kind == "value":
        out.append(f"<{name}>{_xml_text(node.value)}</{name}>")
    elif node.kind == "object":
        out.append(f"<{name}>")
        for key, child in node.children.items():
            _write_xml(key, child, out, child.origin)
        out.append(f"</{name}>")
    else:  # an array is the same element repeated: orders[0], orders[1] -> <orders> x2
        for position in range(max(node.children) + 1):
            child = node.children.get(position)
            if child is None:
                out.append(f"<{name}/>")
            elif child.kind == "array":
                raise BuildError(
                    f'body field "{child.origin}": an array directly inside an array has no '
                    "element name in XML; put a name between, e.g. rows[0].cells[1]",
                    field=child.origin,
                )
            else:
                _write_xml(name, child, out, child.origin)


# --- flat bodies -------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates from badly decoded input
        raise BuildError("body: a value is not valid Unicode text", field="body") from error


def _multipart_name(name: str) -> str:
    # What browsers do (WHATWG HTML, "multipart/form-data encoding algorithm").
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart(fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    """multipart/form-data, text fields only (RFC 7578)."""
    encoded = [(_utf8(_multipart_name(name)), _utf8(value)) for name, value in fields]
    while True:
        boundary = f"----LeadrelayBoundary{random_tokens.token_hex(16)}".encode("ascii")
        if not any(boundary in value or boundary in name for name, value in encoded):
            break
    chunks: list[bytes] = []
    for name, value in encoded:
        chunks += [
            b"--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\n',
            value,
            b"\r\n",
        ]
    chunks.append(b"--" + boundary + b"--\r\n")
    return b"".join(chunks), f"multipart/form-data; boundary={boundary.decode('ascii')}"
