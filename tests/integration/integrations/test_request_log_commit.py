"""How a call's log row is committed: on its own (autocommit), without waiting for the
WAL flush, and only that row's transaction; inside a caller's transaction, as part of it.

Committed transactions (``transaction=True``): the usual rolled-back test transaction
would hide the autocommit path entirely.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from integrations import services, step_cache
from integrations.context import lead_context
from integrations.models import RequestLog, RequestStep
from structures.models import Lead

pytestmark = pytest.mark.django_db(transaction=True)
ASYNC = "set_config('synchronous_commit', 'off', true)"


@pytest.fixture
def step(lead_setup, httpserver) -> RequestStep:
    step_cache.cache_clear()
    httpserver.expect_request("/leads", method="POST").respond_with_data(
        json.dumps({"status": "accepted"}), content_type="application/json"
    )
    integration = services.integration_create(
        workspace_id=lead_setup.workspace.pk, name="Logged buyer", category="buyer",
        status="enabled", url=httpserver.url_for("/leads"),
    )  # fmt: skip
    return RequestStep.objects.select_related("integration").get(integration=integration)


@pytest.fixture
def lead(lead_setup) -> Lead:
    return Lead.objects.create(
        workspace=lead_setup.workspace, structure=lead_setup.structure,
        partner=lead_setup.partner, source="api", status="approved",
        data={"g_email": "jane@example.com"},
    )  # fmt: skip


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def seen_by_another_session(log_id: int) -> bool:
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None, port=settings["PORT"] or None, autocommit=True,
    ) as other:  # fmt: skip
        row = other.execute("SELECT 1 FROM integrations_requestlog WHERE id = %s", [log_id])
        return row.fetchone() is not None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's commit modes")
def test_a_log_row_of_its_own_commits_asynchronously_and_only_itself(step, lead):
    assert connection.get_autocommit() and synchronous_commit() == "on"

    with CaptureQueriesContext(connection) as queries:
        run = services.request_run(step=step, context=lead_context(lead), lead=lead)

    insert = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(insert) == 1 and ASYNC in insert[0]
    assert run.log is not None and seen_by_another_session(run.log.pk)  # committed already
    assert synchronous_commit() == "on"  # the session's later writes still wait for the flush


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's commit modes")
def test_inside_a_callers_transaction_the_log_row_is_part_of_it(step, lead):
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            run = services.request_run(step=step, context=lead_context(lead), lead=lead)
        insert = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
        assert len(insert) == 1 and ASYNC not in insert[0]
        # Business state written in the same transaction keeps its synchronous commit.
        assert synchronous_commit() == "on"
        assert RequestLog.objects.filter(pk=run.log.pk).exists()
        raise Rollback

    assert not RequestLog.objects.filter(pk=run.log.pk).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the psycopg path")
def test_the_held_cursor_answers_and_raises_djangos_errors(step):
    from django.db import DataError

    assert step_cache.fetch_one("SELECT %s::int + 1", [41]) == (42,)
    with pytest.raises(DataError):
        step_cache.fetch_one("SELECT 1 / %s::int", [0])
    # The connection is still usable: autocommit, the failed statement ended its own.
    assert step_cache.fetch_one(
        "SELECT status FROM integrations_integration WHERE id = %s", [step.integration_id]
    ) == ("enabled",)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the many-rows INSERT")
def test_many_log_rows_in_one_statement_store_what_one_row_writes_stores(step, lead):
    """log_insert_many (the ping tree's settled pings, one JSON parameter) stores each
    row exactly as log_write does, in order: text with quotes, line breaks and non-ASCII,
    JSON headers and captures, missing values as NULL, created_at set."""
    from integrations.outbound import OutboundRequest, OutboundResult
    from integrations.reading import Outcome

    def entry(n: int, body: str, status: int | None) -> RequestLog:
        request = OutboundRequest(
            method="POST", url=f"{step.url}?n={n}", headers=[("X-Note", f"ñ \"{n}\"")],
            body=f'{{"n":{n}}}'.encode(),
        )  # fmt: skip
        result = OutboundResult(
            request=request, status_code=status, headers=[("Content-Type", "text/plain; ü")],
            body=body.encode(), truncated=False, elapsed_ms=40 + n, final_url=request.url,
        )  # fmt: skip
        outcome = Outcome(kind="rejected", reason=f"said «no» {n}\nline 2",
                          captured={"reject_reason": "dup \\ 'x'", "price": "1.5"})  # fmt: skip
        return services._log(step, lead if n else None, "scenario", None, result, outcome,
                             True, insert=False)  # fmt: skip

    specs = [(0, 'plain "quoted" \\ text\n€', 200), (1, "", None), (2, "x" * 5000, 503)]
    one_by_one = [entry(*s) for s in specs]
    for e in one_by_one:
        services.log_write(e)
    many = [entry(*s) for s in specs]
    with connection.cursor() as cursor:
        cursor.execute(services.log_insert_many_sql_text(), services.log_insert_many_params(many))
        ids = sorted(row[0] for row in cursor.fetchall())
    assert len(ids) == 3
    skip = {"id", "created_at"}
    columns = [f.attname for f in RequestLog._meta.concrete_fields if f.attname not in skip]
    for single, many_id in zip(one_by_one, ids, strict=True):
        a = RequestLog.objects.values(*columns, "created_at").get(pk=single.pk)
        b = RequestLog.objects.values(*columns, "created_at").get(pk=many_id)
        assert b.pop("created_at") is not None and a.pop("created_at") is not None
        assert a == b
    stored = RequestLog.objects.get(pk=ids[1])
    assert stored.status_code is None and stored.lead_id is not None
    assert RequestLog.objects.get(pk=ids[0]).lead_id is None
