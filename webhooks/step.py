"""The webhook step: a scenario element that parks its run until the buyer calls back
(or its deadline passes), registered with the engine in ``WebhooksConfig.ready``.

Element settings (``Element.config`` of a ``webhook`` element)::

    {
      "endpoint": "wh_acme",          # webhook id of an endpoint of the workspace (required)
      "wait": true,                   # the ping tree waits until the webhook finishes
      "timeout_seconds": 300,         # only with wait: true (default 300); on expiry the
                                      # run is timed out and the ping tree moves on
      "external_id": "{{...}}",       # pairing by the buyer's lead id: a template; default
                                      # the buyer_lead_id captured by the request before
      "rules": [                      # what the callback means; first rule that holds
        {"conditions": [{"source": "body", "key_kind": "json_path", "key": "status",
                         "operator": "equals", "value": "sold|approved"}],
         "outcome": "accepted", "reason": ""}
      ],
      "captures": [                   # read into price, redirect_url, buyer_lead_id,
        {"source": "body", "key_kind": "json_path", "key": "price", "target": "price"}
      ],                              # reject_reason, lead_field:<name>, variable:<name>
      "default_outcome": "accepted"   # when no rule holds
    }

Rules and captures are response rules (``integrations.reading``) over the callback: the
sources ``body``, ``header``, ``query`` and ``constant``, the same operators and keys.
Without ``wait`` the run is parked for ``RETENTION_SECONDS`` (the ping tree takes the
pending answer and moves on; a later callback is still processed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from integrations import templating
from integrations.engine.registry import Effect, StepCall
from integrations.reading import evaluate_sample
from integrations.spec import (
    Capture,
    CaptureTarget,
    Condition,
    KeyKind,
    Method,
    Operator,
    OutcomeKind,
    RequestSpec,
    Rule,
    Source,
)
from webhooks.payloads import flat_variables

DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
# A non-waiting step keeps its lead matchable this long; then the run is timed out.
RETENTION_SECONDS = 30 * 24 * 3600
CALLBACK_SOURCES = (Source.BODY, Source.HEADER, Source.QUERY, Source.CONSTANT)
# What the post's own answer captured that the callback's outcome keeps (unless the
# callback captures it again): the sale's figures and the buyer's id for reconciling.
CARRIED_CAPTURES = ("price", "redirect_url", "buyer_lead_id")
KNOWN_KEYS = {
    "endpoint", "wait", "timeout_seconds", "external_id", "rules", "captures",
    "default_outcome",
}  # fmt: skip


class WebhookConfigError(ValueError):
    """The element's settings are not usable; the text names the setting at fault."""


@dataclass(frozen=True)
class WebhookStepConfig:
    endpoint: str
    wait: bool
    timeout_seconds: int
    external_id: str
    rules: tuple[Rule, ...]
    captures: tuple[Capture, ...]
    default_outcome: OutcomeKind

    @property
    def park_seconds(self) -> int:
        return self.timeout_seconds if self.wait else RETENTION_SECONDS

    def spec(self) -> RequestSpec:
        """The callback read as a "response": these rules and captures."""
        return RequestSpec(
            method=Method.POST,
            url="",
            rules=self.rules,
            captures=self.captures,
            default_outcome=self.default_outcome,
        )


def _choice(enum: type, value: Any, where: str) -> Any:
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(m) for m in enum)
        raise WebhookConfigError(f"{where}: {value!r} is not one of {allowed}") from None


def _source(value: Any, where: str) -> Source:
    source = _choice(Source, value or "body", where)
    if source not in CALLBACK_SOURCES:
        allowed = ", ".join(str(s) for s in CALLBACK_SOURCES)
        raise WebhookConfigError(f"{where}: a callback has no {source}; use {allowed}")
    return source


def _condition(data: Any, where: str) -> Condition:
    if not isinstance(data, dict):
        raise WebhookConfigError(f"{where}: a condition is an object")
    return Condition(
        source=_source(data.get("source"), f"{where}.source"),
        operator=_choice(Operator, data.get("operator") or "equals", f"{where}.operator"),
        key_kind=_choice(KeyKind, data.get("key_kind") or "json_path", f"{where}.key_kind"),
        key=str(data.get("key") or ""),
        value=str(data.get("value") if data.get("value") is not None else ""),
        value2=str(data.get("value2") if data.get("value2") is not None else ""),
    )


