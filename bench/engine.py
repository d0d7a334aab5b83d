"""`make bench-engine`: the scenario engine, cheap while waiting and thin per step.

Part 1, waiting: 10 000 runs of ``start -> wait 1 h -> request`` in the bench database.
The first ``--real`` runs are made through the engine itself (``run_start`` +
``run_drive``, which executes the start and the wait and leaves the request pending,
due in one hour); the rest are bulk-inserted as the very same rows (a waiting run, a
done start step, a done wait step, a pending request step due in one hour), because
10 000 real runs would not fit the 3-minute budget. Process RSS (``/proc/self/status``
VmRSS) and ``threading.active_count()`` are read after a warm-up, after the real runs,
after all 10 000 and while ``engine_sweep()`` passes run over them (none is due, so a
pass must send nothing). Checks: RSS growth across the real runs and across the sweeper
passes within 8 MB (the bulk insert's own growth is the bench's Python objects and is
only printed) (no per-run state kept in memory), thread count unchanged
(no thread per run), every pass sends nothing, the slowest pass <= 1 s.

Part 2, per step: a 5-step scenario (``start -> r1 -> r2 -> r3 -> r4 -> r5``, five
request elements to a fast local HTTP sink, ``bench/integration_sink.py``) started with
``run_start`` and driven with ``run_drive(run_id=..., deadline_seconds=...)`` in-process,
against the same five RequestSteps called directly with
``integrations.services.request_run`` (which already builds, sends, reads and logs: the
ratio isolates the engine's own overhead). N scenarios per round and side, alternating
direct, engine, direct, engine...; medians of the rounds.
``ratio = direct time / engine time``, target 0.8.

Ends with exactly ``RESULT engine ratio=<direct/engine> target=0.8 PASS|FAIL`` (exit code
0/1); PASS needs the ratio and every check of part 1, and every run succeeded with its
five requests accepted. Uses its own PostgreSQL database ``leadrelay_bench_engine``
(created when missing, migrated, scenario and log tables emptied each run).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import signal
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.integration import machine, start_sink  # noqa: E402

NAME = "engine"
TARGET_RATIO = 0.8
SWEEP_TARGET_S = 1.0
# "Flat": what 10 000 runs' worth of per-run state would never fit in.
RSS_GROWTH_LIMIT_MB = 8.0
BENCH_DB = "leadrelay_bench_engine"
WORKSPACE_SLUG = "bench-engine"
LOG_DIR = ROOT / "var" / "bench"
STEPS = 5
BLOCK = 10  # scenarios per side before switching sides within a round
LEAD_DATA = {
    "g_first_name": "Jane",
    "g_last_name": "Doe",
    "g_email": "jane.doe@example.com",
    "g_phone": "+12024561111",
    "g_zip": "20500",
}
BODY_FIELDS = [
    ("first_name", "{{g_first_name}}"),
    ("last_name", "{{g_last_name | upper}}"),
    ("email", "{{g_email | lower}}"),
    ("phone", "{{g_phone | digits}}"),
    ("zip", "{{g_zip}}"),
    ("step", "{{STEP}}"),
]


def say(msg: str = "") -> None:
    print(msg, flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


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


def route_logs_to_file() -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{NAME}-app.log"
    stream = path.open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    return path


def prepare_django(sink_url: str) -> dict[str, Any]:
    """Migrate, empty the run and log tables, make the workspace, a lead, the waiting
    scenario (start -> wait 1 h -> request) and the 5-step chain."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from integrations.models import (
        Connection,
        Element,
        Integration,
        RequestBodyField,
        RequestStep,
        ResponseCapture,
        ResponseRule,
    )
    from structures import services as structure_services
    from structures.models import Field, Lead, Partner, Structure, StructureField, Workspace

    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE integrations_runstep, integrations_scenariorun, integrations_requestlog, "
            "structures_lead RESTART IDENTITY CASCADE"
        )
    with transaction.atomic():
        ws = Workspace.objects.filter(slug=WORKSPACE_SLUG).first()
        if ws is None:
            ws = structure_services.workspace_create(
                workspace=Workspace(
                    name="Bench engine", slug=WORKSPACE_SLUG, timezone="America/New_York",
                    default_country="US",
                ),
                owner=None,
            )  # fmt: skip
        structure, created = Structure.objects.get_or_create(
            workspace=ws, slug="bench-form", defaults={"name": "Bench form"}
        )
        if created:
            globals_ = {f.name: f for f in Field.objects.filter(workspace__isnull=True)}
            StructureField.objects.bulk_create(
                StructureField(structure=structure, field=globals_[name], position=i)
                for i, name in enumerate(LEAD_DATA)
            )
        partner, _ = Partner.objects.get_or_create(
            workspace=ws, name="Bench Publisher", defaults={"default_structure": structure}
        )
        lead = Lead.objects.create(
            workspace=ws, structure=structure, partner=partner, source="api",
            status="approved", data=LEAD_DATA,
        )  # fmt: skip
        Connection.objects.filter(workspace=ws).delete()
        Element.objects.filter(workspace=ws, kind="request").delete()  # PROTECTs the steps
        Integration.objects.filter(workspace=ws).delete()

        def request_step(integration: Any, n: int) -> Any:
            step = RequestStep.objects.create(
                workspace=ws, integration=integration, url=sink_url, method="POST",
                body_format="json", timeout_seconds=10,
            )  # fmt: skip
            RequestBodyField.objects.bulk_create(
                RequestBodyField(
                    request=step, position=i, name=name, value=value.replace("{{STEP}}", str(n))
                )
                for i, (name, value) in enumerate(BODY_FIELDS)
            )
            ResponseRule.objects.create(
                request=step, key="status", operator="equals", value="accepted",
                outcome="accepted",
            )  # fmt: skip
            ResponseCapture.objects.create(request=step, key="id", target="buyer_lead_id")
            return step

        def element(integration: Any, kind: str, name: str, **kw: Any) -> Any:
            return Element.objects.create(
                workspace=ws, integration=integration, kind=kind, name=name, **kw
            )

        def link(integration: Any, a: Any, b: Any) -> None:
            Connection.objects.create(
                workspace=ws, integration=integration, from_element=a, to_element=b
            )

        # The waiting scenario.
        waiting = Integration.objects.create(workspace=ws, name="Bench waiting", status="enabled")
        w_start = element(waiting, "start", "start")
        w_wait = element(waiting, "wait", "wait 1 h", config={"mode": "delay", "seconds": 3600})
        w_req = element(waiting, "request", "request", request_step=request_step(waiting, 0))
        link(waiting, w_start, w_wait)
        link(waiting, w_wait, w_req)

        # The 5-step chain.
        chain = Integration.objects.create(workspace=ws, name="Bench chain", status="enabled")
        previous = element(chain, "start", "start")
        steps = []
        for n in range(1, STEPS + 1):
            step = request_step(chain, n)
            steps.append(step)
            el = element(chain, "request", f"r{n}", request_step=step, position=n)
            link(chain, previous, el)
            previous = el

    lead = Lead.objects.select_related("partner", "structure", "workspace").get(pk=lead.pk)
    steps = [RequestStep.objects.select_related("integration").get(pk=s.pk) for s in steps]
    return {
        "workspace": ws,
        "lead": lead,
        "waiting": waiting,
        "waiting_elements": (w_start, w_wait, w_req),
        "chain": Integration.objects.get(pk=chain.pk),
        "steps": steps,
    }


