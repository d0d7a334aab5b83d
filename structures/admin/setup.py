"""Workspaces and their operators, fields, structures, duplicate rules."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from structures import services
from structures.admin.base import (
    ScopedAdmin,
    ScopedStackedInline,
    ScopedTabularInline,
    register_workspace_path,
    scope_queryset,
    scoped_related_filter,
)
from structures.models import (
    DuplicateRule,
    Field,
    Membership,
    RefusalPolicy,
    Structure,
    StructureField,
    Workspace,
)

register_workspace_path(StructureField, "structure__workspace")


class MembershipForm(forms.ModelForm):
    """Operators are added by their exact email: no list of other people's accounts."""

    email = forms.EmailField(label="Operator email", help_text="The operator's login email.")

    class Meta:
        model = Membership
        fields = ["email", "role"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["email"].initial = self.instance.user.email
            self.fields["email"].disabled = True

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if self.instance.pk:
            return email
        user = get_user_model().objects.filter(email__iexact=email, is_active=True).first()
        if user is None:
            raise forms.ValidationError(
                "No operator account with this email; ask your administrator to create it."
            )
        self.instance.user = user
        return email


class MembershipInline(ScopedTabularInline):
    model = Membership
    form = MembershipForm
    verbose_name = "operator"
    verbose_name_plural = "operators"


class RefusalPolicyInline(ScopedStackedInline):
    model = RefusalPolicy
    max_num = 1
    min_num = 1
    can_delete = False
    filter_horizontal = ["partners"]

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        obj_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if db_field.name == "partners":
            from structures.models import Partner

            qs = scope_queryset(Partner.objects.all(), request, editable=True)
            kwargs["queryset"] = qs.filter(workspace_id=obj_id) if obj_id else qs.none()
        return super().formfield_for_manytomany(db_field, request, **kwargs)


@admin.register(Workspace)
class WorkspaceAdmin(ScopedAdmin):
    list_display = ["name", "slug", "timezone", "currency", "default_country", "operator_count"]
    ordering = ["name", "id"]  # the Count annotation drops Meta.ordering (GROUP BY)
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline, RefusalPolicyInline]
    fieldsets = [
        (None, {"fields": ["name", "slug"]}),
        ("Locale", {"fields": ["timezone", "currency", "default_country"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(_operators=Count("memberships"))

    @admin.display(description="operators", ordering="_operators")
    def operator_count(self, obj: Workspace) -> int:
        return obj._operators

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Any operator may open a new workspace; they become its owner.
        return request.user.is_active and request.user.is_staff

    def has_delete_permission(self, request: HttpRequest, obj: Workspace | None = None) -> bool:
        return request.user.is_superuser

    def save_model(self, request: HttpRequest, obj: Workspace, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        else:
            services.workspace_create(
                workspace=obj, owner=None if request.user.is_superuser else request.user
            )


@admin.register(Field)
class FieldAdmin(ScopedAdmin):
    list_display = ["name", "label", "type", "scope", "is_sensitive"]
    list_filter = ["type", ("workspace", admin.EmptyFieldListFilter), "is_sensitive"]
    search_fields = ["name", "label"]
    fieldsets = [
        (None, {"fields": ["workspace", "name", "label", "type"]}),
        ("Validation", {"fields": ["regex", "choices", "is_sensitive", "help_text"]}),
    ]

    @admin.display(description="scope", ordering="workspace__name")
    def scope(self, obj: Field) -> str:
        return "Global" if obj.workspace_id is None else str(obj.workspace)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("workspace")

    def has_change_permission(self, request: HttpRequest, obj: Field | None = None) -> bool:
        # Global fields belong to the platform: not editable by workspace admins.
        if obj is not None and obj.workspace_id is None:
            return request.user.is_superuser
        return super().has_change_permission(request, obj)

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)
        if not request.user.is_superuser and "workspace" in form.base_fields:
            form.base_fields["workspace"].required = True
            form.base_fields["workspace"].empty_label = None
        return form


class StructureFieldInline(ScopedTabularInline):
    model = StructureField
    fields = ["position", "field", "is_required", "default", "regex", "help_text"]
    autocomplete_fields = ["field"]
    ordering = ["position", "id"]


@admin.register(Structure)
class StructureAdmin(ScopedAdmin):
    list_display = ["name", "slug", "kind", "workspace", "country", "is_active", "field_count"]
    ordering = ["name", "id"]  # the Count annotation drops Meta.ordering (GROUP BY)
    list_filter = ["kind", "is_active", scoped_related_filter("workspace")]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [StructureFieldInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("workspace")
            .annotate(_fields=Count("structure_fields"))
        )

    @admin.display(description="fields", ordering="_fields")
    def field_count(self, obj: Structure) -> int:
        return obj._fields


@admin.register(DuplicateRule)
class DuplicateRuleAdmin(ScopedAdmin):
    list_display = ["name", "workspace", "window_hours", "scope", "is_active"]
    list_filter = ["is_active", "scope", scoped_related_filter("workspace")]
    search_fields = ["name"]
    filter_horizontal = ["fields"]
