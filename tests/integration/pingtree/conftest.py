"""Ping tree test wiring: real local fake buyers (a threaded HTTP server: auctions call
them in parallel) speaking JSON, XML and form, and a builder for offers, trees and tiers.

Distributions call buyers from the ping tree's thread pool, whose threads have their own
database connections: these tests use ``transactional_db`` so the threads see the rows.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from integrations.engine.registry import ELEMENT_HANDLERS, Effect
from integrations.models import (
    Connection,
    Element,
    Integration,
    RequestBodyField,
    RequestStep,
    ResponseCapture,
    ResponseRule,
)
from pingtree.models import Cap, Offer, PingTree, Tier, TierOffer
from structures.models import Advertiser, Lead
from tests.factories.structures import LeadSetup, make_lead_setup

Answer = tuple[int, str, str]  # HTTP code, content type, body


@pytest.fixture(scope="session", autouse=True)
def pingtree_pool_stopped(django_db_setup: None) -> Iterator[None]:
    """The pool's threads hold connections to the test database: close them before it
    is dropped (set up after the database, so torn down before it)."""
    yield
    from pingtree.services import pool_shutdown

    pool_shutdown()


class Buyers:
    """A threaded HTTP server on 127.0.0.1: each path answers through its handler, after
    its delay. Requests are counted per path (and per lead id when the URL has ?lead=)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[dict[str, Any]], Answer]] = {}
        self.delays: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.bodies: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        buyers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                with buyers.lock:
                    buyers.counts[parts.path] += 1
                    buyers.bodies.setdefault(parts.path, []).append(body)
                time.sleep(buyers.delays.get(parts.path, 0.0))
                handler = buyers.handlers.get(parts.path)
                request = {"body": body, "query": parse_qs(parts.query), "path": parts.path}
                code, ctype, text = handler(request) if handler else (404, "text/plain", "no")
                data = text.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}{path}?lead={{{{PCID}}}}"

    def json(self, path: str, status: str = "accepted", *, delay: float = 0.0, code: int = 200,
             **fields: Any) -> str:  # fmt: skip
        """A JSON buyer answering {"status": ..., **fields} (values may be callables of
        the request)."""

        def handler(request: dict[str, Any]) -> Answer:
            body = {"status": status(request) if callable(status) else status}
            for key, value in fields.items():
                body[key] = value(request) if callable(value) else value
            # "boom" is a server error, whatever the code asked for
            return 500 if body["status"] == "boom" else code, "application/json", json.dumps(body)

        self.handlers[path] = handler
        self.delays[path] = delay
        return self.url(path)

    def xml(self, path: str, status: str = "accepted", *, price: str = "", delay: float = 0.0,
            redirect: str = "") -> str:  # fmt: skip
        def handler(request: dict[str, Any]) -> Answer:
            return (
                200,
                "application/xml",
                f"<response><status>{status}</status><price>{price}</price>"
                f"<redirect>{redirect}</redirect></response>",
            )

        self.handlers[path] = handler
        self.delays[path] = delay
        return self.url(path)

    def form(self, path: str, answer: str = "OK 123", *, delay: float = 0.0) -> str:
        """A form buyer answering plain text: ``OK <id>`` or ``ERROR <reason>``."""

        def handler(request: dict[str, Any]) -> Answer:
            got = parse_qs(request["body"])
            if not got.get("email"):
                return 200, "text/plain", "ERROR missing email"
            return 200, "text/plain", answer

        self.handlers[path] = handler
        self.delays[path] = delay
        return self.url(path)

    def total(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def buyers() -> Iterator[Buyers]:
    server = Buyers()
    yield server
    server.close()


# --- building offers ----------------------------------------------------------------------

JSON_RULES = [
    {"key": "status", "value": "accepted|ok|sold", "outcome": "accepted"},
    {"key": "status", "value": "pending", "outcome": "pending"},
    {"key": "status", "value": "rejected|no", "outcome": "rejected"},
]
JSON_CAPTURES = [
    {"key": "price", "target": "price"},
    {"key": "redirect", "target": "redirect_url"},
    {"key": "id", "target": "buyer_lead_id"},
    {"key": "reason", "target": "reject_reason"},
    {"key": "ping_id", "target": "variable", "target_name": "ping_id"},
]
XML_RULES = [
    {"key_kind": "xpath", "key": "//status/text()", "value": "accepted", "outcome": "accepted"},
    {"key_kind": "xpath", "key": "//status/text()", "value": "rejected", "outcome": "rejected"},
]
XML_CAPTURES = [
    {"key_kind": "xpath", "key": "//price/text()", "target": "price"},
    {"key_kind": "xpath", "key": "//redirect/text()", "target": "redirect_url"},
]
FORM_RULES = [
    {"key_kind": "regex", "key": r"^(OK)", "value": "OK", "outcome": "accepted"},
    {"key_kind": "regex", "key": r"^(ERROR)", "value": "ERROR", "outcome": "rejected"},
]
FORM_CAPTURES = [{"key_kind": "regex", "key": r"OK (\d+)", "target": "buyer_lead_id"}]
FORMATS = {
    "json": (JSON_RULES, JSON_CAPTURES),
    "xml": (XML_RULES, XML_CAPTURES),
    "form": (FORM_RULES, FORM_CAPTURES),
}


class Tree:
    """Builds offers, a tree and its tiers for one workspace in a few lines."""

    def __init__(self, setup: LeadSetup, **tree_fields: Any) -> None:
        self.setup = setup
        self.ws = setup.workspace
        self.advertiser = Advertiser.objects.create(workspace=self.ws, name="Buyer Co")
        fields = {"deadline_seconds": 10.0, "payout_percent": Decimal("40"), **tree_fields}
        self.tree = PingTree.objects.create(
            workspace=self.ws, name="Main tree", is_default=True, **fields
        )
        self.count = 0

    def integration(self, name: str, *, post: str | None, ping: str | None = None,
                    fmt: str = "json", status: str = "enabled",
                    timeout: float = 5.0) -> Integration:  # fmt: skip
        integration = Integration.objects.create(workspace=self.ws, name=name, status=status)
        rules, captures = FORMATS[fmt]
        for meaning, url in (("ping", ping), ("post", post)):
            if url is None:
                continue
            step = RequestStep.objects.create(
                workspace=self.ws, integration=integration, name=meaning, meaning=meaning,
                url=url, method="POST", body_format=fmt, xml_root="lead",
                timeout_seconds=timeout,
            )  # fmt: skip
            for i, (key, value) in enumerate(
                [("email", "{{g_email}}"), ("lead", "{{PCID}}"), ("offer", "{{OFFER_ID}}"),
                 ("bid", "{{BID}}"), ("ping_id", "{{ping_id}}")]
            ):  # fmt: skip
                RequestBodyField.objects.create(request=step, position=i, name=key, value=value)
            for i, rule in enumerate(rules):
                ResponseRule.objects.create(request=step, position=i, **rule)
            for i, capture in enumerate(captures):
                ResponseCapture.objects.create(request=step, position=i, **capture)
            start = Element.objects.create(
                workspace=self.ws, integration=integration, kind="start", name=f"{meaning} start",
                meaning=meaning,
            )  # fmt: skip
            request = Element.objects.create(
                workspace=self.ws, integration=integration, kind="request", name=meaning,
                request_step=step,
            )  # fmt: skip
            Connection.objects.create(
                workspace=self.ws, integration=integration, from_element=start, to_element=request
            )
        return integration

    def offer(self, name: str, *, post: str | None, ping: str | None = None, fmt: str = "json",
              integration_status: str = "enabled", request_timeout: float = 5.0,
              **fields: Any) -> Offer:  # fmt: skip
        integration = self.integration(
            f"{name} integration", post=post, ping=ping, fmt=fmt, status=integration_status,
            timeout=request_timeout,
        )  # fmt: skip
        defaults: dict[str, Any] = {"price": Decimal("10"), "timeout_seconds": 5.0}
        defaults.update(fields)
        return Offer.objects.create(
            workspace=self.ws, advertiser=self.advertiser, name=name, integration=integration,
            **defaults,
        )  # fmt: skip

    def tier(self, mode: str = "waterfall", *offers: Offer, weights: list[int] | None = None,
             **fields: Any) -> Tier:  # fmt: skip
        tier = Tier.objects.create(
            workspace=self.ws, tree=self.tree, position=self.count, mode=mode, **fields
        )
        self.count += 1
        for i, offer in enumerate(offers):
            TierOffer.objects.create(
                workspace=self.ws, tier=tier, offer=offer, priority=i,
                weight=weights[i] if weights else 100,
            )  # fmt: skip
        return tier

    def cap(self, offer: Offer, limit: int | str, metric: str = "sold", period: str = "day") -> Cap:
        return Cap.objects.create(
            workspace=self.ws, offer=offer, metric=metric, period=period, limit=Decimal(limit)
        )

    def lead(self, n: int = 0, *, is_test: bool = False, **data: str) -> Lead:
        values = {"g_first_name": "Jane", "g_email": f"jane{n}@example.com",
                  "g_phone": f"+1202456{1000 + n:04d}", "g_zip": "20500", **data}  # fmt: skip
        return Lead.objects.create(
            workspace=self.ws, structure=self.setup.structure, partner=self.setup.partner,
            source="api", status="approved", data=values, is_test=is_test,
        )  # fmt: skip


@pytest.fixture(params=["direct", "engine"])
def call_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a buyer is called: straight through request_run (its integration is the
    default scenario: a start and one request) and through the scenario engine. A test
    using this runs once each way and asserts the same results."""
    from pingtree import services

    monkeypatch.setattr(services, "DIRECT_CALLS", request.param == "direct")
    return request.param


@pytest.fixture
def setup(transactional_db: None) -> LeadSetup:
    return make_lead_setup()


@pytest.fixture
def tree(setup: LeadSetup) -> Tree:
    return Tree(setup)


def distribute(lead: Lead, budget: float | None = None):
    """Create and drive the lead's distribution in this thread, as the task does."""
    from pingtree import services

    dist = services.distribution_ensure(lead=lead)
    return services.distribution_run(distribution_id=dist.pk, budget_seconds=budget)


# --- buyers answering by callback ----------------------------------------------------------


@pytest.fixture
def callback_step():
    """A stand-in for the webhooks app's step: parks the run (blocking) until resumed,
    then answers with what the callback carried."""
    old = ELEMENT_HANDLERS.get("webhook")

    def handler(call):
        if call.resumed is not None:
            captured = {"price": call.resumed.get("price", "")}
            return Effect(
                outcome={"kind": call.resumed["kind"], "reason": "callback", "captured": captured}
            )
        if call.parked:
            return Effect(
                outcome={"kind": "timeout", "reason": "no callback", "captured": {}},
                timed_out=True,
            )
        return Effect(
            outcome={"kind": "pending", "reason": "waiting", "captured": {}},
            park_until=timezone.now() + timedelta(minutes=5),
            park_blocking=True,
        )

    ELEMENT_HANDLERS["webhook"] = handler
    yield
    if old is None:
        ELEMENT_HANDLERS.pop("webhook", None)
    else:
        ELEMENT_HANDLERS["webhook"] = old


def add_callback(offer):
    integration = offer.integration
    post_request = Element.objects.get(
        integration=integration, kind="request", request_step__meaning="post"
    )
    wait = Element.objects.create(
        workspace=integration.workspace, integration=integration, kind="webhook", name="wait"
    )
    Connection.objects.create(
        workspace=integration.workspace, integration=integration, from_element=post_request,
        to_element=wait,
    )  # fmt: skip
    return wait
