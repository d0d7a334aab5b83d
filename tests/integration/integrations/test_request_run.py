"""Running a request step against real local HTTP servers: status semantics, outcomes,
captures, logs with secrets masked, figures."""

from __future__ import annotations

import json
import time

import pytest
import structlog
from werkzeug import Response

from integrations import secrets, services
from integrations.context import lead_context
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestLog,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from integrations.selectors import integration_figures
from structures.models import Lead

pytestmark = pytest.mark.django_db
SECRET = "s3cr3t-token-XYZ"


@pytest.fixture
def buyer(httpserver):
    """A JSON buyer: accepts unless the email says reject, bids, returns a redirect."""

    def handler(request):
        data = request.get_json(silent=True) or {}
        email = data.get("contact", {}).get("email", "")
        if "reject" in email:
            return Response(
                json.dumps({"status": "rejected", "reason": "Low quality"}),
                content_type="application/json",
            )
        return Response(
            json.dumps(
                {
                    "status": "accepted",
                    "id": "B-77",
                    "price": "12.50",
                    "redirect": "https://buyer.example.com/thanks",
                }
            ),
            content_type="application/json",
        )

    httpserver.expect_request("/leads", method="POST").respond_with_handler(handler)
    return httpserver


@pytest.fixture
def step(lead_setup, buyer) -> RequestStep:
    integration = Integration.objects.create(
        workspace=lead_setup.workspace, name="JSON buyer", status="enabled", category="buyer"
    )
    step = RequestStep.objects.create(
        workspace=lead_setup.workspace,
        integration=integration,
        method="POST",
        url=buyer.url_for("/leads"),
        body_format="json",
        auth_type="bearer",
    )
    services.request_secret_set(step=step, secret=SECRET)
    RequestBodyField.objects.create(request=step, name="contact.email", value="{{g_email}}")
    RequestBodyField.objects.create(request=step, name="contact.first", value="{{g_first_name}}")
    RequestBodyField.objects.create(request=step, name="ref", value="{{PCID}}")
    RequestHeader.objects.create(request=step, name="X-Source", value="leadrelay")
    ResponseRule.objects.create(
        request=step, position=0, key="status", value="accepted", outcome="accepted"
    )
    ResponseRule.objects.create(
        request=step, position=1, key="status", value="rej*", outcome="rejected"
    )
    ResponseCapture.objects.create(request=step, key="id", target="buyer_lead_id")
    ResponseCapture.objects.create(request=step, key="price", target="price")
    ResponseCapture.objects.create(request=step, key="redirect", target="redirect_url")
    ResponseCapture.objects.create(request=step, key="reason", target="reject_reason")
    return step


def _lead(lead_setup, n=0, **extra) -> Lead:
    payload = lead_setup.valid_payload(n) | extra
    from structures import services as lead_services

    return lead_services.lead_intake(api_key=lead_setup.api_key, payload=payload).lead


def test_accepted_call_is_sent_read_captured_and_logged_masked(lead_setup, step, buyer):
    lead = _lead(lead_setup)
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert run.was_sent and run.outcome.kind == "accepted"
    assert run.outcome.buyer_lead_id == "B-77"
    assert str(run.outcome.price) == "12.50"
    assert run.outcome.redirect_url == "https://buyer.example.com/thanks"
    sent = buyer.log[-1][0]
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.get_json()["contact"] == {"email": lead.data["g_email"], "first": "Jane"}
    assert sent.get_json()["ref"] == lead.pcid
    entry = RequestLog.objects.get()
    assert entry.lead == lead and entry.outcome == "accepted" and entry.status_code == 200
    assert entry.duration_ms is not None
    dump = json.dumps(
        [
            entry.url,
            entry.request_headers,
            entry.request_body,
            entry.response_body,
            entry.reason,
            entry.captured,
        ]
    )
    assert SECRET not in dump
    assert "B-77" in entry.response_body


def test_rejected_answer_takes_the_buyers_reason(lead_setup, step):
    lead = _lead(lead_setup, g_email="reject-me@example.com")
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert (run.outcome.kind, run.outcome.reason) == ("rejected", "Low quality")


def test_disabled_integration_never_sends(lead_setup, step, buyer):
    Integration.objects.filter(pk=step.integration_id).update(status="disabled")
    step.refresh_from_db()
    lead = _lead(lead_setup, test="true")
    run = services.request_run(
        step=step, context=lead_context(lead) | {"trl_test": "1"}, lead=lead, force_send=True
    )
    assert not run.was_sent and buyer.log == []
    assert RequestLog.objects.get().was_sent is False


def test_test_mode_renders_and_logs_without_sending(lead_setup, step, buyer):
    Integration.objects.filter(pk=step.integration_id).update(status="test")
    step.refresh_from_db()
    lead = _lead(lead_setup)
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert not run.was_sent and buyer.log == []
    entry = RequestLog.objects.get()
    assert entry.was_sent is False and lead.data["g_email"] in entry.request_body
    assert SECRET not in json.dumps(entry.request_headers)


def test_test_mode_sends_when_the_lead_forces_it(lead_setup, step, buyer):
    Integration.objects.filter(pk=step.integration_id).update(status="test")
    step.refresh_from_db()
    lead = _lead(lead_setup, test="true")  # TRL_TEST=1 in the context
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert run.was_sent and len(buyer.log) == 1


def test_secret_is_encrypted_at_rest(step):
    stored = RequestStep.objects.values_list("auth_secret_encrypted", flat=True).get(pk=step.pk)
    assert SECRET not in stored and secrets.decrypt(stored) == SECRET