# --- part 1: waiting runs --------------------------------------------------------------------


def real_waiting_runs(fx: dict[str, Any], n: int) -> None:
    from integrations.engine.services import run_drive, run_start

    for _ in range(n):
        run = run_start(integration=fx["waiting"], lead=fx["lead"])
        run_drive(run_id=run.pk, deadline_seconds=5)


def bulk_waiting_runs(fx: dict[str, Any], n: int, batch: int = 500) -> None:
    """The rows the engine leaves for a run waiting on its 1 h wait, inserted in bulk."""
    from django.db import transaction
    from django.utils import timezone

    from integrations.models import RunStep, ScenarioRun

    ws_id = fx["workspace"].pk
    integration, lead = fx["waiting"], fx["lead"]
    start, wait, req = fx["waiting_elements"]
    passed = {"kind": "", "reason": "", "captured": {}}
    done = 0
    while done < n:
        size = min(batch, n - done)
        now = timezone.now()
        due = now + timedelta(hours=1)
        with transaction.atomic():
            runs = ScenarioRun.objects.bulk_create(
                ScenarioRun(
                    workspace_id=ws_id,
                    integration=integration,
                    lead=lead,
                    status=ScenarioRun.Status.WAITING,
                )  # fmt: skip
                for _ in range(size)
            )
            starts = RunStep.objects.bulk_create(
                RunStep(
                    workspace_id=ws_id,
                    run=r,
                    element=start,
                    status="done",
                    due_at=now,
                    claimed_at=now,
                    started_at=now,
                    finished_at=now,
                    duration_ms=0,
                    output={"outcome": passed},
                )  # fmt: skip
                for r in runs
            )
            waits = RunStep.objects.bulk_create(
                RunStep(
                    workspace_id=ws_id,
                    run=r,
                    element=wait,
                    parent_step=s,
                    status="done",
                    due_at=now,
                    enqueued_at=now,
                    claimed_at=now,
                    started_at=now,
                    finished_at=now,
                    duration_ms=0,
                    input={"outcome": passed},
                    output={"outcome": passed},
                )  # fmt: skip
                for r, s in zip(runs, starts, strict=True)
            )
            RunStep.objects.bulk_create(
                RunStep(
                    workspace_id=ws_id,
                    run=r,
                    element=req,
                    parent_step=w,
                    status="pending",
                    due_at=due,
                    input={"outcome": passed},
                )  # fmt: skip
                for r, w in zip(runs, waits, strict=True)
            )
        done += size


