"""filters_validate: every malformed shape gets a message at its path, nothing raises."""

import copy
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from integrations.spec import Operator
from pingtree.filters import History, filters_evaluate, filters_validate

VALID = {
    "match": "any",
    "groups": [
        {
            "match": "all",
            "conditions": [
                {"field": "g_loan_amount", "operator": "between", "value": "1000", "value2": 5000},
                {"field": "g_phone.area_code", "operator": "equals", "value": "212|646"},
                {"field": "g_email", "operator": "matches", "value": r"(?i)@(gmail|yahoo)\.com$"},
            ],
        },
        {"conditions": [{"field": "g_home_owner", "operator": "is_true"}]},
    ],
    "partners": {"mode": "include", "ids": [3, 7]},
    "history": [
        {"kind": "sent", "within_days": 30},
        {"kind": "rejected", "within_hours": 12, "reason": "dup*|already exists"},
        {"kind": "accepted", "within_days": 365},
    ],
    "ratio": [
        {
            "numerator": "g_loan_amount",
            "denominator": "g_monthly_income",
            "operator": "smaller_than",
            "value": 10,
        }
    ],
    "external": [{"integration": 12}],
    "schedule": {"timezone": "America/New_York", "days": [0, 4], "from": "22:00", "to": "6:00"},
    "geo": {
        "mode": "exclude",
        "states": ["NY"],
        "zips": ["90210"],
        "zip_prefixes": ["902"],
        "field_state": "g_state",
        "field_zip": "g_zip",
    },
}


def test_a_complete_valid_definition_has_no_errors():
    assert filters_validate(VALID) == {}
    assert filters_validate({}) == {}


@pytest.mark.parametrize("operator", [str(o) for o in Operator])
def test_every_response_rule_operator_is_a_filter_operator(operator):
    needs = {
        "bigger_than": ("1", ""),
        "smaller_than": ("1", ""),
        "between": ("1", "2"),
        "matches": ("^a", ""),
    }
    value, value2 = needs.get(operator, ("x", ""))
    condition = {"field": "f", "operator": operator, "value": value, "value2": value2}
    assert filters_validate({"groups": [{"conditions": [condition]}]}) == {}


def with_change(path: list, value: object) -> dict:
    """VALID with the value at ``path`` replaced (or removed when value is DELETE)."""
    definition = copy.deepcopy(VALID)
    target = definition
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return definition


DELETE = object()
C0 = ["groups", 0, "conditions", 0]


