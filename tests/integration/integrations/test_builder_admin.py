"""The Integration Builder in the admin, through the Django test client as an operator
(owner of one workspace) would use it: create an integration and land on its request
builder; save a request (private addresses, unknown filters and unknown names, the
write-only secret); preview it from sample values or a real lead; test it against a real
local server; check a sample response; install from the library; export and import; and
another workspace's operator reaching none of it.

Every refusal has its positive control (the same request with the one bad value fixed is
accepted), so a page that refuses everything cannot pass.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils.html import escape
from werkzeug import Response

from integrations import secrets, services
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestLog,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from structures import services as structure_services
from structures.choices import Role
from structures.models import Lead, Membership
from tests.factories.structures import LeadSetup, UserFactory, make_lead_setup

pytestmark = pytest.mark.django_db

SECRET = "tok-Zq81-very-secret"
INLINES = ("headers", "query_params", "body_fields", "rules", "captures")
PUBLIC_URL = "https://93.184.216.34/leads"  # a literal public address: no DNS needed
SAMPLE_PCID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # integrations.context.sample_context


# --- helpers -----------------------------------------------------------------------------


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def step_url(name: str, step: RequestStep) -> str:
    return reverse(f"admin:integrations_requeststep_{name}", args=[step.pk])


def make_integration(setup: LeadSetup, *, name: str = "Buyer", status: str = "enabled",
                     url: str = PUBLIC_URL) -> RequestStep:  # fmt: skip
    integration = services.integration_create(
        workspace_id=setup.workspace.pk, name=name, status=status, url=url
    )
    return integration.requests.get()


def step_form(step: RequestStep, rows: dict[str, list[dict[str, Any]]] | None = None,
              **fields: Any) -> dict[str, Any]:  # fmt: skip
    """The POST of the builder page: the step's current values, `fields` over them, and
    `rows` as new inline rows (the step's existing rows are kept as they are)."""
    data: dict[str, Any] = {
        "integration": step.integration_id, "name": step.name, "meaning": step.meaning,
        "position": step.position, "method": step.method, "url": step.url,
        "body_format": step.body_format, "xml_root": step.xml_root,
        "timeout_seconds": step.timeout_seconds, "auth_type": step.auth_type,
        "auth_name": step.auth_name, "default_outcome": step.default_outcome,
        "new_secret": "", "_continue": "Save and continue editing",
    }  # fmt: skip
    data.update(fields)
    existing = {
        "headers": list(step.headers.all()), "query_params": list(step.query_params.all()),
        "body_fields": list(step.body_fields.all()), "rules": list(step.rules.all()),
        "captures": list(step.captures.all()),
    }  # fmt: skip
    for prefix in INLINES:
        old = existing[prefix]
        new = (rows or {}).get(prefix, [])
        data.update({
            f"{prefix}-TOTAL_FORMS": len(old) + len(new), f"{prefix}-INITIAL_FORMS": len(old),
            f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000,
        })  # fmt: skip
        for i, row in enumerate(old):
            data[f"{prefix}-{i}-id"] = row.pk
            data[f"{prefix}-{i}-request"] = step.pk
            for name in ("position", "name", "value", "source", "key_kind", "key", "operator",
                         "value2", "outcome", "reason", "target", "target_name"):  # fmt: skip
                if hasattr(row, name):
                    data[f"{prefix}-{i}-{name}"] = getattr(row, name)
            if getattr(row, "and_next", False):
                data[f"{prefix}-{i}-and_next"] = "on"
        for j, row in enumerate(new, start=len(old)):
            data[f"{prefix}-{j}-request"] = step.pk
            for name, value in row.items():
                data[f"{prefix}-{j}-{name}"] = value
    return data


def add_json_rows(step: RequestStep, *, url: str) -> None:
    """A JSON buyer step: bearer secret, a header, two body fields, two rules, a capture."""
    RequestStep.objects.filter(pk=step.pk).update(url=url, auth_type="bearer")
    step.refresh_from_db()
    services.request_secret_set(step=step, secret=SECRET)
    RequestHeader.objects.create(request=step, name="X-Source", value="leadrelay")
    RequestBodyField.objects.create(
        request=step, position=0, name="contact.email", value="{{g_email | lower}}"
    )
    RequestBodyField.objects.create(request=step, position=1, name="ref", value="{{PCID}}")
    ResponseRule.objects.create(
        request=step, position=0, key="status", value="accepted", outcome="accepted"
    )
    ResponseRule.objects.create(
        request=step, position=1, key="status", value="rej*", outcome="rejected",
        reason="Refused by the buyer",
    )  # fmt: skip
    ResponseCapture.objects.create(request=step, key="id", target="buyer_lead_id")


def a_lead(setup: LeadSetup, email: str = "Mixed.Case@Example.com") -> Lead:
    payload = setup.valid_payload(7) | {"g_email": email}
    return structure_services.lead_intake(api_key=setup.api_key, payload=payload).lead


def form_errors(response: Any) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


def inline_errors(response: Any, prefix: str) -> list[dict[str, list[str]]]:
    for inline in response.context["inline_admin_formsets"]:
        if inline.formset.prefix == prefix:
            return inline.formset.errors
    raise AssertionError(f"no inline {prefix!r} on the page")


def message_texts(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def setup(db: None) -> LeadSetup:
    return make_lead_setup("Acme")


@pytest.fixture
def operator(setup: LeadSetup) -> Client:
    return client_for(setup.operator)


# --- creating an integration and saving its request -----------------------------------------


def test_adding_an_integration_redirects_to_its_request_builder(setup, operator):
    response = operator.post(
        reverse("admin:integrations_integration_add"),
        {
            "workspace": setup.workspace.pk, "name": "New buyer", "status": "enabled",
            "category": "buyer", "country": "", "description": "",
            "requests-TOTAL_FORMS": 0, "requests-INITIAL_FORMS": 0,
            "requests-MIN_NUM_FORMS": 0, "requests-MAX_NUM_FORMS": 1000,
            "_save": "Save",
        },
    )  # fmt: skip
    integration = Integration.objects.get(name="New buyer")
    step = integration.requests.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:integrations_requeststep_change", args=[step.pk])
    assert (integration.workspace_id, integration.status) == (setup.workspace.pk, "enabled")
    assert step.workspace_id == setup.workspace.pk
    builder = operator.get(response["Location"])
    assert builder.status_code == 200
    assert step_url("test", step) in builder.content.decode()
    assert step_url("preview", step) in builder.content.decode()


def test_adding_an_integration_with_its_request_rows_makes_no_extra_request(setup, operator):
    """Requests typed on the add page are the integration's requests; the empty default
    request is only made when none was typed."""
    response = operator.post(
        reverse("admin:integrations_integration_add"),
        {
            "workspace": setup.workspace.pk, "name": "Typed", "status": "test",
            "category": "buyer", "country": "", "description": "",
            "requests-TOTAL_FORMS": 1, "requests-INITIAL_FORMS": 0,
            "requests-MIN_NUM_FORMS": 0, "requests-MAX_NUM_FORMS": 1000,
            "requests-0-position": 0, "requests-0-name": "Post", "requests-0-meaning": "post",
            "requests-0-method": "POST", "requests-0-url": PUBLIC_URL, "_save": "Save",
        },
    )  # fmt: skip
    integration = Integration.objects.get(name="Typed")
    assert [(s.name, s.url) for s in integration.requests.all()] == [("Post", PUBLIC_URL)]
    step = integration.requests.get()
    assert step.workspace_id == setup.workspace.pk
    assert response["Location"] == reverse("admin:integrations_requeststep_change", args=[step.pk])


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/leads",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.20:8080/post",
        "https://[fd00::1]/x",
        "http://100.64.0.1/cgnat",
        "gopher://93.184.216.34/",
    ],
)
def test_request_url_at_a_private_address_is_refused_on_the_url_field(setup, operator, url):
    step = make_integration(setup)
    response = operator.post(step_url("change", step), step_form(step, url=url))
    assert response.status_code == 200
    assert any("cannot be called" in e for e in form_errors(response)["url"]), form_errors(response)
    step.refresh_from_db()
    assert step.url == PUBLIC_URL
    # Positive control: the same form with a public address saves.
    ok = operator.post(step_url("change", step), step_form(step, url="https://93.184.216.35/x"))
    assert ok.status_code == 302
    step.refresh_from_db()
    assert step.url == "https://93.184.216.35/x"


