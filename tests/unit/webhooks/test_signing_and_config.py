"""Standard Webhooks signing against the spec's published vector, the webhook step's
settings check (clear errors), and reading a callback's identifier where it is."""

from __future__ import annotations

import pytest

from webhooks import signing
from webhooks.payloads import Callback, flat_variables
from webhooks.step import RETENTION_SECONDS, WebhookConfigError, config_parse

# From the Standard Webhooks reference libraries' tests.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = EXPECTED, stamp: int = STAMP) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def test_sign_matches_the_spec_vector() -> None:
    assert signing.sign(SECRET, msg_id=MSG_ID, timestamp=STAMP, body=BODY) == EXPECTED


def test_verify_accepts_the_vector_and_any_of_several_signatures() -> None:
    assert signing.verify(SECRET, headers=headers(), body=BODY, now=STAMP + 10) == MSG_ID
    # The 5 minute tolerance, both ways, up to its edge.
    for now in (STAMP + 300, STAMP - 300):
        assert signing.verify(SECRET, headers=headers(), body=BODY, now=now) == MSG_ID
    rotated = f"v1,bm90IHRoaXMgb25l {EXPECTED}"
    assert signing.verify(SECRET, headers=headers(rotated), body=BODY, now=STAMP) == MSG_ID


@pytest.mark.parametrize(
    ("hdrs", "body", "now", "why"),
    [
        (headers(), b'{"test": 1}', STAMP, "no valid v1 signature"),
        (headers("v2," + EXPECTED[3:]), BODY, STAMP, "no valid v1 signature"),
        (headers(), BODY, STAMP + 301, "tolerance"),
        (headers(), BODY, STAMP - 301, "tolerance"),
        ({"webhook-id": MSG_ID}, BODY, STAMP, "missing"),
        (headers(stamp="soon"), BODY, STAMP, "not a number"),  # type: ignore[arg-type]
    ],
)
def test_verify_refuses(hdrs: dict, body: bytes, now: float, why: str) -> None:
    with pytest.raises(signing.SignatureError, match=why):
        signing.verify(SECRET, headers=hdrs, body=body, now=now)


def test_generated_secrets_are_usable_and_bad_ones_are_named() -> None:
    signing.secret_check(signing.secret_generate())
    with pytest.raises(ValueError, match="base64"):
        signing.secret_check("whsec_not base64!")
    with pytest.raises(ValueError, match="too short"):
        signing.secret_check("whsec_AAAA")


def test_config_defaults() -> None:
    config = config_parse({"endpoint": "wh_acme"})
    assert (config.wait, config.timeout_seconds, str(config.default_outcome)) == (
        True,
        300,
        "accepted",
    )
    assert config_parse({"endpoint": "wh_acme", "wait": False}).park_seconds == RETENTION_SECONDS


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "endpoint"),
        ({"endpoint": "x", "wait": False, "timeout_seconds": 60}, "only available when"),
        ({"endpoint": "x", "timeout_seconds": 0}, "between 1 and"),
        ({"endpoint": "x", "timeout_seconds": "60"}, "whole number"),
        ({"endpoint": "x", "wait": "yes"}, "wait"),
        ({"endpoint": "x", "colour": 1}, "unknown setting"),
        ({"endpoint": "x", "rules": [{"conditions": [], "outcome": "accepted"}]}, "non-empty"),
        (
            {"endpoint": "x", "rules": [{"conditions": [{"key": "a"}], "outcome": "sold"}]},
            r"rules\[0\].outcome",
        ),
        (
            {"endpoint": "x", "rules": [{"conditions": [{"source": "status"}], "outcome": "x"}]},
            "a callback has no status",
        ),
        ({"endpoint": "x", "captures": [{"target": "lead_field"}]}, "target_name"),
        ({"endpoint": "x", "external_id": "{{ unclosed"}, "external_id"),
    ],
)  # fmt: skip
def test_config_errors_name_the_setting(config: dict, message: str) -> None:
    with pytest.raises(WebhookConfigError, match=message):
        config_parse(config)


def call(query=(), headers=(), content_type="application/json", body=b"") -> Callback:
    return Callback("POST", list(query), list(headers), content_type, body)


def test_identifier_locations() -> None:
    c = call(
        query=[("pcid", "q1"), ("pcid", "q2")],
        headers=[("X-Lead", " h1 ")],
        body=b'{"pcid": "b1", "data": {"items": [{"id": 7}]}}',
    )
    assert c.read("query", "pcid") == "q2"
    assert c.read("header", "x-lead") == "h1"
    assert c.read("body", "pcid") == "b1"
    assert c.read("body", "data.items[0].id") == "7"
    assert c.read("any", "pcid") == "q2"
    assert call(body=b'{"pcid": "b1"}').read("any", "pcid") == "b1"
    form = call(content_type="application/x-www-form-urlencoded", body=b"pcid=f1&x=2")
    assert form.read("body", "pcid") == "f1"
    assert call(body=b"{broken").read("body", "pcid") is None
    assert call(body=b'{"pcid": ""}').read("body", "pcid") is None


def test_payload_and_flat_variables() -> None:
    c = call(query=[("a", "1")], body=b'{"a": "2", "n": 3, "ok": true, "deep": {"x": 1}}')
    payload = c.payload()
    assert payload == {"a": "2", "n": 3, "ok": True, "deep": {"x": 1}}
    assert flat_variables(payload) == {"webhook_a": "2", "webhook_n": "3", "webhook_ok": "true"}
    assert call(body=b'"\\u0000"').payload() == {"body": "\ufffd"}
