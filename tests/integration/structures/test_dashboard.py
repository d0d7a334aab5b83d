"""The admin home shows the operator's own figures, or what to do first."""

from __future__ import annotations

import pytest

from structures import services
from tests.factories.structures import UserFactory, WorkspaceFactory, make_lead_setup

pytestmark = pytest.mark.django_db


def test_dashboard_counts_only_the_operators_leads(client):
    mine, theirs = make_lead_setup("Mine"), make_lead_setup("Theirs")
    for n in range(3):
        services.lead_intake(api_key=mine.api_key, payload=mine.valid_payload(n))
    services.lead_intake(api_key=mine.api_key, payload=mine.valid_payload(0))  # duplicate
    for n in range(5):
        services.lead_intake(api_key=theirs.api_key, payload=theirs.valid_payload(n))
    client.force_login(mine.operator)
    response = client.get("/admin/")
    assert response.status_code == 200
    kpis = dict((label, value) for label, value, _, _ in response.context["kpis"])
    assert kpis["Leads, last 24 h"] == 4
    assert kpis["Approved"] == 3 and kpis["Duplicates"] == 1
    assert b"Theirs Publisher" not in response.content
    assert b"Mine Publisher" in response.content


def test_empty_workspace_dashboard_says_what_to_do_next(client):
    operator = UserFactory()
    WorkspaceFactory(owner=operator)
    client.force_login(operator)
    content = client.get("/admin/").content.decode()
    assert "Create a structure" in content and "Add a partner" in content
