"""read_response / evaluate_sample: operators, sources, keys, safe XML, captures, outcomes.

Pure: responses are OutboundResult values made here, no network.
"""

import time
from decimal import Decimal

import pytest

from integrations import reading
from integrations.building import build_request
from integrations.outbound import ErrorCode, ErrorKind, OutboundRequest, OutboundResult
from integrations.reading import TraceKind, evaluate_sample, parse_amount, read_response
from integrations.spec import (
    AuthType,
    BodyFormat,
    Capture,
    CaptureTarget,
    Condition,
    KeyKind,
    Method,
    Operator,
    OutcomeKind,
    RequestSpec,
    Rule,
    Source,
)

SECRET = "s3cr3t-T0ken"

BUYER_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:b="urn:buyer">
  <soap:Body>
    <b:PostResponse>
      <b:Result code="A1">Accepted</b:Result>
      <b:LeadId>BL-991</b:LeadId>
      <b:Price currency="USD">12.50</b:Price>
      <b:Errors><b:Error>dup</b:Error><b:Error>late</b:Error></b:Errors>
    </b:PostResponse>
  </soap:Body>
</soap:Envelope>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<r><status>&xxe;</status></r>"""

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b"]><lolz>&lol9;</lolz>"
)


def spec(**kwargs) -> RequestSpec:
    kwargs.setdefault("method", Method.POST)
    kwargs.setdefault("url", "https://buyer.example/leads")
    return RequestSpec(**kwargs)


def cond(
    operator=Operator.ALWAYS,
    source=Source.BODY,
    key_kind=KeyKind.NONE,
    key="",
    value="",
    value2="",
) -> Condition:
    return Condition(source, operator, key_kind, key, value, value2)


def rule(*conditions, outcome=OutcomeKind.ACCEPTED, reason="") -> Rule:
    return Rule(tuple(conditions), outcome, reason)


def capture(target, key="", key_kind=KeyKind.JSON_PATH, source=Source.BODY, name=""):
    return Capture(source, key_kind, key, target, name)


def result(
    status=200,
    body=b"",
    headers=(("Content-Type", "application/json"),),
    error=None,
    truncated=False,
) -> OutboundResult:
    request = OutboundRequest(method="POST", url="https://buyer.example/leads")
    kind, code, message = error if error else (None, None, "")
    return OutboundResult(
        request=request,
        status_code=None if error else status,
        headers=list(headers),
        body=body,
        truncated=truncated,
        elapsed_ms=12,
        final_url=request.url,
        error_kind=kind,
        error_code=code,
        error_message=message,
    )


def extracted(sp: RequestSpec, body, content_type="application/json", **kwargs):
    """The value the first condition of the first rule saw, from the trace."""
    outcome = evaluate_sample(sp, 200, {"Content-Type": content_type}, body, **kwargs)
    conditions = [t for t in outcome.trace if t.kind is TraceKind.CONDITION]
    return conditions[0].value


def value_at(key: str, body: str, key_kind=KeyKind.JSON_PATH, content_type="application/json"):
    sp = spec(rules=(rule(cond(Operator.ALWAYS, key_kind=key_kind, key=key)),))
    return extracted(sp, body, content_type)


# --- operators --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operator", "actual", "expected", "expected2", "held"),
    [
        (Operator.EQUALS, "Approved", "approved", "", True),
        (Operator.EQUALS, " approved\n", "approved", "", True),
        (Operator.EQUALS, "accepted", "approved|accepted", "", True),
        (Operator.EQUALS, "rejected", "approved|accepted", "", False),
        (Operator.EQUALS, "APPROVED_WITH_NOTE", "app*", "", True),
        (Operator.EQUALS, "xapproved", "app*", "", False),
        (Operator.EQUALS, "a.b", "a*b", "", True),
        (Operator.EQUALS, "a+b", "a+b", "", True),  # no regex meaning in equals
        (Operator.EQUALS, "aab", "a+b", "", False),
        (Operator.NOT_EQUALS, "rejected", "approved|accepted", "", True),
        (Operator.NOT_EQUALS, "Accepted", "approved|accepted", "", False),
        (Operator.NOT_EQUALS, "approved", "ap*", "", False),
        (Operator.IS_TRUE, "TRUE", "", "", True),
        (Operator.IS_TRUE, "1", "", "", True),
        (Operator.IS_TRUE, "yes", "", "", True),
        (Operator.IS_TRUE, "on", "", "", True),
        (Operator.IS_TRUE, "Success", "", "", True),
        (Operator.IS_TRUE, "ok", "", "", True),
        (Operator.IS_TRUE, "false", "", "", False),
        (Operator.IS_TRUE, "pending", "", "", False),
        (Operator.IS_FALSE, "false", "", "", True),
        (Operator.IS_FALSE, "0", "", "", True),
        (Operator.IS_FALSE, "No", "", "", True),
        (Operator.IS_FALSE, "", "", "", True),
        (Operator.IS_FALSE, "true", "", "", False),
        (Operator.IS_FALSE, "pending", "", "", False),
        (Operator.BIGGER_THAN, "12.50", "12.49", "", True),
        (Operator.BIGGER_THAN, "12.50", "12.50", "", False),
        (Operator.BIGGER_THAN, "$1,200.00", "999", "", True),
        (Operator.BIGGER_THAN, "abc", "1", "", False),
        (Operator.BIGGER_THAN, "5", "abc", "", False),
        (Operator.SMALLER_THAN, "9", "10", "", True),
        (Operator.SMALLER_THAN, "10", "9", "", False),
        (Operator.SMALLER_THAN, "", "9", "", False),
        (Operator.BETWEEN, "5", "5", "10", True),
        (Operator.BETWEEN, "10", "5", "10", True),
        (Operator.BETWEEN, "10.01", "5", "10", False),
        (Operator.BETWEEN, "4.99", "5", "10", False),
        (Operator.BETWEEN, "7", "5", "x", False),
        (Operator.CONTAINS, "Lead Accepted OK", "accepted", "", True),
        (Operator.CONTAINS, "Lead rejected", "accepted", "", False),
        (Operator.NOT_CONTAINS, "Lead rejected", "accepted", "", True),
        (Operator.NOT_CONTAINS, "ACCEPTED", "accepted", "", False),
        (Operator.STARTS_WITH, "Accepted: 12", "accepted", "", True),
        (Operator.STARTS_WITH, "Not accepted", "accepted", "", False),
        (Operator.ENDS_WITH, "status OK", "ok", "", True),
        (Operator.ENDS_WITH, "OK status", "ok", "", False),
        (Operator.IS_EMPTY, "", "", "", True),
        (Operator.IS_EMPTY, "  ", "", "", True),
        (Operator.IS_EMPTY, "x", "", "", False),
        (Operator.IS_NOT_EMPTY, "x", "", "", True),
        (Operator.IS_NOT_EMPTY, " ", "", "", False),
        (Operator.MATCHES, "id=123", r"id=\d+", "", True),
        (Operator.MATCHES, "id=abc", r"id=\d+", "", False),
        (Operator.MATCHES, "ID=1", r"id=\d", "", False),  # as written: case matters
        (Operator.MATCHES, "ID=1", r"(?i)id=\d", "", True),
        (Operator.MATCHES, "aaaa", r"(a+)+$", "", False),  # refused, not run
        (Operator.ALWAYS, "", "", "", True),
    ],
)
def test_operators(operator, actual, expected, expected2, held):
    sp = spec(
        rules=(
            rule(cond(operator, Source.CONSTANT, key="{{v}}", value=expected, value2=expected2)),
        )
    )
    outcome = evaluate_sample(sp, 200, {}, "", context={"v": actual})
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CONDITION)
    assert entry.held is held
    assert outcome.matched_rule == (0 if held else None)


@pytest.mark.parametrize(
    ("operator", "held"),
    [
        (Operator.IS_EMPTY, True),
        (Operator.IS_NOT_EMPTY, False),
        (Operator.EQUALS, False),
        (Operator.NOT_EQUALS, True),
        (Operator.CONTAINS, False),
        (Operator.NOT_CONTAINS, True),
        (Operator.IS_FALSE, True),
        (Operator.IS_TRUE, False),
        (Operator.BIGGER_THAN, False),
    ],
)
def test_a_missing_value_counts_as_empty(operator, held):
    sp = spec(
        rules=(rule(cond(operator, key_kind=KeyKind.JSON_PATH, key="nothing.here", value="1")),)
    )
    outcome = evaluate_sample(sp, 200, {}, '{"status": "ok"}')
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CONDITION)
    assert entry.value is None
    assert entry.held is held


def test_a_refused_pattern_says_why_in_the_trace():
    sp = spec(rules=(rule(cond(Operator.MATCHES, Source.STATUS, value="(a|aa)+")),))
    outcome = evaluate_sample(sp, 200, {}, "")
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CONDITION)
    assert entry.held is False
    assert "repeats a group" in entry.note


# --- sources ----------------------------------------------------------------------------


def test_header_source_is_case_insensitive():
    sp = spec(
        rules=(rule(cond(Operator.EQUALS, Source.HEADER, key="x-buyer-status", value="sold")),)
    )
    outcome = evaluate_sample(sp, 200, [("X-Buyer-Status", "SOLD")], "")
    assert outcome.matched_rule == 0


def test_status_source_is_the_code_as_text():
    sp = spec(
        rules=(
            rule(
                cond(Operator.EQUALS, Source.STATUS, value="409"),
                outcome=OutcomeKind.DUPLICATE,
            ),
        )
    )
    outcome = evaluate_sample(sp, 409, {}, "")
    assert outcome.kind is OutcomeKind.DUPLICATE
    assert outcome.trace[0].value == "409"


def test_constant_source_renders_lead_values():
    sp = spec(
        rules=(
            rule(
                cond(Operator.EQUALS, Source.CONSTANT, key="{{g_state | upper}}", value="CA|NY"),
                outcome=OutcomeKind.REJECTED,
                reason="state {{g_state}} not bought",
            ),
        )
    )
    outcome = evaluate_sample(sp, 200, {}, "{}", context={"g_state": "ny"})
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "state ny not bought"


def test_query_source_reads_the_built_request():
    sp = spec(
        url="https://buyer.example/p?mode=test",
        rules=(rule(cond(Operator.EQUALS, Source.QUERY, key="mode", value="test")),),
    )
    built = build_request(sp, {})
    outcome = read_response(sp, built, result(body=b"{}"))
    assert outcome.matched_rule == 0
    without = evaluate_sample(sp, 200, {}, "{}")
    assert without.matched_rule is None
    assert "no request" in without.trace[0].note


def test_body_source_without_key_is_the_whole_text():
    sp = spec(rules=(rule(cond(Operator.CONTAINS, value="thank you")),))
    outcome = evaluate_sample(sp, 200, {"Content-Type": "text/plain"}, "OK. Thank you!")
    assert outcome.matched_rule == 0


# --- JSON path --------------------------------------------------------------------------

JSON_BODY = """{"data": {"items": [{"id": 7, "status": "new"}, {"id": 8, "ok": true}],
"price": 12.50, "none": null, "big": 1e2, "odd key": {"x": "y"}},
"items": [{"name": "a"}, {"id": "first-id"}, {"id": "second-id"}]}"""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("data.items[0].status", "new"),
        ("$.data.items[0].status", "new"),
        ("$data.items[1].id", "8"),
        ("data.items[1].ok", "true"),
        ("data.items[-1].id", "8"),
        ("items[*].id", "first-id"),
        ("items.*.id", "first-id"),
        ('data["odd key"].x', "y"),
        ("data['odd key'].x", "y"),
        ("data.price", "12.50"),
        ("data.big", "100"),
        ("data.none", None),
        ("data.items[5].id", None),
        ("data.missing", None),
        ("data.items[0]", '{"id": 7, "status": "new"}'),
        ("data..items", None),
    ],
)
def test_json_path_forms(key, value):
    assert value_at(key, JSON_BODY) == value


def test_json_is_recognised_without_a_content_type():
    assert value_at("a", '{"a": "b"}', content_type="") == "b"


def test_form_encoded_bodies_are_read_by_name():
    body = "status=accepted&lead_id=77&msg=a%20b"
    assert value_at("msg", body, content_type="text/plain") == "a b"
    assert value_at("$.status", body, content_type="application/x-www-form-urlencoded") == (
        "accepted"
    )


def test_invalid_json_is_read_as_text_with_a_note():
    sp = spec(rules=(rule(cond(Operator.ALWAYS, key_kind=KeyKind.JSON_PATH, key="a")),))
    outcome = evaluate_sample(sp, 200, {"Content-Type": "application/json"}, '{"a": ')
    assert any("not valid JSON" in t.note for t in outcome.trace if t.kind is TraceKind.NOTE)


# --- XML --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("//Result/text()", "Accepted"),
        ("//Result", "Accepted"),
        ("//Result/@code", "A1"),
        ("/Envelope/Body/PostResponse/LeadId/text()", "BL-991"),
        ("//Price/@currency", "USD"),
        ("count(//Error)", "2"),
        ("count(//Error) > 1", "true"),
        ("boolean(//Missing)", "false"),
        ("string(//Error[2])", "late"),
        ("//Missing/text()", None),
        ("//[", None),  # invalid XPath: nothing, with a note
    ],
)
def test_xpath_on_a_namespaced_buyer_response(key, value):
    body = BUYER_XML.decode()
    assert value_at(key, body, KeyKind.XPATH, content_type="text/xml") == value


def test_xpath_response_decides_and_captures():
    sp = spec(
        rules=(
            rule(
                cond(Operator.EQUALS, key_kind=KeyKind.XPATH, key="//Result", value="accepted"),
                reason="code {{x}}",
            ),
        ),
        captures=(
            capture(CaptureTarget.BUYER_LEAD_ID, "//LeadId", KeyKind.XPATH),
            capture(CaptureTarget.PRICE, "//Price", KeyKind.XPATH),
        ),
    )
    outcome = read_response(
        sp, None, result(body=BUYER_XML, headers=[("Content-Type", "application/soap+xml")])
    )
    assert outcome.kind is OutcomeKind.ACCEPTED
    assert outcome.buyer_lead_id == "BL-991"
    assert outcome.price == Decimal("12.50")


def test_xml_in_another_declared_encoding_is_decoded():
    body = '<?xml version="1.0" encoding="ISO-8859-1"?><r><n>Müller</n></r>'.encode("latin-1")
    sp = spec(captures=(capture(CaptureTarget.VARIABLE, "//n", KeyKind.XPATH, name="n"),))
    outcome = read_response(sp, None, result(body=body, headers=[("Content-Type", "text/xml")]))
    assert outcome.variables == {"n": "Müller"}


@pytest.mark.parametrize("body", [XXE, BILLION_LAUGHS])
def test_dtds_and_entities_are_refused_without_expansion(body):
    sp = spec(
        rules=(rule(cond(Operator.IS_NOT_EMPTY, key_kind=KeyKind.XPATH, key="string(/*)")),),
        captures=(capture(CaptureTarget.REJECT_REASON, ".*", KeyKind.REGEX),),
    )
    started = time.monotonic()
    outcome = read_response(sp, None, result(body=body, headers=[("Content-Type", "text/xml")]))
    assert time.monotonic() - started < 1
    assert outcome.matched_rule is None
    condition = next(t for t in outcome.trace if t.kind is TraceKind.CONDITION)
    assert condition.value is None
    assert "not XML" in condition.note
    assert any("DTD" in t.note for t in outcome.trace if t.kind is TraceKind.NOTE)
    assert "root:" not in repr(outcome)
    assert "lollol" not in repr(outcome)


def test_defusedxml_refuses_entities_even_if_the_text_check_missed_them(monkeypatch):
    monkeypatch.setattr(reading, "_DTD_RE", reading.re.compile(r"(?!)"))
    assert value_at("//status", XXE.decode(), KeyKind.XPATH, "text/xml") is None
    assert value_at("string(/*)", BILLION_LAUGHS.decode(), KeyKind.XPATH, "text/xml") is None


def test_html_error_pages_are_not_parsed_as_xml():
    sp = spec(rules=(rule(cond(Operator.CONTAINS, value="maintenance")),))
    outcome = evaluate_sample(
        sp, 200, {"Content-Type": "text/html"}, "<!DOCTYPE html><p>Maintenance</p>"
    )
    assert outcome.matched_rule == 0
    assert not [t for t in outcome.trace if t.kind is TraceKind.NOTE and "DTD" in t.note]


# --- regex ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (r"lead_id=(\d+)", "4711"),
        (r"lead_id=\d+", "lead_id=4711"),
        (r"price:\s*([0-9.]+)", "3.25"),
        (r"nothing=(\d+)", None),
        ("(", None),
    ],
)
def test_regex_key_returns_the_first_group_or_the_whole_match(key, value):
    body = "OK lead_id=4711 price: 3.25 lead_id=9"
    assert value_at(key, body, KeyKind.REGEX, "text/plain") == value


def test_regex_only_searches_the_first_64_kib():
    body = "x" * (64 * 1024) + " id=5"
    assert value_at(r"id=(\d)", "x" * 100 + " id=5", KeyKind.REGEX, "text/plain") == "5"
    sp = spec(rules=(rule(cond(key_kind=KeyKind.REGEX, key=r"id=(\d)")),))
    outcome = evaluate_sample(sp, 200, {"Content-Type": "text/plain"}, body)
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CONDITION)
    assert entry.value is None
    assert "first 65536 characters" in entry.note


def test_regex_pattern_length_is_capped():
    sp = spec(
        captures=(
            capture(CaptureTarget.VARIABLE, "b" * 1001, KeyKind.REGEX, name="long"),
            capture(CaptureTarget.VARIABLE, "b" * 1000, KeyKind.REGEX, name="limit"),
        )
    )
    outcome = evaluate_sample(sp, 200, {"Content-Type": "text/plain"}, "b" * 2000)
    assert outcome.variables == {"limit": "b" * 1000}
    assert "longer than 1000" in outcome.trace[0].note
    assert outcome.trace[1].value.endswith("…")  # the trace shows values shortened


# --- outcomes ---------------------------------------------------------------------------


def test_first_rule_that_holds_decides_and_all_rules_are_traced():
    sp = spec(
        rules=(
            rule(
                cond(Operator.EQUALS, key_kind=KeyKind.JSON_PATH, key="status", value="ok"),
                cond(Operator.IS_TRUE, key_kind=KeyKind.JSON_PATH, key="sold"),
                outcome=OutcomeKind.ACCEPTED,
            ),
            rule(
                cond(Operator.EQUALS, key_kind=KeyKind.JSON_PATH, key="status", value="ok"),
                outcome=OutcomeKind.PENDING,
                reason="waiting",
            ),
            rule(cond(Operator.ALWAYS), outcome=OutcomeKind.REJECTED),
        )
    )
    outcome = evaluate_sample(sp, 200, {}, '{"status": "OK", "sold": false}')
    assert outcome.kind is OutcomeKind.PENDING
    assert outcome.reason == "waiting"
    assert outcome.matched_rule == 1
    rules = [(t.rule, t.held) for t in outcome.trace if t.kind is TraceKind.RULE]
    assert rules == [(0, False), (1, True), (2, True)]
    first = [t for t in outcome.trace if t.kind is TraceKind.CONDITION][:2]
    assert [(t.rule, t.key, t.value, t.operator, t.held) for t in first] == [
        (0, "status", "OK", "equals", True),
        (0, "sold", "false", "is_true", False),
    ]
    assert first[0].source == "body" and first[0].expected == "ok"


@pytest.mark.parametrize("default", [OutcomeKind.ACCEPTED, OutcomeKind.PENDING])
def test_a_2xx_answer_no_rule_decided_takes_the_default(default):
    sp = spec(
        default_outcome=default,
        rules=(rule(cond(Operator.EQUALS, Source.STATUS, value="201")),),
    )
    outcome = read_response(sp, None, result(status=200, body=b"{}"))
    assert outcome.kind is default
    assert outcome.matched_rule is None
    assert outcome.reason == ""


@pytest.mark.parametrize("status", [500, 503, 404, 302])
def test_a_non_2xx_answer_no_rule_decided_is_an_error(status):
    sp = spec(rules=(rule(cond(Operator.EQUALS, Source.STATUS, value="200")),))
    outcome = read_response(sp, None, result(status=status, body=b"oops"))
    assert outcome.kind is OutcomeKind.ERROR
    assert outcome.reason == f"HTTP {status}"


def test_a_rule_can_decide_a_non_2xx_answer():
    sp = spec(
        rules=(
            rule(
                cond(Operator.EQUALS, key_kind=KeyKind.JSON_PATH, key="error", value="duplicate"),
                outcome=OutcomeKind.DUPLICATE,
            ),
        )
    )
    outcome = read_response(sp, None, result(status=400, body=b'{"error": "Duplicate"}'))
    assert outcome.kind is OutcomeKind.DUPLICATE


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (ErrorCode.TIMEOUT, OutcomeKind.TIMEOUT),
        (ErrorCode.CONNECTION, OutcomeKind.ERROR),
        (ErrorCode.SSRF, OutcomeKind.ERROR),
    ],
)
def test_transport_errors_decide_alone(code, kind):
    sp = spec(
        rules=(rule(cond(Operator.ALWAYS)),),
        captures=(capture(CaptureTarget.BUYER_LEAD_ID, "id"),),
    )
    failed = result(body=b'{"id": "1"}', error=(ErrorKind.TRANSIENT, code, f"{code} happened"))
    outcome = read_response(sp, None, failed)
    assert outcome.kind is kind
    assert outcome.reason == f"{code} happened"
    assert outcome.matched_rule is None
    assert outcome.buyer_lead_id is None
    assert [t.kind for t in outcome.trace] == [TraceKind.NOTE]
    assert "not evaluated" in outcome.trace[0].note


def test_rejected_without_a_rule_reason_takes_the_captured_reject_reason():
    sp = spec(
        rules=(
            rule(
                cond(Operator.IS_FALSE, key_kind=KeyKind.JSON_PATH, key="success"),
                outcome=OutcomeKind.REJECTED,
            ),
        ),
        captures=(capture(CaptureTarget.REJECT_REASON, "errors[0].message"),),
    )
    outcome = evaluate_sample(
        sp, 200, {}, '{"success": false, "errors": [{"message": "Zip not covered"}]}'
    )
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.reason == "Zip not covered"
    assert outcome.captured["reject_reason"] == "Zip not covered"


def test_a_rule_reason_wins_over_the_captured_reject_reason():
    sp = spec(
        rules=(rule(cond(Operator.ALWAYS), outcome=OutcomeKind.REJECTED, reason="ours"),),
        captures=(capture(CaptureTarget.REJECT_REASON, "msg"),),
    )
    assert evaluate_sample(sp, 200, {}, '{"msg": "theirs"}').reason == "ours"


# --- captures ---------------------------------------------------------------------------


def test_every_capture_target_is_filled_even_when_rejected():
    sp = spec(
        rules=(rule(cond(Operator.ALWAYS), outcome=OutcomeKind.REJECTED, reason="no"),),
        captures=(
            capture(CaptureTarget.LEAD_FIELD, "buyer.status", name="buyer_status"),
            capture(CaptureTarget.VARIABLE, "token", name="session"),
            capture(CaptureTarget.PRICE, "bid"),
            capture(CaptureTarget.REDIRECT_URL, "url"),
            capture(CaptureTarget.BUYER_LEAD_ID, "id"),
            capture(CaptureTarget.REJECT_REASON, "why"),
        ),
    )
    body = (
        '{"buyer": {"status": "review"}, "token": "t-1", "bid": "$12.50",'
        ' "url": "https://buyer.example/thanks?x=1", "id": 991, "why": "cap"}'
    )
    outcome = evaluate_sample(sp, 200, {}, body)
    assert outcome.kind is OutcomeKind.REJECTED
    assert outcome.fields == {"buyer_status": "review"}
    assert outcome.variables == {"session": "t-1"}
    assert outcome.price == Decimal("12.50")
    assert outcome.redirect_url == "https://buyer.example/thanks?x=1"
    assert outcome.buyer_lead_id == "991"
    assert outcome.captured == {
        "lead_field:buyer_status": "review",
        "variable:session": "t-1",
        "price": "12.50",
        "redirect_url": "https://buyer.example/thanks?x=1",
        "buyer_lead_id": "991",
        "reject_reason": "cap",
    }
    captures = [t for t in outcome.trace if t.kind is TraceKind.CAPTURE]
    assert [t.target for t in captures] == [
        "lead_field:buyer_status",
        "variable:session",
        "price",
        "redirect_url",
        "buyer_lead_id",
        "reject_reason",
    ]
    assert all(t.held for t in captures)


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("12.50", Decimal("12.50")),
        ("$12.50", Decimal("12.50")),
        (" USD 12.50 ", Decimal("12.50")),
        ("12,50 EUR", Decimal("12.50")),
        ("€1.234,50", Decimal("1234.50")),
        ("1,234.50", Decimal("1234.50")),
        ("1,234", Decimal("1234")),
        ("1.234.567", Decimal("1234567")),
        ("0", Decimal("0")),
        (".5", Decimal(".5")),
        ("-3", Decimal("-3")),
        ("-$3.10", Decimal("-3.10")),
        ("abc", None),
        ("", None),
        ("12.50.1", None),
        ("1,2,3", None),
        ("NaN", None),
        ("Infinity", None),
        ("12 apples", None),
        ("1" * 200, None),
    ],
)
def test_parse_amount(text, amount):
    assert parse_amount(text) == amount


@pytest.mark.parametrize("bid", ["free", "-5", "NaN", ""])
def test_an_invalid_price_is_not_captured_and_the_trace_says_so(bid):
    sp = spec(captures=(capture(CaptureTarget.PRICE, "bid"),))
    outcome = evaluate_sample(sp, 200, {}, f'{{"bid": "{bid}"}}')
    assert outcome.price is None
    assert "price" not in outcome.captured
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CAPTURE)
    assert entry.held is False
    assert "not a price" in entry.note


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "/thanks", "ftp://x.example/", "https://", "https://a b.c/"]
)
def test_a_redirect_url_must_be_absolute_http(url):
    sp = spec(captures=(capture(CaptureTarget.REDIRECT_URL, "url"),))
    outcome = evaluate_sample(sp, 200, {}, f'{{"url": "{url}"}}')
    assert outcome.redirect_url is None
    assert "redirect_url" not in outcome.captured
    entry = next(t for t in outcome.trace if t.kind is TraceKind.CAPTURE)
    assert entry.held is False
    assert "absolute http" in entry.note


def test_the_first_capture_that_finds_a_value_wins():
    sp = spec(
        captures=(
            capture(CaptureTarget.BUYER_LEAD_ID, "missing"),
            capture(CaptureTarget.BUYER_LEAD_ID, "lead.id"),
            capture(CaptureTarget.BUYER_LEAD_ID, "other"),
        )
    )
    outcome = evaluate_sample(sp, 200, {}, '{"lead": {"id": "L1"}, "other": "L2"}')
    assert outcome.buyer_lead_id == "L1"
    notes = [t.note for t in outcome.trace if t.kind is TraceKind.CAPTURE]
    assert notes == ["nothing found", "", "an earlier capture already set this target"]


def test_captures_from_headers_and_a_lead_field_without_name():
    sp = spec(
        captures=(
            capture(CaptureTarget.BUYER_LEAD_ID, "x-lead-id", KeyKind.NONE, Source.HEADER),
            capture(CaptureTarget.LEAD_FIELD, "a"),
        )
    )
    outcome = evaluate_sample(sp, 200, {"X-Lead-ID": "H-7"}, '{"a": "1"}')
    assert outcome.buyer_lead_id == "H-7"
    assert outcome.fields == {}
    captures = [t for t in outcome.trace if t.kind is TraceKind.CAPTURE]
    assert captures[1].held is False
    assert "no target name" in captures[1].note


# --- secrets, samples, bodies ------------------------------------------------------------


def test_secrets_echoed_by_the_buyer_are_masked_in_trace_and_reason():
    sp = spec(
        url="https://buyer.example/p",
        body_format=BodyFormat.JSON,
        auth_type=AuthType.QUERY_KEY,
        auth_name="key",
        auth_secret=SECRET,
        rules=(
            rule(
                cond(Operator.EQUALS, Source.QUERY, key="key", value=SECRET),
                cond(Operator.CONTAINS, value="invalid"),
                outcome=OutcomeKind.REJECTED,
            ),
        ),
        captures=(capture(CaptureTarget.REJECT_REASON, "message"),),
    )
    built = build_request(sp, {})
    body = f'{{"message": "invalid key {SECRET}"}}'.encode()
    outcome = read_response(sp, built, result(body=body))
    assert outcome.kind is OutcomeKind.REJECTED  # compared with the real value
    assert SECRET not in outcome.reason
    assert outcome.reason == "invalid key ***"
    assert SECRET not in repr(outcome.trace)


def test_evaluate_sample_takes_header_pairs_or_a_mapping():
    sp = spec(rules=(rule(cond(Operator.EQUALS, Source.HEADER, key="X-S", value="a")),))
    assert evaluate_sample(sp, 200, {"x-s": "a"}, "").matched_rule == 0
    assert evaluate_sample(sp, 200, [("x-s", "a")], "").matched_rule == 0
    assert evaluate_sample(sp, 200, [], "").matched_rule is None


def test_body_charset_from_the_content_type_is_used():
    sp = spec(rules=(rule(cond(Operator.EQUALS, value="Müller")),))
    body = "Müller".encode("latin-1")
    ok = read_response(
        sp, None, result(body=body, headers=[("Content-Type", "text/plain; charset=iso-8859-1")])
    )
    assert ok.matched_rule == 0


def test_a_truncated_body_is_noted():
    sp = spec(rules=(rule(cond(Operator.ALWAYS, key_kind=KeyKind.JSON_PATH, key="a")),))
    outcome = read_response(sp, None, result(body=b'{"a": "', truncated=True))
    notes = [t.note for t in outcome.trace if t.kind is TraceKind.NOTE]
    assert any("cut at the size limit" in n for n in notes)


def test_outcome_error_has_no_response():
    outcome = reading.Outcome.error("Not sent: dry run.")
    assert outcome.kind is OutcomeKind.ERROR
    assert outcome.reason == "Not sent: dry run."
    assert outcome.captured == {} and outcome.trace == []


# --- a call nobody shows the trace for ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"status":"Accepted","bid":"12.50","id":"B-1","url":"https://b.example/t"}', 200),
        (b'{"status":"rejected","reason":"dup"}', 200),
        (b'{"status":"maybe"}', 200),
        (b"<html>down</html>", 503),
    ],
)
def test_an_untraced_read_decides_and_captures_exactly_as_a_traced_one(body, status):
    """trace=False (the ping tree's and the engine's calls) must only leave the trace out:
    the same kind, reason, price, captures and matched rule as the admin's traced read."""
    step = spec(
        rules=(
            rule(cond(Operator.EQUALS, key_kind=KeyKind.JSON_PATH, key="status", value="acc*|ok")),
            rule(
                cond(Operator.EQUALS, key_kind=KeyKind.JSON_PATH, key="$.status", value="rejected"),
                outcome=OutcomeKind.REJECTED,
            ),
        ),
        captures=(
            capture(CaptureTarget.PRICE, "bid"),
            capture(CaptureTarget.BUYER_LEAD_ID, "id"),
            capture(CaptureTarget.REDIRECT_URL, "url"),
            capture(CaptureTarget.REJECT_REASON, "reason"),
        ),
        default_outcome=OutcomeKind.ERROR,
    )
    traced = read_response(step, None, result(status=status, body=body))
    untraced = read_response(step, None, result(status=status, body=body), trace=False)
    assert traced.trace, "the admin's read keeps its trace"
    assert [t for t in untraced.trace if t.kind is not TraceKind.NOTE] == []
    for name in ("kind", "reason", "price", "redirect_url", "buyer_lead_id", "captured",
                 "matched_rule", "fields", "variables"):  # fmt: skip
        assert getattr(untraced, name) == getattr(traced, name), name


def test_equals_alternatives_and_wildcards_are_remembered_per_expected_value():
    """The expected value's alternatives are split and compiled once, and the same
    value gives the same answers whatever was asked before."""
    reading._alternatives.cache_clear()
    assert reading._matches_alternatives(" ACCEPTED ", "approved|accepted")
    assert reading._matches_alternatives("approved-now", "approved|app*now")
    assert not reading._matches_alternatives("reject", "approved|app*now")
    assert reading._matches_alternatives("a.b", "a.b") and not reading._matches_alternatives(
        "axb", "a.b"
    ), "a dot is a dot, not a regex wildcard"
    assert reading._matches_alternatives("a+b\nc", "a+b*")
    before = reading._alternatives.cache_info().hits
    assert reading._matches_alternatives("accepted", "approved|accepted")
    assert reading._alternatives.cache_info().hits == before + 1
