"""Filter templates (export / import) and what the caller must prepare before evaluating."""

import copy
import json
from datetime import timedelta

import pytest

from pingtree.filters import (
    EXPORT_FORMAT,
    FilterError,
    FilterImportError,
    external_checks_needed,
    filters_export,
    filters_import,
    history_lookback,
)
from tests.unit.pingtree.test_filters_validate import VALID


def test_export_makes_a_named_document_in_the_leadrelay_format():
    document = filters_export(VALID, name="  Lending, NY excluded  ")
    assert document == {
        "format": "leadrelay.filters/1",
        "name": "Lending, NY excluded",
        "definition": VALID,
    }
    assert EXPORT_FORMAT == "leadrelay.filters/1"


def test_export_then_import_gives_the_same_definition_through_json():
    document = json.loads(json.dumps(filters_export(VALID, name="Lending")))
    assert filters_import(document) == VALID


def test_export_and_import_copy_rather_than_share():
    definition = copy.deepcopy(VALID)
    document = filters_export(definition, name="Lending")
    definition["partners"]["ids"].append(99)
    assert 99 not in document["definition"]["partners"]["ids"]
    imported = filters_import(document)
    imported["geo"]["states"].append("TX")
    assert "TX" not in document["definition"]["geo"]["states"]


def test_an_empty_definition_exports_and_imports():
    assert filters_import(filters_export({}, name="Everything")) == {}


def test_an_invalid_definition_is_not_exported():
    with pytest.raises(FilterError) as raised:
        filters_export({"partners": {"mode": "in", "ids": [1]}}, name="Broken")
    assert raised.value.errors == {
        "partners.mode": ["'mode' must be one of 'include', 'exclude', not 'in'."]
    }
    assert "partners.mode" in str(raised.value)


@pytest.mark.parametrize("name", ["", "   ", None, "x" * 201])
def test_a_template_needs_a_sensible_name(name):
    with pytest.raises(FilterError) as raised:
        filters_export({}, name=name)  # type: ignore[arg-type]
    assert list(raised.value.errors) == ["name"]


@pytest.mark.parametrize(
    "document",
    [
        {"format": "leadrelay.filters/2", "name": "x", "definition": {}},
        {"format": "acme.rules/1", "name": "x", "definition": {}},
        {"name": "x", "definition": {}},
        {"format": None, "name": "x", "definition": {}},
        {"type": "filters", "rules": []},
    ],
)
def test_a_foreign_format_is_refused(document):
    with pytest.raises(FilterImportError) as raised:
        filters_import(document)
    assert list(raised.value.errors) == ["format"]
    assert "Not a Leadrelay filter template" in raised.value.errors["format"][0]
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("document", [None, [], "leadrelay.filters/1", 1])
def test_something_that_is_not_a_document_is_refused(document):
    with pytest.raises(FilterImportError) as raised:
        filters_import(document)  # type: ignore[arg-type]
    assert list(raised.value.errors) == ["document"]


def test_an_invalid_definition_in_a_template_is_refused_with_paths_inside_it():
    document = filters_export(VALID, name="Lending")
    document["definition"]["groups"][0]["conditions"][1]["operator"] = "foo"
    document["definition"]["schedule"]["timezone"] = "Atlantis/Capital"
    with pytest.raises(FilterImportError) as raised:
        filters_import(document)
    assert set(raised.value.errors) == {
        "definition.groups[0].conditions[1].operator",
        "definition.schedule.timezone",
    }


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"format": EXPORT_FORMAT, "name": "x"}, "definition"),
        ({"format": EXPORT_FORMAT, "name": "x", "definition": []}, "definition"),
        ({"format": EXPORT_FORMAT, "definition": {}}, "name"),
        ({"format": EXPORT_FORMAT, "name": 5, "definition": {}}, "name"),
        ({"format": EXPORT_FORMAT, "name": "x", "definition": {}, "extra": 1}, "extra"),
    ],
)
def test_a_malformed_template_is_refused_at_its_path(document, path):
    with pytest.raises(FilterImportError) as raised:
        filters_import(document)
    assert path in raised.value.errors


def test_external_checks_needed_lists_each_integration_once_in_order():
    definition = {"external": [{"integration": 40}, {"integration": 12}, {"integration": 40}]}
    assert external_checks_needed(definition) == [40, 12]
    assert external_checks_needed(VALID) == [12]
    assert external_checks_needed({}) == []


def test_an_invalid_definition_needs_no_external_check():
    assert external_checks_needed({"external": [{"integration": "12"}]}) == []
    assert external_checks_needed({"external": [{"integration": 12}], "bad": 1}) == []


def test_history_lookback_is_the_longest_window_or_none():
    assert history_lookback(VALID) == timedelta(days=365)
    hours = {"history": [{"kind": "sent", "within_hours": 36}, {"kind": "sent", "within_days": 1}]}
    assert history_lookback(hours) == timedelta(hours=36)
    assert history_lookback({}) is None
    assert history_lookback({"history": []}) is None
    assert history_lookback({"history": [{"kind": "sent"}]}) is None  # invalid
