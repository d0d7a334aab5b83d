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
from structures.choices import LeadSource
from structures.exceptions import LeadInvalid
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
            "Send `Idempotency-Key` to retry safely."
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
        result = services.lead_intake(
            api_key=request.auth,
            payload=payload,
            source=LeadSource.API,
            ip=_client_ip(request),
            idempotency_key=idempotency_key,
        )
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return Response(result.body, status=result.status_code, headers=headers)


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
