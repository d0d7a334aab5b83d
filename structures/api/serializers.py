"""Serializers that describe the partner API in the OpenAPI schema. The lead body is
validated by the structure's field types (services.lead_values_validate), because each
workspace defines its own fields."""

from __future__ import annotations

from rest_framework import serializers

from structures.choices import DecisionMode, LeadStatus


class LeadInSerializer(serializers.Serializer):
    """The structure's fields (e.g. `g_email`, `g_phone`) plus these optional keys."""

    structure = serializers.SlugField(
        required=False, help_text="Structure slug; the partner's default structure if absent."
    )
    external_id = serializers.CharField(
        required=False, max_length=120, help_text="Your own id of this lead."
    )
    sub1 = serializers.CharField(required=False, max_length=255, help_text="Tracking value.")
    sub2 = serializers.CharField(required=False, max_length=255)
    sub3 = serializers.CharField(required=False, max_length=255)
    sub4 = serializers.CharField(required=False, max_length=255)
    sub5 = serializers.CharField(required=False, max_length=255)
    test = serializers.BooleanField(
        required=False, help_text="A test lead: runs everything, never counts or pays."
    )
    decision = serializers.ChoiceField(
        choices=DecisionMode.choices,
        required=False,
        help_text="sync: wait for the ping tree's answer (sold, unsold, or pending when "
        "the time budget runs out); async: answer at once. Default: your account's setting.",
    )
    wait = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=120,
        help_text="Synchronous only: wait at most this many seconds (never more than your "
        "account's time budget).",
    )

    class Meta:
        ref_name = "LeadIn"


class DecisionSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=[("sold", "sold"), ("unsold", "unsold"), ("pending", "pending")]
    )
    price = serializers.CharField(
        allow_null=True, help_text="Sold only: what you are paid for the lead."
    )
    redirect_url = serializers.CharField(
        allow_blank=True, help_text="Sold only: send the consumer there, if not empty."
    )
    reason = serializers.CharField(allow_blank=True, help_text="Unsold only: why.")

    class Meta:
        ref_name = "Decision"


class LeadOutSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The public lead id (pcid).")
    status = serializers.ChoiceField(choices=LeadStatus.choices)
    reason = serializers.CharField(allow_blank=True)
    external_id = serializers.CharField(allow_blank=True)
    test = serializers.BooleanField()
    status_url = serializers.URLField()
    decision = DecisionSerializer(
        required=False, help_text="Synchronous decisions only: the ping tree's answer."
    )


class LeadDetailSerializer(LeadOutSerializer):
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)
    outcome = serializers.DictField(help_text="Distribution outcome: buyer, price, redirect.")


class ErrorSerializer(serializers.Serializer):
    status = serializers.CharField()
    detail = serializers.CharField()
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False
    )
