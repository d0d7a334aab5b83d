"""Local fake lead buyers for tests, the demo and `make bench-pingtree`.

One asyncio HTTP/1.1 server with keep-alive on 127.0.0.1 plays many buyers at once, by
path: ``/b/<name>/ping`` and ``/b/<name>/post`` (any other last segment is answered as
a post). Each buyer is configured with:

- ``format``: how it answers: ``json`` (``{"status":"accepted","bid":12.5}``), ``xml``
  (``<response><status>…</status><price>…</price><id>…</id><redirect>…</redirect>
  <reason>…</reason></response>``) or ``form`` (``status=accepted&bid=12.5&…``). The
  JSON and XML shapes are exactly what the integration library's generic JSON and XML
  buyers read; a form answer is read by the generic JSON buyer's rules too (a JSON path
  on a form-encoded body is the parameter name).
- ``ping`` and ``post``: what it says to each: ``accept`` (with ``bid``: the ping's bid
  or the post's price), ``reject`` (with ``reason``), ``duplicate``, ``error`` (HTTP 500)
  or ``timeout`` (never answers; the client's deadline must end it), plus ``delay_ms``
  (a slow buyer).
- ``latency_ms``: added to every answer of this buyer (the bench's fixed 50 ms).

Every request is counted per buyer and kind, and the last bodies are kept, so a test can
check what was sent. Unknown buyers answer 404. The server never reads the request body
beyond keeping it; it does not care whether it is JSON, XML or a form.

Control, over the same port: ``PUT /_buyers/<name>`` (JSON config, partial fields kept
at their defaults), ``GET /_stats``, ``POST /_reset`` (counts and bodies; the buyers
stay). From Python, :class:`FakeBuyers` starts the server in a thread of this process
(pytest) or as a subprocess (the bench, so the server does not compete with the
measured process for the GIL) and wraps the control calls.

Command line: ``python bench/fake_buyers.py [--port 0] [--demo]`` prints ``READY
<port>`` once listening and runs until killed; ``--demo`` loads the buyers the demo
data (``manage.py demo_load``) points at.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from urllib.request import Request, urlopen  # noqa: TID251 - control calls to our own server
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
KEEP_BODIES = 20
ACTIONS = ("accept", "reject", "duplicate", "error", "timeout")
FORMATS = ("json", "xml", "form")
STATUS_WORD = {"accept": "accepted", "reject": "rejected", "duplicate": "duplicate"}
DEMO_PORT = 8765


@dataclass
class Answer:
    """What a buyer says to one kind of request (ping or post)."""

    action: str = "accept"
    bid: float | None = None
    reason: str = ""
    delay_ms: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Answer:
        answer = cls(**(data or {}))
        if answer.action not in ACTIONS:
            raise ValueError(f"action {answer.action!r} is not one of {ACTIONS}")
        return answer


@dataclass
class Buyer:
    """One fake buyer: its answer format, its answers, and its fixed latency."""

    format: str = "json"
    ping: Answer = field(default_factory=Answer)
    post: Answer = field(default_factory=Answer)
    latency_ms: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Buyer:
        data = dict(data)
        ping = Answer.from_dict(data.pop("ping", None))
        post = Answer.from_dict(data.pop("post", None))
        buyer = cls(ping=ping, post=post, **data)
        if buyer.format not in FORMATS:
            raise ValueError(f"format {buyer.format!r} is not one of {FORMATS}")
        return buyer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_body(name: str, kind: str, buyer: Buyer, answer: Answer, n: int) -> tuple[str, bytes]:
    """(content type, body) of an answer in the buyer's format."""
    values: dict[str, str] = {"status": STATUS_WORD[answer.action]}
    if answer.action == "accept":
        if answer.bid is not None:
            values["bid" if kind == "ping" else "price"] = f"{answer.bid:.2f}"
        if kind != "ping":
            values["lead_id"] = f"{name}-{n}"
            values["redirect_url"] = f"https://{name}.buyer.test/thanks/{n}"
    elif answer.reason:
        values["reason"] = answer.reason
    if buyer.format == "json":
        doc: dict[str, Any] = dict(values)
        for key in ("bid", "price"):
            if key in doc:
                doc[key] = float(doc[key])
        return "application/json", json.dumps(doc).encode()
    if buyer.format == "xml":
        xml_names = {"bid": "price", "lead_id": "id", "redirect_url": "redirect"}
        inner = "".join(
            f"<{xml_names.get(k, k)}>{escape(v)}</{xml_names.get(k, k)}>" for k, v in values.items()
        )
        return "application/xml", f"<response>{inner}</response>".encode()
    return "application/x-www-form-urlencoded", urlencode(values).encode()


