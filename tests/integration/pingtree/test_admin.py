"""The ping tree admin: every page renders with data, the offer editor validates filters
by path, the tree editor saves tiers and offers in the right workspace, a lead's
distribution reads as who was asked / what they said / who won / why the others lost,
buyer health and resume, filter templates, figures, tenancy and no query per row."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from integrations import services as integration_services
from pingtree.models import (
    Cap,
    Distribution,
    Offer,
    OfferResult,
    PingTree,
    Tier,
    TierOffer,
)
from structures.choices import Role
from structures.models import Lead
from tests.factories.structures import (
    AdvertiserFactory,
    LeadSetup,
    MembershipFactory,
    UserFactory,
    make_lead_setup,
)

pytestmark = pytest.mark.django_db
D = Decimal
PINGTREE_MODELS = sorted(
    (m for m in admin.site._registry if m._meta.app_label == "pingtree"),
    key=lambda m: m._meta.label,
)


class World:
    """A workspace with two offers on one advertiser, a two-tier tree and a sold lead:
    Alpha bid 30 and won, Beta bid 20 (outbid), Gamma declined the ping, Delta was
    skipped by its filters."""

    def __init__(self, name: str) -> None:
        self.setup: LeadSetup = make_lead_setup(name)
        ws = self.ws = self.setup.workspace
        self.advertiser = AdvertiserFactory(workspace=ws, name=f"{name} Buyer")
        self.integration = integration_services.integration_create(
            workspace_id=ws.pk, name=f"{name} API", category="buyer", status="enabled",
            url="https://buyer.example.com/post", method="POST", body_format="json",
        )  # fmt: skip
        self.offers = {
            label: Offer.objects.create(
                workspace=ws,
                advertiser=self.advertiser,
                name=f"{name} {label}",
                integration=self.integration,
                price_model="bid",
            )  # fmt: skip
            for label in ("Alpha", "Beta", "Gamma", "Delta")
        }
        Cap.objects.create(workspace=ws, offer=self.offers["Alpha"], metric="sold", limit=10)
        self.tree = PingTree.objects.create(workspace=ws, name=f"{name} tree", payout_percent=40)
        self.tier1 = Tier.objects.create(workspace=ws, tree=self.tree, position=0, mode="auction")
        self.tier2 = Tier.objects.create(workspace=ws, tree=self.tree, position=1)
        for label in ("Alpha", "Beta", "Gamma"):
            TierOffer.objects.create(workspace=ws, tier=self.tier1, offer=self.offers[label])
        TierOffer.objects.create(workspace=ws, tier=self.tier2, offer=self.offers["Delta"])
        self.lead = self._lead(1)
        self.distribution = Distribution.objects.create(
            workspace=ws, lead=self.lead, tree=self.tree, status="sold", sold_count=1,
            is_exclusive_sold=True, revenue=D("30"), payout=D("12"), margin=D("18"),
        )  # fmt: skip
        self.result(self.offers["Alpha"], stage="posted", status="accepted",
                    ping_status="accepted", bid=D("30"), ping_ms=51, post_status="accepted",
                    post_ms=55, is_sold=True, price=D("30"), position=0)  # fmt: skip
        self.result(self.offers["Beta"], stage="pinged", status="outbid", ping_status="accepted",
                    bid=D("20"), ping_ms=52, position=1)  # fmt: skip
        self.result(self.offers["Gamma"], stage="pinged", status="rejected",
                    ping_status="rejected", ping_ms=53, reason="State not covered",
                    position=2)  # fmt: skip
        self.result(self.offers["Delta"], tier=self.tier2, stage="skipped", status="skipped",
                    reason="Filters: g_state equals TX, saw CA", position=3)  # fmt: skip

    def _lead(self, n: int, *, is_test: bool = False) -> Lead:
        return Lead.objects.create(
            workspace=self.ws, structure=self.setup.structure, partner=self.setup.partner,
            source="api", status="approved", data={"g_email": f"a{n}@example.com"},
            is_test=is_test,
        )  # fmt: skip

    def result(self, offer: Offer, **values: Any) -> OfferResult:
        values.setdefault("tier", self.tier1)
        return OfferResult.objects.create(
            workspace=self.ws, distribution=self.distribution, offer=offer, **values
        )


@pytest.fixture
def world() -> World:
    return World("Acme")


@pytest.fixture
def superuser_client(client: Client) -> Client:
    client.force_login(UserFactory(is_superuser=True))
    return client


def _url(model: type, view: str, *args: Any) -> str:
    return reverse(f"admin:pingtree_{model._meta.model_name}_{view}", args=args)


def _offer_post(world: World, **overrides: Any) -> dict[str, Any]:
    data = {
        "workspace": world.ws.pk, "advertiser": world.advertiser.pk, "name": "New offer",
        "status": "active", "pause_reason": "", "integration": world.integration.pk,
        "timeout_seconds": "5", "price_model": "fixed", "price": "12.50",
        "revenue_share_percent": "0", "min_price": "0", "sale_mode": "exclusive",
        "country": "", "filters": "", "auto_pause_after": "5",
        "caps-TOTAL_FORMS": "1", "caps-INITIAL_FORMS": "0", "caps-MIN_NUM_FORMS": "0",
        "caps-MAX_NUM_FORMS": "1000", "caps-0-metric": "sold", "caps-0-period": "day",
        "caps-0-limit": "25", "caps-0-is_active": "on",
    }  # fmt: skip
    data.update(overrides)
    return data


# --- every page renders -----------------------------------------------------------------------


@pytest.mark.parametrize("model", PINGTREE_MODELS, ids=lambda m: m._meta.label)
def test_every_pingtree_admin_page_renders_with_data(
    world: World, superuser_client: Client, model: type
) -> None:
    response = superuser_client.get(_url(model, "changelist"))
    assert response.status_code == 200
    model_admin = admin.site._registry[model]
    request = response.wsgi_request
    if model_admin.has_add_permission(request):
        assert superuser_client.get(_url(model, "add")).status_code == 200
    obj = model._default_manager.filter(workspace=world.ws).order_by("pk").first()
    assert obj is not None, "the world seeds every registered pingtree model"
    for view in ("change", "history"):
        response = superuser_client.get(_url(model, view, obj.pk))
        assert response.status_code == 200, (view, response.content[:1000])


def test_custom_pages_render(world: World, superuser_client: Client) -> None:
    alpha = world.offers["Alpha"]
    assert superuser_client.get(reverse("admin:pingtree_offer_health")).status_code == 200
    response = superuser_client.get(reverse("admin:pingtree_offer_filters_import", args=[alpha.pk]))
    assert response.status_code == 200
    response = superuser_client.get(reverse("admin:pingtree_offer_filters_export", args=[alpha.pk]))
    assert response.status_code == 200
    assert json.loads(response.content)["format"] == "leadrelay.filters/1"


# --- the offer editor -------------------------------------------------------------------------


def test_offer_is_saved_with_its_caps_and_valid_filters(
    world: World, superuser_client: Client
) -> None:
    filters = {"geo": {"mode": "include", "states": ["CA", "NY"]}}
    response = superuser_client.post(
        _url(Offer, "add"), _offer_post(world, filters=json.dumps(filters))
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    offer = Offer.objects.get(name="New offer")
    assert offer.filters == filters
    assert offer.price == D("12.5")
    cap = offer.caps.get()
    assert (cap.metric, cap.period, cap.limit, cap.workspace_id) == ("sold", "day", 25, world.ws.pk)


def test_filter_errors_are_shown_by_path_and_nothing_is_saved(
    world: World, superuser_client: Client
) -> None:
    bad = {
        "groups": [{"conditions": [{"field": "g_state", "operator": "no_such_operator"}]}],
        "geo": {"mode": "sideways"},
    }
    data = _offer_post(world, filters=json.dumps(bad))
    response = superuser_client.post(_url(Offer, "add"), data)
    assert response.status_code == 200
    page = response.content.decode()
    assert "groups[0].conditions[0].operator" in page
    assert "geo.mode" in page
    assert not Offer.objects.filter(name="New offer").exists()
    response = superuser_client.post(_url(Offer, "add"), _offer_post(world, filters="{not json"))
    assert "Not valid JSON at line 1" in response.content.decode()
    assert not Offer.objects.filter(name="New offer").exists()


def test_a_filter_template_round_trips_and_a_bad_one_is_refused_by_path(
    world: World, superuser_client: Client
) -> None:
    source = world.offers["Alpha"]
    geo = {"geo": {"mode": "exclude", "states": ["TX"]}}
    Offer.objects.filter(pk=source.pk).update(filters=geo)
    exported = superuser_client.get(
        reverse("admin:pingtree_offer_filters_export", args=[source.pk])
    ).content.decode()
    target = world.offers["Beta"]
    url = reverse("admin:pingtree_offer_filters_import", args=[target.pk])
    response = superuser_client.post(url, {"json": exported})
    assert response.status_code == 302
    target.refresh_from_db()
    assert target.filters == {"geo": {"mode": "exclude", "states": ["TX"]}}

    document = json.loads(exported)
    document["definition"]["groups"] = [{"conditions": [{"field": "", "operator": "equals"}]}]
    response = superuser_client.post(url, {"json": json.dumps(document)})
    assert response.status_code == 200
    assert "definition.groups[0].conditions[0].field" in response.content.decode()
    target.refresh_from_db()
    assert "groups" not in target.filters


# --- buyer health -----------------------------------------------------------------------------


def test_a_paused_offer_is_shown_clearly_and_resumed_by_hand(
    world: World, superuser_client: Client
) -> None:
    offer = world.offers["Gamma"]
    Offer.objects.filter(pk=offer.pk).update(
        status="paused", pause_reason="Auto-paused after 5 post errors in a row.",
        consecutive_error_count=5,
    )  # fmt: skip
    health = superuser_client.get(reverse("admin:pingtree_offer_health")).content.decode()
    assert "Auto-paused after 5 post errors in a row." in health
    change = superuser_client.get(_url(Offer, "change", offer.pk)).content.decode()
    assert 'id="paused-banner"' in change and 'id="resume-offer"' in change
    listing = superuser_client.get(_url(Offer, "changelist")).content.decode()
    assert "Paused: Auto-paused" in listing
    response = superuser_client.post(reverse("admin:pingtree_offer_resume", args=[offer.pk]))
    assert response.status_code == 302
    offer.refresh_from_db()
    assert offer.status == "active"
    assert offer.consecutive_error_count == 0


def test_resume_action_resumes_the_selected_paused_offers(
    world: World, superuser_client: Client
) -> None:
    ids = [world.offers["Beta"].pk, world.offers["Gamma"].pk]
    Offer.objects.filter(pk__in=ids).update(status="paused", pause_reason="errors")
    response = superuser_client.post(
        _url(Offer, "changelist"), {"action": "resume_offers", "_selected_action": ids}
    )
    assert response.status_code == 302
    assert set(Offer.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"active"}


# --- the tree editor --------------------------------------------------------------------------


def test_the_tree_editor_saves_tiers_then_offers_per_tier(
    world: World, superuser_client: Client
) -> None:
    data = {
        "workspace": world.ws.pk, "name": "Second tree", "is_active": "on",
        "deadline_seconds": "20", "payout_percent": "35",
        "tiers-TOTAL_FORMS": "2", "tiers-INITIAL_FORMS": "0", "tiers-MIN_NUM_FORMS": "0",
        "tiers-MAX_NUM_FORMS": "1000",
        "tiers-0-position": "0", "tiers-0-name": "Premium", "tiers-0-mode": "auction",
        "tiers-0-max_sales": "1", "tiers-0-deadline_seconds": "2",
        "tiers-1-position": "1", "tiers-1-name": "Backfill", "tiers-1-mode": "waterfall",
        "tiers-1-max_sales": "1", "tiers-1-deadline_seconds": "",
    }  # fmt: skip
    response = superuser_client.post(_url(PingTree, "add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    tree = PingTree.objects.get(name="Second tree")
    tiers = list(tree.tiers.order_by("position"))
    assert [(t.name, t.mode, t.deadline_seconds) for t in tiers] == [
        ("Premium", "auction", 2.0), ("Backfill", "waterfall", None),
    ]  # fmt: skip
    assert {t.workspace_id for t in tiers} == {world.ws.pk}

    tier = tiers[0]
    data = {
        "tree": tree.pk, "position": "0", "name": "Premium", "mode": "auction",
        "max_sales": "1", "deadline_seconds": "2",
        "tier_offers-TOTAL_FORMS": "2", "tier_offers-INITIAL_FORMS": "0",
        "tier_offers-MIN_NUM_FORMS": "0", "tier_offers-MAX_NUM_FORMS": "1000",
        "tier_offers-0-offer": world.offers["Alpha"].pk, "tier_offers-0-priority": "0",
        "tier_offers-0-weight": "100",
        "tier_offers-1-offer": world.offers["Beta"].pk, "tier_offers-1-priority": "1",
        "tier_offers-1-weight": "100",
    }  # fmt: skip
    response = superuser_client.post(_url(Tier, "change", tier.pk), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert response["Location"] == _url(PingTree, "change", tree.pk)
    rows = list(tier.tier_offers.order_by("priority"))
    assert [r.offer_id for r in rows] == [world.offers["Alpha"].pk, world.offers["Beta"].pk]
    assert {r.workspace_id for r in rows} == {world.ws.pk}

    page = superuser_client.get(_url(PingTree, "change", tree.pk)).content.decode()
    assert 'id="tree-map"' in page
    assert page.index("Premium") < page.index("Backfill")
    assert world.offers["Alpha"].name in page


def test_a_tier_refuses_an_offer_of_another_workspace(world: World, client: Client) -> None:
    other = World("Other")
    # One operator who edits both workspaces: the choice list offers both, the save refuses.
    operator = world.setup.operator
    MembershipFactory(workspace=other.ws, user=operator, role=Role.OWNER)
    client.force_login(operator)
    data = {
        "tree": world.tree.pk, "position": "1", "name": "", "mode": "waterfall",
        "max_sales": "1", "deadline_seconds": "",
        "tier_offers-TOTAL_FORMS": "1", "tier_offers-INITIAL_FORMS": "0",
        "tier_offers-MIN_NUM_FORMS": "0", "tier_offers-MAX_NUM_FORMS": "1000",
        "tier_offers-0-offer": other.offers["Alpha"].pk, "tier_offers-0-priority": "0",
        "tier_offers-0-weight": "100",
    }  # fmt: skip
    before = TierOffer.objects.count()
    response = client.post(_url(Tier, "change", world.tier2.pk), data)
    assert response.status_code == 200
    assert "Choose an offer of this" in response.content.decode()
    assert TierOffer.objects.count() == before


# --- a lead's distribution --------------------------------------------------------------------


def test_a_distribution_shows_who_won_and_why_the_others_lost(
    world: World, superuser_client: Client
) -> None:
    page = superuser_client.get(_url(Distribution, "change", world.distribution.pk))
    html = page.content.decode()
    assert 'id="results-table"' in html
    assert "Sold to <strong>Acme Alpha (Acme Buyer) for 30.00</strong>" in html
    assert "Won: highest valid bid, sold at 30.00." in html
    assert "Outbid: bid 20.00 below the winning 30.00." in html
    assert "Ping rejected: State not covered" in html
    assert "Not asked: Filters: g_state equals TX, saw CA" in html
    # Reached from the lead's public id.
    response = superuser_client.get(
        reverse("admin:pingtree_distribution_lead", args=[world.lead.pcid])
    )
    assert response.status_code == 302
    assert response["Location"] == _url(Distribution, "change", world.distribution.pk)


def test_the_offer_page_shows_its_figures_without_test_leads(
    world: World, superuser_client: Client
) -> None:
    test_lead = world._lead(99, is_test=True)
    test_dist = Distribution.objects.create(
        workspace=world.ws, lead=test_lead, tree=world.tree, status="sold", is_test=True,
        revenue=D("500"), payout=D("0"), margin=D("500"),
    )  # fmt: skip
    OfferResult.objects.create(
        workspace=world.ws, distribution=test_dist, offer=world.offers["Alpha"], is_test=True,
        stage="posted", status="accepted", post_status="accepted", is_sold=True, price=D("500"),
    )  # fmt: skip
    html = superuser_client.get(_url(Offer, "change", world.offers["Alpha"].pk)).content.decode()
    assert 'id="fig-revenue">30.00<' in html
    assert 'id="fig-payout">12.00<' in html
    assert 'id="fig-margin">18.00<' in html
    assert 'id="fig-accepts">1 ' in html
    listing = superuser_client.get(_url(Offer, "changelist")).content.decode()
    assert "500.00" not in listing and "30.00" in listing


# --- tenancy and cost -------------------------------------------------------------------------


def test_an_operator_never_reaches_another_workspaces_ping_tree(
    world: World, client: Client
) -> None:
    other = World("Bravo")
    client.force_login(world.setup.operator)
    for model, obj in (
        (Offer, other.offers["Alpha"]),
        (PingTree, other.tree),
        (Tier, other.tier1),
        (Distribution, other.distribution),
    ):
        listing = client.get(_url(model, "changelist")).content.decode()
        assert "Bravo" not in listing, model
        response = client.get(_url(model, "change", obj.pk))
        assert response.status_code in (302, 404), model
    Offer.objects.filter(pk=other.offers["Beta"].pk).update(status="paused", pause_reason="x")
    assert "Bravo" not in client.get(reverse("admin:pingtree_offer_health")).content.decode()
    assert (
        client.get(reverse("admin:pingtree_distribution_lead", args=[other.lead.pcid])).status_code
        == 404
    )
    response = client.post(reverse("admin:pingtree_offer_resume", args=[other.offers["Beta"].pk]))
    assert response.status_code == 404
    assert Offer.objects.get(pk=other.offers["Beta"].pk).status == "paused"
    response = client.get(
        reverse("admin:pingtree_offer_filters_export", args=[other.offers["Alpha"].pk])
    )
    assert response.status_code == 404
    # Positive control: the operator's own rows are there.
    assert "Acme Alpha" in client.get(_url(Offer, "changelist")).content.decode()


def test_a_viewer_reads_but_cannot_resume(world: World, client: Client) -> None:
    viewer = MembershipFactory(workspace=world.ws, role=Role.VIEWER).user
    offer = world.offers["Beta"]
    Offer.objects.filter(pk=offer.pk).update(status="paused", pause_reason="errors")
    client.force_login(viewer)
    assert client.get(_url(Offer, "change", offer.pk)).status_code == 200
    assert client.post(reverse("admin:pingtree_offer_resume", args=[offer.pk])).status_code == 404
    assert Offer.objects.get(pk=offer.pk).status == "paused"


@pytest.mark.parametrize("model", [Offer, PingTree, Distribution], ids=lambda m: m.__name__)
def test_changelists_cost_the_same_queries_for_more_rows(
    world: World, superuser_client: Client, model: type
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert superuser_client.get(_url(model, "changelist")).status_code == 200
        return len(captured.captured_queries)

    first = queries()
    more = World("Charlie")
    for n in range(5):
        lead = more._lead(100 + n)
        Distribution.objects.create(workspace=more.ws, lead=lead, tree=more.tree)
    PingTree.objects.create(workspace=more.ws, name="Extra tree")
    assert queries() == first


def test_the_lead_panel_shows_the_distribution_to_its_workspace_only(world: World) -> None:
    from django.test import RequestFactory

    from pingtree.admin.distributions import lead_distribution_panel

    request = RequestFactory().get("/admin/")
    request.user = world.setup.operator
    html = lead_distribution_panel(request, world.lead)
    assert "Won: highest valid bid, sold at 30.00." in html
    assert "Ping rejected: State not covered" in html
    outsider = World("Zulu")
    request = RequestFactory().get("/admin/")  # the scope is memoised per request
    request.user = outsider.setup.operator
    html = lead_distribution_panel(request, world.lead)
    assert "Acme" not in html and "Won:" not in html


def test_the_lead_page_shows_its_distribution(world: World, client: Client) -> None:
    client.force_login(world.setup.operator)
    response = client.get(reverse("admin:structures_lead_change", args=[world.lead.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="lead-distribution"' in html
    assert "Won: highest valid bid, sold at 30.00." in html


def test_the_figures_page_lists_each_offer_of_the_operator_with_its_money(
    world: World, client: Client
) -> None:
    other = World("Yankee")
    client.force_login(world.setup.operator)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse("admin:pingtree_offer_figures"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="total-revenue">30.00<' in html
    assert 'id="total-payout">12.00<' in html
    assert 'id="total-margin">18.00<' in html
    assert 'data-offer="Acme Alpha"' in html
    assert other.offers["Alpha"].name not in html
    # The figures of every offer come from one query, whatever the number of offers.
    figure_queries = [q for q in captured.captured_queries if "pingtree_offerresult" in q["sql"]]
    assert len(figure_queries) == 1
