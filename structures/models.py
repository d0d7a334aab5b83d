"""Workspaces, operators' memberships, fields, structures, partners, advertisers, leads."""

from __future__ import annotations

import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django_countries.fields import CountryField
from rest_framework_api_key.models import AbstractAPIKey

from structures.choices import (
    AdvertiserStatus,
    DecisionMode,
    DuplicateScope,
    FieldType,
    LeadSource,
    LeadStatus,
    MustPass,
    PartnerScope,
    PartnerStatus,
    Role,
    StructureKind,
)

GLOBAL_PREFIX = "g_"
field_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,62}$",
    "Lower-case letters, digits and underscores, starting with a letter.",
)
TIMEZONE_CHOICES = sorted((tz, tz) for tz in zoneinfo.available_timezones())


class Workspace(models.Model):
    """A tenant: one business with its own operators, fields, partners and buyers."""

    name = models.CharField("name", max_length=120)
    slug = models.SlugField(
        "slug", max_length=60, unique=True, help_text="Short unique identifier used in URLs."
    )
    timezone = models.CharField(
        "time zone",
        max_length=64,
        choices=TIMEZONE_CHOICES,
        default="UTC",
        help_text="Caps, schedules and daily figures follow this time zone.",
    )
    currency = models.CharField(
        "currency",
        max_length=3,
        default="USD",
        validators=[RegexValidator(r"^[A-Z]{3}$", "An ISO 4217 code such as USD or EUR.")],
        help_text="ISO 4217 code of prices, payouts and revenue.",
    )
    default_country = CountryField(
        "default country",
        default="US",
        help_text="Phone numbers without a country code are read as this country's; "
        "zip and state checks follow it.",
    )
    # Bumped by every change to the intake configuration (fields, structures, duplicate
    # rules, refusal policy): processes cache that configuration under this version, and
    # the API key lookup reads it for free, so no process ever serves a stale one.
    config_version = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def config_key(self) -> str:
        """Cache key of the intake configuration: the version, and the creation time so a
        re-used id (SQLite) never meets a deleted workspace's cache."""
        return f"{self.created_at.timestamp() if self.created_at else 0}:{self.config_version}"


class Membership(models.Model):
    """An operator's access to one workspace, with a role."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="memberships", verbose_name="workspace"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        verbose_name="operator",
    )
    role = models.CharField(
        "role",
        max_length=10,
        choices=Role.choices,
        default=Role.VIEWER,
        help_text="Owner and admin change everything in the workspace; viewer only reads.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.get_role_display()})"


class Field(models.Model):
    """A lead field: global (``g_`` name, no workspace, same for everyone) or a
    workspace's local field."""

    workspace = models.ForeignKey(
        Workspace,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="fields",
        verbose_name="workspace",
        help_text="Empty for global fields, which every workspace shares.",
    )
    name = models.CharField(
        "system name",
        max_length=63,
        validators=[field_name_validator],
        help_text="Key in the API and in {{templates}}. Global fields start with g_.",
    )
    label = models.CharField("label", max_length=120, help_text="Shown to operators and on forms.")
    type = models.CharField(
        "type", max_length=10, choices=FieldType.choices, default=FieldType.TEXT
    )
    regex = models.CharField(
        "regular expression",
        max_length=300,
        blank=True,
        help_text="Optional: the normalised value must match it entirely.",
    )
    choices = models.JSONField(
        "choices",
        default=list,
        blank=True,
        help_text='Select fields only: a list of allowed values, e.g. ["own", "rent"].',
    )
    is_sensitive = models.BooleanField(
        "sensitive",
        default=False,
        help_text="Masked in lists and logs (e.g. SSN, bank account).",
    )
    help_text = models.CharField("help text", max_length=300, blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "name"], name="field_unique_name_in_workspace"
            ),
            models.UniqueConstraint(
                fields=["name"], condition=Q(workspace__isnull=True), name="field_unique_global"
            ),
            # Global fields and only they carry the reserved g_ prefix.
            models.CheckConstraint(
                condition=(Q(workspace__isnull=True) & Q(name__startswith=GLOBAL_PREFIX))
                | (Q(workspace__isnull=False) & ~Q(name__startswith=GLOBAL_PREFIX)),
                name="field_global_prefix_reserved",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.name})"

    @property
    def is_global(self) -> bool:
        return self.workspace_id is None

    def clean(self) -> None:
        if self.workspace_id is None and not self.name.startswith(GLOBAL_PREFIX):
            raise ValidationError({"name": "Global field names start with g_."})
        if self.workspace_id is not None and self.name.startswith(GLOBAL_PREFIX):
            raise ValidationError({"name": "The g_ prefix is reserved for global fields."})
        if self.type == FieldType.SELECT and not self.choices:
            raise ValidationError({"choices": "A select field needs at least one choice."})
        if not isinstance(self.choices, list) or not all(isinstance(c, str) for c in self.choices):
            raise ValidationError({"choices": "Give a list of texts."})
        _check_regex(self.regex, "regex")


