"""The one place that sends outbound HTTP: buyers, postbacks, enrichment.

Every request the product makes to an address an operator typed (or a buyer redirected
us to) passes through `send()`, so the rules live here once:

- SSRF guard. The rendered URL is checked (scheme, host spelling, literal addresses)
  and, at connect time, every address the host resolves to; the socket then connects
  to one of those checked addresses, so a DNS answer that changes between the check
  and the connect (rebinding) cannot reach a private network. Private, loopback,
  link-local, CGNAT, multicast, reserved and embedded-private IPv6 forms are refused
  unless `OUTBOUND_ALLOWED_NETWORKS` allows them (the demo and tests allow loopback).
- A total deadline for the whole exchange, not just per socket read, so a server that
  trickles one byte at a time cannot hold a worker.
- A response body cap: we stop reading and flag the result `truncated`.
- No redirects unless asked; followed hops are re-checked, capped, and lose their
  credentials when the origin changes.
- Proxy variables, netrc and CA-bundle variables from the environment are ignored,
  cookies are never kept between requests (they would leak across workspaces).
- Errors come back as data, typed `transient` (retry may help) or `permanent`.
- Secrets are masked in every view meant for logs.

Why our own guarded connection instead of requests-hardened: it checks only the first
address getaddrinfo returns and can allow loopback as a whole but not a list of
networks; we need every address checked and a CIDR allowlist. The mechanism is the same
("check the IP, then connect to that IP"), done one level lower, in the urllib3
connection, so TLS SNI, certificate checks and the Host header keep the hostname
without any header or pool-key rewriting.

Why urllib3 directly and not requests on top: requests' per-call machinery (preparing
the request, merging environment settings, hooks, the cookie jar) cost about 0.3 ms per
call, as much as the exchange itself on a local network, and all of it is either unused
here or something we must switch off (environment, cookies, redirects). What requests
did that we want is done here in a few lines: its default headers, Content-Length,
header validation, Basic auth from credentials in the URL, certifi's CA bundle.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import importlib.metadata
import ipaddress
import itertools
import math
import os
import re
import socket
import ssl
import threading
import time
import tomllib
from base64 import b64encode
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urljoin, urlsplit

import certifi
import structlog
import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from urllib3 import HTTPHeaderDict, HTTPResponse, PoolManager, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util import Url, make_headers, parse_url
from urllib3.util.connection import allowed_gai_family

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_SECONDS = 40.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
_COALESCE_MAX_BYTES = 64 * 1024  # bodies up to this size go out in one send with the head
_MASK = "***"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_METHOD_RE = re.compile(r"[A-Z]+")
# inet_aton() accepts "127.1", "0x7f.1", "0177.0.0.1" and "2130706433" as IPv4 addresses.
_NUMERIC_LABEL_RE = re.compile(r"0x[0-9a-f]*|[0-9]+")
_SENSITIVE_NAME_RE = re.compile(
    r"auth|cookie|token|secret|passw|api[-_]?key|signature|session", re.IGNORECASE
)
_QUERY_PARAM_RE = re.compile(r"(?P<name>[?&;][^=&#\s]*)=(?P<value>[^&#\s'\"]*)")
_USERINFO_RE = re.compile(r"(?P<prefix>//[^/@:\s]*):(?P<password>[^/@\s]*)@")
_EAI_PERMANENT = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges the stdlib still calls global (or only does in newer patch releases) that no
# buyer lives in. 6to4 is deprecated (RFC 7526) and would hide any IPv4 address behind
# a relay, so it is refused whole; NAT64 (64:ff9b::/96) stays usable for IPv6-only
# hosts behind DNS64 and is judged by the IPv4 address it embeds.
_ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "100.64.0.0/10",  # CGNAT: often routes to a provider's internal workloads
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "2002::/16",  # 6to4
        "64:ff9b:1::/48",  # local-use NAT64
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
        "fec0::/10",  # deprecated site-local
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _version() -> str:
    """Our release for the User-Agent, so a buyer's support can tell who called them.

    Deployments run from a source checkout, where the package is not installed, so
    pyproject.toml is the fallback.
    """
    try:
        return importlib.metadata.version("leadrelay")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


USER_AGENT = f"Leadrelay/{_version()}"


class SSRFError(Exception):
    """The URL, or an address its host resolves to, is not one we may call.

    Deliberately not an OSError or ValueError: raised inside urllib3's connect, it must
    not be mistaken for a network failure and retried.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidURLError(SSRFError):
    """The URL cannot be parsed, or has no host: refused like an unsafe one."""


