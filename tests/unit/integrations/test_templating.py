"""The operator template language: syntax, every filter, checking, safety and bounds.

Pure Python: no database, no Django, no network.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from integrations.templating import (
    DO_NOT_SEND,
    FILTERS,
    MAX_EXPRESSIONS,
    MAX_FILTERS,
    MAX_OUTPUT_BYTES,
    MAX_REGEX_INPUT_LENGTH,
    MAX_REGEX_PATTERN_LENGTH,
    MAX_TEMPLATE_LENGTH,
    DoNotSend,
    Problem,
    RenderResult,
    TemplateContext,
    TemplateError,
    build_context,
    check_template,
    names_in,
    render,
    render_header_value,
    render_value,
)


def value(template: str, **context: object) -> str:
    """Render and return the text, failing the test if the field was dropped."""
    result = render(template, context)
    assert not result.dropped
    return result.value


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- syntax


def test_text_without_braces_is_returned_unchanged():
    assert value("https://api.example.com/leads?a=1&b=2") == "https://api.example.com/leads?a=1&b=2"


def test_names_are_replaced_inside_literal_text():
    assert value("id={{LEAD_ID}}&e={{g_email}}", LEAD_ID="42", g_email="a@b.c") == "id=42&e=a@b.c"


@pytest.mark.parametrize("template", ["{{g_email}}", "{{G_EMAIL}}", "{{ G_Email }}"])
def test_names_are_looked_up_without_regard_to_case(template):
    assert render(template, {"g_EMAIL": "a@b.c"}).value == "a@b.c"


def test_filter_names_ignore_case_too():
    assert value("{{ x | UPPER | Lower }}", x="MiXeD") == "mixed"


def test_spaces_and_line_breaks_inside_the_braces_are_ignored():
    assert value('{{\n  x\t|\n default : "n/a"\n}}', x="") == "n/a"


def test_quoted_text_can_start_an_expression_and_gives_a_literal_double_brace():
    assert value('a {{ "{{" }} b {{ "Hi" | upper }}') == "a {{ b HI"


def test_quoted_text_escapes_only_quote_and_backslash():
    assert value(r'{{ "say \"hi\" \\ \d" }}') == 'say "hi" \\ \\d'


def test_a_number_can_start_an_expression():
    assert value("{{ 42 }}-{{ -1.5 }}") == "42--1.5"


def test_single_braces_are_plain_text():
    assert value("{x} {0} }} {", x="nope") == "{x} {0} }} {"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (2.5, "2.5"),
        (Decimal("1E+2"), "100"),
        (date(2024, 5, 1), "2024-05-01"),
        (datetime(2024, 5, 1, 10, 30, tzinfo=UTC), "2024-05-01T10:30:00+00:00"),
    ],
)
def test_plain_values_are_written_as_text(raw, expected):
    assert value("{{x}}", x=raw) == expected


@pytest.mark.parametrize("raw", [{"a": 1}, ["a"], object(), b"bytes"])
def test_other_objects_render_empty_with_a_warning(raw):
    result = render("[{{x}}]", {"x": raw})
    assert result.value == "[]"
    assert any("'x'" in warning for warning in result.warnings)


def test_unknown_name_renders_empty_with_a_warning_and_does_not_raise():
    result = render("a{{ missing }}b", {})
    assert result == RenderResult(
        value="ab", warnings=("unknown name 'missing' at position 4",), dropped=False
    )


def test_known_names_leave_no_warning():
    assert render("{{x}}", {"x": "1"}).warnings == ()


# --------------------------------------------------------------------------- context


def test_context_layers_later_sources_win_regardless_of_case():
    context = build_context(
        lead_fields={"pcid": "from-lead", "g_email": "lead@x", "a": "lead"},
        system_values={"PCID": "from-system", "B": "system"},
        event_data={"b": "event", "c": "event"},
        extra={"C": "extra", "OFFER_ID": "9"},
        captured={"G_EMAIL": "captured@x"},
    )
    rendered = value_from(context, "{{pcid}} {{g_email}} {{a}} {{b}} {{c}} {{offer_id}}")
    assert rendered == "from-system captured@x lead event extra 9"


def value_from(context: TemplateContext, template: str) -> str:
    return render(template, context).value


def test_template_context_is_a_case_insensitive_mapping():
    context = TemplateContext({"Lead_ID": "1"}, {"other": "2"})
    assert context["LEAD_ID"] == "1"
    assert "lead_id" in context
    assert 5 not in context
    assert sorted(context) == ["lead_id", "other"]
    assert len(context) == 2


def test_build_context_skips_missing_sources():
    assert dict(build_context(captured={"token": "t"})) == {"token": "t"}


# --------------------------------------------------------------------------- filters


def test_registry_lists_every_filter_with_help_text():
    expected = {
        "default", "lower", "upper", "trim", "replace", "regex_replace", "first_regex_match",
        "combine", "urlencode", "urldecode", "to_base64", "from_base64", "format_date",
        "modify_date", "digits", "sha256", "do_not_send",
    }  # fmt: skip
    assert set(FILTERS) == expected
    for name, entry in FILTERS.items():
        assert entry.name == name
        assert len(entry.doc) > 20, name
        assert entry.usage.startswith(name)


def test_registry_entries_are_callable():
    assert FILTERS["upper"]("abc") == "ABC"
    assert FILTERS["combine"]("a", "-", "b", "c") == "a-b-c"


def test_registry_cannot_be_changed_at_runtime():
    with pytest.raises(TypeError):
        FILTERS["evil"] = FILTERS["lower"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", "n/a"), ("x", "x"), (" ", " "), ("0", "0")],
)
def test_default_applies_only_to_empty_values(raw, expected):
    assert value('{{ v | default:"n/a" }}', v=raw) == expected


def test_default_covers_unknown_names_and_can_name_another_value():
    assert value('{{ missing | default:"n/a" }}') == "n/a"
    assert value("{{ g_phone | default:g_mobile }}", g_phone="", g_mobile="+4477") == "+4477"


def test_lower_and_upper_handle_accents_and_empty():
    assert value("{{ v | lower }}|{{ v | upper }}", v="ÉcOLE") == "école|ÉCOLE"
    assert value("[{{ v | lower }}{{ v | upper }}]", v="") == "[]"


def test_trim_removes_outer_whitespace_only():
    assert value("[{{ v | trim }}]", v=" \t a  b \n") == "[a  b]"
    assert value("[{{ v | trim }}]", v="   ") == "[]"


def test_replace_replaces_every_occurrence_as_plain_text():
    assert value('{{ v | replace:"a","b" }}', v="banana") == "bbnbnb"
    assert value('{{ v | replace:".","" }}', v="1.2.3") == "123"
    assert value('{{ v | replace:"x","y" }}', v="abc") == "abc"


def test_replace_refuses_an_empty_search_text():
    with pytest.raises(TemplateError, match="cannot be empty"):
        render('{{ v | replace:"","x" }}', {"v": "abc"})


def test_regex_replace_uses_patterns_and_group_references():
    assert value(r'{{ v | regex_replace:"\s+","" }}', v="0044 20 7946") == "0044207946"
    assert value(r'{{ v | regex_replace:"^00","+" }}', v="0044207946") == "+44207946"
    assert value(r'{{ v | regex_replace:"(\d+)-(\d+)","\2-\1" }}', v="12-34") == "34-12"
    assert value('{{ v | regex_replace:"z","y" }}', v="abc") == "abc"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('{{ v | regex_replace:"(","" }}', "invalid regular expression"),
        (r'{{ v | regex_replace:"(a)","\2" }}', "bad replacement"),
        ('{{ v | regex_replace:"","x" }}', "cannot be empty"),
    ],
)
def test_regex_replace_refuses_bad_patterns_and_replacements(template, message):
    with pytest.raises(TemplateError, match=message):
        render(template, {"v": "abc"})


def test_first_regex_match_returns_group_one_or_the_whole_match():
    assert value(r'{{ v | first_regex_match:"id=(\d+)" }}', v="x id=123 id=456") == "123"
    assert value(r'{{ v | first_regex_match:"\d+" }}', v="ab 77 88") == "77"
    assert value(r'[{{ v | first_regex_match:"\d+" }}]', v="none") == "[]"
    assert value(r'[{{ v | first_regex_match:"a(b)?" }}]', v="ac") == "[]"


def test_combine_joins_names_and_texts_and_skips_empty_parts():
    context = {"first": "Jane", "middle": "", "last": "Doe"}
    assert render('{{ first | combine:" ",middle,last }}', context).value == "Jane Doe"
    assert render('{{ first | combine:", ","x",last }}', context).value == "Jane, x, Doe"
    assert render('{{ first | combine:"",last }}', context).value == "JaneDoe"


def test_combine_needs_a_separator_and_a_part():
    with pytest.raises(TemplateError, match="combine takes 2 to 10 arguments"):
        render('{{ first | combine:" " }}', {})


def test_urlencode_encodes_everything_but_unreserved_characters():
    assert (
        value("{{ v | urlencode }}", v="a b&c=d/e+f?g#é~") == "a%20b%26c%3Dd%2Fe%2Bf%3Fg%23%C3%A9~"
    )


def test_urldecode_decodes_percent_sequences_and_keeps_plus():
    assert value("{{ v | urldecode }}", v="a%20b%26c+d%C3%A9") == "a b&c+dé"
    assert value("{{ v | urldecode }}", v="100%zz") == "100%zz"


def test_urlencode_then_urldecode_gives_the_value_back():
    original = 'x y&z=1+2/ü"'
    assert value("{{ v | urlencode | urldecode }}", v=original) == original


def test_to_base64_encodes_utf8():
    assert value('{{ u | combine:":",p | to_base64 }}', u="user", p="pass") == "dXNlcjpwYXNz"
    assert value("{{ v | to_base64 }}", v="é") == "w6k="
    assert value("[{{ v | to_base64 }}]", v="") == "[]"


def test_from_base64_accepts_standard_and_url_safe_without_padding():
    assert value("{{ v | from_base64 }}", v="dXNlcjpwYXNz") == "user:pass"
    assert value("{{ v | from_base64 }}", v=" w6k ") == "é"
    assert value("{{ v | from_base64 }}", v="PDw/Pz8+Pg==") == "<<???>>"
    assert value("{{ v | from_base64 }}", v="PDw_Pz8-Pg") == "<<???>>"


@pytest.mark.parametrize("raw", ["not base64!", "a", "/w=="])
def test_from_base64_renders_empty_with_a_warning_for_bad_input(raw):
    result = render("[{{ v | from_base64 }}]", {"v": raw})
    assert result.value == "[]"
    assert len(result.warnings) == 1
    assert "from_base64" in result.warnings[0]


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("2024-05-01", "%d/%m/%Y", "01/05/2024"),
        ("2024-05-01T14:05:09+02:00", "%Y%m%d %H:%M:%S %z", "20240501 14:05:09 +0200"),
        ("2024-05-01T00:30:00", "%I:%M %p", "12:30 AM"),
        ("2024-05-01T13:00:00", "%I %p", "01 PM"),
        ("1714521600", "%Y-%m-%dT%H:%M:%S%z", "2024-05-01T00:00:00+0000"),
        ("1714521600.5", "%f", "500000"),
        ("2024-05-01", "%a %A %b %B %j %u %y", "Wed Wednesday May May 122 3 24"),
        ("2024-05-01T00:00:00", "%s", "1714521600"),
        ("2024-05-01T02:00:00+02:00", "%s", "1714521600"),
        ("2024-05-01", "100%% on %d", "100% on 01"),
    ],
)
def test_format_date_reads_iso_and_unix_and_writes_whitelisted_directives(raw, fmt, expected):
    assert render(f'{{{{ v | format_date:"{fmt}" }}}}', {"v": raw}).value == expected


def test_format_date_unix_seconds_read_a_value_without_offset_as_utc(monkeypatch):
    # Under a non-UTC server clock, naive datetime.timestamp() would use local time.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert value('{{ v | format_date:"%s" }}', v="2024-05-01T00:00:00") == "1714521600"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("raw", ["yesterday", "01/05/2024", "", "2024-13-01"])
def test_format_date_renders_empty_with_a_warning_for_unreadable_dates(raw):
    result = render('[{{ v | format_date:"%Y" }}]', {"v": raw})
    assert result.value == "[]"
    assert "format_date" in result.warnings[0]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [("%Y-%c", "unknown directive %c"), ("%Y%", "lone"), ("", "cannot be empty")],
)
def test_format_date_refuses_directives_outside_the_whitelist(fmt, message):
    problems = check_template(f'{{{{ v | format_date:"{fmt}" }}}}')
    assert [p.code for p in problems] == ["bad_argument"]
    assert message in problems[0].message


@pytest.mark.parametrize(
    ("raw", "shift", "expected"),
    [
        ("2024-05-01", "+1 day", "2024-05-02"),
        ("2024-05-01", "1 day", "2024-05-02"),
        ("2024-05-01", "-2 hours", "2024-04-30T22:00:00"),
        ("2024-05-01", "+3 weeks", "2024-05-22"),
        ("2024-01-31", "+1 month", "2024-02-29"),
        ("2023-01-31", "+1 month", "2023-02-28"),
        ("2024-02-29", "-1 year", "2023-02-28"),
        ("2024-05-01T10:00:00+02:00", "+90 minutes", "2024-05-01T11:30:00+02:00"),
        ("2024-05-01T10:00:00", "-30 seconds", "2024-05-01T09:59:30"),
        ("1714521600", "+1 day", "2024-05-02T00:00:00+00:00"),
        ("2024-05-01", "next monday", "2024-05-06"),  # a Wednesday
        ("2024-05-06", "next monday", "2024-05-13"),  # strictly after
        ("2024-05-05", "NEXT Monday", "2024-05-06"),
        ("2024-05-01", "last friday", "2024-04-26"),
        ("2024-05-03", "last friday", "2024-04-26"),
        ("2024-05-01T08:00:00", "next monday", "2024-05-06T08:00:00"),
    ],
)
def test_modify_date_moves_dates(raw, shift, expected):
    assert render(f'{{{{ v | modify_date:"{shift}" }}}}', {"v": raw}).value == expected


def test_modify_date_out_of_range_renders_empty_with_a_warning():
    result = render('[{{ v | modify_date:"+1 day" }}]', {"v": "9999-12-31"})
    assert result.value == "[]"
    assert "modify_date" in result.warnings[0]


@pytest.mark.parametrize("shift", ["tomorrow", "+1 fortnight", "next funday", "+1", "1 day ago"])
def test_modify_date_refuses_expressions_it_cannot_read(shift):
    problems = check_template(f'{{{{ v | modify_date:"{shift}" }}}}')
    assert [p.code for p in problems] == ["bad_argument"]
    assert "modify_date" in problems[0].message


def test_modify_date_then_format_date_chain():
    template = '{{ d | modify_date:"+1 day" | format_date:"%d/%m/%Y" }}'
    assert value(template, d="2024-12-31") == "01/01/2025"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("+44 (20) 7946-0958", "442079460958"), ("abc", ""), ("٣²1", "1"), ("", "")],
)
def test_digits_keeps_ascii_digits_only(raw, expected):
    assert value("{{ v | digits }}", v=raw) == expected


def test_sha256_matches_meta_examples_for_email_names_and_phone():
    # Expected hashes are the examples in Meta's customer information parameters page.
    assert value("{{ v | sha256 }}", v=" John_Smith@gmail.com ") == (
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    )
    assert value("{{ v | sha256 }}", v="Mary") == (
        "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"
    )
    assert value('{{ v | sha256:"phone" }}', v="+1 (650) 555-1212") == (
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    )


def test_sha256_phone_drops_the_00_prefix_and_e164_adds_a_plus():
    assert value('{{ v | sha256:"phone" }}', v="0016505551212") == sha("16505551212")
    assert value('{{ v | sha256:"phone_e164" }}', v="1 650 555 1212") == sha("+16505551212")


def test_sha256_raw_hashes_the_exact_value():
    assert value('{{ v | sha256:"raw" }}', v=" A ") == sha(" A ")
    assert value('{{ v | sha256:"email" }}', v=" A ") == sha("a")


@pytest.mark.parametrize("mode", ["", ':"phone"', ':"phone_e164"', ':"raw"'])
def test_sha256_of_nothing_stays_empty(mode):
    assert value(f"[{{{{ v | sha256{mode} }}}}]", v="") == "[]"


def test_sha256_of_a_phone_without_digits_stays_empty():
    assert value('[{{ v | sha256:"phone" }}]', v="n/a") == "[]"


def test_sha256_refuses_unknown_modes():
    with pytest.raises(TemplateError, match="unknown mode 'sms'"):
        render('{{ v | sha256:"sms" }}', {})


def test_do_not_send_drops_the_whole_field():
    result = render("https://x.test/?a={{ v | do_not_send }}&b={{ w }}", {"v": "1"})
    assert result.dropped
    assert result.value == ""
    assert render_value("{{ v | do_not_send }}", {"v": "1"}) is DO_NOT_SEND
    assert isinstance(DO_NOT_SEND, DoNotSend)


def test_do_not_send_if_empty_keeps_filled_values():
    assert render_value('{{ v | do_not_send:"if_empty" }}', {"v": "1"}) == "1"
    assert render_value('{{ v | do_not_send:"if_empty" }}', {"v": ""}) is DO_NOT_SEND
    assert render_value('{{ v | trim | do_not_send:"if_empty" }}', {"v": " "}) is DO_NOT_SEND


def test_filters_after_do_not_send_do_not_run():
    # upper on DO_NOT_SEND would fail if it ran; the field stays dropped.
    assert render_value("{{ v | do_not_send | upper | sha256 }}", {"v": "a"}) is DO_NOT_SEND


def test_do_not_send_refuses_unknown_options():
    with pytest.raises(TemplateError, match="if_empty"):
        render('{{ v | do_not_send:"always_maybe" }}', {})


# --------------------------------------------------------------------------- chaining


def test_filters_apply_left_to_right():
    assert value("{{ v | trim | lower | sha256 }}", v="  A@B.C ") == sha("a@b.c")
    assert value('{{ v | lower | replace:"a","X" }}', v="AbA") == "XbX"
    assert value('{{ v | replace:"a","X" | lower }}', v="AbA") == "AbA".lower()


def test_a_filter_that_cannot_use_a_value_lets_the_rest_of_the_chain_run():
    result = render('{{ d | format_date:"%Y" | default:"unknown" }}', {"d": "soon"})
    assert result.value == "unknown"
    assert len(result.warnings) == 1


def test_names_in_lists_names_in_order_of_first_use():
    template = '{{ a }} {{ B | combine:" ",c,"lit",a }} {{ broken. }} {{ "x" }}'
    assert names_in(template) == ["a", "B", "c"]


# --------------------------------------------------------------------------- checking


def test_check_template_finds_nothing_wrong_in_a_good_template():
    template = '{{ g_email | lower | sha256 }}&p={{ g_phone | default:"n/a" | urlencode }}'
    assert check_template(template, {"G_EMAIL", "g_phone"}) == []


def test_check_template_reports_unknown_names_with_positions():
    template = 'a={{ g_email }}\nb={{ nope }}&c={{ x | combine:"-",ghost }}'
    problems = check_template(template, {"g_email", "X"})
    assert problems == [
        Problem("unknown_name", "unknown name 'nope'", 21, 2, 6),
        Problem("unknown_name", "unknown name 'ghost'", 50, 2, 35),
    ]
    assert template[21:25] == "nope"
    assert template[50:55] == "ghost"


def test_check_template_ignores_names_when_no_list_is_given():
    assert check_template("{{ anything }}", None) == []


def test_check_template_reports_unknown_filters_and_bad_arguments_with_positions():
    template = '{{ a | nope }} {{ b | replace:"x" }} {{ c | lower:"z" }} {{ d | replace:x,"y" }}'
    problems = check_template(template)
    assert [(p.code, p.position) for p in problems] == [
        ("unknown_filter", 7),
        ("bad_argument", 22),
        ("bad_argument", 44),
        ("bad_argument", 72),
    ]
    assert "known:" in problems[0].message and "lower" in problems[0].message
    assert 'replace:"search","replacement"' in problems[1].message
    assert "takes no arguments" in problems[2].message
    assert 'did you mean "x"?' in problems[3].message


@pytest.mark.parametrize(
    ("template", "position", "message"),
    [
        ("ab {{ x", 3, "never closed"),
        ('{{ x | default:"n/a }}', 15, "quoted text is never closed"),
        ("{{ }}", 0, "empty"),
        ("{{ x | }}", 5, "filter name"),
        ("{{ x lower }}", 5, 'expected "|"'),
        ("{{ x | default: }}", 14, "expected an argument"),
        ("{{ x | default:| }}", 15, "expected an argument"),
        ("{{ | x }}", 3, "expected a name"),
    ],
)
def test_check_template_reports_syntax_errors_with_positions(template, position, message):
    problems = check_template(template)
    assert len(problems) == 1
    assert problems[0].code == "syntax"
    assert problems[0].position == position
    assert message in problems[0].message


def test_check_template_goes_on_after_a_broken_expression():
    problems = check_template("{{ a. }} {{ b | nope }} {{ c }}", {"a", "b"})
    assert [p.code for p in problems] == ["syntax", "unknown_filter", "unknown_name"]


def test_render_raises_the_first_problem_with_its_position():
    with pytest.raises(TemplateError) as caught:
        render("ok\n{{ a | nope }} {{ b | nope2 }}", {"a": "1"})
    assert caught.value.position == 10
    assert caught.value.code == "unknown_filter"
    assert "'nope'" in str(caught.value)
    assert "line 2, column 8" in str(caught.value)


# --------------------------------------------------------------------------- safety

SECRET = "s3cr3t-token"


class Config:
    """Stands in for a settings/request/model object that must never be reachable."""

    SECRET_KEY = SECRET

    def __str__(self) -> str:
        return SECRET

    def __repr__(self) -> str:
        return SECRET


INJECTION_CONTEXT = {
    "x": "value",
    "config": Config(),
    "request": Config(),
    "lead": Config(),
    "settings": {"SECRET_KEY": SECRET},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{config}}", ""),
        ("{{request}}", ""),
        ("{{ lead }}", ""),
        ("{{ settings }}", ""),
        ("{{ __class__ }}", ""),
        ("{{ __builtins__ }}", ""),
        ("{{ __import__ }}", ""),
        ("{{ keys }}{{ items }}{{ get }}", ""),
        ("{{ missing | default:config }}", ""),
        ("{0.__class__}", "{0.__class__}"),
        ("{x}", "{x}"),
        ("%(x)s %s %r", "%(x)s %s %r"),
        ("{% for i in range(3) %}{{ x }}{% endfor %}", "{% for i in range(3) %}value{% endfor %}"),
        ("{% debug %}{# note #}", "{% debug %}{# note #}"),
        ("${7*7} #{7*7} <%= 7*7 %> [[7*7]]", "${7*7} #{7*7} <%= 7*7 %> [[7*7]]"),
        ("\uff5b\uff5b x \uff5d\uff5d", "\uff5b\uff5b x \uff5d\uff5d"),
    ],
)
def test_injection_attempts_render_literally_or_empty(template, expected):
    result = render(template, INJECTION_CONTEXT)
    assert result.value == expected
    assert SECRET not in result.value


@pytest.mark.parametrize(
    "template",
    [
        "{{''.__class__.__mro__}}",
        '{{"".__class__.__mro__[1].__subclasses__()}}',
        "{{ lead.__dict__ }}",
        "{{ config.SECRET_KEY }}",
        "{{ config['SECRET_KEY'] }}",
        "{{ x[0] }}",
        "{{ 7*7 }}",
        "{{ x + x }}",
        '{{ x | attr:"__class__" }}',
        '{{ x | format:"%s" }}',
        "{{ x | lower() }}",
        "{{ x | safe }}",
        "{{ {{ x }} }}",
        "{{ x }} {{ x\x00 }}",
        "{{ lipsum.__globals__.os.popen('id').read() }}",
        "{{ x | " + " | ".join(["lower"] * (MAX_FILTERS + 1)) + " }}",
        "{{ x }}" * (MAX_EXPRESSIONS + 1),
        "a" * (MAX_TEMPLATE_LENGTH + 1),
        "{{" * 5000,
    ],
)
def test_injection_attempts_that_are_not_the_language_raise_template_error(template):
    with pytest.raises(TemplateError) as caught:
        render(template, INJECTION_CONTEXT)
    assert SECRET not in str(caught.value)
    assert check_template(template) != []


def test_values_are_never_evaluated_as_templates():
    context = {"x": "{{ secret }}", "y": "{0.__class__} %(secret)s ${secret}", "secret": SECRET}
    assert render("{{ x }}|{{ y }}", context).value == (
        "{{ secret }}|{0.__class__} %(secret)s ${secret}"
    )


def test_awkward_characters_and_emoji_pass_through_unchanged():
    awkward = "quote \" backslash \\ newline \n tag </x> amp & apostrophe ' emoji 🚀👍🏽 nul-free"
    result = render("{{ v }}", {"v": awkward})
    assert result.value == awkward
    assert render(awkward, {}).value == awkward
    assert render("<a>{{ v }}</a>", {"v": awkward}).value == f"<a>{awkward}</a>"


def test_module_does_not_load_a_template_engine():
    code = (
        "import sys, integrations.templating; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jinja2', 'django', 'mako')))"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("bad", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "a\x1bb"])
def test_header_values_refuse_cr_lf_and_control_characters(bad):
    with pytest.raises(TemplateError, match="control character"):
        render_header_value("Bearer {{ token }}", {"token": bad})


def test_header_values_refuse_cr_lf_written_in_the_template_itself():
    with pytest.raises(TemplateError, match="CR/LF"):
        render_header_value("x\r\nSet-Cookie: a=b", {})


def test_header_values_allow_ordinary_text_and_tabs():
    result = render_header_value("Bearer {{ token }}", {"token": "abc\tdéf"})
    assert result.value == "Bearer abc\tdéf"


def test_header_values_can_be_dropped():
    assert render_header_value("{{ t | do_not_send }}", {"t": "a\nb"}).dropped


# --------------------------------------------------------------------------- bounds


def test_template_length_is_capped():
    assert render("a" * MAX_TEMPLATE_LENGTH, {}).value == "a" * MAX_TEMPLATE_LENGTH
    problems = check_template("a" * (MAX_TEMPLATE_LENGTH + 1))
    assert [p.code for p in problems] == ["limit"]


def test_filter_count_is_capped():
    allowed = "{{ x | " + " | ".join(["trim"] * MAX_FILTERS) + " }}"
    assert render(allowed, {"x": " a "}).value == "a"
    too_many = "{{ x | " + " | ".join(["trim"] * (MAX_FILTERS + 1)) + " }}"
    assert [p.code for p in check_template(too_many)] == ["limit"]


def test_expression_count_is_capped():
    assert render("{{x}}" * MAX_EXPRESSIONS, {"x": "a"}).value == "a" * MAX_EXPRESSIONS
    assert [p.code for p in check_template("{{x}}" * (MAX_EXPRESSIONS + 1))] == ["limit"]


def test_output_size_is_capped_in_bytes():
    at_limit = "é" * (MAX_OUTPUT_BYTES // 2)  # two bytes each
    assert render("{{ v }}", {"v": at_limit}).value == at_limit
    with pytest.raises(TemplateError, match="limit is 65536"):
        render("{{ v }}x", {"v": at_limit})
    with pytest.raises(TemplateError, match="limit is 65536"):
        render("{{ v }}", {"v": at_limit + "é"})


def test_output_size_is_checked_after_each_filter():
    with pytest.raises(TemplateError, match="limit"):
        render('{{ v | replace:"a","aaaaaaaaaa" }}', {"v": "a" * 7000})


def test_output_size_is_checked_for_the_whole_template():
    with pytest.raises(TemplateError, match="limit"):
        render("{{ v }}" * 70, {"v": "x" * 1000})


def test_regex_pattern_length_is_capped():
    pattern = "a" * (MAX_REGEX_PATTERN_LENGTH + 1)
    with pytest.raises(TemplateError, match="longer than"):
        render(f'{{{{ v | first_regex_match:"{pattern}" }}}}', {"v": "a"})
    ok = "a" * MAX_REGEX_PATTERN_LENGTH
    assert render(f'{{{{ v | first_regex_match:"{ok}" }}}}', {"v": ok}).value == ok


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+$", r"(a*)*b", r"(\w+\s?)*$", r"(a|aa)+$", r"((ab)+c)*", r"(?:x+y?){2,}", r"(.*a){12}"],
)
def test_nested_repetition_is_refused(pattern):
    problems = check_template(f'{{{{ v | regex_replace:"{pattern}","" }}}}')
    assert [p.code for p in problems] == ["bad_argument"]
    assert "repeats a group" in problems[0].message


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(?#[)(a+)+(?#])", "comments"),
        ("(?x)# [\n(a+)+ # ]", "verbose"),
    ],
)
def test_patterns_that_could_hide_nested_repetition_from_the_check_are_refused(pattern, message):
    problems = check_template(f'{{{{ v | first_regex_match:"{pattern}" }}}}')
    assert [p.code for p in problems] == ["bad_argument"]
    assert message in problems[0].message


@pytest.mark.parametrize(
    ("pattern", "raw", "expected"),
    [
        (r"(\d{3})-(\d+)", "call 555-1234", "555"),
        (r"(ab)+", "xxababab", "ab"),
        (r"[(+*)]+", "a(+*)b", "(+*)"),
        (r"\(a+\)+", "x(aa))", "(aa))"),
        (r"(?:https?://)?([^/]+)", "https://example.com/x", "example.com"),
        (r"(?i)(AB)", "xab", "ab"),
        (r"a{2}", "aaa", "aa"),
    ],
)
def test_ordinary_patterns_are_allowed(pattern, raw, expected):
    template = f'{{{{ v | first_regex_match:"{pattern}" }}}}'
    assert check_template(template) == []
    assert render(template, {"v": raw}).value == expected


def test_more_than_two_open_ended_repetitions_are_refused():
    problems = check_template(r'{{ v | first_regex_match:"\d*\d*\d*x" }}')
    assert [p.code for p in problems] == ["bad_argument"]
    assert "open-ended" in problems[0].message
    assert check_template(r'{{ v | first_regex_match:"\d*\d{1,3}x" }}') == []


def test_regex_input_length_is_capped():
    template = r'{{ v | first_regex_match:"(\d+)" }}'
    assert render(template, {"v": "1" * MAX_REGEX_INPUT_LENGTH}).value == "1" * 1000
    with pytest.raises(TemplateError, match="up to 1000"):
        render(template, {"v": "1" * (MAX_REGEX_INPUT_LENGTH + 1)})
    with pytest.raises(TemplateError, match="up to 1000"):
        render('{{ v | regex_replace:"a","b" }}', {"v": "a" * (MAX_REGEX_INPUT_LENGTH + 1)})