@pytest.mark.parametrize(
    ("path", "value", "error_path", "fragment"),
    [
        # the top level
        (["match"], "both", "match", "'match' must be one of 'all', 'any'"),
        (["colour"], "red", "colour", "Unknown key 'colour' in the filter definition"),
        # groups and conditions
        (["groups"], {"a": 1}, "groups", "Groups must be a list, not an object"),
        (["groups", 0], "CA", "groups[0]", "A condition group must be an object, not a text"),
        (["groups", 0, "when"], 1, "groups[0].when", "Unknown key 'when' in a condition group"),
        (["groups", 0, "match"], 1, "groups[0].match", "must be one of 'all', 'any'"),
        (["groups", 0, "conditions"], DELETE, "groups[0].conditions", "needs a list"),
        (["groups", 0, "conditions"], [], "groups[0].conditions", "at least one condition"),
        (["groups", 0, "conditions"], "x", "groups[0].conditions", "must be a list"),
        (C0, ["x"], "groups[0].conditions[0]", "A condition must be an object, not a list"),
        ([*C0, "key"], "x", "groups[0].conditions[0].key", "Unknown key 'key' in a condition"),
        ([*C0, "field"], DELETE, "groups[0].conditions[0].field", "A field name is required"),
        ([*C0, "field"], 12, "groups[0].conditions[0].field", "not a number"),
        ([*C0, "field"], " ", "groups[0].conditions[0].field", "A field name is required, such"),
        ([*C0, "field"], "g loan", "groups[0].conditions[0].field", "is not a field name"),
        ([*C0, "field"], "g_phone.areacode", "groups[0].conditions[0].field", "Unknown component"),
        (
            [*C0, "field"],
            "g_email.area_code",
            "groups[0].conditions[0].field",
            "g_email is of type email and has no component 'area_code'",
        ),
        ([*C0, "operator"], "foo", "groups[0].conditions[0].operator", "Unknown operator 'foo'"),
        ([*C0, "operator"], DELETE, "groups[0].conditions[0].operator", "not null"),
        ([*C0, "operator"], 3, "groups[0].conditions[0].operator", "must be a text"),
        ([*C0, "operator"], "in_list", "groups[0].conditions[0].operator", "use 'equals' with"),
        ([*C0, "operator"], "zip_prefix", "groups[0].conditions[0].operator", "zip_prefixes"),
        ([*C0, "value"], "lots", "groups[0].conditions[0].value", "needs a number as value"),
        ([*C0, "value"], {"min": 1}, "groups[0].conditions[0].value", "a text or a number"),
        ([*C0, "value"], True, "groups[0].conditions[0].value", "a text or a number"),
        ([*C0, "value"], "1" * 2001, "groups[0].conditions[0].value", "longer than 2000"),
        ([*C0, "value2"], DELETE, "groups[0].conditions[0].value2", "'between' needs value2"),
        ([*C0, "value2"], "", "groups[0].conditions[0].value2", "'between' needs value2"),
        ([*C0, "value2"], "max", "groups[0].conditions[0].value2", "a number as value2"),
        ([*C0, "value2"], "999", "groups[0].conditions[0].value2", "nothing is between them"),
        (
            ["groups", 0, "conditions", 1, "value"],
            "  ",
            "groups[0].conditions[1].value",
            "'equals' needs a value",
        ),
        (
            ["groups", 0, "conditions", 2, "value"],
            "(unclosed",
            "groups[0].conditions[2].value",
            "Invalid regular expression",
        ),
        (
            ["groups", 0, "conditions", 2, "value"],
            "(a+)+$",
            "groups[0].conditions[2].value",
            "repeats a group that already holds a repetition",
        ),
        (
            ["groups", 0, "conditions", 2, "value"],
            "",
            "groups[0].conditions[2].value",
            "The regular expression is empty",
        ),
        # partners
        (["partners"], [3], "partners", "Partners must be an object, not a list"),
        (["partners", "mode"], "only", "partners.mode", "'mode' must be one of"),
        (["partners", "mode"], DELETE, "partners.mode", "not null"),
        (["partners", "ids"], DELETE, "partners.ids", "List the partner ids"),
        (["partners", "ids"], 3, "partners.ids", "must be a list"),
        (["partners", "ids"], [], "partners.ids", "at least one partner id"),
        (["partners", "ids"], ["3"], "partners.ids[0]", "positive whole number, not '3'"),
        (["partners", "ids"], [True], "partners.ids[0]", "positive whole number"),
        (["partners", "ids"], [0], "partners.ids[0]", "positive whole number"),
        (["partners", "ids"], list(range(1, 10_002)), "partners.ids", "at most 10000"),
        (["partners", "who"], 1, "partners.who", "Unknown key 'who' in partners"),
        # history
        (["history"], {"kind": "sent"}, "history", "History must be a list"),
        (["history", 0], "sent", "history[0]", "A history rule must be an object"),
        (["history", 0, "kind"], "bought", "history[0].kind", "'kind' must be one of"),
        (["history", 0, "within_days"], DELETE, "history[0].within_days", "within_days or"),
        (["history", 0, "within_hours"], 1, "history[0].within_days", "one of them"),
        (["history", 0, "within_days"], 0, "history[0].within_days", "from 1 to 3660"),
        (["history", 0, "within_days"], "30", "history[0].within_days", "whole number"),
        (["history", 0, "within_days"], 1.5, "history[0].within_days", "whole number"),
        (["history", 0, "within_days"], True, "history[0].within_days", "whole number"),
        (["history", 1, "within_hours"], 10**6, "history[1].within_hours", "from 1 to 87840"),
        (["history", 0, "reason"], "dup", "history[0].reason", "kind 'rejected' only"),
        (["history", 1, "reason"], ["dup"], "history[1].reason", "must be a text"),
        (["history", 0, "days"], 3, "history[0].days", "Unknown key 'days'"),
        # ratio
        (["ratio", 0, "numerator"], DELETE, "ratio[0].numerator", "A field name is required"),
        (["ratio", 0, "denominator"], "1x", "ratio[0].denominator", "is not a field name"),
        (["ratio", 0, "operator"], "equals", "ratio[0].operator", "use one of: bigger_than"),
        (["ratio", 0, "value"], "ten", "ratio[0].value", "needs a number"),
        (["ratio", 0, "operator"], "between", "ratio[0].value2", "'between' needs value2"),
        (["ratio", 0, "by"], 1, "ratio[0].by", "Unknown key 'by' in a ratio rule"),
        (["ratio"], {}, "ratio", "Ratio must be a list"),
        # external
        (["external"], 12, "external", "External must be a list"),
        (["external", 0], 12, "external[0]", "An external check must be an object"),
        (["external", 0, "integration"], "12", "external[0].integration", "positive whole"),
        (["external", 0, "integration"], DELETE, "external[0].integration", "positive whole"),
        (["external", 0, "must"], "succeed", "external[0].must", "Unknown key 'must'"),
        # schedule
        (["schedule"], "weekdays", "schedule", "Schedule must be an object"),
        (["schedule", "timezone"], "Mars/Olympus", "schedule.timezone", "Unknown timezone"),
        (["schedule", "timezone"], "", "schedule.timezone", "Unknown timezone"),
        (["schedule", "timezone"], -5, "schedule.timezone", "not a number"),
        (["schedule", "days"], "weekdays", "schedule.days", "Days must be a list"),
        (["schedule", "days"], [], "schedule.days", "at least one day"),
        (["schedule", "days"], [7], "schedule.days[0]", "0 (Monday) to 6 (Sunday)"),
        (["schedule", "days"], ["mon"], "schedule.days[0]", "0 (Monday) to 6 (Sunday)"),
        (["schedule", "days"], list(range(8)), "schedule.days", "at most 7"),
        (["schedule", "from"], DELETE, "schedule.from", "Give both from and to"),
        (["schedule", "to"], DELETE, "schedule.to", "Give both from and to"),
        (["schedule", "from"], "25:00", "schedule.from", "HH:MM"),
        (["schedule", "from"], "9am", "schedule.from", "HH:MM"),
        (["schedule", "to"], "18:60", "schedule.to", "HH:MM"),
        (["schedule", "to"], 18, "schedule.to", "HH:MM"),
        (["schedule", "from"], "24:00", "schedule.from", "cannot be 24:00"),
        (["schedule", "from"], "06:00", "schedule.to", "the window is empty"),
        (["schedule", "hours"], "9-5", "schedule.hours", "Unknown key 'hours' in schedule"),
        # geo
        (["geo"], ["CA"], "geo", "Geo must be an object"),
        (["geo", "mode"], "only", "geo.mode", "'mode' must be one of 'include', 'exclude'"),
        (["geo", "states"], "CA", "geo.states", "States must be a list"),
        (["geo", "states"], [""], "geo.states[0]", "non-empty text"),
        (["geo", "zips"], [90210], "geo.zips[0]", "non-empty text, not 90210"),
        (["geo", "zip_prefixes"], [None], "geo.zip_prefixes[0]", "non-empty text"),
        (["geo", "field_zip"], "zip code", "geo.field_zip", "is not a field name"),
        (["geo", "country"], "US", "geo.country", "Unknown key 'country' in geo"),
    ],
)
def test_a_malformed_definition_gets_a_message_at_its_path(path, value, error_path, fragment):
    errors = filters_validate(with_change(path, value))
    assert error_path in errors, errors
    assert any(fragment in message for message in errors[error_path]), errors[error_path]


