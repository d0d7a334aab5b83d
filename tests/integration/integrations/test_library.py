"""The prebuilt integration library (integrations/library/*.json).

Every entry must be a well-formed ``leadrelay.integration/1`` file, install into a fresh
workspace, use only global fields, system names and real filters, explain every
placeholder the operator has to fill in, and survive export -> import -> export
unchanged (configuration as code). Broken files must be refused, naming the place, with
nothing written.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from integrations import portability
from integrations.choices import Category
from integrations.context import known_names, sample_context
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestQueryParam,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from integrations.templating import check_template, render, render_header_value
from tests.factories.structures import WorkspaceFactory

EXPECTED_SLUGS = {
    "hubspot-contact",
    "salesforce-web-to-lead",
    "pipedrive-person",
    "slack-webhook",
    "meta-conversions-api",
    "ga4-measurement-protocol",
    "tiktok-events-api",
    "generic-json-buyer",
    "generic-xml-buyer",
    "everflow-postback",
    "keitaro-postback",
    "voluum-postback",
    "binom-postback",
}
FILES = sorted(portability.LIBRARY_DIR.glob("*.json"))
TOP_KEYS = ["format", "slug", "name", "category", "country", "description", "docs_url",
            "requests"]  # fmt: skip
STEP_KEYS = [*portability.STEP_FIELDS, "headers", "query", "body", "rules", "captures",
             "needs_secret"]  # fmt: skip
# Literal text the operator replaces (never inside {{ }}): YOUR_PIXEL_ID, YOUR_ORG_ID...
PLACEHOLDER = re.compile(r"YOUR_[A-Z0-9_]+")

by_file = pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def templates(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every value of an entry that is rendered as a template, with its place."""
    for i, step in enumerate(data["requests"]):
        where = f"requests[{i}]"
        yield f"{where}.url", step["url"]
        for key in ("headers", "query", "body"):
            for j, (_name, value) in enumerate(step[key]):
                yield f"{where}.{key}[{j}]", value
        for j, rule in enumerate(step["rules"]):
            yield f"{where}.rules[{j}].reason", rule["reason"]
            if rule["source"] == "constant":
                yield f"{where}.rules[{j}].key", rule["key"]


def importable(data: dict[str, Any]) -> dict[str, Any]:
    """The entry as integration_export writes it (the docs link travels along)."""
    return dict(data)


def written_rows() -> dict[str, int]:
    from integrations.models import Connection, Element

    models = (Integration, RequestStep, RequestHeader, RequestQueryParam, RequestBodyField,
              ResponseRule, ResponseCapture, Element, Connection)  # fmt: skip
    return {m.__name__: m.objects.count() for m in models}


# --------------------------------------------------------------------------- shape


def test_library_holds_the_expected_integrations():
    entries = portability.library_entries()
    slugs = [e["slug"] for e in entries]
    assert EXPECTED_SLUGS <= set(slugs), EXPECTED_SLUGS - set(slugs)
    assert len(slugs) == len(set(slugs)) == len(FILES)
    assert len({e["name"] for e in entries}) == len(entries), "names must be unique"


@by_file
def test_entry_is_well_formed(path):
    text = path.read_text()
    data = json.loads(text)
    # Written exactly like an export, so library files and exports diff cleanly.
    assert text == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    assert list(data) == TOP_KEYS
    assert data["format"] == portability.FORMAT
    assert data["slug"] == path.stem
    assert data["category"] in Category.values
    assert data["name"].strip() and len(data["name"]) <= 120
    assert len(data["description"]) >= 120, "say what to fill in and how answers are read"
    assert data["docs_url"].startswith("https://")
    assert data["requests"]
    for i, step in enumerate(data["requests"]):
        where = f"{path.stem} requests[{i}]"
        assert list(step) == STEP_KEYS, where
        assert all(list(r) == portability.RULE_FIELDS for r in step["rules"]), where
        assert all(list(c) == portability.CAPTURE_FIELDS for c in step["captures"]), where
        assert step["url"].startswith("https://"), where
        assert step["needs_secret"] == (step["auth_type"] != "none"), where
        if step["auth_type"] in ("basic", "header_key", "query_key"):
            assert step["auth_name"], f"{where}: {step['auth_type']} needs auth_name"
        for key in ("headers", "query", "body"):
            assert all("{{" not in name for name, _value in step[key]), where
        assert step["rules"] or step["default_outcome"] == "accepted", where


