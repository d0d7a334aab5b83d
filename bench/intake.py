"""`make bench-intake`: POST /api/v1/leads/ against a bare DRF endpoint inserting one row.

Both endpoints are served by one gunicorn (3 sync workers) on PostgreSQL, in the same
run: warm-up, then bare, ours, bare, ours, ... at the same concurrency; the figures are
the medians of the rounds. Every request to our endpoint carries a unique email and
phone, so every lead is a new, approved lead (no duplicates). Afterwards the database
must hold a row for every 201 answer (the answers' ids are checked one by one).

Ends with exactly one line ``RESULT intake ratio=<ours/bare> target=0.6 PASS|FAIL``;
PASS needs ratio >= 0.6, our p99 <= 50 ms and zero errors (socket errors, non-201
answers, answered leads missing from the database). Exit code 0 on PASS, 1 on FAIL.

Run through ``make bench-intake`` (it sources scripts/test-env.sh for DATABASE_URL).
The benchmark uses its own database (``leadrelay_bench``), created when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "intake"
TARGET_RATIO = 0.6
P99_LIMIT_MS = 50.0
BENCH_DB = "leadrelay_bench"
OURS_PATH = "/api/v1/leads/"
BARE_PATH = "/bench/bare/leads/"
WORKSPACE_SLUG = "bench-intake"
# Unique valid US numbers: index -> (area code, exchange, 4-digit line); 300,000 numbers.
AREA_CODES = ["202", "212", "310", "415", "617", "713"]
EXCHANGES = ["456", "234", "321", "789", "867"]
CAPACITY = len(AREA_CODES) * len(EXCHANGES) * 10_000
STRUCTURE_FIELDS = [
    ("g_first_name", True),
    ("g_last_name", False),
    ("g_email", True),
    ("g_phone", True),
    ("g_zip", False),
]
LOG_DIR = ROOT / "var" / "bench"


def say(msg: str) -> None:
    print(msg, flush=True)


def phone_for(index: int) -> str:
    area = AREA_CODES[index % len(AREA_CODES)]
    rest = index // len(AREA_CODES)
    exchange = EXCHANGES[(rest // 10_000) % len(EXCHANGES)]
    return f"+1{area}{exchange}{rest % 10_000:04d}"


def body_for(index: int) -> bytes:
    return json.dumps(
        {
            "g_first_name": "Bench",
            "g_last_name": "Load",
            "g_email": f"bench{index}@example.com",
            "g_phone": phone_for(index),
            "g_zip": "20500",
        },
        separators=(",", ":"),
    ).encode()


# --- database and fixtures -----------------------------------------------------------------


def bench_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(
            f"bench-{NAME} needs PostgreSQL (DATABASE_URL is {url or 'unset'}); "
            "run it through `make bench-intake`."
        )
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            say(f"creating database {BENCH_DB}")
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def prepare_django() -> str:
    """Migrate the bench database, empty the lead tables, make the workspace and a fresh
    partner key (no rate limit). Returns the key's plaintext."""
    import django

    django.setup()
    import phonenumbers
    from django.core.management import call_command
    from django.db import connection, transaction

    from structures import services
    from structures.models import (
        Field,
        Partner,
        PartnerAPIKey,
        Structure,
        StructureField,
        Workspace,
    )

    for area in AREA_CODES:
        for exchange in EXCHANGES:
            number = phonenumbers.parse(f"+1{area}{exchange}1234")
            if not phonenumbers.is_valid_number(number):
                raise SystemExit(f"phone range +1{area}{exchange}XXXX is not valid; fix the bench")

    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE structures_lead, bareapp_barelead RESTART IDENTITY CASCADE")
    with transaction.atomic():
        workspace = Workspace.objects.filter(slug=WORKSPACE_SLUG).first()
        if workspace is None:
            workspace = services.workspace_create(
                workspace=Workspace(
                    name="Bench intake",
                    slug=WORKSPACE_SLUG,
                    timezone="America/New_York",
                    default_country="US",
                ),
                owner=None,
            )
        structure, created = Structure.objects.get_or_create(
            workspace=workspace, slug="bench-form", defaults={"name": "Bench form"}
        )
        if created:
            globals_ = {f.name: f for f in Field.objects.filter(workspace__isnull=True)}
            StructureField.objects.bulk_create(
                StructureField(
                    structure=structure, field=globals_[name], position=i, is_required=req
                )
                for i, (name, req) in enumerate(STRUCTURE_FIELDS)
            )
        partner, _ = Partner.objects.get_or_create(
            workspace=workspace, name="Bench Publisher", defaults={"default_structure": structure}
        )
        PartnerAPIKey.objects.filter(partner=partner).delete()
        _, key = services.partner_api_key_create(
            partner=partner, name="bench", rate_limit_per_minute=0
        )
    connection.close()
    return key


