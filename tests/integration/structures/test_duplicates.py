"""Duplicate check: a window per rule, enforced by a unique key in the database."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.utils import timezone

from structures.models import DuplicateKey, DuplicateRule, Lead

URL = "/api/v1/leads/"


def post(client, setup, body):
    return client.post(URL, data=json.dumps(body), content_type="application/json", **setup.auth)


@pytest.mark.django_db
def test_second_lead_with_same_email_is_duplicate_of_the_first(client, lead_setup):
    first = post(client, lead_setup, lead_setup.valid_payload(1)).json()
    body = lead_setup.valid_payload(2) | {"g_email": "JANE1@example.com "}
    second = post(client, lead_setup, body).json()
    assert first["status"] == "approved"
    assert second["status"] == "duplicate"
    assert "Same email" in second["reason"]
    dup = Lead.objects.get(pcid=second["id"])
    assert dup.duplicate_of.pcid == first["id"]
    assert list(dup.history.values_list("kind", flat=True)) == ["duplicate"]


@pytest.mark.django_db
def test_duplicate_window_expires(client, lead_setup):
    DuplicateRule.objects.filter(workspace=lead_setup.workspace).update(window_hours=24)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert post(client, lead_setup, lead_setup.valid_payload()).json()["status"] == "approved"
        clock.shift(timedelta(hours=23))
        assert post(client, lead_setup, lead_setup.valid_payload()).json()["status"] == "duplicate"
        clock.shift(timedelta(hours=2))
        assert post(client, lead_setup, lead_setup.valid_payload()).json()["status"] == "approved"
    assert DuplicateKey.objects.count() == 2  # email and phone keys, taken over in place


@pytest.mark.django_db
def test_inactive_rules_do_not_refuse(client, lead_setup):
    DuplicateRule.objects.filter(workspace=lead_setup.workspace).update(is_active=False)
    statuses = {
        post(client, lead_setup, lead_setup.valid_payload()).json()["status"] for _ in range(2)
    }
    assert statuses == {"approved"}


@pytest.mark.django_db
def test_partner_scope_lets_other_partners_send_the_same_person(client, lead_setup):
    from structures import services
    from tests.factories.structures import PartnerFactory

    DuplicateRule.objects.filter(workspace=lead_setup.workspace).update(scope="partner")
    other = PartnerFactory(workspace=lead_setup.workspace, default_structure=lead_setup.structure)
    _, other_key = services.partner_api_key_create(partner=other, name="k", rate_limit_per_minute=0)
    body = json.dumps(lead_setup.valid_payload())
    kw = {"content_type": "application/json"}
    a = client.post(URL, body, HTTP_AUTHORIZATION=f"Api-Key {lead_setup.key}", **kw).json()
    b = client.post(URL, body, HTTP_AUTHORIZATION=f"Api-Key {other_key}", **kw).json()
    c = client.post(URL, body, HTTP_AUTHORIZATION=f"Api-Key {other_key}", **kw).json()
    assert (a["status"], b["status"], c["status"]) == ("approved", "approved", "duplicate")


@pytest.mark.django_db
def test_partial_claims_are_rolled_back_when_one_rule_matches(client, lead_setup):
    post(client, lead_setup, lead_setup.valid_payload(1))
    # new email, same phone: the email key must not stay claimed by the duplicate
    body = lead_setup.valid_payload(1) | {"g_email": "fresh@example.com"}
    assert post(client, lead_setup, body).json()["status"] == "duplicate"
    body = lead_setup.valid_payload(5) | {"g_email": "fresh@example.com"}
    assert post(client, lead_setup, body).json()["status"] == "approved"


@pytest.mark.django_db(transaction=True)
def test_fifty_identical_concurrent_posts_accept_exactly_one():
    if connection.vendor != "postgresql":
        pytest.skip(
            "the in-memory SQLite test database cannot serve 50 threads; CI uses PostgreSQL"
        )
    from tests.factories.structures import make_lead_setup

    setup = make_lead_setup("Concurrent")
    body = json.dumps(setup.valid_payload())
    barrier = threading.Barrier(50)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            client = Client()
            barrier.wait()
            response = client.post(URL, body, content_type="application/json", **setup.auth)
            results.append(f"{response.status_code}:{response.json()['status']}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results).count("201:approved") == 1, results
    assert sorted(results).count("201:duplicate") == 49, results
    assert Lead.objects.filter(status="approved").count() == 1
    assert Lead.objects.filter(status="duplicate").count() == 49


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_single_statement_path_keeps_the_same_rules():
    """Requests run in autocommit: PostgreSQL takes the one-statement insert, which must
    write nothing when a key is taken (the transactional path then decides)."""
    from tests.factories.structures import make_lead_setup

    setup = make_lead_setup("Autocommit")
    client = Client()
    first = post(client, setup, setup.valid_payload(1)).json()
    again = post(client, setup, setup.valid_payload(1)).json()
    same_phone = post(client, setup, setup.valid_payload(1) | {"g_email": "new@example.com"})
    fresh = post(client, setup, setup.valid_payload(2) | {"g_email": "new@example.com"}).json()
    assert first["status"] == "approved" and again["status"] == "duplicate"
    assert same_phone.json()["status"] == "duplicate"
    assert fresh["status"] == "approved"  # new@example.com was not left claimed
    assert Lead.objects.get(pcid=again["id"]).duplicate_of.pcid == first["id"]
    assert DuplicateKey.objects.count() == 4  # 2 keys x 2 approved leads
    assert Lead.objects.count() == 4