@by_file
def test_every_placeholder_is_explained_and_nothing_secret_is_shipped(path):
    data = load(path)
    found = {m for _where, t in templates(data) for m in PLACEHOLDER.findall(t)}
    for placeholder in found:
        assert placeholder in data["description"], f"{path.stem}: explain {placeholder}"
    text = path.read_text()
    for secret_looking in (r"\bEAA[A-Za-z0-9]{20,}", r"\bpat-[a-z0-9-]{20,}", r"xox[bp]-",
                           r"hooks\.slack\.com/services/T[A-Z0-9]{6,}"):  # fmt: skip
        assert not re.search(secret_looking, text), f"{path.stem}: {secret_looking}"


def test_postbacks_are_query_only_gets():
    for slug in ("everflow-postback", "keitaro-postback", "voluum-postback", "binom-postback"):
        data = portability.library_entry(slug)
        assert data["category"] == "click_network"
        (step,) = data["requests"]
        assert (step["method"], step["body_format"], step["body"]) == ("GET", "query", [])
        assert step["auth_type"] == "none"
        rules = [(r["source"], r["operator"], r["value"], r["value2"], r["outcome"])
                 for r in step["rules"]]  # fmt: skip
        assert rules == [("status", "between", "200", "299", "accepted")]


def test_ping_post_buyers_capture_price_id_redirect_and_reason():
    for slug, kind in (("generic-json-buyer", "json_path"), ("generic-xml-buyer", "xpath")):
        ping, post = portability.library_entry(slug)["requests"]
        assert (ping["meaning"], post["meaning"]) == ("ping", "post")
        assert {c["target"] for c in ping["captures"]} == {"price", "reject_reason"}
        assert {c["target"] for c in post["captures"]} == {
            "buyer_lead_id", "redirect_url", "reject_reason"}  # fmt: skip
        assert {r["outcome"] for r in post["rules"]} == {"accepted", "rejected", "duplicate"}
        assert all(r["key_kind"] == kind for r in ping["rules"] + post["rules"])
        # The ping carries no personal data.
        ping_names = {n for n, _v in ping["body"]}
        assert not ping_names & {"first_name", "last_name", "email", "phone", "address"}


# --------------------------------------------------------------------------- database


@pytest.mark.django_db
@by_file
def test_entry_installs_into_a_fresh_workspace(path):
    data = load(path)
    workspace = WorkspaceFactory()
    integration = portability.integration_import(workspace_id=workspace.pk, data=data)
    assert integration.status == "test"
    assert integration.library_slug == path.stem
    steps = list(integration.requests.all())
    assert [s.name for s in steps] == [s["name"] for s in data["requests"]]
    for step, raw in zip(steps, data["requests"], strict=True):
        assert step.headers.count() == len(raw["headers"])
        assert step.query_params.count() == len(raw["query"])
        assert step.body_fields.count() == len(raw["body"])
        assert step.rules.count() == len(raw["rules"])
        assert step.captures.count() == len(raw["captures"])


@pytest.mark.django_db
@by_file
def test_templates_use_only_global_fields_system_names_and_real_filters(path):
    workspace = WorkspaceFactory()
    names = known_names(workspace_id=workspace.pk)
    assert "g_email" in names and "lead_id" in names  # the catalogue is loaded
    problems = {
        where: [p.message for p in check_template(template, names)]
        for where, template in templates(load(path))
    }
    assert {w: p for w, p in problems.items() if p} == {}


