"""Secrets at rest (buyer API keys, auth passwords and tokens): Fernet with dedicated keys.

``INTEGRATION_SECRET_KEYS`` holds one or more Fernet keys, comma separated, newest first:
the first encrypts, all decrypt (MultiFernet), so keys rotate without downtime: add a new
key in front, run ``manage.py integration_secrets_rotate``, then drop the old key.
The keys are not SECRET_KEY: rotating Django's signing key must not lose buyer secrets.
With no keys configured (the embedded demo) a key file is created in the var folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class SecretUnreadable(Exception):
    """The stored secret cannot be decrypted with the configured keys."""


def _key_file() -> Path:
    return Path(settings.VAR_DIR) / "integration-secret.key"


@functools.cache
def _fernet() -> MultiFernet:
    keys = [k.strip() for k in settings.INTEGRATION_SECRET_KEYS if k.strip()]
    if not keys:
        if not settings.DEBUG and os.environ.get("DATABASE_URL", "").startswith("postgres"):
            raise ImproperlyConfigured(
                "Set INTEGRATION_SECRET_KEYS (Fernet keys) to store integration secrets."
            )
        path = _key_file()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(Fernet.generate_key())
            path.chmod(0o600)
        keys = [path.read_text().strip()]
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"INTEGRATION_SECRET_KEYS holds an invalid key: {exc}") from exc


def reset_cache() -> None:
    """Forget the loaded keys (tests, rotation)."""
    _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "The stored secret cannot be decrypted with the current keys."
        ) from exc


def rotate(token: str) -> str:
    """Re-encrypt with the newest key."""
    if not token:
        return ""
    return _fernet().rotate(token.encode()).decode()
