"""Reads of the structures app: querysets ready for their callers, never writes."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from structures.choices import Role
from structures.models import (
    DuplicateRule,
    Field,
    Lead,
    Membership,
    RefusalPolicy,
    Structure,
    StructureField,
    Workspace,
)

User = AbstractBaseUser | AnonymousUser


@dataclass(frozen=True)
class FieldSpec:
    """One field of a structure as validation needs it."""

    name: str
    type: str
    is_required: bool
    default: str
    regex: str
    choices: tuple[str, ...]


def structure_field_specs(*, structure: Structure) -> list[FieldSpec]:
    """The structure's fields in order, with per-structure rules resolved."""
    rows = (
        StructureField.objects.filter(structure=structure)
        .select_related("field")
        .order_by("position", "id")
    )
    return [
        FieldSpec(
            name=row.field.name,
            type=row.field.type,
            is_required=row.is_required,
            default=row.default,
            regex=row.regex or row.field.regex,
            choices=tuple(row.field.choices or ()),
        )
        for row in rows
    ]


def workspace_ids_for(user: User, *, roles: tuple[str, ...] | None = None) -> list[int] | None:
    """Workspaces the operator belongs to (with one of ``roles``); None means all
    (superuser)."""
    if not user.is_authenticated:
        return []
    if user.is_superuser:
        return None
    memberships = Membership.objects.filter(user=user)
    if roles:
        memberships = memberships.filter(role__in=roles)
    return list(memberships.values_list("workspace_id", flat=True))


def workspaces_editable_by(user: User) -> QuerySet[Workspace]:
    ids = workspace_ids_for(user, roles=(Role.OWNER, Role.ADMIN))
    qs = Workspace.objects.all()
    return qs if ids is None else qs.filter(id__in=ids)


def fields_for_workspace(*, workspace_id: int | None) -> QuerySet[Field]:
    """Global fields plus the workspace's own."""
    return Field.objects.filter(Q(workspace__isnull=True) | Q(workspace_id=workspace_id))


def active_duplicate_rules(*, workspace_id: int) -> list[DuplicateRule]:
    return list(
        DuplicateRule.objects.filter(workspace_id=workspace_id, is_active=True)
        .prefetch_related("fields")
        .order_by("id")
    )


def refusal_policy_for(*, workspace_id: int) -> RefusalPolicy | None:
    return (
        RefusalPolicy.objects.filter(workspace_id=workspace_id).prefetch_related("partners").first()
    )


def leads_for_partner(*, partner_id: int) -> QuerySet[Lead]:
    return Lead.objects.filter(partner_id=partner_id).select_related("structure")
