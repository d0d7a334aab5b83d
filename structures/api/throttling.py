"""Per-key rate limit: a fixed one-minute window counted in the shared cache (Redis in
production), answered 429 with Retry-After."""

from __future__ import annotations

import time

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from structures.models import PartnerAPIKey


class APIKeyRateThrottle(BaseThrottle):
    window_seconds = 60

    def allow_request(self, request: Request, view: APIView) -> bool:
        api_key = request.auth
        if not isinstance(api_key, PartnerAPIKey) or not api_key.rate_limit_per_minute:
            return True
        now = time.time()
        window = int(now // self.window_seconds)
        self._retry_after = (window + 1) * self.window_seconds - now
        cache_key = f"rl:key:{api_key.pk}:{window}"
        # add() then incr() is atomic on Redis; the counter expires with its window.
        cache.add(cache_key, 0, timeout=self.window_seconds + 5)
        try:
            count = cache.incr(cache_key)
        except ValueError:
            cache.set(cache_key, 1, timeout=self.window_seconds + 5)
            count = 1
        return count <= api_key.rate_limit_per_minute

    def wait(self) -> float:
        return max(1.0, self._retry_after)
