"""`make bench-integration`: one integration request, rendered and sent to a local sink,
against a bare `requests.Session().post()` loop to the same sink, in the same run.

The issue's measure (its acceptance: "render + send to a local sink against a bare
requests.Session loop") is **render + send**: the request step's two pure functions and
its transport (DESIGN.md, "a request step is two pure functions and a transport") on a
realistic step (JSON body of 12 templated fields with filters, a header, a bearer secret
stored encrypted, a rule, two captures): the step's spec from the per-process cache,
``build_request`` (render, nest, serialise, auth), ``integrations.outbound.send`` (SSRF
guard, total deadline, pooled keep-alive connection, capped read) and ``read_response``
(rule, captures), with the lead's template context built per call. That is the RESULT.

The **whole call** is measured in the same rounds and printed beside it, with its own
ratio and no target: ``integrations.services.request_run(step=..., context=
lead_context(lead), lead=lead)`` on the enabled integration, which adds what the product
guarantees around every call: the integration's status and configuration version read
first (an operator's change applies to the very next call) and its RequestLog row
written before it returns (secrets masked; DESIGN.md: every outbound call is logged),
plus its production log line (JSON, to ``var/bench/integration-app.log``). The analysis
after the rounds shows where that time goes.

Bare is what a hand-written client would do: one ``requests.Session`` posting the same
body with the same headers and parsing the JSON answer. All sides talk to the same sink
(a small asyncio HTTP/1.1 server with keep-alive in a subprocess,
``integration_sink.py``), sequentially. Each round makes N calls per side, the sides
alternating in blocks of 100 calls (so a burst of load elsewhere on this shared machine
falls on every side); a round's ratio is its bare time over its our time, and the
result is the median of the rounds' ratios.

Ends with exactly ``RESULT integration ratio=<bare time/render+send time> target=0.75
PASS|FAIL`` (exit code 0/1). PASS needs the ratio, zero errors on every side, every
answer read as accepted with its id captured, and one log row per whole call.

Uses its own PostgreSQL database ``leadrelay_bench_integration`` (created when missing,
next to the one in DATABASE_URL, migrated, log table emptied each run). Run it through
``make bench-integration`` (it sources scripts/test-env.sh, which also allows loopback
for the outbound guard).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "integration"
TARGET_RATIO = 0.75
BENCH_DB = "leadrelay_bench_integration"
WORKSPACE_SLUG = "bench-integration"
LOG_DIR = ROOT / "var" / "bench"
SECRET = "bench-bearer-token-0123456789abcdef"  # noqa: S105 - a fake token, local sink
SINK_PATH = "/v1/leads"
STRUCTURE_FIELDS = ["g_first_name", "g_last_name", "g_email", "g_phone", "g_zip", "g_state"]
LEAD_DATA = {
    "g_first_name": " Jane ",
    "g_last_name": "Doe",
    "g_email": "Jane.Doe@Example.com",
    "g_phone": "+12024561111",
    "g_zip": "20500",
    "g_state": "DC",
}
# A realistic buyer body: nesting, filters, a hash, a combined value, defaults, a date.
BODY_FIELDS = [
    ("lead.id", "{{PCID}}"),
    ("lead.source", '{{PARTNER_ID | default:"0"}}'),
    ("lead.sub1", '{{SUB1 | default:"none"}}'),
    ("contact.first_name", "{{g_first_name | trim}}"),
    ("contact.last_name", "{{g_last_name | upper}}"),
    ("contact.full_name", '{{g_first_name | trim | combine:" ",g_last_name}}'),
    ("contact.email", "{{g_email | lower}}"),
    ("contact.email_sha256", "{{g_email | lower | sha256}}"),
    ("contact.phone", "{{g_phone | digits}}"),
    ("address.zip", "{{g_zip}}"),
    ("address.state", '{{g_state | default:"DC" | upper}}'),
    ("consent.date", '{{CREATED_AT | format_date:"%Y-%m-%d"}}'),
]
PHASES = ["config", "build", "send", "read", "log write", "rest"]
PHASE_NOTES = {
    "config": "status/version SELECT + the step's spec from the per-process cache",
    "build": "build_request: render 12 templates, nest, JSON, auth header",
    "send": "outbound.send: guard, libcurl exchange (deadline, keep-alive), capped read, log",
    "read": "read_response: parse JSON, rule, 2 captures, trace",
    "log write": "masking + RequestLog INSERT (autocommit, no wait for the WAL flush)",
    "rest": "lead_context + the call's one log line + call overhead",
}


def say(msg: str = "") -> None:
    print(msg, flush=True)


# --- database and fixtures -----------------------------------------------------------------


def bench_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit(
            f"bench-{NAME} needs PostgreSQL (DATABASE_URL is {url or 'unset'}); "
            f"run it through `make bench-{NAME}`."
        )
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def ensure_database(url: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            say(f"creating database {BENCH_DB}")
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')


def prepare_django(sink_url: str) -> tuple[Any, Any]:
    """Migrate, empty the log and lead tables, make the workspace, a lead and the
    integration with its step. Returns (step, lead) as a worker would load them."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from integrations import services
    from integrations.models import (
        Integration,
        RequestBodyField,
        RequestHeader,
        RequestStep,
        ResponseCapture,
        ResponseRule,
    )
    from integrations.templating import check_template
    from structures import services as structure_services
    from structures.models import Field, Lead, Partner, Structure, StructureField, Workspace

    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE integrations_requestlog, structures_lead RESTART IDENTITY CASCADE")
    for name, value in BODY_FIELDS:
        if problems := check_template(value, None):
            raise SystemExit(f"bench template {name}={value!r}: {problems[0].message}")
    with transaction.atomic():
        workspace = Workspace.objects.filter(slug=WORKSPACE_SLUG).first()
        if workspace is None:
            workspace = structure_services.workspace_create(
                workspace=Workspace(
                    name="Bench integration",
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
                StructureField(structure=structure, field=globals_[name], position=i)
                for i, name in enumerate(STRUCTURE_FIELDS)
            )
        partner, _ = Partner.objects.get_or_create(
            workspace=workspace, name="Bench Publisher", defaults={"default_structure": structure}
        )
        lead = Lead.objects.create(
            workspace=workspace, structure=structure, partner=partner, source="api",
            status="approved", data=LEAD_DATA, sub1="campaign-7", ip="203.0.113.7",
        )  # fmt: skip
        Integration.objects.filter(workspace=workspace).delete()
        integration = services.integration_create(
            workspace_id=workspace.pk, name="Bench buyer", category="buyer", status="enabled",
            url=sink_url, method="POST", body_format="json",
        )  # fmt: skip
        step = integration.requests.get()
        step.auth_type = "bearer"
        step.timeout_seconds = 10
        step.save()
        services.request_secret_set(step=step, secret=SECRET)
        RequestHeader.objects.create(request=step, name="X-Source", value="leadrelay")
        RequestBodyField.objects.bulk_create(
            RequestBodyField(request=step, position=i, name=name, value=value)
            for i, (name, value) in enumerate(BODY_FIELDS)
        )
        ResponseRule.objects.create(
            request=step, key="status", operator="equals", value="accepted", outcome="accepted"
        )
        ResponseCapture.objects.create(request=step, key="id", target="buyer_lead_id")
        ResponseCapture.objects.create(
            request=step, key="status", target="variable", target_name="buyer_status"
        )
    # As a worker loads them: the step with its integration, the lead with what
    # lead_context reads.
    step = RequestStep.objects.select_related("integration").get(pk=step.pk)
    lead = Lead.objects.select_related("partner", "structure", "workspace").get(pk=lead.pk)
    return step, lead


def route_logs_to_file() -> Path:
    """Production log lines (JSON, INFO) go to a file, as a worker's would, not here."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{NAME}-app.log"
    stream = path.open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    return path


# --- the sink ------------------------------------------------------------------------------


@dataclass
class Sink:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SINK_PATH}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def start_sink() -> Sink:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "integration_sink.py")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the sink did not start: {line!r}")
    return Sink(proc, int(line.split()[1]))


# --- the two loops ---------------------------------------------------------------------------


@dataclass
class Tally:
    calls: int = 0
    errors: int = 0
    wrong: int = 0  # answered, but not read as accepted with the id captured


def ours_loop(step: Any, lead: Any, n: int, tally: Tally) -> float:
    """Seconds for n calls of the real path."""
    from integrations.context import lead_context
    from integrations.services import request_run

    start = time.perf_counter()
    for _ in range(n):
        run = request_run(step=step, context=lead_context(lead), lead=lead)
        tally.calls += 1
        if run.result is None or not run.result.ok or run.result.status_code != 200:
            tally.errors += 1
        elif run.outcome.kind != "accepted" or run.outcome.buyer_lead_id != "x":
            tally.wrong += 1
    return time.perf_counter() - start


def render_send_loop(step: Any, lead: Any, n: int, tally: Tally) -> float:
    """Seconds for n calls of render + send: the step's spec (per-process cache, at the
    version read before the rounds), the lead's context, build, send, read."""
    from integrations import outbound, step_cache
    from integrations.building import build_request
    from integrations.context import lead_context
    from integrations.reading import read_response

    version = step_cache.integration_state(step.integration_id)[1]
    start = time.perf_counter()
    for _ in range(n):
        spec = step_cache.spec_cached(step, version=version)
        context = lead_context(lead)
        built = build_request(spec, {**context, "SECRET": spec.auth_secret})
        result = outbound.send(built.to_outbound())
        outcome = read_response(spec, built, result, context)
        tally.calls += 1
        if not result.ok or result.status_code != 200:
            tally.errors += 1
        elif outcome.kind != "accepted" or outcome.buyer_lead_id != "x":
            tally.wrong += 1
    return time.perf_counter() - start


