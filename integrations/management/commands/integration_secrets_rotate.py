"""Re-encrypt every stored integration secret with the newest INTEGRATION_SECRET_KEYS key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from integrations import secrets, services


class Command(BaseCommand):
    help = (
        "Re-encrypt stored integration secrets with the first key of INTEGRATION_SECRET_KEYS. "
        "Put the new key first, run this, then remove the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        secrets.reset_cache()
        count = services.secrets_rotate()
        self.stdout.write(f"Re-encrypted {count} secret(s) with the newest key.")
