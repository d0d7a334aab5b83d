"""The public callback URL against parked scenario runs: each pairing path (pcid in the
query, a form, a JSON path, a header; the buyer's id with a fixed or a named advertiser),
the exact 404, duplicate, early and late callbacks, the timeout path, cancelled runs,
a deadline racing a callback, webhook triggers and a reused webhook id."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from integrations.engine import services as engine
from integrations.engine.signals import run_finished
from integrations.models import Element, RunStep, ScenarioRun
from tests.integration.webhooks.conftest import make_hook
from webhooks import services
from webhooks.models import InboundWebhookRequest, WaitingWebhook

pytestmark = pytest.mark.django_db
Kind = Element.Kind
NOT_FOUND = b'{"code":404,"message":"Waiting Webhook not found for provided token and identifiers"}'
Inbound = InboundWebhookRequest.Status
Waiting = WaitingWebhook.Status


@pytest.fixture
def finished():
    calls = []

    def receiver(sender, **kwargs):
        calls.append(kwargs)

    run_finished.connect(receiver)
    yield calls
    run_finished.disconnect(receiver)


def test_pcid_in_json_resumes_the_run_with_outcome_captures_and_variables(
    hook, lead, finished, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    assert run.status == ScenarioRun.Status.WAITING
    assert run.result["kind"] == "pending" and run.result["blocking"] is True
    waiting = hook.waiting(run)
    assert (waiting.status, waiting.pcid, waiting.lead_id) == (Waiting.WAITING, lead.pcid, lead.pk)
    assert waiting.deadline_at > timezone.now() + timedelta(seconds=590)

    body = {"pcid": lead.pcid, "status": "sold", "price": "$12.50", "lead_id": "B-1",
            "note": "call after 5"}  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body=body)
    assert response.status_code == 200
    assert response.json() == {"code": 200, "message": "Webhook received"}
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    captured = {"price": "12.50", "buyer_lead_id": "B-1", "lead_field:g_buyer_note": "call after 5"}
    assert run.result == {"kind": "accepted", "reason": "", "captured": captured}
    assert run.variables["after"] == "yes"
    assert run.variables["webhook_status"] == "sold"
    lead.refresh_from_db()
    assert lead.data["g_buyer_note"] == "call after 5"
    waiting.refresh_from_db()
    inbound = InboundWebhookRequest.objects.get()
    assert waiting.status == Waiting.MATCHED and waiting.matched_at is not None
    assert inbound.status == Inbound.MATCHED and inbound.waiting_id == waiting.pk
    assert inbound.path == f"/webhooks/{hook.endpoint.webhook_id}/"  # no token stored
    assert hook.token not in json.dumps([inbound.path, inbound.query, inbound.headers])
    assert [c["status"] for c in finished] == ["succeeded"]


def test_rejection_from_the_rules_ends_the_branch_with_its_reason(
    hook, lead, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": lead.pcid, "status": "rejected"}).status_code == 200
    run.refresh_from_db()
    assert run.result["kind"] == "rejected" and run.result["reason"] == "buyer said no"
    assert "after" not in run.variables


def test_pcid_in_the_query_of_a_get(lead_setup, lead, django_capture_on_commit_callbacks):
    hook = make_hook(
        lead_setup,
        config={
            "rules": [
                {"conditions": [{"source": "query", "key": "result", "value": "ok"}],
                 "outcome": "accepted"}
            ],
            "captures": [{"source": "query", "key": "payout", "target": "price"}],
            "default_outcome": "rejected",
        },
        endpoint_kwargs={"id_location": "query", "id_key": "subid"},
    )  # fmt: skip
    run = hook.start(lead)
    with django_capture_on_commit_callbacks(execute=True):
        query = {"subid": lead.pcid, "result": "ok", "payout": "7"}
        response = hook.call(method="get", query=query)
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.result["kind"] == "accepted" and run.result["captured"]["price"] == "7"


def test_pcid_in_a_form_body(lead_setup, lead, django_capture_on_commit_callbacks):
    hook = make_hook(lead_setup, endpoint_kwargs={"id_location": "body", "id_key": "click"})
    run = hook.start(lead)
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(form={"click": lead.pcid, "status": "approved", "price": "3.10"})
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.result["kind"] == "accepted" and run.result["captured"]["price"] == "3.10"


def test_pcid_at_a_json_path(lead_setup, lead, django_capture_on_commit_callbacks):
    hook = make_hook(lead_setup, endpoint_kwargs={"id_location": "body", "id_key": "data.lead.id"})
    run = hook.start(lead)
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"data": {"lead": {"id": lead.pcid}}, "status": "sold"})
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_pcid_in_a_header(lead_setup, lead, django_capture_on_commit_callbacks):
    hook = make_hook(lead_setup, endpoint_kwargs={"id_location": "header", "id_key": "X-Lead-Id"})
    run = hook.start(lead)
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"status": "sold"}, headers={"X-Lead-Id": lead.pcid})
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_buyers_id_with_the_endpoints_advertiser(
    lead_setup, lead, advertiser, django_capture_on_commit_callbacks
):
    hook = make_hook(
        lead_setup,
        config={"external_id": "{{BUYER_ID}}"},
        endpoint_kwargs={"match_by": "external_id", "id_key": "lead_id", "advertiser": advertiser},
    )
    run = hook.start(lead, BUYER_ID="B-77")
    waiting = hook.waiting(run)
    assert (waiting.external_id, waiting.advertiser_id) == ("B-77", advertiser.pk)
    # Our pcid is no use on this endpoint: it pairs by the buyer's id.
    response = hook.call(json_body={"lead_id": lead.pcid, "status": "sold"})
    assert response.status_code == 404 and response.content == NOT_FOUND
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"lead_id": "B-77", "status": "sold"})
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_buyers_id_with_the_advertiser_named_in_the_callback(
    lead_setup, lead, advertiser, django_capture_on_commit_callbacks
):
    hook = make_hook(
        lead_setup,
        endpoint_kwargs={
            "match_by": "external_id", "id_key": "lead_id", "advertiser_key": "advertiser_id",
            "id_location": "query",
        },
    )  # fmt: skip
    # The ping tree names the offer's advertiser; the request before captured the id.
    run = hook.start(lead, ADVERTISER_ID=str(advertiser.pk))
    assert run.status == ScenarioRun.Status.FAILED  # no buyer id captured: a clear error
    assert "there is none" in run.reason

    hook2 = make_hook(
        lead_setup,
        webhook_id="wh_other",
        config={"external_id": "{{BUYER_ID}}"},
        endpoint_kwargs={
            "match_by": "external_id", "id_key": "lead_id", "advertiser_key": "advertiser_id",
            "id_location": "query",
        },
    )  # fmt: skip
    run = hook2.start(lead, ADVERTISER_ID=str(advertiser.pk), BUYER_ID="X9")
    wrong = hook2.call(query={"lead_id": "X9", "advertiser_id": str(advertiser.pk + 1000)})
    assert wrong.status_code == 404 and wrong.content == NOT_FOUND
    with django_capture_on_commit_callbacks(execute=True):
        ok = hook2.call(
            query={"lead_id": "X9", "advertiser_id": str(advertiser.pk)},
            json_body={"status": "sold"},
        )
    assert ok.status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_nothing_waiting_answers_the_exact_404(hook, lead):
    response = hook.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert response.status_code == 404
    assert response.content == NOT_FOUND
    assert response["Content-Type"] == "application/json"


def test_unknown_wrong_and_revoked_urls_get_the_same_404(hook, lead):
    hook.start(lead)
    answers = [
        hook.call(json_body={"pcid": lead.pcid}, path="/webhooks/wh_nope/whatever/"),
        hook.call(json_body={"pcid": lead.pcid}, path=f"/webhooks/{hook.endpoint.webhook_id}/x/"),
    ]
    hook.endpoint.is_enabled = False
    hook.endpoint.save()
    answers.append(hook.call(json_body={"pcid": lead.pcid, "status": "sold"}))
    assert {(a.status_code, a.content) for a in answers} == {(404, NOT_FOUND)}
    assert WaitingWebhook.objects.get().status == Waiting.WAITING
    assert not InboundWebhookRequest.objects.exists()  # nothing stored for unknown URLs


def test_the_same_callback_twice_changes_state_once(
    hook, lead, finished, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    body = {"pcid": lead.pcid, "status": "sold", "price": "10"}
    with django_capture_on_commit_callbacks(execute=True):
        first = hook.call(json_body=body)
        second = hook.call(json_body=body | {"price": "99"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["message"] == "Webhook already received"
    run.refresh_from_db()
    assert run.result["captured"]["price"] == "10"
    step = hook.parked_step(run)
    assert step.status == RunStep.Status.DONE and step.input["resumed"]["inbound_id"]
    statuses = list(InboundWebhookRequest.objects.order_by("id").values_list("status", flat=True))
    assert statuses == [Inbound.MATCHED, Inbound.DUPLICATE]
    assert len(finished) == 1


def test_an_early_callback_is_taken_when_the_lead_starts_waiting(
    hook, lead, django_capture_on_commit_callbacks
):
    early = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "5"})
    assert early.status_code == 404 and early.content == NOT_FOUND
    assert InboundWebhookRequest.objects.get().status == Inbound.UNMATCHED
    run = hook.start(lead)
    assert run.status == ScenarioRun.Status.SUCCEEDED  # never parked
    assert run.result["captured"]["price"] == "5"
    assert hook.waiting(run).status == Waiting.MATCHED
    assert InboundWebhookRequest.objects.get().status == Inbound.MATCHED


def test_a_callback_before_the_waiting_row_committed_is_matched_by_the_sweep(
    hook, lead, monkeypatch, django_capture_on_commit_callbacks
):
    # The buyer answers while the step's transaction is still open: the step looked for
    # early callbacks before this one was stored, and the callback found no committed
    # waiting row. The sweep matches it within its interval.
    early = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "8"})
    assert early.status_code == 404
    original = services._early_callback
    monkeypatch.setattr(services, "_early_callback", lambda **kwargs: None)
    run = hook.start(lead)
    assert run.status == ScenarioRun.Status.WAITING
    monkeypatch.setattr(services, "_early_callback", original)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.waiting_sweep()["matched"] == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.result["captured"]["price"] == "8"
    assert InboundWebhookRequest.objects.get().status == Inbound.MATCHED
    assert services.waiting_sweep()["matched"] == 0


def test_unmatched_callbacks_are_given_up_after_the_early_window(hook, lead):
    hook.call(json_body={"pcid": lead.pcid})
    InboundWebhookRequest.objects.update(
        received_at=timezone.now() - timedelta(seconds=services.EARLY_MATCH_SECONDS + 1)
    )
    assert services.waiting_sweep()["given_up"] == 1
    assert InboundWebhookRequest.objects.get().status == Inbound.NOT_FOUND
    hook.start(lead)
    assert WaitingWebhook.objects.get().status == Waiting.WAITING


def test_timeout_times_the_run_out_and_tells_the_ping_tree(
    hook, lead, finished, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    step = hook.parked_step(run)
    RunStep.objects.filter(pk=step.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        engine.steps_drive(deadline_seconds=5)
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.TIMED_OUT
    assert run.result["kind"] == "timeout" and "600 s" in run.reason
    assert finished[-1]["status"] == "timed_out" and finished[-1]["run_id"] == run.pk
    assert hook.waiting(run).status == Waiting.TIMED_OUT
    # A late callback: nothing waits any more.
    late = hook.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert late.status_code == 404 and late.content == NOT_FOUND
    inbound = InboundWebhookRequest.objects.get()
    assert inbound.status == Inbound.NOT_FOUND and "timed_out" in inbound.note
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.TIMED_OUT


def test_a_callback_that_claimed_the_row_as_the_deadline_fired_still_counts(
    hook, lead, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    step = hook.parked_step(run)
    # The callback claimed the waiting row; its resume lost against the sweeper, which
    # had just handed the step its timeout visit.
    RunStep.objects.filter(pk=step.pk).update(due_at=timezone.now() - timedelta(seconds=1))
    claimed = RunStep.objects.filter(pk=step.pk).update(status=RunStep.Status.RUNNING)
    assert claimed
    answer = services._match(
        endpoint=hook.endpoint,
        inbound_id=_stored(hook, lead, {"pcid": lead.pcid, "status": "sold", "price": "4"}),
        identifier=lead.pcid,
        advertiser_id=None,
        fresh=True,
    )
    assert answer is services.MATCHED
    RunStep.objects.filter(pk=step.pk).update(status=RunStep.Status.PENDING)
    with django_capture_on_commit_callbacks(execute=True):
        engine.steps_drive(deadline_seconds=5)
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.result["captured"]["price"] == "4"


def _stored(hook, lead, body) -> int:
    return InboundWebhookRequest.objects.create(
        workspace=hook.endpoint.workspace,
        endpoint=hook.endpoint,
        method="POST",
        path=hook.endpoint.public_path,
        content_type="application/json",
        body=json.dumps(body),
        identifier=lead.pcid,
    ).pk


def test_a_cancelled_run_makes_the_callback_a_404(hook, lead):
    run = hook.start(lead)
    engine.run_cancel(run_id=run.pk, reason="operator")
    response = hook.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert response.status_code == 404 and response.content == NOT_FOUND
    assert hook.waiting(run).status == Waiting.CANCELLED


def test_the_sweep_closes_waiting_rows_of_ended_runs(hook, lead):
    run = hook.start(lead)
    ScenarioRun.objects.filter(pk=run.pk).update(status=ScenarioRun.Status.CANCELLED)
    assert services.waiting_sweep()["closed"] == 1
    assert hook.waiting(run).status == Waiting.CANCELLED


def test_without_waiting_the_run_parks_for_the_retention_and_is_not_blocking(
    lead_setup, lead, django_capture_on_commit_callbacks
):
    hook = make_hook(lead_setup, config={"wait": False, "timeout_seconds": None})
    run = hook.start(lead)
    assert run.status == ScenarioRun.Status.WAITING
    assert run.result["blocking"] is False
    waiting = hook.waiting(run)
    assert waiting.is_blocking is False
    assert waiting.deadline_at > timezone.now() + timedelta(days=29)
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": lead.pcid, "status": "sold"}).status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_an_unknown_endpoint_in_the_step_fails_the_run_clearly(lead_setup, lead):
    hook = make_hook(lead_setup, config={"endpoint": "wh_missing"})
    run = hook.start(lead)
    assert run.status == ScenarioRun.Status.FAILED
    assert "no webhook endpoint 'wh_missing'" in run.reason


def test_a_deleted_endpoints_id_and_token_carry_over_to_its_successor(
    hook, lead, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    services.endpoint_delete(endpoint=hook.endpoint)
    assert hook.call(json_body={"pcid": lead.pcid}).content == NOT_FOUND
    successor, token = services.endpoint_create(
        workspace=hook.endpoint.workspace, name="Acme again", webhook_id=hook.endpoint.webhook_id
    )
    assert token == hook.token and successor.pk != hook.endpoint.pk
    assert hook.waiting(run).endpoint_id == successor.pk
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": lead.pcid, "status": "sold"}).status_code == 200
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_a_webhook_trigger_starts_a_scenario_with_the_payload(
    lead_setup, lead, django_capture_on_commit_callbacks
):
    from integrations.models import Integration

    integration = Integration.objects.create(
        workspace=lead_setup.workspace, name="Consent changes", status="enabled"
    )
    start = Element.objects.create(
        workspace=lead_setup.workspace, integration=integration, kind=Kind.START, name="start",
        config={"trigger": "webhook"},
    )  # fmt: skip
    note = Element.objects.create(
        workspace=lead_setup.workspace, integration=integration, kind=Kind.SET_VARIABLE,
        name="note", config={"name": "seen", "template": "{{consent}}"},
    )  # fmt: skip
    from integrations.models import Connection

    Connection.objects.create(
        workspace=lead_setup.workspace, integration=integration, from_element=start,
        to_element=note,
    )  # fmt: skip
    hook = make_hook(lead_setup, endpoint_kwargs={"trigger_integration": integration})
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"pcid": lead.pcid, "consent": "withdrawn"})
    assert response.status_code == 202
    inbound = InboundWebhookRequest.objects.get()
    assert inbound.status == Inbound.STARTED
    run = ScenarioRun.objects.get(pk=inbound.started_run_id)
    assert run.lead_id == lead.pk and run.variables["consent"] == "withdrawn"
    assert run.variables["seen"] == "withdrawn"
    assert run.status == ScenarioRun.Status.SUCCEEDED


def test_a_dry_run_does_not_leave_a_lead_waiting(hook, lead):
    run = engine.run_start(integration=hook.integration, lead=lead, dry_run=True)
    run = engine.run_drive(run_id=run.pk, deadline_seconds=5, hand_off=False)
    assert run.status == ScenarioRun.Status.SUCCEEDED
    assert run.result["kind"] == "pending" and "dry run" in run.result["reason"]
    assert not WaitingWebhook.objects.exists()


def test_the_sweep_drops_log_rows_past_the_retention(hook, lead):
    hook.call(json_body={"pcid": lead.pcid})
    hook.call(json_body={"pcid": lead.pcid})
    old = InboundWebhookRequest.objects.order_by("id").first()
    InboundWebhookRequest.objects.filter(pk=old.pk).update(
        received_at=timezone.now() - timedelta(days=services.LOG_RETENTION_DAYS, seconds=1)
    )
    assert services.waiting_sweep()["pruned"] == 1
    assert list(InboundWebhookRequest.objects.values_list("pk", flat=True)) != [old.pk]
    assert InboundWebhookRequest.objects.count() == 1


def test_a_callback_stored_but_never_processed_is_matched_by_the_sweep(
    hook, lead, django_capture_on_commit_callbacks
):
    # The web process died between storing the raw request and matching it.
    run = hook.start(lead)
    inbound_id = _stored(hook, lead, {"pcid": lead.pcid, "status": "sold", "price": "6"})
    InboundWebhookRequest.objects.filter(pk=inbound_id).update(
        received_at=timezone.now() - timedelta(seconds=services.STUCK_SECONDS + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.waiting_sweep()["matched"] == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED and run.result["captured"]["price"] == "6"
    assert InboundWebhookRequest.objects.get(pk=inbound_id).status == Inbound.MATCHED


@pytest.mark.parametrize(
    ("location", "id_key", "advertiser_key"),
    [
        ("query", "lead_id", "adv"),
        ("body", "data.lead.id", "data.advertiser"),
        ("header", "X-Lead-Id", "X-Advertiser-Id"),
    ],
)
def test_buyers_id_and_advertiser_read_from_query_body_path_or_header(
    lead_setup, lead, advertiser, location, id_key, advertiser_key,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    hook = make_hook(
        lead_setup,
        config={"external_id": "{{BUYER_ID}}"},
        endpoint_kwargs={"match_by": "external_id", "id_location": location, "id_key": id_key,
                         "advertiser_key": advertiser_key},
    )  # fmt: skip
    run = hook.start(lead, ADVERTISER_ID=str(advertiser.pk), BUYER_ID="ACME-5")
    assert (hook.waiting(run).external_id, hook.waiting(run).advertiser_id) == (
        "ACME-5",
        advertiser.pk,
    )

    def call(buyer_id: str, advertiser_id: int) -> Any:
        body: dict[str, Any] = {"status": "sold", "price": "3.30"}
        if location == "query":
            return hook.call(query={id_key: buyer_id, advertiser_key: str(advertiser_id)},
                             json_body=body)  # fmt: skip
        if location == "header":
            headers = {id_key: buyer_id, advertiser_key: str(advertiser_id)}
            return hook.call(json_body=body, headers=headers)
        body["data"] = {"lead": {"id": buyer_id}, "advertiser": advertiser_id}
        return hook.call(json_body=body)

    for wrong in (call("ACME-5", advertiser.pk + 1000), call(lead.pcid, advertiser.pk)):
        assert (wrong.status_code, wrong.content) == (404, NOT_FOUND)
    assert hook.waiting(run).status == Waiting.WAITING
    with django_capture_on_commit_callbacks(execute=True):
        ok = call("ACME-5", advertiser.pk)
    assert ok.status_code == 200 and ok.json()["message"] == "Webhook received"
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED and run.result["captured"]["price"] == "3.30"
    inbound = InboundWebhookRequest.objects.filter(status=Inbound.MATCHED).get()
    assert (inbound.identifier, inbound.advertiser_ref) == ("ACME-5", str(advertiser.pk))


def test_pcid_pairing_ignores_a_lead_of_another_endpoint(lead_setup, lead):
    # Pairing by pcid alone is still per endpoint: the same lead waiting on buyer A is
    # not resumed by buyer B's URL.
    a = make_hook(lead_setup, webhook_id="wh_a")
    b = make_hook(lead_setup, webhook_id="wh_b")
    run = a.start(lead)
    response = b.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert (response.status_code, response.content) == (404, NOT_FOUND)
    assert a.waiting(run).status == Waiting.WAITING


@pytest.mark.django_db(transaction=True)
def test_a_failure_while_processing_never_loses_the_raw_request(
    hook, lead, monkeypatch, django_capture_on_commit_callbacks
):
    """The statement that stores and matches a callback fails in the database: the
    request is then stored on its own (committed) before it is matched; the matching
    crashes too, and the sweep matches the stored request later."""
    from django.db import connections

    run = hook.start(lead)
    monkeypatch.setattr(services, "_receive_sql", lambda external: "SELECT 1 / 0")
    seen = []

    def crash(**kwargs: Any) -> None:
        # What another connection (the sweeper, an operator) sees while we process it.
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute(
                    "SELECT status, body FROM webhooks_inboundwebhookrequest WHERE id = %s",
                    [kwargs["inbound_id"]],
                )
                seen.append(cursor.fetchone())
        finally:
            other.close()
        raise RuntimeError("the web process failed while matching")

    monkeypatch.setattr(services, "_match", crash)
    hook.client.raise_request_exception = False
    body = {"pcid": lead.pcid, "status": "sold", "price": "7.70"}
    assert hook.call(json_body=body).status_code == 500
    assert seen == [(Inbound.RECEIVED, json.dumps(body))]
    # Stored with an asynchronous commit for that statement only (services._inbound_insert):
    # the connection's later writes (the match) still wait for the flush.
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
    monkeypatch.undo()
    # Nothing was matched; the sweep takes the stored request once it is stuck.
    assert hook.waiting(run).status == Waiting.WAITING
    InboundWebhookRequest.objects.update(
        received_at=timezone.now() - timedelta(seconds=services.STUCK_SECONDS + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert services.waiting_sweep()["matched"] == 1
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.SUCCEEDED and run.result["captured"]["price"] == "7.70"


def test_a_callback_is_stored_and_matched_by_one_statement(
    hook, lead, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("the one statement is PostgreSQL's (SQLite: the ORM in a transaction)")
    run = hook.start(lead)
    hook.call(json_body={"pcid": "not-waiting-yet"})  # the endpoint is remembered now
    with (
        django_capture_on_commit_callbacks(execute=False),
        CaptureQueriesContext(connection) as queries,
    ):
        response = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "3"})
    assert response.status_code == 200
    writes = [q["sql"] for q in queries.captured_queries if "webhooks_" in q["sql"]]
    assert len(writes) == 1 and "INSERT INTO webhooks_inboundwebhookrequest" in writes[0]
    assert "UPDATE webhooks_waitingwebhook" in writes[0]
    inbound = InboundWebhookRequest.objects.get(identifier=lead.pcid)
    waiting = hook.waiting(run)
    assert (inbound.status, inbound.note, inbound.waiting_id) == (Inbound.MATCHED, "", waiting.pk)
    assert hook.parked_step(run).input["resumed"] == {"inbound_id": inbound.pk}
    run.refresh_from_db()
    assert run.status == ScenarioRun.Status.RUNNING  # its step is due: resumed
    early = InboundWebhookRequest.objects.get(identifier="not-waiting-yet")
    assert (early.status, early.note) == (Inbound.UNMATCHED, "nothing waiting yet")


@pytest.mark.django_db(transaction=True)
def test_a_row_claimed_by_another_callback_meanwhile_makes_a_duplicate(hook, lead):
    """The statement's snapshot still shows the row waiting, but another callback claims
    it first (the claim waits for its lock, then finds it matched): decided again with a
    fresh read, this callback is a duplicate, not a 404."""
    import threading
    import time

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("row locks across connections: PostgreSQL")
    run = hook.start(lead)
    waiting = hook.waiting(run)
    other = connections.create_connection("default")
    answers = []

    def call() -> None:
        try:
            answers.append(hook.call(json_body={"pcid": lead.pcid, "status": "sold"}))
        finally:
            connections.close_all()

    try:
        other.set_autocommit(False)
        with other.cursor() as cursor:
            cursor.execute(
                "UPDATE webhooks_waitingwebhook SET status = 'matched' WHERE id = %s",
                [waiting.pk],
            )
        thread = threading.Thread(target=call)
        thread.start()
        waited = 0.0
        with connection.cursor() as cursor:  # until the callback waits for the row's lock
            while waited < 10:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    ["%webhooks_inboundwebhookrequest%"],
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.02)
                waited += 0.02
        other.commit()
        thread.join(10)
    finally:
        other.close()
    assert [(a.status_code, a.json()["message"]) for a in answers] == [
        (200, "Webhook already received")
    ]
    inbound = InboundWebhookRequest.objects.get()
    assert (inbound.status, inbound.waiting_id) == (Inbound.DUPLICATE, waiting.pk)
    assert "resumed" not in hook.parked_step(run).input


def _new_request(connection) -> None:
    # What Django does at each request's start for a kept connection (the test client
    # leaves it out): the connection is to be checked before its first query.
    connection.health_check_enabled = True
    connection.health_check_done = False


@pytest.mark.django_db(transaction=True)
def test_the_one_statement_is_the_connections_health_check(hook, lead, monkeypatch):
    """No SELECT 1 round trip before a callback's statement: Django's check of a kept
    connection is skipped, the statement itself shows the connection is alive."""
    from django.db import connections

    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("the one statement is PostgreSQL's")
    run = hook.start(lead)
    hook.call(json_body={"pcid": "not-waiting-yet"})  # the endpoint is remembered now
    checks = []
    real = connection.is_usable
    monkeypatch.setattr(connection, "is_usable", lambda: checks.append(1) or real())
    _new_request(connection)
    response = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "4"})
    assert response.status_code == 200 and response.json()["message"] == "Webhook received"
    assert checks == []
    assert hook.waiting(run).status == Waiting.MATCHED


@pytest.mark.django_db(transaction=True)
def test_a_callback_on_a_connection_the_server_closed_is_matched_on_a_new_one(hook, lead):
    """The kept connection died between requests (the server restarted, an idle timeout):
    the callback's statement fails on it, the connection is dropped and the statement
    runs again on a new one. One match, one stored request, a 200."""
    import time

    from django.db import connections

    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("the one statement is PostgreSQL's")
    run = hook.start(lead)
    hook.call(json_body={"pcid": "not-waiting-yet"})  # the endpoint is remembered now
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        dead = cursor.fetchone()[0]
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [dead])
            for _ in range(500):  # until the server has closed it
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [dead])
                if not cursor.fetchone()[0]:
                    break
                time.sleep(0.01)
    finally:
        other.close()
    _new_request(connection)
    response = hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "5"})
    assert response.status_code == 200 and response.json()["message"] == "Webhook received"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != dead
    assert hook.waiting(run).status == Waiting.MATCHED
    inbound = InboundWebhookRequest.objects.get(identifier=lead.pcid)
    assert (inbound.status, inbound.waiting_id) == (Inbound.MATCHED, hook.waiting(run).pk)
    assert hook.parked_step(run).input["resumed"] == {"inbound_id": inbound.pk}


@pytest.mark.django_db(transaction=True)
def test_a_statement_failing_on_a_live_connection_is_not_run_twice(hook, lead, monkeypatch):
    """Only a dead connection makes the statement run again: a failure on a live one
    goes to the store-then-match path at once, with nothing written twice."""
    from django.db import connections

    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("the one statement is PostgreSQL's")
    from django.test.utils import CaptureQueriesContext

    run = hook.start(lead)
    hook.call(json_body={"pcid": "not-waiting-yet"})  # the endpoint is remembered now
    # Cancelled by the server: an OperationalError, the class a dead connection raises.
    cancelled = "SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5)"
    monkeypatch.setattr(services, "_receive_sql", lambda external: cancelled)
    _new_request(connection)
    with CaptureQueriesContext(connection) as queries:
        response = hook.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert response.status_code == 200 and response.json()["message"] == "Webhook received"
    assert [q["sql"] for q in queries.captured_queries].count(cancelled) == 1
    assert InboundWebhookRequest.objects.get(identifier=lead.pcid).status == Inbound.MATCHED
    assert hook.waiting(run).status == Waiting.MATCHED
