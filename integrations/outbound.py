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
- Each call is sent at most once: a kept-alive connection that closes before any answer
  ends the call with a connection error (libcurl would send it again on a new
  connection, unlogged, to a buyer that may have taken it). Retrying is the caller's
  decision, and its own logged call.
- Secrets are masked in every view meant for logs.

Why our own guarded connection instead of requests-hardened: it checks only the first
address getaddrinfo returns and can allow loopback as a whole but not a list of
networks; we need every address checked and a CIDR allowlist. The mechanism is "check
the IP, then connect to that IP": libcurl opens no socket itself, our callback resolves
the host, checks every address and hands libcurl a socket connected to a checked one,
so TLS SNI, certificate checks and the Host header keep the hostname.

Why libcurl (pycurl) under it: the exchange (write, wait, parse the status line and
headers, decode, the total deadline) runs in C with the GIL released for its whole
length. With urllib3 (and requests before it) the same exchange cost 1.1 ms of CPU per
call on the ping tree's auction, which a worker's threads paid one at a time under the
GIL; on libcurl a sustained auction lead (6 calls) costs 4-5 ms less CPU, and the
ping tree kept up with the bare fan-out for the first time (docs/benchmarks.md, sixth
session of 2026-12-03). What requests did that we want is done here in a few lines: its default
headers, Content-Length, header validation, Basic auth from credentials in the URL,
certifi's CA bundle; libcurl is told to use none of its own defaults (proxy, netrc,
protocols other than http and https, Expect, a default Content-Type).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import ipaddress
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
import pycurl
import structlog
import urllib3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from urllib3.util import Url, parse_url
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

# What libcurl is told a host NAME resolves to. It never connects there: every socket is
# opened by `_Transport.open_socket`, which resolves the name with the system resolver
# (Python's, the same one `check_url` uses), checks every address and connects to a
# checked one. TEST-NET-1 (RFC 5737) is not routed anywhere, should that ever change.
_UNRESOLVED = "192.0.2.1"
_CURL_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
_MAX_CONNECTIONS = 10  # kept alive per thread, one per host (urllib3 kept 10 pools)
_ACCEPT_ENCODING = "gzip, deflate"
_CA_BUNDLE = certifi.where()


class _TransferError(Exception):
    """libcurl ended the transfer with an error; `cause` is what our own callback raised
    (the guard's refusal, a DNS or connect failure), if it was one of them."""

    def __init__(self, code: int, message: str, cause: BaseException | None) -> None:
        super().__init__(str(cause) if cause is not None else message)
        self.code = code
        self.cause = cause


@dataclass(slots=True)
class _Hop:
    """One request and response of a `send()` (a redirect makes another hop)."""

    host: str
    port: int
    connect_timeout: float
    cap: int
    progress: _Progress
    error: BaseException | None = None
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    sent: bool = False  # the request went out (on a new or a reused connection)

    def header(self, line: bytes) -> None:
        """libcurl's header callback, one line at a time (the status line included).

        Status and headers reach `progress` only at the blank line that ends them, so an
        exchange cut in the middle of its headers has no status, as before."""
        if line.startswith(b"HTTP/"):
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            self.headers = []  # a 100 Continue came first: the final response starts over
        elif line in (b"\r\n", b"\n"):
            if self.status is not None and self.status >= 200:
                self.progress.status_code = self.status
                self.progress.headers = self.headers
        elif line[:1] in (b" ", b"\t") and self.headers:  # obsolete line folding
            name, value = self.headers[-1]
            self.headers[-1] = (name, f"{value} {line.decode('latin-1').strip()}")
        else:
            name, _, value = line.decode("latin-1").partition(":")
            self.headers.append((name.strip(), value.strip()))

    def write(self, data: bytes) -> int | None:
        """libcurl's body callback (decoded bytes): kept up to the cap, one byte past it
        ends the transfer (returning 0 makes libcurl stop and close the connection)."""
        body = self.progress.body
        body += data
        if len(body) > self.cap:
            del body[self.cap :]
            self.progress.truncated = True
            return 0
        return None


