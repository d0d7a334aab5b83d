"""A callback as data: parsing its body (JSON, form, text), reading the lead identifier
where the endpoint says it is, and making it safe to store. Pure: no database."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

# JSON paths are read exactly as response rules read them (one meaning of "data.id").
from integrations.reading import _json_path as json_path

MAX_IDENTIFIER = 120
MAX_VARIABLES = 50
MAX_VARIABLE_TEXT = 1000


def clean_text(value: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL: a body with one must not be a 500."""
    return value.replace("\x00", "\ufffd")


@dataclass
class Callback:
    """One inbound request, as the view read it."""

    method: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]  # as sent (the view masks them for the log)
    content_type: str
    body: bytes
    _data: Any = field(default=None, init=False, repr=False)
    _parsed: bool = field(default=False, init=False, repr=False)

    @property
    def text(self) -> str:
        return clean_text(self.body.decode("utf-8", errors="replace"))

    @property
    def kind(self) -> str:
        ctype = self.content_type.split(";", 1)[0].strip().lower()
        if "json" in ctype:
            return "json"
        if ctype == "application/x-www-form-urlencoded":
            return "form"
        stripped = self.body.lstrip()[:1]
        if not ctype and stripped in (b"{", b"["):
            return "json"
        return "text"

    @property
    def data(self) -> Any:
        """The parsed body: a JSON value, a form's dict, or None."""
        if not self._parsed:
            self._parsed = True
            kind = self.kind
            if kind == "json" and self.body.strip():
                try:
                    self._data = json.loads(self.text)
                except ValueError:
                    self._data = None
            elif kind == "form":
                self._data = dict(parse_qsl(self.text, keep_blank_values=True))
        return self._data

    def header(self, name: str) -> str | None:
        wanted = name.strip().lower()
        values = [v for n, v in self.headers if n.lower() == wanted]
        return ", ".join(values) if values else None

    def query_value(self, key: str) -> str | None:
        found = None
        for name, value in self.query:
            if name == key:
                found = value  # the last one wins, as in most frameworks
        return found

    def body_value(self, key: str) -> str | None:
        data = self.data
        if isinstance(data, dict) and self.kind == "form":
            value = data.get(key.strip().removeprefix("$."))
            return None if value is None else str(value)
        if data is None:
            return None
        value, _note = json_path(data, key)
        return value

    def read(self, location: str, key: str) -> str | None:
        """The value at ``key`` in ``location`` (any, query, body, header), stripped;
        None when absent or empty."""
        if not key:
            return None
        value: str | None
        if location == "query":
            value = self.query_value(key)
        elif location == "body":
            value = self.body_value(key)
        elif location == "header":
            value = self.header(key)
        else:
            value = self.query_value(key)
            if value is None or not value.strip():
                value = self.body_value(key)
        if value is None:
            return None
        value = clean_text(value).strip()
        return value or None

    def payload(self) -> dict[str, Any]:
        """Query parameters and the body's top-level values in one dict (the body wins):
        what a webhook trigger gives its scenario as variables."""
        out: dict[str, Any] = {k: clean_text(v) for k, v in self.query}
        data = self.data
        if isinstance(data, dict):
            out.update(data)
        elif data is not None:
            out["body"] = data
        elif self.body.strip() and self.kind == "text":
            out["body"] = self.text[:MAX_VARIABLE_TEXT]
        return _jsonable(out)


def _jsonable(value: Any) -> Any:
    """NUL-free text everywhere (jsonb refuses \\u0000), keys as text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def flat_variables(payload: dict[str, Any], prefix: str = "webhook_") -> dict[str, str]:
    """Top-level scalar values as run variables ``webhook_<key>`` (bounded), so later
    connections and templates can use what the buyer sent."""
    out: dict[str, str] = {}
    for key, value in payload.items():
        if len(out) >= MAX_VARIABLES:
            break
        if isinstance(value, (dict, list)) or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[f"{prefix}{key}"[:100]] = str(value)[:MAX_VARIABLE_TEXT]
    return out
