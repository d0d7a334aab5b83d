"""The builder's preview follows the form as it is edited, before saving; nothing is sent
and the write-only secret never shows."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from integrations import services
from integrations.models import Integration, RequestBodyField, RequestLog, RequestStep

pytestmark = pytest.mark.django_db
SECRET = "tok-live-preview-999"


@pytest.fixture
def step(lead_setup) -> RequestStep:
    integration = Integration.objects.create(workspace=lead_setup.workspace, name="Live")
    step = RequestStep.objects.create(
        workspace=lead_setup.workspace, integration=integration,
        url="https://buyer.example.com/saved", body_format="json", auth_type="bearer",
    )  # fmt: skip
    services.request_secret_set(step=step, secret=SECRET)
    RequestBodyField.objects.create(request=step, name="saved_field", value="{{g_email}}")
    return step


def _form(**overrides: str) -> dict[str, str]:
    data = {
        "method": "POST", "url": "https://buyer.example.com/edited?k={{SECRET}}",
        "body_format": "json", "xml_root": "request", "timeout_seconds": "5",
        "auth_type": "bearer", "auth_name": "",
        "headers-TOTAL_FORMS": "0", "query_params-TOTAL_FORMS": "0",
        "body_fields-TOTAL_FORMS": "3",
        "body_fields-0-position": "2", "body_fields-0-name": "contact.email",
        "body_fields-0-value": "{{g_email | upper}}",
        "body_fields-1-position": "1", "body_fields-1-name": "ref",
        "body_fields-1-value": "{{PCID}}",
        "body_fields-2-position": "0", "body_fields-2-name": "gone",
        "body_fields-2-value": "x", "body_fields-2-DELETE": "on",
    }  # fmt: skip
    return data | overrides


def test_unsaved_form_is_rendered_not_the_saved_request(client, lead_setup, step):
    client.force_login(lead_setup.operator)
    url = reverse("admin:integrations_requeststep_preview", args=[step.pk])
    html = client.post(url, _form()).content.decode()
    assert "https://buyer.example.com/edited" in html and "/saved" not in html
    assert "Unsaved changes included" in html
    body = html.split('request-body">', 1)[1].split("</pre>", 1)[0]
    data = json.loads(body.replace("&quot;", '"'))
    assert data["contact"] == {"email": "JANE.DOE@EXAMPLE.COM"}  # sample values
    assert list(data) == ["ref", "contact"]  # ordered by position, deleted row gone
    assert SECRET not in html  # used in the URL but masked
    assert RequestLog.objects.count() == 0


def test_unsaved_form_with_a_lead_and_a_broken_template(client, lead_setup, step):
    from structures import services as lead_services

    lead = lead_services.lead_intake(
        api_key=lead_setup.api_key, payload=lead_setup.valid_payload(4)
    ).lead
    client.force_login(lead_setup.operator)
    url = reverse("admin:integrations_requeststep_preview", args=[step.pk])
    html = client.post(url, _form(lead=lead.pcid)).content.decode()
    assert lead.data["g_email"].upper() in html and lead.pcid in html
    broken = client.post(url, _form(**{"body_fields-0-value": "{{g_email | nope}}"}))
    assert broken.status_code == 200 and "could not be built" in broken.content.decode()
