"""The public callback URL ``/webhooks/<webhook_id>/<token>/``: what buyers call.

Answers are JSON ``{"code": <status>, "message": ...}``. An unknown URL, a revoked one and
a callback that matches nothing get the same 404 body, so the answer never tells a
caller whether a token exists; calls to unknown URLs are counted per source address and
answered 429 past a limit. The raw request is stored with its processing, never
after it (``services.callback_receive``), and the answer comes as soon as the waiting lead
is resumed: the scenario continues on a worker.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from webhooks import services
from webhooks.payloads import Callback


def _json(answer: services.Answer) -> JsonResponse:
    # Compact separators: buyers compare the 404 body byte for byte.
    return JsonResponse(
        answer.body, status=answer.status, json_dumps_params={"separators": (",", ":")}
    )


def _headers(request: HttpRequest) -> list[tuple[str, str]]:
    return [(name, str(value)) for name, value in request.headers.items()]


def _unknown(ip: str) -> JsonResponse:
    if services.source_miss(ip=ip):
        return _json(services._answer(429, "Too many requests to unknown webhook URLs"))
    return _json(services.NOT_FOUND)


@csrf_exempt
def callback(request: HttpRequest, webhook_id: str, token: str) -> JsonResponse:
    ip = request.META.get("REMOTE_ADDR") or ""
    endpoint = services.endpoint_for_token(webhook_id=webhook_id, token=token)
    if endpoint is None:
        return _unknown(ip)
    refusal = _refusal(request)
    if refusal is not None:
        # Nothing is stored, so nothing checks a remembered endpoint again: read it now,
        # so a revoked URL never answers otherwise than an unknown one.
        if (
            endpoint.from_memo
            and services.endpoint_for_token(  # type: ignore[attr-defined]
                webhook_id=webhook_id, token=token, fresh=True
            )
            is None
        ):
            return _unknown(ip)
        return _json(refusal)
    call = Callback(
        method=request.method or "",
        query=_query_pairs(request),
        headers=_headers(request),
        content_type=request.META.get("CONTENT_TYPE") or "",
        body=request.body,
    )
    answer = services.callback_receive(
        endpoint=endpoint, call=call, ip=ip, path=endpoint.public_path
    )
    if answer is services.UNKNOWN_URL:
        return _unknown(ip)
    return _json(answer)


def _refusal(request: HttpRequest) -> services.Answer | None:
    """What is refused before the request is read: method, length, size."""
    if request.method not in ("GET", "POST"):
        return services._answer(405, "Use GET or POST")
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return services._answer(400, "Invalid Content-Length")
    try:
        if length > services.MAX_BODY_BYTES:
            raise RequestDataTooBig
        request.body  # noqa: B018 - read (and size-checked by Django) here
    except RequestDataTooBig:
        return services._answer(413, f"Body too large (limit {services.MAX_BODY_BYTES} bytes)")
    return None


def _query_pairs(request: HttpRequest) -> list[tuple[str, str]]:
    return [(key, value) for key, values in request.GET.lists() for value in values]
