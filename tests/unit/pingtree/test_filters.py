"""filters_evaluate: conditions with the response rules' operators, AND/OR groups,
partners, history, ratio, schedule, geo and external checks, and the reasons operators read.

Pure: fixed datetimes, no database.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from pingtree.filters import (
    COMPONENT_TYPES,
    FilterResult,
    History,
    filters_evaluate,
)
from structures.fieldtypes import TYPES

# Wednesday 2026-11-25 15:00 UTC (10:00 in New York).
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def evaluate(
    definition: dict,
    values: dict[str, Any] | None = None,
    *,
    partner_id: int | None = 5,
    now: datetime = NOW,
    history: History | None = None,
    external: dict[str, bool] | None = None,
) -> FilterResult:
    return filters_evaluate(
        definition,
        lead_values=values or {},
        partner_id=partner_id,
        now=now,
        history=history,
        external_checks=external,
    )


def one(field: str, operator: str, value: Any = "", value2: Any = "") -> dict:
    """A definition with a single condition."""
    condition = {"field": field, "operator": operator, "value": value, "value2": value2}
    return {"groups": [{"conditions": [condition]}]}


def test_an_empty_definition_passes_every_lead():
    result = evaluate({}, {"g_state": "TX"}, partner_id=None)
    assert result == FilterResult(passed=True, reason="", section="")


# --- operators ---------------------------------------------------------------------------

OPERATOR_CASES = [
    # operator, value, value2, lead value, holds
    ("equals", "approved", "", "Approved ", True),
    ("equals", "approved", "", "approve", False),
    ("equals", "CA|NY|TX", "", "ny", True),
    ("equals", "CA|NY|TX", "", "FL", False),
    ("equals", "app*", "", "application", True),
    ("equals", "app*", "", "happy", False),
    ("equals", "auto", "", None, False),
    ("not_equals", "CA|NY", "", "TX", True),
    ("not_equals", "CA|NY", "", "ca", False),
    ("not_equals", "app*", "", "apple", False),
    ("not_equals", "auto", "", None, True),
    ("is_true", "", "", "Yes", True),
    ("is_true", "", "", "true", True),
    ("is_true", "", "", "no", False),
    ("is_true", "", "", None, False),
    ("is_false", "", "", "false", True),
    ("is_false", "", "", "0", True),
    ("is_false", "", "", None, True),
    ("is_false", "", "", "yes", False),
    ("is_false", "", "", "pending", False),
    ("bigger_than", "1000", "", "1500", True),
    ("bigger_than", "1000", "", "$1,500.00", True),
    ("bigger_than", "1000", "", "1000", False),
    ("bigger_than", "1000", "", "abc", False),
    ("bigger_than", "1000", "", None, False),
    ("smaller_than", "1000", "", "999.99", True),
    ("smaller_than", "1000", "", "1000", False),
    ("smaller_than", "1000", "", "-5", True),
    ("between", "18", "65", "18", True),
    ("between", "18", "65", "65", True),
    ("between", "18", "65", "40.5", True),
    ("between", "18", "65", "17", False),
    ("between", "18", "65", "66", False),
    ("between", "18", "65", "", False),
    ("contains", "loan", "", "Personal LOAN offer", True),
    ("contains", "loan", "", "mortgage", False),
    ("not_contains", "test", "", "real lead", True),
    ("not_contains", "test", "", "a TEST lead", False),
    ("not_contains", "test", "", None, True),
    ("starts_with", "https://", "", "HTTPS://example.com", True),
    ("starts_with", "https://", "", "http://example.com", False),
    ("ends_with", ".gov", "", "someone.GOV", True),
    ("ends_with", ".gov", "", "someone.com", False),
    ("string_contains", "loan", "", "car loan", True),
    ("string_contains", "loan", "", "car", False),
    ("string_not_contains", "loan", "", "car", True),
    ("string_not_contains", "loan", "", "car loan", False),
    ("string_starts_with", "90", "", "90210", True),
    ("string_starts_with", "90", "", "10001", False),
    ("string_ends_with", "10", "", "90210", True),
    ("string_ends_with", "10", "", "90211", False),
    ("is_empty", "", "", None, True),
    ("is_empty", "", "", "   ", True),
    ("is_empty", "", "", "x", False),
    ("is_not_empty", "", "", "x", True),
    ("is_not_empty", "", "", " ", False),
    ("is_not_empty", "", "", None, False),
    ("matches", r"^\d{5}$", "", "90210", True),
    ("matches", r"^\d{5}$", "", "9021", False),
    ("matches", r"(?i)^acme", "", "ACME Corp", True),
    ("matches", r"^acme", "", "ACME Corp", False),
    ("always", "", "", None, True),
]


@pytest.mark.parametrize(("operator", "value", "value2", "seen", "holds"), OPERATOR_CASES)
def test_each_operator_holds_or_not_like_response_rules(operator, value, value2, seen, holds):
    values = {} if seen is None else {"x_field": seen}
    result = evaluate(one("x_field", operator, value, value2), values)
    assert result.passed is holds
    if not holds:
        assert result.section == "groups"
        assert "x_field" in result.reason


def test_a_number_or_boolean_in_the_definition_or_the_lead_is_read_as_text():
    assert evaluate(one("g_loan_amount", "bigger_than", 1000), {"g_loan_amount": 1500}).passed
    assert not evaluate(one("g_loan_amount", "bigger_than", 1000), {"g_loan_amount": 900}).passed
    assert evaluate(one("g_home_owner", "is_true"), {"g_home_owner": True}).passed
    assert not evaluate(one("g_home_owner", "is_true"), {"g_home_owner": False}).passed
    money = {"g_monthly_income": Decimal("2500.00")}
    assert evaluate(one("g_monthly_income", "between", 2000, 3000.5), money).passed
    assert evaluate(one("g_vehicle_year", "equals", 2020), {"g_vehicle_year": 2020.0}).passed


def test_field_names_are_case_insensitive_both_ways():
    assert evaluate(one("G_State", "equals", "CA"), {"g_state": "CA"}).passed
    assert evaluate(one("g_state", "equals", "CA"), {"G_STATE": "CA"}).passed
    assert not evaluate(one("g_state", "equals", "CA"), {"G_STATE": "TX"}).passed


def test_a_missing_field_is_seen_as_empty():
    result = evaluate(one("g_loan_amount", "bigger_than", "1000"), {"g_state": "CA"})
    assert not result.passed
    assert "value seen: empty" in result.reason
    assert evaluate(one("g_loan_amount", "is_empty"), {"g_state": "CA"}).passed
    assert evaluate(one("g_loan_amount", "is_empty"), {"g_loan_amount": None}).passed


def test_a_non_number_gives_the_operator_functions_note():
    result = evaluate(one("g_loan_amount", "bigger_than", "1000"), {"g_loan_amount": "lots"})
    assert not result.passed
    assert "the value is not a number" in result.reason
    assert "'lots'" in result.reason


# --- components ----------------------------------------------------------------------------


def test_components_come_from_the_field_types():
    assert COMPONENT_TYPES["area_code"] == "phone"
    assert COMPONENT_TYPES["domain"] == "email"
    assert COMPONENT_TYPES["prefix3"] == "zip"
    assert COMPONENT_TYPES["year"] == "date"
    for component, type_name in COMPONENT_TYPES.items():
        assert component in TYPES[type_name].components(
            {"phone": "+12125550123", "email": "a@b.example", "zip": "90210", "date": "2000-01-02"}[
                type_name
            ]
        )


@pytest.mark.parametrize(
    ("field", "value", "lead", "holds"),
    [
        ("g_phone.area_code", "212|646", {"g_phone": "+12125550123"}, True),
        ("g_phone.area_code", "212|646", {"g_phone": "+13105550123"}, False),
        ("g_phone.country_code", "1", {"g_phone": "+12125550123"}, True),
        ("g_email.domain", "*.edu|gmail.com", {"g_email": "a.b@GMAIL.com"}, True),
        ("g_email.domain", "*.edu", {"g_email": "a.b@gmail.com"}, False),
        ("g_zip.prefix3", "902", {"g_zip": "90210-1234"}, True),
        ("g_zip.zip5", "90210", {"g_zip": "90210-1234"}, True),
        ("g_date_of_birth.year", "1980", {"g_date_of_birth": "1980-05-01"}, True),
        ("G_PHONE.AREA_CODE", "212", {"g_phone": "+12125550123"}, True),
        # a local field: its type is inferred from the component it is asked for
        ("cell.area_code", "415", {"cell": "+14155550123"}, True),
        # a value its type cannot read, or a missing one, has an empty component
        ("g_phone.area_code", "212", {"g_phone": "not a phone"}, False),
        ("g_phone.area_code", "212", {}, False),
    ],
)
def test_a_condition_reads_a_component_of_a_field(field, value, lead, holds):
    assert evaluate(one(field, "equals", value), lead).passed is holds


def test_an_unreadable_component_is_empty_for_is_empty():
    assert evaluate(one("g_phone.area_code", "is_empty"), {"g_phone": "garbage"}).passed
    assert not evaluate(one("g_phone.area_code", "is_empty"), {"g_phone": "+12125550123"}).passed


# --- groups: AND / OR ----------------------------------------------------------------------

CA = {"field": "g_state", "operator": "equals", "value": "CA"}
NY = {"field": "g_state", "operator": "equals", "value": "NY"}
BIG = {"field": "g_loan_amount", "operator": "bigger_than", "value": "1000"}
OWNER = {"field": "g_home_owner", "operator": "is_true"}


def test_a_group_matching_all_needs_every_condition():
    definition = {"groups": [{"match": "all", "conditions": [CA, BIG]}]}
    assert evaluate(definition, {"g_state": "CA", "g_loan_amount": "5000"}).passed
    result = evaluate(definition, {"g_state": "CA", "g_loan_amount": "500"})
    assert not result.passed
    assert "g_loan_amount is bigger than '1000' does not hold" in result.reason
    assert "g_state" not in result.reason  # only the condition that failed


def test_a_group_matching_any_needs_one_condition_and_lists_all_when_none_holds():
    definition = {"groups": [{"match": "any", "conditions": [CA, NY]}]}
    assert evaluate(definition, {"g_state": "NY"}).passed
    result = evaluate(definition, {"g_state": "TX"})
    assert not result.passed
    assert "none of its conditions holds" in result.reason
    assert "'CA'" in result.reason and "'NY'" in result.reason


def test_groups_default_to_all_and_combine_with_all():
    definition = {
        "groups": [{"match": "any", "conditions": [CA, NY]}, {"conditions": [BIG, OWNER]}]
    }
    lead = {"g_state": "NY", "g_loan_amount": "5000", "g_home_owner": "yes"}
    assert evaluate(definition, lead).passed
    result = evaluate(definition, {**lead, "g_home_owner": "no"})
    assert not result.passed
    assert result.reason.startswith("field filter, group 2: g_home_owner is true")
    result = evaluate(definition, {**lead, "g_state": "TX"})
    assert result.reason.startswith("field filter, group 1:")


def test_groups_matching_any_need_one_group():
    definition = {
        "match": "any",
        "groups": [{"conditions": [CA, BIG]}, {"match": "any", "conditions": [NY, OWNER]}],
    }
    assert evaluate(definition, {"g_state": "CA", "g_loan_amount": "5000"}).passed
    assert evaluate(definition, {"g_state": "TX", "g_home_owner": "1"}).passed
    result = evaluate(definition, {"g_state": "CA", "g_loan_amount": "5", "g_home_owner": "0"})
    assert not result.passed
    assert result.reason.startswith("field filter, no group holds: group 1:")
    assert "group 2:" in result.reason


def test_match_any_with_no_groups_passes():
    assert evaluate({"match": "any"}, {}).passed
    assert evaluate({"match": "any", "groups": []}, {}).passed


# --- reasons do not echo emails and phones ---------------------------------------------------


def test_a_failed_condition_on_an_email_masks_the_email():
    result = evaluate(one("g_email", "ends_with", ".edu"), {"g_email": "john.smith@gmail.com"})
    assert not result.passed
    assert "john.smith@gmail.com" not in result.reason
    assert "g_email ends with '.edu'" in result.reason
    assert "j***@gmail.com" in result.reason


def test_a_failed_condition_on_a_phone_masks_the_phone():
    result = evaluate(one("g_phone", "starts_with", "+44"), {"g_phone": "+12125550123"})
    assert "+12125550123" not in result.reason
    assert "+1212555****" in result.reason
    national = evaluate(one("g_phone.national", "equals", "1"), {"g_phone": "+12125550123"})
    assert "2125550123" not in national.reason


def test_sensitive_catalogue_fields_are_masked():
    result = evaluate(one("g_ssn", "equals", "000-00-0000"), {"g_ssn": "123-45-6789"})
    assert "123-45-6789" not in result.reason
    assert "g_ssn" in result.reason


def test_a_local_field_that_looks_like_an_email_or_phone_is_masked():
    email = evaluate(one("work_email", "equals", "x"), {"work_email": "jane.doe@corp.example"})
    assert "jane.doe@corp.example" not in email.reason
    phone = evaluate(one("mobile", "equals", "x"), {"mobile": "+1 (212) 555-0123"})
    assert "555-0123" not in phone.reason
    plain = evaluate(one("favourite_colour", "equals", "blue"), {"favourite_colour": "green"})
    assert "'green'" in plain.reason


def test_other_values_are_shown_as_the_lead_page_shows_them_shortened():
    assert "'TX'" in evaluate(one("g_state", "equals", "CA"), {"g_state": "TX"}).reason
    long = evaluate(one("g_comments", "equals", "x"), {"g_comments": "a" * 500})
    assert "a" * 60 + "…" in long.reason
    assert "a" * 61 not in long.reason


# --- partners ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "partner_id", "passes", "reason"),
    [
        ("include", 3, True, ""),
        ("include", 4, False, "partner 4 is not among the partners the partner filter includes"),
        ("include", None, False, "the lead has no partner"),
        ("exclude", 3, False, "partner 3 is excluded by the partner filter"),
        ("exclude", 4, True, ""),
        ("exclude", None, True, ""),
    ],
)
def test_partners_are_included_or_excluded(mode, partner_id, passes, reason):
    result = evaluate({"partners": {"mode": mode, "ids": [3, 7]}}, partner_id=partner_id)
    assert result.passed is passes
    assert reason in result.reason
    assert result.section == ("" if passes else "partners")


# --- history -------------------------------------------------------------------------------


def history(
    sent: list[datetime] | None = None,
    rejected: list[tuple[datetime, str]] | None = None,
    accepted: list[datetime] | None = None,
) -> History:
    return History(sent_at=sent or [], rejected=rejected or [], accepted_at=accepted or [])


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.mark.parametrize("kind", ["sent", "accepted"])
def test_sent_or_accepted_within_the_window_is_refused_and_older_is_not(kind):
    definition = {"history": [{"kind": kind, "within_days": 30}]}
    recent = history(**{kind: [days_ago(40), days_ago(3)]})
    result = evaluate(definition, history=recent)
    assert not result.passed
    assert result.section == "history"
    assert "3 days ago" in result.reason
    assert "within 30 days" in result.reason
    assert evaluate(definition, history=history(**{kind: [days_ago(31)]})).passed
    # the other kinds do not count
    other = "accepted" if kind == "sent" else "sent"
    assert evaluate(definition, history=history(**{other: [days_ago(1)]})).passed


def test_the_window_includes_its_first_moment():
    definition = {"history": [{"kind": "sent", "within_days": 30}]}
    assert not evaluate(definition, history=history(sent=[days_ago(30)])).passed
    edge = NOW - timedelta(days=30, seconds=1)
    assert evaluate(definition, history=history(sent=[edge])).passed


def test_a_window_in_hours():
    definition = {"history": [{"kind": "sent", "within_hours": 12}]}
    assert not evaluate(definition, history=history(sent=[NOW - timedelta(hours=11)])).passed
    assert evaluate(definition, history=history(sent=[NOW - timedelta(hours=13)])).passed
    result = evaluate(definition, history=history(sent=[NOW - timedelta(hours=11)]))
    assert "11 h ago, within 12 hours" in result.reason


def test_rejected_without_a_reason_refuses_any_rejection():
    definition = {"history": [{"kind": "rejected", "within_days": 7}]}
    result = evaluate(definition, history=history(rejected=[(days_ago(2), "Bad state")]))
    assert not result.passed
    assert "rejected by this offer 2 days ago (reason 'Bad state')" in result.reason
    assert evaluate(definition, history=history(rejected=[(days_ago(8), "Bad state")])).passed


@pytest.mark.parametrize(
    ("pattern", "reason", "refused"),
    [
        ("duplicate", "Duplicate", True),
        ("duplicate", "duplicate lead", False),
        ("dup*", "duplicate lead", True),
        ("dup*", "not a dup", False),
        ("*dup*", "not a dup", True),
        ("duplicate|already exists", "Already exists", True),
        ("duplicate|already exists", "Bad zip", False),
    ],
)
def test_rejected_for_a_reason_uses_alternatives_and_wildcards(pattern, reason, refused):
    definition = {"history": [{"kind": "rejected", "within_days": 30, "reason": pattern}]}
    result = evaluate(definition, history=history(rejected=[(days_ago(1), reason)]))
    assert result.passed is not refused
    if refused:
        assert f"matching {pattern!r}" in result.reason


def test_a_matching_rejection_outside_the_window_does_not_count():
    definition = {"history": [{"kind": "rejected", "within_days": 30, "reason": "dup*"}]}
    old_match = (days_ago(45), "duplicate")
    recent_other = (days_ago(1), "bad zip")
    assert evaluate(definition, history=history(rejected=[old_match, recent_other])).passed


def test_every_history_rule_is_checked():
    definition = {
        "history": [
            {"kind": "sent", "within_days": 1},
            {"kind": "accepted", "within_days": 90},
        ]
    }
    result = evaluate(definition, history=history(sent=[days_ago(5)], accepted=[days_ago(60)]))
    assert not result.passed
    assert "already accepted by this offer" in result.reason


def test_naive_history_datetimes_are_utc():
    definition = {"history": [{"kind": "sent", "within_hours": 1}]}
    naive = datetime(2026, 11, 25, 14, 30)  # 30 minutes before NOW, read as UTC
    assert not evaluate(definition, history=history(sent=[naive])).passed
    assert evaluate(definition, history=history(sent=[datetime(2026, 11, 25, 13, 30)])).passed


def test_history_rules_without_history_hold_the_lead_back():
    result = evaluate({"history": [{"kind": "sent", "within_days": 30}]}, history=None)
    assert not result.passed
    assert "history was not provided" in result.reason


def test_no_history_rule_needs_no_history():
    assert evaluate({"history": []}, history=None).passed


# --- ratio ---------------------------------------------------------------------------------

DTI = {
    "ratio": [
        {
            "numerator": "g_loan_amount",
            "denominator": "g_monthly_income",
            "operator": "smaller_than",
            "value": "10",
        }
    ]
}


def test_a_ratio_within_the_rule_passes():
    assert evaluate(DTI, {"g_loan_amount": "5000", "g_monthly_income": "1000"}).passed
    assert evaluate(DTI, {"g_loan_amount": "$9,999.00", "g_monthly_income": "1,000.00"}).passed


def test_a_ratio_outside_the_rule_says_the_ratio():
    result = evaluate(DTI, {"g_loan_amount": "25000", "g_monthly_income": "2000"})
    assert not result.passed
    assert result.section == "ratio"
    assert "g_loan_amount / g_monthly_income is 12.5" in result.reason
    assert "is smaller than '10'" in result.reason


def test_a_ratio_between():
    rule = {**DTI["ratio"][0], "operator": "between", "value": "0.5", "value2": "2"}
    definition = {"ratio": [rule]}
    assert evaluate(definition, {"g_loan_amount": "1000", "g_monthly_income": "1000"}).passed
    assert evaluate(definition, {"g_loan_amount": "2000", "g_monthly_income": "1000"}).passed
    assert not evaluate(definition, {"g_loan_amount": "2001", "g_monthly_income": "1000"}).passed
    assert not evaluate(definition, {"g_loan_amount": "1", "g_monthly_income": "3"}).passed


def test_a_ratio_with_a_zero_denominator_fails_clearly():
    result = evaluate(DTI, {"g_loan_amount": "5000", "g_monthly_income": "0.00"})
    assert not result.passed
    assert "g_monthly_income is 0" in result.reason
    assert "division by zero" in result.reason


@pytest.mark.parametrize(
    ("lead", "culprit", "seen"),
    [
        ({"g_loan_amount": "lots", "g_monthly_income": "1000"}, "g_loan_amount", "'lots'"),
        ({"g_loan_amount": "5000", "g_monthly_income": "n/a"}, "g_monthly_income", "'n/a'"),
        ({"g_loan_amount": "5000"}, "g_monthly_income", "empty"),
    ],
)
def test_a_ratio_of_something_not_a_number_fails_clearly(lead, culprit, seen):
    result = evaluate(DTI, lead)
    assert not result.passed
    assert f"{culprit} is not a number (value seen: {seen})" in result.reason
    assert "cannot be computed" in result.reason


def test_a_ratio_that_repeats_forever_is_compared_rounded():
    rule = {**DTI["ratio"][0], "operator": "bigger_than", "value": "0.3333"}
    result = evaluate({"ratio": [rule]}, {"g_loan_amount": "1", "g_monthly_income": "3"})
    assert not result.passed  # 0.3333 is not bigger than 0.3333
    assert "is 0.3333," in result.reason


# --- schedule ------------------------------------------------------------------------------

WORKING_HOURS = {
    "schedule": {
        "timezone": "America/New_York",
        "days": [0, 1, 2, 3, 4],
        "from": "09:00",
        "to": "18:00",
    }
}


@pytest.mark.parametrize(
    ("moment", "passes"),
    [
        (datetime(2026, 11, 25, 14, 0, tzinfo=UTC), True),  # Wed 09:00 EST, first minute
        (datetime(2026, 11, 25, 13, 59, tzinfo=UTC), False),  # Wed 08:59 EST
        (datetime(2026, 11, 25, 22, 59, tzinfo=UTC), True),  # Wed 17:59 EST
        (datetime(2026, 11, 25, 23, 0, tzinfo=UTC), False),  # Wed 18:00 EST: to is exclusive
        (datetime(2026, 11, 28, 15, 0, tzinfo=UTC), False),  # Saturday 10:00
        (datetime(2026, 11, 28, 3, 0, tzinfo=UTC), False),  # Fri 22:00 EST (Sat in UTC)
        (datetime(2026, 11, 24, 3, 0, tzinfo=UTC), False),  # Mon 22:00 EST (Tue in UTC)
    ],
)
def test_a_schedule_of_weekdays_and_hours(moment, passes):
    assert evaluate(WORKING_HOURS, now=moment).passed is passes


def test_outside_the_schedule_says_when_it_is_and_when_the_offer_is_open():
    result = evaluate(WORKING_HOURS, now=datetime(2026, 11, 28, 15, 0, tzinfo=UTC))
    assert result.section == "schedule"
    assert result.reason == (
        "outside the schedule: it is Saturday 10:00 in America/New_York, the offer takes "
        "leads Mon, Tue, Wed, Thu, Fri 09:00-18:00"
    )


def test_the_same_instant_is_inside_in_one_timezone_and_outside_in_another():
    moment = datetime(2026, 11, 25, 15, 30, tzinfo=UTC)  # 10:30 New York, 07:30 Los Angeles
    assert evaluate(WORKING_HOURS, now=moment).passed
    la = {"schedule": {**WORKING_HOURS["schedule"], "timezone": "America/Los_Angeles"}}
    result = evaluate(la, now=moment)
    assert not result.passed
    assert "Wednesday 07:30 in America/Los_Angeles" in result.reason


@pytest.mark.parametrize(
    ("moment", "passes"),
    [
        # Spring forward on Sunday 2026-03-08: 13:30 UTC is 08:30 EST before, 09:30 EDT after.
        (datetime(2026, 3, 6, 13, 30, tzinfo=UTC), False),
        (datetime(2026, 3, 9, 13, 30, tzinfo=UTC), True),
        (datetime(2026, 3, 9, 22, 30, tzinfo=UTC), False),  # 18:30 EDT
        (datetime(2026, 3, 6, 22, 30, tzinfo=UTC), True),  # 17:30 EST
        # Fall back on Sunday 2026-11-01: 13:30 UTC is 09:30 EDT before, 08:30 EST after.
        (datetime(2026, 10, 30, 13, 30, tzinfo=UTC), True),
        (datetime(2026, 11, 2, 13, 30, tzinfo=UTC), False),
    ],
)
def test_a_schedule_follows_daylight_saving_time(moment, passes):
    assert evaluate(WORKING_HOURS, now=moment).passed is passes


NIGHTS = {"schedule": {"timezone": "UTC", "days": [4], "from": "22:00", "to": "06:00"}}


@pytest.mark.parametrize(
    ("moment", "passes"),
    [
        (datetime(2026, 11, 27, 21, 59, tzinfo=UTC), False),  # Friday before the window
        (datetime(2026, 11, 27, 22, 0, tzinfo=UTC), True),  # Friday 22:00
        (datetime(2026, 11, 27, 23, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 28, 2, 0, tzinfo=UTC), True),  # Saturday 02:00: Friday's night
        (datetime(2026, 11, 28, 5, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 28, 6, 0, tzinfo=UTC), False),  # Saturday 06:00: closed
        (datetime(2026, 11, 28, 23, 0, tzinfo=UTC), False),  # Saturday night is not chosen
        (datetime(2026, 11, 27, 2, 0, tzinfo=UTC), False),  # Friday 02:00 is Thursday's night
    ],
)
def test_an_overnight_window_belongs_to_the_day_it_starts(moment, passes):
    assert evaluate(NIGHTS, now=moment).passed is passes


def test_a_schedule_without_hours_is_all_day_on_its_days_and_defaults_to_utc():
    weekend = {"schedule": {"days": [5, 6]}}
    assert evaluate(weekend, now=datetime(2026, 11, 28, 0, 0, tzinfo=UTC)).passed
    assert evaluate(weekend, now=datetime(2026, 11, 29, 23, 59, tzinfo=UTC)).passed
    assert not evaluate(weekend, now=datetime(2026, 11, 27, 23, 59, tzinfo=UTC)).passed


def test_a_schedule_without_days_is_every_day_and_24_00_ends_the_day():
    evenings = {"schedule": {"timezone": "Europe/Berlin", "from": "18:00", "to": "24:00"}}
    assert evaluate(evenings, now=datetime(2026, 11, 28, 22, 59, tzinfo=UTC)).passed  # 23:59
    assert not evaluate(evenings, now=datetime(2026, 11, 28, 23, 0, tzinfo=UTC)).passed  # 00:00
    result = evaluate(evenings, now=datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    assert "every day 18:00-24:00" in result.reason


def test_a_naive_now_is_utc():
    assert evaluate(WORKING_HOURS, now=datetime(2026, 11, 25, 15, 0)).passed
    assert not evaluate(WORKING_HOURS, now=datetime(2026, 11, 25, 12, 0)).passed


# --- geo -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geo", "lead", "passes", "reason"),
    [
        ({"mode": "include", "states": ["CA", "ny"]}, {"g_state": "NY"}, True, ""),
        ({"mode": "include", "states": ["CA"]}, {"g_state": "Texas"}, False, "state TX"),
        ({"mode": "include", "states": ["CA"]}, {"g_state": "California"}, True, ""),
        ({"mode": "include", "states": ["CA"]}, {}, False, "g_state is empty"),
        ({"mode": "exclude", "states": ["TX"]}, {"g_state": "tx"}, False, "state TX is excluded"),
        ({"mode": "exclude", "states": ["TX"]}, {"g_state": "CA"}, True, ""),
        ({"mode": "exclude", "states": ["TX"]}, {}, True, ""),
        ({"mode": "include", "zips": ["90210"]}, {"g_zip": "90210"}, True, ""),
        ({"mode": "include", "zips": ["90210"]}, {"g_zip": "90210-1234"}, True, ""),
        ({"mode": "include", "zips": ["90210"]}, {"g_zip": "90211"}, False, "zip 90211"),
        ({"mode": "exclude", "zips": ["90210"]}, {"g_zip": "90210"}, False, "zip 90210 is excl"),
        ({"mode": "exclude", "zips": ["90210"]}, {"g_zip": "90211"}, True, ""),
        ({"mode": "include", "zip_prefixes": ["902", "100"]}, {"g_zip": "10001"}, True, ""),
        ({"mode": "include", "zip_prefixes": ["902"]}, {"g_zip": "91001"}, False, "zip 91001"),
        (
            {"mode": "exclude", "zip_prefixes": ["902"]},
            {"g_zip": "90299"},
            False,
            "zip 90299 (prefix 902) is excluded by the geo filter",
        ),
        ({"mode": "exclude", "zip_prefixes": ["902"]}, {"g_zip": "99021"}, True, ""),
        ({"mode": "include", "zip_prefixes": ["k1a"]}, {"g_zip": "K1A 0B1"}, True, ""),
        # include: any listed state, zip or prefix lets the lead in
        ({"mode": "include", "states": ["CA"], "zips": ["10001"]}, {"g_zip": "10001"}, True, ""),
        (
            {"mode": "include", "states": ["CA"], "zips": ["10001"]},
            {"g_state": "NY", "g_zip": "10002"},
            False,
            "state NY, zip 10002: not included by the geo filter",
        ),
        # exclude: any listed state, zip or prefix keeps the lead out
        (
            {"mode": "exclude", "states": ["NY"], "zip_prefixes": ["900"]},
            {"g_state": "CA", "g_zip": "90001"},
            False,
            "prefix 900",
        ),
    ],
)
def test_geo_includes_or_excludes_states_zips_and_prefixes(geo, lead, passes, reason):
    result = evaluate({"geo": geo}, lead)
    assert result.passed is passes
    assert reason in result.reason
    if not passes:
        assert result.section == "geo"


def test_geo_reads_the_fields_it_is_told_to():
    geo = {"mode": "include", "states": ["CA"], "field_state": "Home_State"}
    assert evaluate({"geo": geo}, {"home_state": "CA", "g_state": "TX"}).passed
    assert not evaluate({"geo": geo}, {"home_state": "TX", "g_state": "CA"}).passed
    by_zip = {"mode": "exclude", "zips": ["10001"], "field_zip": "postcode"}
    assert not evaluate({"geo": by_zip}, {"postcode": "10001"}).passed
    assert evaluate({"geo": by_zip}, {"g_zip": "10001"}).passed


# --- external checks -----------------------------------------------------------------------

CHECKED = {"external": [{"integration": 12}, {"integration": 40}]}


def test_external_checks_pass_when_every_integration_succeeded():
    assert evaluate(CHECKED, external={"12": True, "40": True}).passed


def test_a_failed_external_check_names_the_integration():
    result = evaluate(CHECKED, external={"12": True, "40": False})
    assert not result.passed
    assert result.section == "external"
    assert result.reason == "external check: integration 40 did not succeed"


@pytest.mark.parametrize("results", [None, {}, {"12": True}])
def test_an_external_check_that_was_not_run_holds_the_lead_back(results):
    result = evaluate(CHECKED, external=results)
    assert not result.passed
    assert "was not run" in result.reason


# --- the whole definition ------------------------------------------------------------------

FULL = {
    "match": "all",
    "groups": [{"match": "all", "conditions": [BIG]}],
    "partners": {"mode": "exclude", "ids": [9]},
    "history": [{"kind": "rejected", "within_days": 30, "reason": "dup*"}],
    "ratio": DTI["ratio"],
    "external": [{"integration": 12}],
    "schedule": WORKING_HOURS["schedule"],
    "geo": {"mode": "include", "states": ["CA", "NY"]},
}
GOOD_LEAD = {"g_state": "NY", "g_loan_amount": "5000", "g_monthly_income": "2500"}


def test_a_lead_that_meets_every_section_passes():
    result = evaluate(FULL, GOOD_LEAD, history=history(), external={"12": True})
    assert result == FilterResult(passed=True, reason="", section="")


@pytest.mark.parametrize(
    ("change", "section"),
    [
        ({"partner_id": 9}, "partners"),
        ({"now": datetime(2026, 11, 28, 15, 0, tzinfo=UTC)}, "schedule"),
        ({"values": {**GOOD_LEAD, "g_state": "TX"}}, "geo"),
        ({"values": {**GOOD_LEAD, "g_loan_amount": "900", "g_monthly_income": "900"}}, "groups"),
        ({"values": {**GOOD_LEAD, "g_monthly_income": "100"}}, "ratio"),
        ({"history": history(rejected=[(days_ago(1), "duplicate")])}, "history"),
        ({"external": {"12": False}}, "external"),
    ],
)
def test_each_section_alone_can_refuse_the_lead(change, section):
    arguments = {
        "values": GOOD_LEAD,
        "partner_id": 5,
        "now": NOW,
        "history": history(),
        "external": {"12": True},
        **change,
    }
    values = arguments.pop("values")
    result = evaluate(FULL, values, **arguments)
    assert not result.passed
    assert result.section == section


def test_the_cheapest_failing_section_gives_the_reason():
    result = evaluate(
        FULL,
        {"g_state": "TX", "g_loan_amount": "1"},
        partner_id=9,
        now=datetime(2026, 11, 28, 15, 0, tzinfo=UTC),
        external={"12": False},
    )
    assert result.section == "partners"
    result = evaluate(FULL, {"g_state": "TX"}, now=datetime(2026, 11, 28, 15, 0, tzinfo=UTC))
    assert result.section == "schedule"


def test_an_invalid_definition_refuses_every_lead_instead_of_raising():
    result = evaluate(one("g_state", "in_list", "CA,NY"), {"g_state": "CA"})
    assert not result.passed
    assert result.section == "definition"
    assert "the offer's filters are invalid" in result.reason
    assert "groups[0].conditions[0].operator" in result.reason
    assert not evaluate("not a definition", {}).passed  # type: ignore[arg-type]
