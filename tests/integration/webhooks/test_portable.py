"""The callback path on the embedded default's database (SQLite): the ORM does what the
hand-written PostgreSQL statements do (services._portable). The main scenarios run
again here with that path forced on (on PostgreSQL in CI; on SQLite when the suite
falls back to it, where it is the only path)."""

from __future__ import annotations

import pytest

from tests.integration.webhooks import test_callbacks as callbacks
from tests.integration.webhooks import test_endpoint_memo as memo
from tests.integration.webhooks import test_safety as safety
from tests.integration.webhooks.test_callbacks import finished  # noqa: F401 (fixture)
from tests.integration.webhooks.test_endpoint_memo import two_leads  # noqa: F401 (fixture)
from tests.integration.webhooks.test_safety import signed  # noqa: F401 (fixture)
from webhooks import services


@pytest.fixture(autouse=True)
def portable_path(monkeypatch) -> None:
    monkeypatch.setattr(services, "_portable", lambda: True)


def test_the_portable_path_is_the_one_taken(hook, lead, django_capture_on_commit_callbacks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    hook.start(lead)
    with CaptureQueriesContext(connection) as queries:
        assert hook.call(json_body={"pcid": lead.pcid, "status": "sold"}).status_code == 200
    sql = " ".join(q["sql"] for q in queries.captured_queries)
    assert "md5(" not in sql and "set_config" not in sql and "WITH w AS" not in sql


# The same scenarios as on PostgreSQL's statements (imported: pytest collects them here
# too, with this module's fixture).
test_pcid_in_json = callbacks.test_pcid_in_json_resumes_the_run_with_outcome_captures_and_variables
test_pcid_get_query = callbacks.test_pcid_in_the_query_of_a_get
test_buyers_id = callbacks.test_buyers_id_and_advertiser_read_from_query_body_path_or_header
test_exact_404 = callbacks.test_nothing_waiting_answers_the_exact_404
test_unknown_and_revoked = callbacks.test_unknown_wrong_and_revoked_urls_get_the_same_404
test_twice = callbacks.test_the_same_callback_twice_changes_state_once
test_early = callbacks.test_an_early_callback_is_taken_when_the_lead_starts_waiting
test_early_sweep = (
    callbacks.test_a_callback_before_the_waiting_row_committed_is_matched_by_the_sweep
)
test_timeout = callbacks.test_timeout_times_the_run_out_and_tells_the_ping_tree
test_cancelled = callbacks.test_a_cancelled_run_makes_the_callback_a_404
test_successor = callbacks.test_a_deleted_endpoints_id_and_token_carry_over_to_its_successor
test_trigger = callbacks.test_a_webhook_trigger_starts_a_scenario_with_the_payload
test_good_signature = safety.test_a_good_signature_is_accepted
test_bad_signature = safety.test_a_bad_signature_is_refused_and_changes_nothing
test_replay = safety.test_a_replayed_message_is_refused
test_allowlist = safety.test_addresses_outside_the_allowlist_are_refused
test_bad_input = safety.test_bad_input_gets_a_4xx_never_a_500
test_change_elsewhere = memo.test_a_change_made_elsewhere_takes_effect_on_the_next_callback
test_recreated = memo.test_a_recreated_endpoint_with_the_same_id_is_read_again
test_memo_saves_lookup = memo.test_a_remembered_endpoint_saves_the_lookup
