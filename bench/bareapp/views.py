"""The baseline: the same server, middleware and JSON parser as ``POST /api/v1/leads/``,
but no authentication, validation, duplicate check or history: one INSERT."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.bareapp.models import BareLead


class BareLeadCreateView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    def post(self, request: Request) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        row = BareLead.objects.create(
            email=str(data.get("g_email", ""))[:254],
            phone=str(data.get("g_phone", ""))[:32],
            data=data,
        )
        return Response({"id": row.pk}, status=201)
