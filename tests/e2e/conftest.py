"""Browser tests: Debian's Chromium driven by pytest-playwright against pytest-django's
live server (a real HTTP server in a thread, on the test database).

- The browser is /usr/bin/chromium (``playwright install`` cannot download one here).
  When it is missing the tests fail and say so; ``LEADRELAY_SKIP_E2E=1`` skips them.
- Playwright's sync API runs an event loop in the main thread, and Django refuses ORM
  calls from a thread with a running loop unless DJANGO_ALLOW_ASYNC_UNSAFE is set
  (scripts/test-env.sh exports it; set here too so a bare ``pytest`` works). The loop
  lives as long as the session, so it is set for the whole process.
- The live server answers from another thread, so the tests are transactional: what
  they create is committed and visible to it, and the database is flushed after each.
  A flush also removes the rows migrations made (the global fields), so each test puts
  them back first, and the tests run last in the session, where their flush cannot take
  those rows from another test. (``serialized_rollback`` is no help: after another
  transactional test's flush re-creates content types, restoring them collides.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "pw-for-tests-123"  # UserFactory's password
TIMEOUT_MS = 10_000


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last (after pytest-django's own ordering): see the module doc."""
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if e2e:
        items[:] = [item for item in items if not item.get_closest_marker("e2e")] + e2e


@pytest.fixture(scope="session", autouse=True)
def _e2e_browser_available() -> None:
    """Skip on request; otherwise fail loudly (never skip silently) without Chromium."""
    if os.environ.get("LEADRELAY_SKIP_E2E") == "1":
        pytest.skip("LEADRELAY_SKIP_E2E=1: browser tests skipped")
    if not CHROMIUM.exists():
        pytest.fail(
            f"Browser tests need Debian's Chromium at {CHROMIUM}, which is missing. "
            "Install it (`apt-get install chromium`, ~30 s) or set LEADRELAY_SKIP_E2E=1 "
            "to skip them. Do not run `playwright install`.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def browser_type_launch_args(_e2e_browser_available: None) -> dict[str, Any]:
    return {"executable_path": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1440, "height": 900}}


@pytest.fixture
def e2e_db(transactional_db: None) -> None:
    """Committed rows, with the global fields a previous flush may have removed."""
    from structures.catalogue import sync_global_fields
    from structures.models import Field

    sync_global_fields(Field)


@pytest.fixture
def e2e_page(page: Any, live_server: Any, e2e_db: None) -> Iterator[Any]:
    """A page with short timeouts (a broken page fails in seconds, not 30 s)."""
    page.set_default_timeout(TIMEOUT_MS)
    page.set_default_navigation_timeout(TIMEOUT_MS)
    yield page


@pytest.fixture
def admin_login(e2e_page: Any, live_server: Any) -> Callable[..., None]:
    """Log a user in as a person would: open an admin page, get sent to /admin/login/,
    fill the form, land back on that page, and it works (not a 500)."""

    def login(username: str, next_path: str, password: str = PASSWORD) -> None:
        e2e_page.goto(live_server.url + next_path)
        expect(e2e_page).to_have_url(
            f"{live_server.url}/admin/login/?next={quote(next_path, safe='/')}"
        )
        e2e_page.fill("#id_username", username)
        e2e_page.fill("#id_password", password)
        with e2e_page.expect_navigation() as navigation:
            e2e_page.locator('#login-form [type="submit"]').click()
        expect(e2e_page).to_have_url(live_server.url + next_path)
        response = navigation.value
        assert response is not None and response.ok, f"{next_path} answered {response.status}"

    return login