def test_private_address_is_refused_in_the_request_rows_of_the_integration_page(setup, operator):
    """The integration page lists its requests inline, URL included: the same check."""
    step = make_integration(setup)
    integration = step.integration

    def post(url: str) -> Any:
        return operator.post(
            reverse("admin:integrations_integration_change", args=[integration.pk]),
            {
                "workspace": setup.workspace.pk, "name": integration.name,
                "status": integration.status, "category": integration.category,
                "country": "", "description": "",
                "requests-TOTAL_FORMS": 1, "requests-INITIAL_FORMS": 1,
                "requests-MIN_NUM_FORMS": 0, "requests-MAX_NUM_FORMS": 1000,
                "requests-0-id": step.pk, "requests-0-integration": integration.pk,
                "requests-0-position": 0, "requests-0-name": step.name,
                "requests-0-meaning": step.meaning, "requests-0-method": step.method,
                "requests-0-url": url, "_continue": "Save",
            },
        )  # fmt: skip

    refused = post("http://169.254.169.254/latest")
    assert refused.status_code == 200
    errors = inline_errors(refused, "requests")
    assert any("cannot be called" in e for e in errors[0].get("url", [])), errors
    step.refresh_from_db()
    assert step.url == PUBLIC_URL
    assert post("https://93.184.216.35/y").status_code == 302
    step.refresh_from_db()
    assert step.url == "https://93.184.216.35/y"


