"""Integrations: named connections to outside APIs, their request steps, response rules,
captures, and the log of every call."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django_countries.fields import CountryField

from integrations import choices
from integrations.choices import Category, Meaning, Status
from structures.models import Lead, Workspace


class Integration(models.Model):
    """A named connection to an outside system (a buyer, CRM, network, ad platform),
    built once and used by offers, postbacks, forms and scenarios."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="integrations", verbose_name="workspace"
    )
    name = models.CharField("name", max_length=120)
    category = models.CharField(
        "category", max_length=20, choices=Category.choices, default=Category.CUSTOM
    )
    country = CountryField("country", blank=True, help_text="Leave empty for global.")
    status = models.CharField(
        "status",
        max_length=10,
        choices=Status.choices,
        default=Status.TEST,
        help_text="Disabled never sends. Test renders and logs without sending, except for "
        "leads or events carrying trl_test=1. Enabled sends.",
    )
    description = models.TextField("description", blank=True)
    docs_url = models.URLField("documentation", blank=True, help_text="The vendor's API docs.")
    library_slug = models.SlugField(
        "library origin",
        max_length=80,
        blank=True,
        help_text="The library integration this was installed from, if any.",
    )
    config_version = models.PositiveIntegerField(
        "configuration version",
        default=0,
        editable=False,
        help_text="Bumped on every change to the integration, its requests or their rows; "
        "each process checks it before using its cached copy of a request's configuration.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="integration_unique_name")
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Never write ``config_version`` back from memory: it is the database's counter
        (bumped with F() + 1), and a stale instance writing an older number would let a
        later change reuse a version that processes have already cached."""
        is_plain_update = not (args or kwargs.get("force_insert") or self._state.adding)
        if is_plain_update and kwargs.get("update_fields") is None:
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name != "config_version"
            ]
        super().save(*args, **kwargs)


class RequestStep(models.Model):
    """One HTTP request of an integration: method, URL, format, headers, query, body,
    auth, timeout, and the rules that read its response."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    integration = models.ForeignKey(
        Integration, on_delete=models.CASCADE, related_name="requests", verbose_name="integration"
    )
    name = models.CharField("name", max_length=120, default="Request")
    position = models.PositiveIntegerField("order", default=0)
    meaning = models.CharField(
        "step meaning",
        max_length=20,
        choices=Meaning.choices,
        default=Meaning.POST,
        help_text="Its role in a ping tree: ping, post or post verification.",
    )
    method = models.CharField(
        "method", max_length=6, choices=choices.METHOD_CHOICES, default="POST"
    )
    url = models.CharField(
        "URL",
        max_length=2000,
        help_text="May hold {{templates}}, e.g. https://api.example.com/leads?src={{sub1}}.",
    )
    body_format = models.CharField(
        "format", max_length=10, choices=choices.FORMAT_CHOICES, default="json"
    )
    xml_root = models.CharField(
        "XML root element", max_length=60, default="request", help_text="XML format only."
    )
    timeout_seconds = models.FloatField(
        "timeout (seconds)",
        default=40.0,
        help_text="The whole exchange must finish within it; the response is read as soon "
        "as it arrives.",
    )
    auth_type = models.CharField(
        "authentication", max_length=12, choices=choices.AUTH_CHOICES, default="none"
    )
    auth_name = models.CharField(
        "username / key name",
        max_length=120,
        blank=True,
        help_text="Basic: the username. API key: the header or query parameter name.",
    )
    auth_secret_encrypted = models.TextField(
        "secret (encrypted)",
        blank=True,
        editable=False,
        help_text="Encrypted at rest; never shown again.",
    )
    default_outcome = models.CharField(
        "outcome when no rule matches",
        max_length=10,
        choices=choices.OUTCOME_CHOICES,
        default="accepted",
        help_text="Used for 2xx answers no rule decided; other answers are errors.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    updated_at = models.DateTimeField("updated", auto_now=True)

    class Meta:
        ordering = ["integration", "position", "id"]
        verbose_name = "request"
        verbose_name_plural = "requests"

    def __str__(self) -> str:
        return f"{self.integration}: {self.name}"

    @property
    def has_secret(self) -> bool:
        return bool(self.auth_secret_encrypted)

    def clean(self) -> None:
        if self.integration_id and self.workspace_id != self.integration.workspace_id:
            raise ValidationError("The request must belong to its integration's workspace.")
        if not 0.1 <= self.timeout_seconds <= 120:
            raise ValidationError({"timeout_seconds": "Between 0.1 and 120 seconds."})


class _NameValue(models.Model):
    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField("order", default=0)
    name = models.CharField("name", max_length=200)
    value = models.TextField(
        "value", blank=True, help_text="Text or a template, e.g. {{g_email | lower}}."
    )

    class Meta:
        abstract = True
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"{self.name}={self.value[:40]}"


class RequestHeader(_NameValue):
    """A header sent with the request (value may be a template; CR/LF refused)."""

    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="headers")


class RequestQueryParam(_NameValue):
    """A query-string parameter of the request."""

    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="query_params")

    class Meta(_NameValue.Meta):
        verbose_name = "query parameter"