@pytest.mark.django_db
@by_file
def test_templates_render_with_sample_values_without_warnings(path):
    workspace = WorkspaceFactory()
    context = sample_context(
        workspace_id=workspace.pk, overrides={"CLICK_ID": "clk-1", "PARTNER_NAME": "Acme"}
    )
    for where, template in templates(load(path)):
        render_one = render_header_value if ".headers[" in where else render
        result = render_one(template, context)
        assert result.warnings == (), f"{where}: {result.warnings}"


@pytest.mark.django_db
def test_ad_platform_hashes_follow_the_vendors_normalisation():
    """Meta: lower-case trimmed email, phone digits with country code, 5-digit US zip;
    TikTok: phone in E.164 with the plus."""
    workspace = WorkspaceFactory()
    context = sample_context(workspace_id=workspace.pk) | {
        "g_email": "  Jane.Doe@Example.com ", "g_phone": "+1 (202) 456-1111",
        "g_zip": "20500-1234", "g_city": "New York",
    }  # fmt: skip

    def rendered(slug: str) -> dict[str, str]:
        (step,) = portability.library_entry(slug)["requests"]
        return {name: render(value, context).value for name, value in step["body"]}

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    meta = rendered("meta-conversions-api")
    assert meta["data[0].user_data.em"] == sha("jane.doe@example.com")
    assert meta["data[0].user_data.ph"] == sha("12024561111")
    assert meta["data[0].user_data.zp"] == sha("20500")
    assert meta["data[0].user_data.ct"] == sha("newyork")
    assert meta["data[0].event_time"].isdigit()
    tiktok = rendered("tiktok-events-api")
    assert tiktok["data[0].user.email"] == sha("jane.doe@example.com")
    assert tiktok["data[0].user.phone"] == sha("+12024561111")


@pytest.mark.django_db
@by_file
def test_export_is_the_file_and_round_trips_unchanged(path):
    data = load(path)
    first = portability.integration_import(workspace_id=WorkspaceFactory().pk, data=data)
    exported = portability.integration_export(first)
    assert exported == importable(data)
    second = portability.integration_import(workspace_id=WorkspaceFactory().pk, data=exported)
    assert portability.integration_export(second) == exported
    assert json.loads(portability.integration_export_json(second)) == exported


# --------------------------------------------------------------------------- refusals


def _set(path: tuple, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda data: data.pop(key)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mutate", "place"),
    [
        (
            _set(("requests", 0, "rules", 1, "operator"), "roughly"),
            "requests[0].rules[1]: operator",
        ),
        (_set(("requests", 1, "rules", 2, "outcome"), "maybe"), "requests[1].rules[2]: outcome"),
        (
            _set(("requests", 1, "captures", 1, "target"), "nowhere"),
            "requests[1].captures[1]: target",
        ),
        (_set(("requests", 0, "rules", 0, "source"), "cookie"), "requests[0].rules[0]: source"),
        (_set(("requests", 1, "method"), "FETCH"), "requests[1]: method"),
        (_set(("requests", 1, "timeout_seconds"), 900), "requests[1]: timeout_seconds"),
        (_set(("requests", 1, "headers"), [["X-Only-Name"]]), "requests[1].headers"),
        (_set(("requests", 0, "rules"), {"source": "status"}), "requests[0].rules"),
        (_set(("category",), "spam"), "integration: category"),
        (_set(("requests",), []), "requests"),
        (_delete("requests"), "requests"),
        (_set(("format",), "leadrelay.integration/0"), "leadrelay.integration/1"),
        (_delete("format"), "leadrelay.integration/1"),
    ],
    ids=[
        "operator",
        "outcome",
        "capture-target",
        "source",
        "method",
        "timeout",
        "header-pair",
        "rules-not-list",
        "category",
        "empty-requests",
        "no-requests",
        "wrong-format",
        "no-format",
    ],  # fmt: skip
)
def test_invalid_file_is_refused_naming_the_place_and_nothing_is_written(mutate, place):
    data = copy.deepcopy(portability.library_entry("generic-json-buyer"))
    portability.integration_import(workspace_id=WorkspaceFactory().pk, data=data)  # valid
    mutate(data)
    assert_refused(data, place)


