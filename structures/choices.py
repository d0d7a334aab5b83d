"""Choices shared by structures' models, forms and serializers."""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    VIEWER = "viewer", "Viewer"


class FieldType(models.TextChoices):
    TEXT = "text", "Text"
    NUMBER = "number", "Number"
    EMAIL = "email", "Email"
    PHONE = "phone", "Phone"
    DATE = "date", "Date"
    CHECKBOX = "checkbox", "Checkbox"
    SELECT = "select", "Select"
    ZIP = "zip", "Zip / postal code"
    STATE = "state", "State"
    COUNTRY = "country", "Country"
    IP = "ip", "IP address"
    URL = "url", "URL"
    MONEY = "money", "Money"


class StructureKind(models.TextChoices):
    FORM = "form", "Form (hosted / iframe)"
    USER = "user", "User (onboarding)"
    FEED = "feed", "Feed (CSV / XML / JSON import)"


class LeadSource(models.TextChoices):
    API = "api", "API"
    IFRAME = "iframe", "Form / iframe"
    FEED = "feed", "Feed"
    USER = "user", "User onboarding"
    ADMIN = "admin", "Admin"


class LeadStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    DUPLICATE = "duplicate", "Duplicate"


class PartnerStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    BLOCKED = "blocked", "Blocked"


class AdvertiserStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    INACTIVE = "inactive", "Inactive"


class PartnerScope(models.TextChoices):
    ALL = "all", "All partners"
    INCLUDE = "include", "Only the partners listed"
    EXCLUDE = "exclude", "All partners except those listed"


class MustPass(models.TextChoices):
    EVERYTHING = "everything", "Everything (validation, filters and ping tree)"
    VALIDATION = "validation", "Validation"
    FILTERS = "filters", "Offer filters"
    PINGTREE = "pingtree", "Ping tree (sold to at least one buyer)"


class DuplicateScope(models.TextChoices):
    WORKSPACE = "workspace", "Whole workspace"
    PARTNER = "partner", "Same partner only"


class DecisionMode(models.TextChoices):
    SYNC = "sync", "Synchronous: wait for the ping tree up to the time budget"
    ASYNC = "async", "Asynchronous: answer pending at once with a status URL"
