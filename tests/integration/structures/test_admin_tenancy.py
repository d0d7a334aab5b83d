"""The tenant matrix of the admin and the partner API (DESIGN.md: tenants are isolated).

Two workspaces, A and B, carry a marker word in every object they own (workspace,
partner, structure, local field, advertiser, duplicate rule, lead emails and values, API
key name). Operator A (owner of A) must never see nor reach anything of B: not on a
changelist, its filter choices or its search, not on a change, history or delete page,
not through autocomplete, form choices, actions or the key creation page. A viewer of A
reads A and changes nothing; a superuser sees both.

The admin registry is walked, so a model registered later in one of the product apps is
in the matrix without touching this file. Every negative check has its positive control:
the same page shows A's marker to operator A (or B's to the superuser), so an empty page
cannot pass for an isolated one.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django import forms
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.filters import RelatedFieldListFilter
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from structures import services
from structures.admin.base import ScopedAdmin, _ScopedInlineMixin, workspace_path
from structures.choices import LeadStatus, Role
from structures.models import (
    Advertiser,
    DuplicateRule,
    Field,
    Lead,
    Partner,
    PartnerAPIKey,
    Structure,
    StructureField,
    Workspace,
)
from tests.factories.structures import (
    AdvertiserFactory,
    LeadSetup,
    MembershipFactory,
    UserFactory,
    make_lead_setup,
)

pytestmark = pytest.mark.django_db

PRODUCT_APPS = ("structures", "integrations", "pingtree", "webhooks", "tracking")
PRODUCT_MODELS = sorted(
    (model for model in admin.site._registry if model._meta.app_label in PRODUCT_APPS),
    key=lambda model: model._meta.label,
)
MARKER_A = "alfamark"
MARKER_B = "bravomark"


def _label(value: object) -> str:
    return value._meta.label if isinstance(value, type) else str(value)


def _autocomplete_sources() -> list[tuple[type[models.Model], str]]:
    """Every forward relation of every product model (admin-registered or inline-only)
    that points at a registered admin with search fields: each is an autocomplete
    endpoint an operator can call with any term, whether or not a form uses it."""
    pairs = set()
    for app_label in PRODUCT_APPS:
        for model in apps.get_app_config(app_label).get_models():
            for field in model._meta.get_fields():
                if not (field.is_relation and field.concrete):
                    continue
                target = admin.site._registry.get(field.related_model)
                if target is not None and target.search_fields:
                    pairs.add((model, field.name))
    return sorted(pairs, key=lambda pair: (pair[0]._meta.label, pair[1]))


AUTOCOMPLETE_SOURCES = _autocomplete_sources()


# --- the two tenants ------------------------------------------------------------------------


@dataclass
class Tenant:
    marker: str
    setup: LeadSetup
    field: Field
    advertiser: Advertiser
    rule: DuplicateRule
    leads: list[Lead]
    spare_field: Field  # a local field in no structure nor rule yet
    # An advertiser nothing refers to: the seeded rows of higher apps (offers) protect
    # the main one from deletion, which the delete action would rightly refuse.
    spare_advertiser: Advertiser

    @property
    def workspace(self) -> Workspace:
        return self.setup.workspace

    @property
    def partner(self) -> Partner:
        return self.setup.partner

    @property
    def structure(self) -> Structure:
        return self.setup.structure

    @property
    def pending_lead(self) -> Lead:
        return self.leads[0]

    @property
    def infix(self) -> str:
        """A search term that matches the marker without containing it, so a page that
        echoes the term back does not pass for one that shows the data."""
        return self.marker[1:-1]


def make_tenant(marker: str) -> Tenant:
    setup = make_lead_setup(marker.capitalize())
    Structure.objects.filter(pk=setup.structure.pk).update(slug=f"{marker}-form")
    setup.structure.refresh_from_db()
    PartnerAPIKey.objects.filter(pk=setup.api_key.pk).update(name=f"{marker} key")
    setup.api_key.refresh_from_db()
    Partner.objects.filter(pk=setup.partner.pk).update(contact_email=f"ops@{marker}.example")
    field = Field.objects.create(
        workspace=setup.workspace,
        name=f"{marker}_income",
        label=f"{marker.capitalize()} income",
        type="money",
    )
    StructureField.objects.create(structure=setup.structure, field=field, position=50)
    advertiser = AdvertiserFactory(
        workspace=setup.workspace,
        name=f"{marker.capitalize()} Buyer",
        contact_email=f"buyer@{marker}.example",
    )
    rule = DuplicateRule.objects.create(workspace=setup.workspace, name=f"{marker} same income")
    rule.fields.set([field])
    leads = []
    for n in range(2):
        payload = setup.valid_payload(n) | {
            "g_email": f"jane{n}@{marker}.example",
            f"{marker}_income": "1000",
            "external_id": f"{marker}-{n}",
        }
        leads.append(services.lead_intake(api_key=setup.api_key, payload=payload).lead)
    Lead.objects.filter(pk=leads[0].pk).update(status=LeadStatus.PENDING)
    spare = Field.objects.create(
        workspace=setup.workspace, name=f"{marker}_spare", label=f"{marker.capitalize()} spare"
    )
    spare_advertiser = AdvertiserFactory(workspace=setup.workspace, name=f"{marker} spare buyer")
    return Tenant(marker, setup, field, advertiser, rule, leads, spare, spare_advertiser)


# --- rows for product models this file does not know yet -----------------------------------

_SKIP = object()


def _value(db_field: models.Field, marker: str) -> Any:
    """A value for a required (or text) column that carries the tenant's marker."""
    if getattr(db_field, "auto_now", False) or getattr(db_field, "auto_now_add", False):
        return _SKIP
    if db_field.has_default() and db_field.get_default() not in ("", None):
        return _SKIP
    if db_field.choices:
        return _SKIP if db_field.blank or db_field.has_default() else db_field.flatchoices[0][0]
    if not db_field.editable:
        return _SKIP  # e.g. encrypted secrets: only their service writes them
    size = getattr(db_field, "max_length", None) or 200
    if isinstance(db_field, models.EmailField):
        return f"{db_field.name}@{marker}.example"
    if isinstance(db_field, models.URLField) or db_field.name.endswith("url"):
        return f"https://{marker}.example/{db_field.name}"[:size]
    if isinstance(db_field, models.SlugField):
        return f"{marker}-{db_field.name}".replace("_", "-")[:size]
    if isinstance(db_field, models.CharField | models.TextField):
        return f"{marker} {db_field.name}"[:size]
    if db_field.null:
        return _SKIP
    simple: list[tuple[type[models.Field], Any]] = [
        (models.BooleanField, False),
        (models.IntegerField, 1),
        (models.FloatField, 1.0),
        (models.DecimalField, 1),
        (models.DateTimeField, timezone.now()),
        (models.DateField, timezone.localdate()),
        (models.DurationField, timedelta(minutes=1)),
        (models.UUIDField, uuid.uuid4()),
        (models.GenericIPAddressField, "192.0.2.1"),
        (models.JSONField, {}),
    ]
    for kind, value in simple:
        if isinstance(db_field, kind):
            return value
    return _SKIP