def assert_refused(data: dict[str, Any], place: str) -> None:
    """Importing ``data`` is refused with a message naming ``place``, writing nothing."""
    workspace = WorkspaceFactory()
    before = written_rows()
    with pytest.raises(ValidationError) as refused:
        portability.integration_import(workspace_id=workspace.pk, data=data)
    message = " ".join(refused.value.messages)
    assert place in message, message
    assert written_rows() == before
    assert not Integration.objects.filter(workspace=workspace).exists()


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["requests"][0].__setitem__("rulez", []), "requests[0]: unknown key 'rulez'"),
        (lambda d: d.__setitem__("colour", "red"), "integration: unknown key 'colour'"),
        (lambda d: d.__setitem__("slug", 5), "integration.slug: expected a text"),
        (lambda d: d.__setitem__("name", 5), "integration.name: expected a text"),
        (
            lambda d: d["requests"][0].__setitem__("headers", [["A", "b"], ["only-one"]]),
            "requests[0].headers[1]",
        ),
    ],
)
@pytest.mark.django_db
def test_malformed_imports_name_the_place_and_write_nothing(mutate, where):
    data = json.loads(json.dumps(portability.library_entry("generic-json-buyer")))
    mutate(data)
    before = written_rows()
    with pytest.raises(ValidationError) as info:
        portability.integration_import(workspace_id=WorkspaceFactory().pk, data=data)
    assert where in " ".join(info.value.messages)
    assert written_rows() == before


@pytest.mark.django_db
def test_importing_a_name_twice_is_refused_not_a_crash():
    workspace = WorkspaceFactory()
    data = portability.library_entry("slack-webhook")
    portability.integration_import(workspace_id=workspace.pk, data=data)
    with pytest.raises(ValidationError, match="already has"):
        portability.integration_import(workspace_id=workspace.pk, data=data)


# --------------------------------------------------------------------------- scenarios


def _with_scenario(workspace_id: int) -> Integration:
    """The generic buyer (a ping and a post request) with a scenario: post, then, when
    rejected, wait and ask again, a mirror of the wait, a breaker."""
    from integrations.models import Connection, Element

    integration = portability.integration_import(
        workspace_id=workspace_id, data=portability.library_entry("generic-json-buyer")
    )
    ping, post = integration.requests.order_by("position", "id")

    def element(name: str, kind: str, position: int, **fields: Any) -> Element:
        return Element.objects.create(
            workspace_id=workspace_id, integration=integration, name=name, kind=kind,
            position=position, **fields,
        )  # fmt: skip

    # A mirror listed before its master: the import must make the master first.
    again = element("Wait again", "mirror", 0)
    start = element("Start", "start", 1, meaning="post")
    send = element("Post", "request", 2, request_step=post)
    wait = element("Wait", "wait", 3, config={"mode": "delay", "seconds": 30})
    again.mirror_of = wait
    again.save()
    breaker = element("At most 3", "breaker", 4, config={"limit": 3})
    retry = element("Ping again", "request", 5, request_step=ping)
    rejected = [{"source": "outcome", "operator": "equals", "value": "rejected"}]
    for position, (a, b, conditions) in enumerate(
        [
            (start, send, []),
            (send, wait, rejected),
            (wait, breaker, []),
            (breaker, retry, []),
            (retry, again, rejected),
        ]  # fmt: skip
    ):
        Connection.objects.create(
            workspace_id=workspace_id, integration=integration, from_element=a, to_element=b,
            position=position, conditions=conditions,
        )  # fmt: skip
    return integration


