"""Load (or refresh) the demo workspace and print how to use it."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from structures import services
from structures.choices import StructureKind
from structures.models import (
    Advertiser,
    Field,
    Lead,
    Partner,
    PartnerAPIKey,
    Structure,
    StructureField,
    Workspace,
)

OPERATOR_EMAIL = "operator@demo.leadrelay"
OPERATOR_PASSWORD = "leadrelay-demo"  # noqa: S105 - the demo's published login
DEMO_KEY_NAME = "demo (make run)"

STRUCTURE_FIELDS = [
    ("g_first_name", True), ("g_last_name", True), ("g_email", True), ("g_phone", True),
    ("g_zip", True), ("g_state", False), ("g_date_of_birth", False), ("g_loan_amount", True),
    ("g_loan_purpose", False), ("g_monthly_income", False), ("g_consent", False),
    ("g_ip", False), ("g_trustedform_cert_url", False), ("loan_term_months", False),
]  # fmt: skip
FIRST = ["Ava", "Liam", "Mia", "Noah", "Zoe", "Ethan", "Ivy", "Lucas", "Emma", "Owen"]
LAST = ["Smith", "Garcia", "Nguyen", "Brown", "Davis", "Lopez", "Miller", "Wilson"]
AREA_CODES = ["202", "212", "310", "415", "617", "713"]


class Command(BaseCommand):
    help = "Create the demo workspace, operator and partner; print a fresh partner API key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print only the key.")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            operator = self._operator()
            workspace = self._workspace(operator)
            structure = self._structure(workspace)
            partner, _ = Partner.objects.get_or_create(
                workspace=workspace,
                name="Demo Publisher",
                defaults={
                    "default_structure": structure,
                    "contact_email": "pub@example.com",
                    "company": "Demo Media LLC",
                },
            )
            Partner.objects.get_or_create(
                workspace=workspace,
                name="Second Publisher",
                defaults={"default_structure": structure},
            )
            Advertiser.objects.get_or_create(
                workspace=workspace,
                name="Demo Lender",
                defaults={"timezone": "America/New_York", "contact_email": "buyer@example.com"},
            )
            # Keys are stored hashed, so the demo key cannot be shown again: make a new one
            # each time and revoke the previous demo key.
            PartnerAPIKey.objects.filter(partner=partner, name=DEMO_KEY_NAME).update(revoked=True)
            api_key, plaintext = services.partner_api_key_create(
                partner=partner, name=DEMO_KEY_NAME
            )
        if not Lead.objects.filter(workspace=workspace).exists():
            self._sample_leads(api_key)
        if options["quiet"]:
            self.stdout.write(plaintext)
            return
        base = settings.PUBLIC_BASE_URL
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Leadrelay demo is ready.",
                    f"  Admin:        {base}/admin/",
                    f"  Login:        {OPERATOR_EMAIL} / {OPERATOR_PASSWORD}",
                    f"  API docs:     {base}/api/docs/",
                    f"  Health:       {base}/healthz",
                    f"  Partner key:  {plaintext}   (Demo Publisher; shown once)",
                    "",
                    "Post a lead:",
                    f"  curl -X POST {base}/api/v1/leads/ \\",
                    f'    -H "Authorization: Api-Key {plaintext}" \\',
                    '    -H "Content-Type: application/json" \\',
                    '    -d \'{"g_first_name":"Jane","g_last_name":"Doe",'
                    '"g_email":"jane@example.com","g_phone":"(202) 456-1111",'
                    '"g_zip":"20500","g_loan_amount":"2500"}\'',
                    "",
                ]
            )
        )

    def _operator(self) -> Any:
        user_model = get_user_model()
        user = user_model.objects.filter(username=OPERATOR_EMAIL).first()
        if user is None:
            user = user_model.objects.create_user(
                username=OPERATOR_EMAIL,
                email=OPERATOR_EMAIL,
                password=OPERATOR_PASSWORD,
                is_staff=True,
                first_name="Demo",
                last_name="Operator",
            )
        return user

    def _workspace(self, operator: Any) -> Workspace:
        workspace = Workspace.objects.filter(slug="demo").first()
        if workspace is None:
            workspace = services.workspace_create(
                workspace=Workspace(
                    name="Demo Lending",
                    slug="demo",
                    timezone="America/New_York",
                    currency="USD",
                    default_country="US",
                ),
                owner=operator,
            )
        return workspace

    def _structure(self, workspace: Workspace) -> Structure:
        term, _ = Field.objects.get_or_create(
            workspace=workspace,
            name="loan_term_months",
            defaults={"label": "Loan term (months)", "type": "number"},
        )
        structure, created = Structure.objects.get_or_create(
            workspace=workspace,
            slug="personal-loan",
            defaults={"name": "Personal loan", "kind": StructureKind.FORM, "country": "US"},
        )
        if created:
            fields = {f.name: f for f in Field.objects.filter(workspace__isnull=True)}
            fields["loan_term_months"] = term
            StructureField.objects.bulk_create(
                StructureField(
                    structure=structure, field=fields[name], position=i, is_required=required
                )
                for i, (name, required) in enumerate(STRUCTURE_FIELDS)
            )
        return structure

    def _sample_leads(self, api_key: PartnerAPIKey) -> None:
        rng = random.Random(7)
        for i in range(60):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            payload = {
                "g_first_name": first,
                "g_last_name": last,
                "g_email": f"{first}.{last}{i}@example.com".lower(),
                "g_phone": f"{rng.choice(AREA_CODES)}456{rng.randint(1000, 9999)}",
                "g_zip": f"{rng.randint(10000, 99999)}",
                "g_loan_amount": str(rng.choice([500, 1000, 2500, 5000])),
                "g_loan_purpose": rng.choice(["debt_consolidation", "auto", "personal"]),
                "sub1": rng.choice(["fb", "google", "native"]),
            }
            result = services.lead_intake(api_key=api_key, payload=payload, ip="203.0.113.7")
            # Spread the samples over two weeks so the dashboard has a history to show.
            received = timezone.now() - timedelta(days=rng.randint(0, 13), minutes=i * 7)
            Lead.objects.filter(pk=result.lead.pk).update(created_at=received, decided_at=received)
