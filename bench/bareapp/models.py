from django.db import models


class BareLead(models.Model):
    """What the bare endpoint stores: the posted body, as one row."""

    email = models.CharField(max_length=254, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.email
