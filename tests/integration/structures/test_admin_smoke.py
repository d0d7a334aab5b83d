"""Every registered admin model renders for a superuser with data present: changelist,
add page, and the change, history and delete pages of one object (STYLE.md: one smoke
test walks every registered admin model). The registry is read at collection time, so a
newly registered model is walked without touching this file."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from structures import services
from structures.choices import LeadStatus, Role
from structures.models import DuplicateRule, Field, Lead, StructureField
from tests.factories.structures import (
    AdvertiserFactory,
    MembershipFactory,
    UserFactory,
    make_lead_setup,
)

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)
# Models the fixture below gives rows, so their change page must be walked. A model
# registered later is walked too, its change page as soon as the fixture gives it a row.
SEEDED = {
    "auth.Group",
    "auth.User",
    "django_celery_beat.ClockedSchedule",
    "django_celery_beat.CrontabSchedule",
    "django_celery_beat.IntervalSchedule",
    "django_celery_beat.PeriodicTask",
    "django_celery_beat.SolarSchedule",
    "structures.Advertiser",
    "structures.DuplicateRule",
    "structures.Field",
    "structures.Lead",
    "structures.Partner",
    "structures.PartnerAPIKey",
    "structures.Structure",
    "structures.Workspace",
}


def _seed() -> None:
    """A workspace with leads (one pending, one duplicate), a local field, a duplicate
    rule, an advertiser, a viewer, and one row of each Celery beat schedule."""
    setup = make_lead_setup("Smoke")
    local = Field.objects.create(
        workspace=setup.workspace, name="smoke_income", label="Smoke income", type="money"
    )
    StructureField.objects.create(structure=setup.structure, field=local, position=50)
    for n in range(3):
        services.lead_intake(api_key=setup.api_key, payload=setup.valid_payload(n))
    services.lead_intake(api_key=setup.api_key, payload=setup.valid_payload(0))  # duplicate
    Lead.objects.filter(pk=Lead.objects.order_by("id").first().pk).update(status=LeadStatus.PENDING)
    rule = DuplicateRule.objects.create(workspace=setup.workspace, name="Same income")
    rule.fields.set([local])
    AdvertiserFactory(workspace=setup.workspace, name="Smoke Buyer")
    MembershipFactory(workspace=setup.workspace, role=Role.VIEWER)
    Group.objects.create(name="Smoke operators")
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    CrontabSchedule.objects.get_or_create(minute="5", hour="4")
    ClockedSchedule.objects.create(clocked_time=timezone.now() + timedelta(days=1))
    SolarSchedule.objects.get_or_create(event="sunrise", latitude=48.85, longitude=2.35)
    PeriodicTask.objects.get_or_create(
        name="smoke sweep", defaults={"task": "smoke.sweep", "interval": every_minute}
    )
    assert Lead.objects.filter(status=LeadStatus.DUPLICATE).exists()


def _url(model: type[models.Model], view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_every_model_of_every_app_is_walked() -> None:
    labels = {model._meta.label for model in REGISTERED}
    assert SEEDED <= labels, SEEDED - labels


def test_admin_index_renders(client: Client) -> None:
    _seed()
    client.force_login(UserFactory(is_superuser=True))
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert b"Leads" in response.content


@pytest.mark.parametrize("model", REGISTERED, ids=lambda model: model._meta.label)
def test_admin_pages_render(client: Client, model: type[models.Model]) -> None:
    _seed()
    superuser = UserFactory(is_superuser=True)
    client.force_login(superuser)
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/admin/")
    request.user = superuser

    response = client.get(_url(model, "changelist"))
    assert response.status_code == 200, response.content[:2000]

    if model_admin.has_add_permission(request):
        response = client.get(_url(model, "add"))
        assert response.status_code == 200, response.content[:2000]

    obj = model_admin.get_queryset(request).order_by("pk").first()
    if obj is None:
        assert model._meta.label not in SEEDED, "the fixture seeds this model"
        return
    for view in ("change", "history"):
        response = client.get(_url(model, view, obj.pk))
        assert response.status_code == 200, (view, response.content[:2000])
        assert str(obj) in response.content.decode()
    if model_admin.has_delete_permission(request, obj):
        response = client.get(_url(model, "delete", obj.pk))
        assert response.status_code == 200, response.content[:2000]
