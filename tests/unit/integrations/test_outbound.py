"""The one outbound HTTP module, against real local servers.

Fixtures (conftest.py) give every test a fake resolver and a connect recorder that fails
the test if any socket connected to an address the SSRF guard must refuse.
"""

import ipaddress
import json
import socket
import time
from urllib.parse import quote

import pytest
import structlog
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from integrations.outbound import (
    USER_AGENT,
    ErrorCode,
    ErrorKind,
    OutboundRequest,
    SSRFError,
    allowed_networks,
    check_url,
    mask_headers,
    mask_secrets,
    mask_url,
    send,
)
from tests.unit.integrations.conftest import LOOPBACK, keep_alive, trickle

PUBLIC_IP = "93.184.216.34"


@pytest.fixture
def server(httpserver_ipv4: HTTPServer) -> HTTPServer:
    return httpserver_ipv4


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


# --- plain exchanges ----------------------------------------------------------------


def test_get_returns_status_headers_body_and_sends_our_user_agent(server, loopback):
    server.expect_request("/offers", method="GET", query_string="id=7").respond_with_data(
        "pong", status=201, headers={"X-Buyer": "b1"}
    )

    result = send(OutboundRequest("GET", server.url_for("/offers?id=7")))

    assert result.ok
    assert (result.status_code, result.body, result.truncated) == (201, b"pong", False)
    assert ("X-Buyer", "b1") in result.headers
    assert result.final_url == server.url_for("/offers?id=7")
    assert server.log[0][0].headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("Leadrelay/")


def test_post_sends_the_exact_body_and_headers(server, loopback):
    server.expect_request(
        "/leads",
        method="POST",
        data=b'{"email": "a@b.example"}',
        headers={"Content-Type": "application/json", "X-Api-Key": "k-1"},
    ).respond_with_data("accepted")

    result = send(
        OutboundRequest(
            "post",
            server.url_for("/leads"),
            headers=[("Content-Type", "application/json"), ("X-Api-Key", "k-1")],
            body=b'{"email": "a@b.example"}',
        )
    )

    assert (result.status_code, result.body) == (200, b"accepted")


def test_server_error_is_a_response_for_the_caller_to_judge(server, loopback):
    server.expect_request("/busy").respond_with_data("try later", status=503)

    result = send(OutboundRequest("GET", server.url_for("/busy")))

    assert result.ok and result.status_code == 503 and result.error_kind is None


@pytest.mark.parametrize("host", ["buyer.example", "buyer.example."])
def test_hostname_stays_in_host_header_while_connecting_to_the_checked_ip(
    server, loopback, dns, connections, host
):
    # With its trailing dot too: libcurl is told the name resolves to a placeholder, and
    # it must still be our resolver and our checked connect that are used, never its own.
    dns.add(host, ["127.0.0.1"])
    server.expect_request("/ping").respond_with_data("ok")

    result = send(OutboundRequest("GET", f"http://{host}:{server.port}/ping"))

    assert result.status_code == 200
    assert server.log[0][0].headers["Host"] == f"{host}:{server.port}"
    assert dns.calls == [host]
    assert connections.addresses == ["127.0.0.1"]


# --- deadlines and network errors ---------------------------------------------------


def test_total_deadline_stops_a_server_that_trickles_the_body(raw_server, loopback):
    def slow_body(srv, conn):
        srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        trickle(srv, conn, b"x" * 100, interval=0.2)

    slow = raw_server(slow_body)
    started = time.monotonic()

    result = send(OutboundRequest("GET", slow.url(), timeout=1.0))

    assert time.monotonic() - started < 1.8
    assert (result.error_kind, result.error_code) == (ErrorKind.TRANSIENT, ErrorCode.TIMEOUT)
    assert result.status_code == 200
    assert 0 < len(result.body) < 100


def test_total_deadline_covers_response_headers_trickled_byte_by_byte(raw_server, loopback):
    def slow_headers(srv, conn):
        trickle(srv, conn, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200, interval=0.1)

    slow = raw_server(slow_headers)
    started = time.monotonic()

    result = send(OutboundRequest("GET", slow.url(), timeout=0.8))

    assert time.monotonic() - started < 1.6
    assert (result.error_kind, result.error_code) == (ErrorKind.TRANSIENT, ErrorCode.TIMEOUT)
    assert result.status_code is None


def test_connection_refused_is_a_transient_connection_error(loopback):
    result = send(OutboundRequest("GET", f"http://127.0.0.1:{free_port()}/"))

    assert (result.error_kind, result.error_code) == (ErrorKind.TRANSIENT, ErrorCode.CONNECTION)
    assert "refused" in result.error_message.lower()


