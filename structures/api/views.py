"""The partner API: post a lead, read its status."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from structures import hooks, services
from structures.api.authentication import PartnerAPIKeyAuthentication
from structures.api.parsers import CappedJSONParser
from structures.api.serializers import (
    ErrorSerializer,
    LeadDetailSerializer,
    LeadInSerializer,
    LeadOutSerializer,
)
from structures.api.throttling import APIKeyRateThrottle
from structures.choices import DecisionMode, LeadSource, LeadStatus
from structures.exceptions import LeadInvalid
from structures.models import Partner
from structures.selectors import leads_for_partner


class PartnerAPIView(APIView):
    authentication_classes = [PartnerAPIKeyAuthentication]
    throttle_classes = [APIKeyRateThrottle]
    # Form and multipart bodies: Django enforces DATA_UPLOAD_MAX_MEMORY_SIZE on them, and
    # the exception handler answers 413.
    parser_classes = [CappedJSONParser, FormParser, MultiPartParser]


def _payload(request: Request) -> dict[str, Any]:
    data = request.data
    if hasattr(data, "dict"):  # form bodies: one value per key
        data = data.dict()
    if not isinstance(data, dict):
        raise LeadInvalid(
            "Send a JSON object.", errors={"body": ["Expected a JSON object of field values."]}
        )
    return data


def _decision_options(payload: dict[str, Any], *, partner: Partner) -> tuple[str, float]:
    """The decision mode and time budget: the partner's, or the request's ``decision``
    and ``wait`` (which may only shorten the partner's budget)."""
    errors: dict[str, list[str]] = {}
    mode = partner.decision_mode
    budget = partner.decision_budget_seconds
    if "decision" in payload:
        if payload["decision"] not in DecisionMode.values:
            errors["decision"] = ["Choose sync or async."]
        else:
            mode = payload["decision"]
    if "wait" in payload:
        try:
            wait = float(payload["wait"])
        except (TypeError, ValueError):
            wait = -1.0
        if not 0 <= wait <= 120 or wait != wait:
            errors["wait"] = ["Seconds from 0 to 120."]
        else:
            budget = min(budget, wait)
    if errors:
        raise LeadInvalid("Bad decision options.", errors=errors)
    return mode, budget


def _client_ip(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class LeadCreateView(PartnerAPIView):
    @extend_schema(
        operation_id="lead_create",
        summary="Post a lead",
        description=(
            "Body: the structure's fields plus the optional keys below. Unknown keys are "
            "refused. Answers 201 with the lead's id (pcid) and its status: `approved`, "
            "`pending` (the refusal policy decides; poll `status_url`) or `duplicate`. "
            "Send `Idempotency-Key` to retry safely.\n\n"
            "Decision: a partner set to synchronous (or a request with `decision: sync`) "
            "gets the ping tree's answer in `decision` within its time budget (`wait` "
            "seconds may shorten it): `sold` with `price` (your payout) and "
            "`redirect_url`, `unsold` with `reason`, or `pending` when the budget ran out "
            "(read `status_url` later). Asynchronous: the answer comes at once and the "
            "outcome is shown by `GET status_url`."
        ),
        request=LeadInSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Same key and body within 24 h replays the first answer.",
            )
        ],
        responses={
            201: LeadOutSerializer,
            400: OpenApiResponse(ErrorSerializer, description="Invalid fields, named."),
            401: ErrorSerializer,
            403: ErrorSerializer,
            413: ErrorSerializer,
            422: ErrorSerializer,
            429: ErrorSerializer,
        },
        tags=["leads"],
    )
    def post(self, request: Request) -> Response:
        idempotency_key = request.META.get("HTTP_IDEMPOTENCY_KEY")
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= 255 and idempotency_key.isprintable()
        ):
            raise LeadInvalid(
                "Bad Idempotency-Key.",
                errors={"Idempotency-Key": ["1 to 255 printable characters."]},
            )
        payload = _payload(request)
        mode, budget = _decision_options(payload, partner=request.auth.partner)
        payload = {k: v for k, v in payload.items() if k not in ("decision", "wait")}
        # A synchronous decision is driven by this request, not queued (hooks.py).
        token = hooks.inline_decision.set(
            mode == DecisionMode.SYNC and bool(hooks.DECISION_WAITERS)
        )
        try:
            result = services.lead_intake(
                api_key=request.auth,
                payload=payload,
                source=LeadSource.API,
                ip=_client_ip(request),
                idempotency_key=idempotency_key,
            )
            body = result.body
            lead = result.lead
            if (
                hooks.inline_decision.get()
                and lead is not None
                and not result.replayed
                and lead.status in (LeadStatus.APPROVED, LeadStatus.PENDING)
            ):
                decision = hooks.DECISION_WAITERS[0](lead, budget)
                lead.refresh_from_db(fields=["status", "reason", "decided_at"])
                body = {**services.lead_body(lead), "decision": decision}
        finally:
            hooks.inline_decision.reset(token)
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return Response(body, status=result.status_code, headers=headers)


class LeadDetailView(PartnerAPIView):
    @extend_schema(
        operation_id="lead_retrieve",
        summary="Read a lead's status and outcome",
        responses={200: LeadDetailSerializer, 401: ErrorSerializer, 404: ErrorSerializer},
        tags=["leads"],
    )
    def get(self, request: Request, pcid: str) -> Response:
        lead = leads_for_partner(partner_id=request.auth.partner_id).filter(pcid=pcid).first()
        if lead is None:
            raise Http404("No such lead.")
        body = services.lead_body(lead)
        outcome: dict[str, Any] = {}
        for provider in hooks.OUTCOME_PROVIDERS:
            outcome.update(provider(lead))
        body.update(
            created_at=lead.created_at.isoformat(),
            decided_at=lead.decided_at.isoformat() if lead.decided_at else None,
            outcome=outcome,
        )
        return Response(body)
