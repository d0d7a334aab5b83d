"""Fixtures of the engine's tests: a lead to run scenarios for, and the Scenario builder."""

from __future__ import annotations

import pytest

from structures.models import Lead
from tests.integration.integrations.engine.test_engine import Scenario


@pytest.fixture
def lead(lead_setup):
    return Lead.objects.create(
        workspace=lead_setup.workspace,
        structure=lead_setup.structure,
        partner=lead_setup.partner,
        source="api",
        status="approved",
        data={"g_first_name": "Jane", "g_email": "jane@example.com"},
    )


@pytest.fixture
def sc(lead_setup):
    return Scenario(lead_setup)