def waiting_part(fx: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], dict]:
    import gc

    from django.db import connection

    from integrations.engine.services import engine_sweep
    from integrations.models import RunStep, ScenarioRun

    problems: list[str] = []
    say(f"part 1: {args.runs} waiting runs (start -> wait 1 h -> request)")
    real_waiting_runs(fx, args.warm)  # imports, caches, connection: not per-run state
    gc.collect()
    rss0, threads0 = rss_mb(), threading.active_count()
    t0 = time.perf_counter()
    real_waiting_runs(fx, args.real)
    real_s = time.perf_counter() - t0
    gc.collect()
    rss1, threads1 = rss_mb(), threading.active_count()
    t0 = time.perf_counter()
    bulk_waiting_runs(fx, args.runs - args.warm - args.real)
    bulk_s = time.perf_counter() - t0
    gc.collect()
    rss2, threads2 = rss_mb(), threading.active_count()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE integrations_runstep")
    waiting = ScenarioRun.objects.filter(status="waiting").count()
    pending = RunStep.objects.filter(status="pending").count()
    say(
        f"  {args.warm} warm-up + {args.real} runs through run_start + run_drive "
        f"({real_s / max(args.real, 1) * 1e3:.2f} ms/run), {args.runs - args.warm - args.real} "
        f"bulk-inserted as the same rows ({bulk_s:.1f} s)"
    )
    say(f"  in the database: {waiting} runs waiting, {pending} steps pending (due in 1 h)")
    if waiting != args.runs or pending != args.runs:
        problems.append(f"{waiting} waiting runs / {pending} pending steps, not {args.runs}")

    passes: list[float] = []
    sent = 0
    rss_sweep: list[float] = []
    threads_sweep: list[int] = []
    for _ in range(args.sweeps):
        t0 = time.perf_counter()
        sent += engine_sweep()
        passes.append(time.perf_counter() - t0)
        rss_sweep.append(rss_mb())
        threads_sweep.append(threading.active_count())
    gc.collect()
    rss3 = rss_mb()
    real_growth = rss1 - rss0
    total_growth = rss2 - rss0
    sweep_growth = max(rss_sweep) - rss2
    say(
        f"  RSS: {rss0:.1f} MB after warm-up, {rss1:.1f} after {args.real} engine runs "
        f"({real_growth:+.1f}), {rss2:.1f} after all {args.runs} ({total_growth:+.1f}), "
        f"max {max(rss_sweep):.1f} during {args.sweeps} sweeper passes ({sweep_growth:+.1f}), "
        f"{rss3:.1f} after"
    )
    say(
        f"  threads: {threads0} after warm-up, {threads1} after the engine runs, {threads2} "
        f"after all, {min(threads_sweep)}..{max(threads_sweep)} during the sweeps"
    )
    first, median, worst = passes[0] * 1e3, statistics.median(passes) * 1e3, max(passes) * 1e3
    say(
        f"  engine_sweep() over {args.runs} waiting runs, none due: first {first:.2f} ms, "
        f"median {median:.2f} ms, slowest {worst:.2f} ms ({args.sweeps} passes); "
        f"tasks sent {sent}"
    )
    checks = {
        f"memory flat while the engine makes {args.real} waiting runs ({real_growth:+.1f} MB "
        f"<= {RSS_GROWTH_LIMIT_MB}; the bench's own bulk insert: {total_growth - real_growth:+.1f}"
        f")": real_growth <= RSS_GROWTH_LIMIT_MB,
        f"memory flat while sweeping ({sweep_growth:+.1f} MB <= {RSS_GROWTH_LIMIT_MB})": (
            sweep_growth <= RSS_GROWTH_LIMIT_MB
        ),
        f"no thread per run (threads {threads0} -> {threads2}, sweeps "
        f"{max(threads_sweep)})": threads0 == threads1 == threads2 == max(threads_sweep),
        f"sweep pass <= {SWEEP_TARGET_S:.0f} s (slowest {worst:.1f} ms)": worst / 1e3
        <= SWEEP_TARGET_S,
        f"nothing woken early (tasks sent {sent})": sent == 0,
    }
    figures = {"rss": (rss0, rss1, rss2, max(rss_sweep)), "sweep_ms": (first, median, worst)}
    return problems, {"checks": checks, **figures}


