"""Partner API key authentication: ``Authorization: Api-Key <key>``."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from structures.models import PartnerAPIKey

_TOUCH_EVERY = timedelta(minutes=1)


class PartnerAPIKeyAuthentication(authentication.BaseAuthentication):
    """Finds the key by its prefix (one indexed query, partner and workspace joined) and
    checks its SHA-512 hash. Revoked, expired and unknown keys get the same 401."""

    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[None, PartnerAPIKey]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        keyword, _, key = header.partition(" ")
        if keyword != self.keyword or not key.strip():
            raise exceptions.NotAuthenticated("Send your key as `Authorization: Api-Key <key>`.")
        key = key.strip()
        prefix, _, _ = key.partition(".")
        api_key = (
            PartnerAPIKey.objects.get_usable_keys()
            .select_related("partner__workspace", "partner__default_structure")
            .filter(prefix=prefix)
            .first()
        )
        if api_key is None or not api_key.is_valid(key):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > _TOUCH_EVERY:
            # At most one write a minute per key: last-used is a hint, not an audit log.
            PartnerAPIKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return (None, api_key)

    def authenticate_header(self, request: Request) -> str:
        return self.keyword
