"""The ping tree in the admin: offers (caps, filters editor, filter templates, figures,
buyer health), ping trees with their tiers and the offers in each tier, and the
distributions (a lead's way through the tree: who was asked, what they said, who won and
why the others lost)."""

from pingtree.admin import distributions, offers, trees  # noqa: F401
from structures import hooks

# The lead's page shows its distribution (structures cannot import the ping tree).
if distributions.lead_distribution_panel not in hooks.LEAD_PANELS:
    hooks.LEAD_PANELS.append(distributions.lead_distribution_panel)
