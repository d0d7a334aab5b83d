"""What `send()` puts on the wire, seen by a raw local server: the headers requests used
to send, Content-Length, Basic auth from the URL, bodies small and large, and none of the
headers libcurl would add on its own."""

import base64

from integrations.outbound import USER_AGENT, OutboundRequest, send


def answer_ok(srv, conn) -> None:
    """The rest of the request (the server read its head), kept whole; answer 200."""
    head, _, body = srv.requests.pop().partition(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    length = int(lengths[0].split(b":")[1]) if lengths else 0
    while len(body) < length:
        body += conn.recv(65536)
    srv.requests.append(head + b"\r\n\r\n" + body)
    srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def head_lines(raw: bytes) -> list[bytes]:
    return raw.partition(b"\r\n\r\n")[0].split(b"\r\n")


def test_a_post_carries_our_default_headers_and_its_length(raw_server, loopback):
    srv = raw_server(answer_ok)

    result = send(OutboundRequest("POST", srv.url(path="/leads"), body=b'{"a":1}'))

    assert result.status_code == 200
    lines = head_lines(srv.requests[0])
    assert lines[0] == b"POST /leads HTTP/1.1"
    for expected in (
        f"User-Agent: {USER_AGENT}".encode(),
        b"Accept: */*",
        b"Connection: keep-alive",
        b"Content-Length: 7",
    ):
        assert expected in lines
    assert any(line.startswith(b"Accept-Encoding: gzip") for line in lines)
    assert srv.requests[0].endswith(b'{"a":1}')


def test_a_body_less_delete_says_length_zero_and_a_get_says_nothing(raw_server, loopback):
    srv = raw_server(answer_ok)
    send(OutboundRequest("DELETE", srv.url(path="/d")))
    other = raw_server(answer_ok)
    send(OutboundRequest("GET", other.url(path="/g")))

    assert b"Content-Length: 0" in head_lines(srv.requests[0])
    assert not any(
        line.lower().startswith(b"content-length") for line in head_lines(other.requests[0])
    )


def test_credentials_in_the_url_are_sent_as_basic_auth_not_in_the_request_line(
    raw_server, loopback
):
    srv = raw_server(answer_ok)
    url = srv.url(path="/p").replace("http://", "http://us%40er:p%3Ass@")

    send(OutboundRequest("GET", url, headers=[("Authorization", "Bearer replaced")]))

    lines = head_lines(srv.requests[0])
    assert lines[0] == b"GET /p HTTP/1.1"
    assert b"Authorization: Basic " + base64.b64encode(b"us@er:p:ss") in lines
    assert b"Authorization: Bearer replaced" not in lines


def test_a_small_and_a_large_body_arrive_whole(raw_server, loopback):
    """libcurl sends a small body in the same write as the head (its request buffer
    takes bodies under 64 KiB), a large one after it: both must arrive byte for byte."""
    srv = raw_server(answer_ok)
    small = send(OutboundRequest("POST", srv.url(path="/s"), body=b"x" * 1000))
    big_body = bytes(range(256)) * 1024  # 256 KiB
    other = raw_server(answer_ok)
    big = send(OutboundRequest("POST", other.url(path="/b"), body=big_body))

    assert (small.status_code, big.status_code) == (200, 200)
    assert srv.requests[0].partition(b"\r\n\r\n")[2] == b"x" * 1000
    assert other.requests[0].partition(b"\r\n\r\n")[2] == big_body


def test_libcurl_adds_no_content_type_or_expect_of_its_own(raw_server, loopback):
    srv = raw_server(answer_ok)
    send(OutboundRequest("POST", srv.url(path="/p"), body=b"y" * 2_000_000))
    typed = raw_server(answer_ok)
    send(
        OutboundRequest(
            "POST", typed.url(path="/t"), headers=[("Content-Type", "text/xml")], body=b"<a/>"
        )
    )
    empty = raw_server(answer_ok)
    send(OutboundRequest("GET", empty.url(path="/e"), headers=[("X-Empty", "")]))

    plain = [line.lower() for line in head_lines(srv.requests[0])]
    assert not any(line.startswith((b"content-type", b"expect")) for line in plain)
    assert b"Content-Type: text/xml" in head_lines(typed.requests[0])
    assert b"X-Empty:" in head_lines(empty.requests[0])
