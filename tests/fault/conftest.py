"""Fault-test wiring: a real Celery worker subprocess on a dedicated Redis db against the
test database, a real local buyer counting requests per lead, and a sweeper the test
drives itself (``sweep()``), so the sweeper's tunables can be shortened in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 9
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


def redis_cli(*args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-n", str(REDIS_DB), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(autouse=True)
def celery_eager(monkeypatch) -> Iterator[None]:
    """Overrides the suite's eager Celery: tasks go to Redis db 9 and a real worker.
    (Celery reads CELERY_BROKER_URL from the environment before its own conf.)"""
    from config.celery import app

    monkeypatch.setenv("CELERY_BROKER_URL", REDIS_URL)
    old = (app.conf.task_always_eager, app.conf.broker_url)
    app.close()  # drop any pooled connection to another broker
    app.conf.task_always_eager = False
    app.conf.broker_url = REDIS_URL
    yield
    app.close()
    app.conf.task_always_eager, app.conf.broker_url = old


@pytest.fixture
def fast_sweeper(monkeypatch):
    """Production waits 60 s before re-driving a running step whose worker went silent and
    30 s before re-sending a queued task that never ran; the test's in-process sweeper uses
    2 s and 3 s so a fault test fits in seconds. Workers do not read these values."""
    from integrations.engine import services

    monkeypatch.setattr(services, "LEASE_SECONDS", 2)
    monkeypatch.setattr(services, "REQUEUE_GRACE_SECONDS", 3)


def sweep() -> int:
    from django.db import connection

    from integrations.engine.services import engine_sweep

    sent = engine_sweep()
    connection.close_if_unusable_or_obsolete()
    return sent


class Buyer:
    """A real HTTP server on 127.0.0.1 counting requests per (path, lead) on arrival,
    before any delay, so a request whose sender died mid-call is counted too."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.delays: dict[str, float] = {}
        self.lock = threading.Lock()
        buyer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                lead = parse_qs(parts.query).get("lead", [""])[0]
                with buyer.lock:
                    buyer.counts[(parts.path, lead)] += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                time.sleep(buyer.delays.get(parts.path, 0.0))
                body = b'{"status": "ok"}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the caller was killed

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.base}{path}?lead={{{{LEAD_ID}}}}"

    def count(self, path: str, lead) -> int:
        with self.lock:
            return self.counts[(path, lead.pcid)]

    def total(self, path: str) -> int:
        with self.lock:
            return sum(n for (p, _), n in self.counts.items() if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def buyer() -> Iterator[Buyer]:
    server = Buyer()
    yield server
    server.close()


class Workers:
    """Starts real ``celery worker`` processes (each in its own process group) and kills
    the ones it started, by pid."""

    def __init__(self, tmp_path: Path) -> None:
        from django.db import connection

        db = connection.settings_dict
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        self.env = dict(os.environ)
        self.env.update(
            DATABASE_URL=f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
            f"/{db['NAME']}",
            CELERY_BROKER_URL=REDIS_URL,
            CELERY_TASK_ALWAYS_EAGER="false",
            CONN_MAX_AGE="0",
            OUTBOUND_ALLOWED_NETWORKS=os.environ.get(
                "OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"
            ),
            INTEGRATION_SECRET_KEYS=os.environ.get("INTEGRATION_SECRET_KEYS", ""),
            LOG_FORMAT="console",
        )
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, **env: str) -> subprocess.Popen:
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/celery"), "-A", "config", "worker",
                "-Q", "realtime,deliveries,default", "--pool", "threads", "-c", "4",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", f"fault{len(self.procs)}@%h",
            ],
            cwd=ROOT, env={**self.env, **env}, stdout=log.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.procs.append((proc, log))
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def log(self, index: int) -> str:
        return self.procs[index][1].read_text()

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


@pytest.fixture
def workers(transactional_db, tmp_path) -> Iterator[Workers]:
    """Depends on transactional_db so the workers are gone before the tables are flushed."""
    redis_cli("FLUSHDB")
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
        redis_cli("FLUSHDB")
