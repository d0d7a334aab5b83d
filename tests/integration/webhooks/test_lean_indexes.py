"""The two tables every callback writes carry no index another one already serves, and
the links most rows leave empty are indexed only where set (webhooks migration 0004):
each index is one more entry written per callback, on the insert and again on the
status update (bench-callbacks)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.integration.webhooks.conftest import make_hook
from webhooks.models import InboundWebhookRequest, WaitingWebhook

pytestmark = pytest.mark.django_db


def _indexes(model: type) -> dict[str, tuple[list[str], str]]:
    """name -> (columns, partial predicate or "") of every index on the model's table."""
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, model._meta.db_table)
    predicates: dict[str, str] = {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
                [model._meta.db_table],
            )
            predicates = {
                name: d.split(" WHERE ", 1)[1] if " WHERE " in d else "" for name, d in cursor
            }
    return {
        name: (info["columns"], predicates.get(name, ""))
        for name, info in found.items()
        if info["index"] or info["unique"]
    }


@pytest.mark.parametrize("model", [WaitingWebhook, InboundWebhookRequest])
def test_no_full_index_is_the_leading_part_of_another(model: type) -> None:
    indexes = _indexes(model)
    full = {name: cols for name, (cols, where) in indexes.items() if not where}
    for name, cols in full.items():
        if name.endswith("_pkey") or len(cols) != 1:
            continue
        longer = [
            other
            for other, (other_cols, where) in indexes.items()
            if other != name and not where and other_cols[: len(cols)] == cols
        ]
        assert not longer, f"{name} {cols} is served by {longer}"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="partial index predicates")
def test_empty_links_are_indexed_only_where_set() -> None:
    inbound = _indexes(InboundWebhookRequest)
    waiting = _indexes(WaitingWebhook)
    assert inbound["inbound_waiting"] == (["waiting_id"], "(waiting_id IS NOT NULL)")
    assert inbound["inbound_started_run"] == (["started_run_id"], "(started_run_id IS NOT NULL)")
    assert waiting["waiting_advertiser"] == (["advertiser_id"], "(advertiser_id IS NOT NULL)")
    single = {tuple(cols) for cols, where in inbound.values() if not where and len(cols) == 1}
    assert not single & {("waiting_id",), ("started_run_id",), ("workspace_id",)}


def test_deleting_what_a_callback_points_at_keeps_the_callback(
    lead_setup, lead, advertiser, django_capture_on_commit_callbacks
):
    """The links indexed only where set still find their rows: the advertiser's deletion
    empties the waiting row's link, the run's deletion removes its waiting row and
    empties the stored callback's link to it."""
    hook = make_hook(
        lead_setup,
        config={"external_id": "{{BUYER_ID}}"},
        endpoint_kwargs={"match_by": "external_id", "id_key": "lead_id", "advertiser": advertiser},
    )
    run = hook.start(lead, BUYER_ID="B-9")
    with django_capture_on_commit_callbacks(execute=True):
        assert hook.call(json_body={"lead_id": "B-9", "status": "sold"}).status_code == 200
    waiting = WaitingWebhook.objects.get(run=run)
    inbound = InboundWebhookRequest.objects.get(waiting=waiting)
    advertiser.delete()
    waiting.refresh_from_db()
    assert waiting.advertiser_id is None
    run.delete()
    assert not WaitingWebhook.objects.filter(pk=waiting.pk).exists()
    inbound.refresh_from_db()
    assert inbound.waiting_id is None and inbound.status == InboundWebhookRequest.Status.MATCHED