def bare_loop(
    session: Any, url: str, body: dict, headers: dict[str, str], n: int, tally: Tally
) -> float:
    """Seconds for n posts of the same body with a bare requests.Session."""
    start = time.perf_counter()
    for _ in range(n):
        response = session.post(url, json=body, headers=headers, timeout=10)
        tally.calls += 1
        if response.status_code != 200:
            tally.errors += 1
        elif response.json().get("id") != "x":
            tally.wrong += 1
    return time.perf_counter() - start


def connections_opened(session: Any) -> int:
    """New connections urllib3 made for a requests session (None: outbound's libcurl
    handle of this thread)."""
    from integrations import outbound

    if session is None:
        return outbound.connections_opened()
    pools = session.get_adapter("http://").poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())


def breakdown(step: Any, lead: Any, n: int) -> dict[str, float]:
    """Our call timed piece by piece: the body of request_run, phase by phase (ms/call).
    `_log` is the service's private log writer, called here so its cost stands alone."""
    from integrations import outbound, services
    from integrations.building import build_request
    from integrations.context import lead_context
    from integrations.reading import read_response

    totals = dict.fromkeys(PHASES, 0.0)
    clock = time.perf_counter
    whole = 0.0
    for _ in range(n):
        t0 = clock()
        context = lead_context(lead)
        t1 = clock()
        spec = services.step_spec(step)
        t2 = clock()
        built = build_request(spec, {**context, "SECRET": spec.auth_secret})
        t3 = clock()
        result = outbound.send(built.to_outbound(), log_line=False)
        t4 = clock()
        outcome = read_response(spec, built, result, context)
        t5 = clock()
        services._log(step, lead, "send", built, result, outcome, True)
        t6 = clock()
        services.log.debug(
            "integration.request", integration_id=step.integration_id, request_id=step.pk,
            sent=True, outcome=outcome.kind, ms=result.elapsed_ms,
            **outbound.log_fields(result),
        )  # fmt: skip
        t7 = clock()
        totals["rest"] += (t1 - t0) + (t7 - t6)
        totals["config"] += t2 - t1
        totals["build"] += t3 - t2
        totals["send"] += t4 - t3
        totals["read"] += t5 - t4
        totals["log write"] += t6 - t5
        whole += t7 - t0
    out = {phase: totals[phase] / n * 1e3 for phase in PHASES}
    out["total"] = whole / n * 1e3
    return out


