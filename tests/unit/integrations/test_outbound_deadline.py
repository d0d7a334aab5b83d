"""The total deadline of `outbound.send` is kept by one shared thread per process, not a
thread per call, and still cuts slow exchanges (see test_outbound.py for the phases)."""

import os
import threading
import time

import pytest
from pytest_httpserver import HTTPServer

from integrations import outbound
from integrations.outbound import ErrorCode, OutboundRequest, send
from tests.unit.integrations.conftest import trickle


@pytest.fixture
def server(httpserver_ipv4: HTTPServer) -> HTTPServer:
    httpserver_ipv4.expect_request("/ping").respond_with_data("pong")
    return httpserver_ipv4


def test_200_sequential_sends_start_no_thread(server, loopback, monkeypatch):
    assert send(OutboundRequest("GET", server.url_for("/ping"))).ok  # the watchdog starts
    started: list[threading.Thread] = []
    original_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    before = set(threading.enumerate())
    counts = []
    for _ in range(200):
        assert send(OutboundRequest("GET", server.url_for("/ping"), timeout=5)).ok
        counts.append(threading.active_count())

    assert started == []
    assert set(threading.enumerate()) - before == set()
    # Flat: never above the start (threads of earlier tests may still be ending).
    assert max(counts) <= len(before)


def test_finished_exchanges_do_not_pile_up_in_the_heap(server, loopback):
    for _ in range(50):
        send(OutboundRequest("GET", server.url_for("/ping"), timeout=30))
    assert len(outbound._deadlines()._heap) == 0


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


def test_an_earlier_deadline_wakes_the_thread_sleeping_towards_a_later_one(raw_server, loopback):
    def silent(srv, conn):
        time.sleep(3)

    slow = raw_server(silent)
    held = threading.Thread(
        target=send, args=(OutboundRequest("GET", slow.url(), timeout=2.5),), daemon=True
    )
    held.start()
    time.sleep(0.2)  # the thread now sleeps towards ~2.5 s
    started = time.monotonic()
    result = send(OutboundRequest("GET", slow.url(), timeout=0.5))
    assert result.error_code == ErrorCode.TIMEOUT
    assert time.monotonic() - started < 1.2


def test_a_forked_child_gets_its_own_deadline_thread(server, loopback, monkeypatch):
    parent = outbound._deadlines()
    monkeypatch.setattr(os, "getpid", lambda: parent.pid + 1)
    child = outbound._deadlines()
    assert child is not parent
    assert child.pid == parent.pid + 1
    assert send(OutboundRequest("GET", server.url_for("/ping"))).ok
