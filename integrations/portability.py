"""Integrations as data: the library's files and export/import use one JSON format.

One integration is an object::

    {"format": "leadrelay.integration/1", "slug": "...", "name": "...",
     "category": "crm", "description": "...", "docs_url": "https://...",
     "requests": [{"name": "...", "meaning": "post", "method": "POST", "url": "...",
                   "body_format": "json", "xml_root": "request", "timeout_seconds": 40,
                   "auth_type": "none", "auth_name": "", "default_outcome": "accepted",
                   "headers": [["Name", "value"]], "query": [["n", "v"]],
                   "body": [["customer.email", "{{g_email}}"]],
                   "rules": [{"source": "body", "key_kind": "json_path", "key": "status",
                              "operator": "equals", "value": "ok", "value2": "",
                              "and_next": false, "outcome": "accepted", "reason": ""}],
                   "captures": [{"source": "body", "key_kind": "json_path", "key": "id",
                                 "target": "buyer_lead_id", "target_name": ""}]}]}

Secrets are never exported; an imported integration that needs one says so. Keys are
written in a fixed order so exports diff cleanly (configuration as code).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestQueryParam,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)

FORMAT = "leadrelay.integration/1"
LIBRARY_DIR = Path(__file__).resolve().parent / "library"
STEP_FIELDS = ["name", "meaning", "method", "url", "body_format", "xml_root", "timeout_seconds",
               "auth_type", "auth_name", "default_outcome"]  # fmt: skip
RULE_FIELDS = ["source", "key_kind", "key", "operator", "value", "value2", "and_next",
               "outcome", "reason"]  # fmt: skip
CAPTURE_FIELDS = ["source", "key_kind", "key", "target", "target_name"]
TOP_KEYS = {"format", "slug", "name", "category", "country", "description", "docs_url",
            "requests"}  # fmt: skip
STEP_KEYS = set(STEP_FIELDS) | {"headers", "query", "body", "rules", "captures", "needs_secret"}


def integration_export(integration: Integration) -> dict[str, Any]:
    """The integration as a plain, ordered, secret-free dict."""
    steps = []
    for step in integration.requests.prefetch_related(
        "headers", "query_params", "body_fields", "rules", "captures"
    ):
        data: dict[str, Any] = {f: getattr(step, f) for f in STEP_FIELDS}
        data["headers"] = [[h.name, h.value] for h in step.headers.all()]
        data["query"] = [[q.name, q.value] for q in step.query_params.all()]
        data["body"] = [[b.name, b.value] for b in step.body_fields.all()]
        data["rules"] = [{f: getattr(r, f) for f in RULE_FIELDS} for r in step.rules.all()]
        data["captures"] = [{f: getattr(c, f) for f in CAPTURE_FIELDS}
                            for c in step.captures.all()]  # fmt: skip
        data["needs_secret"] = step.auth_type != "none" or _uses_secret(data)
        steps.append(data)
    return {
        "format": FORMAT,
        "slug": integration.library_slug,
        "name": integration.name,
        "category": integration.category,
        "country": str(integration.country or ""),
        "description": integration.description,
        "docs_url": integration.docs_url,
        "requests": steps,
    }


def integration_export_json(integration: Integration) -> str:
    return json.dumps(integration_export(integration), indent=2, ensure_ascii=False) + "\n"


def _uses_secret(step: dict[str, Any]) -> bool:
    values = [step.get("url", "")] + [v for key in ("headers", "query", "body")
                                       for _, v in step.get(key, [])]  # fmt: skip
    return any("secret" in v.lower() and "{{" in v for v in values)


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise ValidationError(f"{where}: expected a list of [name, value] pairs.")
    for i, pair in enumerate(value):
        if not (isinstance(pair, list | tuple) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):  # fmt: skip
            raise ValidationError(f"{where}[{i}]: expected [name, value] as two texts.")
    return [(p[0], p[1]) for p in value]


def _refuse_unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValidationError(f"{where}: unknown key {unknown[0]!r}.")


def _text(data: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValidationError(f"{where}.{key}: expected a text.")
    return value


def integration_import(
    *, workspace_id: int, data: dict[str, Any], name: str | None = None, status: str = "test"
) -> Integration:
    """Create an integration from the format above. Every row is validated; any error
    names its place (``requests[0].rules[2]: ...``) and nothing is written."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValidationError(f"Not a Leadrelay integration (expected format {FORMAT}).")
    _refuse_unknown(data, TOP_KEYS, "integration")
    steps = data.get("requests")
    if not isinstance(steps, list) or not steps:
        raise ValidationError("requests: at least one request is needed.")
    name = (name or _text(data, "name", "integration")).strip()
    if Integration.objects.filter(workspace_id=workspace_id, name=name).exists():
        raise ValidationError(f"integration.name: this workspace already has “{name}”.")
    with transaction.atomic():
        integration = Integration(
            workspace_id=workspace_id,
            name=name,
            category=_text(data, "category", "integration", "custom"),
            country=_text(data, "country", "integration"),
            description=_text(data, "description", "integration"),
            docs_url=_text(data, "docs_url", "integration"),
            library_slug=_text(data, "slug", "integration"),
            status=status,
        )
        _clean(integration, "integration")
        integration.save()
        for i, raw in enumerate(steps):
            where = f"requests[{i}]"
            if not isinstance(raw, dict):
                raise ValidationError(f"{where}: expected an object.")
            _refuse_unknown(raw, STEP_KEYS, where)
            step = RequestStep(
                workspace_id=workspace_id, integration=integration, position=i,
                **{f: raw[f] for f in STEP_FIELDS if f in raw},
            )  # fmt: skip
            _clean(step, where)
            step.save()
            for model, key in ((RequestHeader, "headers"), (RequestQueryParam, "query"),
                               (RequestBodyField, "body")):  # fmt: skip
                for j, (n, v) in enumerate(_pairs(raw.get(key, []), f"{where}.{key}")):
                    row = model(request=step, position=j, name=n, value=v)
                    _clean(row, f"{where}.{key}[{j}]")
                    row.save()
            for key, model, fields in (("rules", ResponseRule, RULE_FIELDS),
                                       ("captures", ResponseCapture, CAPTURE_FIELDS)):  # fmt: skip
                rows = raw.get(key, [])
                if not isinstance(rows, list):
                    raise ValidationError(f"{where}.{key}: expected a list.")
                for j, item in enumerate(rows):
                    if not isinstance(item, dict):
                        raise ValidationError(f"{where}.{key}[{j}]: expected an object.")
                    _refuse_unknown(item, set(fields), f"{where}.{key}[{j}]")
                    row = model(request=step, position=j,
                                **{f: item[f] for f in fields if f in item})  # fmt: skip
                    _clean(row, f"{where}.{key}[{j}]")
                    row.save()
    return integration


def _clean(obj: Any, where: str) -> None:
    try:
        obj.full_clean(exclude=["request", "integration", "workspace"])
    except ValidationError as exc:
        messages = "; ".join(
            f"{field}: {' '.join(errs)}" for field, errs in exc.message_dict.items()
        ) if hasattr(exc, "message_dict") else " ".join(exc.messages)  # fmt: skip
        raise ValidationError(f"{where}: {messages}") from exc


@cache
def library_entries() -> list[dict[str, Any]]:
    """Every prebuilt integration shipped in integrations/library/*.json, by name."""
    entries = []
    for path in sorted(LIBRARY_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        data.setdefault("slug", path.stem)
        entries.append(data)
    return sorted(entries, key=lambda e: e["name"].lower())


def library_entry(slug: str) -> dict[str, Any] | None:
    return next((e for e in library_entries() if e["slug"] == slug), None)
