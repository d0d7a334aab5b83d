"""The scenario engine in the admin, through the test client as an operator would use it:
the editor inlines on the integration page, the SVG diagram drawn from the data, the run
list and the run timeline, "Replay this run", "Run with sample values" (a dry run that
sends nothing to a real local server), and another workspace's operator (or a viewer)
reaching none of it. Each refusal has its positive control."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from django import forms
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from werkzeug import Response

from integrations.engine import services as engine
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestLog,
    RequestStep,
    ResponseRule,
    RunStep,
    ScenarioRun,
)
from structures.choices import Role
from structures.models import Lead, Membership
from tests.factories.structures import LeadSetup, UserFactory, make_lead_setup

pytestmark = pytest.mark.django_db
Kind = Element.Kind


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def setup() -> LeadSetup:
    return make_lead_setup("Acme")


@pytest.fixture
def operator(setup: LeadSetup) -> Client:
    return client_for(setup.operator)


@pytest.fixture
def buyer(httpserver: Any) -> Any:
    def handler(request: Any) -> Response:
        return Response(json.dumps({"status": "accepted"}), content_type="application/json")

    httpserver.expect_request("/leads", method="POST").respond_with_handler(handler)
    return httpserver


@pytest.fixture
def lead(setup: LeadSetup) -> Lead:
    return Lead.objects.create(
        workspace=setup.workspace, structure=setup.structure, partner=setup.partner,
        source="api", status="approved", data={"g_email": "jane@example.com"},
    )  # fmt: skip


class Graph:
    """start -> request -> (pending) wait -> request; request -> (accepted) done."""

    def __init__(self, setup: LeadSetup, url: str, name: str = "Scenario buyer") -> None:
        ws = setup.workspace
        self.integration = Integration.objects.create(workspace=ws, name=name, status="enabled")
        self.step = RequestStep.objects.create(
            workspace=ws, integration=self.integration, url=url, method="POST", name="Send"
        )
        ResponseRule.objects.create(request=self.step, position=0, key="status", value="accepted")

        def element(kind: str, name: str, **kwargs: Any) -> Element:
            return Element.objects.create(
                workspace=ws, integration=self.integration, kind=kind, name=name, **kwargs
            )

        def link(a: Element, b: Element, *conditions: dict) -> Connection:
            return Connection.objects.create(
                workspace=ws, integration=self.integration, from_element=a, to_element=b,
                conditions=list(conditions),
            )  # fmt: skip

        self.start = element(Kind.START, "Begin here")
        self.request = element(Kind.REQUEST, "Post to buyer", request_step=self.step)
        self.wait = element(Kind.WAIT, "Half a minute", config={"mode": "delay", "seconds": 30})
        self.done = element(
            Kind.SET_VARIABLE, "Mark done", config={"name": "done", "template": "1"}
        )
        self.connections = [
            link(self.start, self.request),
            link(
                self.request,
                self.wait,
                {"source": "outcome", "operator": "equals", "value": "pending"},
            ),  # fmt: skip
            link(self.wait, self.request),
            link(
                self.request,
                self.done,
                {"source": "outcome", "operator": "equals", "value": "accepted"},
            ),  # fmt: skip
        ]

    def run(self, lead: Lead | None = None) -> ScenarioRun:
        run = engine.run_start(integration=self.integration, lead=lead)
        return engine.run_drive(run_id=run.pk, deadline_seconds=5.0)


def change_url(model: str, pk: int, view: str = "change") -> str:
    return reverse(f"admin:integrations_{model}_{view}", args=[pk])


def page_payload(response: Any) -> dict[str, Any]:
    """What the browser posts back from a change page, unchanged."""
    data: dict[str, Any] = {}

    def put(form: forms.BaseForm) -> None:
        for name in form.fields:
            value = form[name].value()
            if value is None:
                continue
            key = form.add_prefix(name)
            data[key] = [str(v) for v in value] if isinstance(value, list | tuple) else str(value)

    put(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        put(inline.formset.management_form)
        for form in inline.formset.forms:
            put(form)
    data["_continue"] = "Save and continue editing"
    return data


def page_errors(response: Any) -> str:
    """Every error of a refused change page (form and inline rows), as one text."""
    errors = [str(response.context["adminform"].form.errors)]
    for inline in response.context["inline_admin_formsets"]:
        errors += [str(e) for e in inline.formset.errors if e]
        errors += [str(e) for e in inline.formset.non_form_errors()]
    return html.unescape(" ".join(errors))


def queries(fn: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        fn()
    return len(captured)


def page_messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def add_row(data: dict[str, Any], prefix: str, **values: Any) -> None:
    index = int(data[f"{prefix}-TOTAL_FORMS"])
    for name, value in values.items():
        data[f"{prefix}-{index}-{name}"] = str(value)
    data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)


# --- the editor ----------------------------------------------------------------------------


def test_editor_inlines_save_elements_then_connections(setup, operator):
    integration = Integration.objects.create(workspace=setup.workspace, name="Editor")
    step = RequestStep.objects.create(
        workspace=setup.workspace, integration=integration, url="https://93.184.216.34/x"
    )
    url = change_url("integration", integration.pk)

    data = page_payload(operator.get(url))
    add_row(data, "elements", position=0, name="Begin", kind="start", meaning="post", config="{}")
    add_row(data, "elements", position=1, name="Send it", kind="request", meaning="post",
            request_step=step.pk, config="{}")  # fmt: skip
    response = operator.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    begin, send = integration.elements.order_by("position")
    assert (begin.kind, send.request_step_id) == ("start", step.pk)
    assert {begin.workspace_id, send.workspace_id} == {setup.workspace.pk}

    data = page_payload(operator.get(url))
    add_row(
        data,
        "connections",
        position=0,
        from_element=begin.pk,
        to_element=send.pk,
        conditions='[{"source": "outcome", "operator": "equals", "value": "accepted"}]',
    )
    response = operator.post(url, data)
    assert response.status_code == 302
    connection = integration.connections.get()
    assert (connection.from_element_id, connection.to_element_id) == (begin.pk, send.pk)
    assert connection.workspace_id == setup.workspace.pk
    assert connection.conditions[0]["value"] == "accepted"


def test_editor_choices_are_this_integrations_elements_and_requests_only(setup, operator):
    graph = Graph(setup, "https://93.184.216.34/x")
    other = Graph(
        setup, "https://93.184.216.34/y", name="Other buyer"
    )  # same workspace, another integration
    url = change_url("integration", graph.integration.pk)
    page = operator.get(url)
    formsets = {i.formset.prefix: i.formset for i in page.context["inline_admin_formsets"]}
    connection_form = formsets["connections"].empty_form
    element_form = formsets["elements"].empty_form
    own = set(graph.integration.elements.values_list("pk", flat=True))
    assert {e.pk for e in connection_form.fields["from_element"].queryset} == own
    assert {e.pk for e in connection_form.fields["to_element"].queryset} == own
    assert {s.pk for s in element_form.fields["request_step"].queryset} == {graph.step.pk}

    # A forged arrow into another integration's element is refused; its own is accepted.
    data = page_payload(page)
    add_row(data, "connections", position=5, from_element=graph.done.pk,
            to_element=other.start.pk, conditions="[]")  # fmt: skip
    assert operator.post(url, data).status_code == 200
    assert not Connection.objects.filter(to_element=other.start).exists()
    data[f"connections-{int(data['connections-TOTAL_FORMS']) - 1}-to_element"] = graph.start.pk
    assert operator.post(url, data).status_code == 302
    assert Connection.objects.filter(from_element=graph.done, to_element=graph.start).exists()


# --- the diagram ---------------------------------------------------------------------------


def test_diagram_draws_every_element_and_one_path_per_connection(setup, operator):
    graph = Graph(setup, "https://93.184.216.34/x")
    html = operator.get(change_url("integration", graph.integration.pk)).content.decode()
    svg = re.search(r'<svg[^>]*id="scenario-diagram".*?</svg>', html, re.S)
    assert svg is not None
    svg_text = svg.group(0)
    for element in (graph.start, graph.request, graph.wait, graph.done):
        assert element.name in svg_text
    assert svg_text.count('class="scenario-element"') == 4
    connections = re.findall(r'<g class="scenario-connection".*?</g>', svg_text, re.S)
    assert len(connections) == len(graph.connections) == 4
    assert all(c.count("<path ") == 1 for c in connections)
    assert ">always<" in svg_text and "outcome equals pending" in svg_text
    assert "<script" not in svg_text


def test_diagram_empty_state_says_what_to_do(setup, operator):
    integration = Integration.objects.create(workspace=setup.workspace, name="Empty")
    html = operator.get(change_url("integration", integration.pk)).content.decode()
    assert 'id="scenario-empty"' in html and 'id="scenario-diagram"' not in html


# --- runs ----------------------------------------------------------------------------------


def test_run_list_and_timeline_show_steps_and_their_requests(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    run = graph.run(lead)
    assert run.status == "succeeded" and len(buyer.log) == 1

    listing = operator.get(reverse("admin:integrations_scenariorun_changelist"))
    assert listing.status_code == 200
    assert change_url("scenariorun", run.pk) in listing.content.decode()
    filtered = operator.get(
        reverse("admin:integrations_scenariorun_changelist"),
        {"status__exact": "failed"},
    )
    assert change_url("scenariorun", run.pk) not in filtered.content.decode()

    detail = operator.get(change_url("scenariorun", run.pk))
    assert detail.status_code == 200
    html = detail.content.decode()
    steps = RunStep.objects.filter(run=run)
    assert html.count('class="border-l-2') == steps.count() == 3
    for name in ("Begin here", "Post to buyer", "Mark done"):
        assert name in html
    log = RequestLog.objects.get(integration=graph.integration)
    assert change_url("requestlog", log.pk) in html  # the request of the request step
    assert f"lead__id__exact={lead.pk}" in html
    assert 'id="replay-form"' in html
    assert detail.context["has_change_permission"] is False  # read-only


def test_replay_creates_and_drives_a_new_run_post_only(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    run = graph.run(lead)
    url = change_url("scenariorun", run.pk, "replay")

    assert operator.get(url).status_code == 404
    response = operator.post(url)
    new = ScenarioRun.objects.exclude(pk=run.pk).get()
    assert response.status_code == 302 and response["Location"] == change_url("scenariorun", new.pk)
    assert (new.integration_id, new.lead_id, new.meaning) == (run.integration_id, lead.pk, "post")
    assert new.status == "succeeded" and not new.is_dry_run
    assert len(buyer.log) == 2


def test_replay_starts_from_the_runs_starting_variables(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    run = engine.run_start(integration=graph.integration, lead=lead, variables={"src": "a"})
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5.0)
    assert run.variables["done"] == "1"  # set by the run itself
    operator.post(change_url("scenariorun", run.pk, "replay"))
    new = ScenarioRun.objects.exclude(pk=run.pk).get()
    start = new.steps.get(parent_step__isnull=True)
    assert start.input == {"variables": {"src": "a"}}  # not what the first run set


def test_run_with_sample_values_sends_nothing_and_shows_what_would_be_sent(
    setup, operator, httpserver
):
    graph = Graph(setup, httpserver.url_for("/leads"))
    url = change_url("integration", graph.integration.pk, "sample_run")
    assert operator.get(url).status_code == 404

    response = operator.post(url, {"meaning": "post"})
    run = ScenarioRun.objects.get()
    assert response.status_code == 302 and response["Location"] == change_url("scenariorun", run.pk)
    assert run.is_dry_run and run.lead_id is None
    assert httpserver.log == []  # nothing reached the buyer
    logs = RequestLog.objects.filter(integration=graph.integration)
    assert logs.count() == 1 and not logs.get().was_sent

    html = operator.get(change_url("scenariorun", run.pk)).content.decode()
    assert change_url("requestlog", logs.get().pk) in html and "not sent" in html
    assert "dry run" in html.lower()


def test_sample_run_without_a_start_says_so(setup, operator):
    integration = Integration.objects.create(workspace=setup.workspace, name="No start")
    url = change_url("integration", integration.pk, "sample_run")
    response = operator.post(url, {"meaning": "post"}, follow=True)
    assert "has no default start" in response.content.decode()
    assert not ScenarioRun.objects.exists()


# --- tenancy -------------------------------------------------------------------------------


def test_another_workspace_reaches_no_run_and_no_button(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    run = graph.run(lead)
    stranger = client_for(make_lead_setup("Other").operator)

    detail = stranger.get(change_url("scenariorun", run.pk))
    assert detail.status_code in (302, 404)
    assert "Post to buyer" not in detail.content.decode()
    listing = stranger.get(reverse("admin:integrations_scenariorun_changelist"))
    assert change_url("scenariorun", run.pk) not in listing.content.decode()
    assert stranger.post(change_url("scenariorun", run.pk, "replay")).status_code == 404
    sample = change_url("integration", graph.integration.pk, "sample_run")
    assert stranger.post(sample).status_code == 404
    assert ScenarioRun.objects.count() == 1 and len(buyer.log) == 1

    # A viewer of the workspace reads the run but may neither replay nor dry-run.
    viewer = UserFactory()
    Membership.objects.create(workspace=setup.workspace, user=viewer, role=Role.VIEWER)
    as_viewer = client_for(viewer)
    page = as_viewer.get(change_url("scenariorun", run.pk))
    assert page.status_code == 200 and 'id="replay-form"' not in page.content.decode()
    assert as_viewer.post(change_url("scenariorun", run.pk, "replay")).status_code == 404
    assert as_viewer.post(sample).status_code == 404
    assert ScenarioRun.objects.count() == 1

    # Positive control: the owner may.
    assert operator.post(change_url("scenariorun", run.pk, "replay")).status_code == 302
    assert ScenarioRun.objects.count() == 2


def test_a_post_without_the_editor_leaves_the_scenario_alone(setup, operator):
    graph = Graph(setup, "https://93.184.216.34/x")
    url = change_url("integration", graph.integration.pk)
    data = {k: v for k, v in page_payload(operator.get(url)).items()
            if not k.startswith(("elements-", "connections-"))}  # fmt: skip
    data["name"] = "Renamed buyer"
    assert operator.post(url, data).status_code == 302
    graph.integration.refresh_from_db()
    assert graph.integration.name == "Renamed buyer"
    assert graph.integration.elements.count() == 4 and graph.integration.connections.count() == 4


# --- labels: names, not internal values ------------------------------------------------------


def test_run_labels_name_the_integration_without_a_query_per_row(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    run = graph.run(lead)
    listing = reverse("admin:integrations_scenariorun_changelist")
    html = operator.get(listing).content.decode()
    assert f"run {run.pk} of Scenario buyer: succeeded" in html
    assert f"run {run.pk} of {graph.integration.pk}:" not in html
    title = operator.get(change_url("scenariorun", run.pk)).content.decode()
    assert f"run {run.pk} of Scenario buyer" in title

    one = queries(lambda: operator.get(listing))
    for _ in range(3):
        graph.run(lead)
    assert queries(lambda: operator.get(listing)) == one  # 4 rows, same queries as 1


def test_editor_lists_show_kind_labels_and_named_arrows_without_a_query_per_row(setup, operator):
    graph = Graph(setup, "https://93.184.216.34/x")
    url = change_url("integration", graph.integration.pk)
    html = operator.get(url).content.decode()
    # The connection ends and the mirror choices: the kind's label, not its value.
    assert ">Mark done (Set variable)</option>" in html
    assert ">Half a minute (Wait)</option>" in html
    assert "(set_variable)" not in html
    # Each connection row is titled by the names of its ends, not their ids.
    assert "Begin here → Post to buyer" in html
    assert f"{graph.start.pk} -&gt; {graph.request.pk}" not in html

    before = queries(lambda: operator.get(url))
    ws = setup.workspace
    for index in range(4):
        extra = Element.objects.create(
            workspace=ws, integration=graph.integration, kind=Kind.SET_VARIABLE,
            name=f"Extra {index}", config={"name": f"x{index}", "template": "1"},
        )  # fmt: skip
        Connection.objects.create(
            workspace=ws, integration=graph.integration, from_element=graph.done, to_element=extra
        )
    assert queries(lambda: operator.get(url)) == before  # 4 more rows of each, no more queries


def test_run_counters_show_element_names_and_keep_the_stored_keys(setup, operator):
    ws = setup.workspace
    integration = Integration.objects.create(workspace=ws, name="Counting", status="enabled")

    def element(kind: str, name: str, config: dict) -> Element:
        return Element.objects.create(
            workspace=ws, integration=integration, kind=kind, name=name, config=config
        )

    start = element(Kind.START, "Begin", {})
    breaker = element(Kind.BREAKER, "At most 3 tries", {"limit": 3})
    event = element(Kind.SET_EVENT, "Count a try", {"name": "tries"})
    for a, b in ((start, breaker), (breaker, event)):
        Connection.objects.create(
            workspace=ws, integration=integration, from_element=a, to_element=b
        )
    run = engine.run_drive(run_id=engine.run_start(integration=integration).pk, deadline_seconds=5)
    assert run.counters == {f"visits:{breaker.pk}": 1, "event:tries": 1}  # stored as it was

    html = operator.get(change_url("scenariorun", run.pk)).content.decode()
    counters = re.search(r'<ul id="run-counters">.*?</ul>', html, re.S).group(0)
    assert "passes through <strong>At most 3 tries</strong>: 1" in counters
    assert "event <strong>tries</strong>: 1" in counters
    assert f"visits:{breaker.pk}" not in html


# --- settings checked on save ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config", "message"),
    [
        ("wait", {"mode": "sometimes"}, "mode: unknown wait mode 'sometimes'"),
        ("wait", {"mode": "weekday", "weekday": 12}, "weekday: not a weekday (0-6): 12"),
        ("wait", {"mode": "weekday", "weekday": "friday"}, "weekday: not a weekday (0-6)"),
        ("wait", {"mode": "within_hours", "from_hour": "25"}, "from_hour: not an hour: '25'"),
        ("wait", {"mode": "within_hours", "to_hour": "9:xx"}, "to_hour: not an hour"),
        ("wait", {"mode": "within_hours", "from_hour": 18, "to_hour": 9}, "must be before"),
        ("wait", {"mode": "delay"}, "seconds: a delay needs seconds"),
        ("wait", {"mode": "delay", "seconds": "soon"}, "seconds: not a number of seconds"),
        ("wait", {"mode": "delay", "seconds": 1e300}, "seconds: out of range"),
        ("wait", {"mode": "delay", "secs": 30}, "unknown setting secs"),
        ("wait", {"mode": "until", "at": "tomorrow"}, "at: not a date and time: 'tomorrow'"),
        ("wait", {"mode": "until", "at": "2026-13-45 08:00"}, "at: not a date and time"),
        ("wait", {"mode": "relative", "seconds": 60}, "relative_to: a relative wait needs"),
        ("wait", {"mode": "next_working_day", "from_hour": "noon"}, "from_hour: not an hour"),
        ("breaker", {"limit": "five"}, "limit: a whole number of passes"),
        ("breaker", {"limit": 2.5}, "limit: a whole number of passes"),
        ("repeater", {"limit": 0}, "limit: a whole number of passes"),
        ("repeater", {"limti": 3}, "unknown setting limti; use limit"),
        ("repeater", [3], 'An object of settings, e.g. {"limit": 5}'),
        ("wait", "30", 'An object of settings, e.g. {"mode": "delay", "seconds": 30}'),
        ("set_event", {"name": "tries", "increment": "one"}, "increment: a whole number"),
        ("set_event", {"name": "tries", "increment": 1.5}, "increment: a whole number"),
    ],
)
def test_unreadable_wait_and_limit_settings_are_refused_on_save_naming_the_setting(
    setup, operator, kind, config, message
):
    integration = Integration.objects.create(workspace=setup.workspace, name="Checked")
    url = change_url("integration", integration.pk)
    data = page_payload(operator.get(url))
    add_row(data, "elements", position=0, name="Checked element", kind=kind, meaning="post",
            config=json.dumps(config))  # fmt: skip
    response = operator.post(url, data)
    assert response.status_code == 200
    assert message in page_errors(response)
    assert not integration.elements.exists()


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("wait", {"mode": "delay", "seconds": 30}),
        ("wait", {"mode": "delay", "seconds": "30"}),
        ("wait", {"mode": "weekday", "weekday": 4, "from_hour": "12:00"}),
        ("wait", {"mode": "within_hours", "from_hour": 10, "to_hour": "18:30"}),
        ("wait", {"mode": "within_hours"}),
        ("wait", {"mode": "until", "at": "2026-03-04 08:00"}),
        ("wait", {"mode": "relative", "relative_to": "lead_created", "seconds": 3600}),
        ("wait", {"mode": "relative", "relative_to": "callback_at"}),
        ("wait", {"mode": "next_working_day", "from_hour": 9}),
        ("breaker", {"limit": 5}),
        ("breaker", {"limit": "5"}),
        ("repeater", {}),
        ("set_event", {"name": "tries"}),
        ("set_event", {"name": "tries", "increment": -1}),
    ],
)
def test_readable_wait_and_limit_settings_save(setup, operator, kind, config):
    integration = Integration.objects.create(workspace=setup.workspace, name="Checked")
    url = change_url("integration", integration.pk)
    data = page_payload(operator.get(url))
    add_row(data, "elements", position=0, name="Checked element", kind=kind, meaning="post",
            config=json.dumps(config))  # fmt: skip
    response = operator.post(url, data)
    assert response.status_code == 302, page_errors(response)
    assert integration.elements.get().config == config


# --- dry run of an integration without elements ----------------------------------------------


def test_dry_run_of_an_integration_without_elements_builds_the_default_scenario(
    setup, operator, httpserver
):
    integration = Integration.objects.create(
        workspace=setup.workspace, name="From the library", status="enabled"
    )
    for position, meaning in enumerate(("ping", "post")):
        RequestStep.objects.create(
            workspace=setup.workspace, integration=integration, position=position,
            meaning=meaning, name=f"{meaning} request", method="POST",
            url=httpserver.url_for(f"/{meaning}"),
        )  # fmt: skip
    page = operator.get(change_url("integration", integration.pk)).content.decode()
    assert 'id="sample-run-form"' in page and 'id="scenario-default-note"' in page
    assert '<option value="post">post</option><option value="ping">ping</option>' in page

    response = operator.post(
        change_url("integration", integration.pk, "sample_run"), {"meaning": "post"}, follow=True
    )
    run = ScenarioRun.objects.get()
    assert response.redirect_chain[-1][0] == change_url("scenariorun", run.pk)
    assert any("default scenario was built" in m for m in page_messages(response))
    # The scenario a first real run would have built: a start per meaning, its request.
    starts = integration.elements.filter(kind=Kind.START)
    assert sorted(starts.values_list("meaning", flat=True)) == ["ping", "post"]
    assert integration.elements.filter(kind=Kind.REQUEST).count() == 2
    assert run.is_dry_run and run.meaning == "post" and run.lead_id is None
    assert httpserver.log == []
    log = RequestLog.objects.get(integration=integration)
    assert log.request_step.meaning == "post" and not log.was_sent

    # Built once: the next dry run uses it as it is.
    operator.post(change_url("integration", integration.pk, "sample_run"), {"meaning": "ping"})
    assert integration.elements.count() == 4 and ScenarioRun.objects.count() == 2


def test_no_run_buttons_without_a_request_or_a_start(setup, operator):
    integration = Integration.objects.create(workspace=setup.workspace, name="Nothing yet")
    page = operator.get(change_url("integration", integration.pk)).content.decode()
    assert 'id="sample-run-form"' not in page and 'id="lead-run-form"' not in page
    RequestStep.objects.create(
        workspace=setup.workspace, integration=integration, url="https://93.184.216.34/x"
    )
    page = operator.get(change_url("integration", integration.pk)).content.decode()
    assert 'id="sample-run-form"' in page and 'id="lead-run-form"' in page


# --- run for a lead --------------------------------------------------------------------------


def test_run_for_a_lead_sends_it_and_opens_the_run(setup, operator, buyer, lead):
    graph = Graph(setup, buyer.url_for("/leads"))
    url = change_url("integration", graph.integration.pk, "lead_run")
    page = operator.get(change_url("integration", graph.integration.pk)).content.decode()
    assert 'id="lead-run-form"' in page and f'<option value="{lead.pcid}"></option>' in page
    assert operator.get(url).status_code == 404

    response = operator.post(url, {"pcid": f" {lead.pcid} ", "meaning": "post"}, follow=True)
    run = ScenarioRun.objects.get()
    assert response.redirect_chain[-1][0] == change_url("scenariorun", run.pk)
    assert (run.lead_id, run.is_dry_run, run.status) == (lead.pk, False, "succeeded")
    assert len(buyer.log) == 1
    assert f"Run {run.pk} for lead {lead.pcid}: succeeded." in page_messages(response)
    assert RequestLog.objects.get(run_step__run=run).was_sent


def test_run_for_a_lead_refuses_another_workspaces_lead_and_unknown_ids(
    setup, operator, buyer, lead
):
    graph = Graph(setup, buyer.url_for("/leads"))
    url = change_url("integration", graph.integration.pk, "lead_run")
    other = make_lead_setup("Other")
    foreign = Lead.objects.create(
        workspace=other.workspace, structure=other.structure, partner=other.partner,
        source="api", status="approved", data={"g_email": "x@example.com"},
    )  # fmt: skip
    for pcid in (foreign.pcid, "nope", ""):
        response = operator.post(url, {"pcid": pcid}, follow=True)
        assert response.redirect_chain[-1][0] == change_url("integration", graph.integration.pk)
        assert f"No lead with id {pcid!r} in the workspace Acme" in " ".join(
            page_messages(response)
        )
    assert not ScenarioRun.objects.exists() and buyer.log == []
    # Positive control: the workspace's own lead runs.
    assert operator.post(url, {"pcid": lead.pcid}).status_code == 302
    assert ScenarioRun.objects.get().lead_id == lead.pk


def test_run_for_a_lead_marks_test_leads_among_the_latest(setup, operator, lead):
    graph = Graph(setup, "https://93.184.216.34/x")
    Lead.objects.filter(pk=lead.pk).update(is_test=True)
    page = operator.get(change_url("integration", graph.integration.pk)).content.decode()
    assert f'<option value="{lead.pcid}">test lead</option>' in page


@pytest.mark.parametrize(
    ("status", "is_test", "sent"),
    [
        ("disabled", True, False),
        ("test", False, False),
        ("test", True, True),
        ("enabled", False, True),
    ],
)
def test_run_for_a_lead_keeps_the_integrations_status(
    setup, operator, buyer, lead, status, is_test, sent
):
    graph = Graph(setup, buyer.url_for("/leads"))
    Integration.objects.filter(pk=graph.integration.pk).update(status=status)
    Lead.objects.filter(pk=lead.pk).update(is_test=is_test)
    url = change_url("integration", graph.integration.pk, "lead_run")
    assert operator.post(url, {"pcid": lead.pcid}).status_code == 302
    run = ScenarioRun.objects.get()
    assert run.lead_id == lead.pk and not run.is_dry_run
    assert len(buyer.log) == int(sent)
    assert RequestLog.objects.get(run_step__run=run).was_sent is sent


def test_run_for_a_lead_builds_the_default_scenario_of_an_integration_without_elements(
    setup, operator, buyer, lead
):
    integration = Integration.objects.create(
        workspace=setup.workspace, name="Installed", status="enabled"
    )
    RequestStep.objects.create(
        workspace=setup.workspace, integration=integration, name="Post", method="POST",
        url=buyer.url_for("/leads"),
    )  # fmt: skip
    url = change_url("integration", integration.pk, "lead_run")
    assert operator.post(url, {"pcid": lead.pcid}).status_code == 302
    run = ScenarioRun.objects.get()
    assert run.status == "succeeded" and len(buyer.log) == 1
    assert integration.elements.filter(kind=Kind.START).count() == 1


def test_run_for_a_lead_is_for_operators_who_may_change_the_integration(
    setup, operator, buyer, lead
):
    graph = Graph(setup, buyer.url_for("/leads"))
    url = change_url("integration", graph.integration.pk, "lead_run")
    stranger = client_for(make_lead_setup("Other").operator)
    assert stranger.post(url, {"pcid": lead.pcid}).status_code == 404
    viewer = UserFactory()
    Membership.objects.create(workspace=setup.workspace, user=viewer, role=Role.VIEWER)
    as_viewer = client_for(viewer)
    page = as_viewer.get(change_url("integration", graph.integration.pk)).content.decode()
    assert 'id="lead-run-form"' not in page
    assert as_viewer.post(url, {"pcid": lead.pcid}).status_code == 404
    assert not ScenarioRun.objects.exists() and buyer.log == []
    # Positive control: the owner may.
    assert operator.post(url, {"pcid": lead.pcid}).status_code == 302
    assert ScenarioRun.objects.count() == 1 and len(buyer.log) == 1


# --- the diagram's labels and the run page's order ------------------------------------------


def test_labels_of_arrows_leaving_one_box_do_not_overlap(setup, operator):
    from integrations.admin_engine import label_box

    ws = setup.workspace
    integration = Integration.objects.create(workspace=ws, name="Branches")

    def element(kind: str, name: str) -> Element:
        return Element.objects.create(
            workspace=ws, integration=integration, kind=kind, name=name,
            config={"name": name, "template": "1"} if kind == Kind.SET_VARIABLE else {},
        )  # fmt: skip

    def condition(value: str) -> dict[str, str]:
        return {"source": "variable", "key": "buyer_status", "operator": "not_equals",
                "value": value}  # fmt: skip

    start = element(Kind.START, "Begin")
    near = element(Kind.SET_VARIABLE, "Near")
    far = element(Kind.SET_VARIABLE, "Far")
    arrows = [
        (start, near, [condition("approved")]),
        (start, near, [condition("accepted")]),  # an OR: a second arrow, same ends
        (start, far, [condition("declined")]),  # passes over "Near": same row
        (near, far, [condition("rejected")]),
    ]
    for position, (a, b, conditions) in enumerate(arrows):
        Connection.objects.create(
            workspace=ws, integration=integration, from_element=a, to_element=b,
            position=position, conditions=conditions,
        )  # fmt: skip
    page = operator.get(change_url("integration", integration.pk)).content.decode()
    groups = re.findall(r'<g class="scenario-connection".*?</g>', page, re.S)
    assert len(groups) == 4
    labels = []
    for group in groups:
        x, y, text = re.search(
            r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>', group
        ).groups()
        labels.append(label_box(html.unescape(text), float(x), float(y)))
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    paths = [re.search(r'<path d="([^"]+)"', group).group(1) for group in groups]
    assert len(set(paths)) == 4  # the OR's two arrows are two visible curves
    height = float(re.search(r'id="scenario-diagram"[^>]*height="(\d+)"', page).group(1))
    assert max(box[3] for box in labels) < height  # every label inside the drawing


def test_run_page_shows_the_timeline_between_the_status_and_the_sample_variables(setup, operator):
    graph = Graph(setup, "https://93.184.216.34/x")
    operator.post(change_url("integration", graph.integration.pk, "sample_run"), {})
    run = ScenarioRun.objects.get()
    assert len(run.variables) > 10  # every sample field and system value
    html = operator.get(change_url("scenariorun", run.pk)).content.decode()
    status, timeline = html.index(">Status</label>"), html.index('id="run-timeline"')
    variables = html.index(">Variables</label>")
    assert status < timeline < variables
    assert html.count('id="run-timeline"') == 1 and "Post to buyer" in html
