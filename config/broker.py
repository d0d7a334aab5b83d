"""Placeholder: replaced by the crash-safe file-system transport."""

from kombu.transport.filesystem import Transport  # noqa: F401
