"""The scenario engine's data: the elements of an integration's graph, the connections
between them, and the durable runs with one row per executed (or scheduled) step.

A run never lives in a worker's memory: its position is the set of ``RunStep`` rows that
are pending or running, waiting is a pending row with a future ``due_at``, and the
sweeper (integrations.engine.engine_sweep) wakes what is due and re-drives what a dead
worker left behind. Imported at the bottom of integrations/models.py.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from integrations.choices import Meaning

__all__ = ["Connection", "Element", "RunStep", "ScenarioRun"]


class Element(models.Model):
    """One node of an integration's scenario: a start, a request, a tool (modify field,
    modify request, set variable, set event, mirror) or flow control (wait, repeater,
    breaker)."""

    class Kind(models.TextChoices):
        START = "start", "Start"
        REQUEST = "request", "Request"
        MODIFY_FIELD = "modify_field", "Modify field"
        MODIFY_REQUEST = "modify_request", "Modify request"
        SET_VARIABLE = "set_variable", "Set variable"
        SET_EVENT = "set_event", "Set event"
        MIRROR = "mirror", "Mirror"
        WAIT = "wait", "Wait"
        REPEATER = "repeater", "Repeater"
        BREAKER = "breaker", "Breaker"
        # Filled by the webhooks app (integrations.engine.registry): parks the run until
        # the buyer calls back, or until its timeout.
        WEBHOOK = "webhook", "Webhook (wait for a callback)"

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.CASCADE,
        related_name="elements",
        verbose_name="integration",
    )
    name = models.CharField("name", max_length=120)
    position = models.PositiveIntegerField("order", default=0)
    kind = models.CharField(
        "kind",
        max_length=14,
        choices=Kind.choices,
        help_text="What the element does when the run reaches it.",
    )
    meaning = models.CharField(
        "step meaning",
        max_length=20,
        choices=Meaning.choices,
        default=Meaning.POST,
        help_text="Starts only: which entry point this is (ping, post, post verification).",
    )
    request_step = models.ForeignKey(
        "integrations.RequestStep",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="elements",
        verbose_name="request",
        help_text="Requests only: the request this element sends.",
    )
    mirror_of = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="mirrors",
        verbose_name="mirror of",
        help_text="Mirrors only: the master element whose settings this one uses.",
    )
    config = models.JSONField(
        "settings",
        default=dict,
        blank=True,
        help_text="Per kind. start: {trigger: default|action, action}; modify field: "
        "{field, template}; modify request: {headers, query, body} (name: template, applied "
        "to the next request of the run); set variable: {name, template}; set event: "
        "{name, increment}; wait: {mode: delay|until|within_hours|relative|"
        "next_working_day|weekday, seconds, at, relative_to (a variable holding a time, or "
        "lead_created), from_hour, to_hour, weekday}; repeater: {limit} (ends the loop, the "
        "run goes on); breaker: {limit} (fails the run).",
    )

    class Meta:
        ordering = ["integration", "position", "id"]
        verbose_name = "scenario element"
        indexes = [models.Index(fields=["integration", "kind"], name="element_integration_kind")]

    def __str__(self) -> str:
        # What the connection lists and the mirror choices show: the kind's label.
        return f"{self.name} ({self.get_kind_display()})"

    def clean(self) -> None:
        if self.integration_id and self.workspace_id != self.integration.workspace_id:
            raise ValidationError("The element must belong to its integration's workspace.")
        if self.kind == self.Kind.REQUEST and self.request_step_id is None:
            raise ValidationError({"request_step": "A request element needs a request."})
        if self.request_step_id and self.request_step.integration_id != self.integration_id:
            raise ValidationError({"request_step": "The request belongs to another integration."})
        if self.kind == self.Kind.MIRROR:
            if self.mirror_of_id is None:
                raise ValidationError({"mirror_of": "A mirror needs a master element."})
            if self.mirror_of.kind in (self.Kind.MIRROR, self.Kind.START):
                raise ValidationError({"mirror_of": "Mirror a tool, a request or a wait."})
            if self.mirror_of.workspace_id != self.workspace_id:
                raise ValidationError({"mirror_of": "The master is in another workspace."})
        self._clean_settings()
        from integrations.engine.registry import ELEMENT_CHECKS

        check = ELEMENT_CHECKS.get(self.kind)
        if check is not None:
            try:
                check(self.config or {}, self.workspace_id)
            except ValueError as exc:
                raise ValidationError({"config": str(exc)}) from exc

    def _clean_settings(self) -> None:
        """Settings the engine would only read when a run reaches the element (a
        wait's mode, hours, weekday, seconds; a breaker's or repeater's limit) are
        refused on save, naming the setting, by the parser the engine uses."""
        from integrations.engine.waits import WaitConfigError, wait_config_check

        config = self.config if self.config not in (None, "") else {}
        examples = {
            self.Kind.WAIT: '{"mode": "delay", "seconds": 30}',
            self.Kind.BREAKER: '{"limit": 5}',
            self.Kind.REPEATER: '{"limit": 5}',
            self.Kind.SET_EVENT: '{"name": "tries", "increment": 1}',
        }
        if self.kind in examples and not isinstance(config, dict):
            raise ValidationError({"config": f"An object of settings, e.g. {examples[self.kind]}."})
        if self.kind == self.Kind.SET_EVENT:
            increment = config.get("increment", 1)
            # Read with int() when a run reaches it: "2" and -1 pass, 1.5 or "one" would
            # fail that run.
            if isinstance(increment, bool) or not (
                isinstance(increment, int)
                or (isinstance(increment, str) and increment.strip().lstrip("-").isdigit())
            ):
                raise ValidationError(
                    {"config": f"increment: a whole number (default 1), not {increment!r}."}
                )
        if self.kind == self.Kind.WAIT:
            try:
                wait_config_check(config)
            except WaitConfigError as exc:
                raise ValidationError({"config": str(exc)}) from exc
        elif self.kind in (self.Kind.BREAKER, self.Kind.REPEATER):
            unknown = sorted(set(config) - {"limit"})
            if unknown:
                raise ValidationError(
                    {"config": f"unknown setting {', '.join(unknown)}; use limit."}
                )
            limit = config.get("limit")
            # The engine reads it with int(): "5" and 5 pass, 5.5 or "five" would fail
            # the run when it reaches the element, and a limit below 1 lets nothing by.
            if limit is not None and (
                isinstance(limit, bool)
                or not isinstance(limit, int | str)
                or not str(limit).strip().isdigit()
                or int(limit) < 1
            ):
                raise ValidationError(
                    {
                        "config": f"limit: a whole number of passes, 1 or more (or no limit "
                        f"to let every pass through), not {limit!r}."
                    }
                )


class Connection(models.Model):
    """An arrow from one element to the next. Its conditions look at what the previous
    element produced (outcome, captured values, variables, lead fields); all must hold
    (AND); none means always. An element may branch to several connections."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.CASCADE,
        related_name="connections",
        verbose_name="integration",
    )
    from_element = models.ForeignKey(
        Element, on_delete=models.CASCADE, related_name="outgoing", verbose_name="from"
    )
    to_element = models.ForeignKey(
        Element, on_delete=models.CASCADE, related_name="incoming", verbose_name="to"
    )
    position = models.PositiveIntegerField("order", default=0)
    conditions = models.JSONField(
        "conditions",
        default=list,
        blank=True,
        help_text="A list of {source, key_kind, key, operator, value, value2}; sources: "
        "outcome, reason, captured, variable, field, constant. Empty: always.",
    )

    class Meta:
        ordering = ["from_element", "position", "id"]
        verbose_name = "scenario connection"

    def __str__(self) -> str:
        # Names, not ids: the editor's rows are titled with it (its inline loads both
        # ends with the connections).
        ends = [
            getattr(self, name).name if getattr(self, f"{name}_id") else "?"
            for name in ("from_element", "to_element")
        ]
        return " → ".join(ends)

    def clean(self) -> None:
        for element in (self.from_element, self.to_element):
            if element.integration_id != self.integration_id:
                raise ValidationError("Both ends must be elements of this integration.")


