"""Refusal policy: off -> approved at once; on -> pending, then approved or rejected."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from structures import hooks, services
from structures.hooks import GateResult
from structures.models import Lead, RefusalPolicy

pytestmark = pytest.mark.django_db
URL = "/api/v1/leads/"


def post(client, setup, body):
    return client.post(URL, data=json.dumps(body), content_type="application/json", **setup.auth)


@pytest.fixture
def policy(lead_setup) -> RefusalPolicy:
    policy = RefusalPolicy.objects.get(workspace=lead_setup.workspace)
    policy.is_enabled = True
    policy.save()
    return policy


@pytest.fixture
def gate():
    """A decision gate that tests can steer (the ping tree registers real ones)."""
    answers: list[GateResult] = []

    def fake_gate(lead: Lead) -> GateResult:
        return answers.pop(0) if answers else GateResult(True)

    hooks.DECISION_GATES["filters"].append(fake_gate)
    yield answers
    hooks.DECISION_GATES["filters"].remove(fake_gate)


def test_policy_off_approves_at_once(client, lead_setup):
    data = post(client, lead_setup, lead_setup.valid_payload()).json()
    assert data["status"] == "approved"


def test_policy_on_starts_pending_then_approves(
    client, lead_setup, policy, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        data = post(client, lead_setup, lead_setup.valid_payload()).json()
    assert data["status"] == "pending"
    lead = Lead.objects.get(pcid=data["id"])
    assert lead.status == "approved"
    assert list(lead.history.values_list("kind", flat=True)) == ["pending", "approved"]
    assert client.get(f"{URL}{lead.pcid}/", **lead_setup.auth).json()["status"] == "approved"


def test_failing_gate_rejects_with_its_reason(
    client, lead_setup, policy, gate, django_capture_on_commit_callbacks
):
    gate.append(GateResult(False, "Outside the buyers' states"))
    with django_capture_on_commit_callbacks(execute=True):
        pcid = post(client, lead_setup, lead_setup.valid_payload()).json()["id"]
    lead = Lead.objects.get(pcid=pcid)
    assert (lead.status, lead.reason) == ("rejected", "Outside the buyers' states")


def test_validation_only_policy_ignores_filter_gates(
    client, lead_setup, policy, gate, django_capture_on_commit_callbacks
):
    policy.must_pass = "validation"
    policy.save()
    gate.append(GateResult(False, "would reject"))
    with django_capture_on_commit_callbacks(execute=True):
        pcid = post(client, lead_setup, lead_setup.valid_payload()).json()["id"]
    assert Lead.objects.get(pcid=pcid).status == "approved"


def test_policy_scoped_to_iframe_leaves_api_leads_approved(client, lead_setup, policy):
    policy.applies_to_api = False
    policy.save()
    assert post(client, lead_setup, lead_setup.valid_payload()).json()["status"] == "approved"


@pytest.mark.parametrize(
    ("scope", "listed", "expected"),
    [
        ("include", True, "pending"),
        ("include", False, "approved"),
        ("exclude", True, "approved"),
        ("exclude", False, "pending"),
    ],
)
def test_policy_partner_include_exclude(client, lead_setup, policy, scope, listed, expected):
    policy.partner_scope = scope
    policy.save()
    if listed:
        policy.partners.add(lead_setup.partner)
    assert post(client, lead_setup, lead_setup.valid_payload()).json()["status"] == expected


def test_undecided_gate_keeps_lead_pending_and_sweeper_redrives_it(
    client, lead_setup, policy, gate
):
    gate.append(GateResult(None))
    # The on-commit task is "lost" (callbacks not executed): the sweeper must re-drive.
    pcid = post(client, lead_setup, lead_setup.valid_payload()).json()["id"]
    assert services.leads_sweep() == 0  # not due yet
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        assert services.leads_sweep() == 1  # eager task runs: gate says "not yet"
        assert Lead.objects.get(pcid=pcid).status == "pending"
    with time_machine.travel(timezone.now() + timedelta(minutes=3)):
        assert services.leads_sweep() == 1  # now the gate passes
    assert Lead.objects.get(pcid=pcid).status == "approved"


def test_decision_happens_once(lead_setup, policy):
    result = services.lead_intake(api_key=lead_setup.api_key, payload=lead_setup.valid_payload())
    lead = Lead.objects.get(pk=result.lead.pk)
    assert services.lead_decide(lead=lead, approve=False, reason="no", actor="op") is True
    assert services.lead_decide(lead=lead, approve=True, reason="yes", actor="op") is False
    services.lead_process(lead_id=lead.pk)  # a late task changes nothing
    lead.refresh_from_db()
    assert lead.status == "rejected"
    assert lead.history.filter(kind__in=["approved", "rejected"]).count() == 1


@pytest.mark.django_db(transaction=True)
def test_broker_down_at_intake_loses_nothing(client, monkeypatch):
    """The lead is a row before the partner hears "accepted"; a task that cannot be queued
    is re-driven from the database by the sweeper."""
    from kombu.exceptions import OperationalError

    from structures import tasks
    from tests.factories.structures import make_lead_setup

    setup = make_lead_setup("BrokerDown")
    RefusalPolicy.objects.filter(workspace=setup.workspace).update(is_enabled=True)

    def broker_down(*args, **kwargs):
        raise OperationalError("broker unreachable")

    monkeypatch.setattr(tasks.lead_process_task, "delay", broker_down)
    response = post(client, setup, setup.valid_payload())
    assert response.status_code == 201 and response.json()["status"] == "pending"
    lead = Lead.objects.get(pcid=response.json()["id"])
    monkeypatch.undo()
    with time_machine.travel(timezone.now() + timedelta(minutes=1)):
        assert services.leads_sweep() == 1
    lead.refresh_from_db()
    assert lead.status == "approved"
