"""Shared test wiring: the database vendor marker CI checks, eager Celery, factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories.structures import (  # noqa: F401  (fixtures re-exported)
    LeadSetup,
    lead_setup,
    make_lead_setup,
)

# The fault tests start real Celery workers and switch the Celery app to another broker;
# they run in a pytest session of their own (`make test` runs both sessions). Inside the
# main session, a task published after other tests had used the app never reached the
# worker (not yet understood; see the stop note), so they are collected only when asked.
collect_ignore = [] if os.environ.get("LEADRELAY_FAULT_TESTS") else ["fault"]


def pytest_sessionstart(session: pytest.Session) -> None:
    from django.conf import settings
    from django.db import connection
    from django.test.utils import override_settings

    # Passwords are hashed with MD5 in tests (Django's own advice for test suites): the
    # factories make a user for most tests, and PBKDF2's 1,000,000 rounds took 0.58 s
    # each on a slow 2-core machine, several minutes of the suite. Production keeps
    # PBKDF2; tests that are about passwords set their own hashers.
    override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]).enable()

    marker = Path(settings.VAR_DIR) / "db-vendor"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(connection.vendor)
    if os.environ.get("REQUIRE_POSTGRES") and connection.vendor != "postgresql":
        pytest.exit("REQUIRE_POSTGRES is set but the suite would run on " + connection.vendor, 2)


@pytest.fixture(autouse=True)
def celery_eager() -> Iterator[None]:
    """Tasks run in the calling thread (patched on the Celery app's conf, not through
    Django settings, which only works depending on test order)."""
    from config.celery import app

    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


@pytest.fixture(autouse=True)
def clear_cache() -> Iterator[None]:
    from django.core.cache import cache

    from pingtree import tree_cache
    from structures import intake_config

    cache.clear()
    intake_config.cache_clear()
    tree_cache.cache_clear()
    yield
