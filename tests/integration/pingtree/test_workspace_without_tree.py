"""A workspace that does not sell through a ping tree: its accepted leads queue no
distribution (the intake stays as cheap as before ping trees existed), their outcome says
why they were not sold, and the sweeper leaves them alone. An operator's tree change is
seen by the very next lead."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from pingtree import selectors, services
from pingtree.models import Distribution, PingTree
from structures.models import Lead

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/leads/"


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    from pingtree import tasks

    started: list[int] = []
    monkeypatch.setattr(tasks.distribution_start_task, "delay", started.append)
    return started


def post(client, setup, n: int = 0) -> dict:
    response = client.post(
        URL, data=json.dumps(setup.valid_payload(n)), content_type="application/json",
        **setup.auth,
    )  # fmt: skip
    assert response.status_code == 201 and response.json()["status"] == "approved"
    return response.json()


def test_no_active_tree_queues_nothing_and_the_outcome_says_why(client, setup, queued):
    PingTree.objects.create(workspace=setup.workspace, name="Off", is_active=False)
    data = post(client, setup)
    assert data["status"] == "approved"
    assert queued == [] and not Distribution.objects.exists()
    outcome = client.get(f"{URL}{data['id']}/", **setup.auth).json()["outcome"]
    assert outcome["distribution"] == {
        "status": "unsold", "price": None, "redirect_url": "",
        "reason": selectors.NO_TREE_REASON,
    }  # fmt: skip


def test_a_tree_switched_on_or_off_applies_to_the_next_lead(client, setup, queued):
    post(client, setup, 1)
    assert queued == []
    tree = PingTree.objects.create(workspace=setup.workspace, name="Main", is_default=True)
    second = post(client, setup, 2)
    assert queued == [Lead.objects.get(pcid=second["id"]).pk]
    tree.is_active = False
    tree.save()
    post(client, setup, 3)
    assert len(queued) == 1
    tree.is_active = True
    tree.save()
    post(client, setup, 4)
    assert len(queued) == 2
    tree.delete()
    post(client, setup, 5)
    assert len(queued) == 2


def test_the_sweeper_starts_no_distribution_in_a_workspace_without_a_tree(setup, queued):
    lead = Lead.objects.create(
        workspace=setup.workspace, structure=setup.structure, partner=setup.partner,
        source="api", status="approved", data={"g_email": "a@example.com"},
    )  # fmt: skip
    Lead.objects.filter(pk=lead.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    assert services.distributions_sweep() == 0
    assert not Distribution.objects.exists()
    # With an active tree the lead that never got its distribution is started.
    PingTree.objects.create(workspace=setup.workspace, name="Main", is_default=True)
    assert services.distributions_sweep() == 1
    assert Distribution.objects.filter(lead=lead).exists()