def test_an_integration_keeps_its_workspace_with_its_requests(setup, operator):
    """Its requests and logs carry the workspace too; the page cannot move it alone."""
    step = make_integration(setup)
    integration = step.integration
    second = make_lead_setup("Second").workspace
    Membership.objects.create(workspace=second, user=setup.operator, role=Role.OWNER)
    page = operator.get(reverse("admin:integrations_integration_change", args=[integration.pk]))
    assert 'name="workspace"' not in page.content.decode()
    response = operator.post(
        reverse("admin:integrations_integration_change", args=[integration.pk]),
        {
            "workspace": second.pk, "name": "Renamed", "status": "enabled",
            "category": "buyer", "country": "", "description": "",
            "requests-TOTAL_FORMS": 0, "requests-INITIAL_FORMS": 0,
            "requests-MIN_NUM_FORMS": 0, "requests-MAX_NUM_FORMS": 1000, "_continue": "Save",
        },
    )  # fmt: skip
    assert response.status_code == 302
    integration.refresh_from_db()
    step.refresh_from_db()
    assert integration.name == "Renamed"  # the rest of the form was saved
    assert integration.workspace_id == step.workspace_id == setup.workspace.pk
    assert operator.post(step_url("change", step), step_form(step)).status_code == 302


def test_unknown_filter_in_a_body_value_is_refused(setup, operator):
    step = make_integration(setup)
    bad = step_form(step, {"body_fields": [{"position": 0, "name": "email",
                                            "value": "{{g_email | shout}}"}]})  # fmt: skip
    response = operator.post(step_url("change", step), bad)
    assert response.status_code == 200
    errors = inline_errors(response, "body_fields")
    assert any("shout" in e for e in errors[0]["value"]), errors
    assert not RequestBodyField.objects.filter(request=step).exists()
    good = step_form(step, {"body_fields": [{"position": 0, "name": "email",
                                             "value": "{{g_email | lower}}"}]})  # fmt: skip
    assert operator.post(step_url("change", step), good).status_code == 302
    assert RequestBodyField.objects.get(request=step).value == "{{g_email | lower}}"


def test_unknown_name_is_saved_with_a_warning(setup, operator):
    step = make_integration(setup)
    data = step_form(step, {"body_fields": [
        {"position": 0, "name": "email", "value": "{{g_emial}}"},
        {"position": 1, "name": "ref", "value": "{{PCID}}"},
    ]})  # fmt: skip
    response = operator.post(step_url("change", step), data)
    assert response.status_code == 302
    assert [f.value for f in RequestBodyField.objects.filter(request=step)] == [
        "{{g_emial}}", "{{PCID}}"
    ]  # fmt: skip
    warnings = [m for m in message_texts(response) if m.startswith("Check the templates")]
    assert warnings == ["Check the templates: unknown name 'g_emial'"]


