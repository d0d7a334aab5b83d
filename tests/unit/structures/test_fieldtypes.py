"""Normalisation vectors: each field type parses, validates and normalises by itself."""

from __future__ import annotations

import pytest

from structures.fieldtypes import FieldValueError, TypeContext, get_type

US = TypeContext(default_region="US", choices=("own", "rent"))
GB = TypeContext(default_region="GB")
DE = TypeContext(default_region="DE")


@pytest.mark.parametrize(
    ("type_", "raw", "ctx", "expected"),
    [
        ("email", "  Jane.Doe@Example.COM ", US, "jane.doe@example.com"),
        ("email", "USER+tag@Sub.Example.org", US, "user+tag@sub.example.org"),
        ("phone", "(202) 456-1111", US, "+12024561111"),
        ("phone", "202.456.1111", US, "+12024561111"),
        ("phone", "+1 202 456 1111", GB, "+12024561111"),
        ("phone", "020 7946 0958", GB, "+442079460958"),
        ("phone", "030 901820", DE, "+4930901820"),
        ("date", "1990-07-04", US, "1990-07-04"),
        ("date", "07/04/1990", US, "1990-07-04"),
        ("date", "04/07/1990", GB, "1990-07-04"),
        ("date", "04.07.1990", DE, "1990-07-04"),
        ("date", "1990/07/04", US, "1990-07-04"),
        ("checkbox", "YES", US, "true"),
        ("checkbox", True, US, "true"),
        ("checkbox", "on", US, "true"),
        ("checkbox", "0", US, "false"),
        ("checkbox", False, US, "false"),
        ("checkbox", "No", US, "false"),
        ("number", "007", US, "7"),
        ("number", "000", US, "0"),
        ("number", "-0042", US, "-42"),
        ("number", "0012.50", US, "12.50"),
        ("number", 42, US, "42"),
        ("number", "-0", US, "0"),
        ("money", "$1,234.5", US, "1234.50"),
        ("money", 2500, US, "2500.00"),
        ("select", "RENT", US, "rent"),
        ("zip", "90210", US, "90210"),
        ("zip", "90210 1234", US, "90210-1234"),
        ("zip", 2134, US, "02134"),
        ("zip", "sw1a 1aa", GB, "SW1A 1AA"),
        ("state", "california", US, "CA"),
        ("state", "tx", US, "TX"),
        ("state", "Bavaria", DE, "Bavaria"),
        ("country", "us", US, "US"),
        ("country", "DEU", US, "DE"),
        ("country", "Germany", US, "DE"),
        ("ip", "::FFFF:1.2.3.4", US, "::ffff:102:304"),
        ("ip", " 203.0.113.7 ", US, "203.0.113.7"),
        ("url", "https://example.com/a?b=1", US, "https://example.com/a?b=1"),
        ("text", "  hello  ", US, "hello"),
    ],
)
def test_normalisation(type_, raw, ctx, expected):
    assert get_type(type_).normalize(raw, ctx) == expected


@pytest.mark.parametrize(
    ("type_", "raw", "ctx"),
    [
        ("email", "not-an-email", US),
        ("email", "a@b", US),
        ("phone", "12", US),
        ("phone", "+1 000 000 0000", US),
        ("date", "1990-02-30", US),
        ("date", "31/12/1990", US),
        ("date", "1850-01-01", US),
        ("checkbox", "maybe", US),
        ("number", "12a", US),
        ("number", "1e5", US),
        ("number", True, US),
        ("money", "1.234", US),
        ("money", "abc", US),
        ("money", "NaN", US),
        ("select", "castle", US),
        ("zip", "ABCDE", US),
        ("zip", "1234", US),
        ("state", "Narnia", US),
        ("country", "Atlantis", US),
        ("ip", "300.1.1.1", US),
        ("url", "javascript:alert(1)", US),
        ("url", "ftp://example.com/", US),
        ("text", "x" * 2001, US),
        ("text", "bell\x07", US),
        ("text", {"nested": 1}, US),
        ("text", [1, 2], US),
    ],
)
def test_refused_values(type_, raw, ctx):
    with pytest.raises(FieldValueError):
        get_type(type_).normalize(raw, ctx)


def test_components_and_masks():
    assert get_type("email").components("jane@example.com") == {
        "local": "jane",
        "domain": "example.com",
    }
    assert get_type("phone").components("+12024561111")["area_code"] == "202"
    assert get_type("zip").components("90210-1234") == {"zip5": "90210", "prefix3": "902"}
    assert get_type("email").mask("jane@example.com") == "j***@example.com"
    assert "1111" not in get_type("phone").mask("+12024561111")
    assert get_type("date").mask("1990-07-04") == "1990-**-**"


def test_every_type_lists_its_operators():
    from structures.choices import FieldType

    for name in FieldType.values:
        assert get_type(name).operators, name