def _check_regex(pattern: str, field_name: str) -> None:
    import re

    if not pattern:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValidationError({field_name: f"Not a valid regular expression: {exc}."}) from exc


class Structure(models.Model):
    """A lead intake point and its ordered field list: a hosted form, user onboarding,
    a feed; the partner API posts into one too."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="structures", verbose_name="workspace"
    )
    name = models.CharField("name", max_length=120)
    slug = models.SlugField(
        "slug", max_length=60, help_text="Partners may name it in the API as `structure`."
    )
    kind = models.CharField(
        "kind", max_length=10, choices=StructureKind.choices, default=StructureKind.FORM
    )
    country = CountryField(
        "country", blank=True, help_text="Leave empty for a global (all countries) structure."
    )
    is_active = models.BooleanField("active", default=True)
    description = models.TextField("description", blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "slug"], name="structure_unique_slug")
        ]

    def __str__(self) -> str:
        return self.name


class StructureField(models.Model):
    """One field of a structure, in order, with its per-structure rules."""

    structure = models.ForeignKey(
        Structure, on_delete=models.CASCADE, related_name="structure_fields"
    )
    field = models.ForeignKey(
        Field,
        on_delete=models.PROTECT,
        related_name="structure_fields",
        help_text="A global field or one of this workspace's local fields.",
    )
    position = models.PositiveIntegerField("order", default=0)
    is_required = models.BooleanField("required", default=False)
    default = models.CharField(
        "default value", max_length=300, blank=True, help_text="Used when the value is missing."
    )
    regex = models.CharField(
        "regular expression",
        max_length=300,
        blank=True,
        help_text="Overrides the field's own expression for this structure.",
    )
    help_text = models.CharField("help text", max_length=300, blank=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["structure", "field"], name="structurefield_unique_field"
            )
        ]

    def __str__(self) -> str:
        return f"{self.structure}: {self.field.name}"

    def clean(self) -> None:
        _check_regex(self.regex, "regex")
        if (
            self.field_id
            and self.structure_id
            and self.field.workspace_id not in (None, self.structure.workspace_id)
        ):
            raise ValidationError({"field": "Choose a global field or one of this workspace's."})


class Partner(models.Model):
    """A lead source (affiliate, publisher): posts leads with an API key or a form."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="partners", verbose_name="workspace"
    )
    name = models.CharField("name", max_length=120)
    status = models.CharField(
        "status",
        max_length=10,
        choices=PartnerStatus.choices,
        default=PartnerStatus.ACTIVE,
        help_text="Only active partners may post leads.",
    )
    company = models.CharField("company", max_length=120, blank=True)
    contact_name = models.CharField("contact name", max_length=120, blank=True)
    contact_email = models.EmailField("contact email", blank=True)
    contact_phone = models.CharField("contact phone", max_length=40, blank=True)
    country = CountryField("country", blank=True, help_text="Leave empty for global.")
    default_structure = models.ForeignKey(
        Structure,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="default structure",
        help_text="Leads posted through the API use this structure unless the request "
        "names another one with `structure`.",
    )
    decision_mode = models.CharField(
        "decision",
        max_length=5,
        choices=DecisionMode.choices,
        default=DecisionMode.ASYNC,
        help_text="Synchronous: the lead API answers once the ping tree has sold or "
        "refused the lead (sold + price + redirect URL, or rejected + reason), within the "
        "time budget. Asynchronous: it answers at once; the partner reads the outcome at "
        "the status URL. A request may ask otherwise with `decision`.",
    )
    decision_budget_seconds = models.FloatField(
        "time budget (seconds)",
        default=10.0,
        validators=[MinValueValidator(0), MaxValueValidator(120)],
        help_text="Synchronous decisions only: the longest the lead API waits for the ping "
        "tree before it answers pending. A request may ask for less with `wait`.",
    )
    notes = models.TextField("notes", blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if (
            self.default_structure_id
            and self.workspace_id
            and self.default_structure.workspace_id != self.workspace_id
        ):
            raise ValidationError({"default_structure": "Choose a structure of this workspace."})


class PartnerAPIKey(AbstractAPIKey):
    """A partner's API key. Only a prefix and a SHA-512 hash are stored; the key is shown
    once when it is created."""

    partner = models.ForeignKey(
        Partner, on_delete=models.CASCADE, related_name="api_keys", verbose_name="partner"
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        "rate limit per minute",
        default=1200,
        help_text="Requests per minute allowed with this key; 0 means no limit. "
        "Above it the API answers 429 with Retry-After.",
    )
    last_used_at = models.DateTimeField("last used", null=True, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "partner API key"
        verbose_name_plural = "partner API keys"

    @property
    def workspace_id(self) -> int:
        return self.partner.workspace_id


class Advertiser(models.Model):
    """A buyer of leads; owns offers."""

    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="advertisers", verbose_name="workspace"
    )
    name = models.CharField("name", max_length=120)
    status = models.CharField(
        "status", max_length=10, choices=AdvertiserStatus.choices, default=AdvertiserStatus.ACTIVE
    )
    company = models.CharField("company", max_length=120, blank=True)
    contact_name = models.CharField("contact name", max_length=120, blank=True)
    contact_email = models.EmailField("contact email", blank=True)
    contact_phone = models.CharField("contact phone", max_length=40, blank=True)
    timezone = models.CharField("time zone", max_length=64, choices=TIMEZONE_CHOICES, default="UTC")
    country = CountryField("country", blank=True, help_text="Leave empty for global.")
    notes = models.TextField("notes", blank=True)
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DuplicateRule(models.Model):
    """Leads whose values of these fields match an earlier lead's within the window are
    duplicates. Enforced by a unique key in the database, so it holds under concurrency."""

    workspace = models.ForeignKey(
        Workspace,
        on_delete=models.CASCADE,
        related_name="duplicate_rules",
        verbose_name="workspace",
    )
    name = models.CharField("name", max_length=120)
    fields = models.ManyToManyField(
        Field,
        related_name="+",
        verbose_name="fields",
        help_text="The normalised values of all these fields make the duplicate key. "
        "A lead missing any of them is not checked by this rule.",
    )
    window_hours = models.PositiveIntegerField(
        "window (hours)",
        default=720,
        help_text="How long an accepted lead blocks its duplicates. 720 hours = 30 days.",
    )
    scope = models.CharField(
        "scope", max_length=10, choices=DuplicateScope.choices, default=DuplicateScope.WORKSPACE
    )
    is_active = models.BooleanField("active", default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RefusalPolicy(models.Model):
    """Whether leads are approved at once (off) or start pending and are approved or
    rejected once they pass what the policy asks (on)."""

    workspace = models.OneToOneField(
        Workspace, on_delete=models.CASCADE, related_name="refusal_policy"
    )
    is_enabled = models.BooleanField(
        "refuse leads",
        default=False,
        help_text="Off: every valid lead is approved. On: leads start pending and end "
        "approved or rejected.",
    )
    applies_to_api = models.BooleanField("API leads", default=True)
    applies_to_iframe = models.BooleanField("form / iframe leads", default=True)
    must_pass = models.CharField(
        "the lead must pass",
        max_length=12,
        choices=MustPass.choices,
        default=MustPass.EVERYTHING,
    )
    partner_scope = models.CharField(
        "partners", max_length=10, choices=PartnerScope.choices, default=PartnerScope.ALL
    )
    partners = models.ManyToManyField(
        Partner, blank=True, related_name="+", verbose_name="listed partners"
    )
    process_refused = models.BooleanField(
        "process refused leads",
        default=False,
        help_text="Still distribute a lead reported rejected, without paying the partner.",
    )

    class Meta:
        verbose_name = "refusal policy"
        verbose_name_plural = "refusal policies"

    def __str__(self) -> str:
        return f"Refusal policy of {self.workspace}"


def new_pcid() -> str:
    """The public conversion id: random, unguessable, URL-safe."""
    return uuid.uuid4().hex


class Lead(models.Model):
    """One person's data as a partner sent it (normalised), its source and its decision.
    ``pcid`` is its public id."""

    workspace = models.ForeignKey(
        Workspace,
        on_delete=models.CASCADE,
        related_name="leads",
        verbose_name="workspace",
        db_index=False,  # (workspace, -created_at) below
    )
    pcid = models.CharField("lead id", max_length=32, unique=True, default=new_pcid, editable=False)
    structure = models.ForeignKey(
        Structure,
        on_delete=models.PROTECT,
        related_name="leads",
        verbose_name="structure",
        db_index=False,  # (structure, -created_at) below
    )
    partner = models.ForeignKey(
        Partner,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="leads",
        verbose_name="partner",
        db_index=False,  # (partner, -created_at) below
    )
    source = models.CharField("source", max_length=10, choices=LeadSource.choices)
    status = models.CharField("status", max_length=10, choices=LeadStatus.choices)
    reason = models.CharField("reason", max_length=300, blank=True)
    data = models.JSONField("values", default=dict, help_text="Normalised values by field name.")
    external_id = models.CharField("external id", max_length=120, blank=True)
    sub1 = models.CharField("sub1", max_length=255, blank=True)
    sub2 = models.CharField("sub2", max_length=255, blank=True)
    sub3 = models.CharField("sub3", max_length=255, blank=True)
    sub4 = models.CharField("sub4", max_length=255, blank=True)
    sub5 = models.CharField("sub5", max_length=255, blank=True)
    is_test = models.BooleanField(
        "test", default=False, help_text="Test leads never count in caps, figures or money."
    )
    duplicate_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="duplicate of",
        db_index=False,  # partial index below: only duplicates carry it
    )
    ip = models.GenericIPAddressField("sender IP", null=True, blank=True)
    created_at = models.DateTimeField("received", auto_now_add=True)
    decided_at = models.DateTimeField("decided", null=True, blank=True)
    # When the sweeper should look again at a lead still pending (lost task re-drive).
    next_check_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        # Every index costs on the intake path (one lead insert per partner request), so
        # only what the lead list, the partner API and deletes need: by workspace, partner
        # and structure in time order, external ids, pending leads due, duplicate links.
        indexes = [
            models.Index(fields=["workspace", "-created_at"], name="lead_ws_created"),
            models.Index(fields=["partner", "-created_at"], name="lead_partner_created"),
            models.Index(fields=["structure", "-created_at"], name="lead_structure_created"),
            models.Index(
                fields=["duplicate_of"],
                condition=Q(duplicate_of__isnull=False),
                name="lead_duplicate_of",
            ),
            models.Index(
                fields=["next_check_at"],
                condition=Q(status=LeadStatus.PENDING),
                name="lead_pending_due",
            ),
            models.Index(
                fields=["workspace", "external_id"],
                condition=~Q(external_id=""),
                name="lead_ws_external_id",
            ),
        ]

    def __str__(self) -> str:
        # "Lead <id>": the admin capitalises titles, and a pcid must stay copyable as is.
        return f"Lead {self.pcid}"

    @property
    def status_url(self) -> str:
        return f"{settings.PUBLIC_BASE_URL}/api/v1/leads/{self.pcid}/"


class LeadEvent(models.Model):
    """One entry of a lead's history: received, duplicate, pending, approved, rejected,
    and later every step of its distribution."""

    # No index of its own: history is always read through its lead.
    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="history")
    kind = models.CharField("event", max_length=40)
    message = models.CharField("message", max_length=500, blank=True)
    data = models.JSONField("details", default=dict, blank=True)
    actor = models.CharField(
        "by", max_length=120, blank=True, help_text="Operator, partner key or system."
    )
    created_at = models.DateTimeField("at", auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name = "lead history entry"
        verbose_name_plural = "lead history"

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class DuplicateKey(models.Model):
    """A claim on a duplicate key (hash of a rule's normalised values) until
    ``expires_at``. The primary key (workspace, key) is what makes the duplicate check
    hold under concurrency: of 50 identical concurrent posts exactly one inserts the row.
    (A composite key and no surrogate id: one index fewer on every lead's insert.)"""

    pk = models.CompositePrimaryKey("workspace_id", "key")
    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    key = models.CharField(max_length=64)
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="+")
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.key


class IdempotencyRecord(models.Model):
    """The answer given to a request with an ``Idempotency-Key``, replayed when the same
    key comes again from the same partner key."""

    api_key = models.ForeignKey(PartnerAPIKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_unique")
        ]

    def __str__(self) -> str:
        return self.key
