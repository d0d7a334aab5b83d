"""Which of a distribution's writes wait for the WAL flush: a result row's progress
(opened, pinged, rejected) commits without waiting, as a request's log row does; the
sale and the decision to the partner keep their synchronous commit, and the session's
setting is left as it was.

Committed transactions (``transaction=True``): a rolled-back test transaction would hide
the autocommit path entirely.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pingtree.models import OfferResult
from tests.integration.pingtree.conftest import distribute

pytestmark = pytest.mark.django_db(transaction=True)
NO_FLUSH = "set_config('synchronous_commit', 'off', true)"


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def writes(queries: CaptureQueriesContext, table: str) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if table in q["sql"] and q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "WITH"))
    ]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's commit modes")
@pytest.mark.usefixtures("call_path")
def test_result_rows_commit_without_the_flush_and_the_sale_with_it(tree, buyers):
    refuses = tree.offer("Refuses", post=buyers.json("/no", "rejected", reason="too old"))
    bidder = tree.offer(
        "Bidder", price_model="bid", ping=buyers.json("/ping", price="7"), post=buyers.json("/yes")
    )
    tree.tier("waterfall", refuses, bidder)
    lead = tree.lead()
    assert connection.get_autocommit() and synchronous_commit() == "on"

    with CaptureQueriesContext(connection) as queries:
        dist = distribute(lead)

    assert dist.status == "sold"
    rows = {r.offer_id: r for r in OfferResult.objects.filter(distribution=dist)}
    assert rows[refuses.pk].status == "rejected" and rows[bidder.pk].is_sold
    result_writes = writes(queries, "pingtree_offerresult")
    sale = [sql for sql in result_writes if "sold_count = sold_count + 1" in sql]
    progress = [sql for sql in result_writes if sql not in sale]
    # opened x2, the rejection, the ping: each its own transaction, without the flush
    assert len(progress) >= 4 and all(NO_FLUSH in sql for sql in progress), progress
    # The sale counts money and sells the lead: it waits for the disk (and so makes every
    # earlier row durable with it); so does the decision.
    assert len(sale) == 1 and NO_FLUSH not in sale[0]
    decision = writes(queries, "pingtree_distribution")
    assert decision and not any(NO_FLUSH in sql for sql in decision)
    assert synchronous_commit() == "on"  # only those transactions


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's commit modes")
def test_inside_a_callers_transaction_result_rows_are_part_of_it(tree, buyers):
    """(Called directly: a scenario run is written by the pool thread's own connection,
    which cannot see a distribution the caller has not committed.)"""
    from django.db import transaction

    offer = tree.offer("Refuses", post=buyers.json("/no", "rejected", reason="too old"))
    tree.tier("waterfall", offer)
    lead = tree.lead()
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        distribute(lead)
    result_writes = writes(queries, "pingtree_offerresult")
    assert result_writes and not any(NO_FLUSH in sql for sql in result_writes)
