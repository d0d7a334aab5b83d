"""Offers (what a buyer buys), their caps, ping trees with tiers, and each lead's
distribution with one result row per offer asked or skipped.

Rules the database holds: a cap counter never passes its limit (conditional UPDATE /
INSERT ... ON CONFLICT in pingtree.caps), an exclusive sale happens at most once per
lead (the distribution's sale counters and a unique partial index on exclusive sales),
one distribution per lead, one result per offer per distribution.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django_countries.fields import CountryField

from pingtree.choices import (
    CapMetric,
    CapPeriod,
    DistributionStatus,
    OfferStatus,
    PriceModel,
    ResultStage,
    ResultStatus,
    SaleMode,
    TierMode,
)

MONEY = {"max_digits": 12, "decimal_places": 4}
PERCENT = [MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("100"))]


class Offer(models.Model):
    """What an advertiser buys: price model, filters, caps, and the integration that
    pings and posts the lead to the buyer's API."""

    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="offers",
        verbose_name="workspace",
    )
    advertiser = models.ForeignKey(
        "structures.Advertiser",
        on_delete=models.PROTECT,
        related_name="offers",
        verbose_name="advertiser",
        help_text="The buyer who owns this offer.",
    )
    name = models.CharField("name", max_length=120, help_text="Shown in ping trees and reports.")
    status = models.CharField(
        "status",
        max_length=10,
        choices=OfferStatus.choices,
        default=OfferStatus.ACTIVE,
        help_text="Only active offers are pinged or posted. Paused offers keep their reason.",
    )
    pause_reason = models.CharField(
        "pause reason",
        max_length=300,
        blank=True,
        help_text="Why the offer is paused (set by auto-pause after consecutive errors).",
    )
    paused_at = models.DateTimeField("paused at", null=True, blank=True)
    country = CountryField(
        "country", blank=True, help_text="Leave empty for all countries (geo filters narrow it)."
    )
    price_model = models.CharField(
        "price model",
        max_length=16,
        choices=PriceModel.choices,
        default=PriceModel.FIXED,
        help_text="Fixed: the price below per sold lead. Bid: the price the buyer bids in "
        "its ping answer. Revenue share: the percentage below of the price the buyer reports.",
    )
    price = models.DecimalField(
        "price",
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Fixed price per sold lead (workspace currency).",
        **MONEY,
    )
    revenue_share_percent = models.DecimalField(
        "revenue share (%)",
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=PERCENT,
        help_text="Revenue share only: the share of the buyer's reported price we earn.",
    )
    min_price = models.DecimalField(
        "minimum price",
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Bids below it are refused (the buyer is not posted to).",
        **MONEY,
    )
    sale_mode = models.CharField(
        "sale",
        max_length=10,
        choices=SaleMode.choices,
        default=SaleMode.EXCLUSIVE,
        help_text="Exclusive: a lead it buys is sold to nobody else, and a lead already sold "
        "is never offered to it. Shared: multi-sale tiers may sell the lead to others too.",
    )
    integration = models.ForeignKey(
        "integrations.Integration",
        on_delete=models.PROTECT,
        related_name="offers",
        verbose_name="integration",
        help_text="Talks to the buyer: its ping start is used for bids (auctions, bid price "
        "model), its post start sells the lead.",
    )
    timeout_seconds = models.FloatField(
        "timeout (seconds)",
        default=10.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(600)],
        help_text="Longest wait for this buyer's ping or post answer; the tier's and the "
        "tree's deadlines may cut it shorter.",
    )
    filters = models.JSONField(
        "filters",
        default=dict,
        blank=True,
        help_text="Which leads this offer accepts (field rules, partners, history, schedule, "
        "geo). Empty: every lead.",
    )
    auto_pause_after = models.PositiveIntegerField(
        "auto-pause after errors",
        default=5,
        help_text="Pause the offer after this many consecutive post errors or timeouts; "
        "0 never pauses.",
    )
    consecutive_error_count = models.PositiveIntegerField(
        "consecutive errors",
        default=0,
        help_text="Post errors or timeouts in a row; reset by any answer from the buyer.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="offer_unique_name"),
            models.CheckConstraint(condition=Q(price__gte=0), name="offer_price_not_negative"),
            models.CheckConstraint(
                condition=Q(min_price__gte=0), name="offer_min_price_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(revenue_share_percent__gte=0, revenue_share_percent__lte=100),
                name="offer_revenue_share_percent",
            ),
            models.CheckConstraint(condition=Q(timeout_seconds__gt=0), name="offer_timeout"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.advertiser_id and self.workspace_id:
            if self.advertiser.workspace_id != self.workspace_id:
                errors["advertiser"] = "Choose an advertiser of this workspace."
        if self.integration_id and self.workspace_id:
            if self.integration.workspace_id != self.workspace_id:
                errors["integration"] = "Choose an integration of this workspace."
        if self.status == OfferStatus.PAUSED and not self.pause_reason:
            self.pause_reason = "Paused by an operator."
        if not isinstance(self.filters, dict):
            errors["filters"] = "Filters are a JSON object."
        else:
            from pingtree.services import offer_filters_errors

            problems = offer_filters_errors(self.filters)
            if problems:
                errors["filters"] = "; ".join(
                    f"{path}: {', '.join(msgs)}" if path else ", ".join(msgs)
                    for path, msgs in problems.items()
                )
        if errors:
            raise ValidationError(errors)


class Cap(models.Model):
    """A limit on an offer's leads sent, leads sold or revenue per hour, day, week or
    month in the workspace's time zone. Counted in CapCounter rows."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    offer = models.ForeignKey(Offer, on_delete=models.CASCADE, related_name="caps")
    metric = models.CharField(
        "metric",
        max_length=10,
        choices=CapMetric.choices,
        default=CapMetric.SOLD,
        help_text="Sent: leads posted to the buyer. Sold: leads the buyer accepted. "
        "Revenue: money earned from the offer.",
    )
    period = models.CharField(
        "per",
        max_length=10,
        choices=CapPeriod.choices,
        default=CapPeriod.DAY,
        help_text="Periods start at the top of the hour, midnight, Monday midnight or the "
        "1st of the month in the workspace's time zone.",
    )
    limit = models.DecimalField(
        "limit",
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Leads (sent, sold) or money (revenue) per period. Never exceeded.",
        **MONEY,
    )
    is_active = models.BooleanField("active", default=True)

    class Meta:
        ordering = ["offer", "metric", "period"]
        constraints = [
            models.UniqueConstraint(
                fields=["offer", "metric", "period"], name="cap_unique_metric_period"
            ),
            models.CheckConstraint(condition=Q(limit__gte=0), name="cap_limit_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.offer}: {self.limit} {self.get_metric_display().lower()} per {self.period}"

    def clean(self) -> None:
        if self.offer_id and self.workspace_id and self.offer.workspace_id != self.workspace_id:
            raise ValidationError({"offer": "Choose an offer of this workspace."})


class CapCounter(models.Model):
    """How much of a cap one period has used. Only changed by pingtree.caps, whose
    conditional statements keep ``used`` at or under the cap's limit."""

    cap = models.ForeignKey(Cap, on_delete=models.CASCADE, related_name="counters")
    period_start = models.DateTimeField("period start")
    used = models.DecimalField("used", default=Decimal("0"), **MONEY)

    class Meta:
        ordering = ["cap", "-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["cap", "period_start"], name="capcounter_unique"),
            models.CheckConstraint(condition=Q(used__gte=0), name="capcounter_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.cap_id} @ {self.period_start:%Y-%m-%d %H:%M}: {self.used}"


class PingTree(models.Model):
    """How a lead is offered to offers: tiers in order, an overall deadline, the
    partners or structures it serves and the partner's payout."""

    workspace = models.ForeignKey(
        "structures.Workspace",
        on_delete=models.CASCADE,
        related_name="ping_trees",
        verbose_name="workspace",
    )
    name = models.CharField("name", max_length=120)
    is_active = models.BooleanField(
        "active", default=True, help_text="Inactive trees distribute nothing."
    )
    is_default = models.BooleanField(
        "default tree",
        default=False,
        help_text="Serves the leads no other active tree claims by partner or structure. "
        "One per workspace.",
    )
    partners = models.ManyToManyField(
        "structures.Partner",
        blank=True,
        related_name="ping_trees",
        verbose_name="partners",
        help_text="Leads from these partners use this tree (checked before structures).",
    )
    structures = models.ManyToManyField(
        "structures.Structure",
        blank=True,
        related_name="ping_trees",
        verbose_name="structures",
        help_text="Leads posted into these structures use this tree.",
    )
    deadline_seconds = models.FloatField(
        "deadline (seconds)",
        default=30.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(3600)],
        help_text="A lead leaves the tree at this time after it entered, sold or not; "
        "no buyer holds it longer.",
    )
    payout_percent = models.DecimalField(
        "partner payout (%)",
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=PERCENT,
        help_text="Share of the revenue of each lead paid to the partner who sent it; the "
        "rest is the margin.",
    )
    created_at = models.DateTimeField("created", auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "ping tree"
        constraints = [
            models.UniqueConstraint(fields=["workspace", "name"], name="pingtree_unique_name"),
            models.UniqueConstraint(
                fields=["workspace"], condition=Q(is_default=True), name="pingtree_one_default"
            ),
            models.CheckConstraint(
                condition=Q(payout_percent__gte=0, payout_percent__lte=100),
                name="pingtree_payout_percent",
            ),
            models.CheckConstraint(condition=Q(deadline_seconds__gt=0), name="pingtree_deadline"),
        ]

    def __str__(self) -> str:
        return self.name


class Tier(models.Model):
    """One level of a ping tree: its offers are tried by the tier's mode before the
    next tier gets the lead."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    tree = models.ForeignKey(PingTree, on_delete=models.CASCADE, related_name="tiers")
    position = models.PositiveIntegerField("order", default=0, help_text="Lower runs first.")
    name = models.CharField("name", max_length=120, blank=True)
    mode = models.CharField(
        "mode",
        max_length=12,
        choices=TierMode.choices,
        default=TierMode.WATERFALL,
        help_text="Waterfall: post to one offer after another by priority until one buys. "
        "Auction: ping every offer at once, post to the highest bid (then the next). "
        "Weighted split: pick offers at random by weight. Multi-sale: sell to up to N buyers.",
    )
    max_sales = models.PositiveIntegerField(
        "buyers (multi-sale)",
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Multi-sale only: sell the lead to at most this many shared offers.",
    )
    deadline_seconds = models.FloatField(
        "tier deadline (seconds)",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1)],
        help_text="The tier gives up after this long and the next tier starts; empty: only "
        "the tree's deadline applies.",
    )

    class Meta:
        ordering = ["tree", "position", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(max_sales__gte=1), name="tier_max_sales"),
        ]

    def __str__(self) -> str:
        return self.name or f"Tier {self.position + 1} ({self.get_mode_display().split(' (')[0]})"

    def clean(self) -> None:
        if self.tree_id and self.workspace_id and self.tree.workspace_id != self.workspace_id:
            raise ValidationError({"tree": "Choose a tree of this workspace."})


class TierOffer(models.Model):
    """An offer's place in a tier: its priority (waterfall order) and weight (split)."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    tier = models.ForeignKey(Tier, on_delete=models.CASCADE, related_name="tier_offers")
    offer = models.ForeignKey(Offer, on_delete=models.CASCADE, related_name="tier_offers")
    priority = models.PositiveIntegerField(
        "priority", default=0, help_text="Waterfall order and auction tie-break: lower first."
    )
    weight = models.PositiveIntegerField(
        "weight (%)",
        default=100,
        validators=[MaxValueValidator(100)],
        help_text="Weighted split only: the share of leads this offer gets first.",
    )

    class Meta:
        ordering = ["tier", "priority", "id"]
        verbose_name = "offer in tier"
        verbose_name_plural = "offers in tier"
        constraints = [
            models.UniqueConstraint(fields=["tier", "offer"], name="tieroffer_unique"),
            models.CheckConstraint(condition=Q(weight__lte=100), name="tieroffer_weight"),
        ]

    def __str__(self) -> str:
        return f"{self.offer} in {self.tier}"

    def clean(self) -> None:
        if self.offer_id and self.workspace_id and self.offer.workspace_id != self.workspace_id:
            raise ValidationError({"offer": "Choose an offer of this workspace."})


class Distribution(models.Model):
    """One lead's way through a ping tree: its status, sales, revenue, the partner's
    payout and the margin. One per lead."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    lead = models.OneToOneField(
        "structures.Lead", on_delete=models.CASCADE, related_name="distribution"
    )
    tree = models.ForeignKey(
        PingTree,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="distributions",
        help_text="Empty when no active tree served the lead.",
    )
    status = models.CharField(
        "status",
        max_length=10,
        choices=DistributionStatus.choices,
        default=DistributionStatus.PENDING,
    )
    reason = models.CharField("reason", max_length=500, blank=True)
    is_test = models.BooleanField(
        "test", default=False, help_text="Test leads never count in caps, figures or money."
    )
    sold_count = models.PositiveIntegerField("sales", default=0)
    is_exclusive_sold = models.BooleanField(
        "sold exclusively", default=False, help_text="Sold to an exclusive offer: no other sale."
    )
    revenue = models.DecimalField("revenue", default=Decimal("0"), **MONEY)
    payout = models.DecimalField("partner payout", default=Decimal("0"), **MONEY)
    margin = models.DecimalField("margin", default=Decimal("0"), **MONEY)
    redirect_url = models.CharField("redirect URL", max_length=2000, blank=True)
    # Driving: a driver claims the row (attempt + 1, lease) by a conditional UPDATE; the
    # sweeper re-drives a running row whose lease has run out (its worker died).
    attempt = models.PositiveIntegerField("attempt", default=0)
    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    next_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    # While waiting for a buyer's callback the tree's clock stops: the seconds left are
    # kept here and the deadline restarts from them when the distribution goes on.
    time_left_seconds = models.FloatField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField("created", auto_now_add=True)
    started_at = models.DateTimeField("started", null=True, blank=True)
    deadline_at = models.DateTimeField("deadline", null=True, blank=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(is_exclusive_sold=False) | Q(sold_count__lte=1),
                name="distribution_exclusive_sold_once",
            ),
            models.CheckConstraint(
                condition=Q(margin=F("revenue") - F("payout")), name="distribution_margin"
            ),
        ]
        indexes = [
            models.Index(fields=["workspace", "-created_at"], name="distribution_ws_created"),
            models.Index(fields=["tree", "-created_at"], name="distribution_tree_created"),
            # The sweeper: only live rows are indexed.
            models.Index(
                fields=["next_check_at"],
                condition=Q(status__in=("pending", "running", "waiting")),
                name="distribution_live_due",
            ),
        ]

    def __str__(self) -> str:
        return f"Distribution of lead {self.lead_id}: {self.status}"


class OfferResult(models.Model):
    """What one offer did with one lead: skipped and why, pinged and its bid, posted and
    its answer, price, redirect URL, the scenario runs (or request logs) and the timings."""

    workspace = models.ForeignKey(
        "structures.Workspace", on_delete=models.CASCADE, related_name="+", verbose_name="workspace"
    )
    # Indexes: a result row is written on the path of every buyer call (opened, then
    # updated once or twice), so it carries only the indexes something reads by.
    # distribution and offer are the leading columns of offerresult_unique_offer and
    # offerresult_offer_created, which serve their lookups; the calls' runs and logs are
    # looked up only to unlink a deleted one, by partial indexes over the rows that
    # have one (most rows have none of the four).
    distribution = models.ForeignKey(
        Distribution, on_delete=models.CASCADE, related_name="results", db_index=False
    )
    offer = models.ForeignKey(
        Offer, on_delete=models.CASCADE, related_name="results", db_index=False
    )
    tier = models.ForeignKey(
        Tier, on_delete=models.SET_NULL, null=True, blank=True, related_name="results"
    )
    position = models.PositiveIntegerField("order", default=0)
    stage = models.CharField(
        "stage", max_length=10, choices=ResultStage.choices, default=ResultStage.SKIPPED
    )
    status = models.CharField(
        "status", max_length=10, choices=ResultStatus.choices, default=ResultStatus.SKIPPED
    )
    reason = models.CharField("reason", max_length=500, blank=True)
    is_test = models.BooleanField("test", default=False)
    is_exclusive = models.BooleanField("exclusive sale", default=False)
    ping_status = models.CharField(
        "ping answer", max_length=10, choices=ResultStatus.choices, blank=True
    )
    bid = models.DecimalField("bid", null=True, blank=True, **MONEY)
    ping_ms = models.PositiveIntegerField("ping time (ms)", null=True, blank=True)
    ping_run = models.ForeignKey(
        "integrations.ScenarioRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        verbose_name="ping run",
    )
    post_status = models.CharField(
        "post answer", max_length=10, choices=ResultStatus.choices, blank=True
    )
    post_ms = models.PositiveIntegerField("post time (ms)", null=True, blank=True)
    post_run = models.ForeignKey(
        "integrations.ScenarioRun",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        verbose_name="post run",
    )
    # A buyer whose integration is just a request per step meaning (the default scenario)
    # is called without a scenario run: its call's log row is linked here instead.
    ping_log = models.ForeignKey(
        "integrations.RequestLog",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        verbose_name="ping call",
        help_text="The ping's request log when it was called without a scenario run.",
    )
    post_log = models.ForeignKey(
        "integrations.RequestLog",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        verbose_name="post call",
        help_text="The post's request log when it was called without a scenario run.",
    )
    is_sold = models.BooleanField("sold", default=False)
    price = models.DecimalField(
        "price", null=True, blank=True, help_text="Revenue of this sale.", **MONEY
    )
    redirect_url = models.CharField("redirect URL", max_length=2000, blank=True)
    buyer_lead_id = models.CharField("buyer's lead id", max_length=255, blank=True)
    # Cap counters this attempt holds, released if it does not sell:
    # [{"counter": id, "metric": "sold", "amount": "1"}]
    reservations = models.JSONField(default=list, blank=True, editable=False)
    created_at = models.DateTimeField("at", auto_now_add=True)
    finished_at = models.DateTimeField("finished", null=True, blank=True)

    class Meta:
        ordering = ["distribution", "position", "id"]
        verbose_name = "offer result"
        constraints = [
            models.UniqueConstraint(
                fields=["distribution", "offer"], name="offerresult_unique_offer"
            ),
            # The database's own guard: at most one exclusive sale per lead.
            models.UniqueConstraint(
                fields=["distribution"],
                condition=Q(is_sold=True, is_exclusive=True),
                name="offerresult_one_exclusive_sale",
            ),
            models.CheckConstraint(
                condition=Q(is_sold=False) | Q(status=ResultStatus.ACCEPTED),
                name="offerresult_sold_is_accepted",
            ),
        ]
        indexes = [
            # Per-offer figures and the "already sent to this offer" history checks.
            models.Index(fields=["offer", "-created_at"], name="offerresult_offer_created"),
            *(
                models.Index(
                    fields=[name],
                    name=f"offerresult_{name}",
                    condition=Q(**{f"{name}__isnull": False}),
                )
                for name in ("ping_run", "post_run", "ping_log", "post_log")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.offer}: {self.get_status_display()}"
