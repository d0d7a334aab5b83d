"""An integration without elements (installed from the library, or a plain single
request) gets its default scenario on its first run: a start per step meaning, then
that meaning's requests."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connection
from werkzeug import Response

from integrations.engine import services as engine
from integrations.models import Connection, Element, Integration, RequestLog, RequestStep, RunStep
from integrations.portability import integration_import, library_entry
from structures.models import Lead

pytestmark = pytest.mark.django_db
Kind = Element.Kind


@pytest.fixture
def lead(lead_setup):
    return Lead.objects.create(
        workspace=lead_setup.workspace,
        structure=lead_setup.structure,
        partner=lead_setup.partner,
        source="api",
        status="approved",
        data={"g_zip": "90210", "g_state": "CA", "g_loan_amount": "5000"},
    )


def _buyer(lead_setup, httpserver):
    entry = json.loads(json.dumps(library_entry("generic-json-buyer")))
    for request in entry["requests"]:
        request["url"] = httpserver.url_for("/" + request["meaning"])
    return integration_import(workspace_id=lead_setup.workspace.pk, data=entry, status="enabled")


def test_library_buyer_runs_its_ping_and_post(lead_setup, lead, httpserver):
    httpserver.expect_request("/ping").respond_with_json({"status": "accepted", "bid": 12.5})
    httpserver.expect_request("/post").respond_with_json(
        {"status": "accepted", "lead_id": "B-1", "redirect_url": "https://buyer.example/thanks"}
    )
    integration = _buyer(lead_setup, httpserver)
    assert not integration.elements.exists()

    ping = engine.run_start(integration=integration, lead=lead, meaning="ping")
    ping = engine.run_drive(run_id=ping.pk, deadline_seconds=5)
    assert ping.status == "succeeded"
    assert ping.result["kind"] == "accepted" and ping.result["captured"]["price"] == "12.5"

    post = engine.run_start(integration=integration, lead=lead, meaning="post")
    post = engine.run_drive(run_id=post.pk, deadline_seconds=5)
    assert post.result["kind"] == "accepted"
    assert post.result["captured"]["buyer_lead_id"] == "B-1"

    # Each call's log row names the step that made it (the run timeline reads them so).
    (ping_log,) = RequestLog.objects.filter(run_step__run=ping)
    assert ping_log.run_step.element.kind == Kind.REQUEST and ping_log.url.endswith("/ping")
    assert RequestLog.objects.filter(run_step__run=post).count() == 1

    starts = integration.elements.filter(kind=Kind.START)
    assert sorted(starts.values_list("meaning", flat=True)) == ["ping", "post"]
    assert integration.elements.filter(kind=Kind.REQUEST).count() == 2
    assert Connection.objects.filter(integration=integration).count() == 2


def test_requests_of_one_meaning_are_chained_on_acceptance(lead_setup, lead, httpserver):
    integration = Integration.objects.create(
        workspace=lead_setup.workspace, name="Two posts", status="enabled"
    )
    for position, path in enumerate(("/first", "/second")):
        RequestStep.objects.create(
            workspace=lead_setup.workspace, integration=integration, name=path,
            url=httpserver.url_for(path), position=position,
        )  # fmt: skip
    httpserver.expect_request("/first").respond_with_response(Response("nope", status=500))
    run = engine.run_start(integration=integration, lead=lead)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5)
    assert run.status == "failed"
    # The second request is only sent after the first was accepted.
    assert [r.path for r, _ in httpserver.log] == ["/first"]


def test_existing_elements_are_left_alone(lead_setup):
    integration = Integration.objects.create(workspace=lead_setup.workspace, name="Mine")
    Element.objects.create(
        workspace=lead_setup.workspace, integration=integration, kind=Kind.START, name="s"
    )
    assert engine.scenario_default_build(integration=integration) == 0
    assert integration.elements.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_first_runs_at_once_build_one_graph(lead_setup):
    integration = Integration.objects.create(workspace=lead_setup.workspace, name="Race")
    RequestStep.objects.create(
        workspace=lead_setup.workspace, integration=integration, url="https://example.com/"
    )
    made = []

    def build():
        try:
            made.append(engine.scenario_default_build(integration=integration))
        finally:
            connection.close()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == [0, 0, 0, 2]
    assert integration.elements.count() == 2


def test_a_first_run_that_loses_the_build_race_runs_the_winners_graph(
    lead_setup, lead, httpserver, monkeypatch
):
    """Two first runs at once (two leads for a new buyer): the one whose build finds the
    elements made by the other meanwhile reads the new version and runs them (it used
    to fail: "has no default start for 'ping'", seen on the demo's first two leads)."""
    httpserver.expect_request("/ping").respond_with_json({"status": "accepted", "bid": 4})
    integration = _buyer(lead_setup, httpserver)
    real = engine.scenario_default_build

    def built_by_the_other_first(*, integration):
        assert real(integration=integration) > 0  # the other run's build commits first
        return 0  # this one finds its elements

    monkeypatch.setattr(engine, "scenario_default_build", built_by_the_other_first)
    run = engine.run_start(integration=integration, lead=lead, meaning="ping")
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5)
    assert run.status == "succeeded" and run.result["kind"] == "accepted"
    assert integration.elements.filter(kind=Kind.START).count() == 2


def test_the_task_path_names_the_step_on_its_log_row(lead_setup, lead, httpserver):
    httpserver.expect_request("/ping").respond_with_json({"status": "accepted", "bid": 3})
    httpserver.expect_request("/post").respond_with_json({"status": "accepted"})
    integration = _buyer(lead_setup, httpserver)
    run = engine.run_start(integration=integration, lead=lead, meaning="ping")
    step = RunStep.objects.get(run=run, status=RunStep.Status.PENDING)
    assert engine.step_execute(step_id=step.pk) == []
    assert RequestLog.objects.get(run_step=step).outcome == "accepted"
