"""The transport under `outbound.send`: one libcurl handle per thread and process, whose
connections are kept alive, checked and forgotten when they close; libcurl keeps the total
deadline, with no thread of ours (see test_outbound.py for the phases it covers)."""

import os
import threading
import time

import pytest
from pytest_httpserver import HTTPServer

from integrations import outbound
from integrations.outbound import ErrorCode, ErrorKind, OutboundRequest, send
from tests.unit.integrations.conftest import keep_alive, next_request, trickle


@pytest.fixture
def server(httpserver_ipv4: HTTPServer) -> HTTPServer:
    httpserver_ipv4.expect_request("/ping").respond_with_data("pong")
    return httpserver_ipv4


def test_200_sequential_sends_start_no_thread_and_reuse_one_connection(
    raw_server, loopback, monkeypatch
):
    srv = raw_server(keep_alive)
    assert send(OutboundRequest("GET", srv.url("/ping"))).ok
    opened = outbound.connections_opened()
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    before = set(threading.enumerate())
    counts = []
    for _ in range(200):
        assert send(OutboundRequest("GET", srv.url("/ping"), timeout=5)).ok
        counts.append(threading.active_count())

    assert started == []
    assert outbound.connections_opened() == opened  # one kept-alive connection for all
    assert set(threading.enumerate()) - before == set()
    # Flat: never above the start (threads of earlier tests may still be ending).
    assert max(counts) <= len(before)


def test_a_slow_exchange_is_cut_while_fast_ones_come_and_go(raw_server, server, loopback):
    def slow_body(srv, conn):
        srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        trickle(srv, conn, b"x" * 100, interval=0.1)

    slow = raw_server(slow_body)
    results = {}

    def slow_send() -> None:
        results["slow"] = send(OutboundRequest("GET", slow.url(), timeout=1.0))

    worker = threading.Thread(target=slow_send)
    started = time.monotonic()
    worker.start()
    fast = [send(OutboundRequest("GET", server.url_for("/ping"), timeout=30)) for _ in range(20)]
    worker.join(5)

    assert all(r.ok for r in fast)
    assert results["slow"].error_code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.9


def test_a_short_deadline_ends_on_time_beside_a_longer_one(raw_server, loopback):
    def silent(srv, conn):
        time.sleep(3)

    slow = raw_server(silent)
    held = threading.Thread(
        target=send, args=(OutboundRequest("GET", slow.url(), timeout=2.5),), daemon=True
    )
    held.start()
    time.sleep(0.2)
    started = time.monotonic()
    result = send(OutboundRequest("GET", slow.url(), timeout=0.5))
    assert result.error_code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.2


def test_a_forked_child_gets_its_own_handle_and_keeps_the_parents(server, loopback, monkeypatch):
    assert send(OutboundRequest("GET", server.url_for("/ping"))).ok
    parent = outbound._transport()
    monkeypatch.setattr(os, "getpid", lambda: parent.pid + 1)
    child = outbound._transport()
    assert child is not parent
    assert child.pid == parent.pid + 1
    assert parent in outbound._inherited  # never closed in the child: the sockets are shared
    assert send(OutboundRequest("GET", server.url_for("/ping"))).ok
    assert child.connections_opened == 1


def test_each_thread_has_its_own_handle(server, loopback):
    handles = []

    def use() -> None:
        assert send(OutboundRequest("GET", server.url_for("/ping"))).ok
        handles.append(outbound._transport())

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    use()

    assert len({id(handle) for handle in handles}) == 4


def test_closed_connections_are_forgotten_and_a_cut_one_is_not_reused(raw_server, loopback):
    def close_after(srv, conn):
        srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def endless(srv, conn):
        srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        srv.send(conn, b"z" * 100_000)

    closing = raw_server(close_after)
    for _ in range(30):
        assert send(OutboundRequest("GET", closing.url())).ok
    transport = outbound._transport()
    assert len(transport.peers) <= 1 and len(transport.locals) <= 1

    big = raw_server(endless)
    opened = transport.connections_opened
    cut = send(OutboundRequest("GET", big.url(), max_response_bytes=10))
    again = send(OutboundRequest("GET", big.url(), max_response_bytes=200_000))

    assert cut.ok and cut.truncated and cut.body == b"z" * 10
    assert again.ok and not again.truncated and again.body == b"z" * 100_000
    assert transport.connections_opened == opened + 2


def _answers_once_then_hangs_up(srv, conn):
    """Answers the first request of a connection; reads the next and closes without a
    word (a buyer that took the request, then died)."""
    srv.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    next_request(srv, conn)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_request_is_not_sent_again_when_a_kept_alive_connection_closes_unanswered(
    raw_server, loopback, method
):
    # libcurl's own behaviour would send it again on a new connection: the buyer would
    # see the post twice, and the second call would be in no log.
    srv = raw_server(_answers_once_then_hangs_up)
    body = b"{}" if method == "POST" else None
    assert send(OutboundRequest(method, srv.url("/post"), body=body)).ok
    opened = outbound.connections_opened()

    result = send(OutboundRequest(method, srv.url("/post"), body=body))

    assert len(srv.requests) == 2  # the first, and the one that met the closed connection
    assert outbound.connections_opened() == opened
    assert not result.ok
    assert result.error_kind == ErrorKind.TRANSIENT
    assert result.error_code == ErrorCode.CONNECTION
    assert "closed before any answer" in result.error_message
    assert "not sent again" in result.error_message
    # The handle is fine afterwards: the next request goes out on a new connection.
    assert send(OutboundRequest(method, srv.url("/post"), body=body)).ok
    assert len(srv.requests) == 3
