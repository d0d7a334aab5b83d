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
# bench/fake_buyers.py --demo plays these buyers on this port (bench.fake_buyers.DEMO_PORT).
FAKE_BUYERS_PORT = 8765
# (buyer on the fake server, advertiser, offer, price model, price / min price, tier)
DEMO_OFFERS = [
    ("northwind", "Northwind Loans", "Northwind premium", "bid", "5.00", 0),
    ("contoso", "Contoso Credit", "Contoso auction", "bid", "5.00", 0),
    ("fabrikam", "Fabrikam Finance", "Fabrikam (Texas only)", "bid", "3.00", 0),
    ("litware", "Demo Lender", "Litware backfill", "fixed", "9.00", 1),
]


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
        # After the sample leads: they are history, not leads to distribute now.
        ping_tree_demo(workspace)
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
                    "Ping tree: the default tree “Personal loans” (an auction, then a",
                    "waterfall) sells to four buyers whose integrations are in test mode: they",
                    'send only test leads (add "test": true to the lead). `make run` starts',
                    f"the local fake buyers on port {FAKE_BUYERS_PORT}; elsewhere run "
                    f".venv/bin/python bench/fake_buyers.py --port {FAKE_BUYERS_PORT} --demo",
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


def ping_tree_demo(workspace: Workspace) -> None:
    """The demo's ping tree (made once): four buyers, each the integration library's
    generic JSON buyer in test mode pointed at the local fake buyers, their offers, and a
    default two-tier tree; plus two weeks of distribution history for the sample leads,
    so the offer figures and a lead's distribution have something to show.

    The demo loader is the one place that knows every app: the ping tree is imported
    here, not by the structures app."""
    from decimal import Decimal

    from integrations import portability
    from integrations.models import Integration
    from pingtree.models import Cap, Offer, PingTree, Tier, TierOffer

    if PingTree.objects.filter(workspace=workspace).exists():
        return
    entry = portability.library_entry("generic-json-buyer")
    if entry is None:
        return
    base = f"http://127.0.0.1:{FAKE_BUYERS_PORT}/b"
    with transaction.atomic():
        offers: list[tuple[Offer, int]] = []
        for buyer, advertiser_name, name, model, amount, tier_index in DEMO_OFFERS:
            advertiser, _ = Advertiser.objects.get_or_create(
                workspace=workspace,
                name=advertiser_name,
                defaults={"timezone": "America/New_York", "contact_email": f"{buyer}@example.com"},
            )
            integration = Integration.objects.filter(
                workspace=workspace, name=f"{advertiser_name} API"
            ).first() or portability.integration_import(
                workspace_id=workspace.pk, data=entry, name=f"{advertiser_name} API"
            )
            for step in integration.requests.all():
                step.url = f"{base}/{buyer}/{step.meaning}"
                step.timeout_seconds = 2
                step.save(update_fields=["url", "timeout_seconds"])
            offer = Offer.objects.create(
                workspace=workspace,
                advertiser=advertiser,
                name=name,
                integration=integration,
                price_model=model,
                price=Decimal(amount) if model == "fixed" else Decimal("0"),
                min_price=Decimal(amount) if model == "bid" else Decimal("0"),
                timeout_seconds=2,
                filters=(
                    {"geo": {"mode": "include", "states": ["TX"]}} if buyer == "fabrikam" else {}
                ),
            )
            offers.append((offer, tier_index))
        Cap.objects.create(workspace=workspace, offer=offers[0][0], metric="sold", limit=200)
        tree = PingTree.objects.create(
            workspace=workspace,
            name="Personal loans",
            is_default=True,
            deadline_seconds=10,
            payout_percent=Decimal("40"),
        )
        tiers = [
            Tier.objects.create(
                workspace=workspace,
                tree=tree,
                position=0,
                name="Premium auction",
                mode="auction",
                deadline_seconds=3,
            ),  # fmt: skip
            Tier.objects.create(
                workspace=workspace, tree=tree, position=1, name="Backfill", mode="waterfall"
            ),
        ]
        for priority, (offer, tier_index) in enumerate(offers):
            TierOffer.objects.create(
                workspace=workspace, tier=tiers[tier_index], offer=offer, priority=priority
            )
        _distribution_history(workspace, tree, tiers, [o for o, _ in offers])