# --- part 2: per-step overhead ---------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.scenarios = 0
        self.wrong = 0


def engine_loop(fx: dict[str, Any], n: int, tally: Tally) -> float:
    from integrations.engine.services import run_drive, run_start

    chain, lead = fx["chain"], fx["lead"]
    start = time.perf_counter()
    for _ in range(n):
        run = run_start(integration=chain, lead=lead, claim=True)
        run = run_drive(run_id=run.pk, deadline_seconds=30)
        tally.scenarios += 1
        if run.status != "succeeded":
            tally.wrong += 1
    return time.perf_counter() - start


def direct_loop(fx: dict[str, Any], n: int, tally: Tally) -> float:
    from integrations.context import lead_context
    from integrations.services import request_run

    steps, lead = fx["steps"], fx["lead"]
    start = time.perf_counter()
    for _ in range(n):
        ok = True
        for step in steps:
            # trace=False as the engine's own calls (nobody shows a trace for either).
            result = request_run(step=step, context=lead_context(lead), lead=lead, trace=False)
            ok = ok and result.outcome.kind == "accepted"
        tally.scenarios += 1
        if not ok:
            tally.wrong += 1
    return time.perf_counter() - start


def statements(fn: Any) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn()
    return len(captured.captured_queries)


def profile(fx: dict[str, Any], n: int, top: int = 22) -> str:
    profiler = cProfile.Profile()
    tally = Tally()
    profiler.enable()
    engine_loop(fx, n, tally)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumtime").print_stats(
        "/integrations/|django/db/models/(query|sql/compiler)", top
    )
    full = io.StringIO()
    pstats.Stats(profiler, stream=full).sort_stats("tottime").print_stats(40)
    (LOG_DIR / f"{NAME}-profile.txt").write_text(out.getvalue() + "\n" + full.getvalue())
    return out.getvalue()


