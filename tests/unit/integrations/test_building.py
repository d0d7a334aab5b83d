"""build_request: every body format, escaping where values land, headers, auth.

Pure: specs and contexts in, bytes out, parsed back with independent parsers (json,
defusedxml, urllib.parse, the email package) to prove values arrive exactly.
"""

import base64
import email.parser
import email.policy
import hashlib
import json
import re
from urllib.parse import parse_qsl, urlsplit

import defusedxml.ElementTree
import pytest

from integrations.building import BuildError, build_request
from integrations.outbound import OutboundRequest
from integrations.spec import AuthType, BodyFormat, Method, RequestSpec

# Quotes, backslash, newlines, markup, ampersand, apostrophe, tab, accents, emoji.
SPECIAL = "He said \"hi\" \\ back\nnext\r\nline </x> & 'q' \t ñ 😀 <![CDATA[x]]> %41 +1"
SECRET = "s3cr3t-T0ken"


def spec(**kwargs) -> RequestSpec:
    kwargs.setdefault("method", Method.POST)
    kwargs.setdefault("url", "https://buyer.example/leads")
    return RequestSpec(**kwargs)


def header(built, name: str) -> str | None:
    values = [v for n, v in built.headers if n.lower() == name.lower()]
    assert len(values) <= 1, values
    return values[0] if values else None


