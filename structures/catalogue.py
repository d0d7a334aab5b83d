"""The global field catalogue: fields every workspace shares (reserved ``g_`` prefix).

These are the fields that lending, insurance, solar and home-services lead forms carry,
so that library integrations work in one click without field mapping. Loaded by a data
migration; a later change of this list ships with a new migration that calls
``sync_global_fields`` again.
"""

from __future__ import annotations

from typing import Any

# (name, label, type, extra)
GLOBAL_FIELDS: list[tuple[str, str, str, dict[str, Any]]] = [
    # person
    ("g_first_name", "First name", "text", {}),
    ("g_middle_name", "Middle name", "text", {}),
    ("g_last_name", "Last name", "text", {}),
    ("g_email", "Email", "email", {}),
    ("g_phone", "Phone", "phone", {}),
    ("g_phone_alt", "Alternative phone", "phone", {}),
    ("g_date_of_birth", "Date of birth", "date", {"is_sensitive": True}),
    ("g_gender", "Gender", "select", {"choices": ["female", "male", "other"]}),
    ("g_ssn", "Social security number", "text",
     {"is_sensitive": True, "regex": r"\d{3}-?\d{2}-?\d{4}"}),
    # address
    ("g_address", "Street address", "text", {}),
    ("g_address2", "Address line 2", "text", {}),
    ("g_city", "City", "text", {}),
    ("g_state", "State", "state", {}),
    ("g_zip", "Zip / postal code", "zip", {}),
    ("g_country", "Country", "country", {}),
    ("g_residence_type", "Residence", "select", {"choices": ["own", "rent", "other"]}),
    ("g_months_at_address", "Months at address", "number", {}),
    # consent and origin
    ("g_ip", "IP address", "ip", {}),
    ("g_user_agent", "User agent", "text", {}),
    ("g_landing_page_url", "Landing page URL", "url", {}),
    ("g_consent", "Consent given", "checkbox", {}),
    ("g_consent_text", "Consent text", "text", {}),
    ("g_trustedform_cert_url", "TrustedForm certificate URL", "url", {}),
    ("g_jornaya_leadid", "Jornaya LeadiD", "text", {}),
    ("g_click_id", "Click id", "text", {}),
    ("g_comments", "Comments", "text", {}),
    # lending
    ("g_loan_amount", "Loan amount", "money", {}),
    ("g_loan_purpose", "Loan purpose", "select",
     {"choices": ["debt_consolidation", "home_improvement", "auto", "medical", "business",
                  "personal", "other"]}),
    ("g_monthly_income", "Monthly income", "money", {}),
    ("g_employment_status", "Employment status", "select",
     {"choices": ["employed", "self_employed", "unemployed", "retired", "student", "benefits"]}),
    ("g_employer", "Employer", "text", {}),
    ("g_pay_frequency", "Pay frequency", "select",
     {"choices": ["weekly", "biweekly", "twice_monthly", "monthly"]}),
    ("g_credit_rating", "Credit rating", "select",
     {"choices": ["excellent", "good", "fair", "poor"]}),
    ("g_bank_account_type", "Bank account type", "select", {"choices": ["checking", "savings"]}),
    ("g_home_owner", "Home owner", "checkbox", {}),
    # insurance
    ("g_insurance_type", "Insurance type", "select",
     {"choices": ["auto", "home", "health", "life", "medicare", "renters"]}),
    ("g_currently_insured", "Currently insured", "checkbox", {}),
    ("g_current_insurer", "Current insurer", "text", {}),
    ("g_vehicle_year", "Vehicle year", "number", {}),
    ("g_vehicle_make", "Vehicle make", "text", {}),
    ("g_vehicle_model", "Vehicle model", "text", {}),
    ("g_coverage_amount", "Coverage amount", "money", {}),
    # solar and home services
    ("g_monthly_electric_bill", "Monthly electric bill", "money", {}),
    ("g_electric_utility", "Electric utility", "text", {}),
    ("g_roof_shade", "Roof shade", "select",
     {"choices": ["no_shade", "some_shade", "mostly_shaded"]}),
    ("g_property_type", "Property type", "select",
     {"choices": ["single_family", "multi_family", "condo", "townhouse", "mobile", "commercial"]}),
    ("g_project_type", "Project type", "text", {}),
    ("g_project_timeframe", "Project timeframe", "select",
     {"choices": ["immediately", "within_1_month", "1_3_months", "3_6_months", "flexible"]}),
]  # fmt: skip


def sync_global_fields(field_model: Any) -> int:
    """Create or update every catalogue field; returns how many were written."""
    count = 0
    for name, label, type_, extra in GLOBAL_FIELDS:
        field_model.objects.update_or_create(
            workspace=None,
            name=name,
            defaults={
                "label": label,
                "type": type_,
                "regex": extra.get("regex", ""),
                "choices": extra.get("choices", []),
                "is_sensitive": extra.get("is_sensitive", False),
            },
        )
        count += 1
    return count
