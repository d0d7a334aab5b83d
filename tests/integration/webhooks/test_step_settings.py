"""A webhook element's settings are checked when it is saved (Element.clean, so the
admin's scenario editor shows the error on the settings field)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from integrations.models import Element, Integration
from webhooks import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def integration(lead_setup):
    services.endpoint_create(workspace=lead_setup.workspace, name="Acme", webhook_id="wh_ok")
    return Integration.objects.create(workspace=lead_setup.workspace, name="Async buyer")


def element(integration, config):
    return Element(
        workspace=integration.workspace,
        integration=integration,
        kind="webhook",
        name="Buyer callback",
        config=config,
    )


def test_good_settings_pass(integration):
    element(integration, {"endpoint": "wh_ok", "wait": True, "timeout_seconds": 60}).full_clean()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"endpoint": "wh_nope"}, "no webhook endpoint 'wh_nope' in this workspace"),
        ({"endpoint": "wh_ok", "wait": False, "timeout_seconds": 60}, "only available when"),
        ({"endpoint": "wh_ok", "rules": "sold"}, "rules: a list"),
    ],
)
def test_bad_settings_are_refused_on_the_settings_field(integration, config, message):
    with pytest.raises(ValidationError) as caught:
        element(integration, config).full_clean()
    assert message in " ".join(caught.value.message_dict["config"])


def test_an_endpoint_of_another_workspace_is_not_accepted(integration):
    from tests.factories.structures import make_lead_setup

    other = make_lead_setup("Bravo")
    services.endpoint_create(workspace=other.workspace, name="B", webhook_id="wh_b")
    with pytest.raises(ValidationError, match="no webhook endpoint 'wh_b'"):
        element(integration, {"endpoint": "wh_b"}).full_clean()