def statements_per_call(step: Any, lead: Any) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from integrations.context import lead_context
    from integrations.services import request_run

    with CaptureQueriesContext(connection) as captured:
        request_run(step=step, context=lead_context(lead), lead=lead)
    return [q["sql"] for q in captured.captured_queries]


def profile(step: Any, lead: Any, n: int, top: int = 16) -> str:
    """cProfile of n calls of ours: our functions by cumulative time (what to look at),
    written in full, with the top functions by own time, to var/bench/."""
    from integrations.context import lead_context
    from integrations.services import request_run

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        request_run(step=step, context=lead_context(lead), lead=lead)
    profiler.disable()
    ours = io.StringIO()
    pstats.Stats(profiler, stream=ours).sort_stats("cumtime").print_stats("/integrations/", top)
    full = io.StringIO()
    pstats.Stats(profiler, stream=full).sort_stats("tottime").print_stats(40)
    (LOG_DIR / f"{NAME}-profile.txt").write_text(ours.getvalue() + "\n" + full.getvalue())
    return ours.getvalue()


def commit_cost(step: Any, lead: Any, n: int = 500) -> tuple[float, float]:
    """ms per RequestLog INSERT in autocommit with synchronous_commit on, then off."""
    from django.db import connection

    from integrations.models import RequestLog

    def insert() -> None:
        RequestLog.objects.create(
            workspace_id=step.workspace_id, integration_id=step.integration_id,
            request_step=step, lead=lead, origin="bench", method="POST", url="http://x/",
            outcome="accepted",
        )  # fmt: skip

    figures = []
    for mode in ("on", "off"):
        with connection.cursor() as cursor:
            cursor.execute(f"SET synchronous_commit TO {mode}")
        start = time.perf_counter()
        for _ in range(n):
            insert()
        figures.append((time.perf_counter() - start) / n * 1e3)
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO DEFAULT")
    RequestLog.objects.filter(origin="bench").delete()
    return figures[0], figures[1]


