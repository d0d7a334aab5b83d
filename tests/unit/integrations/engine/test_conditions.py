"""Connection conditions: the response rules' operators over the previous outcome."""

from __future__ import annotations

import pytest

from integrations.engine.conditions import conditions_hold

OUTCOME = {"kind": "accepted", "reason": "ok", "captured": {"variable:status": "pending"}}


def holds(conditions, *, variables=None, context=None):
    return conditions_hold(
        conditions, outcome=OUTCOME, variables=variables or {}, context=context or {}
    )


def test_no_condition_always_holds():
    assert holds([])


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"source": "outcome", "operator": "equals", "value": "accepted|duplicate"}, True),
        ({"source": "outcome", "operator": "equals", "value": "rejected"}, False),
        (
            {
                "source": "captured",
                "key": "variable:status",
                "operator": "equals",
                "value": "pend*",
            },
            True,
        ),
        ({"source": "captured", "key": "missing", "operator": "is_empty"}, True),
        ({"source": "variable", "key": "Score", "operator": "bigger_than", "value": "10"}, True),
        ({"source": "variable", "key": "score", "operator": "smaller_than", "value": "10"}, False),
        ({"source": "field", "key": "g_state", "operator": "equals", "value": "ny"}, True),
        (
            {"source": "constant", "key": "{{g_state}}-x", "operator": "equals", "value": "NY-x"},
            True,
        ),
    ],
)
def test_each_source_and_operator(condition, expected):
    assert holds([condition], variables={"score": "12"}, context={"g_state": "NY"}) is expected


def test_all_conditions_must_hold():
    yes = {"source": "outcome", "operator": "equals", "value": "accepted"}
    no = {"source": "reason", "operator": "contains", "value": "nope"}
    assert holds([yes])
    assert not holds([yes, no])


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="unknown connection source"):
        holds([{"source": "moon", "operator": "always"}])
