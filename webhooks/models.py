"""Webhook endpoints (a stable public URL per buyer), the waiting webhooks of parked
scenario runs, and the log of every inbound callback, stored raw before it is processed.
"""

from __future__ import annotations

import secrets as pysecrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

WEBHOOK_ID_RE = r"^[A-Za-z0-9_-]{3,64}$"


def new_webhook_id() -> str:
    """A short random id; operators may choose their own (and reuse a deleted one's)."""
    return "wh_" + pysecrets.token_hex(6)


class WebhookEndpoint(models.Model):
    """A public callback URL ``/webhooks/<webhook_id>/<token>/`` a buyer calls back, with
    how its callbacks are paired to waiting leads and how they are checked."""

    class MatchBy(models.TextChoices):
        PCID = "pcid", "Our lead id (pcid)"
        EXTERNAL_ID = "external_id", "The buyer's lead id + advertiser"

    class Location(models.TextChoices):
        ANY = "any", "Query or body"
        QUERY = "query", "Query parameter"
        BODY = "body", "Body (JSON path or form key)"
        HEADER = "header", "Header"

    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="webhook_endpoints",
        verbose_name="workspace",
    )
    name = models.CharField("name", max_length=120, help_text="For operators, e.g. the buyer.")
    webhook_id = models.CharField(
        "webhook id",
        max_length=64,
        default=new_webhook_id,
        validators=[RegexValidator(WEBHOOK_ID_RE, "3-64 letters, digits, _ or -.")],
        help_text="The stable first part of the URL. The id (and token) of a deleted endpoint "
        "of this workspace can be given to a new one, so the buyer changes nothing.",
    )
    token_hash = models.CharField("token hash", max_length=64, editable=False)
    token_encrypted = models.TextField("token (encrypted)", editable=False, blank=True)
    advertiser = models.ForeignKey(
        "structures.Advertiser",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="webhook_endpoints",
        verbose_name="advertiser",
        help_text="The buyer calling this URL. Needed to pair by the buyer's lead id unless "
        "the callback names the advertiser itself (advertiser key).",
    )
    match_by = models.CharField(
        "pair by",
        max_length=12,
        choices=MatchBy.choices,
        default=MatchBy.PCID,
        help_text="Lead-ID pairing: which identifier the callback carries.",
    )
    id_location = models.CharField(
        "identifier location",
        max_length=6,
        choices=Location.choices,
        default=Location.ANY,
        help_text="Where the identifier is read: query parameter, body (JSON path such as "
        "data.lead_id, or a form key), header, or query then body.",
    )
    id_key = models.CharField(
        "identifier key",
        max_length=200,
        default="pcid",
        help_text="The query key, body path or header name holding the identifier.",
    )
    advertiser_key = models.CharField(
        "advertiser key",
        max_length=200,
        blank=True,
        help_text="Pairing by the buyer's lead id without a fixed advertiser: where the "
        "advertiser id is read (same location as the identifier).",
    )
    signing_secret_encrypted = models.TextField(
        "signing secret (encrypted)",
        blank=True,
        editable=False,
        help_text="Standard Webhooks secret (whsec_...); empty: no signature check.",
    )
    allowed_ips = models.TextField(
        "allowed IPs",
        blank=True,
        help_text="Addresses or networks (CIDR) allowed to call, one per line or comma "
        "separated. Empty: any.",
    )
    trigger_integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="webhook_triggers",
        verbose_name="starts scenario",
        help_text="Webhook trigger: each callback starts this integration's scenario (its "
        "start with trigger 'webhook'), the payload as variables. Empty: callbacks resume "
        "waiting leads.",
    )
    is_enabled = models.BooleanField(
        "enabled",
        default=True,
        help_text="A disabled (revoked) endpoint answers exactly like an unknown URL.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)
    deleted_at = models.DateTimeField("deleted", null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "id"]
        verbose_name = "webhook endpoint"
        constraints = [
            # One live endpoint per webhook id; a deleted one's id is free again.
            models.UniqueConstraint(
                fields=["webhook_id"],
                condition=Q(deleted_at__isnull=True),
                name="webhook_endpoint_live_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.webhook_id})"

    @property
    def is_signed(self) -> bool:
        return bool(self.signing_secret_encrypted)

    @property
    def public_path(self) -> str:
        """The URL path without the token (what the log shows)."""
        return f"/webhooks/{self.webhook_id}/"

    def public_url(self) -> str:
        """The full URL to give the buyer (decrypts the token)."""
        from integrations import secrets

        token = secrets.decrypt(self.token_encrypted)
        return f"{settings.PUBLIC_BASE_URL}/webhooks/{self.webhook_id}/{token}/"


class WaitingWebhook(models.Model):
    """A scenario run parked on a webhook step: the lead, how a callback finds it, and
    until when it waits. The callback that matched it is the inbound request pointing
    at it with status matched (one foreign key, not two pointing at each other)."""

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        MATCHED = "matched", "Matched"
        TIMED_OUT = "timed_out", "Timed out"
        CANCELLED = "cancelled", "Cancelled"

    # Every callback rewrites its waiting row (status is in an index's predicate, so the
    # update is not HOT and touches every index): no index that another one already
    # serves. waiting_ws_created and waiting_endpoint_pcid lead with these two.
    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name="workspace",
        db_index=False,
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        on_delete=models.CASCADE,
        related_name="waiting",
        verbose_name="endpoint",
        db_index=False,
    )
    run = models.ForeignKey(
        "integrations.ScenarioRun",
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name="scenario run",
    )
    step = models.OneToOneField(
        "integrations.RunStep",
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name="run step",
    )
    lead = models.ForeignKey(
        "structures.Lead",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="lead",
    )
    pcid = models.CharField("lead id", max_length=32, blank=True)
    external_id = models.CharField(
        "buyer's lead id", max_length=120, blank=True, help_text="Paired with the advertiser."
    )
    advertiser = models.ForeignKey(
        "structures.Advertiser",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="advertiser",
        db_index=False,  # partial index below: pcid pairing leaves it empty
    )
    is_blocking = models.BooleanField(
        "ping tree waits", default=True, help_text="The ping tree waits for this callback."
    )
    deadline_at = models.DateTimeField("deadline")
    status = models.CharField(
        "status", max_length=10, choices=Status.choices, default=Status.WAITING
    )
    matched_at = models.DateTimeField("matched", null=True, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "waiting webhook"
        indexes = [
            # A callback's two pairing paths; duplicates look at matched rows too.
            models.Index(fields=["endpoint", "pcid"], name="waiting_endpoint_pcid"),
            models.Index(
                fields=["endpoint", "external_id", "advertiser"],
                condition=~Q(external_id=""),
                name="waiting_endpoint_external",
            ),
            models.Index(fields=["workspace", "-created_at"], name="waiting_ws_created"),
            models.Index(
                fields=["deadline_at"], condition=Q(status="waiting"), name="waiting_live_deadline"
            ),
            # For an advertiser's deletion (SET_NULL); only rows paired by external id.
            models.Index(
                fields=["advertiser"],
                condition=Q(advertiser__isnull=False),
                name="waiting_advertiser",
            ),
        ]

    def __str__(self) -> str:
        return f"waiting {self.pk} ({self.status})"


class InboundWebhookRequest(models.Model):
    """One request to a webhook URL as it arrived (token left out, secrets masked), and
    what came of it."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        MATCHED = "matched", "Matched"
        DUPLICATE = "duplicate", "Duplicate (already matched)"
        UNMATCHED = "unmatched", "Not matched yet (kept for a late waiting row)"
        NOT_FOUND = "not_found", "Nothing waiting matched"
        STARTED = "started", "Started a scenario"
        REFUSED = "refused", "Refused (IP, signature)"
        REPLAY = "replay", "Refused (replayed message id)"
        INVALID = "invalid", "Invalid (too large, no identifier)"

    # Written once and updated once per callback: no index that another one already
    # serves (inbound_ws_time leads with the workspace), and the two links that most
    # rows leave empty indexed only where set (partial indexes below).
    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name="workspace",
        db_index=False,
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint,
        on_delete=models.CASCADE,
        related_name="requests",
        verbose_name="endpoint",
        db_index=False,  # (endpoint, -received_at) below
    )
    method = models.CharField("method", max_length=10)
    path = models.CharField("path", max_length=200, help_text="Without the token.")
    query = models.JSONField("query", default=list, blank=True)
    headers = models.JSONField("headers", default=list, blank=True, help_text="Secrets masked.")
    content_type = models.CharField("content type", max_length=200, blank=True)
    body = models.TextField("body", blank=True)
    source_ip = models.GenericIPAddressField("source IP", null=True, blank=True)
    received_at = models.DateTimeField("received", auto_now_add=True)
    status = models.CharField(
        "result", max_length=10, choices=Status.choices, default=Status.RECEIVED
    )
    note = models.CharField("note", max_length=300, blank=True)
    identifier = models.CharField("identifier", max_length=120, blank=True)
    advertiser_ref = models.CharField("advertiser (as sent)", max_length=64, blank=True)
    message_id = models.CharField(
        "message id", max_length=120, blank=True, help_text="Standard Webhooks webhook-id."
    )
    waiting = models.ForeignKey(
        WaitingWebhook,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="waiting webhook",
        db_index=False,
    )
    started_run = models.ForeignKey(
        "integrations.ScenarioRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="started run",
        db_index=False,
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name = "inbound webhook request"
        constraints = [
            # A signed message id is accepted once per endpoint: a replay is refused.
            models.UniqueConstraint(
                fields=["endpoint", "message_id"],
                condition=~Q(message_id=""),
                name="inbound_unique_message",
            ),
        ]
        indexes = [
            models.Index(fields=["endpoint", "-received_at"], name="inbound_endpoint_time"),
            models.Index(fields=["workspace", "-received_at"], name="inbound_ws_time"),
            # Early callbacks (arrived before their waiting row committed) matched later.
            models.Index(
                fields=["endpoint", "identifier"],
                condition=Q(status="unmatched"),
                name="inbound_unmatched",
            ),
            # Stored but never processed (the web process died in between): re-driven
            # by the sweep. Only such rows are indexed: normally none.
            models.Index(
                fields=["received_at"], condition=Q(status="received"), name="inbound_stuck"
            ),
            # For the deletion of a waiting row or a run (SET_NULL): only rows that have one.
            models.Index(
                fields=["waiting"], condition=Q(waiting__isnull=False), name="inbound_waiting"
            ),
            models.Index(
                fields=["started_run"],
                condition=Q(started_run__isnull=False),
                name="inbound_started_run",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.status})"