def config_parse(config: Any) -> WebhookStepConfig:
    """Check and read a webhook element's settings (admin validation and the handler)."""
    if not isinstance(config, dict):
        raise WebhookConfigError("the settings of a webhook step are an object")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise WebhookConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}"
        )
    endpoint = str(config.get("endpoint") or "").strip()
    if not endpoint:
        raise WebhookConfigError("endpoint: give the webhook id of one of your endpoints")
    wait = config.get("wait", True)
    if not isinstance(wait, bool):
        raise WebhookConfigError("wait: true (the ping tree waits) or false")
    timeout = config.get("timeout_seconds")
    if timeout is not None and not wait:
        raise WebhookConfigError(
            "timeout_seconds: a timeout is only available when the ping tree waits (wait: true)"
        )
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_SECONDS
    if isinstance(timeout, bool) or not isinstance(timeout, int):
        raise WebhookConfigError("timeout_seconds: a whole number of seconds")
    if not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise WebhookConfigError(f"timeout_seconds: between 1 and {MAX_TIMEOUT_SECONDS}")
    external_id = str(config.get("external_id") or "")
    if external_id:
        try:
            templating.render(external_id, {})
        except templating.TemplateError as exc:
            raise WebhookConfigError(f"external_id: {exc}") from None
    rules_data = config.get("rules") or []
    if not isinstance(rules_data, list):
        raise WebhookConfigError("rules: a list of {conditions, outcome, reason}")
    rules = []
    for i, rule in enumerate(rules_data):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise WebhookConfigError(f"{where}: a rule is an object")
        conditions = rule.get("conditions") or []
        if not isinstance(conditions, list) or not conditions:
            raise WebhookConfigError(f"{where}.conditions: a non-empty list")
        rules.append(
            Rule(
                conditions=tuple(
                    _condition(c, f"{where}.conditions[{j}]") for j, c in enumerate(conditions)
                ),
                outcome=_choice(OutcomeKind, rule.get("outcome") or "", f"{where}.outcome"),
                reason=str(rule.get("reason") or ""),
            )
        )
    captures_data = config.get("captures") or []
    if not isinstance(captures_data, list):
        raise WebhookConfigError("captures: a list of {source, key_kind, key, target}")
    captures = []
    for i, capture in enumerate(captures_data):
        where = f"captures[{i}]"
        if not isinstance(capture, dict):
            raise WebhookConfigError(f"{where}: a capture is an object")
        target = _choice(CaptureTarget, capture.get("target") or "", f"{where}.target")
        name = str(capture.get("target_name") or "")
        if target in (CaptureTarget.LEAD_FIELD, CaptureTarget.VARIABLE) and not name:
            raise WebhookConfigError(f"{where}.target_name: needed for {target}")
        captures.append(
            Capture(
                source=_source(capture.get("source"), f"{where}.source"),
                key_kind=_choice(
                    KeyKind, capture.get("key_kind") or "json_path", f"{where}.key_kind"
                ),
                key=str(capture.get("key") or ""),
                target=target,
                target_name=name,
            )
        )
    default = _choice(OutcomeKind, config.get("default_outcome") or "accepted", "default_outcome")
    return WebhookStepConfig(
        endpoint=endpoint,
        wait=wait,
        timeout_seconds=timeout,
        external_id=external_id,
        rules=tuple(rules),
        captures=tuple(captures),
        default_outcome=default,
    )


@dataclass
class _QueryOnly:
    """What the response reader needs of a "built request" to read the ``query`` source:
    here the callback's own query string."""

    query_params: list[tuple[str, str]]
    secrets: tuple[str, ...] = ()


def callback_effect(
    *,
    config: WebhookStepConfig,
    inbound: Any,
    context: dict[str, Any],
    payload: dict[str, Any],
    earlier: dict[str, Any] | None = None,
) -> Effect:
    """What a callback means for the run: the rules' outcome, its captures (price,
    redirect URL, buyer's lead id, lead fields, variables) and the payload's values as
    ``webhook_<key>`` variables. ``earlier``: what the step before captured (the post's
    pending answer); its price, redirect URL and buyer's lead id stand unless the
    callback gives its own, so the sale keeps the id the buyer gave at post time."""
    headers = [(str(n), str(v)) for n, v in inbound.headers]
    if inbound.content_type and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", inbound.content_type))
    outcome = evaluate_sample(
        config.spec(),
        200,
        headers,
        inbound.body,
        context=context,
        built=_QueryOnly([(str(k), str(v)) for k, v in inbound.query]),
    )
    variables = flat_variables(payload)
    variables.update(outcome.variables)
    captured = {k: str(v) for k, v in (earlier or {}).items() if k in CARRIED_CAPTURES}
    captured.update(outcome.captured)
    return Effect(
        outcome={"kind": str(outcome.kind), "reason": outcome.reason, "captured": captured},
        variables=variables,
        lead_fields=dict(outcome.fields),
    )


def handle(call: StepCall) -> Effect:
    """The engine's entry point for webhook elements (see the module docstring)."""
    from webhooks import services

    try:
        config = config_parse(call.config)
    except WebhookConfigError as exc:
        return Effect(
            outcome={"kind": "error", "reason": f"{call.element.name}: {exc}", "captured": {}},
            failed=True,
        )
    if not call.parked:
        return services.waiting_park(call=call, config=config)
    if call.resumed is not None:
        return services.waiting_resumed(call=call, config=config)
    return services.waiting_expire(call=call, config=config)


def deadline_for(config: WebhookStepConfig) -> Any:
    return timezone.now() + timedelta(seconds=config.park_seconds)


def config_check(config: dict[str, Any], workspace_id: int | None) -> None:
    """Element.clean's check of a webhook element: the settings, and an endpoint of that
    webhook id in the element's workspace. Raises WebhookConfigError (a ValueError)."""
    from webhooks.models import WebhookEndpoint

    parsed = config_parse(config)
    if workspace_id is not None and not (
        WebhookEndpoint.objects.filter(
            workspace_id=workspace_id, webhook_id=parsed.endpoint, deleted_at__isnull=True
        ).exists()
    ):
        raise WebhookConfigError(
            f"endpoint: no webhook endpoint {parsed.endpoint!r} in this workspace "
            "(Webhooks > Webhook endpoints shows their ids)"
        )