def step_part(fx: dict[str, Any], args: argparse.Namespace) -> tuple[float, list[str], dict]:
    from integrations.context import lead_context
    from integrations.engine.services import run_drive, run_start
    from integrations.models import RequestLog, RunStep, ScenarioRun

    problems: list[str] = []
    say()
    say(
        f"part 2: {STEPS}-step scenario via run_start + run_drive against the same {STEPS} "
        f"request_run calls; warm-up {args.warmup}, then {args.rounds} x (direct, engine) x "
        f"{args.scenarios} scenarios"
    )
    tallies = {"direct": Tally(), "engine": Tally()}
    direct_loop(fx, args.warmup, tallies["direct"])
    engine_loop(fx, args.warmup, tallies["engine"])
    # Each round alternates the two sides in blocks of BLOCK scenarios, so a burst of
    # load from elsewhere on the machine falls on both sides alike; a round's ratio is
    # its direct time over its engine time, and the result is the median of the rounds.
    per: dict[str, list[float]] = {"direct": [], "engine": []}
    ratios: list[float] = []
    for r in range(args.rounds):
        spent = {"direct": 0.0, "engine": 0.0}
        done = 0
        while done < args.scenarios:
            n = min(BLOCK, args.scenarios - done)
            spent["direct"] += direct_loop(fx, n, tallies["direct"])
            spent["engine"] += engine_loop(fx, n, tallies["engine"])
            done += n
        per["direct"].append(spent["direct"] / args.scenarios)
        per["engine"].append(spent["engine"] / args.scenarios)
        ratios.append(spent["direct"] / spent["engine"] if spent["engine"] else 0.0)
        say(
            f"  round {r + 1}: direct {per['direct'][-1] * 1e3:7.3f} ms/scenario   "
            f"engine {per['engine'][-1] * 1e3:7.3f} ms/scenario   ratio {ratios[-1]:.2f}"
        )
    direct_ms = statistics.median(per["direct"]) * 1e3
    engine_ms = statistics.median(per["engine"]) * 1e3
    ratio = statistics.median(ratios)
    say(
        f"  medians: direct {direct_ms:.3f} ms ({direct_ms / STEPS:.3f} per request), engine "
        f"{engine_ms:.3f} ms; engine overhead {(engine_ms - direct_ms) / STEPS:.3f} ms per "
        f"step; ratio (median of the rounds' ratios) {ratio:.2f}"
    )
    chain_runs = ScenarioRun.objects.filter(integration=fx["chain"])
    ok_runs = chain_runs.filter(status="succeeded").count()
    logs = RequestLog.objects.filter(integration_id=fx["chain"].pk, outcome="accepted").count()
    expected_logs = STEPS * (tallies["direct"].scenarios + tallies["engine"].scenarios)
    say(
        f"  chain runs succeeded {ok_runs}/{tallies['engine'].scenarios}; accepted log rows "
        f"{logs}/{expected_logs}; wrong: direct {tallies['direct'].wrong}, engine "
        f"{tallies['engine'].wrong}"
    )
    if ok_runs != tallies["engine"].scenarios or tallies["engine"].wrong:
        problems.append("not every engine run succeeded")
    if tallies["direct"].wrong or logs != expected_logs:
        problems.append(f"{logs} accepted log rows for {expected_logs} requests")

    lead = fx["lead"]
    n_direct = statements(
        lambda: [
            __import__("integrations.services", fromlist=["x"]).request_run(
                step=s, context=lead_context(lead), lead=lead
            )
            for s in fx["steps"]
        ]
    )
    holder: dict[str, int] = {}
    n_start = statements(
        lambda: holder.update(run=run_start(integration=fx["chain"], lead=lead, claim=True).pk)
    )
    n_drive = statements(lambda: run_drive(run_id=holder["run"], deadline_seconds=30))
    executed = RunStep.objects.filter(run_id=holder["run"]).count()
    say(
        f"  SQL statements per scenario: direct {n_direct} ({n_direct / STEPS:.1f} per request); "
        f"engine {n_start + n_drive} (run_start {n_start}, run_drive {n_drive} over {executed} "
        f"steps: {(n_start + n_drive - n_direct) / STEPS:.1f} extra per request step)"
    )
    figures = {"direct_ms": direct_ms, "engine_ms": engine_ms}
    if not args.no_profile:
        k = min(30, args.scenarios)
        say(f"  profile of {k} engine scenarios (cProfile inflates; compare shares):")
        lines = profile(fx, k).splitlines()
        first = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        for line in lines[first : first + 23]:
            say(f"    {line.replace(str(ROOT) + '/', '')[:140]}")
        say(f"    (full profile: var/bench/{NAME}-profile.txt)")
    return ratio, problems, figures


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="waiting runs in all")
    parser.add_argument("--warm", type=int, default=50, help="engine runs before RSS baseline")
    parser.add_argument("--real", type=int, default=300, help="waiting runs via the engine")
    parser.add_argument("--sweeps", type=int, default=20, help="sweeper passes timed")
    parser.add_argument("--scenarios", type=int, default=100, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=30, help="scenarios per side first")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    args.real = min(args.real, args.runs - args.warm)
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
        fx = prepare_django(sink.url)
        log_path = route_logs_to_file()
        say(f"machine: {machine()}; Python {sys.version.split()[0]}")
        say(f"database {BENCH_DB} migrated; sink on 127.0.0.1:{sink.port}; logs in {log_path}")
        problems, wait_fig = waiting_part(fx, args)
        ratio, more, _ = step_part(fx, args)
        problems += more
    finally:
        sink.stop()

    say()
    say(f"elapsed {time.monotonic() - t_start:.0f} s")
    checks = dict(wait_fig["checks"])
    checks[f"ratio {ratio:.2f} >= {TARGET_RATIO}"] = ratio >= TARGET_RATIO
    for label, ok in checks.items():
        say(f"CHECK {'ok  ' if ok else 'FAIL'} {label}")
    for problem in problems:
        say(f"PROBLEM: {problem}")
    passed = all(checks.values()) and not problems
    say(f"RESULT {NAME} ratio={ratio:.2f} target={TARGET_RATIO} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