def http_response(status: int, content_type: str, body: bytes, *, close: bool = False) -> bytes:
    reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}.get(
        status, "Internal Server Error" if status >= 500 else "OK"
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode() + body


class State:
    """The buyers and their counters (one per server; touched only by its loop thread,
    or under the lock by the in-process helpers)."""

    def __init__(self) -> None:
        self.buyers: dict[str, Buyer] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.bodies: dict[str, deque] = {}
        self.serial = itertools.count(1)
        self.lock = threading.Lock()

    def configure(self, name: str, buyer: Buyer) -> None:
        with self.lock:
            self.buyers[name] = buyer

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.bodies.clear()

    def record(self, name: str, kind: str, body: bytes) -> None:
        with self.lock:
            per = self.counts.setdefault(name, {})
            per[kind] = per.get(kind, 0) + 1
            self.bodies.setdefault(name, deque(maxlen=KEEP_BODIES)).append(
                {"kind": kind, "body": body.decode("utf-8", "replace")}
            )

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "counts": {k: dict(v) for k, v in self.counts.items()},
                "bodies": {k: list(v) for k, v in self.bodies.items()},
                "buyers": {k: v.to_dict() for k, v in self.buyers.items()},
            }


class BuyerProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; requests on one connection are answered in order."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.head: tuple[str, str, dict[str, str]] | None = None
        self.need = 0
        self.queue: deque[asyncio.Future] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in self.queue:
            future.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self.transport.close()
                    return
                lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
                del self.buffer[: end + 4]
                method, path, *_ = (lines[0].split(" ") + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self.transport.write(http_response(411, "text/plain", b"", close=True))
                    self.transport.close()
                    return
                self.need = int(headers.get("content-length") or 0)
                if self.need > MAX_BODY:
                    self.transport.close()
                    return
                self.head = (method, path, headers)
            if len(self.buffer) < self.need:
                return
            body = bytes(self.buffer[: self.need])
            del self.buffer[: self.need]
            method, path, _ = self.head
            self.head = None
            self.need = 0
            self.handle(method, path, body)

    def handle(self, method: str, path: str, body: bytes) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self.queue.append(future)
        delay, payload = self.answer(method, path.split("?", 1)[0], body)
        if payload is not None:
            if delay > 0:
                loop.call_later(delay, _set, future, payload)
            else:
                future.set_result(payload)
        future.add_done_callback(lambda _f: self.flush())

    def flush(self) -> None:
        while self.queue and self.queue[0].done():
            future = self.queue.popleft()
            if not future.cancelled() and not self.closed:
                self.transport.write(future.result())

    def answer(self, method: str, path: str, body: bytes) -> tuple[float, bytes | None]:
        """(seconds to wait, response bytes); None bytes: never answer (timeout)."""
        state = self.state
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["_stats"]:
            return 0, http_response(200, "application/json", json.dumps(state.stats()).encode())
        if parts[:1] == ["_reset"] and method == "POST":
            state.reset()
            return 0, http_response(204, "text/plain", b"")
        if parts[:1] == ["_buyers"] and len(parts) == 2 and method == "PUT":
            try:
                state.configure(parts[1], Buyer.from_dict(json.loads(body or b"{}")))
            except (ValueError, TypeError) as error:
                return 0, http_response(400, "text/plain", str(error).encode())
            return 0, http_response(204, "text/plain", b"")
        if len(parts) != 3 or parts[0] != "b" or parts[1] not in state.buyers:
            return 0, http_response(404, "text/plain", b"no such buyer")
        name, kind = parts[1], "ping" if parts[2] == "ping" else "post"
        buyer = state.buyers[name]
        answer = buyer.ping if kind == "ping" else buyer.post
        state.record(name, kind, body)
        delay = (buyer.latency_ms + answer.delay_ms) / 1000
        if answer.action == "timeout":
            return delay, None
        if answer.action == "error":
            return delay, http_response(500, "text/plain", b"internal error")
        content_type, payload = answer_body(name, kind, buyer, answer, next(state.serial))
        return delay, http_response(200, content_type, payload)


def _set(future: asyncio.Future, payload: bytes) -> None:
    if not future.done():
        future.set_result(payload)


async def _serve(state: State, port: int, ready: Any) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BuyerProtocol(state), "127.0.0.1", port, backlog=512, reuse_address=True
    )
    ready(server)
    async with server:
        await server.serve_forever()


# --- the Python helper -------------------------------------------------------------------------