@pytest.mark.parametrize(
    ("error_number", "kind"),
    [(socket.EAI_AGAIN, ErrorKind.TRANSIENT), (socket.EAI_NONAME, ErrorKind.PERMANENT)],
)
def test_dns_temporary_failure_is_transient_and_unknown_name_permanent(dns, error_number, kind):
    dns.fail("buyer.example", error_number)

    result = send(OutboundRequest("GET", "http://buyer.example/"))

    assert (result.error_kind, result.error_code) == (kind, ErrorCode.DNS)


def test_tls_verification_failure_is_permanent_and_sni_names_the_host(
    raw_server, tls_context, dns, loopback, connections
):
    sni_names = []
    tls_context.sni_callback = lambda sslsock, name, context: sni_names.append(name)
    dns.add("buyer.example", ["127.0.0.1"])
    tls = raw_server(lambda srv, conn: None, tls=tls_context)

    result = send(OutboundRequest("GET", tls.url(scheme="https", host="buyer.example")))

    assert (result.error_kind, result.error_code) == (ErrorKind.PERMANENT, ErrorCode.TLS)
    assert sni_names == ["buyer.example"]
    assert connections.addresses == ["127.0.0.1"]


# --- body cap -----------------------------------------------------------------------


def test_endless_body_is_cut_at_the_cap_and_flagged(raw_server, loopback):
    def endless(srv, conn):
        srv.send(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while srv.bytes_sent < 500 * 1024 * 1024:
            srv.send(conn, b"z" * 65536)

    huge = raw_server(endless)
    started = time.monotonic()

    result = send(OutboundRequest("GET", huge.url(), timeout=10))

    assert time.monotonic() - started < 5
    assert result.ok and result.truncated
    assert len(result.body) == 1024 * 1024


@pytest.mark.parametrize(("cap", "truncated"), [(1000, False), (999, True)])
def test_body_at_the_cap_is_whole_and_one_byte_more_is_truncated(server, loopback, cap, truncated):
    server.expect_request("/doc").respond_with_data(b"y" * 1000)

    result = send(OutboundRequest("GET", server.url_for("/doc"), max_response_bytes=cap))

    assert (len(result.body), result.truncated) == (cap, truncated)


# --- redirects ----------------------------------------------------------------------


def redirect(location: str, status: int = 302) -> Response:
    return Response("", status=status, headers={"Location": location})


def test_redirect_is_not_followed_by_default(server, loopback):
    server.expect_request("/a").respond_with_response(redirect("/b"))
    server.expect_request("/b").respond_with_data("b")

    result = send(OutboundRequest("GET", server.url_for("/a")))

    assert result.ok and result.status_code == 302
    assert ("Location", "/b") in result.headers
    assert [request.path for request, _ in server.log] == ["/a"]


def test_303_after_post_is_followed_as_get_without_the_body(server, loopback):
    server.expect_request("/a", method="POST").respond_with_response(redirect("/b", 303))
    server.expect_request("/b", method="GET").respond_with_data("done")

    result = send(
        OutboundRequest(
            "POST",
            server.url_for("/a"),
            headers=[("Content-Type", "text/plain")],
            body=b"lead",
            allow_redirects=True,
        )
    )

    assert (result.status_code, result.body) == (200, b"done")
    assert result.final_url == server.url_for("/b")
    second = server.log[1][0]
    assert (second.method, second.get_data(), second.content_type) == ("GET", b"", None)


def test_307_keeps_the_method_and_body(server, loopback):
    server.expect_request("/a", method="PUT").respond_with_response(redirect("/b", 307))
    server.expect_request("/b", method="PUT", data=b"lead").respond_with_data("stored")

    result = send(OutboundRequest("PUT", server.url_for("/a"), body=b"lead", allow_redirects=True))

    assert (result.status_code, result.body) == (200, b"stored")


def test_too_many_redirects_is_permanent(server, loopback):
    server.expect_request("/loop").respond_with_response(redirect("/loop"))

    result = send(
        OutboundRequest("GET", server.url_for("/loop"), allow_redirects=True, max_redirects=3)
    )

    assert (result.error_kind, result.error_code) == (
        ErrorKind.PERMANENT,
        ErrorCode.TOO_MANY_REDIRECTS,
    )
    assert len(server.log) == 4


def test_redirect_to_another_origin_drops_credentials(server, loopback, dns):
    dns.add("other.example", ["127.0.0.1"])
    server.expect_request("/a").respond_with_response(
        redirect(f"http://other.example:{server.port}/b")
    )
    server.expect_request("/b").respond_with_data("b")

    send(
        OutboundRequest(
            "GET",
            server.url_for("/a"),
            headers=[("Authorization", "Bearer t"), ("X-Api-Key", "k"), ("X-Trace", "1")],
            allow_redirects=True,
        )
    )

    first, second = (request.headers for request, _ in server.log)
    assert first["Authorization"] == "Bearer t" and first["X-Api-Key"] == "k"
    assert "Authorization" not in second and "X-Api-Key" not in second
    assert second["X-Trace"] == "1"


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.0.0.5/",
        "http://[::1]:{port}/",
        "http://127.0.0.2:{port}/",
        "http://internal.example:{port}/",
        "file:///etc/passwd",
    ],
)
def test_redirect_to_a_forbidden_address_is_refused_when_following(
    server, allow, dns, connections, target
):
    allow("127.0.0.1/32")  # the test server only: other loopback addresses stay refused
    dns.add("internal.example", ["192.168.1.10"])
    target = target.format(port=server.port)
    server.expect_request("/a").respond_with_response(redirect(target))

    result = send(OutboundRequest("GET", server.url_for("/a"), allow_redirects=True))

    assert result.error_kind == ErrorKind.PERMANENT
    assert result.error_code == ErrorCode.SSRF
    assert result.final_url == target
    assert set(connections.addresses) == {"127.0.0.1"}
    assert len(server.log) == 1