class ErrorKind(StrEnum):
    """Whether trying again later may help; callers retry only `TRANSIENT`."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class ErrorCode(StrEnum):
    """What went wrong, for the read step's outcome (`timeout` vs `error`) and logs."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    DNS = "dns"
    TLS = "tls"
    SSRF = "ssrf"
    INVALID_URL = "invalid_url"
    INVALID_REQUEST = "invalid_request"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    PROTOCOL = "protocol"


@dataclass(frozen=True, slots=True, repr=False)
class OutboundRequest:
    """An exact request, as built by a step; `send()` is the only thing that runs it."""

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    allow_redirects: bool = False
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    secrets: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        """Masked, so that logging the object by accident leaks nothing."""
        return f"<OutboundRequest {self.method} {mask_url(self.url, _secrets_of(self))}>"


@dataclass(frozen=True, slots=True)
class OutboundResult:
    """What came back, or what went wrong: never an exception for network trouble.

    A 5xx is a response, not an error: whether it is worth a retry is the caller's call.
    On an error after the headers arrived, status, headers and the partial body are kept
    for the log.
    """

    request: OutboundRequest = field(repr=False)
    status_code: int | None
    headers: list[tuple[str, str]] = field(repr=False)
    body: bytes = field(repr=False)
    truncated: bool
    elapsed_ms: int
    final_url: str = field(repr=False)
    error_kind: ErrorKind | None = None
    error_code: ErrorCode | None = None
    error_message: str = ""

    @property
    def ok(self) -> bool:
        """True when a response was read completely (or up to the cap) without error."""
        return self.error_kind is None

    def masked_request(self) -> dict[str, Any]:
        """The request as it may be stored in a log row: secrets and credentials masked."""
        secrets = _secrets_of(self.request)
        return {
            "method": self.request.method.upper(),
            "url": mask_url(self.request.url, secrets),
            "headers": mask_headers(self.request.headers, secrets),
            "body": mask_secrets(_text(self.request.body), secrets),
        }

    def masked_response(self) -> dict[str, Any]:
        """The response and outcome as they may be stored in a log row, secrets masked."""
        secrets = _secrets_of(self.request)
        return {
            "status_code": self.status_code,
            "headers": mask_headers(self.headers, secrets),
            "body": mask_secrets(_text(self.body), secrets),
            "truncated": self.truncated,
            "elapsed_ms": self.elapsed_ms,
            "final_url": mask_url(self.final_url, secrets),
            "error_kind": self.error_kind,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }


# --- masking ------------------------------------------------------------------------


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text`, also in its URL-encoded forms, by `***`.

    A secret placed in a query string arrives percent-encoded, so the plain form alone
    would miss it. Longest first, so a secret containing another is masked whole.
    """
    if not text:
        return text
    for variant in _mask_variants(tuple(secrets)):
        if variant in text:
            text = text.replace(variant, _MASK)
    return text


@functools.lru_cache(maxsize=256)
def _mask_variants(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret with its URL-encoded forms, longest first; computed once per set of
    secrets (a call masks ~27 texts with the same ones). Holds only what the step cache
    and the send already hold in memory."""
    variants = {
        form for secret in secrets if secret for form in (secret, quote(secret), quote_plus(secret))
    }
    return tuple(sorted(variants, key=len, reverse=True))


def mask_url(url: str, secrets: Iterable[str] = ()) -> str:
    """A URL for logs: password in userinfo, secret-looking query values and secrets masked."""
    return _mask_url(url, tuple(secrets))


@functools.lru_cache(maxsize=1024)
def _mask_url(url: str, secrets: tuple[str, ...]) -> str:
    """mask_url, remembered: a buyer call masks its URL three times (request, final URL,
    log line) and a worker calls the same few URLs again and again. A pure function's
    memo, not state: it holds the last 1,024 URLs as rendered, so a GET buyer's URL that
    carries a lead's values stays in the worker's memory until newer URLs push it out
    (nothing is read back from it but the masked text of the same URL)."""
    url = _USERINFO_RE.sub(lambda m: f"{m['prefix']}:{_MASK}@", url)
    url = _QUERY_PARAM_RE.sub(
        lambda m: f"{m['name']}={_MASK}" if _SENSITIVE_NAME_RE.search(m["name"]) else m[0], url
    )
    return mask_secrets(url, secrets)


@functools.lru_cache(maxsize=1024)
def is_sensitive_header(name: str) -> bool:
    """Authorization, Cookie, X-Api-Key, X-Auth-Token and the like carry credentials
    (remembered: every call asks it of each header it sent and received)."""
    return bool(_SENSITIVE_NAME_RE.search(name))


def mask_headers(
    headers: Iterable[tuple[str, str]], secrets: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Headers for logs: credential headers masked, keeping an auth scheme for debugging."""
    secrets = list(secrets)
    masked = []
    for name, value in headers:
        if is_sensitive_header(name):
            scheme, _, credentials = value.partition(" ")
            is_scheme = credentials and scheme.isalpha() and name.lower().endswith("authorization")
            value = f"{scheme} {_MASK}" if is_scheme else _MASK
        masked.append((name, mask_secrets(value, secrets)))
    return masked


def _secrets_of(request: OutboundRequest) -> list[str]:
    """Declared secrets plus the values of credential headers, wherever they reappear."""
    secrets = list(request.secrets)
    for name, value in request.headers:
        if is_sensitive_header(name) and value:
            secrets.append(value)
            scheme, _, credentials = value.partition(" ")
            if credentials:
                secrets.append(credentials)
    return secrets


def _text(body: bytes | None) -> str:
    """Bodies are logged as text; undecodable bytes must not break the log row."""
    return body.decode("utf-8", errors="replace") if body else ""


# --- SSRF guard ---------------------------------------------------------------------

_allowlist_override: tuple[IPNetwork, ...] | None = None


@contextlib.contextmanager
def allowed_networks(cidrs: Iterable[str]) -> Iterator[None]:
    """Replace `OUTBOUND_ALLOWED_NETWORKS` for the duration (tests, benchmarks, demo).

    Process-wide rather than per-thread, so local servers called from worker threads
    see the same allowlist.
    """
    global _allowlist_override
    previous = _allowlist_override
    _allowlist_override = _parse_networks(tuple(cidrs))
    try:
        yield
    finally:
        _allowlist_override = previous


def _allowlist() -> tuple[IPNetwork, ...]:
    """The networks allowed despite being private; empty unless configured."""
    if _allowlist_override is not None:
        return _allowlist_override
    try:
        configured = getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", ())
    except ImproperlyConfigured:
        configured = ()
    return _parse_networks(tuple(configured))


_network_cache: dict[tuple[str, ...], tuple[IPNetwork, ...]] = {}


def _parse_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs once; a typo raises ValueError loudly instead of allowing nothing."""
    if cidrs not in _network_cache:
        _network_cache[cidrs] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    return _network_cache[cidrs]


@functools.lru_cache(maxsize=4096)
def _is_public(ip: IPAddress) -> bool:
    """Routable on the public internet and not a range used for internal services.

    A pure function of the address (a dozen network scans in the stdlib's properties),
    asked twice per send for the same buyer: remembered."""
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or any(ip in net for net in _ALWAYS_REFUSED)
    )


def refusal_reason(ip: IPAddress) -> str | None:
    """Why we may not connect to `ip`, or None when we may.

    An IPv4-mapped address (::ffff:a.b.c.d) is that IPv4 address to the kernel, so it is
    judged as one; a NAT64 address reaches the IPv4 address it embeds.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    allowlist = _allowlist()
    if any(ip in net for net in allowlist):
        return None
    if ip in _NAT64:  # inside ::/8, "reserved" to the stdlib: judge what it embeds
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        return None if _is_public(embedded) else f"{ip} embeds the non-public {embedded}"
    if not _is_public(ip):
        return f"{ip} is not a public address"
    return None


def _parse(url: str) -> Url:
    """The URL exactly as the transport will use it (scheme, host, port, target), or refuse.

    The guard and the connection pool are given the very same parsed object, so there
    is no parser differential between what is checked and what is connected to
    (`http://a@b/`, `http://a\\@b/`). urllib3's parser lower-cases scheme and host,
    IDNA-encodes a non-ASCII host and percent-encodes what may not appear in a path or
    query. Numeric hosts other than a dotted quad are refused: inet_aton reads `127.1`,
    `0x7f.1`, `0177.0.0.1` and `2130706433` as 127.0.0.1, and no real buyer writes an
    address that way.
    """
    try:
        parsed = _parse_url(url.lstrip())
    except urllib3.exceptions.LocationParseError as exc:
        raise InvalidURLError(f"invalid URL: {exc}") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise SSRFError(f"scheme {scheme or '(none)'!r} is not allowed, only http and https")
    host = (parsed.host or "").strip("[]")
    if not host:
        raise InvalidURLError("URL has no host")
    if host.startswith(("*", ".")):
        raise InvalidURLError(f"invalid URL: host {host!r} is not a valid name")
    try:
        reason = _address_refusal(host, _allowlist())
    except ValueError:
        labels = host.lower().rstrip(".").split(".")
        if all(_NUMERIC_LABEL_RE.fullmatch(label) for label in labels):
            raise SSRFError(f"host {host!r} is a non-canonical IP address spelling") from None
        return parsed
    if reason:
        raise SSRFError(reason)
    return parsed


@functools.lru_cache(maxsize=4096)
def _address_refusal(text: str, allowlist: tuple[IPNetwork, ...]) -> str | None:
    """``refusal_reason`` of an address written as text (ValueError when it is not one),
    remembered with the allowlist it was judged under: a worker checks the same few
    buyer addresses on every call, twice (the URL's host, the reused connection's peer),
    and parsing the text was most of the check."""
    return refusal_reason(ipaddress.ip_address(text))


# urllib3's parser is a pure function of the text and returns an immutable Url; a worker
# calls the same few buyer URLs again and again.
_parse_url = functools.lru_cache(maxsize=1024)(parse_url)


def _port(parsed: Url) -> int:
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def _resolve_checked(host: str, port: int) -> list[tuple[Any, ...]]:
    """Resolve `host` once and refuse unless EVERY address it resolves to is allowed.

    Checking every address, not just the first, means a name with one public and one
    private record cannot be used to reach the private one by ordering or fallback.
    """
    infos = [
        info
        for info in socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    ]
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no IP address")
    for info in infos:
        if reason := refusal_reason(ipaddress.ip_address(info[4][0])):
            raise SSRFError(f"{host} resolves to {reason}")
    return infos


def check_url(url: str) -> None:
    """Refuse a URL we must never call; meant for save time (forms, admin, API).

    Raises SSRFError with a reason an operator can read. A host that does not resolve
    right now passes: DNS may be down, and `send()` checks again at connect time anyway,
    which is the check that matters (a record can change after saving).
    """
    parsed = _parse(url)
    with contextlib.suppress(socket.gaierror):
        _resolve_checked((parsed.host or "").strip("[]"), _port(parsed))


# --- transport ----------------------------------------------------------------------


class _Exchange:
    """Connections used by one `send()`, shut down when its total deadline passes.

    A read timeout bounds each socket read, not the exchange: a server that sends one
    byte every few seconds never trips it, in the headers or the body. Shutting the
    socket down from the deadline thread (`_Watchdog`) unblocks whatever read or write is
    in progress, in any phase (TLS handshake, request upload, headers, body).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._finished = False
        self.expired = False

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            expired = self.expired
        if expired:
            _shutdown(connection)

    def expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def finish(self) -> None:
        with self._lock:
            self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished


