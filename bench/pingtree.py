"""`make bench-pingtree`: the ping tree against local fake buyers with a fixed 50 ms
latency (``bench/fake_buyers.py`` in a subprocess, HTTP/1.1 keep-alive).

Every buyer is the integration library's generic JSON buyer (ping + post), installed as
an operator would (``portability.integration_import`` of the library entry), enabled,
with its two URLs pointed at its fake buyer. Leads are made as the intake makes an
approved lead (a Lead row, outside the timings); each is then distributed by
``pingtree.services.distribution_for_lead_run(lead_id=...)``, the very call the
``pingtree.distribution_start`` Celery task makes on the realtime queue after intake
(ensure the distribution, claim it, walk the tree through the scenario engine on the
ping tree's thread pool, record every result, finish). So "our time" includes the
engine runs, the request logs, the result rows and the caps, not just HTTP.

Parts:

(a) waterfall of 10 buyers that all reject (fixed-price offers: one post each): ideal
    10 x 50 ms = 500 ms; budget 1.05 x 500 + 20 = 545 ms (median of the leads);
(b) auction tier of 10 buyers (50 ms ping, then 50 ms post to the highest bid): ideal
    100 ms; budget 1.2 x 100 + 20 = 140 ms (median);
(c) sustained leads/s through a 5-buyer auction, ``--concurrency`` leads in flight,
    against a plain thread-pool fan-out of the same requests in the same run (bare:
    a ``requests.Session`` per thread in this process, the 5 pings in parallel on a
    thread pool, the highest bid posted), rounds alternating bare, ours, bare, ours;
    medians. Ours runs in this one process by default (the measurement of every
    earlier run); ``--ours-processes N`` runs it in N fresh worker processes instead,
    as the realtime queue's workers run, the leads in flight split between them, each
    driving distributions on its own threads and buyer pool (on this shared 2-core
    machine 2 processes did worse than 1: docs/benchmarks.md). 2 cores: ours,
    PostgreSQL and the buyers share them.

``ratio = ideal time / our time`` for (a) and (b), ``our leads/s / bare leads/s`` for
(c); the line reports the worst of the three. Ends with exactly
``RESULT pingtree ratio=<worst> target=0.83 PASS|FAIL`` (exit 0/1); PASS needs the ratio,
both budgets, and every lead distributed as expected (waterfall: unsold, 10 rejections;
auction: sold to the highest bidder, every buyer pinged once and only it posted).

Uses its own PostgreSQL database ``leadrelay_bench_pingtree`` (created when missing,
migrated, lead/run/log tables emptied each run).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fake_buyers import FakeBuyers  # noqa: E402
from bench.integration import machine  # noqa: E402

NAME = "pingtree"
TARGET_RATIO = 0.83
BENCH_DB = "leadrelay_bench_pingtree"
WORKSPACE_SLUG = "bench-pingtree"
LOG_DIR = ROOT / "var" / "bench"
LATENCY_MS = 50
WATERFALL, AUCTION, SUSTAINED = 10, 10, 5
WATERFALL_IDEAL_MS = WATERFALL * LATENCY_MS
AUCTION_IDEAL_MS = 2 * LATENCY_MS
WATERFALL_BUDGET_MS = 1.05 * WATERFALL_IDEAL_MS + 20
AUCTION_BUDGET_MS = 1.2 * AUCTION_IDEAL_MS + 20
LEAD_DATA = {
    "g_first_name": "Jane",
    "g_last_name": "Doe",
    "g_email": "jane.doe@example.com",
    "g_phone": "+12024561111",
    "g_zip": "20500",
    "g_state": "DC",
    "g_loan_amount": "5000",
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


def route_logs_to_file() -> Path:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{NAME}-app.log"
    stream = path.open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    return path


def configure_buyers(buyers: FakeBuyers) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"waterfall": [], "auction": [], "sustained": []}
    for i in range(WATERFALL):
        name = f"wf{i}"
        buyers.configure(
            name,
            ping={"action": "reject", "reason": "not buying"},
            post={"action": "reject", "reason": "not buying"},
            latency_ms=LATENCY_MS,
        )
        names["waterfall"].append(name)
    for kind, count in (("auction", AUCTION), ("sustained", SUSTAINED)):
        for i in range(count):
            name = f"{kind[:2]}{i}"
            buyers.configure(
                name,
                ping={"action": "accept", "bid": 10 + i},
                post={"action": "accept"},
                latency_ms=LATENCY_MS,
            )
            names[kind].append(name)
    return names


def prepare_django(buyers: FakeBuyers, names: dict[str, list[str]]) -> dict[str, Any]:
    """Migrate, empty the lead, run and log tables, make the workspace, one partner per
    tree (trees are chosen by partner), the buyers' integrations from the library, the
    offers and the three trees."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from integrations import portability
    from integrations.models import Connection, Element, Integration, RequestStep
    from pingtree.models import Offer, PingTree, Tier, TierOffer
    from structures import services as structure_services
    from structures.models import Advertiser, Field, Partner, Structure, StructureField, Workspace

    call_command("migrate", interactive=False, verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE pingtree_offerresult, pingtree_distribution, pingtree_capcounter, "
            "integrations_runstep, integrations_scenariorun, integrations_requestlog, "
            "structures_leadevent, structures_lead RESTART IDENTITY CASCADE"
        )
    entry = portability.library_entry("generic-json-buyer")
    if entry is None:
        raise SystemExit("the library has no generic-json-buyer")
    with transaction.atomic():
        ws = Workspace.objects.filter(slug=WORKSPACE_SLUG).first()
        if ws is None:
            ws = structure_services.workspace_create(
                workspace=Workspace(
                    name="Bench ping tree", slug=WORKSPACE_SLUG, timezone="America/New_York",
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
        TierOffer.objects.filter(workspace=ws).delete()
        Tier.objects.filter(workspace=ws).delete()
        PingTree.objects.filter(workspace=ws).delete()
        Offer.objects.filter(workspace=ws).delete()
        Connection.objects.filter(workspace=ws).delete()
        Element.objects.filter(workspace=ws, kind="request").delete()  # PROTECTs the steps
        Integration.objects.filter(workspace=ws).delete()
        advertiser, _ = Advertiser.objects.get_or_create(workspace=ws, name="Bench buyers")
        fx: dict[str, Any] = {"workspace": ws, "structure": structure, "partners": {}}
        for kind, buyer_names in names.items():
            partner, _ = Partner.objects.get_or_create(
                workspace=ws, name=f"Bench {kind}", defaults={"default_structure": structure}
            )
            mode = "waterfall" if kind == "waterfall" else "auction"
            tree = PingTree.objects.create(
                workspace=ws, name=f"Bench {kind}", deadline_seconds=30, payout_percent=50
            )
            tree.partners.set([partner])
            tier = Tier.objects.create(workspace=ws, tree=tree, position=0, mode=mode)
            for priority, name in enumerate(buyer_names):
                integration = portability.integration_import(
                    workspace_id=ws.pk, data=entry, name=f"Buyer {name}", status="enabled"
                )
                for step in RequestStep.objects.filter(integration=integration):
                    step.url = buyers.url(name, step.meaning)
                    step.timeout_seconds = 5
                    step.save(update_fields=["url", "timeout_seconds"])
                offer = Offer.objects.create(
                    workspace=ws, advertiser=advertiser, name=f"Offer {name}",
                    integration=integration, timeout_seconds=5,
                    price_model="fixed" if kind == "waterfall" else "bid", price=5,
                )  # fmt: skip
                TierOffer.objects.create(workspace=ws, tier=tier, offer=offer, priority=priority)
            fx["partners"][kind] = partner
            fx[f"tree_{kind}"] = tree
    return fx


def make_leads(fx: dict[str, Any], kind: str, n: int) -> list[int]:
    """Approved leads as the intake leaves them (one INSERT per lead, outside timings)."""
    from structures.models import Lead

    partner = fx["partners"][kind]
    leads = Lead.objects.bulk_create(
        Lead(
            workspace=fx["workspace"],
            structure=fx["structure"],
            partner=partner,
            source="api",
            status="approved",
            data=LEAD_DATA,
        )  # fmt: skip
        for _ in range(n)
    )
    return [lead.pk for lead in leads]


# --- ours ------------------------------------------------------------------------------------


def distribute(lead_id: int) -> Any:
    from pingtree.services import distribution_for_lead_run

    return distribution_for_lead_run(lead_id=lead_id)


def timed_leads(fx: dict[str, Any], kind: str, n: int) -> tuple[list[float], list[Any]]:
    times, dists = [], []
    for lead_id in make_leads(fx, kind, n):
        t0 = time.perf_counter()
        dists.append(distribute(lead_id))
        times.append((time.perf_counter() - t0) * 1e3)
    return times, dists


def check_waterfall(dists: list[Any]) -> list[str]:
    from pingtree.models import OfferResult

    problems = []
    for dist in dists:
        rows = list(OfferResult.objects.filter(distribution=dist).values_list("status", flat=True))
        if dist.status != "unsold" or rows.count("rejected") != WATERFALL:
            problems.append(f"waterfall lead {dist.lead_id}: {dist.status}, results {rows}")
    return problems[:3]


def check_auction(dists: list[Any], count: int, winner: str) -> list[str]:
    from pingtree.models import OfferResult

    problems = []
    for dist in dists:
        rows = list(
            OfferResult.objects.filter(distribution=dist).values_list(
                "offer__name", "ping_status", "post_status", "is_sold"
            )
        )
        pinged = sum(1 for _, ping, _, _ in rows if ping)
        posted = [name for name, _, post, _ in rows if post]
        sold = [name for name, _, _, is_sold in rows if is_sold]
        if dist.status != "sold" or pinged != count or posted != [winner] or sold != [winner]:
            problems.append(
                f"auction lead {dist.lead_id}: {dist.status}, pinged {pinged}, posted "
                f"{posted}, sold {sold}"
            )
    return problems[:3]


def sustained_ours(lead_ids: list[int], concurrency: int, seconds: float) -> tuple[int, float, int]:
    """Leads distributed by ``concurrency`` drivers in about ``seconds`` (a driver takes
    no new lead after that): (leads done, elapsed seconds, wrong outcomes)."""
    from django.db import connection

    ids = iter(lead_ids)
    lock = threading.Lock()
    done, wrong = [0], [0]
    stop_at = time.perf_counter() + seconds

    def driver() -> None:
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    lead_id = next(ids, None)
                if lead_id is None:
                    return
                dist = distribute(lead_id)
                with lock:
                    done[0] += 1
                    if dist is None or dist.status != "sold":
                        wrong[0] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=driver) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0], time.perf_counter() - t0, wrong[0]


