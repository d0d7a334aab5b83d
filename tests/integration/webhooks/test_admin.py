"""The webhooks admin: endpoints with the URL to copy, their token and disable actions
(the old URL stops at once, answered like an unknown one), the waiting webhooks and the
inbound log with what came of each callback; another workspace's rows stay out of sight."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories.structures import make_lead_setup
from tests.integration.webhooks.conftest import make_hook
from webhooks.models import InboundWebhookRequest, WebhookEndpoint

pytestmark = pytest.mark.django_db
NOT_FOUND = b'{"code":404,"message":"Waiting Webhook not found for provided token and identifiers"}'
ENDPOINTS = "/admin/webhooks/webhookendpoint/"
WAITING = "/admin/webhooks/waitingwebhook/"
INBOUND = "/admin/webhooks/inboundwebhookrequest/"


@pytest.fixture
def operator(lead_setup) -> Client:
    client = Client()
    client.force_login(lead_setup.operator)
    return client


def test_the_endpoint_page_shows_the_url_to_copy(lead_setup, hook, operator, settings):
    settings.PUBLIC_BASE_URL = "https://leads.example.com"
    page = operator.get(f"{ENDPOINTS}{hook.endpoint.pk}/change/").content.decode()
    url = f"https://leads.example.com/webhooks/{hook.endpoint.webhook_id}/{hook.token}/"
    assert f'value="{url}"' in page and "data-copy-button" in page
    listing = operator.get(ENDPOINTS).content.decode()
    assert hook.endpoint.webhook_id in listing and hook.token not in listing


@pytest.mark.parametrize("action", ["disable", "rotate_token"])
def test_the_admin_actions_stop_the_old_url_at_once(hook, lead, operator, action):
    run = hook.start(lead)
    response = operator.post(
        ENDPOINTS, {"action": action, "_selected_action": [hook.endpoint.pk]}, follow=True
    )
    assert response.status_code == 200
    old = hook.call(json_body={"pcid": lead.pcid, "status": "sold"})
    assert (old.status_code, old.content) == (404, NOT_FOUND)
    assert not InboundWebhookRequest.objects.exists()  # answered like an unknown URL
    endpoint = WebhookEndpoint.objects.get(pk=hook.endpoint.pk)
    if action == "rotate_token":
        # The page shows the new URL, which works.
        from integrations import secrets

        new_token = secrets.decrypt(endpoint.token_encrypted)
        assert new_token != hook.token
        hook.token = new_token
        assert hook.call(json_body={"pcid": lead.pcid, "status": "sold"}).status_code == 200
        assert hook.waiting(run).status == "matched"
    else:
        assert endpoint.is_enabled is False


def test_waiting_webhooks_and_the_inbound_log_show_what_came_of_each_callback(
    lead_setup, hook, lead, operator, django_capture_on_commit_callbacks
):
    run = hook.start(lead)
    listing = operator.get(WAITING).content.decode()
    assert lead.pcid in listing and "Waiting" in listing
    hook.call(json_body={"pcid": "0" * 32, "status": "sold"})
    with django_capture_on_commit_callbacks(execute=True):
        hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "5.25"})
        hook.call(json_body={"pcid": lead.pcid, "status": "sold", "price": "5.25"})
    log = operator.get(INBOUND).content.decode()
    for shown in ("Matched", "Duplicate (already matched)", "Not matched yet"):
        assert shown in log, shown
    waiting = hook.waiting(run)
    assert f"waiting {waiting.pk}" in log
    detail = operator.get(f"{WAITING}{waiting.pk}/change/").content.decode()
    assert "price=5.25" in detail and "Matched" in detail
    inbound = InboundWebhookRequest.objects.filter(status="matched").get()
    page = operator.get(f"{INBOUND}{inbound.pk}/change/").content.decode()
    assert hook.token not in page  # the log never shows the token


def test_another_workspaces_endpoints_and_log_are_out_of_sight(lead_setup, hook, lead):
    other = make_lead_setup("Bravo")
    foreign = make_hook(other, webhook_id="wh_bravo")
    foreign.call(json_body={"pcid": lead.pcid})
    client = Client()
    client.force_login(lead_setup.operator)
    assert "wh_bravo" not in client.get(ENDPOINTS).content.decode()
    assert client.get(f"{ENDPOINTS}{foreign.endpoint.pk}/change/").status_code in (302, 404)
    inbound = InboundWebhookRequest.objects.get()
    assert client.get(f"{INBOUND}{inbound.pk}/change/").status_code in (302, 404)
