"""Tenant scoping for every admin page.

An operator sees and reaches only the rows of the workspaces they belong to, on every
changelist, change page, autocomplete, filter choice, inline and action; superusers see
all. Owners and admins change things; viewers only read. Every model admin of the
product derives from ``ScopedAdmin`` (and inlines from ``ScopedInline``); a test walks
all registered admins to prove it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db import models
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin, StackedInline, TabularInline

from structures.choices import Role
from structures.models import Field, Workspace
from structures.selectors import workspace_ids_for

EDIT_ROLES = (Role.OWNER, Role.ADMIN)

# Lookup path from a model to its workspace, for models without a direct `workspace`.
WORKSPACE_PATHS: dict[type[models.Model], str] = {Workspace: "id"}


def register_workspace_path(model: type[models.Model], path: str) -> None:
    WORKSPACE_PATHS[model] = path


def workspace_path(model: type[models.Model]) -> str | None:
    if model in WORKSPACE_PATHS:
        return WORKSPACE_PATHS[model]
    try:
        model._meta.get_field("workspace")
    except Exception:  # noqa: BLE001 - FieldDoesNotExist: not a tenant model
        return None
    return "workspace"


def _ids(request: HttpRequest, *, editable: bool) -> list[int] | None:
    """Workspace ids of the operator (memoised on the request)."""
    attr = "_lr_edit_ids" if editable else "_lr_view_ids"
    if not hasattr(request, attr):
        roles = EDIT_ROLES if editable else None
        setattr(request, attr, workspace_ids_for(request.user, roles=roles))
    return getattr(request, attr)


def scope_queryset(qs: QuerySet, request: HttpRequest, *, editable: bool = False) -> QuerySet:
    """Restrict any queryset of a tenant model to the operator's workspaces."""
    ids = _ids(request, editable=editable)
    if ids is None:
        return qs
    model = qs.model
    if model is Field:
        # Global fields are shared by every workspace (read-only for operators).
        return qs.filter(Q(workspace__isnull=True) | Q(workspace_id__in=ids))
    path = workspace_path(model)
    if path is None:
        # Not a tenant model (e.g. users): operators reach none of it through the admin.
        return qs.none()
    field = "id" if path == "id" else f"{path}_id"
    return qs.filter(**{f"{field}__in": ids})


def object_workspace_id(obj: models.Model) -> int | None:
    path = workspace_path(type(obj))
    if path is None:
        return None
    if path == "id":
        return obj.pk
    target: Any = obj
    parts = path.split("__")
    for part in parts[:-1]:
        target = getattr(target, part, None)
        if target is None:
            return None
    return getattr(target, f"{parts[-1]}_id", None)


class ScopedFormfieldsMixin:
    """Choices of every foreign key / many-to-many are limited to what the operator may
    use: their editable workspaces' rows (plus global fields)."""

    def formfield_for_foreignkey(
        self, db_field: models.ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> Any:
        if "queryset" not in kwargs:
            related = db_field.related_model
            if workspace_path(related) is not None or related is Workspace:
                base = related._default_manager.all()
                kwargs["queryset"] = scope_queryset(base, request, editable=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]

    def formfield_for_manytomany(
        self, db_field: models.ManyToManyField, request: HttpRequest, **kwargs: Any
    ) -> Any:
        if "queryset" not in kwargs:
            related = db_field.related_model
            if workspace_path(related) is not None:
                base = related._default_manager.all()
                kwargs["queryset"] = scope_queryset(base, request, editable=True)
        return super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]


class ScopedAdmin(ScopedFormfieldsMixin, ModelAdmin):
    """Base of every product model admin."""

    list_per_page = 50
    warn_unsaved_form = True

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return scope_queryset(super().get_queryset(request), request)

    def _member(self, request: HttpRequest) -> bool:
        ids = _ids(request, editable=False)
        return ids is None or bool(ids)

    def _may_edit(self, request: HttpRequest, obj: models.Model | None) -> bool:
        ids = _ids(request, editable=True)
        if ids is None:
            return True
        if obj is None:
            return bool(ids)
        return object_workspace_id(obj) in ids

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff and self._member(request)

    def has_view_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        if not self.has_module_permission(request):
            return False
        if obj is None or request.user.is_superuser:
            return True
        return object_workspace_id(obj) in (_ids(request, editable=False) or [])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request) and self._may_edit(request, None)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self.has_module_permission(request) and self._may_edit(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self.has_change_permission(request, obj)

    def get_action(self, action: Any) -> tuple[Callable, str, str] | None:
        """An action that may change rows gets only the selected rows of the workspaces
        the operator edits. Its permission check (``has_change_permission(request)``, no
        object) passes as soon as they edit *some* workspace, while the changelist also
        lists the workspaces they only view: without this a viewer of A who owns B could
        approve A's leads or revoke A's keys. Actions whose only permission is "view"
        keep every row the operator sees. (``delete_selected`` checks each object.)"""
        found = super().get_action(action)
        if found is None:
            return None
        func, name, description = found
        if tuple(getattr(func, "allowed_permissions", ())) == ("view",):
            return found

        @functools.wraps(func)
        def scoped(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> Any:
            return func(modeladmin, request, scope_queryset(queryset, request, editable=True))

        return scoped, name, description


class _ScopedInlineMixin(ScopedFormfieldsMixin):
    def _parent_editable(self, request: HttpRequest, obj: models.Model | None) -> bool:
        ids = _ids(request, editable=True)
        if ids is None:
            return True
        if obj is None:
            return bool(ids)
        return object_workspace_id(obj) in ids

    def has_add_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self._parent_editable(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self._parent_editable(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return self._parent_editable(request, obj)

    def has_view_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        ids = _ids(request, editable=False)
        return ids is None or obj is None or object_workspace_id(obj) in ids


class ScopedTabularInline(_ScopedInlineMixin, TabularInline):
    extra = 0


class ScopedStackedInline(_ScopedInlineMixin, StackedInline):
    extra = 0


class ReadOnlyInlineMixin:
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


def scoped_related_filter(field_name: str) -> tuple[str, type[admin.ListFilter]]:
    """A foreign-key filter whose choices are only the related rows present in the
    (already scoped) changelist queryset: never another workspace's names."""
    return (field_name, admin.RelatedOnlyFieldListFilter)
