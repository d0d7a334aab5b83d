"""Choices of the integrations app (the spec enums, as Django TextChoices for models)."""

from django.db import models

from integrations import spec


def _choices(enum: type, labels: dict[str, str]) -> list[tuple[str, str]]:
    return [(member.value, labels.get(member.value, member.value)) for member in enum]


class Category(models.TextChoices):
    BUYER = "buyer", "Lead buyer"
    CRM = "crm", "CRM"
    DIALER = "dialer", "Dialer"
    ENRICHMENT = "enrichment", "Enrichment"
    COMPLIANCE = "compliance", "Compliance"
    CLICK_NETWORK = "click_network", "Click network / tracker"
    ADS = "ads", "Ad platform conversions"
    MESSAGING = "messaging", "Messaging"
    CUSTOM = "custom", "Custom"


class Status(models.TextChoices):
    ENABLED = "enabled", "Enabled: sends"
    TEST = "test", "Test: renders and logs, sends only leads marked trl_test=1"
    DISABLED = "disabled", "Disabled: never sends"


class Meaning(models.TextChoices):
    PING = "ping", "Ping"
    POST = "post", "Post"
    POST_VERIFICATION = "post_verification", "Post verification"


METHOD_CHOICES = _choices(spec.Method, {})
FORMAT_CHOICES = _choices(
    spec.BodyFormat,
    {
        "json": "JSON",
        "form": "Form (x-www-form-urlencoded)",
        "multipart": "Multipart form-data",
        "xml": "XML",
        "query": "Query string only",
    },
)
AUTH_CHOICES = _choices(
    spec.AuthType,
    {
        "none": "None",
        "basic": "Basic (username + password)",
        "bearer": "Bearer token",
        "header_key": "API key in a header",
        "query_key": "API key in the query",
    },
)
SOURCE_CHOICES = _choices(
    spec.Source,
    {"body": "Body", "header": "Header", "status": "HTTP code", "constant": "Constant",
     "query": "Query"},
)  # fmt: skip
KEY_KIND_CHOICES = _choices(
    spec.KeyKind,
    {"json_path": "JSON path", "xpath": "XPath", "regex": "Regex", "none": "Whole value"},
)
OPERATOR_CHOICES = _choices(
    spec.Operator,
    {
        "equals": "equals", "not_equals": "not equals", "is_true": "is true",
        "is_false": "is false", "bigger_than": "bigger than", "smaller_than": "smaller than",
        "between": "between", "contains": "string contains",
        "not_contains": "string not contains", "starts_with": "string starts with",
        "ends_with": "string ends with", "is_empty": "is empty",
        "is_not_empty": "is not empty", "matches": "matches (regex)", "always": "always",
    },
)  # fmt: skip
OUTCOME_CHOICES = _choices(spec.OutcomeKind, {})
CAPTURE_TARGET_CHOICES = _choices(
    spec.CaptureTarget,
    {
        "lead_field": "Lead field",
        "variable": "Variable",
        "reject_reason": "Reject reason",
        "price": "Bid / price",
        "redirect_url": "Redirect URL",
        "buyer_lead_id": "Buyer's lead id",
    },
)