def test_secret_is_write_only_and_stored_encrypted(setup, operator):
    step = make_integration(setup)
    data = step_form(step, auth_type="bearer", new_secret=SECRET)
    assert operator.post(step_url("change", step), data).status_code == 302

    stored = RequestStep.objects.values_list("auth_secret_encrypted", flat=True).get(pk=step.pk)
    assert stored and SECRET not in stored and secrets.decrypt(stored) == SECRET
    page = operator.get(step_url("change", step)).content.decode()
    assert SECRET not in page and stored not in page
    assert "Stored (encrypted)" in page

    # A refused save re-renders the form: the typed secret is not echoed back either.
    step.refresh_from_db()
    refused = operator.post(
        step_url("change", step),
        step_form(step, url="http://10.0.0.5/", new_secret="another-secret-123"),
    )
    assert refused.status_code == 200 and "another-secret-123" not in refused.content.decode()

    # Saving without typing a secret keeps it; "remove" clears it.
    assert operator.post(step_url("change", step), step_form(step)).status_code == 302
    step.refresh_from_db()
    assert secrets.decrypt(step.auth_secret_encrypted) == SECRET
    assert operator.post(step_url("change", step),
                         step_form(step, clear_secret="on")).status_code == 302  # fmt: skip
    step.refresh_from_db()
    assert step.auth_secret_encrypted == ""


# --- preview, test endpoint, sample response -------------------------------------------------


def test_preview_renders_url_and_body_from_sample_values(setup, operator):
    step = make_integration(setup)
    add_json_rows(step, url="https://93.184.216.34/leads?src={{SUB1}}")
    response = operator.get(step_url("preview", step))
    assert response.status_code == 200
    masked = response.context["masked"]
    assert masked["url"] == "https://93.184.216.34/leads?src=sub1"
    assert json.loads(masked["body"]) == {
        "contact": {"email": "jane.doe@example.com"}, "ref": SAMPLE_PCID
    }  # fmt: skip
    html = response.content.decode()
    assert "Rendered from sample values" in html and SAMPLE_PCID in html
    assert "Authorization: Bearer ***" in html and SECRET not in html
    assert RequestLog.objects.count() == 0  # a preview is not a call


def test_preview_renders_from_a_real_lead_of_the_workspace(setup, operator):
    step = make_integration(setup)
    add_json_rows(step, url=PUBLIC_URL)
    lead = a_lead(setup, email="Mixed.Case@Example.com")
    response = operator.get(step_url("preview", step), {"lead": lead.pcid})
    assert response.status_code == 200
    assert response.context["lead"] == lead
    assert json.loads(response.context["masked"]["body"]) == {
        "contact": {"email": lead.data["g_email"].lower()}, "ref": lead.pcid
    }  # fmt: skip
    assert f"Rendered from lead <code>{lead.pcid}</code>" in response.content.decode()

    # A lead of another workspace is not found (and not rendered) for this operator.
    other = make_lead_setup("Other")
    foreign = a_lead(other, email="foreign.person@example.com")
    response = operator.get(step_url("preview", step), {"lead": foreign.pcid})
    html = response.content.decode()
    assert "No such lead." in html and "foreign.person" not in html and foreign.pcid not in html


@pytest.fixture
def buyer(httpserver: Any) -> Any:
    """A local JSON buyer that accepts and answers its own id."""

    def handler(request: Any) -> Response:
        return Response(
            json.dumps({"status": "accepted", "id": "B-42", "echo": request.get_json()["ref"]}),
            content_type="application/json",
        )

    httpserver.expect_request("/leads", method="POST").respond_with_handler(handler)
    return httpserver


def test_test_endpoint_sends_shows_request_response_outcome_and_logs(setup, operator, buyer):
    step = make_integration(setup, status="test")  # the test endpoint sends in test mode too
    add_json_rows(step, url=buyer.url_for("/leads"))

    page = operator.get(step_url("test", step))
    assert page.status_code == 200
    assert json.loads(page.context["values_text"])["g_email"] == "jane.doe@example.com"

    values = json.dumps({"g_email": "Jane.DOE@Example.com", "PCID": "pc-123"})
    response = operator.post(step_url("test", step), {"lead": "", "values": values})
    assert response.status_code == 200
    # What the buyer received: the real secret, the rendered body.
    assert len(buyer.log) == 1
    received = buyer.log[0][0]
    assert received.headers["Authorization"] == f"Bearer {SECRET}"
    assert received.get_json() == {"contact": {"email": "jane.doe@example.com"}, "ref": "pc-123"}
    # What the page shows: the exact request, secret masked; the response; the outcome.
    html = response.content.decode()
    assert SECRET not in html
    assert "Authorization: Bearer ***" in html
    assert f'POST</span> <code class="break-all request-url">{buyer.url_for("/leads")}' in html
    assert json.loads(response.context["masked"]["body"]) == received.get_json()
    assert '<span class="font-semibold" id="response-status">200</span>' in html
    assert "B-42" in response.context["response_body"]
    assert '<span class="font-semibold outcome-kind">accepted</span>' in html
    assert response.context["run"].outcome.captured == {"buyer_lead_id": "B-42"}
    # The log row: origin "test", sent, secret masked, linked from the page.
    entry = RequestLog.objects.get()
    assert (entry.origin, entry.was_sent, entry.outcome, entry.status_code) == (
        "test", True, "accepted", 200
    )  # fmt: skip
    assert entry.integration_id == step.integration_id and entry.request_step_id == step.pk
    assert SECRET not in json.dumps([entry.url, entry.request_headers, entry.request_body])
    assert entry.captured == {"buyer_lead_id": "B-42"}
    assert reverse("admin:integrations_requestlog_change", args=[entry.pk]) in html
    assert operator.get(
        reverse("admin:integrations_requestlog_change", args=[entry.pk])
    ).status_code == 200  # fmt: skip


