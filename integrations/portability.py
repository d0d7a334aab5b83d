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

An integration with a scenario (its elements and the arrows between them: docs/scenarios.md)
also carries it, elements and requests named by their place in their lists::

    "scenario": {
      "elements": [{"name": "Start", "kind": "start", "meaning": "post", "position": 0,
                    "config": {}, "request": null, "mirror_of": null},
                   {"name": "Post", "kind": "request", "meaning": "post", "position": 1,
                    "config": {}, "request": 0, "mirror_of": null}],
      "connections": [{"from": 0, "to": 1, "position": 0, "conditions": []}]}

Without it (the library's files), the integration gets its default scenario on its first
run. Secrets are never exported; an imported integration that needs one says so. Keys are
written in a fixed order so exports diff cleanly (configuration as code).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from integrations.engine.conditions import conditions_check
from integrations.models import (
    Connection,
    Element,
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
            "requests", "scenario"}  # fmt: skip
ELEMENT_FIELDS = ["name", "kind", "meaning", "position", "config"]
ELEMENT_KEYS = set(ELEMENT_FIELDS) | {"request", "mirror_of"}
CONNECTION_KEYS = {"from", "to", "position", "conditions"}
STEP_KEYS = set(STEP_FIELDS) | {"headers", "query", "body", "rules", "captures", "needs_secret"}


def integration_export(integration: Integration) -> dict[str, Any]:
    """The integration as a plain, ordered, secret-free dict."""
    steps = []
    step_ids: list[int] = []
    for step in integration.requests.prefetch_related(
        "headers", "query_params", "body_fields", "rules", "captures"
    ):
        step_ids.append(step.pk)
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
        **_scenario_export(integration, step_ids),
    }


