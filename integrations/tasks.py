"""Celery entry points of the integrations app: thin, ids only, one service each."""

from __future__ import annotations

from celery import shared_task

from integrations.engine import services


@shared_task(name="integrations.step_execute")
def step_execute_task(step_id: int) -> None:
    """Run one scenario step (claimed by compare-and-set, so a duplicate delivery is a
    no-op) and send the steps it made due now."""
    for next_id in services.step_execute(step_id=step_id):
        step_execute_task.delay(next_id)


@shared_task(name="integrations.sweep")
def sweep_task() -> None:
    """The engine's sweeper: wakes due steps and re-drives those a dead worker held."""
    services.engine_sweep()