def test_a_log_row_shows_headers_as_lines_and_a_json_body_indented(setup, operator):
    step = make_integration(setup)
    entry = RequestLog.objects.create(
        workspace=setup.workspace, integration=step.integration, request_step=step,
        method="POST", url=PUBLIC_URL,
        request_headers=[["Content-Type", "application/json"], ["X-Key", "********"]],
        request_body='{"email":"jane@example.com","tags":["a","b"],"note":"<script>x</script>"}',
        status_code=200, response_headers=[["Content-Type", "text/xml"]],
        response_body="<response><status>ok</status></response>", outcome="accepted",
    )  # fmt: skip

    html = operator.get(reverse("admin:integrations_requestlog_change", args=[entry.pk]))
    html = html.content.decode()

    def block(block_id: str) -> str:
        found = re.search(rf'<pre [^>]*id="{block_id}"[^>]*>(.*?)</pre>', html, re.S)
        assert found, block_id
        return found.group(1)

    assert block("log-request-headers") == "Content-Type: application/json\nX-Key: ********"
    assert block("log-request-body") == (
        "{\n"
        '  &quot;email&quot;: &quot;jane@example.com&quot;,\n'
        "  &quot;tags&quot;: [\n    &quot;a&quot;,\n    &quot;b&quot;\n  ],\n"
        '  &quot;note&quot;: &quot;&lt;script&gt;x&lt;/script&gt;&quot;\n'
        "}"
    )  # fmt: skip
    assert block("log-response-headers") == "Content-Type: text/xml"
    # XML indented too, escaped.
    assert block("log-response-body") == (
        "&lt;response&gt;\n  &lt;status&gt;ok&lt;/status&gt;\n&lt;/response&gt;"
    )
    assert "<script>x" not in html


@pytest.mark.parametrize(
    "body",
    [
        # An entity is never expanded, not even for display: shown as received.
        '<!DOCTYPE r [<!ENTITY x "boom">]><r>&x;</r>',
        "<r><unclosed></r>",
        "not json {",
        "{not json",
    ],
)
def test_a_log_body_that_is_not_safe_json_or_xml_is_shown_as_received(setup, operator, body):
    step = make_integration(setup)
    entry = RequestLog.objects.create(
        workspace=setup.workspace, integration=step.integration, method="POST",
        url=PUBLIC_URL, response_body=body, outcome="error",
    )  # fmt: skip

    html = operator.get(reverse("admin:integrations_requestlog_change", args=[entry.pk]))

    shown = re.search(r'id="log-response-body"[^>]*>(.*?)</pre>', html.content.decode(), re.S)
    assert shown and shown.group(1) == escape(body)


def test_test_endpoint_with_a_real_lead_logs_that_lead(setup, operator, buyer):
    step = make_integration(setup)
    add_json_rows(step, url=buyer.url_for("/leads"))
    lead = a_lead(setup)
    response = operator.post(step_url("test", step), {"lead": lead.pcid, "values": ""})
    assert response.status_code == 200
    assert buyer.log[0][0].get_json()["ref"] == lead.pcid
    entry = RequestLog.objects.get()
    assert entry.lead == lead and entry.origin == "test"


def test_test_endpoint_refuses_bad_sample_values_without_sending(setup, operator, buyer):
    step = make_integration(setup)
    add_json_rows(step, url=buyer.url_for("/leads"))
    response = operator.post(step_url("test", step), {"lead": "", "values": "[1, 2]"})
    assert response.status_code == 200
    assert "Sample values must be a JSON object." in response.content.decode()
    assert buyer.log == [] and RequestLog.objects.count() == 0


