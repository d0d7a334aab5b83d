"""The ping tree in the admin: offers (caps, filters editor, filter templates, figures,
buyer health), ping trees with their tiers and the offers in each tier, and the
distributions (a lead's way through the tree: who was asked, what they said, who won and
why the others lost)."""

from pingtree.admin import distributions, offers, trees  # noqa: F401
