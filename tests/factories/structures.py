"""Factories for the structures app, and a ready-made intake setup."""

from __future__ import annotations

from dataclasses import dataclass

import factory
import pytest
from django.contrib.auth import get_user_model

from structures import services
from structures.models import (
    Advertiser,
    Field,
    Membership,
    Partner,
    PartnerAPIKey,
    Structure,
    StructureField,
    Workspace,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"operator{n}@example.com")
    email = factory.SelfAttribute("username")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-123")

    @factory.post_generation
    def _save(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            self.save()


class WorkspaceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workspace

    name = factory.Sequence(lambda n: f"Workspace {n}")
    slug = factory.Sequence(lambda n: f"ws-{n}")
    timezone = "America/New_York"
    default_country = "US"

    @classmethod
    def _create(cls, model_class: type, *args: object, **kwargs: object) -> Workspace:
        owner = kwargs.pop("owner", None)
        return services.workspace_create(workspace=model_class(*args, **kwargs), owner=owner)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    workspace = factory.SubFactory(WorkspaceFactory)
    user = factory.SubFactory(UserFactory)
    role = "admin"


class StructureFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Structure

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Structure {n}")
    slug = factory.Sequence(lambda n: f"structure-{n}")


class PartnerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Partner

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Partner {n}")


class AdvertiserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Advertiser

    workspace = factory.SubFactory(WorkspaceFactory)
    name = factory.Sequence(lambda n: f"Advertiser {n}")


# (field name, required) of the standard test structure
STANDARD_FIELDS = [
    ("g_first_name", True),
    ("g_last_name", False),
    ("g_email", True),
    ("g_phone", True),
    ("g_zip", False),
    ("g_state", False),
    ("g_date_of_birth", False),
    ("g_loan_amount", False),
    ("g_consent", False),
    ("g_loan_purpose", False),
]


@dataclass
class LeadSetup:
    """A workspace with an operator, a structure, a partner and its key (plaintext)."""

    workspace: Workspace
    operator: object
    structure: Structure
    partner: Partner
    api_key: PartnerAPIKey
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Api-Key {self.key}"}

    def valid_payload(self, n: int = 0) -> dict[str, str]:
        return {
            "g_first_name": "Jane",
            "g_last_name": "Doe",
            "g_email": f"jane{n}@example.com",
            "g_phone": f"+1202456{1000 + n:04d}",
            "g_zip": "20500",
        }


def make_lead_setup(name: str = "Acme", *, rate_limit: int = 0) -> LeadSetup:
    if not Field.objects.filter(workspace__isnull=True).exists():
        # A transactional test before this one flushed the tables, migrations' data too.
        from structures.catalogue import sync_global_fields

        sync_global_fields(Field)
    operator = UserFactory()
    workspace = WorkspaceFactory(name=name, slug=name.lower().replace(" ", "-"), owner=operator)
    structure = StructureFactory(workspace=workspace, name=f"{name} form")
    globals_ = {f.name: f for f in Field.objects.filter(workspace__isnull=True)}
    StructureField.objects.bulk_create(
        StructureField(structure=structure, field=globals_[fname], position=i, is_required=req)
        for i, (fname, req) in enumerate(STANDARD_FIELDS)
    )
    partner = PartnerFactory(
        workspace=workspace, name=f"{name} Publisher", default_structure=structure
    )
    api_key, key = services.partner_api_key_create(
        partner=partner, name="test", rate_limit_per_minute=rate_limit
    )
    return LeadSetup(workspace, operator, structure, partner, api_key, key)


@pytest.fixture
def lead_setup(db: None) -> LeadSetup:
    return make_lead_setup()
