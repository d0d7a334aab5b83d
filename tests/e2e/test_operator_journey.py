"""An operator's first day, in a real browser against the live server: log in, add a
partner, create its API key, post a lead with it over HTTP, find the lead in the admin
with its values and history. And a viewer, who may look but not change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from structures.choices import Role
from structures.models import Lead, Membership, Partner
from tests.factories.structures import UserFactory, make_lead_setup

# transactional: the live server (another thread) must see the rows (see conftest.py)
pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-tests-123"  # UserFactory's
PARTNERS = "/admin/structures/partner/"
LEADS = "/admin/structures/lead/"


def test_operator_adds_a_partner_creates_a_key_and_sees_its_lead(
    e2e_page: Any, live_server: Any, admin_login: Any, playwright: Any
) -> None:
    page = e2e_page
    setup = make_lead_setup("Acme")
    operator = setup.operator
    assert operator.is_staff and not operator.is_superuser

    # Open the admin, log in on the way, land on the dashboard; go to Partners.
    admin_login(operator.username, "/admin/")
    page.locator(f'a[href="{PARTNERS}"]').first.click()
    expect(page).to_have_url(re.compile(re.escape(PARTNERS) + "$"))
    expect(page.get_by_text("Acme Publisher")).to_be_visible()

    # Add a partner: name, workspace, default structure.
    page.locator(f'a[href="{PARTNERS}add/"]').first.click()
    expect(page).to_have_url(re.compile(re.escape(PARTNERS) + "add/"))
    page.fill("#id_name", "Journey Media")
    page.select_option("#id_workspace", label=setup.workspace.name)
    page.select_option("#id_default_structure", label=str(setup.structure))
    page.locator('[name="_continue"]').first.click()

    partner = Partner.objects.get(name="Journey Media")
    assert partner.workspace_id == setup.workspace.id
    assert partner.default_structure_id == setup.structure.id
    expect(page).to_have_url(re.compile(rf"{PARTNERS}{partner.pk}/change/"))

    # Create an API key from the partner's page; it is shown once, on the next page.
    page.fill("#new-key-name", "production")
    page.click("#create-key-button")
    expect(page).to_have_url(re.compile(rf"{PARTNERS}{partner.pk}/create-key/"))
    key = page.locator("#new-api-key").inner_text().strip()
    assert key and partner.api_keys.filter(name="production", prefix=key.split(".")[0]).exists()

    # Post a lead with that key, over HTTP to the live server, as the partner would.
    api = playwright.request.new_context(base_url=live_server.url)
    try:
        response = api.post(
            "/api/v1/leads/",
            headers={"Authorization": f"Api-Key {key}"},
            data={
                "g_first_name": "Jane",
                "g_last_name": "Journey",
                "g_email": "jane.journey@example.com",
                "g_phone": "+12024561234",
                "g_zip": "20500",
            },
        )
        assert response.status == 201, response.text()
        body = response.json()
    finally:
        api.dispose()
    pcid = body["id"]
    assert body["status"] == "approved"
    assert Lead.objects.get(pcid=pcid).partner_id == partner.pk

    # The lead is in the Leads list (through the sidebar), with its id and email.
    page.locator(f'a[href="{LEADS}"]').first.click()
    expect(page).to_have_url(re.compile(re.escape(LEADS) + r"$"))
    row = page.locator("#result_list tbody tr", has_text=pcid)
    expect(row).to_be_visible()
    expect(row).to_contain_text("jane.journey@example.com")
    expect(row).to_contain_text("Journey Media")

    # Its page shows the values and the history: received, then approved.
    row.get_by_role("link", name=pcid).click()
    lead = Lead.objects.get(pcid=pcid)
    expect(page).to_have_url(re.compile(rf"{LEADS}{lead.pk}/change/"))
    expect(page.get_by_text("Approved", exact=True)).to_be_visible()  # its status
    values = page.locator("table.lead-values")
    expect(values).to_be_visible()
    expect(values).to_contain_text("g_email")
    expect(values).to_contain_text("jane.journey@example.com")
    expect(values).to_contain_text("Journey")
    history = page.locator("#history-group")
    expect(history).to_contain_text("Received from")
    expect(history).to_contain_text("approved")
    expect(history).to_contain_text("Received from Journey Media via api: approved")

    # For humans: the whole lead page, in a viewport as tall as the page (a full-page
    # shot of a shorter viewport draws the sticky sidebar and buttons mid-page).
    shot = Path(settings.VAR_DIR) / "e2e-journey.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1440, "height": height})
    page.screenshot(path=str(shot))


def test_viewer_cannot_add_or_edit_partners(
    e2e_page: Any, live_server: Any, admin_login: Any
) -> None:
    page = e2e_page
    setup = make_lead_setup("Viewco")
    viewer = UserFactory()
    Membership.objects.create(workspace=setup.workspace, user=viewer, role=Role.VIEWER)

    admin_login(viewer.username, PARTNERS)
    expect(page.get_by_text("Viewco Publisher")).to_be_visible()
    expect(page.locator(f'a[href="{PARTNERS}add/"]')).to_have_count(0)

    # The partner's page is read-only: no inputs, no save, no key panel.
    page.get_by_role("link", name="Viewco Publisher").click()
    expect(page).to_have_url(re.compile(rf"{PARTNERS}{setup.partner.pk}/change/"))
    expect(page.get_by_text("Viewco Publisher").first).to_be_visible()
    expect(page.locator("#id_name")).to_have_count(0)
    expect(page.locator('[name="_save"], [name="_continue"]')).to_have_count(0)
    expect(page.locator("#create-key-panel, #new-key-name")).to_have_count(0)

    # Going to the add page directly is refused.
    response = page.goto(live_server.url + PARTNERS + "add/")
    assert response is not None and response.status == 403


# Logging in at a bare /admin/login/ (no ?next=) lands on the dashboard.
def test_login_at_bare_login_url_lands_in_the_admin(e2e_page: Any, live_server: Any) -> None:
    setup = make_lead_setup("Bare")
    e2e_page.goto(live_server.url + "/admin/login/")
    e2e_page.fill("#id_username", setup.operator.username)
    e2e_page.fill("#id_password", PASSWORD)
    with e2e_page.expect_navigation():
        e2e_page.locator('#login-form [type="submit"]').click()
    assert e2e_page.url == live_server.url + "/admin/"