def _distribution_history(workspace: Workspace, tree: Any, tiers: list, offers: list) -> None:
    """Past distributions of the approved sample leads: Northwind and Contoso bid, the
    highest bid is posted (Contoso refuses some posts), Fabrikam skips leads outside
    Texas, Litware buys some of the rest at its fixed price."""
    from decimal import Decimal

    from pingtree.models import Distribution, OfferResult

    northwind, contoso, fabrikam, litware = offers
    rng = random.Random(11)
    leads = Lead.objects.filter(workspace=workspace, status="approved", is_test=False)
    for lead in leads.order_by("created_at"):
        at = lead.created_at
        bids = {northwind: Decimal(rng.choice(["12", "15", "18", "21"])),
                contoso: Decimal(rng.choice(["10", "14", "19", "24"]))}  # fmt: skip
        results: list[dict] = [
            {"offer": fabrikam, "tier": tiers[0], "stage": "skipped", "status": "skipped",
             "reason": "Filters: geo: the state is not TX."},
        ]  # fmt: skip
        winner, price = None, Decimal("0")
        for offer, bid in sorted(bids.items(), key=lambda kv: -kv[1]):
            row = {"offer": offer, "tier": tiers[0], "stage": "pinged", "status": "outbid",
                   "ping_status": "accepted", "bid": bid,
                   "ping_ms": rng.randint(40, 90)}  # fmt: skip
            if winner is None:
                row.update(stage="posted", post_ms=rng.randint(80, 250))
                refusal = {contoso: (0.3, "Duplicate in our system"),
                           northwind: (0.25, "Daily budget reached")}[offer]  # fmt: skip
                if rng.random() < refusal[0]:
                    row.update(status="rejected", post_status="rejected",
                               reason=refusal[1])  # fmt: skip
                else:
                    row.update(status="accepted", post_status="accepted", is_sold=True, price=bid)
                    winner, price = offer, bid
            else:
                row["reason"] = "outbid: the lead went to a higher bid"
            results.append(row)
        if winner is None:
            sold = rng.random() < 0.6
            results.append(
                {
                    "offer": litware,
                    "tier": tiers[1],
                    "stage": "posted",
                    "status": "accepted" if sold else "rejected",
                    "post_status": "accepted" if sold else "rejected",
                    "is_sold": sold,
                    "price": litware.price if sold else None,
                    "post_ms": rng.randint(60, 200),
                    "reason": "" if sold else "Outside our lending area",
                }  # fmt: skip
            )
            winner, price = (litware, litware.price) if sold else (None, Decimal("0"))
        payout = (price * tree.payout_percent / 100).quantize(Decimal("0.0001"))
        dist = Distribution.objects.create(
            workspace=workspace, lead=lead, tree=tree,
            status="sold" if winner else "unsold",
            reason="" if winner else "No buyer accepted the lead.",
            sold_count=1 if winner else 0, is_exclusive_sold=bool(winner), revenue=price,
            payout=payout, margin=price - payout, started_at=at,
            finished_at=at + timedelta(milliseconds=rng.randint(150, 450)),
            redirect_url=f"https://{winner.name.split()[0].lower()}.buyer.test/thanks"
            if winner else "",
        )  # fmt: skip
        Distribution.objects.filter(pk=dist.pk).update(created_at=at)
        rows = OfferResult.objects.bulk_create(
            OfferResult(workspace=workspace, distribution=dist, position=i,
                        is_exclusive=bool(r.get("is_sold")), finished_at=at, **r)
            for i, r in enumerate(results)
        )  # fmt: skip
        OfferResult.objects.filter(pk__in=[r.pk for r in rows]).update(created_at=at)