@pytest.mark.django_db
def test_a_scenario_exports_and_imports_with_its_integration():
    original = portability.integration_export(_with_scenario(WorkspaceFactory().pk))
    scenario = original["scenario"]
    assert [e["name"] for e in scenario["elements"]] == [
        "Wait again", "Start", "Post", "Wait", "At most 3", "Ping again",
    ]  # fmt: skip
    assert scenario["elements"][0]["mirror_of"] == 3 and scenario["elements"][2]["request"] == 1
    rejected = [{"source": "outcome", "operator": "equals", "value": "rejected"}]
    assert {"from": 2, "to": 3, "position": 1, "conditions": rejected} in scenario["connections"]
    copy_ = portability.integration_import(workspace_id=WorkspaceFactory().pk, data=original)
    assert portability.integration_export(copy_) == original
    assert json.loads(portability.integration_export_json(copy_)) == original
    # A library file (no scenario) still round-trips without one.
    plain = portability.integration_import(
        workspace_id=WorkspaceFactory().pk, data=portability.library_entry("slack-webhook")
    )
    assert "scenario" not in portability.integration_export(plain)


@pytest.mark.django_db
def test_an_imported_scenario_runs():
    """The copy is a working scenario: its run starts, goes through its elements as the
    original's would (the post is refused by a disabled integration's status)."""
    from integrations.engine.services import run_drive, run_start
    from tests.factories.structures import make_lead_setup

    setup = make_lead_setup()
    data = portability.integration_export(_with_scenario(WorkspaceFactory().pk))
    copy_ = portability.integration_import(
        workspace_id=setup.workspace.pk, data=data, status="disabled"
    )
    lead = setup.workspace.leads.create(
        structure=setup.structure, partner=setup.partner, source="api", status="approved",
        data={"g_email": "a@example.com"},
    )  # fmt: skip
    run = run_drive(run_id=run_start(integration=copy_, lead=lead).pk, deadline_seconds=10)
    names = list(run.steps.order_by("id").values_list("element__name", flat=True))
    assert names[:2] == ["Start", "Post"], names


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda s: s["elements"][2].__setitem__("request", 7), "scenario.elements[2].request"),
        (
            lambda s: s["elements"][3].__setitem__("config", {"mode": "soon"}),
            "scenario.elements[3]: config",
        ),
        (
            lambda s: s["elements"][4].__setitem__("config", {"limit": 0}),
            "scenario.elements[4]: config",
        ),
        (lambda s: s["elements"][1].__setitem__("kind", "teleport"), "scenario.elements[1]: kind"),
        (lambda s: s["elements"][0].__setitem__("mirror_of", 1), "scenario.elements[0]"),
        (
            lambda s: s["elements"][2].__setitem__("mirror_of", 3),
            "scenario.elements[2].mirror_of: only a mirror",
        ),
        (
            lambda s: s["elements"][1].__setitem__("colour", "red"),
            "scenario.elements[1]: unknown key 'colour'",
        ),
        (lambda s: s["connections"][1].__setitem__("to", 99), "scenario.connections[1].to"),
        (
            lambda s: s["connections"][1].__setitem__("conditions", [{"operator": "roughly"}]),
            "scenario.connections[1].conditions: Condition 1: unknown operator",
        ),
        (lambda s: s["connections"][0].pop("from"), "scenario.connections[0]: from and to"),
        (lambda s: s.__setitem__("arrows", []), "scenario: unknown key 'arrows'"),
        (lambda s: s.__setitem__("elements", {}), "scenario.elements: expected a list"),
    ],
    ids=[
        "request-place",
        "wait-mode",
        "breaker-limit",
        "kind",
        "mirror-of-start",
        "master-on-non-mirror",
        "unknown-key",
        "arrow-end",
        "condition",
        "arrow-from",
        "scenario-key",
        "elements-not-list",
    ],  # fmt: skip
)
def test_a_bad_scenario_is_refused_naming_the_place_and_nothing_is_written(mutate, where):
    data = portability.integration_export(_with_scenario(WorkspaceFactory().pk))
    mutate(data["scenario"])
    assert_refused(data, where)
