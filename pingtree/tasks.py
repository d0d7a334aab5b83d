"""Celery entry points of the ping tree: thin, ids only, one service each. Routed to the
``realtime`` queue (config.settings: ``pingtree.*``), the sweeper to ``default``."""

from __future__ import annotations

from celery import shared_task

from pingtree import services


@shared_task(name="pingtree.distribution_run")
def distribution_run_task(distribution_id: int) -> None:
    """Claim and drive one distribution; a duplicate delivery finds it claimed or done."""
    services.distribution_run(distribution_id=distribution_id)


@shared_task(name="pingtree.distribution_start")
def distribution_start_task(lead_id: int) -> None:
    """Create the lead's distribution and drive it."""
    services.distribution_for_lead_run(lead_id=lead_id)


@shared_task(name="pingtree.sweep")
def sweep_task() -> None:
    """Re-drive distributions a dead worker or a lost task left behind."""
    services.distributions_sweep()