# --- SSRF guard ---------------------------------------------------------------------

HOSTILE_URLS = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://2130706433/",
    "http://017700000001/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://127.0.0.1./",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://[fc00::1]/",
    "http://[ff02::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://buyer.example@127.0.0.1/",
    "http://127.0.0.1\\@buyer.example/",
    "https://private.example/",
    "http://metadata.example/",
    "http://mixed.example/",
    "http://v6private.example/",
    "http://mapped.example/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "ftp://buyer.example/",
    "javascript:alert(1)",
    "http:///no-host",
    "//buyer.example/no-scheme",
]


@pytest.fixture
def hostile_dns(dns):
    dns.add("private.example", ["10.1.2.3"])
    dns.add("metadata.example", ["169.254.169.254"])
    dns.add("mixed.example", [PUBLIC_IP, "10.0.0.1"])  # every address counts, not the first
    dns.add("v6private.example", ["fd12::1"])
    dns.add("mapped.example", ["::ffff:192.168.0.1"])
    dns.add("buyer.example", [PUBLIC_IP])
    return dns


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_url_is_refused_at_save_time_and_never_connected(hostile_dns, connections, url):
    with pytest.raises(SSRFError):
        check_url(url)

    result = send(OutboundRequest("GET", url))

    assert result.error_kind == ErrorKind.PERMANENT
    assert result.error_code in (ErrorCode.SSRF, ErrorCode.INVALID_URL)
    assert connections.connections == []


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_IP}/",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/",
        f"http://[::ffff:{PUBLIC_IP}]/",
        "http://[64:ff9b::5db8:d822]/",  # NAT64 of a public address (DNS64 hosts)
        "http://public.example:8080/",
    ],
)
def test_public_address_passes_the_guard(dns, url):
    dns.add("public.example", [PUBLIC_IP, "2606:2800:220:1:248:1893:25c8:1946"])

    check_url(url)


def test_dns_rebinding_after_the_save_time_check_is_refused_at_connect(dns, connections):
    dns.add("rebind.example", [PUBLIC_IP], ["127.0.0.1"])
    check_url("http://rebind.example/")

    result = send(OutboundRequest("GET", "http://rebind.example/"))

    assert (result.error_kind, result.error_code) == (ErrorKind.PERMANENT, ErrorCode.SSRF)
    assert "127.0.0.1" in result.error_message
    assert connections.connections == []


def test_connect_goes_to_the_checked_address_without_resolving_again(dns, connections):
    dns.add("rebind.example", [PUBLIC_IP], ["127.0.0.1"])

    send(OutboundRequest("GET", "http://rebind.example/"))

    assert connections.addresses == [PUBLIC_IP]  # the recorder refuses it: tests stay local
    assert dns.calls.count("rebind.example") == 1


def test_a_pooled_connection_is_checked_again_before_reuse(raw_server, dns, connections):
    dns.add("buyer.example", ["127.0.0.1"])
    srv = raw_server(keep_alive)
    connections.allowed_networks = [ipaddress.ip_network("127.0.0.0/8")]
    with allowed_networks(["127.0.0.0/8"]):
        first = send(OutboundRequest("GET", srv.url(host="buyer.example")))
    second = send(OutboundRequest("GET", srv.url(host="buyer.example")))

    assert first.status_code == 200
    assert (second.error_kind, second.error_code) == (ErrorKind.PERMANENT, ErrorCode.SSRF)
    assert len(srv.requests) == 1
    assert len(connections.connections) == 1  # the second send did reuse the pooled socket