def _ordered(value: Any) -> Any:
    """Settings and conditions with their keys sorted: the same export whatever order the
    database keeps JSON keys in (PostgreSQL's jsonb reorders them, SQLite does not)."""
    if isinstance(value, dict):
        return {key: _ordered(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return value


def _scenario_export(integration: Integration, step_ids: list[int]) -> dict[str, Any]:
    """``{"scenario": ...}`` when the integration has elements, else nothing."""
    elements = list(integration.elements.order_by("position", "id"))
    if not elements:
        return {}
    place = {element.pk: i for i, element in enumerate(elements)}
    connections = Connection.objects.filter(integration=integration).order_by(
        "from_element__position", "from_element_id", "position", "id"
    )
    return {
        "scenario": {
            "elements": [
                {
                    **{f: _ordered(getattr(element, f)) for f in ELEMENT_FIELDS},
                    "request": (
                        step_ids.index(element.request_step_id) if element.request_step_id else None
                    ),
                    "mirror_of": place.get(element.mirror_of_id),
                }
                for element in elements
            ],
            "connections": [
                {
                    "from": place[c.from_element_id],
                    "to": place[c.to_element_id],
                    "position": c.position,
                    "conditions": _ordered(c.conditions or []),
                }
                for c in connections
            ],
        }
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
    scenario = data.get("scenario")
    if scenario is not None:
        if not isinstance(scenario, dict):
            raise ValidationError("scenario: expected an object of elements and connections.")
        _refuse_unknown(scenario, {"elements", "connections"}, "scenario")
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
        saved_steps: list[RequestStep] = []
        for i, (where, raw) in enumerate(_objects(steps, "requests", STEP_KEYS)):
            step = RequestStep(
                workspace_id=workspace_id, integration=integration, position=i,
                **{f: raw[f] for f in STEP_FIELDS if f in raw},
            )  # fmt: skip
            _clean(step, where)
            step.save()
            saved_steps.append(step)
            for model, key in ((RequestHeader, "headers"), (RequestQueryParam, "query"),
                               (RequestBodyField, "body")):  # fmt: skip
                for j, (n, v) in enumerate(_pairs(raw.get(key, []), f"{where}.{key}")):
                    row = model(request=step, position=j, name=n, value=v)
                    _clean(row, f"{where}.{key}[{j}]")
                    row.save()
            for key, model, fields in (("rules", ResponseRule, RULE_FIELDS),
                                       ("captures", ResponseCapture, CAPTURE_FIELDS)):  # fmt: skip
                items = _objects(raw.get(key, []), f"{where}.{key}", set(fields))
                for j, (place, item) in enumerate(items):
                    row = model(request=step, position=j,
                                **{f: item[f] for f in fields if f in item})  # fmt: skip
                    _clean(row, place)
                    row.save()
        if scenario is not None:
            _scenario_import(integration, scenario, saved_steps)
    return integration


def _objects(items: Any, where: str, allowed: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(place, item)`` for each item of a list of objects with only ``allowed`` keys,
    or a ValidationError naming the place (``requests[2]: ...``)."""
    if not isinstance(items, list):
        raise ValidationError(f"{where}: expected a list.")
    for i, item in enumerate(items):
        place = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(f"{place}: expected an object.")
        _refuse_unknown(item, allowed, place)
        yield place, item


def _index(value: Any, size: int, where: str, what: str) -> int | None:
    """A place in a list of ``size`` (None allowed), or a ValidationError naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValidationError(f"{where}: {what} must be the place (0 to {size - 1}) of one.")
    return value


def _scenario_import(
    integration: Integration, scenario: dict[str, Any], steps: list[RequestStep]
) -> None:
    """The scenario's elements, then their arrows, each validated as the scenario editor
    validates them (settings, conditions), errors naming ``scenario.elements[2]``."""
    raw_elements = list(_objects(scenario.get("elements", []), "scenario.elements", ELEMENT_KEYS))
    raw_connections = scenario.get("connections", [])
    if not isinstance(raw_connections, list):
        raise ValidationError("scenario.connections: expected a list.")
    elements: list[Element] = []
    for where, raw in raw_elements:
        request = _index(raw.get("request"), len(steps), f"{where}.request", "a request")
        element = Element(
            workspace_id=integration.workspace_id, integration=integration,
            request_step=steps[request] if request is not None else None,
            **{f: raw[f] for f in ELEMENT_FIELDS if f in raw},
        )  # fmt: skip
        elements.append(element)
    # Masters first exist, then mirrors point at them (a mirror may come before its master).
    for i, element in enumerate(elements):
        if element.kind != Element.Kind.MIRROR:
            _clean(element, f"scenario.elements[{i}]")
            element.save()
    for i, ((_, raw), element) in enumerate(zip(raw_elements, elements, strict=True)):
        master = _index(
            raw.get("mirror_of"), len(elements), f"scenario.elements[{i}].mirror_of", "an element"
        )
        if master is not None and element.kind != Element.Kind.MIRROR:
            raise ValidationError(f"scenario.elements[{i}].mirror_of: only a mirror has one.")
        if master is not None:
            if elements[master].pk is None:
                raise ValidationError(
                    f"scenario.elements[{i}].mirror_of: a mirror cannot be the master."
                )
            element.mirror_of = elements[master]
        if element.kind == Element.Kind.MIRROR:
            _clean(element, f"scenario.elements[{i}]")
            element.save()
    for i, (where, raw) in enumerate(
        _objects(raw_connections, "scenario.connections", CONNECTION_KEYS)
    ):
        ends = [_index(raw.get(k), len(elements), f"{where}.{k}", "an element")
                for k in ("from", "to")]  # fmt: skip
        if None in ends:
            raise ValidationError(f"{where}: from and to are both needed.")
        try:
            conditions = conditions_check(raw.get("conditions", []))
        except ValidationError as exc:
            raise ValidationError(f"{where}.conditions: {' '.join(exc.messages)}") from exc
        connection = Connection(
            workspace_id=integration.workspace_id, integration=integration,
            from_element=elements[ends[0]], to_element=elements[ends[1]],
            position=raw.get("position", i), conditions=conditions,
        )  # fmt: skip
        _clean(connection, where)
        connection.save()


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
