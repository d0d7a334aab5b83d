"""Partner API keys: shown once, stored only as prefix + hash, revocable."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connection

from structures import services

pytestmark = pytest.mark.django_db


def test_no_plaintext_key_anywhere_in_the_database(lead_setup):
    _, plaintext = services.partner_api_key_create(partner=lead_setup.partner, name="second")
    prefix, _, secret = plaintext.partition(".")
    found = []
    with connection.cursor() as cursor:
        for model in apps.get_models():
            table = model._meta.db_table
            columns = [
                f.column
                for f in model._meta.concrete_fields
                if f.get_internal_type() in ("CharField", "TextField", "JSONField")
            ]
            for column in columns:
                cursor.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE %s',  # noqa: S608
                    [f"%{secret}%"],
                )
                if cursor.fetchone()[0]:
                    found.append(f"{table}.{column}")
    assert found == []
    stored = lead_setup.partner.api_keys.get(name="second")
    assert stored.prefix == prefix and stored.hashed_key.startswith("sha512$$")


def test_revoked_key_stops_working(client, lead_setup):
    assert client.get("/api/v1/leads/x/", **lead_setup.auth).status_code == 404
    services.partner_api_key_revoke(api_key=lead_setup.api_key)
    assert client.get("/api/v1/leads/x/", **lead_setup.auth).status_code == 401