def _ours_process(
    lead_ids: list[int], warmup_ids: list[int], concurrency: int, seconds: float,
    index: int, ready: Any, start: Any, results: Any,
) -> None:  # fmt: skip
    """One worker process of (c): set up Django as a worker does, warm up (imports,
    caches, the buyer pool's connections), wait for the start, drive leads, report
    (done, elapsed, wrong, CPU seconds of this process while driving)."""
    import django

    django.setup()
    path = LOG_DIR / f"{NAME}-app-{index}.log"
    stream = path.open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    for lead_id in warmup_ids:
        distribute(lead_id)
    ready.put(index)
    start.wait()
    c0 = cpu_seconds()
    done, elapsed, wrong = sustained_ours(lead_ids, concurrency, seconds)
    results.put((done, elapsed, wrong, cpu_seconds() - c0))
    from pingtree.services import pool_shutdown

    pool_shutdown()


def sustained_ours_processes(
    fx: dict[str, Any], processes: int, concurrency: int, seconds: float
) -> tuple[int, float, int, float]:
    """(c) ours in ``processes`` fresh worker processes (spawned, so each sets up
    Django as a worker does), ``concurrency`` leads in flight split between them,
    started together after their warm-up. Returns (leads done, elapsed seconds, wrong
    outcomes, CPU seconds of the workers while driving)."""
    import multiprocessing

    from django.db import connections

    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    start = ctx.Event()
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0)
              for i in range(processes)]  # fmt: skip
    workers = []
    for index, share in enumerate(shares):
        lead_ids = make_leads(fx, "sustained", max(share, 1) * 400)
        warmup_ids = make_leads(fx, "sustained", 3)
        workers.append(
            ctx.Process(
                target=_ours_process,
                args=(lead_ids, warmup_ids, share, seconds, index, ready, start, results),
            )
        )
    # This process's buyer pool holds a connection per thread: give them back before
    # the workers open theirs (PostgreSQL's max_connections is shared with everyone).
    from pingtree.services import pool_shutdown

    pool_shutdown()
    connections.close_all()
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    start.set()
    outcome = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    done = sum(o[0] for o in outcome)
    elapsed = max(o[1] for o in outcome)
    return done, elapsed, sum(o[2] for o in outcome), sum(o[3] for o in outcome)