def _seed_row(model: type[models.Model], tenant: Tenant, made: dict) -> models.Model | None:
    """One row of ``model`` in the tenant's workspace, its required relations seeded the
    same way (a generic stand-in until make_tenant seeds the model on purpose)."""
    if model in made:
        return made[model]
    if model is get_user_model():
        return tenant.setup.operator
    if workspace_path(model) is None:
        return model._default_manager.first()
    existing = rows(model, tenant).order_by("pk").first()
    if existing is not None:
        made[model] = existing
        return existing
    values: dict[str, Any] = {}
    for db_field in model._meta.concrete_fields:
        if db_field.primary_key:
            continue
        if db_field.is_relation:
            related = db_field.related_model
            if related is model or (db_field.null and workspace_path(related) is None):
                continue
            values[db_field.name] = _seed_row(related, tenant, made)
            continue
        value = _value(db_field, tenant.marker)
        if value is not _SKIP:
            values[db_field.name] = value
    made[model] = model._default_manager.create(**values)
    return made[model]


def seed_missing_models(tenant: Tenant) -> dict[str, str]:
    """Give the tenant a row of every product model that has a workspace and none yet.
    Returns the models that could not be seeded, with why."""
    made: dict[type[models.Model], models.Model] = {}
    failures = {}
    for app_label in PRODUCT_APPS:
        for model in apps.get_app_config(app_label).get_models():
            if workspace_path(model) is None or rows(model, tenant).exists():
                continue
            known = dict(made)
            try:
                with transaction.atomic():
                    _seed_row(model, tenant, made)
            except Exception as exc:  # noqa: BLE001 - reported by the fixture test
                made.clear()
                made.update(known)  # forget the rows the rollback took back
                failures[model._meta.label] = repr(exc)
    return failures