def interleaved(
    step: Any,
    lead: Any,
    bare: Callable[[int], float],
    n: int,
    block: int,
    tallies: dict,
    sides: tuple[str, ...] = ("bare", "ours"),
) -> dict[str, float]:
    """Seconds for n calls per side, the sides alternating in blocks of `block` calls
    (the order rotates from block to block), so that a burst of load from elsewhere on
    this shared machine falls on every side rather than on one side's whole round.
    Sides: "bare", "ours" (the whole call), "render+send"."""
    loops = {
        "bare": bare,
        "ours": lambda k: ours_loop(step, lead, k, tallies["ours"]),
        "render+send": lambda k: render_send_loop(step, lead, k, tallies["render+send"]),
    }
    spent = dict.fromkeys(sides, 0.0)
    done = 0
    while done < n:
        k = min(block, n - done)
        turn = (done // block) % len(sides)
        for side in sides[turn:] + sides[:turn]:
            spent[side] += loops[side](k)
        done += k
    return spent


def candidate(
    step: Any,
    lead: Any,
    bare: Callable[[int], float],
    n: int,
    block: int,
    patches: list[Callable[[], Callable[[], None]]],
) -> tuple[float, float]:
    """(bare, ours) ms per call, interleaved, with prototype changes applied to ours
    (patched here, in this process only: no product code changes)."""
    undos = [patch() for patch in patches]
    try:
        tallies = {"ours": Tally()}
        ours_loop(step, lead, min(200, n), tallies["ours"])  # warm
        spent = interleaved(step, lead, bare, n, block, tallies)
        if tallies["ours"].errors or tallies["ours"].wrong:
            raise SystemExit(f"candidate broke the calls: {tallies['ours']}")
        return spent["bare"] / n * 1e3, spent["ours"] / n * 1e3
    finally:
        for undo in reversed(undos):
            undo()


def sync_commit() -> Callable[[], None]:
    """The log row committed synchronously, as before d7dcbfe (waits for the WAL flush)."""
    from integrations import services

    original = services._log_insert_own_sql_text
    services._log_insert_own_sql_text = services.log_insert_sql_text

    def undo() -> None:
        services._log_insert_own_sql_text = original

    return undo


def no_state_read() -> Callable[[], None]:
    """UNSAFE, for scale only: no status/version SELECT before the call (an operator's
    change would not apply to the next call). What the guarantee costs."""
    from integrations import step_cache

    original = step_cache.integration_state
    memo: dict[int, Any] = {}

    def remembered(integration_id: int) -> Any:
        if integration_id not in memo:
            memo[integration_id] = original(integration_id)
        return memo[integration_id]

    step_cache.integration_state = remembered

    def undo() -> None:
        step_cache.integration_state = original

    return undo


def no_log_row() -> Callable[[], None]:
    """UNSAFE, for scale only: the log row built and masked but never written."""
    from integrations import services

    original = services.log_write
    services.log_write = lambda entry: None

    def undo() -> None:
        services.log_write = original

    return undo


CANDIDATES: list[tuple[str, list[Callable[[], Callable[[], None]]]]] = [
    ("as is", []),
    ("log row committed synchronously (as before)", [sync_commit]),
    ("UNSAFE: no status/version read", [no_state_read]),
    ("UNSAFE: no log row written", [no_log_row]),
    ("UNSAFE: neither (HTTP, build, read only)", [no_state_read, no_log_row]),
]


def orm_against_raw(step: Any, n: int = 500) -> tuple[float, float, float]:
    """ms per load of the body fields: through the ORM (wall, CPU) and as raw SQL (wall)."""
    from django.db import connection

    sql, params = step.body_fields.all().query.sql_with_params()
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        list(step.body_fields.all())
    orm = (time.perf_counter() - start) / n * 1e3
    orm_cpu = (time.thread_time() - cpu) / n * 1e3
    with connection.cursor() as cursor:
        start = time.perf_counter()
        for _ in range(n):
            cursor.execute(sql, params)
            cursor.fetchall()
        raw = (time.perf_counter() - start) / n * 1e3
    return orm, orm_cpu, raw


def log_line_cost(n: int = 2000) -> float:
    """ms per production log line (structlog, JSON, to the file handler)."""
    from integrations import services

    start = time.perf_counter()
    for i in range(n):
        services.log.info("bench.line", integration_id=1, request_id=1, sent=True, n=i)
    return (time.perf_counter() - start) / n * 1e3


# --- main ----------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="bare/ours pairs; medians taken")
    parser.add_argument("--warmup", type=int, default=200, help="calls per side before rounds")
    parser.add_argument(
        "--block", type=int, default=100, help="calls per side before the sides alternate"
    )
    parser.add_argument(
        "--no-analysis",
        action="store_true",
        help="skip the breakdown, profile and candidates (ratio only)",
    )
    args = parser.parse_args()
    t_start = time.monotonic()

    url = bench_database_url()
    ensure_database(url)
    os.environ.update(
        {
            "DATABASE_URL": url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "false",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    sink = start_sink()
    try:
        return measure(args, sink, t_start)
    finally:
        sink.stop()


def measure(args: argparse.Namespace, sink: Sink, t_start: float) -> int:
    step, lead = prepare_django(sink.url)
    log_path = route_logs_to_file()
    import requests  # noqa: TID251 - the bare baseline is a plain requests client

    from integrations import services
    from integrations.building import build_request
    from integrations.context import lead_context
    from integrations.models import RequestLog

    built = build_request(services.step_spec(step), lead_context(lead))
    if built.warnings:
        raise SystemExit(f"the bench step renders with warnings: {built.warnings}")
    body = json.loads(built.body or b"{}")
    headers = {"Authorization": f"Bearer {SECRET}", "X-Source": "leadrelay"}
    session = requests.Session()
    say(f"machine: {machine()}; Python {sys.version.split()[0]}")
    say(
        f"database {BENCH_DB} migrated; sink on 127.0.0.1:{sink.port} (asyncio, keep-alive); "
        f"body {len(built.body or b'')} bytes, {len(BODY_FIELDS)} fields"
    )
    say(
        f"warm-up {args.warmup} calls per side, then {args.rounds} rounds of {args.calls} "
        f"calls per side, sequential, the sides alternating in blocks of {args.block}"
    )
    statements = statements_per_call(step, lead)

    sides = ("bare", "render+send", "ours")
    tallies = {side: Tally() for side in sides}

    def bare(k: int) -> float:
        return bare_loop(session, sink.url, body, headers, k, tallies["bare"])

    bare(args.warmup)
    render_send_loop(step, lead, args.warmup, tallies["render+send"])
    ours_loop(step, lead, args.warmup, tallies["ours"])
    per_call: dict[str, list[float]] = {side: [] for side in sides}
    ratios: dict[str, list[float]] = {"render+send": [], "ours": []}
    for r in range(args.rounds):
        spent = interleaved(step, lead, bare, args.calls, args.block, tallies, sides)
        for side in sides:
            per_call[side].append(spent[side] / args.calls * 1e3)
        for side in ratios:
            ratios[side].append(spent["bare"] / spent[side])
        say(
            f"  round {r + 1}: bare {per_call['bare'][-1]:6.3f} ms/call   render+send "
            f"{per_call['render+send'][-1]:6.3f} (ratio {ratios['render+send'][-1]:.2f})   "
            f"whole call {per_call['ours'][-1]:6.3f} (ratio {ratios['ours'][-1]:.2f})"
        )
    medians = {side: statistics.median(per_call[side]) for side in sides}
    bare_ms = medians["bare"]
    ratio = statistics.median(ratios["render+send"])
    whole_ratio = statistics.median(ratios["ours"])
    logged = RequestLog.objects.filter(integration_id=step.integration_id).count()
    # One extra call of ours counted the statements. (Checked now: the analysis below
    # writes rows of its own.)
    expected_logs = tallies["ours"].calls + 1
    problems = []
    if logged != expected_logs:
        problems.append(f"{logged} log rows for {expected_logs} calls of ours")
    opened = {"bare": connections_opened(session), "ours": connections_opened(None)}
    if opened != {"bare": 1, "ours": 1}:
        problems.append(f"connections opened {opened}: keep-alive expected on both sides")

    say()
    say(f"{'side':12} {'ms/call':>8} {'calls/s':>8} {'errors':>7} {'not accepted':>13}")
    for side in sides:
        t, ms = tallies[side], medians[side]
        label = "whole call" if side == "ours" else side
        say(f"{label:12} {ms:8.3f} {1e3 / ms:8.0f} {t.errors:7d} {t.wrong:13d}")
    say(
        f"(medians of {args.rounds} rounds of {args.calls} calls per side, alternating in "
        f"blocks of {args.block}; ratio = median of the rounds' ratios; warm-up included "
        "in counts)"
    )
    say(
        f"render + send (the RESULT): ratio {ratio:.2f}; whole call (+ state read, log row, "
        f"no target): ratio {whole_ratio:.2f}"
    )
    say(f"log rows of ours: {logged} for {expected_logs} calls; app log lines in {log_path}")
    say(f"TCP connections opened to the sink: bare {opened['bare']}, ours {opened['ours']}")
    say(f"SQL statements per call of ours: {len(statements)}")
    for sql in statements:
        say(f"    {sql[:110]}")

    if not args.no_analysis:
        n = max(200, args.calls // 2)
        parts = breakdown(step, lead, n)
        say()
        say(f"where our time goes ({n} calls timed piece by piece, ms/call):")
        for phase in PHASES:
            share = parts[phase] / parts["total"] * 100
            say(f"  {phase:10} {parts[phase]:7.3f}  {share:5.1f} %  {PHASE_NOTES[phase]}")
        say(f"  {'total':10} {parts['total']:7.3f}  (bare, whole call: {bare_ms:.3f})")
        floor = parts["build"] + parts["read"]
        say(
            f"  even at zero cost for everything but rendering and reading, the ratio could be "
            f"at most {bare_ms / (bare_ms + floor):.2f}"
        )
        say()
        say("measured micro-figures:")
        on, off = commit_cost(step, lead)
        say(f"  RequestLog INSERT, autocommit: {on:.3f} ms synchronous_commit on, {off:.3f} off")
        orm, orm_cpu, raw = orm_against_raw(step)
        say(
            f"  one configuration SELECT (12 body fields): ORM {orm:.3f} ms ({orm_cpu:.3f} CPU), "
            f"same SQL on a raw cursor {raw:.3f} ms"
        )
        say(f"  one INFO log line (structlog JSON to a file): {log_line_cost():.3f} ms")
        say()
        m = max(500, args.calls // 2)
        say(
            f"candidates ({m} calls per side, interleaved with bare as above; prototypes "
            "patched in this process only), ms/call:"
        )
        for label, patches in CANDIDATES:
            bare_c, ours_c = candidate(step, lead, bare, m, args.block, patches)
            say(f"  {label:46} ours {ours_c:6.3f}  bare {bare_c:6.3f}  ratio {bare_c / ours_c:.2f}")
        say()
        k = min(500, args.calls)
        say(f"profile of {k} calls of ours (cProfile inflates times; compare the shares):")
        text = profile(step, lead, k)
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[start : start + 17]:
            say(f"  {line.replace(str(ROOT) + '/', '')[:130]}")
        say(f"  (full profile: var/bench/{NAME}-profile.txt)")

    errors = sum(t.errors + t.wrong for t in tallies.values())
    if errors:
        problems.append(f"{errors} calls failed or were not read as accepted")
    say()
    say(f"elapsed {time.monotonic() - t_start:.0f} s")
    for problem in problems:
        say(f"PROBLEM: {problem}")
    passed = ratio >= TARGET_RATIO and not problems
    say(f"RESULT {NAME} ratio={ratio:.2f} target={TARGET_RATIO} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
