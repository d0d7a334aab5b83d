"""The per-process cache of request step configurations: served while the integration's
config_version is unchanged, never once any change is committed.

Committed transactions (``transaction=True``): the cache never stores a version written
by a transaction still open, so inside the usual rolled-back test transaction every call
would build afresh and these tests could not fail.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from werkzeug import Request, Response

from integrations import services, step_cache
from integrations.context import lead_context
from integrations.models import (
    Integration,
    RequestBodyField,
    RequestHeader,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from structures.models import Lead

pytestmark = pytest.mark.django_db(transaction=True)
SECRET = "first-secret-0123"
NEW_SECRET = "second-secret-4567"


@pytest.fixture
def seen(httpserver) -> list[dict[str, Any]]:
    """What the buyer received, one dict per request; it always answers accepted."""
    received: list[dict[str, Any]] = []

    def handler(request: Request) -> Response:
        received.append(
            {"headers": dict(request.headers), "body": request.get_json(silent=True) or {}}
        )
        return Response(
            json.dumps({"status": "accepted", "id": "B-1"}), content_type="application/json"
        )

    httpserver.expect_request("/leads", method="POST").respond_with_handler(handler)
    return received


@pytest.fixture
def step(lead_setup, httpserver, seen) -> RequestStep:
    step_cache.cache_clear()
    integration = services.integration_create(
        workspace_id=lead_setup.workspace.pk, name="Cached buyer", category="buyer",
        status="enabled", url=httpserver.url_for("/leads"),
    )  # fmt: skip
    step = integration.requests.get()
    step.auth_type = "bearer"
    step.save()
    services.request_secret_set(step=step, secret=SECRET)
    RequestHeader.objects.create(request=step, name="X-Source", value="leadrelay")
    RequestBodyField.objects.create(request=step, position=0, name="email", value="{{g_email}}")
    RequestBodyField.objects.create(request=step, position=1, name="ref", value="{{PCID}}")
    ResponseRule.objects.create(
        request=step, position=5, key="status", value="accepted", outcome="accepted"
    )
    ResponseCapture.objects.create(request=step, key="id", target="buyer_lead_id")
    # As a worker holds them: loaded once, reused for every call.
    return RequestStep.objects.select_related("integration").get(pk=step.pk)


@pytest.fixture
def lead(lead_setup) -> Lead:
    return Lead.objects.create(
        workspace=lead_setup.workspace, structure=lead_setup.structure,
        partner=lead_setup.partner, source="api", status="approved",
        data={"g_email": "jane@example.com"},
    )  # fmt: skip


def run(step: RequestStep, lead: Lead) -> services.RunResult:
    return services.request_run(step=step, context=lead_context(lead), lead=lead)


def test_a_second_call_reads_only_the_version_and_writes_the_log(step, lead, seen):
    run(step, lead)
    with CaptureQueriesContext(connection) as queries:
        result = run(step, lead)
    assert result.outcome.kind == "accepted"
    assert len(seen) == 2
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 2, statements
    assert "config_version" in statements[0]
    assert statements[1].startswith("INSERT")


def test_a_header_edit_is_sent_on_the_next_call(step, lead, seen):
    run(step, lead)
    header = RequestHeader.objects.get(request=step)
    header.value = "changed"
    header.save()
    run(step, lead)
    assert [r["headers"]["X-Source"] for r in seen] == ["leadrelay", "changed"]


def test_a_new_header_and_a_deleted_body_field_apply_on_the_next_call(step, lead, seen):
    run(step, lead)
    RequestHeader.objects.create(request=step, name="X-Extra", value="1")
    RequestBodyField.objects.get(request=step, name="ref").delete()
    run(step, lead)
    assert "X-Extra" not in seen[0]["headers"] and "ref" in seen[0]["body"]
    assert seen[1]["headers"]["X-Extra"] == "1" and "ref" not in seen[1]["body"]


def test_an_added_rule_decides_the_next_call(step, lead):
    assert run(step, lead).outcome.kind == "accepted"
    ResponseRule.objects.create(
        request=step, position=0, key="status", value="accepted", outcome="duplicate"
    )
    assert run(step, lead).outcome.kind == "duplicate"


def test_a_capture_change_applies_on_the_next_call(step, lead):
    assert run(step, lead).outcome.buyer_lead_id == "B-1"
    ResponseCapture.objects.filter(request=step).get().delete()
    assert run(step, lead).outcome.buyer_lead_id in ("", None)


def test_a_new_secret_is_sent_on_the_next_call(step, lead, seen):
    run(step, lead)
    services.request_secret_set(step=step, secret=NEW_SECRET)
    run(step, lead)
    assert seen[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen[1]["headers"]["Authorization"] == f"Bearer {NEW_SECRET}"


def test_a_secret_set_elsewhere_reaches_a_freshly_loaded_step(step, lead, seen):
    run(step, lead)
    services.request_secret_set(step=RequestStep.objects.get(pk=step.pk), secret=NEW_SECRET)
    fresh = RequestStep.objects.select_related("integration").get(pk=step.pk)
    run(fresh, lead)
    assert seen[1]["headers"]["Authorization"] == f"Bearer {NEW_SECRET}"


def test_a_step_column_edit_applies_on_the_next_call(step, lead, seen):
    run(step, lead)
    step.auth_type = "none"
    step.save()
    run(step, lead)
    assert "Authorization" in seen[0]["headers"]
    assert "Authorization" not in seen[1]["headers"]


def test_a_status_change_by_another_process_applies_on_the_next_call(step, lead, seen):
    assert run(step, lead).was_sent
    other = Integration.objects.get(pk=step.integration_id)  # an operator's admin save
    other.status = "disabled"
    other.save()
    assert step.integration.status == "enabled"  # the worker's copy is stale
    result = run(step, lead)
    assert not result.was_sent
    assert "disabled" in result.outcome.reason
    assert len(seen) == 1


def test_a_stale_integration_save_never_lowers_the_version(step, lead, seen):
    stale = Integration.objects.get(pk=step.integration_id)
    run(step, lead)
    header = RequestHeader.objects.get(request=step)
    header.value = "v2"
    header.save()
    before = Integration.objects.values_list("config_version", flat=True).get(pk=stale.pk)
    stale.name = "Renamed"
    stale.save()
    after = Integration.objects.values_list("config_version", flat=True).get(pk=stale.pk)
    assert after == before + 1
    run(step, lead)
    assert seen[-1]["headers"]["X-Source"] == "v2"


def test_a_version_written_by_an_open_transaction_is_never_cached(step, lead, seen):
    run(step, lead)
    cached_key = step_cache._entries[step.pk][0]
    with transaction.atomic():
        header = RequestHeader.objects.get(request=step)
        header.value = "uncommitted"
        header.save()
        run(step, lead)
        assert step_cache._entries[step.pk][0] == cached_key  # not replaced
        transaction.set_rollback(True)
    # The rolled-back number is taken again by a committed change with other content.
    header = RequestHeader.objects.get(request=step)
    header.value = "committed"
    header.save()
    run(step, lead)
    assert [r["headers"]["X-Source"] for r in seen] == ["leadrelay", "uncommitted", "committed"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="psycopg's query conversion")
def test_a_fixed_statement_over_psycopgs_default_limits_is_split_once():
    """psycopg remembers a statement's split (parts, parameter places) only under 50
    parameters and 4 KB by default; the ping tree's sale statement has 59. step_cache
    raises the limits: the second run of such a statement is a hit of psycopg's cache,
    not a new split (fails if the limits are back at their defaults)."""
    from psycopg import _queries

    sql = "SELECT " + ", ".join(f"%s::int AS c{i}" for i in range(60))  # noqa: S608
    sql += " -- " + "x" * 4200  # over 4 KB too
    with connection.cursor() as cursor:
        cursor.execute(sql, list(range(60)))
        assert cursor.fetchone()[59] == 59
        hits = _queries._query2pg.cache_info().hits
        cursor.execute(sql, list(range(60)))
        assert cursor.fetchone()[0] == 0
    assert _queries._query2pg.cache_info().hits == hits + 1
