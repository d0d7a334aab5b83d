"""Request steps against real local buyers that speak form, XML and query strings, and
every outcome a rule can give; secrets rotate without losing any."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from werkzeug import Response

from integrations import secrets, services
from integrations.context import lead_context
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from structures import services as lead_services

pytestmark = pytest.mark.django_db


def _step(setup, url, *, body_format, method="POST", fields=(), rules=(), captures=()):
    integration = Integration.objects.create(
        workspace=setup.workspace, name=f"{body_format} buyer", status="enabled"
    )
    step = RequestStep.objects.create(
        workspace=setup.workspace, integration=integration, url=url, method=method,
        body_format=body_format, xml_root="lead",
    )  # fmt: skip
    for i, (name, value) in enumerate(fields):
        RequestBodyField.objects.create(request=step, position=i, name=name, value=value)
    for i, rule in enumerate(rules):
        ResponseRule.objects.create(request=step, position=i, **rule)
    for i, capture in enumerate(captures):
        ResponseCapture.objects.create(request=step, position=i, **capture)
    return step


def _lead(setup, n=0, **extra):
    payload = setup.valid_payload(n) | extra
    return lead_services.lead_intake(api_key=setup.api_key, payload=payload).lead


def test_form_buyer_receives_urlencoded_values_and_text_answer_is_read(lead_setup, httpserver):
    def handler(request):
        got = parse_qs(request.get_data(as_text=True))
        ok = got.get("email") == ["o'brien+x@example.com"] and got.get("note") == ['a&b=c "q"']
        return Response("OK 123" if ok else "ERROR bad data", content_type="text/plain")

    httpserver.expect_request("/form", method="POST").respond_with_handler(handler)
    step = _step(
        lead_setup, httpserver.url_for("/form"), body_format="form",
        fields=[("email", "{{g_email}}"), ("note", 'a&b=c "q"')],
        rules=[{"source": "body", "key_kind": "regex", "key": r"^(OK)", "operator": "equals",
                "value": "OK", "outcome": "accepted"}],
        captures=[{"source": "body", "key_kind": "regex", "key": r"OK (\d+)",
                   "target": "buyer_lead_id"}],
    )  # fmt: skip
    lead = _lead(lead_setup, g_email="O'Brien+x@example.com")
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert run.outcome.kind == "accepted" and run.outcome.buyer_lead_id == "123"


def test_xml_buyer_gets_escaped_xml_and_xpath_rules_decide(lead_setup, httpserver):
    from defusedxml import ElementTree

    def handler(request):
        doc = ElementTree.fromstring(request.get_data())
        name = doc.findtext("contact/first")
        status = "duplicate" if name == "Dupe" else "accepted"
        return Response(
            f"<response><status>{status}</status><price>7.25</price></response>",
            content_type="application/xml",
        )

    httpserver.expect_request("/xml", method="POST").respond_with_handler(handler)
    step = _step(
        lead_setup, httpserver.url_for("/xml"), body_format="xml",
        fields=[("contact.first", "{{g_first_name}}"), ("contact.email", "{{g_email}}")],
        rules=[
            {"source": "body", "key_kind": "xpath", "key": "//status/text()",
             "operator": "equals", "value": "accepted", "outcome": "accepted"},
            {"source": "body", "key_kind": "xpath", "key": "//status/text()",
             "operator": "equals", "value": "dup*", "outcome": "duplicate"},
        ],
        captures=[{"source": "body", "key_kind": "xpath", "key": "//price/text()",
                   "target": "price"}],
    )  # fmt: skip
    lead = _lead(lead_setup, 1, g_first_name="<Jo & 'Al'>")
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert run.outcome.kind == "accepted" and str(run.outcome.price) == "7.25"
    assert b"&lt;Jo &amp; 'Al'&gt;" in run.built.body
    dupe = _lead(lead_setup, 2, g_first_name="Dupe")
    assert services.request_run(step=step, context=lead_context(dupe)).outcome.kind == "duplicate"


def test_query_buyer_and_pending_outcome_with_status_code_rule(lead_setup, httpserver):
    def handler(request):
        assert request.args["zip"] == "20500" and request.args["ref"]
        return Response('{"state": "queued"}', status=202, content_type="application/json")

    httpserver.expect_request("/q", method="GET").respond_with_handler(handler)
    step = _step(
        lead_setup, httpserver.url_for("/q"), body_format="query", method="GET",
        fields=[("zip", "{{g_zip}}"), ("ref", "{{PCID}}")],
        rules=[{"source": "status", "key_kind": "none", "key": "", "operator": "equals",
                "value": "202", "outcome": "pending", "reason": "Queued by the buyer"}],
    )  # fmt: skip
    lead = _lead(lead_setup, 3)
    run = services.request_run(step=step, context=lead_context(lead), lead=lead)
    assert (run.outcome.kind, run.outcome.reason) == ("pending", "Queued by the buyer")
    assert len(httpserver.log) == 1


def test_secrets_rotate_to_a_new_key_without_losing_any(lead_setup, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.INTEGRATION_SECRET_KEYS = [old]
    secrets.reset_cache()
    step = _step(lead_setup, "https://buyer.example.com/", body_format="json")
    services.request_secret_set(step=step, secret="buyer-token-1")
    settings.INTEGRATION_SECRET_KEYS = [new, old]
    call_command("integration_secrets_rotate")
    settings.INTEGRATION_SECRET_KEYS = [new]
    secrets.reset_cache()
    step.refresh_from_db()
    assert secrets.decrypt(step.auth_secret_encrypted) == "buyer-token-1"
    settings.INTEGRATION_SECRET_KEYS = [old]
    secrets.reset_cache()
    with pytest.raises(secrets.SecretUnreadable):
        secrets.decrypt(step.auth_secret_encrypted)
    secrets.reset_cache()
