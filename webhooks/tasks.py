"""Celery entry points of the webhooks app: thin, ids only, one service each."""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.sweep")
def sweep_task() -> None:
    """Match callbacks that came before their lead was waiting; close stale rows."""
    services.waiting_sweep()
