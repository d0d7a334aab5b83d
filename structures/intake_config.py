"""The intake configuration of a workspace, cached per process under its version.

Intake reads the same configuration for every lead: the structure's fields, the duplicate
rules and the refusal policy. Reading it from the database costs 7 statements (~5 ms of
CPU) a lead. It is cached here keyed by ``Workspace.config_version``, which signals bump
on every change and which the API key lookup already returns with the partner's
workspace: a changed configuration is a cache miss in every process at once, so nothing
stale is ever served (DESIGN.md: no state that matters lives in process memory; this is
a derived copy checked on every request).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from structures.models import (
    DuplicateRule,
    Field,
    RefusalPolicy,
    Structure,
    StructureField,
    Workspace,
)
from structures.selectors import FieldSpec, active_duplicate_rules, refusal_policy_for
from structures.selectors import structure_field_specs as _read_specs


@dataclass(frozen=True)
class PolicySnapshot:
    is_enabled: bool
    applies_to_api: bool
    applies_to_iframe: bool
    must_pass: str
    partner_scope: str
    partner_ids: frozenset[int]


@dataclass(frozen=True)
class RuleSnapshot:
    id: int
    name: str
    field_names: tuple[str, ...]
    window_hours: int
    scope: str


@lru_cache(maxsize=1024)
def structure_specs(structure_id: int, version: str) -> tuple[FieldSpec, ...]:
    return tuple(_read_specs(structure=Structure(pk=structure_id)))


@lru_cache(maxsize=1024)
def duplicate_rules(workspace_id: int, version: str) -> tuple[RuleSnapshot, ...]:
    return tuple(
        RuleSnapshot(
            id=rule.id,
            name=rule.name,
            field_names=tuple(sorted(f.name for f in rule.fields.all())),
            window_hours=rule.window_hours,
            scope=rule.scope,
        )
        for rule in active_duplicate_rules(workspace_id=workspace_id)
    )


@lru_cache(maxsize=1024)
def refusal_policy(workspace_id: int, version: str) -> PolicySnapshot | None:
    policy = refusal_policy_for(workspace_id=workspace_id)
    if policy is None:
        return None
    return PolicySnapshot(
        is_enabled=policy.is_enabled,
        applies_to_api=policy.applies_to_api,
        applies_to_iframe=policy.applies_to_iframe,
        must_pass=policy.must_pass,
        partner_scope=policy.partner_scope,
        partner_ids=frozenset(p.id for p in policy.partners.all()),
    )


def cache_clear() -> None:
    """Forget every cached configuration (tests)."""
    for cached in (structure_specs, duplicate_rules, refusal_policy):
        cached.cache_clear()


def config_bump(*, workspace_id: int | None) -> None:
    """Invalidate the cached intake configuration of one workspace (None: all of them,
    for global fields)."""
    qs = (
        Workspace.objects.all()
        if workspace_id is None
        else Workspace.objects.filter(pk=workspace_id)
    )
    qs.update(config_version=F("config_version") + 1)


def _workspace_of(instance: object) -> int | None:
    if isinstance(instance, StructureField):
        return (
            Structure.objects.filter(pk=instance.structure_id)
            .values_list("workspace_id", flat=True)
            .first()
        )
    return getattr(instance, "workspace_id", None)


@receiver([post_save, post_delete], sender=Field)
@receiver([post_save, post_delete], sender=Structure)
@receiver([post_save, post_delete], sender=StructureField)
@receiver([post_save, post_delete], sender=DuplicateRule)
@receiver([post_save, post_delete], sender=RefusalPolicy)
def _config_changed(sender: type, instance: object, **kwargs: object) -> None:
    workspace_id = _workspace_of(instance)
    if workspace_id is None and isinstance(instance, Field):
        config_bump(workspace_id=None)  # a global field: every workspace uses it
    elif workspace_id is not None:
        config_bump(workspace_id=workspace_id)


@receiver(m2m_changed, sender=DuplicateRule.fields.through)
@receiver(m2m_changed, sender=RefusalPolicy.partners.through)
def _config_m2m_changed(sender: type, instance: object, action: str, **kwargs: object) -> None:
    if action in ("post_add", "post_remove", "post_clear"):
        workspace_id = getattr(instance, "workspace_id", None)
        if workspace_id is not None:
            config_bump(workspace_id=workspace_id)
        elif isinstance(instance, Field):  # reverse side: a field's rules changed
            config_bump(workspace_id=None)
