"""Acceptance of the Integration Builder, in a real browser against the live server: an
operator builds an integration, previews it, tests it against a local server, sees the
log entry and the figures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect
from werkzeug import Response

from integrations.models import Integration, RequestLog
from tests.factories.structures import make_lead_setup

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

INTEGRATIONS = "/admin/integrations/integration/"
SAMPLE_PCID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # integrations.context.sample_context


@pytest.fixture
def buyer(httpserver: Any) -> Any:
    """A local JSON buyer (pytest-httpserver, loopback: allowed in tests only)."""

    def handler(request: Any) -> Response:
        body = json.dumps({"status": "accepted", "id": "BUY-1001"})
        return Response(body, content_type="application/json")

    httpserver.expect_request("/api/leads", method="POST").respond_with_handler(handler)
    return httpserver


def add_row(page: Any, prefix: str) -> None:
    """Unfold's "Add another …" link of an inline (prefix = the related name)."""
    page.locator(f"#{prefix}-group a.add-row").click()


def full_page_shot(page: Any, name: str) -> Path:
    shot = Path(settings.VAR_DIR) / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1440, "height": height})
    page.screenshot(path=str(shot))
    page.set_viewport_size({"width": 1440, "height": 900})
    return shot


def test_operator_builds_previews_and_tests_an_integration_then_sees_log_and_figures(
    e2e_page: Any, live_server: Any, admin_login: Any, buyer: Any
) -> None:
    page = e2e_page
    setup = make_lead_setup("Buildco")
    admin_login(setup.operator.username, "/admin/")

    # Integrations -> add: name, workspace, status enabled. Saving opens the builder.
    page.locator(f'a[href="{INTEGRATIONS}"]').first.click()
    expect(page).to_have_url(re.compile(re.escape(INTEGRATIONS) + "$"))
    page.locator(f'a[href="{INTEGRATIONS}add/"]').first.click()
    page.fill("#id_name", "Local JSON buyer")
    page.select_option("#id_workspace", label=setup.workspace.name)
    page.select_option("#id_status", "enabled")
    page.locator('[name="_save"]').first.click()
    integration = Integration.objects.get(name="Local JSON buyer")
    step = integration.requests.get()
    assert (integration.workspace_id, integration.status) == (setup.workspace.pk, "enabled")
    builder_url = f"/admin/integrations/requeststep/{step.pk}/change/"
    expect(page).to_have_url(re.compile(re.escape(builder_url) + "$"))
    expect(page.get_by_text("Now describe the request.")).to_be_visible()

    # The request: URL of the local buyer, POST, JSON; two body fields, a rule, a capture.
    endpoint = buyer.url_for("/api/leads")
    page.fill("#id_url", endpoint)
    page.select_option("#id_method", "POST")
    page.select_option("#id_body_format", "json")
    add_row(page, "body_fields")
    add_row(page, "body_fields")
    page.fill("#id_body_fields-0-name", "contact.email")
    page.fill("#id_body_fields-0-value", "{{g_email | lower}}")
    page.fill("#id_body_fields-1-position", "1")
    page.fill("#id_body_fields-1-name", "ref")
    page.fill("#id_body_fields-1-value", "{{PCID}}")
    add_row(page, "rules")
    page.select_option("#id_rules-0-source", "body")
    page.select_option("#id_rules-0-key_kind", "json_path")
    page.fill("#id_rules-0-key", "status")
    page.select_option("#id_rules-0-operator", "equals")
    page.fill("#id_rules-0-value", "accepted")
    page.select_option("#id_rules-0-outcome", "accepted")
    add_row(page, "captures")
    page.fill("#id_captures-0-key", "id")
    page.select_option("#id_captures-0-target", "buyer_lead_id")
    page.locator('[name="_continue"]').first.click()
    expect(page).to_have_url(re.compile(re.escape(builder_url) + "$"))
    expect(page.locator(".errornote")).to_have_count(0)
    step.refresh_from_db()
    assert (step.url, step.method, step.body_format) == (endpoint, "POST", "json")
    assert [(b.name, b.value) for b in step.body_fields.all()] == [
        ("contact.email", "{{g_email | lower}}"),
        ("ref", "{{PCID}}"),
    ]
    rule = step.rules.get()
    assert (rule.key, rule.operator, rule.value, rule.outcome) == (
        "status",
        "equals",
        "accepted",
        "accepted",
    )
    assert step.captures.get().target == "buyer_lead_id"

    # The preview panel shows the JSON body rendered from sample values.
    body = page.locator("#preview-panel .request-body")
    expect(body).to_be_visible()
    expect(page.locator("#preview-panel .request-url")).to_have_text(endpoint)
    assert json.loads(body.inner_text()) == {
        "contact": {"email": "jane.doe@example.com"},
        "ref": SAMPLE_PCID,
    }
    assert buyer.log == []  # a preview sends nothing
    full_page_shot(page, "e2e-integration-builder.png")

    # Test endpoint: sample values (a mixed-case email: the filter shows), send.
    page.locator("#open-test").click()
    expect(page).to_have_url(re.compile(rf"/admin/integrations/requeststep/{step.pk}/test/$"))
    values = json.loads(page.locator("#test-values").input_value())
    assert set(values) == {"g_email", "PCID"}
    values["g_email"] = "Jane.Buyer@Example.COM"
    page.fill("#test-values", json.dumps(values))
    page.locator("#send-test").click()
    expect(page.locator("#response-status")).to_have_text("200")
    expect(page.locator("#outcome .outcome-kind")).to_have_text("accepted")
    expect(page.locator("#captured")).to_contain_text("buyer_lead_id")
    expect(page.locator("#captured")).to_contain_text("BUY-1001")
    expect(page.locator("#response-body")).to_contain_text("BUY-1001")
    assert len(buyer.log) == 1
    assert buyer.log[0][0].get_json() == {
        "contact": {"email": "jane.buyer@example.com"},
        "ref": SAMPLE_PCID,
    }
    full_page_shot(page, "e2e-integration-test.png")

    # The log entry of that call.
    entry = RequestLog.objects.get()
    assert (entry.origin, entry.outcome, entry.status_code) == ("test", "accepted", 200)
    page.locator("#log-link").click()
    expect(page).to_have_url(re.compile(rf"/admin/integrations/requestlog/{entry.pk}/change/$"))
    expect(page.get_by_text(endpoint).first).to_be_visible()
    expect(page.get_by_text("BUY-1001").first).to_be_visible()

    # Back to the integration: figures and the latest call.
    page.locator(f'a[href="{INTEGRATIONS}"]').first.click()
    page.locator("#result_list").get_by_role("link", name="Local JSON buyer").click()
    expect(page).to_have_url(re.compile(rf"{INTEGRATIONS}{integration.pk}/change/$"))
    expect(page.locator("#fig-total")).to_have_text("1")
    expect(page.locator("#fig-success")).to_have_text("100.0 %")
    rows = page.locator("#latest-logs tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("accepted")
    expect(rows.first).to_contain_text("200")
    expect(rows.first).to_contain_text("yes")

    full_page_shot(page, "e2e-integration.png")
