"""The operator UI of the structures app (the admin is the product)."""

from structures.admin import leads, parties, setup  # noqa: F401