def multipart_fields(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """Parse multipart/form-data with the email package (RFC 2046 rules)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    return [
        (part.get_param("name", header="content-disposition"), part.get_payload(decode=True))
        for part in message.iter_parts()
    ]


def multipart_raw_values(body: bytes, boundary: str) -> list[bytes]:
    """A byte-exact split on the boundary: line endings inside values must survive."""
    delimiter = b"\r\n--" + boundary.encode()
    parts = (b"\r\n" + body).split(delimiter)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    return [part.split(b"\r\n\r\n", 1)[1] for part in parts[1:-1]]


# --- JSON -------------------------------------------------------------------------------


def test_json_nests_dotted_and_bracketed_names_in_any_order():
    built = build_request(
        spec(
            body=(
                ("orders[1].sku", "B-2"),
                ("customer.name", "{{g_first_name}}"),
                ("orders[0].price", "12.50"),
                ("customer.address.zip", "{{g_zip}}"),
                ("orders[0].sku", "A-1"),
                ("source", "web"),
            )
        ),
        {"g_first_name": "Jane", "g_zip": "20500"},
    )
    assert json.loads(built.body) == {
        "orders": [{"price": "12.50", "sku": "A-1"}, {"sku": "B-2"}],
        "customer": {"name": "Jane", "address": {"zip": "20500"}},
        "source": "web",
    }
    assert built.content_type == "application/json"
    assert header(built, "Content-Type") == "application/json"


def test_json_array_gaps_are_null_and_values_stay_strings():
    built = build_request(spec(body=(("items[2]", "7"), ("flag", "true"))), {})
    assert json.loads(built.body) == {"items": [None, None, "7"], "flag": "true"}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ((("a", "1"), ("a.b", "2")), ("a", "a.b")),
        ((("a.b", "2"), ("a", "1")), ("a.b", "a")),
        ((("a[0]", "1"), ("a.x", "2")), ("a[0]", "a.x")),
        ((("c.d.e", "1"), ("c.d[0]", "2")), ("c.d.e", "c.d[0]")),
    ],
)
def test_json_conflicting_paths_name_both_fields(fields, names):
    with pytest.raises(BuildError) as caught:
        build_request(spec(body=fields), {})
    assert f'"{names[0]}"' in caught.value.message
    assert f'"{names[1]}"' in caught.value.message
    assert caught.value.field == names[1]


def test_json_same_name_twice_is_refused():
    with pytest.raises(BuildError, match="listed twice"):
        build_request(spec(body=(("x.y", "1"), ("x.y", "2"))), {})


@pytest.mark.parametrize("name", ["a..b", "[0].a", "a[x]", "a.", "a[1000]", "a[0]b"])
def test_json_unreadable_names_are_refused(name):
    with pytest.raises(BuildError) as caught:
        build_request(spec(body=((name, "v"),)), {})
    assert caught.value.field == name


def test_json_special_characters_round_trip_exactly_as_utf8():
    built = build_request(
        spec(body=(("note", "{{text}}"), ("nested.deep[0]", "{{text}}"))), {"text": SPECIAL}
    )
    assert json.loads(built.body.decode("utf-8")) == {
        "note": SPECIAL,
        "nested": {"deep": [SPECIAL]},
    }
    assert "😀".encode() in built.body  # UTF-8, not \ud83d escapes


def test_json_without_fields_is_an_empty_object():
    built = build_request(spec(), {})
    assert built.body == b"{}"


# --- XML --------------------------------------------------------------------------------


def test_xml_nests_under_the_root_and_repeats_array_elements():
    built = build_request(
        spec(
            body_format=BodyFormat.XML,
            xml_root="lead",
            body=(
                ("orders[1].sku", "B"),
                ("customer.name", "Jane"),
                ("orders[0].price", "12.50"),
                ("orders[0].sku", "A"),
            ),
        ),
        {},
    )
    root = defusedxml.ElementTree.fromstring(built.body)
    assert root.tag == "lead"
    assert root.find("customer/name").text == "Jane"
    orders = root.findall("orders")
    assert [o.findtext("sku") for o in orders] == ["A", "B"]
    assert orders[0].findtext("price") == "12.50"
    assert orders[1].find("price") is None
    assert built.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert built.content_type == "application/xml; charset=utf-8"


def test_xml_array_gap_is_an_empty_element():
    built = build_request(spec(body_format=BodyFormat.XML, body=(("tag[1]", "b"),)), {})
    root = defusedxml.ElementTree.fromstring(built.body)
    assert [(t.text or "") for t in root.findall("tag")] == ["", "b"]


def test_xml_special_characters_round_trip_exactly():
    built = build_request(
        spec(body_format=BodyFormat.XML, body=(("a.b", "{{text}}"),)), {"text": SPECIAL}
    )
    root = defusedxml.ElementTree.fromstring(built.body)
    assert root.find("a/b").text == SPECIAL
    assert b"</x>" not in built.body  # the markup in the value was escaped


@pytest.mark.parametrize("name", ["1abc", "a b", "ns:tag", "a.<x>"])
def test_xml_invalid_element_names_are_refused(name):
    with pytest.raises(BuildError, match="XML element name"):
        build_request(spec(body_format=BodyFormat.XML, body=((name, "v"),)), {})


def test_xml_invalid_root_name_is_refused():
    with pytest.raises(BuildError) as caught:
        build_request(spec(body_format=BodyFormat.XML, xml_root="bad root"), {})
    assert caught.value.field == "xml_root"


def test_xml_array_directly_in_an_array_is_refused():
    with pytest.raises(BuildError, match="array directly inside an array"):
        build_request(spec(body_format=BodyFormat.XML, body=(("m[0][1]", "v"),)), {})


def test_xml_removes_characters_xml_cannot_carry_with_a_warning():
    built = build_request(
        spec(body_format=BodyFormat.XML, body=(("v", "{{x}}"),)), {"x": "a\x00b\x0bc"}
    )
    assert defusedxml.ElementTree.fromstring(built.body).findtext("v") == "abc"
    assert any('body field "v"' in w for w in built.warnings)


# --- form, multipart, query -------------------------------------------------------------


def test_form_round_trips_special_characters_with_flat_names():
    built = build_request(
        spec(body_format=BodyFormat.FORM, body=(("customer.name", "{{t}}"), ("a&b", "x=y"))),
        {"t": SPECIAL},
    )
    assert parse_qsl(built.body.decode("ascii"), keep_blank_values=True) == [
        ("customer.name", SPECIAL),
        ("a&b", "x=y"),
    ]
    assert header(built, "Content-Type") == "application/x-www-form-urlencoded"


def test_multipart_round_trips_special_characters():
    built = build_request(
        spec(
            body_format=BodyFormat.MULTIPART,
            body=(("note", "{{t}}"), ('we"ird\nname', "plain"), ("empty", "")),
        ),
        {"t": SPECIAL},
    )
    content_type = header(built, "Content-Type")
    assert content_type == built.content_type
    boundary = re.fullmatch(r"multipart/form-data; boundary=(\S+)", content_type).group(1)
    assert multipart_raw_values(built.body, boundary) == [SPECIAL.encode(), b"plain", b""]
    names = [name for name, _ in multipart_fields(built.body, content_type)]
    assert names == ["note", "we%22ird%0Aname", "empty"]


def test_multipart_boundary_is_random():
    first = build_request(spec(body_format=BodyFormat.MULTIPART, body=(("a", "1"),)), {})
    second = build_request(spec(body_format=BodyFormat.MULTIPART, body=(("a", "1"),)), {})
    assert first.content_type != second.content_type


def test_query_format_puts_body_fields_in_the_query_string_exactly():
    built = build_request(
        spec(
            url="https://buyer.example/in?src=1",
            body_format=BodyFormat.QUERY,
            body=(("email", "{{t}}"), ("customer.name", "Jane")),
        ),
        {"t": SPECIAL},
    )
    assert built.body is None
    assert header(built, "Content-Type") is None
    assert built.content_type == ""
    assert built.query_params == [("src", "1"), ("email", SPECIAL), ("customer.name", "Jane")]
    assert parse_qsl(urlsplit(built.url).query) == built.query_params


@pytest.mark.parametrize("method", [Method.GET, Method.DELETE])
@pytest.mark.parametrize("body_format", [BodyFormat.JSON, BodyFormat.XML, BodyFormat.FORM])
def test_get_and_delete_send_body_fields_in_the_query(method, body_format):
    built = build_request(
        spec(method=method, body_format=body_format, body=(("a", "1"), ("b.c", "2"))), {}
    )
    assert built.method == method.value
    assert built.body is None
    assert header(built, "Content-Type") is None
    assert built.query_params == [("a", "1"), ("b.c", "2")]


# --- URL --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a&b=c", "x#frag", "a?b=1", "50% off+more", SPECIAL])
def test_values_in_a_query_cannot_add_parameters_or_cut_the_url(value):
    built = build_request(spec(url="https://buyer.example/p?email={{v}}&src=2"), {"v": value})
    parts = urlsplit(built.url)
    assert parts.fragment == ""
    assert parse_qsl(parts.query, keep_blank_values=True) == [("email", value), ("src", "2")]


@pytest.mark.parametrize("value", ["../admin", "..", ".", "a/b", "#x", "?q=1"])
def test_values_in_a_path_stay_one_segment(value):
    built = build_request(spec(url="https://buyer.example/leads/{{v}}/status"), {"v": value})
    parts = urlsplit(built.url)
    segments = parts.path.split("/")
    assert segments[:2] == ["", "leads"]
    assert segments[3:] == ["status"]
    assert len(segments) == 4
    assert segments[2] not in (".", "..")
    assert parts.query == "" and parts.fragment == ""


def test_filters_see_the_real_value_before_url_encoding():
    built = build_request(
        spec(url='https://buyer.example/p?h={{e | sha256}}&d={{day | format_date:"%d/%m"}}'),
        {"e": "Jane@Example.com", "day": "2024-05-01T10:00:00"},
    )
    query = dict(parse_qsl(urlsplit(built.url).query))
    # sha256 of "jane@example.com" (trimmed, lower-cased), not of "Jane%40Example.com"
    assert query["h"] == hashlib.sha256(b"jane@example.com").hexdigest()
    assert query["d"] == "01/05"


def test_an_expression_ending_with_urlencode_is_not_encoded_twice():
    built = build_request(spec(url="https://buyer.example/p?e={{e | urlencode}}"), {"e": "a@b c"})
    assert built.url == "https://buyer.example/p?e=a%40b%20c"


def test_a_url_starting_with_a_url_value_keeps_it_as_the_base():
    built = build_request(
        spec(url="{{postback}}&status={{s}}"),
        {"postback": "https://partner.example/pb?cid=9", "s": "a&b"},
    )
    assert built.url == "https://partner.example/pb?cid=9&status=a%26b"


def test_spec_query_params_are_encoded_after_the_url_query_and_before_the_fragment():
    built = build_request(
        spec(
            url="https://buyer.example/p?a=1#top",
            query=(("q", "{{v}}"), ("skip", '{{missing | do_not_send:"if_empty"}}')),
        ),
        {"v": "x&y=z #"},
    )
    assert built.url == "https://buyer.example/p?a=1&q=x%26y%3Dz%20%23#top"
    assert built.query_params == [("a", "1"), ("q", "x&y=z #")]


@pytest.mark.parametrize(
    "url", ["ftp://buyer.example/x", "buyer.example/x", "https:///x", "https://b.example/a b"]
)
def test_urls_that_are_not_absolute_http_are_refused(url):
    with pytest.raises(BuildError) as caught:
        build_request(spec(url=url), {})
    assert caught.value.field == "url"


def test_a_leading_value_that_is_not_an_http_url_is_encoded_and_refused():
    with pytest.raises(BuildError):
        build_request(spec(url="{{host}}/x"), {"host": "javascript:alert(1)//"})


# --- do_not_send, warnings, template errors ---------------------------------------------


def test_do_not_send_drops_the_field_the_parameter_and_the_header():
    built = build_request(
        spec(
            url="https://buyer.example/p",
            headers=(("X-Phone", '{{phone | do_not_send:"if_empty"}}'), ("X-Keep", "k")),
            query=(("phone", '{{phone | do_not_send:"if_empty"}}'), ("q", "1")),
            body=(("phone", '{{phone | do_not_send:"if_empty"}}'), ("email", "{{email}}")),
        ),
        {"phone": "", "email": "a@b.c"},
    )
    assert json.loads(built.body) == {"email": "a@b.c"}
    assert built.query_params == [("q", "1")]
    assert header(built, "X-Phone") is None
    assert header(built, "X-Keep") == "k"


def test_do_not_send_keeps_a_field_that_has_a_value():
    built = build_request(
        spec(body=(("phone", '{{phone | do_not_send:"if_empty"}}'),)), {"phone": "+1555"}
    )
    assert json.loads(built.body) == {"phone": "+1555"}


def test_unknown_names_become_warnings_naming_where():
    built = build_request(
        spec(url="https://buyer.example/{{nope}}", body=(("a", "{{missing}}"),)), {}
    )
    assert json.loads(built.body) == {"a": ""}
    assert any(w.startswith("URL:") and "nope" in w for w in built.warnings)
    assert any(w.startswith('body field "a":') and "missing" in w for w in built.warnings)


def test_template_errors_name_the_field():
    with pytest.raises(BuildError) as caught:
        build_request(spec(body=(("email", "{{ email | nosuchfilter }}"),)), {})
    assert caught.value.field == "email"
    assert "nosuchfilter" in caught.value.message


# --- headers ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_values_with_line_breaks_are_refused_naming_the_header(value):
    with pytest.raises(BuildError) as caught:
        build_request(spec(headers=(("X-Name", "{{v}}"),)), {"v": value})
    assert caught.value.field == "X-Name"
    assert '"X-Name"' in caught.value.message
    assert "Injected" not in caught.value.message


@pytest.mark.parametrize("name", ["Bad Name", "X-A:", "", "Ünïcode", "a\r\nb"])
def test_invalid_header_names_are_refused(name):
    with pytest.raises(BuildError):
        build_request(spec(headers=((name, "v"),)), {})


def test_header_values_are_rendered_and_content_type_can_be_overridden():
    built = build_request(
        spec(
            headers=(("X-Lead", "{{pcid}}"), ("content-type", "application/vnd.buyer+json")),
            body=(("a", "1"),),
        ),
        {"pcid": "P-1"},
    )
    assert header(built, "X-Lead") == "P-1"
    assert header(built, "Content-Type") == "application/vnd.buyer+json"
    assert built.content_type == "application/vnd.buyer+json"


# --- auth -------------------------------------------------------------------------------


def test_basic_auth_sends_base64_user_and_secret_and_masks_both_forms():
    built = build_request(
        spec(auth_type=AuthType.BASIC, auth_name="buyer-user", auth_secret="pä:ss"), {}
    )
    scheme, token = header(built, "Authorization").split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode("utf-8") == "buyer-user:pä:ss"
    assert "pä:ss" in built.secrets
    assert token in built.secrets


def test_basic_auth_username_with_a_colon_is_refused():
    with pytest.raises(BuildError, match="username"):
        build_request(spec(auth_type=AuthType.BASIC, auth_name="a:b", auth_secret=SECRET), {})


def test_bearer_auth():
    built = build_request(spec(auth_type=AuthType.BEARER, auth_secret=SECRET), {})
    assert header(built, "Authorization") == f"Bearer {SECRET}"
    assert SECRET in built.secrets


def test_header_key_auth_replaces_a_spec_header_of_the_same_name_without_leaking():
    built = build_request(
        spec(
            auth_type=AuthType.HEADER_KEY,
            auth_name="X-Api-Key",
            auth_secret=SECRET,
            headers=(("x-api-key", "old"),),
        ),
        {},
    )
    assert header(built, "X-Api-Key") == SECRET
    assert any("replaced by the authentication" in w for w in built.warnings)
    assert not any(SECRET in w for w in built.warnings)


def test_query_key_auth_adds_the_secret_as_the_last_query_parameter():
    built = build_request(
        spec(
            url="https://buyer.example/p?a=1",
            auth_type=AuthType.QUERY_KEY,
            auth_name="api_key",
            auth_secret="k&y=1",
            body_format=BodyFormat.QUERY,
            body=(("b", "2"),),
        ),
        {},
    )
    assert built.query_params == [("a", "1"), ("b", "2"), ("api_key", "k&y=1")]
    assert "k&y=1" in built.secrets
    assert header(built, "Authorization") is None


@pytest.mark.parametrize("auth_type", [AuthType.BEARER, AuthType.HEADER_KEY, AuthType.BASIC])
def test_a_secret_with_a_line_break_is_refused_without_showing_it(auth_type):
    secret = "top\r\nSecretValue"
    with pytest.raises(BuildError) as caught:
        build_request(spec(auth_type=auth_type, auth_name="X-Key", auth_secret=secret), {})
    assert "SecretValue" not in str(caught.value)


def test_extra_secrets_are_listed_for_masking_and_masked_in_repr():
    built = build_request(
        spec(
            url="https://buyer.example/p?token={{t}}",
            secrets=("extra-secret",),
            auth_type=AuthType.QUERY_KEY,
            auth_name="key",
            auth_secret=SECRET,
        ),
        {"t": "extra-secret"},
    )
    assert set(built.secrets) == {SECRET, "extra-secret"}
    assert SECRET not in repr(built)
    assert "extra-secret" not in repr(built)


# --- to the transport -------------------------------------------------------------------


def test_to_outbound_carries_the_exact_request_and_the_step_timeout():
    built = build_request(
        spec(
            method=Method.PUT,
            timeout_seconds=7.5,
            auth_type=AuthType.BEARER,
            auth_secret=SECRET,
            body=(("a", "1"),),
        ),
        {},
    )
    outbound = built.to_outbound(max_response_bytes=1234)
    assert isinstance(outbound, OutboundRequest)
    assert (outbound.method, outbound.url, outbound.body) == ("PUT", built.url, b'{"a":"1"}')
    assert outbound.headers == built.headers
    assert outbound.timeout == 7.5
    assert outbound.max_response_bytes == 1234
    assert SECRET in outbound.secrets
    assert built.to_outbound().max_response_bytes > 0