class _Watchdog:
    """One daemon thread per process that expires exchanges past their total deadline.

    A ``threading.Timer`` per send cost a thread start, a cancel and two context switches
    on every call (0.1-0.3 ms, docs/benchmarks.md). Here deadlines wait in a heap;
    the thread sleeps on a condition until the earliest one and is woken only when a new
    deadline is earlier than the one it sleeps towards. A finished exchange is dropped
    from the top of the heap at once (sequential sends keep the heap near empty) and
    ignored if met deeper down (``expire`` on a finished exchange does nothing).

    Created lazily and again in a forked child (the pid is checked): a Celery prefork
    child inherits the heap and the lock but not the thread.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Exchange]] = []
        self._seq = itertools.count()
        self._sleeping_until = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange, deadline: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), exchange))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="outbound-deadlines", daemon=True
                )
                self._thread.start()
            elif deadline < self._sleeping_until:
                self._cond.notify()

    def forget(self, exchange: _Exchange) -> None:
        """After ``exchange.finish()``: drop finished exchanges from the top of the heap."""
        with self._cond:
            heap = self._heap
            while heap and heap[0][2].finished:
                heapq.heappop(heap)
            if len(heap) > 256:  # finished ones buried under a slow exchange
                self._heap = [entry for entry in heap if not entry[2].finished]
                heapq.heapify(self._heap)

    def _loop(self) -> None:
        while True:
            due: list[_Exchange] = []
            with self._cond:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    self._sleeping_until = self._heap[0][0] if self._heap else math.inf
                    timeout = None if not self._heap else self._sleeping_until - now
                    self._cond.wait(timeout)
                    self._sleeping_until = -math.inf  # awake: no need to notify
                    continue
            for exchange in due:
                try:
                    exchange.expire()
                except Exception:  # noqa: BLE001 - the thread must outlive one bad socket
                    log.exception("outbound_deadline_expire_failed")


_watchdog: _Watchdog | None = None
_watchdog_lock = threading.Lock()


def _deadlines() -> _Watchdog:
    global _watchdog
    watchdog = _watchdog
    if watchdog is None or watchdog.pid != os.getpid():
        with _watchdog_lock:
            if _watchdog is None or _watchdog.pid != os.getpid():
                _watchdog = _Watchdog()
            watchdog = _watchdog
    return watchdog


def _reset_after_fork() -> None:
    # The parent's lock may have been held by another thread at fork time.
    global _watchdog, _watchdog_lock
    _watchdog = None
    _watchdog_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _shutdown(connection: HTTPConnection) -> None:
    """Unblock a pending read: shutdown() wakes a blocked recv, close() would not.

    The plain socket method is used on purpose: SSLSocket.shutdown() also drops the TLS
    object under the feet of the thread reading from it.
    """
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_local = threading.local()


class _GuardedConnectionMixin:
    """urllib3 connection that connects only to addresses the SSRF guard accepted."""

    def _new_conn(self: Any) -> socket.socket:
        """Like urllib3's, but resolve once, check every address, connect to a checked one."""
        try:
            return _connect_checked(
                self._dns_host, self.port, self.timeout, self.source_address, self.socket_options
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out (connect timeout={self.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc

    def connect(self: Any) -> None:
        _watch_current_exchange(self)
        super().connect()  # type: ignore[misc]

    _head: bytes | None = None  # the request head held back to go out with the body
    _coalescing = False

    def request(
        self: Any, method: str, url: str, body: Any = None, *args: Any, **kwargs: Any
    ) -> None:
        """A pooled connection is reused without connect(): watch and check it again.

        Its peer passed the guard when it connected; checking again costs one syscall
        and keeps the rule "nothing is sent to an address that is not allowed now".

        A small body goes out in the same ``sendall`` as the head: urllib3 sends them
        apart, which costs a second system call and wakes the server twice (the head
        alone, then the body), ~0.1-0.2 ms per call on a loopback or LAN buyer.
        """
        _watch_current_exchange(self)
        if self.sock is not None:
            with contextlib.suppress(OSError):  # a dead socket fails on its own
                peer = self.sock.getpeername()[0]
                if reason := _address_refusal(peer, _allowlist()):
                    raise SSRFError(reason)
        self._coalescing = isinstance(body, bytes) and 0 < len(body) <= _COALESCE_MAX_BYTES
        self._head = None
        try:
            super().request(method, url, body, *args, **kwargs)  # type: ignore[misc]
            if self._head is not None:  # no body was sent after all
                head, self._head = self._head, None
                super().send(head)  # type: ignore[misc]
        finally:
            self._coalescing = False
            self._head = None

    def send(self: Any, data: Any) -> None:
        """http.client sends the head, then urllib3 each body chunk: hold the head back
        and send it with the (one) chunk of a small bytes body."""
        if self._coalescing and isinstance(data, bytes):
            if self._head is None:
                self._head = data
                return
            data, self._head, self._coalescing = self._head + data, None, False
        super().send(data)  # type: ignore[misc]


def _watch_current_exchange(connection: HTTPConnection) -> None:
    exchange = getattr(_local, "exchange", None)
    if exchange is not None:
        exchange.watch(connection)


def _connect_checked(
    host: str,
    port: int,
    timeout: Any,
    source_address: tuple[str, int] | None,
    socket_options: Iterable[tuple[int, int, int]] | None,
) -> socket.socket:
    """urllib3's create_connection, except that the addresses tried are the checked ones."""
    error: OSError | None = None
    for family, socktype, proto, _name, address in _resolve_checked(host.strip("[]"), port):
        sock = socket.socket(family, socktype, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if isinstance(timeout, int | float):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(address)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"could not connect to {host}")


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _new_pools() -> PoolManager:
    """urllib3's pool manager, used directly (no requests on top), making guarded pools.

    Nothing here reads the environment: urllib3 knows no HTTP(S)_PROXY, NO_PROXY,
    REQUESTS_CA_BUNDLE or ~/.netrc, so what we send cannot depend on the worker's
    environment. It keeps no cookie jar either: a cookie set by one buyer is never sent
    on a later request (possibly for another workspace). Certificates are verified
    against certifi's bundle, as requests did (same pool size too: 10 hosts, 10
    connections each, never blocking).
    """
    manager = PoolManager(
        num_pools=10, maxsize=10, block=False, cert_reqs="CERT_REQUIRED", ca_certs=certifi.where()
    )
    manager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
    return manager


def _pools() -> PoolManager:
    """The pools of this thread and process.

    Per thread, as the requests session was (one thread's keep-alive connection stays
    its own); the process id is part of the key: a Celery prefork child must not share
    the parent's pooled sockets.
    """
    pools = getattr(_local, "pools", None)
    if pools is None or _local.pid != os.getpid():
        pools = _local.pools = _new_pools()
        _local.pid = os.getpid()
    return pools


# --- send ---------------------------------------------------------------------------


class _DeadlineExceededError(Exception):
    pass


class _TooManyRedirectsError(Exception):
    pass


@dataclass(slots=True)
class _Progress:
    """What has been received so far, kept when an error interrupts the exchange."""

    url: str
    status_code: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    truncated: bool = False


def send(request: OutboundRequest, *, log_line: bool = True) -> OutboundResult:
    """Send `request` and return what happened; network trouble is returned, not raised.

    Each send writes one ``outbound_request`` log line (masked). ``log_line=False`` is
    only for a caller that writes the same fields in its own line for this very call
    (``services.request_run``: one line per call instead of two, see ``log_fields``).
    """
    started = time.monotonic()
    exchange = _Exchange()
    progress = _Progress(url=request.url)
    error: tuple[ErrorKind, ErrorCode, str] | None = None
    _local.exchange = exchange
    watchdog = _deadlines()
    watchdog.watch(exchange, started + request.timeout)
    try:
        _run(request, started + request.timeout, progress)
    except (
        SSRFError,
        _DeadlineExceededError,
        _TooManyRedirectsError,
        urllib3.exceptions.HTTPError,
        OSError,
        ValueError,
    ) as exc:
        error = _classify(exc, expired=exchange.expired)
    finally:
        exchange.finish()
        watchdog.forget(exchange)
        _local.exchange = None
    if error is None and exchange.expired:
        # A shut-down socket can look like a clean end of body.
        error = (ErrorKind.TRANSIENT, ErrorCode.TIMEOUT, "total deadline exceeded")
    secrets = _secrets_of(request)
    result = OutboundResult(
        request=request,
        status_code=progress.status_code,
        headers=progress.headers,
        body=bytes(progress.body),
        truncated=progress.truncated,
        elapsed_ms=round((time.monotonic() - started) * 1000),
        final_url=progress.url,
        error_kind=error[0] if error else None,
        error_code=error[1] if error else None,
        error_message=mask_url(error[2], secrets) if error else "",
    )
    if log_line:
        (log.warning if error else log.info)("outbound_request", **log_fields(result, secrets))
    return result


def log_fields(result: OutboundResult, secrets: list[str] | None = None) -> dict[str, Any]:
    """What a log line says about one send, masked (``outbound_request``'s fields)."""
    if secrets is None:
        secrets = _secrets_of(result.request)
    url = mask_url(result.request.url, secrets)
    same = result.final_url == result.request.url
    return {
        "method": result.request.method.upper(),
        "url": url,
        "final_url": url if same else mask_url(result.final_url, secrets),
        "status": result.status_code,
        "elapsed_ms": result.elapsed_ms,
        "truncated": result.truncated,
        "error_kind": result.error_kind,
        "error_code": result.error_code,
    }


def _run(request: OutboundRequest, deadline: float, progress: _Progress) -> None:
    """The exchange itself: hops until a final response, then its capped body.

    Straight on urllib3's pools (``preload_content=False``, no retries, no redirects of
    its own): what requests added on top per call (preparing, merging environment
    settings, hooks, the cookie jar) cost about as much as the exchange itself on a
    local network, and none of it is wanted here (docs/benchmarks.md, bench-integration).
    """
    method = request.method.upper()
    if not _METHOD_RE.fullmatch(method):
        raise ValueError(f"invalid HTTP method {request.method!r}")
    headers = _header_dict(request.headers)
    body = request.body
    url = request.url
    pools = _pools()
    for hop in range(request.max_redirects + 1 if request.allow_redirects else 1):
        progress.url = url
        target = _parse(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceededError("total deadline exceeded")
        pool = pools.connection_from_host(target.host, port=target.port, scheme=target.scheme)
        response = pool.urlopen(
            method,
            target.request_uri,
            body=body,
            headers=_wire_headers(headers, method, body, target),
            retries=False,
            redirect=False,
            assert_same_host=False,
            timeout=Timeout(connect=min(request.connect_timeout, remaining), read=remaining),
            preload_content=False,
            decode_content=True,
            release_conn=False,
        )
        try:
            progress.status_code = response.status
            progress.headers = list(response.headers.items())
            location = _redirect_target(response.status, response.headers)
            if not (request.allow_redirects and location):
                _read_capped(response, request.max_response_bytes, deadline, progress)
                return
        finally:
            # Read to the end, the connection is already back in the pool and this does
            # nothing; otherwise (cap, redirect, error) the connection is closed and its
            # slot returned, never reused with unread bytes on it.
            response.close()
            response.release_conn()
        next_url = urljoin(target.url, location)
        method, body, headers = _redirected(response.status, method, body, headers, url, next_url)
        url = next_url
        if hop == request.max_redirects:
            progress.url = url
            raise _TooManyRedirectsError(f"more than {request.max_redirects} redirects")


# What requests sent by default, kept so that buyers see the same request as before.
_DEFAULT_HEADERS = (
    ("User-Agent", USER_AGENT),
    (
        "Accept-Encoding",
        ", ".join(make_headers(accept_encoding=True)["accept-encoding"].split(",")),
    ),
    ("Accept", "*/*"),
    ("Connection", "keep-alive"),
)
# RFC 9110 field names and values, as requests checked them: no CR/LF anywhere (header
# injection), no colon or leading space in a name, no leading space in a value.
_HEADER_NAME_RE = re.compile(r"[^:\s][^:\r\n]*")
_HEADER_VALUE_RE = re.compile(r"\S[^\r\n]*|")

Headers = dict[str, tuple[str, str]]  # lower-cased name -> (name as written, value)


def _header_dict(headers: Iterable[tuple[str, str]]) -> Headers:
    """Our defaults, then the request's headers (a repeated name is joined as RFC 9110
    allows), each checked before anything connects."""
    merged: Headers = {name.lower(): (name, value) for name, value in _DEFAULT_HEADERS}
    seen: set[str] = set()
    for name, value in headers:
        if not (
            isinstance(name, str)
            and isinstance(value, str)
            and _HEADER_NAME_RE.fullmatch(name)
            and _HEADER_VALUE_RE.fullmatch(value)
        ):
            raise ValueError(
                f"invalid header {name!r}: leading whitespace, a reserved character or "
                "CR/LF in its name or value"
            )
        key = name.lower()
        if key in seen:
            value = f"{merged[key][1]}, {value}"
        seen.add(key)
        merged[key] = (name, value)
    return merged


def _wire_headers(headers: Headers, method: str, body: bytes | None, target: Url) -> dict[str, str]:
    """One hop's headers as sent: Content-Length as requests computed it (the body's
    length; 0 for a body-less method other than GET and HEAD), and credentials written
    in the URL (``https://user:pass@host/``) sent as Basic auth, as requests did."""
    wire = dict(headers.values())
    if body is not None:
        _set(wire, headers, "Content-Length", str(len(body)))
    elif method not in ("GET", "HEAD") and "content-length" not in headers:
        wire["Content-Length"] = "0"
    if target.auth:
        user, _, password = target.auth.partition(":")
        credentials = f"{unquote(user)}:{unquote(password)}".encode("latin-1")
        _set(wire, headers, "Authorization", "Basic " + b64encode(credentials).decode())
    return wire


def _set(wire: dict[str, str], headers: Headers, name: str, value: str) -> None:
    """Replace a header whatever the case it was written in."""
    existing = headers.get(name.lower())
    wire.pop(existing[0] if existing else name, None)
    wire[name] = value


def _redirect_target(status: int, headers: HTTPHeaderDict) -> str | None:
    """The Location of a redirect, decoded like browsers (UTF-8 sent as latin-1)."""
    location = headers.get("Location")
    if status not in _REDIRECT_STATUSES or not location:
        return None
    with contextlib.suppress(UnicodeError):
        location = location.encode("latin-1").decode("utf-8")
    return location


def _redirected(
    status: int,
    method: str,
    body: bytes | None,
    headers: Headers,
    from_url: str,
    to_url: str,
) -> tuple[str, bytes | None, Headers]:
    """The next hop's method, body and headers, by the rules browsers follow.

    303 turns anything but HEAD into a body-less GET, 301/302 do so for POST, 307/308
    keep both. Credentials never follow a redirect to another origin: a buyer's
    redirect must not hand its API key to someone else.
    """
    headers = dict(headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        for key in ("content-type", "content-length", "content-encoding", "transfer-encoding"):
            headers.pop(key, None)
    if _origin(from_url) != _origin(to_url):
        for key in [key for key in headers if is_sensitive_header(key)]:
            del headers[key]
    return method, body, headers


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, parts.port or default_port


def _read_capped(response: HTTPResponse, cap: int, deadline: float, progress: _Progress) -> None:
    """Read the body into `progress` until EOF, the cap, or the deadline.

    read1() does at most one socket read per call; read(n) would block until n bytes
    arrived, however slowly they trickle in. One byte past the cap tells a body that is
    exactly the cap from a longer one.
    """
    while True:
        if time.monotonic() >= deadline:
            raise _DeadlineExceededError("total deadline exceeded while reading the body")
        want = min(_READ_CHUNK_BYTES, cap + 1 - len(progress.body))
        chunk = response.read1(want, decode_content=True)
        if not chunk:
            return
        progress.body += chunk
        if len(progress.body) > cap:
            del progress.body[cap:]
            progress.truncated = True
            return


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (urllib3 wraps socket and ssl errors)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        wrapped += [arg for arg in current.args if isinstance(arg, BaseException)]
        stack.extend(e for e in wrapped if isinstance(e, BaseException))


def _classify(exc: BaseException, *, expired: bool) -> tuple[ErrorKind, ErrorCode, str]:
    """Map an exception to (kind, code, message); only `transient` is worth a retry."""
    causes = list(_causes(exc))
    message = str(exc) or type(exc).__name__

    def caused_by(*types: type[BaseException]) -> bool:
        return any(isinstance(cause, types) for cause in causes)

    if isinstance(exc, InvalidURLError):
        return ErrorKind.PERMANENT, ErrorCode.INVALID_URL, message
    if isinstance(exc, SSRFError):
        return ErrorKind.PERMANENT, ErrorCode.SSRF, f"refused: {message}"
    # Not urllib3's TimeoutError as a whole: its NewConnectionError (refused,
    # unreachable) is a ConnectTimeoutError.
    if (
        expired
        or isinstance(exc, _DeadlineExceededError | ReadTimeoutError | TimeoutError)
        or (isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError))
    ):
        return ErrorKind.TRANSIENT, ErrorCode.TIMEOUT, message
    if isinstance(exc, _TooManyRedirectsError):
        return ErrorKind.PERMANENT, ErrorCode.TOO_MANY_REDIRECTS, message
    if isinstance(exc, urllib3.exceptions.LocationValueError):
        return ErrorKind.PERMANENT, ErrorCode.INVALID_URL, message
    if caused_by(ssl.SSLCertVerificationError):
        return ErrorKind.PERMANENT, ErrorCode.TLS, message
    if caused_by(urllib3.exceptions.SSLError, ssl.SSLError):
        return ErrorKind.TRANSIENT, ErrorCode.TLS, message
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            kind = ErrorKind.PERMANENT if cause.errno in _EAI_PERMANENT else ErrorKind.TRANSIENT
            return kind, ErrorCode.DNS, message
    if caused_by(urllib3.exceptions.DecodeError):
        return ErrorKind.PERMANENT, ErrorCode.PROTOCOL, message
    if isinstance(exc, ValueError):
        return ErrorKind.PERMANENT, ErrorCode.INVALID_REQUEST, message
    return ErrorKind.TRANSIENT, ErrorCode.CONNECTION, message
