"""Structured logs carry the lead id as correlation id, in web and worker paths."""

from __future__ import annotations

import json
import logging

import pytest

from structures import services
from structures.models import Lead, RefusalPolicy

pytestmark = pytest.mark.django_db


def _events(caplog) -> list[dict]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


def test_intake_logs_carry_the_lead_id(client, lead_setup, caplog):
    caplog.set_level(logging.INFO)
    response = client.post(
        "/api/v1/leads/", json.dumps(lead_setup.valid_payload()),
        content_type="application/json", **lead_setup.auth,
    )  # fmt: skip
    pcid = response.json()["id"]
    received = [e for e in _events(caplog) if e.get("event") == "lead.received"]
    assert received and received[0]["lead_id"] == pcid
    assert received[0].get("request_id")  # bound per request by django-structlog


def test_worker_decision_logs_carry_the_lead_id(lead_setup, caplog):
    RefusalPolicy.objects.filter(workspace=lead_setup.workspace).update(is_enabled=True)
    result = services.lead_intake(api_key=lead_setup.api_key, payload=lead_setup.valid_payload())
    caplog.set_level(logging.INFO)
    services.lead_process(lead_id=result.lead.pk)
    decided = [e for e in _events(caplog) if e.get("event") == "lead.decided"]
    assert decided and decided[0]["lead_id"] == result.lead.pcid
    assert Lead.objects.get(pk=result.lead.pk).status == "approved"