def driver_statements(lead_id: int) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        distribute(lead_id)
    return len(captured.captured_queries)


# --- bare ------------------------------------------------------------------------------------


class Bare:
    """The same requests, hand-written: JSON ping to every buyer at once on a thread
    pool, the highest bid posted. One requests.Session per thread (keep-alive)."""

    def __init__(self, buyers: FakeBuyers, names: list[str], workers: int) -> None:
        import requests  # noqa: TID251 - the bare baseline is a plain requests client

        self.requests = requests
        self.buyers = buyers
        self.names = names
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.ping_body = {k: LEAD_DATA[k] for k in ("g_zip", "g_state", "g_loan_amount")}
        self.post_body = dict(LEAD_DATA)

    def session(self) -> Any:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = self.requests.Session()
        return session

    def ping(self, name: str) -> tuple[str, float | None]:
        answer = self.session().post(self.buyers.url(name, "ping"), json=self.ping_body, timeout=5)
        data = answer.json()
        return name, float(data["bid"]) if data.get("status") == "accepted" else None

    def post(self, name: str) -> bool:
        answer = self.session().post(self.buyers.url(name, "post"), json=self.post_body, timeout=5)
        return answer.json().get("status") == "accepted"

    def auction(self) -> bool:
        bids = [b for b in self.pool.map(self.ping, self.names) if b[1] is not None]
        for name, _ in sorted(bids, key=lambda b: -b[1]):
            if self.post(name):
                return True
        return False

    def waterfall(self, names: list[str]) -> bool:
        return any(self.post(name) for name in names)

    def sustained(self, concurrency: int, seconds: float) -> tuple[int, float, int]:
        done, wrong = [0], [0]
        lock = threading.Lock()
        stop_at = time.perf_counter() + seconds

        def driver() -> None:
            while time.perf_counter() < stop_at:
                ok = self.auction()
                with lock:
                    done[0] += 1
                    wrong[0] += 0 if ok else 1

        threads = [threading.Thread(target=driver) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return done[0], time.perf_counter() - t0, wrong[0]


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waterfall-leads", type=int, default=9)
    parser.add_argument("--auction-leads", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=8, help="leads in flight in (c)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per round and side in (c)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ours-processes", type=int, default=1,
        help="worker processes driving ours in (c) (default 1: this process only)",
    )  # fmt: skip
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
    buyers = FakeBuyers.start(subprocess=True)
    problems: list[str] = []
    try:
        names = configure_buyers(buyers)
        fx = prepare_django(buyers, names)
        log_path = route_logs_to_file()
        say(f"machine: {machine()}; Python {sys.version.split()[0]}")
        say(
            f"database {BENCH_DB}; fake buyers on 127.0.0.1:{buyers.port} "
            f"({LATENCY_MS} ms each answer); logs in {log_path}"
        )
        say("the call: pingtree.services.distribution_for_lead_run(lead_id=...) per lead")

        # Warm-up: imports, default scenarios built on each integration's first run,
        # connections of the ping tree's thread pool.
        timed_leads(fx, "waterfall", 2)
        timed_leads(fx, "auction", 3)
        timed_leads(fx, "sustained", 3)
        bare_wf = Bare(buyers, names["waterfall"], 1)
        bare_au = Bare(buyers, names["auction"], AUCTION)
        bare_wf.waterfall(names["waterfall"])
        bare_au.auction()

        say()
        say(f"(a) waterfall of {WATERFALL} rejecting buyers, {args.waterfall_leads} leads")
        bare_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            bare_wf.waterfall(names["waterfall"])
            bare_times.append((time.perf_counter() - t0) * 1e3)
        bare_wf_ms = statistics.median(bare_times)
        times, dists = timed_leads(fx, "waterfall", args.waterfall_leads)
        wf_ms = statistics.median(times)
        say(
            f"  ours median {wf_ms:.1f} ms (min {min(times):.1f}, max {max(times):.1f}); "
            f"bare sequential posts {bare_wf_ms:.1f} ms; ideal "
            f"{WATERFALL_IDEAL_MS} ms; budget {WATERFALL_BUDGET_MS:.0f} ms"
        )
        problems += check_waterfall(dists)
        overhead = (wf_ms - WATERFALL_IDEAL_MS) / WATERFALL
        say(f"  our cost above the buyers' latency: {overhead:.1f} ms per post")
        lead_id = make_leads(fx, "waterfall", 1)[0]
        statements = driver_statements(lead_id)
        say(
            f"  SQL statements per lead in the driver's thread: {statements} "
            f"({statements / WATERFALL:.1f} per post; the pool threads' engine runs come on top)"
        )

        say()
        say(f"(b) auction tier of {AUCTION} (ping {LATENCY_MS} ms, post {LATENCY_MS} ms), "
            f"{args.auction_leads} leads")  # fmt: skip
        bare_times = []
        for _ in range(10):
            t0 = time.perf_counter()
            bare_au.auction()
            bare_times.append((time.perf_counter() - t0) * 1e3)
        bare_au_ms = statistics.median(bare_times)
        times, dists = timed_leads(fx, "auction", args.auction_leads)
        au_ms = statistics.median(times)
        say(
            f"  ours median {au_ms:.1f} ms (min {min(times):.1f}, p90 "
            f"{sorted(times)[int(0.9 * (len(times) - 1))]:.1f}, max {max(times):.1f}); bare "
            f"fan-out {bare_au_ms:.1f} ms; ideal {AUCTION_IDEAL_MS} ms; "
            f"budget {AUCTION_BUDGET_MS:.0f} ms"
        )
        problems += check_auction(dists, AUCTION, f"Offer {names['auction'][-1]}")
        say(f"  our cost above the ideal: {au_ms - AUCTION_IDEAL_MS:.1f} ms per lead")

        say()
        say(
            f"(c) sustained: 5-buyer auction, {args.concurrency} leads in flight, "
            f"{args.seconds:.0f} s per round and side, {args.rounds} rounds (bare, ours, ...); "
            f"ours in {args.ours_processes} worker process(es)"
        )
        bare_su = Bare(buyers, names["sustained"], args.concurrency * SUSTAINED)
        per: dict[str, list[float]] = {"bare": [], "ours": []}
        cpu: dict[str, list[float]] = {"bare": [], "ours": []}
        wrong = {"bare": 0, "ours": 0}
        for r in range(args.rounds):
            c0 = cpu_seconds()
            done, seconds, bad = bare_su.sustained(args.concurrency, args.seconds)
            cpu["bare"].append((cpu_seconds() - c0) / max(done, 1) * 1e3)
            per["bare"].append(done / seconds)
            wrong["bare"] += bad
            if args.ours_processes > 1:
                done, seconds, bad, used = sustained_ours_processes(
                    fx, args.ours_processes, args.concurrency, args.seconds
                )
            else:
                lead_ids = make_leads(fx, "sustained", args.concurrency * 400)
                c0 = cpu_seconds()
                done, seconds, bad = sustained_ours(lead_ids, args.concurrency, args.seconds)
                used = cpu_seconds() - c0
            cpu["ours"].append(used / max(done, 1) * 1e3)
            per["ours"].append(done / seconds)
            wrong["ours"] += bad
            say(
                f"  round {r + 1}: bare {per['bare'][-1]:6.1f} leads/s "
                f"({cpu['bare'][-1]:.1f} ms CPU/lead)   ours {per['ours'][-1]:6.1f} leads/s "
                f"({cpu['ours'][-1]:.1f} ms CPU/lead, "
                f"{'its workers' if args.ours_processes > 1 else 'this process'})"
            )
        bare_rate = statistics.median(per["bare"])
        ours_rate = statistics.median(per["ours"])
        say(
            f"  medians: bare {bare_rate:.1f} leads/s, ours {ours_rate:.1f} leads/s; "
            f"ideal at this concurrency {args.concurrency / (AUCTION_IDEAL_MS / 1e3):.0f} "
            f"leads/s; wrong outcomes bare {wrong['bare']}, ours {wrong['ours']}"
        )
        if wrong["ours"] or wrong["bare"]:
            problems.append(f"sustained: {wrong['ours']} of ours and {wrong['bare']} bare not sold")
    finally:
        buyers.stop()
        try:
            from pingtree.services import pool_shutdown

            pool_shutdown()
        except Exception:  # noqa: BLE001, S110 - best effort on the way out
            pass

    ratios = {
        "waterfall": WATERFALL_IDEAL_MS / wf_ms,
        "auction": AUCTION_IDEAL_MS / au_ms,
        "sustained": ours_rate / bare_rate if bare_rate else 0.0,
    }
    ratio = min(ratios.values())
    # What this machine allows: the bare requests' own ratios, the same formula. When the
    # bare fan-out alone is under the target, no implementation can meet it here (the
    # RESULT line is unchanged: ideal time / our time).
    say()
    say(
        f"the bare baselines' own ratios on this machine: waterfall "
        f"{WATERFALL_IDEAL_MS / bare_wf_ms:.2f}, auction {AUCTION_IDEAL_MS / bare_au_ms:.2f}; "
        f"ours to bare: waterfall {bare_wf_ms / wf_ms:.2f}, auction {bare_au_ms / au_ms:.2f}, "
        f"sustained {ratios['sustained']:.2f}"
    )
    say(f"elapsed {time.monotonic() - t_start:.0f} s")
    checks = {
        f"(a) waterfall {wf_ms:.0f} ms <= {WATERFALL_BUDGET_MS:.0f} ms": wf_ms
        <= WATERFALL_BUDGET_MS,
        f"(b) auction {au_ms:.0f} ms <= {AUCTION_BUDGET_MS:.0f} ms": au_ms <= AUCTION_BUDGET_MS,
        "ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) + f"; worst "
        f"{ratio:.2f} >= {TARGET_RATIO}": ratio >= TARGET_RATIO,
    }
    for label, ok in checks.items():
        say(f"CHECK {'ok  ' if ok else 'FAIL'} {label}")
    for problem in problems:
        say(f"PROBLEM: {problem}")
    passed = all(checks.values()) and not problems
    say(f"RESULT {NAME} ratio={ratio:.2f} target={TARGET_RATIO} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
