"""Offer filters against the database they live with: a definition stored in a JSON
column (as ``Offer.filters`` is) reads back valid and decides the same, and the global
fields in the database are the ones the filter module masks and splits into components.
"""

from datetime import UTC, datetime

import pytest
from django.db import connection, models

from pingtree import filters
from pingtree.filters import History, filters_evaluate, filters_import, filters_validate
from structures.models import Field

pytestmark = pytest.mark.django_db

DEFINITION = {
    "match": "all",
    "groups": [
        {
            "match": "any",
            "conditions": [
                {"field": "g_loan_amount", "operator": "between", "value": 1000, "value2": 5000.5},
                {"field": "g_phone.area_code", "operator": "equals", "value": "212|646"},
            ],
        }
    ],
    "partners": {"mode": "exclude", "ids": [9, 3]},
    "history": [{"kind": "rejected", "within_days": 30, "reason": "dup*"}],
    "ratio": [
        {
            "numerator": "g_loan_amount",
            "denominator": "g_monthly_income",
            "operator": "smaller_than",
            "value": 10,
        }
    ],
    "schedule": {
        "timezone": "America/New_York",
        "days": [0, 1, 2, 3, 4],
        "from": "09:00",
        "to": "18:00",
    },
    "geo": {"mode": "include", "states": ["CA", "NY"], "zip_prefixes": ["100"]},
}


def stored(value: object) -> object:
    """``value`` written to and read back from a JSON column the way a JSONField does."""
    field = models.JSONField()
    cast = "%s::jsonb" if connection.vendor == "postgresql" else "json(%s)"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {cast}", [field.get_db_prep_value(value, connection)])  # noqa: S608
        raw = cursor.fetchone()[0]
    return field.from_db_value(raw, None, connection)


def test_a_definition_read_back_from_a_json_column_is_valid_and_decides_the_same():
    back = stored(DEFINITION)
    assert filters_validate(back) == {}
    lead = {"g_loan_amount": "1500", "g_monthly_income": "1000", "g_state": "NY"}
    history = History(sent_at=[], rejected=[], accepted_at=[])
    for now, partner_id in [
        (datetime(2026, 11, 25, 15, 0, tzinfo=UTC), 5),  # passes
        (datetime(2026, 11, 25, 15, 0, tzinfo=UTC), 3),  # excluded partner
        (datetime(2026, 11, 28, 15, 0, tzinfo=UTC), 5),  # Saturday
    ]:
        arguments = {"lead_values": lead, "partner_id": partner_id, "now": now, "history": history}
        assert filters_evaluate(back, **arguments) == filters_evaluate(DEFINITION, **arguments)
    passed = filters_evaluate(back, lead_values=lead, partner_id=5, now=now, history=history)
    assert not passed.passed  # the Saturday case above, so the comparison is not vacuous


def test_a_template_read_back_from_a_json_column_imports():
    document = stored(filters.filters_export(DEFINITION, name="Lending"))
    assert filters_validate(filters_import(document)) == {}


def test_the_global_fields_in_the_database_are_the_ones_filters_know():
    rows = {f.name: f for f in Field.objects.filter(workspace=None)}
    assert rows, "the global field catalogue is loaded by a migration"
    assert {name: row.type for name, row in rows.items()} == filters._GLOBAL_TYPES
    sensitive = {name for name, row in rows.items() if row.is_sensitive}
    assert sensitive == filters._GLOBAL_SENSITIVE
    # the fields the geo filter reads by default exist with the types it expects
    assert rows["g_state"].type == "state"
    assert rows["g_zip"].type == "zip"
