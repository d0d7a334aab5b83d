"""The partner intake API: accepted leads, every refusal as a named 4xx, never a 500."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from structures.models import IdempotencyRecord, Lead, LeadEvent

pytestmark = pytest.mark.django_db
URL = "/api/v1/leads/"


def post(client: Client, setup, body, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **setup.auth, **extra)


def test_valid_lead_is_approved_normalised_and_saved_with_history(client, lead_setup):
    body = lead_setup.valid_payload() | {
        "g_email": "  Jane.Doe@Example.COM ",
        "g_phone": "(202) 456-1111",
        "g_state": "virginia",
        "g_date_of_birth": "1990-07-04",
        "g_consent": "yes",
        "external_id": "pub-1",
        "sub1": "fb",
    }
    response = post(client, lead_setup, body)
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["status"] == "approved"
    lead = Lead.objects.get(pcid=data["id"])
    assert lead.data["g_email"] == "jane.doe@example.com"
    assert lead.data["g_phone"] == "+12024561111"
    assert lead.data["g_state"] == "VA"
    assert lead.data["g_consent"] == "true"
    assert lead.external_id == "pub-1" and lead.sub1 == "fb"
    assert data["status_url"].endswith(f"/api/v1/leads/{lead.pcid}/")
    assert list(lead.history.values_list("kind", flat=True)) == ["approved"]


def test_invalid_fields_are_each_named_and_nothing_is_written(client, lead_setup):
    body = {"g_email": "not-an-email", "g_phone": "12", "g_zip": "ABCDE", "bogus": "x"}
    response = post(client, lead_setup, body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"g_email", "g_phone", "g_zip", "g_first_name", "bogus"}
    assert errors["g_first_name"] == ["This field is required."]
    assert Lead.objects.count() == 0 and LeadEvent.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    ["{bad json", "[1, 2]", '"text"', "null", "{" * 5000 + "}" * 5000, '{"a": NaN}', b"\xff\xfe"],
)
def test_malformed_bodies_get_400_never_500(client, lead_setup, raw):
    response = post(client, lead_setup, raw)
    assert response.status_code == 400, response.content
    assert Lead.objects.count() == 0


def test_nested_values_are_refused_by_field(client, lead_setup):
    response = post(client, lead_setup, lead_setup.valid_payload() | {"g_zip": {"a": 1}})
    assert response.status_code == 400
    assert "g_zip" in response.json()["errors"]


def test_oversize_body_gets_413(client, lead_setup, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = lead_setup.valid_payload() | {"sub1": "x" * 2000}
    response = post(client, lead_setup, body)
    assert response.status_code == 413
    assert Lead.objects.count() == 0


def test_oversize_form_body_gets_413(client, lead_setup, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post(URL, data={"sub1": "x" * 2000}, **lead_setup.auth)
    assert response.status_code == 413


def test_form_encoded_body_is_accepted(client, lead_setup):
    response = client.post(URL, data=lead_setup.valid_payload(), **lead_setup.auth)
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "approved"


@pytest.mark.parametrize(
    "header", [None, "Bearer abc", "Api-Key ", "Api-Key nope.nope", "Api-Key abc"]
)
def test_missing_or_wrong_key_gets_401(client, lead_setup, header):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.post(URL, data="{}", content_type="application/json", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"


def test_revoked_key_gets_401(client, lead_setup):
    lead_setup.api_key.revoked = True
    lead_setup.api_key.save()
    assert post(client, lead_setup, lead_setup.valid_payload()).status_code == 401


def test_paused_partner_gets_403(client, lead_setup):
    lead_setup.partner.status = "paused"
    lead_setup.partner.save()
    response = post(client, lead_setup, lead_setup.valid_payload())
    assert response.status_code == 403
    assert Lead.objects.count() == 0


def test_unknown_structure_slug_is_named(client, lead_setup):
    response = post(client, lead_setup, lead_setup.valid_payload() | {"structure": "nope"})
    assert response.status_code == 400
    assert "structure" in response.json()["errors"]


def test_idempotency_key_replays_the_first_answer(client, lead_setup):
    body = lead_setup.valid_payload()
    first = post(client, lead_setup, body, HTTP_IDEMPOTENCY_KEY="abc-1")
    second = post(client, lead_setup, body, HTTP_IDEMPOTENCY_KEY="abc-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Lead.objects.count() == 1


def test_idempotency_key_with_another_body_is_refused(client, lead_setup):
    post(client, lead_setup, lead_setup.valid_payload(1), HTTP_IDEMPOTENCY_KEY="k")
    response = post(client, lead_setup, lead_setup.valid_payload(2), HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["errors"]
    assert Lead.objects.count() == 1 and IdempotencyRecord.objects.count() == 1


def test_status_endpoint_returns_status_and_outcome(client, lead_setup):
    pcid = post(client, lead_setup, lead_setup.valid_payload()).json()["id"]
    response = client.get(f"{URL}{pcid}/", **lead_setup.auth)
    assert response.status_code == 200
    data = response.json()
    assert data["id"] == pcid and data["status"] == "approved"
    assert data["decided_at"] and "outcome" in data


def test_status_endpoint_hides_other_partners_leads(client, lead_setup):
    from tests.factories.structures import make_lead_setup

    other = make_lead_setup("Other")
    pcid = post(client, other, other.valid_payload()).json()["id"]
    assert client.get(f"{URL}{pcid}/", **lead_setup.auth).status_code == 404
    assert client.get(f"{URL}{pcid}/", **other.auth).status_code == 200


def test_rate_limit_answers_429_with_retry_after(client, lead_setup):
    lead_setup.api_key.rate_limit_per_minute = 3
    lead_setup.api_key.save()
    codes = [post(client, lead_setup, lead_setup.valid_payload(n)).status_code for n in range(5)]
    assert codes[:3] == [201, 201, 201]
    assert codes[3:] == [429, 429]
    response = post(client, lead_setup, lead_setup.valid_payload(9))
    assert 1 <= int(response["Retry-After"]) <= 60


def test_test_leads_are_flagged_and_skip_duplicate_claims(client, lead_setup):
    body = lead_setup.valid_payload() | {"test": "true"}
    first = post(client, lead_setup, body).json()
    second = post(client, lead_setup, body).json()
    assert first["test"] is True and first["status"] == second["status"] == "approved"


def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/leads/" in schema.content and b"ApiKeyAuth" in schema.content
    assert client.get("/api/docs/").status_code == 200


def test_healthz_checks_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_idempotency_key_make_one_lead():
    import threading

    from django.db import connection

    from tests.factories.structures import make_lead_setup

    if connection.vendor != "postgresql":
        pytest.skip("the in-memory SQLite test database cannot serve threads; CI uses PostgreSQL")
    setup = make_lead_setup("Retries")
    body = json.dumps(setup.valid_payload())
    barrier = threading.Barrier(10)
    answers: list[tuple[int, str]] = []

    def retry() -> None:
        try:
            client = Client()
            barrier.wait()
            response = client.post(URL, body, content_type="application/json",
                                   HTTP_IDEMPOTENCY_KEY="order-77", **setup.auth)  # fmt: skip
            answers.append((response.status_code, response.json()["id"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=retry) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 10 and {code for code, _ in answers} == {201}
    assert len({pcid for _, pcid in answers}) == 1
    assert Lead.objects.count() == 1 and IdempotencyRecord.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_new_lead_costs_its_key_lookup_and_one_write(client, lead_setup):
    """The intake's path, statement by statement (bench-intake): the key with its
    partner (every partner field the intake reads, the decision mode and budget included),
    workspace and default structure in one read; the lead, its history and its duplicate
    keys in one write. A field the key lookup leaves out costs a query of its own."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    post(client, lead_setup, lead_setup.valid_payload(1))  # the configuration is cached
    with CaptureQueriesContext(connection) as queries:
        response = post(client, lead_setup, lead_setup.valid_payload(2))
    assert response.status_code == 201 and response.json()["status"] == "approved"
    statements = [q["sql"] for q in queries.captured_queries]
    partner_reads = [s for s in statements if s.startswith('SELECT "structures_partner"')]
    assert partner_reads == []
    limit = 2 if connection.vendor == "postgresql" else 8
    assert len(statements) <= limit, statements
