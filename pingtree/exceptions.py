"""Refused business actions of the ping tree; the admin shows them as messages."""


class PingTreeError(Exception):
    """Base of the ping tree's refused actions."""


class OfferStateError(PingTreeError):
    """The offer is not in a state that allows this (e.g. resuming an active offer)."""
