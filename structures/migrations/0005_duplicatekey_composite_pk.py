"""DuplicateKey gets a composite primary key (workspace, key) instead of id + unique.

Django cannot alter a primary key into a composite one, so the table is recreated. The
rows are claims with an expiry; none has been released in production yet (pre-1.0), so
starting from an empty table is acceptable: the next lead of a person re-claims its keys.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("structures", "0004_leaner_lead_indexes")]

    operations = [
        migrations.DeleteModel(name="DuplicateKey"),
        migrations.CreateModel(
            name="DuplicateKey",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "workspace_id",
                        "key",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("key", models.CharField(max_length=64)),
                ("expires_at", models.DateTimeField()),
                (
                    "lead",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="structures.lead",
                    ),
                ),
                (
                    "workspace",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="structures.workspace",
                    ),
                ),
            ],
        ),
    ]