class RequestBodyField(_NameValue):
    """A body field. Dots and brackets build nested JSON/XML: customer.name, items[0].sku."""

    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="body_fields")

    class Meta(_NameValue.Meta):
        verbose_name = "body field"


class ResponseRule(models.Model):
    """A condition on the response and what it means. Rows are checked in order; a row
    marked "and next" must hold together with the following row; the first rule that
    holds decides the outcome."""

    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveIntegerField("order", default=0)
    source = models.CharField(
        "source", max_length=10, choices=choices.SOURCE_CHOICES, default="body"
    )
    key_kind = models.CharField(
        "key type", max_length=10, choices=choices.KEY_KIND_CHOICES, default="json_path"
    )
    key = models.CharField(
        "key",
        max_length=500,
        blank=True,
        help_text="JSON path (data.status), XPath (//status) or regex.",
    )
    operator = models.CharField(
        "operator", max_length=14, choices=choices.OPERATOR_CHOICES, default="equals"
    )
    value = models.CharField(
        "value",
        max_length=500,
        blank=True,
        help_text="Alternatives with | (approved|accepted), wildcard *.",
    )
    value2 = models.CharField(
        "second value", max_length=500, blank=True, help_text="Upper bound for between."
    )
    and_next = models.BooleanField(
        "and next row", default=False, help_text="Must hold together with the next row."
    )
    outcome = models.CharField(
        "outcome", max_length=10, choices=choices.OUTCOME_CHOICES, default="accepted"
    )
    reason = models.CharField(
        "reason",
        max_length=300,
        blank=True,
        help_text="Shown as the reason; may use {{templates}}.",
    )

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "response rule"

    def __str__(self) -> str:
        return f"{self.source} {self.key} {self.operator} {self.value} -> {self.outcome}"


class ResponseCapture(models.Model):
    """A value read from the response into a lead field, a variable, the reject reason,
    the bid price, the redirect URL or the buyer's lead id."""

    request = models.ForeignKey(RequestStep, on_delete=models.CASCADE, related_name="captures")
    position = models.PositiveIntegerField("order", default=0)
    source = models.CharField(
        "source", max_length=10, choices=choices.SOURCE_CHOICES, default="body"
    )
    key_kind = models.CharField(
        "key type", max_length=10, choices=choices.KEY_KIND_CHOICES, default="json_path"
    )
    key = models.CharField("key", max_length=500, blank=True)
    target = models.CharField(
        "capture into", max_length=14, choices=choices.CAPTURE_TARGET_CHOICES, default="variable"
    )
    target_name = models.CharField(
        "name", max_length=120, blank=True, help_text="Lead field or variable name."
    )

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "capture"

    def __str__(self) -> str:
        return f"{self.key} -> {self.target} {self.target_name}"


class RequestLog(models.Model):
    """One outbound call (or a call that was only rendered, in test mode): the exact
    request with secrets masked, the response, timing and outcome."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    # Written once per outbound call: no index that another one already serves
    # (reqlog_integration_time and reqlog_lead_time lead with these two).
    integration = models.ForeignKey(
        Integration,
        on_delete=models.CASCADE,
        related_name="logs",
        verbose_name="integration",
        db_index=False,
    )
    request_step = models.ForeignKey(
        RequestStep,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="logs",
        verbose_name="request",
    )
    lead = models.ForeignKey(
        Lead,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        verbose_name="lead",
    )
    origin = models.CharField(
        "origin", max_length=20, default="send", help_text="send, test endpoint, replay, dry run..."
    )
    was_sent = models.BooleanField(
        "sent", default=True, help_text="False when only rendered (test or disabled)."
    )
    method = models.CharField("method", max_length=6)
    url = models.TextField("URL")
    request_headers = models.JSONField("request headers", default=list)
    request_body = models.TextField("request body", blank=True)
    status_code = models.PositiveSmallIntegerField("HTTP code", null=True, blank=True)
    response_headers = models.JSONField("response headers", default=list)
    response_body = models.TextField("response body", blank=True)
    duration_ms = models.PositiveIntegerField("time (ms)", null=True, blank=True)
    outcome = models.CharField("outcome", max_length=10, choices=choices.OUTCOME_CHOICES)
    reason = models.CharField("reason", max_length=500, blank=True)
    error = models.CharField("error", max_length=300, blank=True)
    captured = models.JSONField("captured", default=dict, blank=True)
    run_step = models.ForeignKey(
        "integrations.RunStep",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="logs",
        verbose_name="scenario step",
        db_index=False,  # partial index below: most calls are not scenario steps
        help_text="The scenario run's step that made this call.",
    )
    created_at = models.DateTimeField("at", auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "request log"
        indexes = [
            models.Index(fields=["integration", "-created_at"], name="reqlog_integration_time"),
            models.Index(fields=["lead", "-created_at"], name="reqlog_lead_time"),
            models.Index(
                fields=["run_step"],
                condition=models.Q(run_step__isnull=False),
                name="reqlog_run_step",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.url[:60]} -> {self.outcome}"


from integrations.models_engine import *  # noqa: F403,E402