def test_loopback_is_refused_unless_allowlisted(server, allow):
    server.expect_request("/").respond_with_data("local")

    refused = send(OutboundRequest("GET", server.url_for("/")))
    allow(*LOOPBACK)
    allowed = send(OutboundRequest("GET", server.url_for("/")))

    assert (refused.error_kind, refused.error_code) == (ErrorKind.PERMANENT, ErrorCode.SSRF)
    assert (allowed.status_code, allowed.body) == (200, b"local")
    assert len(server.log) == 1


def test_an_address_allowed_once_is_judged_again_when_the_allowlist_changes(server, connections):
    """The check of an address is remembered with the allowlist it was made under."""
    connections.allowed_networks = [ipaddress.ip_network(c) for c in LOOPBACK]  # phase one
    server.expect_request("/").respond_with_data("local")

    with allowed_networks(LOOPBACK):
        allowed = send(OutboundRequest("GET", server.url_for("/")))
    refused = send(OutboundRequest("GET", server.url_for("/")))

    assert allowed.status_code == 200
    assert (refused.error_kind, refused.error_code) == (ErrorKind.PERMANENT, ErrorCode.SSRF)
    assert len(server.log) == 1


def test_allowlist_is_read_from_settings(server, settings_stub, connections):
    settings_stub.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    connections.allowed_networks = [ipaddress.ip_network("127.0.0.0/8")]
    server.expect_request("/").respond_with_data("local")

    result = send(OutboundRequest("GET", server.url_for("/")))

    assert result.status_code == 200


def test_proxy_variables_in_the_environment_are_ignored(server, loopback, monkeypatch):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.expect_request("/direct").respond_with_data("direct")

    result = send(OutboundRequest("GET", server.url_for("/direct")))

    assert (result.status_code, result.body) == (200, b"direct")


def test_cookies_set_by_one_response_are_never_sent_later(server, loopback):
    server.expect_request("/set").respond_with_data("", headers={"Set-Cookie": "sid=buyer-a"})
    server.expect_request("/next").respond_with_data("")

    send(OutboundRequest("GET", server.url_for("/set")))
    send(OutboundRequest("GET", server.url_for("/next")))

    assert "Cookie" not in server.log[1][0].headers


def test_header_value_with_crlf_is_refused_before_connecting(server, loopback, connections):
    result = send(
        OutboundRequest("GET", server.url_for("/"), headers=[("X-Note", "a\r\nX-Injected: 1")])
    )

    assert (result.error_kind, result.error_code) == (
        ErrorKind.PERMANENT,
        ErrorCode.INVALID_REQUEST,
    )
    assert connections.connections == []


# --- masking ------------------------------------------------------------------------


def test_secrets_are_sent_for_real_but_masked_in_views_and_log(server, loopback):
    secret, token, api_key = "s3cr3t/+=", "tok-999", "key-123"

    def echo(request: Request) -> Response:
        return Response(
            json.dumps(
                {"body": request.get_data(as_text=True), "auth": request.headers["X-Api-Key"]}
            ),
            headers={"Set-Cookie": "sid=cookie-value"},
        )

    server.expect_request("/postback").respond_with_handler(echo)
    url = server.url_for(f"/postback?p={quote(secret, safe='')}&api_key={api_key}&click=c1")
    request = OutboundRequest(
        "POST",
        url,
        headers=[("Authorization", f"Bearer {token}"), ("X-Api-Key", api_key)],
        body=json.dumps({"password": secret}).encode(),
        secrets=[secret],
    )

    with structlog.testing.capture_logs() as logs:
        result = send(request)

    received = server.log[0][0]
    assert received.headers["Authorization"] == f"Bearer {token}"
    assert received.args["p"] == secret
    views = json.dumps([result.masked_request(), result.masked_response(), logs], default=str)
    for value in (secret, quote(secret, safe=""), token, api_key, "cookie-value"):
        assert value not in views
        assert value not in repr(request) + repr(result)
    assert "click=c1" in views and "Bearer ***" in views
    assert logs[0]["status"] == 200 and logs[0]["error_kind"] is None


def test_mask_helpers_cover_plain_encoded_and_credential_forms():
    assert mask_secrets("k=a b c=a%20b d=a+b", ["a b"]) == "k=*** c=*** d=***"
    assert mask_secrets("nothing to hide", ["", "x1"]) == "nothing to hide"
    assert (
        mask_url("https://u:pw@h.example/p?token=t1&id=2")
        == "https://u:***@h.example/p?token=***&id=2"
    )
    assert mask_headers(
        [("Authorization", "Basic dTpw"), ("Cookie", "sid=1"), ("Accept", "*/*")]
    ) == [("Authorization", "Basic ***"), ("Cookie", "***"), ("Accept", "*/*")]
