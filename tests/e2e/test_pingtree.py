"""Acceptance of the ping tree, in a real browser against the live server: an operator
installs the library's generic JSON buyer (one click each) for four local fake buyers,
makes an offer on each, builds a two-tier tree (an auction, then a waterfall), a lead is
posted through the intake API, and the operator sees who won and why the others lost."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from bench.fake_buyers import FakeBuyers
from integrations.models import Integration
from pingtree.models import Distribution, Offer, PingTree
from structures.models import Lead
from tests.factories.structures import AdvertiserFactory, make_lead_setup

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LIBRARY = "/admin/integrations/integration/library/"
OFFERS = "/admin/pingtree/offer/"
TREES = "/admin/pingtree/pingtree/"
# name -> (fake buyer config, offer price model, tier index)
BUYERS: dict[str, tuple[dict[str, Any], str, int]] = {
    "acme": ({"ping": {"action": "accept", "bid": 25}, "post": {"action": "accept"}}, "bid", 0),
    "bravo": (
        {
            "ping": {"action": "accept", "bid": 30},
            "post": {"action": "reject", "reason": "Duplicate in our system"},
        },
        "bid",
        0,
    ),
    "carol": (
        {"format": "form", "ping": {"action": "reject", "reason": "State not covered"}},
        "bid",
        0,
    ),
    "delta": ({"post": {"action": "accept"}}, "fixed", 1),
}


@pytest.fixture
def buyers() -> Iterator[FakeBuyers]:
    server = FakeBuyers.start()
    for name, (config, _, _) in BUYERS.items():
        server.configure(name, latency_ms=20, **config)
    yield server
    server.stop()
    from pingtree.services import pool_shutdown

    # The ping tree's pool threads hold connections to the test database: close them
    # before pytest-django flushes it.
    pool_shutdown()


def save(page: Any, button: str = "_save") -> None:
    page.locator(f'[name="{button}"]').first.click()
    expect(page.locator(".errornote")).to_have_count(0)


def add_row(page: Any, prefix: str) -> None:
    page.locator(f"#{prefix}-group a.add-row").click()


def test_operator_builds_a_two_tier_tree_posts_a_lead_and_sees_who_won_and_why(
    e2e_page: Any, live_server: Any, admin_login: Any, buyers: FakeBuyers
) -> None:
    page = e2e_page
    setup = make_lead_setup("Treeco")
    AdvertiserFactory(workspace=setup.workspace, name="Treeco Buyers Inc")
    admin_login(setup.operator.username, LIBRARY)

    # One click per buyer: the library's generic JSON buyer, then its two URLs and enable.
    for name in BUYERS:
        page.goto(live_server.url + LIBRARY)
        page.locator('form[data-slug="generic-json-buyer"] .install-button').click()
        expect(page).to_have_url(re.compile(r"/admin/integrations/integration/\d+/change/$"))
        page.fill("#id_name", f"{name.capitalize()} API")
        page.select_option("#id_status", "enabled")
        for i in range(2):
            meaning = page.locator(f"#id_requests-{i}-meaning").input_value()
            page.fill(f"#id_requests-{i}-url", buyers.url(name, meaning))
        save(page)
    integrations = Integration.objects.filter(workspace=setup.workspace, status="enabled")
    assert integrations.count() == 4
    acme_urls = set(
        integrations.get(name="Acme API").requests.values_list("url", flat=True)
    )  # fmt: skip
    assert acme_urls == {buyers.url("acme", "ping"), buyers.url("acme", "post")}

    # An offer on each.
    for name, (_, model, _) in BUYERS.items():
        page.goto(live_server.url + OFFERS + "add/")
        page.fill("#id_name", f"{name.capitalize()} offer")
        page.select_option("#id_workspace", label=setup.workspace.name)
        page.select_option("#id_advertiser", label="Treeco Buyers Inc")
        page.select_option("#id_integration", label=f"{name.capitalize()} API")
        page.select_option("#id_price_model", model)
        if model == "fixed":
            page.fill("#id_price", "9")
        save(page)
    assert Offer.objects.filter(workspace=setup.workspace).count() == 4

    # The tree: default for the workspace, an auction tier then a waterfall tier.
    page.goto(live_server.url + TREES + "add/")
    page.select_option("#id_workspace", label=setup.workspace.name)
    page.fill("#id_name", "Loans tree")
    page.check("#id_is_default")
    add_row(page, "tiers")
    add_row(page, "tiers")
    page.fill("#id_tiers-0-position", "0")
    page.fill("#id_tiers-0-name", "Auction")
    page.select_option("#id_tiers-0-mode", "auction")
    page.fill("#id_tiers-1-position", "1")
    page.fill("#id_tiers-1-name", "Backfill")
    page.select_option("#id_tiers-1-mode", "waterfall")
    save(page, "_continue")
    tree = PingTree.objects.get(name="Loans tree")
    tree_url = f"{TREES}{tree.pk}/change/"
    expect(page).to_have_url(re.compile(re.escape(tree_url) + "$"))

    # Offers per tier, from the tree map's "Edit offers" links.
    for tier_index in range(2):
        page.locator("#tree-map a", has_text="Edit offers").nth(tier_index).click()
        names = [n for n, (_, _, t) in BUYERS.items() if t == tier_index]
        for row, name in enumerate(names):
            add_row(page, "tier_offers")
            page.select_option(f"#id_tier_offers-{row}-offer", label=f"{name.capitalize()} offer")
            page.fill(f"#id_tier_offers-{row}-priority", str(row))
        save(page)
        expect(page).to_have_url(re.compile(re.escape(tree_url) + "$"))
    tree_map = page.locator("#tree-map")
    for name in BUYERS:
        expect(tree_map).to_contain_text(f"{name.capitalize()} offer")

    # A lead through the intake API, as a partner posts it.
    answer = page.request.post(
        live_server.url + "/api/v1/leads/",
        data=setup.valid_payload(1) | {"g_state": "CA"},
        headers={"Authorization": f"Api-Key {setup.key}"},
    )
    assert answer.status in (200, 201, 202), answer.text()
    lead = Lead.objects.get(workspace=setup.workspace)
    deadline = time.monotonic() + 20
    dist = None
    while time.monotonic() < deadline:
        dist = Distribution.objects.filter(lead=lead).first()
        if dist is not None and dist.status in ("sold", "unsold"):
            break
        time.sleep(0.2)
    assert dist is not None and dist.status == "sold", dist and (dist.status, dist.reason)

    # The operator finds it in the distributions and reads the table.
    page.goto(live_server.url + "/admin/pingtree/distribution/")
    page.locator(f"a[href$='/admin/pingtree/distribution/{dist.pk}/change/']").first.click()
    expect(page.locator("#winner-line")).to_contain_text("Sold to Acme offer (Treeco Buyers Inc)")
    expect(page.locator("#winner-line")).to_contain_text("for 25.00")
    table = page.locator("#results-table")
    acme = table.locator('tr[data-offer="Acme offer"]')
    expect(acme.locator(".result-why")).to_contain_text("Won: the higher bidders did not buy")
    bravo = table.locator('tr[data-offer="Bravo offer"]')
    expect(bravo.locator(".result-why")).to_contain_text("Post rejected")
    expect(bravo.locator(".result-why")).to_contain_text("Duplicate in our system")
    carol = table.locator('tr[data-offer="Carol offer"]')
    expect(carol.locator(".result-why")).to_contain_text("Ping rejected")
    expect(carol.locator(".result-why")).to_contain_text("State not covered")
    # The buyers were really asked: every auction buyer pinged once, Bravo then Acme posted.
    assert [buyers.count(n, "ping") for n in ("acme", "bravo", "carol")] == [1, 1, 1]
    assert (buyers.count("bravo", "post"), buyers.count("acme", "post")) == (1, 1)
    assert buyers.count("delta") == 0
    shots = Path(settings.VAR_DIR)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "e2e-pingtree-distribution.png"), full_page=True)
    page.goto(live_server.url + f"{OFFERS}{Offer.objects.get(name='Acme offer').pk}/change/")
    expect(page.locator("#fig-accepts")).to_contain_text("1")
    expect(page.locator("#fig-revenue")).to_have_text("25.00")
    page.screenshot(path=str(shots / "e2e-pingtree-offer.png"), full_page=True)
    page.goto(live_server.url + tree_url)
    page.screenshot(path=str(shots / "e2e-pingtree-tree.png"), full_page=True)
