"""Choices shared by the ping tree's models, admin, services and selectors."""

from django.db import models


class OfferStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    INACTIVE = "inactive", "Inactive"


class PriceModel(models.TextChoices):
    FIXED = "fixed", "Fixed price per lead"
    BID = "bid", "Bid from the ping"
    REVENUE_SHARE = "revenue_share", "Revenue share"


class SaleMode(models.TextChoices):
    EXCLUSIVE = "exclusive", "Exclusive (the lead is sold to this buyer only)"
    SHARED = "shared", "Shared (the lead may also be sold to other buyers)"


class CapMetric(models.TextChoices):
    SENT = "sent", "Leads sent (posted)"
    SOLD = "sold", "Leads sold"
    REVENUE = "revenue", "Revenue"


class CapPeriod(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"
    WEEK = "week", "Week (from Monday)"
    MONTH = "month", "Month"


class TierMode(models.TextChoices):
    WATERFALL = "waterfall", "Waterfall (one offer after another by priority)"
    AUCTION = "auction", "Auction (ping all, highest bid wins)"
    WEIGHTED = "weighted", "Weighted split (by percentages)"
    MULTI_SALE = "multi_sale", "Multi-sale (sell to up to N buyers)"


class DistributionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting for a buyer's callback"
    SOLD = "sold", "Sold"
    UNSOLD = "unsold", "Not sold"


DISTRIBUTION_FINISHED = (DistributionStatus.SOLD, DistributionStatus.UNSOLD)


class ResultStage(models.TextChoices):
    SKIPPED = "skipped", "Skipped"
    PINGED = "pinged", "Pinged"
    POSTED = "posted", "Posted"


class ResultStatus(models.TextChoices):
    SKIPPED = "skipped", "Skipped"
    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"
    PENDING = "pending", "Pending"
    ERROR = "error", "Error"
    TIMEOUT = "timeout", "Timeout"
    OUTBID = "outbid", "Outbid (lost the auction)"