class FakeBuyers:
    """A running fake buyer server: in this process (a thread) or a subprocess.

    >>> buyers = FakeBuyers.start()            # or FakeBuyers.start(subprocess=True)
    >>> buyers.configure("acme", ping={"action": "accept", "bid": 12.5})
    >>> buyers.url("acme", "ping")            # 'http://127.0.0.1:<port>/b/acme/ping'
    >>> buyers.count("acme", "ping")
    >>> buyers.stop()
    """

    def __init__(self, port: int, *, proc: subprocess.Popen | None = None) -> None:
        self.port = port
        self.proc = proc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str, kind: str = "post") -> str:
        return f"{self.base_url}/b/{name}/{kind}"

    @classmethod
    def start(cls, *, port: int = 0, subprocess: bool = False, demo: bool = False) -> FakeBuyers:
        if subprocess:
            return cls._start_subprocess(port, demo)
        state = State()
        started = threading.Event()
        holder: dict[str, Any] = {}

        def ready(server: asyncio.AbstractServer) -> None:
            holder["server"] = server
            holder["loop"] = asyncio.get_running_loop()
            started.set()

        def run() -> None:
            try:
                asyncio.run(_serve(state, port, ready))
            except asyncio.CancelledError:
                pass
            except OSError as error:
                holder["error"] = error
                started.set()

        thread = threading.Thread(target=run, name="fake-buyers", daemon=True)
        thread.start()
        if not started.wait(10) or "error" in holder:
            raise RuntimeError(f"fake buyers did not start: {holder.get('error')}")
        server = holder["server"]
        buyers = cls(server.sockets[0].getsockname()[1])
        buyers._loop, buyers._server, buyers._thread = holder["loop"], server, thread
        if demo:
            buyers.load_demo()
        return buyers

    @classmethod
    def _start_subprocess(cls, port: int, demo: bool) -> FakeBuyers:
        argv = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
        proc = subprocess.Popen(
            [*argv, *(["--demo"] if demo else [])],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY "):
            proc.kill()
            raise RuntimeError(f"fake buyers did not start: {line!r}")
        return cls(int(line.split()[1]), proc=proc)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
            return
        if self._loop is not None and self._server is not None:
            loop, server = self._loop, self._server

            def close() -> None:
                server.close()
                for task in asyncio.all_tasks(loop):
                    task.cancel()

            loop.call_soon_threadsafe(close)
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self) -> FakeBuyers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Control calls go over HTTP in both modes: one code path, and the server's own
    # thread is the only one touching its state from the asyncio side.
    def _call(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = Request(self.base_url + path, data=data, method=method)
        with urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.read()

    def configure(
        self,
        name: str,
        *,
        format: str = "json",  # noqa: A002 - the buyer's answer format
        ping: dict[str, Any] | None = None,
        post: dict[str, Any] | None = None,
        latency_ms: int = 0,
    ) -> str:
        """Create or replace a buyer; returns its base URL (``…/b/<name>``)."""
        config = {
            "format": format,
            "ping": ping or {},
            "post": post or {},
            "latency_ms": latency_ms,
        }
        Buyer.from_dict(config)  # fail here, not as an HTTP 400
        self._call("PUT", f"/_buyers/{name}", config)
        return f"{self.base_url}/b/{name}"

    def stats(self) -> dict[str, Any]:
        return json.loads(self._call("GET", "/_stats"))

    def count(self, name: str, kind: str | None = None) -> int:
        per = self.stats()["counts"].get(name, {})
        return sum(per.values()) if kind is None else per.get(kind, 0)

    def bodies(self, name: str) -> list[dict[str, str]]:
        return self.stats()["bodies"].get(name, [])

    def reset(self) -> None:
        self._call("POST", "/_reset", {})

    def load_demo(self) -> None:
        for name, config in DEMO_BUYERS.items():
            self.configure(name, **config)


# The buyers `manage.py demo_load` points its offers at (port DEMO_PORT).
DEMO_BUYERS: dict[str, dict[str, Any]] = {
    "northwind": {
        "ping": {"action": "accept", "bid": 18.0},
        "post": {"action": "accept"},
        "latency_ms": 40,
    },
    "contoso": {
        "ping": {"action": "accept", "bid": 22.5},
        "post": {"action": "reject", "reason": "Duplicate in our system"},
        "latency_ms": 60,
    },
    "fabrikam": {
        "ping": {"action": "reject", "reason": "State not covered"},
        "latency_ms": 30,
    },
    "litware": {
        "format": "form",
        "ping": {"action": "accept", "bid": 9.0},
        "post": {"action": "accept"},
        "latency_ms": 80,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--demo", action="store_true", help="load the demo buyers")
    args = parser.parse_args()
    state = State()
    if args.demo:
        for name, config in DEMO_BUYERS.items():
            state.configure(name, Buyer.from_dict(config))

    def ready(server: asyncio.AbstractServer) -> None:
        sys.stdout.write(f"READY {server.sockets[0].getsockname()[1]}\n")
        sys.stdout.flush()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(_serve(state, args.port, ready))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