def db_check(answered: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Rows in the database against the ids the 201 answers carried."""
    from django.db import connection

    from bench.bareapp.models import BareLead
    from structures.models import Lead

    out: dict[str, dict[str, int]] = {}
    leads = Lead.objects.filter(workspace__slug=WORKSPACE_SLUG)
    ours_ids = set(answered["ours"])
    found = 0
    for chunk_start in range(0, len(answered["ours"]), 5000):
        chunk = answered["ours"][chunk_start : chunk_start + 5000]
        found += leads.filter(pcid__in=chunk).count()
    out["ours"] = {
        "rows": leads.count(),
        "answered": len(answered["ours"]),
        "unique_answered": len(ours_ids),
        "missing": len(ours_ids) - found,
        "not_approved": leads.exclude(status="approved").count(),
    }
    bare_ids = {int(x) for x in answered["bare"] if x.isdigit()}
    bare_found = 0
    bare_list = sorted(bare_ids)
    for chunk_start in range(0, len(bare_list), 5000):
        chunk = bare_list[chunk_start : chunk_start + 5000]
        bare_found += BareLead.objects.filter(pk__in=chunk).count()
    out["bare"] = {
        "rows": BareLead.objects.count(),
        "answered": len(answered["bare"]),
        "unique_answered": len(bare_ids),
        "missing": len(bare_ids) - bare_found,
        "not_approved": 0,
    }
    connection.close()
    return out


# --- server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = s.recv(64).decode("latin-1")
        return int(head.split(" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        # gunicorn runs in its own session: signal its process group (master + workers).
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


class CpuMeter:
    """CPU seconds used by the gunicorn workers and by the PostgreSQL backends serving the
    bench database (persistent connections): a figure per request that other load on
    the machine disturbs much less than throughput does. Linux /proc only."""

    def __init__(self, server: Server, db_url: str) -> None:
        self.server = server
        self.db_url = db_url

    def _pg_pids(self) -> list[int]:
        import psycopg

        try:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND pid <> pg_backend_pid()",
                    [BENCH_DB],
                ).fetchall()
        except psycopg.Error:
            return []
        return [r[0] for r in rows]

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {
            "app": {p: _cpu_seconds(p) for p in _children(self.server.proc.pid)},
            "db": {p: _cpu_seconds(p) for p in self._pg_pids()},
        }

    @staticmethod
    def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict:
        return {
            k: sum(cpu - before[k].get(pid, 0.0) for pid, cpu in after[k].items()) for k in after
        }


def start_gunicorn(env: dict[str, str], workers: int, app: str = "config.wsgi") -> Server:
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{NAME}-gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                app,
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "--no-control-socket",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 45
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if http_get_status(port, "/healthz") == 200:
                return server
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    server.stop()
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"gunicorn did not become healthy on port {port}; log tail:\n{tail}")


# --- load generators --------------------------------------------------------------------------

WRK_LUA = r"""
-- One unique lead per request: index = base + tid + nthreads * counter.
local AREAS = {"202", "212", "310", "415", "617", "713"}
local EXCH = {"456", "234", "321", "789", "867"}
base = tonumber(os.getenv("BENCH_BASE") or "0")
nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local key = os.getenv("BENCH_KEY") or ""
tid = 0
counter = 0
created = 0
other = 0
ids = {}
samples = {}
local threads = {}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then wrk.headers["Authorization"] = "Api-Key " .. key end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function request()
  local i = base + tid + nthreads * counter
  counter = counter + 1
  local rest = math.floor(i / 6)
  local phone = "+1" .. AREAS[(i % 6) + 1] .. EXCH[(math.floor(rest / 10000) % 5) + 1]
    .. string.format("%04d", rest % 10000)
  local body = string.format(
    '{"g_first_name":"Bench","g_last_name":"Load","g_email":"bench%d@example.com",'
    .. '"g_phone":"%s","g_zip":"20500"}', i, phone)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
    ids[created] = string.match(body, '"id":%s*"?([%w]+)') or ""
  else
    other = other + 1
    if #samples < 3 then samples[#samples + 1] = status .. " " .. string.sub(body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local sent, made, others, maxc = 0, 0, 0, 0
  local f = io.open(os.getenv("BENCH_IDS_FILE"), "w")
  for _, t in ipairs(threads) do
    local c = t:get("counter")
    sent = sent + c
    if c > maxc then maxc = c end
    made = made + t:get("created")
    others = others + t:get("other")
    for _, id in ipairs(t:get("ids")) do f:write(id, "\n") end
    for _, s in ipairs(t:get("samples")) do io.stderr:write("non-201: ", s, "\n") end
  end
  f:close()
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_s":%.6f,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,'
    .. '"sent":%d,"max_counter":%d,"created":%d,"other":%d}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, sent, maxc, made, others))
end
"""


@dataclass
class Run:
    label: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    created: int
    sent: int
    errors: int
    detail: dict = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    app_cpu_ms: float = 0.0  # gunicorn workers' CPU per answered request
    db_cpu_ms: float = 0.0  # PostgreSQL backends' CPU per answered request


def ensure_wrk() -> str | None:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("wrk not found: installing it with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "wrk"]
        try:
            ok = subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode == 0
            if not ok:
                subprocess.run(
                    ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=60
                )
                subprocess.run(cmd, env=env, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            say("apt-get took too long")
    return shutil.which("wrk")


class Loader:
    """Runs one timed load against one path; keeps the index of the next unique lead."""

    def __init__(self, port: int, threads: int, workdir: Path, use_wrk: bool = True) -> None:
        self.port = port
        self.threads = threads
        self.workdir = workdir
        self.next_index = 0
        self.wrk = ensure_wrk() if use_wrk else None
        self.lua = workdir / "intake.lua"
        self.lua.write_text(WRK_LUA)
        if self.wrk is None:
            why = "wrk is not available and cannot be installed" if use_wrk else "--loader python"
            say(
                f"WARNING: {why}: using the built-in Python asyncio load generator (it needs "
                "more CPU than wrk, on the same cores as the server: its figures are not "
                "comparable with wrk's)"
            )

    @property
    def tool(self) -> str:
        return "wrk" if self.wrk else "python-asyncio"

    def run(self, label: str, path: str, key: str, connections: int, seconds: float) -> Run:
        if self.next_index + 50_000 > CAPACITY:  # a wrap would make duplicates
            raise SystemExit("out of unique phone numbers: lower --duration or --rounds")
        if self.wrk:
            run = self._run_wrk(label, path, key, connections, seconds)
        else:
            run = asyncio.run(self._run_python(label, path, key, connections, seconds))
        return run

    def _run_wrk(self, label: str, path: str, key: str, connections: int, seconds: float) -> Run:
        ids_file = self.workdir / f"ids-{label}-{self.next_index}.txt"
        threads = min(self.threads, connections)
        env = {
            **os.environ,
            "BENCH_BASE": str(self.next_index),
            "BENCH_THREADS": str(threads),
            "BENCH_KEY": key,
            "BENCH_IDS_FILE": str(ids_file),
        }
        cmd = [
            self.wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(self.lua),
            f"http://127.0.0.1:{self.port}{path}",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
        with (LOG_DIR / f"{NAME}-wrk.log").open("a") as log:
            log.write(f"### {label} c={connections}\n{proc.stdout}{proc.stderr}\n")
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        data = json.loads(line.split(" ", 1)[1])
        ids = [x for x in ids_file.read_text().splitlines() if x]
        self.next_index += threads * (data["max_counter"] + 1)
        socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
        return Run(
            label=label,
            connections=connections,
            rps=data["created"] / data["duration_s"],
            p50_ms=data["p50_ms"],
            p90_ms=data["p90_ms"],
            p99_ms=data["p99_ms"],
            max_ms=data["max_ms"],
            created=data["created"],
            sent=data["sent"],
            errors=socket_errors + data["other"],
            detail=data,
            ids=ids,
        )

    async def _run_python(
        self, label: str, path: str, key: str, connections: int, seconds: float
    ) -> Run:
        latencies: list[float] = []
        ids: list[str] = []
        counts = {"sent": 0, "other": 0, "socket": 0}
        auth = f"Authorization: Api-Key {key}\r\n" if key else ""
        start = time.monotonic()
        stop_at = start + seconds

        async def one() -> None:
            index = self.next_index
            self.next_index += 1
            body = body_for(index)
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            counts["sent"] += 1
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(head + body)
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), timeout=5)
                writer.close()
            except (OSError, TimeoutError):
                counts["socket"] += 1
                return
            latencies.append(time.monotonic() - t0)
            status_line, _, rest = raw.partition(b"\r\n")
            payload = rest.partition(b"\r\n\r\n")[2]
            if status_line.split(b" ")[1:2] == [b"201"]:
                try:
                    ids.append(str(json.loads(payload)["id"]))
                except (ValueError, KeyError):
                    ids.append("")
            else:
                counts["other"] += 1

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await one()

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - start
        latencies.sort()

        def pct(p: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e3

        return Run(
            label=label,
            connections=connections,
            rps=len(ids) / elapsed,
            p50_ms=pct(50),
            p90_ms=pct(90),
            p99_ms=pct(99),
            max_ms=latencies[-1] * 1e3 if latencies else 0.0,
            created=len(ids),
            sent=counts["sent"],
            errors=counts["socket"] + counts["other"],
            detail=counts,
            ids=ids,
        )


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections",
        type=int,
        default=3,
        help="concurrent connections (3 = one per sync worker: more only queue)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--warmup", type=float, default=3, help="seconds per endpoint")
    parser.add_argument("--duration", type=float, default=8, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="bare/ours pairs; medians taken")
    parser.add_argument(
        "--loader",
        choices=["wrk", "python"],
        default="wrk",
        help="load generator (python: the built-in fallback used when wrk cannot be had)",
    )
    parser.add_argument(
        "--app",
        default="config.wsgi",
        help="WSGI app for gunicorn (to measure a candidate change; on PYTHONPATH)",
    )
    args = parser.parse_args()
    t_start = time.monotonic()

    url = bench_database_url()
    ensure_database(url)
    extra = [a for a in os.environ.get("EXTRA_INSTALLED_APPS", "").split(",") if a]
    env_updates = {
        "DATABASE_URL": url,
        "EXTRA_INSTALLED_APPS": ",".join([*extra, "bench.bareapp"]),
        "ROOT_URLCONF": "bench.urls",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        # Production-like logging (JSON lines), to var/bench/intake-gunicorn.log.
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    os.environ.update(env_updates)
    key = prepare_django()
    say(f"database {BENCH_DB} migrated and emptied; bench workspace and key ready")

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    server = start_gunicorn(dict(os.environ), args.workers, args.app)
    (LOG_DIR / f"{NAME}-wrk.log").unlink(missing_ok=True)
    runs: dict[str, list[Run]] = {"bare": [], "ours": []}
    answered: dict[str, list[str]] = {"bare": [], "ours": []}
    sent = {"bare": 0, "ours": 0}
    warm_errors = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
            meter = CpuMeter(server, url)
            loader = Loader(server.port, args.threads, Path(tmp), use_wrk=args.loader == "wrk")
            c = args.connections
            say(
                f"gunicorn: {args.workers} sync workers on 127.0.0.1:{server.port}; "
                f"load: {loader.tool}, {c} connections"
                f"{f', {args.threads} threads' if loader.wrk else ''}; "
                f"warm-up {args.warmup:g} s, "
                f"then {args.rounds} x (bare, ours) x {args.duration:g} s"
            )
            plan = [("bare", BARE_PATH, ""), ("ours", OURS_PATH, key)]
            for which, path, k in plan:
                warm = loader.run(f"warmup-{which}", path, k, c, args.warmup)
                answered[which] += warm.ids
                sent[which] += warm.sent
                warm_errors += warm.errors
            for r in range(args.rounds):
                for which, path, k in plan:
                    before = meter.snapshot()
                    run = loader.run(f"{which}-{r + 1}", path, k, c, args.duration)
                    used = meter.used(before, meter.snapshot())
                    answered_n = max(1, run.created + run.detail.get("other", 0))
                    run.app_cpu_ms = used["app"] / answered_n * 1e3
                    run.db_cpu_ms = used["db"] / answered_n * 1e3
                    runs[which].append(run)
                    answered[which] += run.ids
                    sent[which] += run.sent
                    say(
                        f"  round {r + 1} {which:4}: {run.rps:7.1f} leads/s  "
                        f"p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms  "
                        f"errors {run.errors}  CPU/lead: app {run.app_cpu_ms:4.1f} ms, "
                        f"db {run.db_cpu_ms:4.1f} ms"
                    )
    finally:
        server.stop()

    check = db_check(answered)
    med = {
        w: {
            "rps": statistics.median(r.rps for r in runs[w]),
            "p50": statistics.median(r.p50_ms for r in runs[w]),
            "p99": statistics.median(r.p99_ms for r in runs[w]),
            "p99_max": max(r.p99_ms for r in runs[w]),
            "errors": sum(r.errors for r in runs[w]),
            "app_cpu": statistics.median(r.app_cpu_ms for r in runs[w]),
            "db_cpu": statistics.median(r.db_cpu_ms for r in runs[w]),
        }
        for w in ("bare", "ours")
    }
    ratio = med["ours"]["rps"] / med["bare"]["rps"] if med["bare"]["rps"] else 0.0
    integrity_problems = []
    for w in ("bare", "ours"):
        ck = check[w]
        extra_rows = ck["rows"] - ck["unique_answered"]
        unanswered = sent[w] - ck["answered"]
        if ck["missing"] or ck["unique_answered"] != ck["answered"]:
            integrity_problems.append(f"{w}: {ck['missing']} answered ids missing or repeated")
        if not 0 <= extra_rows <= unanswered:
            integrity_problems.append(
                f"{w}: {extra_rows} rows beyond the 201 answers, {unanswered} unanswered"
            )
        if ck["not_approved"]:
            integrity_problems.append(f"{w}: {ck['not_approved']} leads not approved")

    say("")
    say(
        f"{'endpoint':10} {'leads/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max p99':>8} "
        f"{'errors':>7} {'app CPU ms/lead':>16} {'db CPU ms/lead':>15}"
    )
    for w in ("bare", "ours"):
        m = med[w]
        say(
            f"{w:10} {m['rps']:9.1f} {m['p50']:8.1f} {m['p99']:8.1f} "
            f"{m['p99_max']:8.1f} {m['errors']:7d} {m['app_cpu']:16.2f} {m['db_cpu']:15.2f}"
        )
    say(f"(medians of {args.rounds} rounds; concurrency {args.connections}; {loader.tool})")
    for w in ("bare", "ours"):
        ck = check[w]
        say(
            f"db check {w}: {ck['answered']} answered 201, {ck['rows']} rows, "
            f"{ck['missing']} answered ids missing, "
            f"{ck['rows'] - ck['unique_answered']} rows from requests in flight when the "
            f"load stopped (<= {sent[w] - ck['answered']} unanswered)"
        )
    if warm_errors:
        say(f"warm-up errors: {warm_errors}")
    for problem in integrity_problems:
        say(f"PROBLEM: {problem}")
    errors = med["ours"]["errors"] + med["bare"]["errors"] + warm_errors
    passed = (
        ratio >= TARGET_RATIO
        and med["ours"]["p99"] <= P99_LIMIT_MS
        and errors == 0
        and not integrity_problems
    )
    say(f"elapsed {time.monotonic() - t_start:.0f} s")
    say(f"RESULT {NAME} ratio={ratio:.2f} target={TARGET_RATIO} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:
        code = None
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        print(exc.code, file=sys.stderr, flush=True)
        code = None
    if code is None:  # setup failed or interrupted: still end with the one RESULT line
        print(f"RESULT {NAME} ratio=0.00 target={TARGET_RATIO} FAIL", flush=True)
        code = 1
    sys.exit(code)
