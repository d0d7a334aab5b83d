"""The cached intake configuration never outlives a change, in any process."""

from __future__ import annotations

import json

import pytest

from structures.models import DuplicateRule, RefusalPolicy, StructureField, Workspace

pytestmark = pytest.mark.django_db
URL = "/api/v1/leads/"


def post(client, setup, body) -> dict:
    response = client.post(URL, json.dumps(body), content_type="application/json", **setup.auth)
    return response.json()


def version(setup) -> int:
    return Workspace.objects.get(pk=setup.workspace.pk).config_version


def test_every_configuration_change_bumps_the_version(lead_setup):
    seen = [version(lead_setup)]
    policy = RefusalPolicy.objects.get(workspace=lead_setup.workspace)
    policy.is_enabled = True
    policy.save()
    seen.append(version(lead_setup))
    policy.partners.add(lead_setup.partner)
    seen.append(version(lead_setup))
    rule = DuplicateRule.objects.filter(workspace=lead_setup.workspace).first()
    rule.fields.clear()
    seen.append(version(lead_setup))
    StructureField.objects.filter(structure=lead_setup.structure).first().delete()
    seen.append(version(lead_setup))
    assert seen == sorted(set(seen)), seen  # strictly increasing


def test_changes_apply_to_the_next_lead_without_restart(client, lead_setup):
    assert post(client, lead_setup, lead_setup.valid_payload(1))["status"] == "approved"
    policy = RefusalPolicy.objects.get(workspace=lead_setup.workspace)
    policy.is_enabled = True
    policy.save()
    assert post(client, lead_setup, lead_setup.valid_payload(2))["status"] == "pending"
    sf = StructureField.objects.get(structure=lead_setup.structure, field__name="g_zip")
    sf.is_required = True
    sf.save()
    body = lead_setup.valid_payload(3)
    del body["g_zip"]
    response = client.post(URL, json.dumps(body), content_type="application/json",
                           **lead_setup.auth)  # fmt: skip
    assert response.status_code == 400 and "g_zip" in response.json()["errors"]
    DuplicateRule.objects.filter(workspace=lead_setup.workspace).update(is_active=False)
    # update() sends no signal: bumping is the service's job for bulk changes
    from structures.intake_config import config_bump

    config_bump(workspace_id=lead_setup.workspace.pk)
    assert post(client, lead_setup, lead_setup.valid_payload(1))["status"] == "pending"
