"""Drive scenario runs from a shell or cron, without Celery.

manage.py scenario_drive --run 42 --deadline 10   # one run's due steps, here
manage.py scenario_drive --sweep --deadline 10    # time out, re-drive, run what is due
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.engine import services as engine
from integrations.models import ScenarioRun


class Command(BaseCommand):
    help = "Execute due scenario steps in this process (one run, or a sweep of all)."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--run", type=int, help="The id of the run to drive.")
        target.add_argument(
            "--sweep",
            action="store_true",
            help="Time out runs past their deadline, take back steps of dead workers and "
            "execute every due step.",
        )
        parser.add_argument(
            "--deadline",
            type=float,
            default=10.0,
            help="Seconds to keep executing; what is left waits for the next call.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        deadline = options["deadline"]
        if deadline <= 0:
            raise CommandError("--deadline must be a positive number of seconds.")
        if options["sweep"]:
            timed_out = engine.runs_time_out()
            engine.engine_sweep(send=False)
            executed = engine.steps_drive(deadline_seconds=deadline)
            self.stdout.write(f"sweep: {timed_out} timed out, {executed} steps executed")
            return
        if not ScenarioRun.objects.filter(pk=options["run"]).exists():
            raise CommandError(f"No scenario run {options['run']}.")
        run = engine.run_drive(run_id=options["run"], deadline_seconds=deadline, hand_off=False)
        reason = f" ({run.reason})" if run.reason else ""
        self.stdout.write(f"run {run.pk}: {run.status}{reason}")
