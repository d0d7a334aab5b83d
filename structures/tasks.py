"""Celery entry points of the structures app: thin, ids only, one service each."""

from __future__ import annotations

from celery import shared_task

from structures import services


@shared_task(name="structures.lead_process")
def lead_process_task(lead_id: int) -> None:
    services.lead_process(lead_id=lead_id)


@shared_task(name="structures.sweep")
def sweep_task() -> None:
    """The sweeper: wakes what is due and re-drives what was lost, from the database."""
    services.leads_sweep()