class _Transport:
    """A libcurl handle of this thread and process; its connection cache is the
    keep-alive pool (one connection per host, as urllib3's per-thread pools kept).

    libcurl runs the exchange in C, with the GIL released for its whole length: the
    parse of the status line and headers, the body's decoding, the deadline. What stays
    in Python is the guard: libcurl opens no socket of its own (`open_socket`), and every
    request, on a new or a reused connection, is checked against its peer first
    (`prereq`). So the rule is unchanged: every address a host resolves to is checked,
    the connection goes to a checked one, and nothing is sent to a peer that is not
    allowed now.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.curl = pycurl.Curl()
        self.hop: _Hop | None = None
        # The checked peer of each live connection, by its local address (what libcurl
        # names a reused connection by), and the local address by libcurl's descriptor.
        self.peers: dict[tuple[str, int], str] = {}
        self.locals: dict[int, tuple[str, int]] = {}
        self.opened: tuple[tuple[str, int], str] | None = None
        self.connections_opened = 0

    def perform(
        self,
        method: str,
        target: Url,
        wire: dict[str, str],
        body: bytes | None,
        request: OutboundRequest,
        remaining: float,
        progress: _Progress,
    ) -> None:
        """One hop: status, headers and (capped) body into `progress`, or raise."""
        host = (target.host or "").strip("[]")
        port = _port(target)
        connect_timeout = min(request.connect_timeout, remaining)
        hop = _Hop(host, port, connect_timeout, request.max_response_bytes, progress)
        self.hop = hop
        curl = self.curl
        curl.reset()
        curl.setopt(pycurl.URL, target._replace(auth=None).url)
        curl.setopt(pycurl.PROTOCOLS, _CURL_PROTOCOLS)
        curl.setopt(pycurl.REDIR_PROTOCOLS, _CURL_PROTOCOLS)
        curl.setopt(pycurl.PROXY, "")  # never the environment's proxy variables
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        curl.setopt(pycurl.TIMEOUT_MS, max(1, math.ceil(remaining * 1000)))
        curl.setopt(pycurl.MAXCONNECTS, _MAX_CONNECTIONS)
        curl.setopt(pycurl.CAINFO, _CA_BUNDLE)
        curl.setopt(pycurl.ACCEPT_ENCODING, _ACCEPT_ENCODING)
        curl.setopt(pycurl.OPENSOCKETFUNCTION, self.open_socket)
        curl.setopt(pycurl.SOCKOPTFUNCTION, self.socket_options)
        curl.setopt(pycurl.CLOSESOCKETFUNCTION, self.close_socket)
        curl.setopt(pycurl.PREREQFUNCTION, self.prereq)
        curl.setopt(pycurl.HEADERFUNCTION, hop.header)
        curl.setopt(pycurl.WRITEFUNCTION, hop.write)
        if not _is_ip_literal(host):
            curl.setopt(pycurl.RESOLVE, [f"{host}:{port}:{_UNRESOLVED}"])
        curl.setopt(pycurl.HTTPHEADER, _curl_headers(wire, body))
        if method == "HEAD":
            curl.setopt(pycurl.NOBODY, 1)
        elif body is not None:
            curl.setopt(pycurl.POSTFIELDS, body)
            curl.setopt(pycurl.POSTFIELDSIZE, len(body))
            if method != "POST":
                curl.setopt(pycurl.CUSTOMREQUEST, method)
        elif method != "GET":
            curl.setopt(pycurl.CUSTOMREQUEST, method)
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args
            if not (code == pycurl.E_WRITE_ERROR and progress.truncated):
                raise _TransferError(code, message, hop.error) from hop.error
        finally:
            self.hop = None
            for sock in hop.sockets:  # libcurl works on its own duplicate of each
                sock.close()

    # libcurl's callbacks. An exception must not escape them (pycurl would print it and
    # fail the transfer with a code that no longer says why): they store it on the hop.

    def open_socket(self, purpose: int, address: Any) -> Any:
        """Instead of libcurl's connect: resolve, check every address, connect to one."""
        hop = self.hop
        if hop is None:
            return pycurl.SOCKET_BAD
        if hop.sent:
            # libcurl sends a request again, on a new connection, when a kept-alive one
            # closed before a byte of the answer came. The buyer may have taken it (a
            # post, a conversion): we never send twice on our own, and the one call is
            # logged as what it was, a connection closed unanswered.
            hop.error = _NotSentAgainError(
                "the connection closed before any answer; the request is not sent again"
            )
            return pycurl.SOCKET_BAD
        try:
            sock = _connect_checked(hop.host, hop.port, hop.connect_timeout)
            self.opened = (sock.getsockname()[:2], sock.getpeername()[0])
        except Exception as exc:  # noqa: BLE001 - kept for _classify, see above
            hop.error = exc
            return pycurl.SOCKET_BAD
        hop.sockets.append(sock)
        self.connections_opened += 1
        return sock

    def socket_options(self, fd: int, purpose: int) -> int:
        """The socket `open_socket` made, under libcurl's descriptor: already connected."""
        if self.opened is not None:
            local, peer = self.opened
            self.opened = None
            self.locals[fd] = local
            self.peers[local] = peer
        return pycurl.SOCKOPT_ALREADY_CONNECTED

    def close_socket(self, fd: int) -> int:
        local = self.locals.pop(fd, None)
        if local is not None:
            self.peers.pop(local, None)
        with contextlib.suppress(OSError):
            os.close(fd)
        return 0

    def prereq(self, primary_ip: str, local_ip: str, primary_port: int, local_port: int) -> int:
        """Before every request, on a new or a reused connection: is its peer allowed now?

        A pooled connection passed the guard when it connected; the allowlist may have
        changed since (a setting, a test's context)."""
        peer = self.peers.get((local_ip, local_port))
        try:
            if peer is None:
                raise SSRFError("the connection was not opened by the guard")
            if reason := _address_refusal(peer, _allowlist()):
                raise SSRFError(reason)
        except Exception as exc:  # noqa: BLE001 - kept for _classify
            if self.hop is not None:
                self.hop.error = exc
            return pycurl.PREREQFUNC_ABORT
        if self.hop is not None:
            self.hop.sent = True
        return pycurl.PREREQFUNC_OK


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _curl_headers(wire: dict[str, str], body: bytes | None) -> list[str]:
    """The request's headers for libcurl, exactly: an empty value is sent empty (``Name;``
    in libcurl's syntax), and the headers libcurl would add on its own for a body are
    switched off (``Content-Type: application/x-www-form-urlencoded``, ``Expect:
    100-continue``)."""
    lines = [f"{name}: {value}" if value else f"{name};" for name, value in wire.items()]
    present = {name.lower() for name in wire}
    if "expect" not in present:
        lines.append("Expect:")
    if body is not None and "content-type" not in present:
        lines.append("Content-Type:")
    return lines