def test_geo_without_any_state_zip_or_prefix_is_refused():
    errors = filters_validate({"geo": {"mode": "include", "states": [], "zips": []}})
    assert errors == {
        "geo": ["List at least one state, zip or zip prefix (or remove the geo filter)."]
    }


@pytest.mark.parametrize("definition", [None, [], "{}", 3, True])
def test_something_that_is_not_an_object_is_refused_at_the_root(definition):
    errors = filters_validate(definition)  # type: ignore[arg-type]
    assert list(errors) == ["definition"]
    assert "must be an object" in errors["definition"][0]


def test_every_error_is_reported_not_only_the_first():
    errors = filters_validate(
        {
            "groups": [{"conditions": [{"field": "", "operator": "nope"}]}],
            "partners": {"mode": "x", "ids": []},
            "schedule": {"timezone": "Nowhere"},
        }
    )
    assert set(errors) == {
        "groups[0].conditions[0].field",
        "groups[0].conditions[0].operator",
        "partners.mode",
        "partners.ids",
        "schedule.timezone",
    }


def test_operator_aliases_and_spacing_are_accepted():
    condition = {"field": " g_state ", "operator": " String_Contains ", "value": "a"}
    assert filters_validate({"groups": [{"conditions": [condition]}]}) == {}


WEIRD = [None, True, 0, -1, 1.5, float("nan"), float("inf"), Decimal("NaN"), "", "x", [], {}, [{}]]


def _paths(value: object, prefix: list) -> list[list]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _paths(item, [*prefix, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _paths(item, [*prefix, index])
    return paths


@pytest.mark.parametrize("weird", WEIRD, ids=repr)
def test_no_value_anywhere_makes_validation_or_evaluation_raise(weird):
    now = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
    empty = History(sent_at=[], rejected=[], accepted_at=[])
    for path in _paths(VALID, []):
        definition = with_change(path, weird)
        errors = filters_validate(definition)
        assert isinstance(errors, dict)
        # the last-resort message means validation itself crashed: a bug, not a message
        assert not any("could not be read" in m for m in errors.get("definition", [])), path
        result = filters_evaluate(
            definition,
            lead_values={"g_state": weird, "g_loan_amount": weird, "g_phone": weird},
            partner_id=3,
            now=now,
            history=empty,
            external_checks={"12": True},
        )
        if errors:
            assert not result.passed and result.section == "definition", (path, errors)


def test_validation_results_are_fresh_each_time():
    bad = {"partners": {"mode": "x", "ids": [1]}}
    first = filters_validate(bad)
    first["partners.mode"].append("changed by the caller")
    first["other"] = ["added"]
    assert filters_validate(bad) == {
        "partners.mode": ["'mode' must be one of 'include', 'exclude', not 'x'."]
    }


def test_definitions_that_are_not_plain_json_or_are_large_are_validated_too():
    assert "partners.ids[0]" in filters_validate(
        {"partners": {"mode": "include", "ids": [Decimal(3)]}}
    )
    zips = [f"{n:05d}" for n in range(5000)]
    assert filters_validate({"geo": {"mode": "exclude", "zips": zips}}) == {}
    errors = filters_validate({"geo": {"mode": "exclude", "zips": [*zips, ""]}})
    assert list(errors) == ["geo.zips[5000]"]