def test_sample_response_page_shows_which_rules_hold_and_what_is_captured(setup, operator):
    step = make_integration(setup)
    add_json_rows(step, url=PUBLIC_URL)
    response = operator.post(
        step_url("sample", step),
        {
            "status_code": "200", "headers": "Content-Type: application/json",
            "body": json.dumps({"status": "rejected", "id": "X-9"}),
        },
    )  # fmt: skip
    assert response.status_code == 200
    outcome = response.context["outcome"]
    assert outcome.kind == "rejected" and outcome.reason == "Refused by the buyer"
    assert outcome.captured == {"buyer_lead_id": "X-9"}
    html = response.content.decode()
    assert '<span class="font-semibold outcome-kind">rejected</span>' in html
    # Rule 0 (status equals accepted) does not hold, rule 1 (rej*) holds and decides;
    # each rule's verdict is its own line, not a blank condition row.
    conditions = re.findall(r'trace-condition">(.*?)</tr>', html, re.S)
    assert [("accepted" in c, "rej*" in c, c.rstrip().endswith("✔</td>")) for c in conditions] == [
        (True, False, False), (False, True, True)
    ]  # fmt: skip
    verdicts = [" ".join(v.split()) for v in re.findall(r'trace-rule">\s*<td[^>]*>(.*?)</td>',
                                                        html, re.S)]  # fmt: skip
    assert verdicts == ["Rule 0 does not hold", "Rule 1 holds — decides: rejected"]
    captures = re.findall(r'trace-capture">(.*?)</tr>', html, re.S)
    assert len(captures) == 1 and "buyer_lead_id" in captures[0] and "X-9" in captures[0]
    assert "trace-note" not in html
    assert RequestLog.objects.count() == 0  # nothing sent, nothing logged

    accepted = operator.post(
        step_url("sample", step),
        {"status_code": "200", "headers": "", "body": '{"status": "accepted", "id": "A-1"}'},
    )
    assert accepted.context["outcome"].kind == "accepted"
    assert accepted.context["outcome"].captured == {"buyer_lead_id": "A-1"}

    # What the reader has to say (here: the body is not JSON) is shown as a note.
    garbled = operator.post(
        step_url("sample", step),
        {"status_code": "200", "headers": "Content-Type: application/json", "body": "{oops"},
    )
    assert garbled.context["outcome"].kind == "accepted"  # 2xx, no rule: the default
    assert re.findall(r'class="trace-note">⚠ (.*?)</li>', garbled.content.decode()) == [
        "The body is not valid JSON: it is read as text.",
        "No rule held: HTTP 200 means accepted (the default).",
    ]


# --- library, export, import -----------------------------------------------------------------


def test_library_install_creates_a_test_mode_copy_in_the_operators_workspace(setup, operator):
    library = operator.get(reverse("admin:integrations_integration_library"))
    assert (
        library.status_code == 200 and 'data-slug="generic-json-buyer"' in library.content.decode()
    )

    url = reverse("admin:integrations_integration_library")
    response = operator.post(url, {"slug": "generic-json-buyer", "workspace": setup.workspace.pk})
    integration = Integration.objects.get(library_slug="generic-json-buyer")
    assert response.status_code == 302
    assert response["Location"] == reverse(
        "admin:integrations_integration_change", args=[integration.pk]
    )
    assert integration.workspace_id == setup.workspace.pk and integration.status == "test"
    assert [s.name for s in integration.requests.all()] == ["Ping", "Post"]
    assert all(s.workspace_id == setup.workspace.pk for s in integration.requests.all())

    # Installing it again makes a second copy under another name.
    operator.post(url, {"slug": "generic-json-buyer", "workspace": setup.workspace.pk})
    assert Integration.objects.filter(library_slug="generic-json-buyer").count() == 2
    assert operator.post(url, {"slug": "no-such-entry", "workspace": setup.workspace.pk}
                         ).status_code == 404  # fmt: skip


