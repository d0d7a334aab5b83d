"""A workspace's ping trees, copied per process under its configuration version.

Every lead of a workspace reads the same configuration before any buyer is called: which
active tree serves it (by partner, structure or default), the tree's tiers in order, each
tier's offers with their integrations and caps. Read from the database that is five to
seven ORM queries a lead, the largest share of the driver's own CPU in a sustained
auction (bench-pingtree (c), docs/benchmarks.md). It is kept here keyed by
``Workspace.config_key``, which the lead's own row brings along (``select_related``), the
way the intake keeps its configuration (structures.intake_config): every save or delete
of a ping tree, tier, offer in a tier, offer, cap or integration of the workspace, and
every change made with ``update()`` (an offer paused, resumed or counting post errors),
bumps the version (pingtree.receivers), so a change is a miss in every process at once
and the next lead reads it afresh. Nothing that matters lives only here: it is a derived
copy, checked against the database's version for every lead.

The snapshot's model instances are shared by every thread of the process: they are read,
never changed. A driver that may change an offer (the health record, a pause) works on
its own copy (``offer_copy``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

from pingtree.models import Offer, PingTree, Tier, TierOffer
from structures.models import Workspace


@dataclass(frozen=True)
class TierSnapshot:
    tier: Tier
    # In priority order; each with its offer, the offer's integration and caps loaded.
    tier_offers: tuple[TierOffer, ...]


@dataclass(frozen=True)
class TreeSnapshot:
    tree: PingTree
    tiers: tuple[TierSnapshot, ...]


@dataclass(frozen=True)
class WorkspaceTrees:
    """The workspace's active trees and how a lead finds its own."""

    trees: dict[int, TreeSnapshot]
    by_partner: dict[int, int]  # partner id -> the lowest id of the active trees listing it
    by_structure: dict[int, int]
    default: int | None


@lru_cache(maxsize=256)
def workspace_trees(workspace_id: int, config_key: str) -> WorkspaceTrees:
    """The active trees of the workspace as of ``config_key`` (cached per process)."""
    trees = list(PingTree.objects.filter(workspace_id=workspace_id, is_active=True).order_by("id"))
    ids = [t.pk for t in trees]
    by_partner: dict[int, int] = {}
    by_structure: dict[int, int] = {}
    for tree_id, partner_id in PingTree.partners.through.objects.filter(
        pingtree_id__in=ids
    ).values_list("pingtree_id", "partner_id"):
        by_partner[partner_id] = min(tree_id, by_partner.get(partner_id, tree_id))
    for tree_id, structure_id in PingTree.structures.through.objects.filter(
        pingtree_id__in=ids
    ).values_list("pingtree_id", "structure_id"):
        by_structure[structure_id] = min(tree_id, by_structure.get(structure_id, tree_id))
    # As PingTree's default ordering (name) would pick it; at most one is the default.
    defaults = sorted((t for t in trees if t.is_default), key=lambda t: (t.name, t.pk))
    tier_offers: dict[int, list[TierOffer]] = {}
    for to in (
        TierOffer.objects.filter(tier__tree_id__in=ids)
        .select_related("offer__integration")
        .prefetch_related("offer__caps")
        .order_by("priority", "id")
    ):
        tier_offers.setdefault(to.tier_id, []).append(to)
    tiers: dict[int, list[TierSnapshot]] = {}
    for tier in Tier.objects.filter(tree_id__in=ids).order_by("position", "id"):
        tiers.setdefault(tier.tree_id, []).append(
            TierSnapshot(tier=tier, tier_offers=tuple(tier_offers.get(tier.pk, ())))
        )
    return WorkspaceTrees(
        trees={t.pk: TreeSnapshot(tree=t, tiers=tuple(tiers.get(t.pk, ()))) for t in trees},
        by_partner=by_partner,
        by_structure=by_structure,
        default=defaults[0].pk if defaults else None,
    )


def tree_serving(
    workspace: Workspace, partner_id: int | None, structure_id: int | None
) -> TreeSnapshot | None:
    """The active tree serving a lead of this partner and structure: one listing its
    partner, else its structure, else the workspace's default tree."""
    found = workspace_trees(workspace.pk, workspace.config_key)
    tree_id = None
    if partner_id:
        tree_id = found.by_partner.get(partner_id)
    if tree_id is None and structure_id:
        tree_id = found.by_structure.get(structure_id)
    if tree_id is None:
        tree_id = found.default
    return found.trees.get(tree_id) if tree_id is not None else None


def tree_snapshot(workspace: Workspace, tree_id: int | None) -> TreeSnapshot | None:
    """The snapshot of one tree when it is active (None: inactive or gone)."""
    if tree_id is None:
        return None
    return workspace_trees(workspace.pk, workspace.config_key).trees.get(tree_id)


def workspace_now(workspace_id: int) -> Workspace:
    """The workspace's key columns as they are now (for a caller whose lead may carry a
    workspace read earlier)."""
    return Workspace.objects.only("created_at", "config_version").get(pk=workspace_id)


def offer_copy(offer: Offer) -> Offer:
    """A driver's own copy of a snapshot's offer (its integration and caps shared, and
    only read)."""
    return copy.copy(offer)


def cache_clear() -> None:
    """Forget every snapshot (tests)."""
    workspace_trees.cache_clear()
