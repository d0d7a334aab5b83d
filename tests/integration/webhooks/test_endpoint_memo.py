"""Endpoints remembered per process (services._ENDPOINT_MEMO) save the lookup's round
trip but are never trusted on their own: a change made elsewhere (another web process,
the admin, a script) takes effect on the very next callback."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations import secrets
from tests.integration.webhooks.conftest import make_lead
from webhooks import services
from webhooks.models import InboundWebhookRequest, WaitingWebhook, WebhookEndpoint

pytestmark = pytest.mark.django_db
NOT_FOUND = b'{"code":404,"message":"Waiting Webhook not found for provided token and identifiers"}'
# The endpoint read by its webhook id (PostgreSQL's statement or the portable ORM query),
# not the storing statement's check by primary key.
LOOKUP = re.compile(r'^SELECT .* FROM "?webhooks_webhookendpoint"? WHERE .*webhook_id"? = ')


def _lookups(queries: CaptureQueriesContext) -> int:
    return sum(bool(LOOKUP.search(q["sql"])) for q in queries.captured_queries)


@pytest.fixture
def two_leads(lead_setup, hook) -> tuple[Any, Any]:
    first, second = make_lead(lead_setup), make_lead(lead_setup)
    hook.start(first)
    hook.start(second)
    return first, second


def test_a_remembered_endpoint_saves_the_lookup(
    hook, two_leads, django_capture_on_commit_callbacks
):
    first, second = two_leads
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as q:
        assert hook.call(json_body={"pcid": first.pcid, "status": "sold"}).status_code == 200
    assert _lookups(q) == 1
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as q:
        assert hook.call(json_body={"pcid": second.pcid, "status": "sold"}).status_code == 200
    assert _lookups(q) == 0


def _elsewhere(endpoint: WebhookEndpoint, change: str) -> None:
    """What another process does: a plain UPDATE this process's memo knows nothing of."""
    rows = WebhookEndpoint.objects.filter(pk=endpoint.pk)
    if change == "disabled":
        rows.update(is_enabled=False)
    elif change == "rotated":
        rows.update(token_hash=services.token_hash("another token"))
    elif change == "deleted":
        rows.update(deleted_at=timezone.now(), is_enabled=False)
    elif change == "allowlist":
        rows.update(allowed_ips="10.0.0.0/8")
    elif change == "signed":
        rows.update(
            signing_secret_encrypted=secrets.encrypt("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        )
    elif change == "id_key":
        rows.update(id_key="lead")


@pytest.mark.parametrize(
    ("change", "status", "stored"),
    [
        ("disabled", 404, None),
        ("rotated", 404, None),
        ("deleted", 404, None),
        ("allowlist", 403, InboundWebhookRequest.Status.REFUSED),
        ("signed", 401, InboundWebhookRequest.Status.REFUSED),
        ("id_key", 400, InboundWebhookRequest.Status.INVALID),
    ],
)
def test_a_change_made_elsewhere_takes_effect_on_the_next_callback(
    hook, two_leads, change, status, stored, django_capture_on_commit_callbacks
):
    first, second = two_leads
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": first.pcid, "status": "sold"}).status_code == 200
    assert hook.endpoint.webhook_id in services._ENDPOINT_MEMO
    _elsewhere(hook.endpoint, change)
    before = InboundWebhookRequest.objects.count()
    response = hook.call(json_body={"pcid": second.pcid, "status": "sold"})
    assert response.status_code == status, response.content
    if status == 404:
        assert response.content == NOT_FOUND  # exactly as for a URL that never existed
        assert InboundWebhookRequest.objects.count() == before  # nothing stored
    else:
        assert InboundWebhookRequest.objects.order_by("-id").first().status == stored
    assert WaitingWebhook.objects.get(pcid=second.pcid).status == WaitingWebhook.Status.WAITING


@pytest.mark.parametrize("request_kind", ["put", "too-large"])
def test_a_remembered_revoked_url_refuses_nothing_else_than_an_unknown_one(
    hook, two_leads, request_kind, django_capture_on_commit_callbacks
):
    first, _second = two_leads
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": first.pcid, "status": "sold"}).status_code == 200
    _elsewhere(hook.endpoint, "disabled")
    if request_kind == "put":
        response = hook.call(json_body={"pcid": first.pcid}, method="put")
    else:
        response = hook.call(raw=b"x" * (services.MAX_BODY_BYTES + 1))
    assert (response.status_code, response.content) == (404, NOT_FOUND)


def test_a_recreated_endpoint_with_the_same_id_is_read_again(
    lead_setup, hook, two_leads, django_capture_on_commit_callbacks
):
    first, second = two_leads
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"pcid": first.pcid, "status": "sold"}).status_code == 200
    services.endpoint_delete(endpoint=hook.endpoint)
    services.endpoint_create(
        workspace=lead_setup.workspace, name="Again", webhook_id=hook.endpoint.webhook_id
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = hook.call(json_body={"pcid": second.pcid, "status": "sold"})
    assert response.status_code == 200
    assert WaitingWebhook.objects.get(pcid=second.pcid).status == WaitingWebhook.Status.MATCHED