def test_export_returns_json_and_import_of_it_makes_a_copy(setup, operator):
    step = make_integration(setup, name="Exported buyer")
    add_json_rows(step, url=PUBLIC_URL)
    response = operator.get(
        reverse("admin:integrations_integration_export", args=[step.integration_id])
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith("attachment;")
    data = json.loads(response.content)
    assert data["format"] == "leadrelay.integration/1" and data["name"] == "Exported buyer"
    assert data["requests"][0]["body"] == [["contact.email", "{{g_email | lower}}"],
                                           ["ref", "{{PCID}}"]]  # fmt: skip
    assert SECRET not in response.content.decode() and data["requests"][0]["needs_secret"]

    data["name"] = "Imported buyer"
    imported = operator.post(
        reverse("admin:integrations_integration_import"),
        {"workspace": setup.workspace.pk, "json": json.dumps(data)},
    )
    copy_ = Integration.objects.get(name="Imported buyer")
    assert imported.status_code == 302
    assert imported["Location"] == reverse("admin:integrations_integration_change", args=[copy_.pk])
    assert copy_.workspace_id == setup.workspace.pk and copy_.status == "test"
    copied_step = copy_.requests.get()
    assert [(b.name, b.value) for b in copied_step.body_fields.all()] == [
        ("contact.email", "{{g_email | lower}}"), ("ref", "{{PCID}}")
    ]  # fmt: skip
    assert copied_step.rules.count() == 2 and copied_step.captures.count() == 1
    assert copied_step.auth_secret_encrypted == ""  # secrets never travel


def test_an_exported_scenario_comes_back_through_the_import_page(setup, operator):
    """Export, then import on the page, an integration whose scenario is more than its
    default: the copy has the same elements and arrows (conditions included)."""
    from integrations.models import Connection, Element

    step = make_integration(setup, name="Scenario buyer")
    add_json_rows(step, url=PUBLIC_URL)
    integration = step.integration

    def element(name: str, kind: str, **fields: Any) -> Element:
        return Element.objects.create(
            workspace=setup.workspace, integration=integration, name=name, kind=kind, **fields
        )

    start = element("Start", "start", position=0)
    send = element("Send", "request", position=1, request_step=step)
    wait = element("Wait 30 s", "wait", position=2, config={"mode": "delay", "seconds": 30})
    rejected = [{"source": "outcome", "operator": "equals", "value": "rejected"}]
    for a, b, conditions in ((start, send, []), (send, wait, rejected), (wait, send, [])):
        Connection.objects.create(
            workspace=setup.workspace, integration=integration, from_element=a, to_element=b,
            conditions=conditions,
        )  # fmt: skip
    response = operator.get(reverse("admin:integrations_integration_export", args=[integration.pk]))
    data = json.loads(response.content)
    assert [e["kind"] for e in data["scenario"]["elements"]] == ["start", "request", "wait"]
    data["name"] = "Scenario copy"
    imported = operator.post(
        reverse("admin:integrations_integration_import"),
        {"workspace": setup.workspace.pk, "json": json.dumps(data)},
    )
    assert imported.status_code == 302, imported.content
    copy_ = Integration.objects.get(name="Scenario copy")
    arrows = {
        (c.from_element.name, c.to_element.name, json.dumps(c.conditions, sort_keys=True))
        for c in Connection.objects.filter(integration=copy_).select_related(
            "from_element", "to_element"
        )
    }
    assert arrows == {
        ("Start", "Send", "[]"), ("Send", "Wait 30 s", json.dumps(rejected, sort_keys=True)),
        ("Wait 30 s", "Send", "[]"),
    }  # fmt: skip
    assert copy_.elements.get(kind="request").request_step.integration_id == copy_.pk


def _counts() -> tuple[int, ...]:
    return tuple(
        model.objects.count()
        for model in (Integration, RequestStep, RequestBodyField, ResponseRule, ResponseCapture)
    )


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("not json", "Not valid JSON"),
        ("wrong format", "Not a Leadrelay integration"),
        ("bad operator", "requests[0].rules[1]"),
        ("unknown key", "requests[0]: unknown key 'surprise'"),
    ],
)
def test_broken_import_shows_the_error_and_writes_nothing(setup, operator, breakage, message):
    step = make_integration(setup, name="Source")
    add_json_rows(step, url=PUBLIC_URL)
    data = json.loads(
        operator.get(
            reverse("admin:integrations_integration_export", args=[step.integration_id])
        ).content
    )
    data["name"] = "Broken copy"
    broken = copy.deepcopy(data)
    if breakage == "wrong format":
        broken["format"] = "zapier/9"
    elif breakage == "bad operator":  # found only after the step and its body were written
        broken["requests"][0]["rules"][1]["operator"] = "roughly"
    elif breakage == "unknown key":
        broken["requests"][0]["surprise"] = 1
    text = "{not json" if breakage == "not json" else json.dumps(broken)
    before = _counts()
    url = reverse("admin:integrations_integration_import")
    response = operator.post(url, {"workspace": setup.workspace.pk, "json": text})
    assert response.status_code == 200
    error = response.context["error"]
    assert message in error
    assert f'id="import-error">{error}' in response.content.decode().replace("&#x27;", "'")
    assert _counts() == before
    # Positive control: the unbroken file imports.
    assert operator.post(url, {"workspace": setup.workspace.pk, "json": json.dumps(data)}
                         ).status_code == 302  # fmt: skip


