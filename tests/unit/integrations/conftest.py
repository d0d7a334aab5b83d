"""Fixtures for the outbound HTTP module: fake DNS, a connect guard, raw local servers.

Every test here runs with
- the project's settings replaced by an empty stub (no Django configuration needed),
- a fake resolver: names the test declares, IP literals, nothing from real DNS,
- a recorder on `socket.socket.connect` that keeps tests on this machine and FAILS the
  test if anything connected to an address the SSRF guard should have refused.
"""

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from integrations import outbound

LOOPBACK = ("127.0.0.0/8", "::1/128")


@pytest.fixture(autouse=True)
def settings_stub(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Stands in for django.conf.settings: no OUTBOUND_ALLOWED_NETWORKS unless a test sets it."""
    stub = SimpleNamespace()
    monkeypatch.setattr(outbound, "settings", stub)
    return stub


@dataclass
class FakeDNS:
    """getaddrinfo that answers from a table; successive answers model DNS rebinding."""

    real: Callable[..., list]
    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def add(self, host: str, *answers: list[str]) -> None:
        """Each call to getaddrinfo takes the next answer; the last one repeats."""
        self.answers[host] = list(answers)

    def fail(self, host: str, error_number: int) -> None:
        self.failures[host] = error_number

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        self.calls.append(host)
        if host in self.failures:
            raise socket.gaierror(self.failures[host], f"fake DNS failure for {host}")
        if host in self.answers:
            queue = self.answers[host]
            ips = queue.pop(0) if len(queue) > 1 else queue[0]
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, int(port), 0, 0))
                if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port)))
                for ip in ips
            ]
        # IP literals only: a name nobody declared must never reach real DNS.
        return self.real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(real=socket.getaddrinfo)
    fake.add("localhost", ["127.0.0.1"])
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


@dataclass
class ConnectRecorder:
    """Every address a socket connected to, judged independently of the module under test."""

    allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    connections: list[tuple[str, int, bool]] = field(default_factory=list)

    def is_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed_networks):
            return True
        return ip.is_global and not ip.is_multicast

    @property
    def addresses(self) -> list[str]:
        return [ip for ip, _port, _allowed in self.connections]


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectRecorder]:
    """Record every connect; fail the test if one went to an address that is not allowed.

    Only loopback connects really happen: anything else is refused here, so no test can
    leave the machine even when the code under test is wrong.
    """
    recorder = ConnectRecorder()
    original_connect = socket.socket.connect

    def connect(sock: socket.socket, address: tuple) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            original_connect(sock, address)
            return
        ip = ipaddress.ip_address(address[0].split("%")[0])
        recorder.connections.append((str(ip), address[1], recorder.is_allowed(ip)))
        real_ip = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if not (real_ip or ip).is_loopback:
            raise ConnectionRefusedError(f"tests stay on this machine, not {ip}")
        original_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield recorder
    refused = [c for c in recorder.connections if not c[2]]
    assert not refused, f"connected to addresses the SSRF guard must refuse: {refused}"


@pytest.fixture
def allow(connections: ConnectRecorder) -> Iterator[Callable[..., None]]:
    """allow("127.0.0.0/8", ...): the allowlist for this test, for the module and the recorder."""
    with contextlib.ExitStack() as stack:

        def allow_networks(*cidrs: str) -> None:
            stack.enter_context(outbound.allowed_networks(cidrs))
            connections.allowed_networks = [ipaddress.ip_network(c) for c in cidrs]

        yield allow_networks


@pytest.fixture
def loopback(allow: Callable[..., None]) -> None:
    """Local test servers live on loopback, which production refuses."""
    allow(*LOOPBACK)


class RawServer:
    """A TCP server on 127.0.0.1 that writes raw bytes: trickles, endless bodies, TLS.

    http.server and werkzeug cannot misbehave slowly enough; these handlers can.
    """

    def __init__(
        self,
        handler: Callable[[socket.socket], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.bytes_sent = 0
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stopped = threading.Event()
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            conn.settimeout(10)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.requests.append(head)
            self.handler(conn)

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.bytes_sent += len(data)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[RawServer, socket.socket], None], **kwargs: object) -> RawServer:
        server = RawServer(lambda conn: handler(server, conn), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def next_request(server: RawServer, conn: socket.socket) -> bool:
    """Read the next request's head on the connection and keep it; False when the client
    closed the connection instead."""
    head = b""
    while b"\r\n\r\n" not in head:
        if not (data := conn.recv(4096)):
            return False
        head += data
    server.requests.append(head)
    return True


def keep_alive(server: RawServer, conn: socket.socket) -> None:
    """Answer "ok" to every request on the connection until the client closes it, keeping
    each request's head."""
    while True:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if not next_request(server, conn):
            return


def trickle(server: RawServer, conn: socket.socket, data: bytes, interval: float) -> None:
    """Send `data` one byte at a time: every socket read sees progress, none times out."""
    for byte in data:
        server.send(conn, bytes([byte]))
        time.sleep(interval)


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for buyer.example that no client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "buyer.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("buyer.example")]), False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_context(tls_certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_certificate)
    return context
