"""Pieces the ping tree admin pages share."""

from __future__ import annotations

from typing import Any

from django.forms.models import BaseInlineFormSet

OFFER_STATUS_COLOURS = {"active": "success", "paused": "danger", "inactive": "info"}
DISTRIBUTION_COLOURS = {
    "pending": "info", "running": "info", "waiting": "warning", "sold": "success",
    "unsold": "danger",
}  # fmt: skip
RESULT_COLOURS = {
    "skipped": "info", "accepted": "success", "rejected": "danger", "pending": "warning",
    "error": "danger", "timeout": "danger", "outbid": "warning",
}  # fmt: skip


class WorkspaceFromParentFormSet(BaseInlineFormSet):
    """Rows of an inline belong to their parent's workspace. Set on each form's instance
    before validation, so the model's own ``clean()`` (an offer of this workspace, a
    tree of this workspace) checks against it, also for rows added on the add page."""

    def _construct_form(self, i: int, **kwargs: Any) -> Any:
        form = super()._construct_form(i, **kwargs)
        if self.instance is not None and getattr(self.instance, "workspace_id", None):
            form.instance.workspace_id = self.instance.workspace_id
        return form

    @property
    def empty_form(self) -> Any:
        form = super().empty_form
        if self.instance is not None and getattr(self.instance, "workspace_id", None):
            form.instance.workspace_id = self.instance.workspace_id
        return form

    def save_new(self, form: Any, commit: bool = True) -> Any:
        form.instance.workspace_id = self.instance.workspace_id
        return super().save_new(form, commit)


def money(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:,.2f}"