# --- tenancy -----------------------------------------------------------------------------------


def test_operator_of_another_workspace_reaches_none_of_it(setup, operator, buyer):
    step = make_integration(setup, name="Acme only")
    add_json_rows(step, url=buyer.url_for("/leads"))
    lead = a_lead(setup)
    services.request_run(step=step, context={"g_email": "a@example.com"}, origin="test",
                         force_send=True)  # fmt: skip
    entry = RequestLog.objects.get()
    buyer.clear_log()
    stranger = client_for(make_lead_setup("Intruder").operator)
    integration_id = step.integration_id

    pages = [
        ("get", step_url("preview", step), {}),
        ("get", step_url("preview", step), {"lead": lead.pcid}),
        ("get", step_url("test", step), {}),
        ("post", step_url("test", step), {"lead": "", "values": "{}"}),
        ("get", step_url("sample", step), {}),
        ("post", step_url("sample", step), {"status_code": "200", "body": "{}"}),
        ("get", reverse("admin:integrations_integration_export", args=[integration_id]), {}),
    ]
    for method, url, data in pages:
        assert getattr(stranger, method)(url, data).status_code == 404, (method, url)
        assert getattr(operator, method)(url, data).status_code == 200, (method, url)

    # Change pages of the integration, its request and its log: the admin's "no such
    # object" redirect, never the page.
    for url in (
        reverse("admin:integrations_integration_change", args=[integration_id]),
        step_url("change", step),
        reverse("admin:integrations_requestlog_change", args=[entry.pk]),
    ):
        response = stranger.get(url)
        assert response.status_code == 302 and response["Location"] == reverse("admin:index")
        assert operator.get(url).status_code == 200
    # Saving the request through its change page is refused the same way.
    response = stranger.post(step_url("change", step), step_form(step, url="https://1.1.1.1/"))
    assert response.status_code == 302
    step.refresh_from_db()
    assert step.url == buyer.url_for("/leads")

    # The stranger's only send was none: the operator's test POST above was the one call.
    assert len(buyer.log) == 1

    # Installing or importing into a workspace not theirs.
    before = _counts()
    library = reverse("admin:integrations_integration_library")
    response = stranger.post(library, {"slug": "generic-json-buyer",
                                       "workspace": setup.workspace.pk})  # fmt: skip
    assert response.status_code == 404
    exported = operator.get(
        reverse("admin:integrations_integration_export", args=[integration_id])
    ).content.decode()
    response = stranger.post(
        reverse("admin:integrations_integration_import"),
        {"workspace": setup.workspace.pk, "json": exported.replace("Acme only", "Taken")},
    )
    assert response.status_code == 404
    assert _counts() == before
    assert not Integration.objects.filter(workspace=setup.workspace).exclude(pk=integration_id)


def test_viewer_may_preview_and_check_samples_but_not_send(setup, buyer):
    step = make_integration(setup)
    add_json_rows(step, url=buyer.url_for("/leads"))
    viewer = UserFactory()
    Membership.objects.create(workspace=setup.workspace, user=viewer, role=Role.VIEWER)
    client = client_for(viewer)
    assert client.get(step_url("preview", step)).status_code == 200
    assert client.post(step_url("sample", step), {"body": "{}"}).status_code == 200
    assert client.get(step_url("test", step)).status_code == 404
    assert client.post(step_url("test", step), {"values": "{}"}).status_code == 404
    assert buyer.log == [] and RequestLog.objects.count() == 0
    library = reverse("admin:integrations_integration_library")
    assert client.post(library, {"slug": "generic-json-buyer",
                                 "workspace": setup.workspace.pk}).status_code == 404  # fmt: skip
    assert not Integration.objects.filter(library_slug="generic-json-buyer").exists()