_local = threading.local()
_inherited: list[_Transport] = []


def _transport() -> _Transport:
    """The libcurl handle of this thread and process.

    The process id is part of the key: a Celery prefork child must not share the
    parent's pooled sockets. The parent's handle is kept, never closed, in the child:
    closing it would end the parent's TLS sessions on the sockets both share.
    """
    transport = getattr(_local, "transport", None)
    if transport is None or transport.pid != os.getpid():
        if transport is not None:
            _inherited.append(transport)
        transport = _local.transport = _Transport()
    return transport


def connections_opened() -> int:
    """How many connections this thread's handle has opened (benches: keep-alive works)."""
    return _transport().connections_opened


def _connect_checked(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to the first address that answers, among the checked ones (TCP_NODELAY:
    a request's head and body must not wait for the buyer's ACK)."""
    error: OSError | None = None
    for family, socktype, proto, _name, address in _resolve_checked(host.strip("[]"), port):
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"could not connect to {host}")


# --- send ---------------------------------------------------------------------------


class _DeadlineExceededError(Exception):
    pass


class _NotSentAgainError(ConnectionError):
    """A request whose connection closed unanswered, which libcurl would send again."""


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
    progress = _Progress(url=request.url)
    error: tuple[ErrorKind, ErrorCode, str] | None = None
    try:
        _run(request, started + request.timeout, progress)
    except (
        SSRFError,
        _DeadlineExceededError,
        _TooManyRedirectsError,
        _TransferError,
        OSError,
        ValueError,
    ) as exc:
        error = _classify(exc)
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

    Redirects are followed here, not by libcurl, so that each hop's URL passes `_parse`
    and its method, body and credentials follow the rules of `_redirected`.
    """
    method = request.method.upper()
    if not _METHOD_RE.fullmatch(method):
        raise ValueError(f"invalid HTTP method {request.method!r}")
    headers = _header_dict(request.headers)
    body = request.body
    url = request.url
    transport = _transport()
    for hop in range(request.max_redirects + 1 if request.allow_redirects else 1):
        progress.url = url
        progress.status_code, progress.headers = None, []
        progress.body, progress.truncated = bytearray(), False
        target = _parse(url)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlineExceededError("total deadline exceeded")
        wire = _wire_headers(headers, method, body, target)
        transport.perform(method, target, wire, body, request, remaining, progress)
        location = _redirect_target(progress.status_code, progress.headers)
        if not (request.allow_redirects and location):
            return
        next_url = urljoin(target.url, location)
        method, body, headers = _redirected(
            progress.status_code or 0, method, body, headers, url, next_url
        )
        url = next_url
        if hop == request.max_redirects:
            progress.url = url
            raise _TooManyRedirectsError(f"more than {request.max_redirects} redirects")


# What requests sent by default, kept so that buyers see the same request as before.
_DEFAULT_HEADERS = (
    ("User-Agent", USER_AGENT),
    ("Accept-Encoding", _ACCEPT_ENCODING),  # what libcurl decodes (requests sent the same)
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


def _redirect_target(status: int | None, headers: list[tuple[str, str]]) -> str | None:
    """The Location of a redirect, decoded like browsers (UTF-8 sent as latin-1)."""
    if status not in _REDIRECT_STATUSES:
        return None
    location = next((value for name, value in headers if name.lower() == "location"), None)
    if not location:
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


# libcurl's codes by what they mean to a caller (anything else: a transient connection
# error, as a dropped connection is).
_CURL_TIMEOUT = frozenset({pycurl.E_OPERATION_TIMEDOUT})
_CURL_TLS_PERMANENT = frozenset(
    {pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT, pycurl.E_SSL_PINNEDPUBKEYNOTMATCH}
)
_CURL_TLS = frozenset(
    {
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_SSL_CERTPROBLEM,
        pycurl.E_SSL_CIPHER,
        pycurl.E_SSL_CACERT_BADFILE,
        pycurl.E_SSL_CRL_BADFILE,
        pycurl.E_SSL_ISSUER_ERROR,
        pycurl.E_SSL_SHUTDOWN_FAILED,
        pycurl.E_SSL_INVALIDCERTSTATUS,
    }
)
_CURL_INVALID_URL = frozenset({pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL})
_CURL_PROTOCOL = frozenset({pycurl.E_BAD_CONTENT_ENCODING})


def _classify(exc: BaseException) -> tuple[ErrorKind, ErrorCode, str]:
    """Map an exception to (kind, code, message); only `transient` is worth a retry."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, _TransferError) and exc.cause is not None:
        exc = exc.cause  # what our callback met: the guard, DNS, the connect
    if isinstance(exc, InvalidURLError):
        return ErrorKind.PERMANENT, ErrorCode.INVALID_URL, message
    if isinstance(exc, SSRFError):
        return ErrorKind.PERMANENT, ErrorCode.SSRF, f"refused: {message}"
    if isinstance(exc, _DeadlineExceededError | TimeoutError):
        return ErrorKind.TRANSIENT, ErrorCode.TIMEOUT, message
    if isinstance(exc, _TooManyRedirectsError):
        return ErrorKind.PERMANENT, ErrorCode.TOO_MANY_REDIRECTS, message
    if isinstance(exc, socket.gaierror):
        kind = ErrorKind.PERMANENT if exc.errno in _EAI_PERMANENT else ErrorKind.TRANSIENT
        return kind, ErrorCode.DNS, message
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ErrorKind.PERMANENT, ErrorCode.TLS, message
    if isinstance(exc, _TransferError):
        if exc.code in _CURL_TIMEOUT:
            return ErrorKind.TRANSIENT, ErrorCode.TIMEOUT, message
        if exc.code in _CURL_TLS_PERMANENT:
            return ErrorKind.PERMANENT, ErrorCode.TLS, message
        if exc.code in _CURL_TLS:
            return ErrorKind.TRANSIENT, ErrorCode.TLS, message
        if exc.code in _CURL_INVALID_URL:
            return ErrorKind.PERMANENT, ErrorCode.INVALID_URL, message
        if exc.code in _CURL_PROTOCOL:
            return ErrorKind.PERMANENT, ErrorCode.PROTOCOL, message
        if exc.code == pycurl.E_COULDNT_RESOLVE_HOST:
            return ErrorKind.TRANSIENT, ErrorCode.DNS, message
        return ErrorKind.TRANSIENT, ErrorCode.CONNECTION, message
    if isinstance(exc, ValueError):
        return ErrorKind.PERMANENT, ErrorCode.INVALID_REQUEST, message
    return ErrorKind.TRANSIENT, ErrorCode.CONNECTION, message
