"""The workspace's ping trees are read once per configuration version and process
(pingtree.tree_cache): the next lead reads no tree configuration, and every kind of
change an operator (or the health record) makes reaches the very next lead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from pingtree import services, tree_cache
from pingtree.models import PingTree, TierOffer
from structures.models import Workspace
from tests.integration.pingtree.conftest import distribute

CONFIG_TABLES = ("pingtree_pingtree", "pingtree_tier", "pingtree_tieroffer", "pingtree_offer",
                 "pingtree_cap", "pingtree_pingtree_partners")  # fmt: skip


def results(dist: Any) -> dict[str, Any]:
    return {r.offer.name: r for r in dist.results.select_related("offer")}


def sold_to(dist: Any) -> str | None:
    won = [name for name, r in results(dist).items() if r.status == "accepted" and r.price]
    return won[0] if won else None


@pytest.fixture
def two_offers(tree, buyers):
    """A waterfall of A then B, both buying; the first lead fills the snapshot."""
    a = tree.offer("A", post=buyers.json("/a"))
    b = tree.offer("B", post=buyers.json("/b"))
    tier = tree.tier("waterfall", a, b)
    first = distribute(tree.lead(0))
    assert first.status == "sold" and sold_to(first) == "A"
    return tree, tier, a, b


def test_the_next_lead_reads_no_tree_configuration(two_offers):
    tree, *_ = two_offers
    lead = tree.lead(1)
    with CaptureQueriesContext(connection) as captured:
        # The realtime task's entry point (pingtree.distribution_start after intake).
        dist = services.distribution_for_lead_run(lead_id=lead.pk)
    assert dist.status == "sold" and sold_to(dist) == "A"
    reads = [
        q["sql"] for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT")
        and any(f'FROM "{t}"' in q["sql"] for t in CONFIG_TABLES)
    ]  # fmt: skip
    assert reads == [], "\n".join(reads)


def _pause_by_save(tree, tier, a, b):
    a.status = "paused"
    a.pause_reason = "by hand"
    a.save()


def _pause_by_service(tree, tier, a, b):
    assert services.offer_pause(offer=a, reason="quality")


def _integration_disabled(tree, tier, a, b):
    a.integration.status = "disabled"
    a.integration.save()


def _removed_from_the_tier(tree, tier, a, b):
    TierOffer.objects.filter(tier=tier, offer=a).delete()


def _capped(tree, tier, a, b):
    tree.cap(a, 0)


def _priorities_swapped(tree, tier, a, b):
    for offer, priority in ((a, 5), (b, 0)):
        row = TierOffer.objects.get(tier=tier, offer=offer)
        row.priority = priority
        row.save()


def _a_new_first_tier(tree, tier, a, b):
    tier.position = 9
    tier.save()
    tree.tier("waterfall", b)


def _tree_switched_off(tree, tier, a, b):
    tree.tree.is_active = False
    tree.tree.save()


def _linked_tree(tree, link: str) -> None:
    other = PingTree.objects.create(workspace=tree.ws, name=f"{link} tree")
    tree.tree = other
    tree.tier("waterfall", tree.offers["B"])
    # Not linked yet: the default tree still serves the lead (and fills the snapshot).
    assert sold_to(distribute(tree.lead(7))) == "A"
    if link == "partner":
        other.partners.add(tree.setup.partner)  # the link alone must be seen
    else:
        other.structures.add(tree.setup.structure)


def _another_tree_for_the_partner(tree, tier, a, b):
    tree.offers = {"B": b}
    _linked_tree(tree, "partner")


def _another_tree_for_the_structure(tree, tier, a, b):
    tree.offers = {"B": b}
    _linked_tree(tree, "structure")


CHANGES: dict[str, tuple[Callable[..., Any], str | None, str]] = {
    # change -> (how, who buys the next lead, what the results say of A)
    "offer paused (admin save)": (_pause_by_save, "B", "offer is paused: by hand"),
    "offer paused (service)": (_pause_by_service, "B", "offer is paused: quality"),
    "integration disabled": (_integration_disabled, "B", "the offer's integration is disabled"),
    "offer removed from the tier": (_removed_from_the_tier, "B", ""),
    "cap reached": (_capped, "B", "cap reached"),
    "priorities swapped": (_priorities_swapped, "B", ""),
    "a new first tier": (_a_new_first_tier, "B", ""),
    "tree switched off": (_tree_switched_off, None, ""),
    "another tree for the partner": (_another_tree_for_the_partner, "B", ""),
    "another tree for the structure": (_another_tree_for_the_structure, "B", ""),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_reaches_the_very_next_lead(two_offers, change):
    tree, tier, a, b = two_offers
    how, buyer, a_reason = CHANGES[change]
    how(tree, tier, a, b)
    dist = distribute(tree.lead(1))
    assert sold_to(dist) == buyer
    if buyer is None:
        assert dist.status == "unsold" and "No active ping tree" in dist.reason
    if a_reason:
        row = results(dist)["A"]
        assert row.status == "skipped" and a_reason in row.reason


def test_a_resumed_offer_buys_again(two_offers):
    tree, tier, a, b = two_offers
    services.offer_pause(offer=a, reason="quality")
    assert sold_to(distribute(tree.lead(1))) == "B"
    services.offer_resume(offer=a)
    assert sold_to(distribute(tree.lead(2))) == "A"


def test_drivers_never_change_the_shared_snapshot(tree, buyers):
    """A post error changes the driver's own copy of the offer and bumps the version; the
    snapshot other threads may be reading keeps its values."""
    broken = tree.offer("Broken", post=buyers.json("/broken", "boom"), auto_pause_after=2)
    tree.tier("waterfall", broken)
    ws = Workspace.objects.get(pk=tree.ws.pk)
    before = tree_cache.tree_snapshot(ws, tree.tree.pk)
    shared = before.tiers[0].tier_offers[0].offer
    assert results(distribute(tree.lead(0)))["Broken"].status == "error"
    assert (shared.consecutive_error_count, shared.status) == (0, "active")
    ws.refresh_from_db()
    after = tree_cache.tree_snapshot(ws, tree.tree.pk)
    assert after is not before
    assert after.tiers[0].tier_offers[0].offer.consecutive_error_count == 1
    assert results(distribute(tree.lead(1)))["Broken"].status == "error"
    broken.refresh_from_db()
    assert broken.status == "paused"  # auto-paused after 2, as without the snapshot
    assert results(distribute(tree.lead(2)))["Broken"].status == "skipped"


def _values(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_the_lead_is_read_as_the_orm_builds_it(tree, django_assert_num_queries):
    """distribution_for_lead_run reads the lead with a statement compiled once per
    process (services._lead_read): the same objects and values as select_related."""
    from structures.models import Lead

    with_partner = tree.lead(0)
    without = Lead.objects.create(
        workspace=tree.ws, structure=tree.setup.structure, source="api", status="approved",
        data={"g_email": "solo@example.com", "nested": {"a": [1, "x"]}},
    )  # fmt: skip
    for lead in (with_partner, without):
        orm = Lead.objects.select_related("workspace", "partner", "structure").get(pk=lead.pk)
        with django_assert_num_queries(1):
            fast = services._lead_read(lead.pk)
            related = (fast.workspace, fast.partner, fast.structure)
        assert _values(fast) == _values(orm)
        for ours, theirs in zip(related, (orm.workspace, orm.partner, orm.structure), strict=True):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                assert _values(ours) == _values(theirs)
    assert services._lead_read(10**12) is None


def test_the_distribution_is_inserted_as_the_orm_saves_it(tree):
    """The claimed distribution's lean insert (services._distribution_insert) stores the
    same values as ``save(force_insert=True)`` of the same instance, and a second one for
    the lead is refused by the unique lead key as the ORM's would be."""
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    from pingtree.models import Distribution

    at = timezone.now()

    def build(lead):
        return Distribution(
            workspace_id=lead.workspace_id, lead=lead, tree=tree.tree, is_test=lead.is_test,
            status="running", attempt=1, lease_until=at, next_check_at=at, started_at=at,
            deadline_at=at,
        )  # fmt: skip

    ours, theirs = build(tree.lead(0)), build(tree.lead(1))
    services._distribution_insert(ours)
    theirs.save(force_insert=True)
    assert ours.pk and not ours._state.adding
    stored = {d.pk: _values(d) for d in Distribution.objects.filter(pk__in=[ours.pk, theirs.pk])}
    skip = {"id", "lead_id", "created_at", "updated_at"}
    assert {k: v for k, v in stored[ours.pk].items() if k not in skip} == {
        k: v for k, v in stored[theirs.pk].items() if k not in skip
    }
    assert {k: v for k, v in _values(ours).items() if k != "id"} == {
        k: v for k, v in stored[ours.pk].items() if k != "id"
    }
    with pytest.raises(IntegrityError), transaction.atomic():
        services._distribution_insert(build(ours.lead))