def test_timeout_and_server_errors_are_outcomes_not_exceptions(lead_setup, step, httpserver):
    def slow(request):
        time.sleep(1.5)
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    httpserver.expect_request("/boom").respond_with_data("oops", status=503)
    lead = _lead(lead_setup)
    RequestStep.objects.filter(pk=step.pk).update(
        url=httpserver.url_for("/slow"), timeout_seconds=0.5
    )
    step.refresh_from_db()
    assert services.request_run(step=step, context=lead_context(lead)).outcome.kind == "timeout"
    RequestStep.objects.filter(pk=step.pk).update(
        url=httpserver.url_for("/boom"), timeout_seconds=5
    )
    step.refresh_from_db()
    outcome = services.request_run(step=step, context=lead_context(lead)).outcome
    assert outcome.kind == "error" and "503" in outcome.reason


def test_figures_count_rates_and_times(lead_setup, step):
    for n in range(3):
        lead = _lead(lead_setup, n)
        services.request_run(step=step, context=lead_context(lead), lead=lead)
    lead = _lead(lead_setup, 9, g_email="reject@example.com")
    services.request_run(step=step, context=lead_context(lead), lead=lead)
    figures = integration_figures(integration=step.integration)
    assert figures["total"] == 4
    assert figures["success_rate"] == 75.0 and figures["rejection_rate"] == 25.0
    assert figures["p95_ms"] is not None and figures["avg_ms"] is not None
    assert figures["days"][-1]["total"] == 4


def test_secret_placeholder_reaches_the_url_and_never_the_log(lead_setup, step, buyer):
    RequestStep.objects.filter(pk=step.pk).update(url=buyer.url_for("/leads") + "?k={{SECRET}}")
    step.refresh_from_db()
    lead = _lead(lead_setup)
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert run.was_sent and buyer.log[-1][0].args["k"] == SECRET
    assert SECRET not in RequestLog.objects.get().url


def test_a_call_writes_one_log_line_with_the_send_and_the_outcome_masked(lead_setup, step, buyer):
    RequestStep.objects.filter(pk=step.pk).update(url=buyer.url_for("/leads") + "?k={{SECRET}}")
    step.refresh_from_db()
    lead = _lead(lead_setup)

    with structlog.testing.capture_logs() as lines:
        services.request_run(step=step, context=lead_context(lead), lead=lead)

    assert [line["event"] for line in lines] == ["integration.request"]
    (line,) = lines
    # The request log row is the record of every call: an answered call's line is debug.
    assert line["log_level"] == "debug"
    assert (line["integration_id"], line["request_id"]) == (step.integration_id, step.pk)
    assert (line["outcome"], line["status"], line["method"], line["sent"]) == (
        "accepted", 200, "POST", True
    )  # fmt: skip
    assert line["url"].endswith("/leads?k=***") and line["final_url"] == line["url"]
    assert line["ms"] is not None and line["error_kind"] is None
    assert SECRET not in json.dumps(line, default=str)


def test_a_call_not_sent_still_writes_its_one_line(lead_setup, step, buyer):
    Integration.objects.filter(pk=step.integration_id).update(status="disabled")
    lead = _lead(lead_setup)

    with structlog.testing.capture_logs() as lines:
        services.request_run(step=step, context=lead_context(lead), lead=lead)

    assert [(line["event"], line["sent"], line["status"]) for line in lines] == [
        ("integration.request", False, None)
    ]


def test_a_failed_exchange_is_a_warning_line(lead_setup, step):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    RequestStep.objects.filter(pk=step.pk).update(url=f"http://127.0.0.1:{port}/leads")
    step.refresh_from_db()
    lead = _lead(lead_setup)

    with structlog.testing.capture_logs() as lines:
        run = services.request_run(step=step, context=lead_context(lead), lead=lead)

    assert run.outcome.kind == "error"
    assert [(line["event"], line["log_level"]) for line in lines] == [
        ("integration.request", "warning")
    ]
    assert lines[0]["error_kind"]


def test_a_lead_layer_taken_once_gives_the_same_context_with_a_fresh_clock(lead_setup):
    """The ping tree takes a lead's fields and system values once per distribution
    (lead_layer_of) and the clock's values per call: the context is the one
    lead_context builds from the lead, later layers still win, the clock is read anew."""
    from integrations.context import lead_layer_of

    lead = _lead(lead_setup)
    layer = lead_layer_of(lead)
    clock = {"TIMESTAMP", "TIMESTAMP_MS", "DATE", "DATETIME"}
    whole = lead_context(lead, variables={"OFFER_ID": "7", "PCID": "override"})
    layered = lead_context(lead, variables={"OFFER_ID": "7", "PCID": "override"}, lead_layer=layer)
    assert {k: v for k, v in layered.items() if k not in clock} == {
        k: v for k, v in whole.items() if k not in clock
    }
    assert layered["PCID"] == "override" and layered["OFFER_ID"] == "7"
    assert layered["PARTNER_ID"] == str(lead.partner_id) and layered["LEAD_ID"] == lead.pcid
    assert clock <= set(layered)
    assert abs(int(layered["TIMESTAMP"]) - int(time.time())) <= 1
    assert layered["DATETIME"].endswith("+00:00") and layered["DATETIME"][:10] == layered["DATE"]
    assert "OFFER_ID" not in layer, "the layer is not changed by a call's variables"
