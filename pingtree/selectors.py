"""Reads of the ping tree: querysets and values, never writes."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from pingtree import tree_cache
from pingtree.choices import OfferStatus
from pingtree.models import Distribution, Offer, OfferResult
from structures.hooks import GateResult
from structures.models import Lead


def distribution_for_lead(*, lead_id: int) -> Distribution | None:
    return Distribution.objects.select_related("tree").filter(lead_id=lead_id).first()


def distribution_results(*, distribution_id: int) -> QuerySet[OfferResult]:
    """A distribution's rows in the order offers were asked, with what the table shows."""
    return (
        OfferResult.objects.filter(distribution_id=distribution_id)
        .select_related("offer__advertiser", "tier", "ping_run", "post_run")
        .order_by("position", "id")
    )


def tree_offers(*, tree_id: int) -> QuerySet[Offer]:
    return Offer.objects.filter(tier_offers__tier__tree_id=tree_id).distinct()


def lead_filters_pass(*, lead: Lead) -> GateResult:
    """Whether at least one active offer of the lead's tree accepts it by its filters
    (external checks are not run here: the distribution runs them)."""
    from pingtree import filters
    from pingtree.services import offer_history, tree_for_lead

    tree = tree_for_lead(lead)
    if tree is None:
        return GateResult(passed=True)
    reasons: list[str] = []
    for offer in tree_offers(tree_id=tree.pk).filter(status=OfferStatus.ACTIVE):
        definition = {k: v for k, v in (offer.filters or {}).items() if k != "external"}
        result = filters.filters_evaluate(
            definition,
            lead_values=lead.data,
            partner_id=lead.partner_id,
            now=timezone.now(),
            history=offer_history(offer=offer, lead=lead)
            if filters.history_lookback(definition)
            else None,
        )
        if result.passed:
            return GateResult(passed=True)
        reasons.append(f"{offer}: {result.reason}")
    if not reasons:
        return GateResult(passed=False, reason="The ping tree has no active offer.")
    return GateResult(passed=False, reason="No offer accepts the lead: " + "; ".join(reasons[:3]))


NO_TREE_REASON = "No active ping tree serves this lead."


def workspace_sells(workspace_id: int, config_key: str) -> bool:
    """Whether the workspace has an active ping tree, from its trees as kept per process
    under its configuration key (pingtree.tree_cache), which every save and delete of a
    ping tree changes (pingtree.receivers): a change is a miss in every process at once,
    as for the intake's own configuration (structures.intake_config)."""
    return bool(tree_cache.workspace_trees(workspace_id, config_key).trees)


def workspace_sells_now(workspace_id: int) -> bool:
    """workspace_sells under the workspace's current configuration key."""
    return workspace_sells(workspace_id, tree_cache.workspace_now(workspace_id).config_key)
