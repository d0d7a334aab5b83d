"""The ping tree's answers to the hooks of the apps below it: decision gates, the
partner's outcome and synchronous decision, and the signals that start or continue a
distribution. Connected in PingtreeConfig.ready()."""

from __future__ import annotations

from typing import Any

from structures import hooks
from structures.choices import LeadStatus
from structures.hooks import GateResult
from structures.models import Lead


def filters_gate(lead: Lead) -> GateResult:
    """Passes when at least one active offer of the lead's tree accepts it by its filters
    (external checks are left to the distribution). A lead no active tree serves is not
    held back: the workspace does not sell it through a ping tree."""
    from pingtree import selectors

    return selectors.lead_filters_pass(lead=lead)


def pingtree_gate(lead: Lead) -> GateResult:
    """Passes when the lead is sold; fails when its distribution ended unsold; otherwise
    starts it (or lets it run) and asks to look again."""
    from pingtree import services
    from pingtree.choices import DistributionStatus
    from pingtree.models import Distribution

    dist = Distribution.objects.filter(lead_id=lead.pk).first()
    if dist is None:
        dist = services.distribution_start(lead_id=lead.pk, inline=hooks.inline_decision.get())
    if dist is None:
        return GateResult(passed=False, reason="The lead is gone.")
    if dist.status == DistributionStatus.SOLD or dist.tree_id is None:
        return GateResult(passed=True)
    if dist.status == DistributionStatus.UNSOLD:
        return GateResult(passed=False, reason=dist.reason or "Not sold.")
    return GateResult(passed=None)


def outcome(lead: Lead) -> dict[str, Any]:
    from pingtree import selectors, services
    from pingtree.models import Distribution

    dist = Distribution.objects.filter(lead_id=lead.pk).first()
    if (
        dist is None
        and lead.status == LeadStatus.APPROVED
        and not selectors.workspace_sells_now(lead.workspace_id)
    ):
        # Never queued (on_lead_accepted): the answer its distribution would have given.
        return {
            "distribution": {
                "status": "unsold", "price": None, "redirect_url": "",
                "reason": selectors.NO_TREE_REASON,
            }
        }  # fmt: skip
    return {"distribution": services.distribution_decision(dist)}


def on_tree_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A ping tree, tier, offer in a tier, offer, cap or integration saved or deleted:
    the workspace's configuration key changes, so ``selectors.workspace_sells`` and the
    tree snapshots (``tree_cache``) are read again in every process."""
    from structures.intake_config import config_bump

    workspace_id = getattr(instance, "workspace_id", None)
    if workspace_id is not None:
        config_bump(workspace_id=workspace_id)


def on_tree_links_changed(sender: Any, instance: Any, action: str, **kwargs: Any) -> None:
    """A tree's partners or structures changed (either side of the relation: a tree, a
    partner or a structure, each of the workspace)."""
    if action in ("post_add", "post_remove", "post_clear"):
        on_tree_changed(sender, instance)


def on_lead_accepted(sender: Any, lead_id: int, **kwargs: Any) -> None:
    """An approved lead is distributed on the realtime queue; a pending one when the
    refusal policy's gates get to the ping tree (or once it is decided). A partner waiting
    synchronously drives it in its own request instead (hooks.inline_decision). A
    workspace without an active ping tree does not sell through one: nothing is queued
    (its leads' outcome says so: ``outcome``), which keeps the intake as cheap as before
    ping trees existed (bench-intake)."""
    if hooks.inline_decision.get():
        return
    workspace_id, config_key = kwargs.get("workspace_id"), kwargs.get("config_key")
    if workspace_id is not None and config_key is not None:
        from pingtree import selectors

        if not selectors.workspace_sells(workspace_id, config_key):
            return
    from pingtree.tasks import distribution_start_task

    distribution_start_task.delay(lead_id)


def on_lead_decided(sender: Any, lead_id: int, status: str, **kwargs: Any) -> None:
    if hooks.inline_decision.get():
        return
    from pingtree.tasks import distribution_start_task

    distribution_start_task.delay(lead_id)


def on_run_finished(sender: Any, run_id: int, **kwargs: Any) -> None:
    variables = kwargs.get("variables")
    if variables is not None and "DISTRIBUTION_ID" not in variables:
        return  # not a buyer's run of a distribution: no query for it
    from pingtree import services

    services.distribution_on_run_finished(run_id=run_id)


def connect() -> None:
    from integrations.engine.signals import run_finished

    if filters_gate not in hooks.DECISION_GATES["filters"]:
        hooks.register_gate("filters", filters_gate)
        hooks.register_gate("pingtree", pingtree_gate)
        hooks.OUTCOME_PROVIDERS.append(outcome)
    from pingtree import services

    if services.distribution_await not in hooks.DECISION_WAITERS:
        hooks.DECISION_WAITERS.append(services.distribution_await)
    from django.db.models.signals import m2m_changed, post_delete, post_save

    from integrations.models import Integration
    from pingtree.models import Cap, Offer, PingTree, Tier, TierOffer

    for model in (PingTree, Tier, TierOffer, Offer, Cap, Integration):
        for signal in (post_save, post_delete):
            signal.connect(
                on_tree_changed,
                sender=model,
                dispatch_uid=f"pingtree.config_{model.__name__}_{id(signal)}",
            )
    for through in (PingTree.partners.through, PingTree.structures.through):
        m2m_changed.connect(
            on_tree_links_changed, sender=through, dispatch_uid=f"pingtree.links_{through.__name__}"
        )
    hooks.lead_accepted.connect(on_lead_accepted, dispatch_uid="pingtree.lead_accepted")
    hooks.lead_decided.connect(on_lead_decided, dispatch_uid="pingtree.lead_decided")
    run_finished.connect(on_run_finished, dispatch_uid="pingtree.run_finished")
