"""The baseline of ``make bench-callbacks`` and its URL map.

The bare endpoint is the cheapest thing the same stack can do with a callback: a plain
Django view behind the same middleware that reads the JSON body and stores it as one row
(one INSERT), like the bare endpoint of bench-intake. Used with
``ROOT_URLCONF=bench.callbacks_bare`` and ``EXTRA_INSTALLED_APPS=bench.bareapp``.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from bench.bareapp.models import BareLead
from bench.urls import urlpatterns as bench_urlpatterns


@csrf_exempt
def bare_callback(request: HttpRequest, webhook_id: str, token: str) -> JsonResponse:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    row = BareLead.objects.create(email=str(data.get("pcid", ""))[:254], data=data)
    return JsonResponse({"code": 200, "id": row.pk})


urlpatterns = [
    *bench_urlpatterns,
    path("bench/bare/callbacks/<str:webhook_id>/<str:token>/", bare_callback),
]