class ScenarioRun(models.Model):
    """One execution of an integration's scenario for one lead or event: its variables,
    its counters and its status. Its position is its pending and running steps."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED)

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.CASCADE,
        related_name="runs",
        verbose_name="integration",
        db_index=False,  # run_integration_time leads with it
    )
    lead = models.ForeignKey(
        "structures.Lead",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="lead",
    )
    # Indexed by run_status (Meta): one btree, without the varchar_pattern_ops twin
    # db_index=True adds for LIKE, which no query of runs uses.
    status = models.CharField(
        "status", max_length=10, choices=Status.choices, default=Status.RUNNING
    )
    meaning = models.CharField(
        "step meaning", max_length=20, choices=Meaning.choices, default=Meaning.POST
    )
    variables = models.JSONField(
        "variables", default=dict, blank=True, help_text="Values set or captured so far."
    )
    counters = models.JSONField(
        "counters",
        default=dict,
        blank=True,
        help_text="Visits per element (breakers, repeaters) and event counters.",
    )
    is_dry_run = models.BooleanField(
        "dry run", default=False, help_text="Nothing is sent; requests are only rendered."
    )
    reason = models.CharField("reason", max_length=500, blank=True)
    result = models.JSONField(
        "result",
        default=dict,
        blank=True,
        help_text="The last answer of a request or callback: kind (accepted, rejected, "
        "pending, ...), reason and captured values (price, redirect URL, buyer's lead id); "
        "while parked on a webhook also waiting: webhook and blocking: true/false.",
    )
    created_at = models.DateTimeField("started", auto_now_add=True)
    deadline_at = models.DateTimeField(
        "deadline",
        null=True,
        blank=True,
        help_text="A run still running or waiting at this time is timed out by the sweeper.",
    )
    finished_at = models.DateTimeField("finished", null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "scenario run"
        indexes = [
            models.Index(fields=["status"], name="run_status"),
            models.Index(fields=["integration", "-created_at"], name="run_integration_time"),
            # The sweeper's deadline scan: only live runs with a deadline are indexed.
            models.Index(
                fields=["deadline_at"],
                condition=Q(status__in=("running", "waiting"), deadline_at__isnull=False),
                name="run_live_deadline",
            ),
        ]

    def __str__(self) -> str:
        # The integration's name: lists load it with the run (list_select_related).
        return f"run {self.pk} of {self.integration.name}: {self.get_status_display().lower()}"


class RunStep(models.Model):
    """One visit of a run to an element: scheduled (pending, with a due time), claimed
    (running), then done, failed or skipped, with its input, output and timings."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"

    # Not indexed: every step is written and rewritten on the hot path, and only a
    # workspace's deletion looks steps up by workspace (runs and steps are read by run).
    # No database constraint either: it is the run's workspace (the run's own key holds
    # it), and the check at every step's commit locked the workspace's row, shared by
    # every run of the tenant (docs/benchmarks.md, bench-engine). Deleting a workspace
    # still deletes its steps (Django's CASCADE, and through their runs).
    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name="workspace",
        db_index=False,
        db_constraint=False,
    )
    run = models.ForeignKey(
        ScenarioRun, on_delete=models.CASCADE, related_name="steps", verbose_name="run"
    )
    element = models.ForeignKey(
        Element, on_delete=models.CASCADE, related_name="run_steps", verbose_name="element"
    )
    # Looked up through runstep_unique_child, which leads with it (a partial index, but
    # `parent_step_id = x` implies the predicate `parent_step_id IS NOT NULL`).
    # No database constraint: a parent is a step of the same run (the run's key holds
    # both), the engine's statements take it from the row they just finished, and a
    # step goes only with its run (CASCADE, done by Django) or its element.
    parent_step = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        verbose_name="previous step",
        db_index=False,
        db_constraint=False,
    )
    status = models.CharField(
        "status", max_length=10, choices=Status.choices, default=Status.PENDING
    )
    due_at = models.DateTimeField("due")
    enqueued_at = models.DateTimeField(
        "queued", null=True, blank=True, help_text="When a task was last sent for it."
    )
    claimed_at = models.DateTimeField("claimed", null=True, blank=True)
    attempt = models.PositiveSmallIntegerField("attempt", default=1)
    input = models.JSONField("input", default=dict, blank=True)
    output = models.JSONField("output", default=dict, blank=True)
    started_at = models.DateTimeField("started", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)
    duration_ms = models.PositiveIntegerField("time (ms)", null=True, blank=True)

    class Meta:
        ordering = ["run", "id"]
        verbose_name = "run step"
        constraints = [
            # A parent schedules each next element once: a step delivered twice, or
            # re-driven after its worker died, cannot fork the run. (A parent belongs to
            # one run, so the run adds nothing to the key; parent first serves lookups
            # of a step's children.)
            models.UniqueConstraint(
                fields=["parent_step", "element"],
                condition=Q(parent_step__isnull=False),
                name="runstep_unique_child",
            ),
            # Starts have no parent: one per start element and run.
            models.UniqueConstraint(
                fields=["run", "element"],
                condition=Q(parent_step__isnull=True),
                name="runstep_unique_start",
            ),
        ]
        indexes = [
            # The sweeper's two scans stay small: only live rows are indexed.
            models.Index(
                fields=["due_at"], condition=Q(status="pending"), name="runstep_pending_due"
            ),
            models.Index(
                fields=["claimed_at"], condition=Q(status="running"), name="runstep_running_claim"
            ),
        ]

    def __str__(self) -> str:
        return f"step {self.pk} ({self.element_id}): {self.status}"