@dataclass
class World:
    a: Tenant
    b: Tenant
    viewer_a: Any
    superuser: Any
    seed_failures: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def operator_a(self) -> Any:
        return self.a.setup.operator


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # PBKDF2 costs half a second per user; these tests log users in, never check passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(db: None) -> World:
    a, b = make_tenant(MARKER_A), make_tenant(MARKER_B)
    failures = seed_missing_models(a) | seed_missing_models(b)
    viewer = UserFactory()
    MembershipFactory(workspace=a.workspace, user=viewer, role=Role.VIEWER)
    return World(
        a=a,
        b=b,
        viewer_a=viewer,
        superuser=UserFactory(is_superuser=True),
        seed_failures=failures,
    )


def login(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


# --- helpers --------------------------------------------------------------------------------


def rows(model: type[models.Model], tenant: Tenant) -> models.QuerySet:
    """The tenant's rows of a model (for fields: its local fields only)."""
    path = workspace_path(model)
    assert path is not None, f"{_label(model)} has no workspace: it cannot be scoped"
    lookup = "id" if path == "id" else f"{path}_id"
    return model._default_manager.filter(**{lookup: tenant.workspace.pk})


def pks(queryset: models.QuerySet) -> set[int]:
    return set(queryset.values_list("pk", flat=True))


def url(model: type[models.Model], view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def html(response: HttpResponse) -> str:
    return response.content.decode().lower()


def request_for(user: Any) -> Any:
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def assert_unreachable(response: HttpResponse, marker: str) -> None:
    """A foreign object's page: redirected to the index (Django's "does not exist"), or
    refused, and never a page with the object's data."""
    assert response.status_code in (302, 403, 404), response.status_code
    if response.status_code == 302:
        assert response["Location"] == reverse("admin:index")
    assert marker not in html(response)


def choice_fields(response: HttpResponse, *, inlines: bool) -> Iterator[tuple[str, Any]]:
    """(name, form field) of every model choice field of the page's form and inlines."""
    form = response.context["adminform"].form
    for name, field in form.fields.items():
        if isinstance(field, forms.ModelChoiceField):
            yield name, field
    if not inlines:
        return
    for inline in response.context["inline_admin_formsets"]:
        # The formset's hidden row id is a choice over the whole table, but it is never
        # rendered as options and a posted id is looked up among the parent's rows only.
        row_id = inline.formset.model._meta.pk.name
        for name, field in inline.formset.empty_form.fields.items():
            if isinstance(field, forms.ModelChoiceField) and name != row_id:
                yield f"{inline.formset.prefix}.{name}", field


def form_payload(response: HttpResponse) -> dict[str, Any]:
    """What a browser would post back from this change or add page, unchanged."""
    data: dict[str, Any] = {}

    def put(form: forms.BaseForm) -> None:
        for name in form.fields:
            value = form[name].value()
            if value is None:
                continue
            key = form.add_prefix(name)
            if isinstance(value, list | tuple):
                data[key] = [str(v) for v in value]
            else:
                data[key] = str(value)

    put(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        put(inline.formset.management_form)
        for form in inline.formset.forms:
            put(form)
    return data


def snapshot(queryset: models.QuerySet) -> list[dict[str, Any]]:
    return list(queryset.order_by("pk").values())


# --- every product admin is scoped, and the fixture gives it rows in both tenants -----------


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
def test_every_product_admin_is_scoped(model: type[models.Model]) -> None:
    model_admin = admin.site._registry[model]
    assert isinstance(model_admin, ScopedAdmin)
    assert workspace_path(model) is not None
    for inline in model_admin.inlines:
        assert issubclass(inline, _ScopedInlineMixin), inline


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
def test_tenant_fixture_gives_every_product_model_rows_in_both_workspaces(
    world: World, model: type[models.Model]
) -> None:
    # Without rows the matrix below proves nothing for this model (its tests skip): seed
    # it in make_tenant when the generic stand-in cannot.
    failure = world.seed_failures.get(model._meta.label, "")
    assert rows(model, world.a).exists() and rows(model, world.b).exists(), failure


@pytest.fixture
def seeded_model(world: World, request: pytest.FixtureRequest) -> None:
    model = request.node.callspec.params["model"]
    if not (rows(model, world.a).exists() and rows(model, world.b).exists()):
        pytest.skip(f"no {model._meta.label} rows to test: see the fixture test above")


# --- changelists: rows, filters, search -----------------------------------------------------


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_changelist_shows_only_own_rows_filters_and_search_results(
    client: Client, world: World, model: type[models.Model]
) -> None:
    login(client, world.operator_a)
    own, foreign = pks(rows(model, world.a)), pks(rows(model, world.b))

    response = client.get(url(model, "changelist"))
    assert response.status_code == 200
    cl = response.context["cl"]
    shown = {obj.pk for obj in cl.result_list}
    assert shown & own, "positive control: A's rows are listed"
    assert not shown & foreign
    assert MARKER_A in html(response)
    assert MARKER_B not in html(response)

    related_filters = [spec for spec in cl.filter_specs if isinstance(spec, RelatedFieldListFilter)]
    for spec in cl.filter_specs:
        for choice in spec.choices(cl):
            assert MARKER_B not in str(choice["display"]).lower(), spec.title
    for spec in related_filters:
        related = spec.field.related_model
        offered = {pk for pk, _ in spec.lookup_choices}
        assert offered & pks(rows(related, world.a)), f"positive control: {spec.title}"
        assert not offered & pks(rows(related, world.b)), spec.title
        # Filtering by B's row (a forged query string) lists nothing and names nothing.
        foreign_pk = rows(related, world.b).values_list("pk", flat=True).first()
        forged = client.get(url(model, "changelist"), {spec.lookup_kwarg: foreign_pk})
        assert forged.status_code in (200, 302)
        assert MARKER_B not in html(forged)
        if forged.status_code == 200:
            assert not {obj.pk for obj in forged.context["cl"].result_list}

    if admin.site._registry[model].search_fields:
        found = client.get(url(model, "changelist"), {"q": world.a.infix})
        assert found.context["cl"].result_count > 0, "positive control: search finds A"
        response = client.get(url(model, "changelist"), {"q": world.b.infix})
        assert response.status_code == 200
        assert response.context["cl"].result_count == 0
        assert MARKER_B not in html(response)


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_superuser_sees_both_workspaces(
    client: Client, world: World, model: type[models.Model]
) -> None:
    login(client, world.superuser)
    response = client.get(url(model, "changelist"))
    shown = {obj.pk for obj in response.context["cl"].result_list}
    assert shown & pks(rows(model, world.a)) and shown & pks(rows(model, world.b))
    assert MARKER_A in html(response) and MARKER_B in html(response)
    foreign = rows(model, world.b).order_by("pk").first()
    response = client.get(url(model, "change", foreign.pk))
    assert response.status_code == 200
    assert MARKER_B in html(response)


def test_index_app_index_and_sidebar_search_name_nothing_of_b(
    client: Client, world: World, settings: Any
) -> None:
    # Turn on unfold's search across models, so the search has data to leak.
    settings.UNFOLD = {**settings.UNFOLD, "COMMAND": {"search_models": True}}
    login(client, world.operator_a)
    index = client.get(reverse("admin:index"))
    assert index.status_code == 200
    assert MARKER_A in html(index), "positive control: the dashboard lists A's leads"
    assert MARKER_B not in html(index)
    if "kpis" in index.context:  # the dashboard's figures count A's leads only
        assert index.context["kpis"][0][1] == len(world.a.leads)
    response = client.get(reverse("admin:app_list", args=["structures"]))
    assert response.status_code == 200
    assert MARKER_B not in html(response)
    own = client.get(reverse("admin:search"), {"s": world.a.infix, "extended": "1"})
    assert own.status_code == 200 and MARKER_A in html(own), "positive control"
    response = client.get(reverse("admin:search"), {"s": world.b.infix, "extended": "1"})
    assert response.status_code == 200
    assert MARKER_B not in html(response)


# --- change, history and delete pages of B's objects ----------------------------------------


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_foreign_object_pages_are_unreachable(
    client: Client, world: World, model: type[models.Model]
) -> None:
    login(client, world.operator_a)
    model_admin = admin.site._registry[model]

    own = rows(model, world.a).order_by("pk").first()
    response = client.get(url(model, "change", own.pk))
    assert response.status_code == 200, "positive control: A's object opens"
    assert MARKER_A in html(response) and escape(str(own)).lower() in html(response)
    response = client.get(url(model, "history", own.pk))
    assert response.status_code == 200 and escape(str(own)).lower() in html(response)
    may_delete = model_admin.has_delete_permission(request_for(world.operator_a), own)
    response = client.get(url(model, "delete", own.pk))
    assert response.status_code == (200 if may_delete else 403)

    foreign_rows = rows(model, world.b)
    before = snapshot(foreign_rows)
    for obj in foreign_rows.order_by("pk")[:3]:
        for view in ("change", "history", "delete"):
            assert_unreachable(client.get(url(model, view, obj.pk)), MARKER_B)
        assert_unreachable(client.post(url(model, "delete", obj.pk), {"post": "yes"}), MARKER_B)
        assert_unreachable(client.post(url(model, "change", obj.pk), {}), MARKER_B)
    assert snapshot(foreign_rows) == before


def _partner_change_payload(client: Client, partner: Partner) -> dict[str, Any]:
    return form_payload(client.get(url(Partner, "change", partner.pk)))


def test_posting_a_full_form_to_a_foreign_object_changes_nothing(
    client: Client, world: World
) -> None:
    login(client, world.operator_a)
    payload = _partner_change_payload(client, world.a.partner) | {"name": "Renamed"}
    response = client.post(url(Partner, "change", world.a.partner.pk), payload)
    assert response.status_code == 302, "positive control: the form is valid"
    assert Partner.objects.get(pk=world.a.partner.pk).name == "Renamed"

    payload["workspace"] = str(world.b.workspace.pk)
    payload["default_structure"] = str(world.b.structure.pk)
    response = client.post(url(Partner, "change", world.b.partner.pk), payload)
    assert_unreachable(response, MARKER_B)
    assert Partner.objects.get(pk=world.b.partner.pk).name == "Bravomark Publisher"


# --- autocomplete ---------------------------------------------------------------------------


def _autocomplete(client: Client, model: type[models.Model], field: str, term: str) -> Any:
    return client.get(
        reverse("admin:autocomplete"),
        {
            "app_label": model._meta.app_label,
            "model_name": model._meta.model_name,
            "field_name": field,
            "term": term,
        },
    )


def _result_pks(response: HttpResponse) -> set[str]:
    return {item["id"] for item in json.loads(response.content)["results"]}


def _term_and_rows(target: type[models.Model], tenant: Tenant) -> tuple[str, set[str]]:
    """A search term that finds the tenant's rows of ``target``, and their ids."""
    if target._meta.app_label in PRODUCT_APPS:
        return tenant.infix, {str(pk) for pk in pks(rows(target, tenant))}
    operator = tenant.setup.operator  # users: the tenant's operator, by login
    return operator.username, {str(operator.pk)}


def test_autocomplete_sources_include_every_declared_autocomplete_field() -> None:
    declared = set()
    for model_admin in admin.site._registry.values():
        if model_admin.model._meta.app_label not in PRODUCT_APPS:
            continue
        for owner in [model_admin, *model_admin.inlines]:
            model = owner.model
            declared |= {(model, name) for name in owner.autocomplete_fields}
    assert (StructureField, "field") in declared
    assert declared <= set(AUTOCOMPLETE_SOURCES)


@pytest.mark.parametrize(
    ("model", "field_name"),
    AUTOCOMPLETE_SOURCES,
    ids=[f"{model._meta.label}.{name}" for model, name in AUTOCOMPLETE_SOURCES],
)
def test_autocomplete_returns_no_foreign_rows(
    client: Client, world: World, model: type[models.Model], field_name: str
) -> None:
    target = model._meta.get_field(field_name).related_model
    foreign_term, foreign_pks = _term_and_rows(target, world.b)
    own_term, own_pks = _term_and_rows(target, world.a)

    login(client, world.superuser)
    response = _autocomplete(client, model, field_name, foreign_term)
    assert _result_pks(response) & foreign_pks, "positive control: the term finds B's rows"

    login(client, world.operator_a)
    own = _autocomplete(client, model, field_name, own_term)
    if target._meta.app_label in PRODUCT_APPS:
        assert _result_pks(own) & own_pks, "positive control: operator A finds A's rows"
    else:
        assert own.status_code == 403  # operators have no access to platform models
    for term in (foreign_term, MARKER_B, ""):
        response = _autocomplete(client, model, field_name, term)
        assert response.status_code in (200, 403)
        if response.status_code == 200:
            assert not _result_pks(response) & foreign_pks
            assert MARKER_B not in html(response)


# --- choices of add and change forms -------------------------------------------------------


def _admin_pages(world: World, model: type[models.Model]) -> list[tuple[str, bool]]:
    """(url, is change page) of the add page (if A may add) and A's first object."""
    model_admin = admin.site._registry[model]
    pages = []
    if model_admin.has_add_permission(request_for(world.operator_a)):
        pages.append((url(model, "add"), False))
    pages.append((url(model, "change", rows(model, world.a).order_by("pk").first().pk), True))
    return pages


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_form_choices_offer_only_own_rows(
    client: Client, world: World, model: type[models.Model]
) -> None:
    login(client, world.operator_a)
    for page, is_change in _admin_pages(world, model):
        response = client.get(page)
        assert response.status_code == 200
        assert MARKER_B not in html(response), page
        for name, field in choice_fields(response, inlines=True):
            offered = pks(field.queryset)
            related = field.queryset.model
            assert not offered & pks(rows(related, world.b)), (page, name)
        # Positive control: every choice list of the main form (and of the inlines of
        # an existing object) offers A's rows.
        for name, field in choice_fields(response, inlines=is_change):
            related = field.queryset.model
            own = pks(rows(related, world.a))
            assert pks(field.queryset) & own, (page, name)


def _with_inline_row(payload: dict[str, Any], prefix: str, row: dict[str, str]) -> dict[str, Any]:
    total = int(payload[f"{prefix}-TOTAL_FORMS"])
    added = {f"{prefix}-{total}-{name}": value for name, value in row.items()}
    return payload | added | {f"{prefix}-TOTAL_FORMS": str(total + 1)}


@dataclass
class FormCase:
    """A form of A's that offers a choice of rows: ``choose`` fills it with the given
    tenant's row, ``saved`` tells whether that choice was saved."""

    page: Callable[[World], str]
    choose: Callable[[World, Tenant, dict[str, Any]], dict[str, Any]]
    saved: Callable[[World, Tenant], bool]


FORM_CASES = {
    "partner-workspace": FormCase(
        page=lambda w: url(Partner, "add"),
        choose=lambda w, t, p: p | {"name": "New partner", "workspace": str(t.workspace.pk)},
        saved=lambda w, t: t.workspace.partners.filter(name="New partner").exists(),
    ),
    "partner-default-structure": FormCase(
        page=lambda w: url(Partner, "add"),
        choose=lambda w, t, p: (
            p
            | {
                "name": "New partner",
                "workspace": str(w.a.workspace.pk),
                "default_structure": str(t.structure.pk),
            }
        ),
        saved=lambda w, t: Partner.objects.filter(
            name="New partner", default_structure=t.structure
        ).exists(),
    ),
    "duplicate-rule-fields": FormCase(
        page=lambda w: url(DuplicateRule, "add"),
        choose=lambda w, t, p: (
            p
            | {
                "name": "New rule",
                "workspace": str(w.a.workspace.pk),
                "window_hours": "24",
                "scope": "workspace",
                "fields": [str(t.spare_field.pk)],
            }
        ),
        saved=lambda w, t: DuplicateRule.objects.filter(fields=t.spare_field).exists(),
    ),
    "structure-field-inline": FormCase(
        page=lambda w: url(Structure, "change", w.a.structure.pk),
        choose=lambda w, t, p: _with_inline_row(
            p, "structure_fields", {"position": "99", "field": str(t.spare_field.pk)}
        ),
        saved=lambda w, t: w.a.structure.structure_fields.filter(field=t.spare_field).exists(),
    ),
    "refusal-policy-partners": FormCase(
        page=lambda w: url(Workspace, "change", w.a.workspace.pk),
        choose=lambda w, t, p: (
            p
            | {
                "refusal_policy-0-partner_scope": "include",
                "refusal_policy-0-partners": [str(t.partner.pk)],
            }
        ),
        saved=lambda w, t: w.a.workspace.refusal_policy.partners.filter(pk=t.partner.pk).exists(),
    ),
}


@pytest.mark.parametrize("case", FORM_CASES.values(), ids=FORM_CASES.keys())
def test_forged_choices_of_b_are_refused(client: Client, world: World, case: FormCase) -> None:
    login(client, world.operator_a)
    page = case.page(world)
    unchanged = form_payload(client.get(page))

    response = client.post(page, case.choose(world, world.b, unchanged))
    assert response.status_code == 200  # the form again, with the error
    assert response.context["errors"], "the form names the refused choice"
    assert MARKER_B not in html(response)
    assert not case.saved(world, world.b)

    response = client.post(page, case.choose(world, world.a, unchanged))
    assert response.status_code == 302, "positive control: the same form with A's row saves"
    assert case.saved(world, world.a)


# --- actions and the key creation page ------------------------------------------------------


def _post_action(
    client: Client, model: type[models.Model], action: str, selected: set[int]
) -> HttpResponse:
    return client.post(
        url(model, "changelist"),
        {"action": action, ACTION_CHECKBOX_NAME: [str(pk) for pk in selected], "post": "yes"},
    )


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_actions_posted_with_b_ids_change_nothing(
    client: Client, world: World, model: type[models.Model]
) -> None:
    login(client, world.operator_a)
    actions = admin.site._registry[model].get_actions(request_for(world.operator_a))
    foreign_rows = rows(model, world.b)
    before = snapshot(foreign_rows)
    for action in [*actions, "delete_selected"]:
        response = _post_action(client, model, action, pks(foreign_rows))
        assert response.status_code in (200, 302, 403)
        assert MARKER_B not in html(response)
        assert snapshot(foreign_rows) == before, action


@pytest.mark.parametrize(
    ("model", "action", "tenant_rows", "done"),
    [
        (Lead, "approve_leads", lambda t: {t.pending_lead.pk}, lambda t: _status(t) == "approved"),
        (Lead, "reject_leads", lambda t: {t.pending_lead.pk}, lambda t: _status(t) == "rejected"),
        (
            PartnerAPIKey,
            "revoke_keys",
            lambda t: {t.setup.api_key.pk},
            lambda t: PartnerAPIKey.objects.get(pk=t.setup.api_key.pk).revoked,
        ),
        (
            Advertiser,
            "delete_selected",
            lambda t: {t.spare_advertiser.pk},
            lambda t: not Advertiser.objects.filter(pk=t.spare_advertiser.pk).exists(),
        ),
    ],
    ids=["approve", "reject", "revoke", "delete"],
)
def test_actions_work_on_own_rows_only(
    client: Client, world: World, model: Any, action: str, tenant_rows: Any, done: Any
) -> None:
    login(client, world.operator_a)
    _post_action(client, model, action, tenant_rows(world.b) | tenant_rows(world.a))
    assert done(world.a), "positive control: the action works on A's rows"
    assert not done(world.b)


def _status(tenant: Tenant) -> str:
    return Lead.objects.get(pk=tenant.pending_lead.pk).status


def _create_key_url(partner: Partner) -> str:
    return reverse("admin:structures_partner_create_key", args=[partner.pk])


def test_create_key_page_creates_keys_for_own_partners_only(client: Client, world: World) -> None:
    login(client, world.operator_a)
    response = client.post(_create_key_url(world.a.partner), {"_key_name": "second"})
    assert response.status_code == 200, "positive control"
    assert world.a.partner.api_keys.filter(name="second").exists()
    assert "no-store" in response["Cache-Control"]

    for method in (client.get, client.post):
        response = method(_create_key_url(world.b.partner), {"_key_name": "stolen"})
        assert response.status_code == 404
        assert MARKER_B not in html(response)
    assert world.b.partner.api_keys.count() == 1


# --- viewers read, never write --------------------------------------------------------------


@pytest.mark.parametrize("model", PRODUCT_MODELS, ids=_label)
@pytest.mark.usefixtures("seeded_model")
def test_viewer_reads_but_cannot_add_change_or_delete(
    client: Client, world: World, model: type[models.Model]
) -> None:
    own = rows(model, world.a)
    obj = own.order_by("pk").first()
    login(client, world.operator_a)
    change_payload = form_payload(client.get(url(model, "change", obj.pk)))
    add_page = client.get(url(model, "add"))
    add_payload = form_payload(add_page) if add_page.status_code == 200 else {}

    login(client, world.viewer_a)
    before = snapshot(own)
    response = client.get(url(model, "changelist"))
    assert response.status_code == 200 and MARKER_A in html(response)
    response = client.get(url(model, "change", obj.pk))
    assert response.status_code == 200 and MARKER_A in html(response)
    assert response.context["has_change_permission"] is False
    assert b'name="_save"' not in response.content
    assert client.post(url(model, "change", obj.pk), change_payload).status_code == 403
    assert client.get(url(model, "delete", obj.pk)).status_code == 403
    assert client.post(url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    for action in [*admin.site._registry[model].get_actions(request_for(world.operator_a))]:
        _post_action(client, model, action, pks(own))
    if model is not Workspace:  # any operator may open a workspace of their own (below)
        assert client.get(url(model, "add")).status_code == 403
        count = model._default_manager.count()
        assert client.post(url(model, "add"), add_payload).status_code == 403
        assert model._default_manager.count() == count
    assert snapshot(own) == before


def test_viewer_cannot_create_keys(client: Client, world: World) -> None:
    login(client, world.viewer_a)
    assert client.post(_create_key_url(world.a.partner)).status_code == 404
    assert world.a.partner.api_keys.count() == 1


def test_viewer_who_opens_a_workspace_of_their_own_still_only_reads_a(
    client: Client, world: World
) -> None:
    """Owning some workspace gives the model-level change permission; actions and pages
    must still check each row's workspace, not just that permission."""
    login(client, world.viewer_a)
    page = url(Workspace, "add")
    payload = form_payload(client.get(page)) | {"name": "Viewer's own", "slug": "viewers-own"}
    response = client.post(page, payload)
    assert response.status_code == 302, response.content[:3000]
    own = Workspace.objects.get(slug="viewers-own")
    assert own.memberships.get().user == world.viewer_a
    assert own.memberships.get().role == Role.OWNER

    for action, selected in (
        ("approve_leads", {world.a.pending_lead.pk}),
        ("reject_leads", {world.a.pending_lead.pk}),
    ):
        _post_action(client, Lead, action, selected)
    assert _status(world.a) == LeadStatus.PENDING
    _post_action(client, PartnerAPIKey, "revoke_keys", {world.a.setup.api_key.pk})
    assert not PartnerAPIKey.objects.get(pk=world.a.setup.api_key.pk).revoked
    _post_action(client, Advertiser, "delete_selected", {world.a.spare_advertiser.pk})
    assert Advertiser.objects.filter(pk=world.a.spare_advertiser.pk).exists()
    assert client.post(_create_key_url(world.a.partner)).status_code == 404
    response = client.post(
        url(Partner, "change", world.a.partner.pk),
        _partner_change_payload(login(Client(), world.operator_a), world.a.partner)
        | {"name": "Renamed"},
    )
    assert response.status_code == 403
    assert Partner.objects.get(pk=world.a.partner.pk).name == "Alfamark Publisher"


def test_operator_of_two_workspaces_chooses_among_both(client: Client, world: World) -> None:
    """Positive control of the choice scoping: a second membership adds its rows."""
    MembershipFactory(workspace=world.b.workspace, user=world.operator_a, role=Role.ADMIN)
    login(client, world.operator_a)
    response = client.get(url(Partner, "add"))
    offered = dict(choice_fields(response, inlines=False))["workspace"].queryset
    assert {world.a.workspace, world.b.workspace} <= set(offered)


# --- the partner API ------------------------------------------------------------------------

API = "/api/v1/leads/"


def test_api_key_reads_only_its_own_leads(client: Client, world: World) -> None:
    a, b = world.a, world.b
    own = client.get(f"{API}{a.leads[1].pcid}/", **a.setup.auth)
    assert own.status_code == 200 and own.json()["id"] == a.leads[1].pcid
    assert client.get(f"{API}{b.leads[1].pcid}/", **b.setup.auth).status_code == 200
    for lead in b.leads:
        response = client.get(f"{API}{lead.pcid}/", **a.setup.auth)
        assert response.status_code == 404
        assert MARKER_B not in response.content.decode().lower()


def _post_lead(client: Client, tenant: Tenant, body: dict[str, Any]) -> HttpResponse:
    return client.post(
        API, data=json.dumps(body), content_type="application/json", **tenant.setup.auth
    )


def test_api_key_never_writes_into_another_workspace(client: Client, world: World) -> None:
    a, b = world.a, world.b
    b_leads = snapshot(Lead.objects.filter(workspace=b.workspace))
    body = a.setup.valid_payload(7)

    response = _post_lead(client, a, body | {"structure": b.structure.slug})
    assert response.status_code == 400
    assert "structure" in response.json()["errors"]
    response = _post_lead(client, a, body | {f"{b.marker}_income": "5"})
    assert response.status_code == 400
    assert f"{b.marker}_income" in response.json()["errors"]
    assert snapshot(Lead.objects.filter(workspace=b.workspace)) == b_leads

    response = _post_lead(client, a, body | {"structure": a.structure.slug})
    assert response.status_code == 201, "positive control: A's own structure by slug"
    assert Lead.objects.get(pcid=response.json()["id"]).workspace == a.workspace
    assert snapshot(Lead.objects.filter(workspace=b.workspace)) == b_leads
