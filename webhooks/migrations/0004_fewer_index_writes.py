# Written by hand around makemigrations' output: Django's AlterField(db_index=False) on
# a foreign key drops and re-adds its constraint, which re-checks every row of these
# tables under a lock that stops callbacks; the database only needs the indexes gone.
# So the state changes as makemigrations wrote it, and the database drops exactly the
# six indexes Django made for these foreign keys (same names on PostgreSQL and SQLite).

import django.db.models.deletion
from django.db import migrations, models

DROPPED = {
    ("webhooks_inboundwebhookrequest", "started_run_id"): (
        "webhooks_inboundwebhookrequest_started_run_id_6c7a2f3f"
    ),
    ("webhooks_inboundwebhookrequest", "waiting_id"): (
        "webhooks_inboundwebhookrequest_waiting_id_cf60a561"
    ),
    ("webhooks_inboundwebhookrequest", "workspace_id"): (
        "webhooks_inboundwebhookrequest_workspace_id_c606d12e"
    ),
    ("webhooks_waitingwebhook", "advertiser_id"): "webhooks_waitingwebhook_advertiser_id_5a946633",
    ("webhooks_waitingwebhook", "endpoint_id"): "webhooks_waitingwebhook_endpoint_id_8d46d934",
    ("webhooks_waitingwebhook", "workspace_id"): "webhooks_waitingwebhook_workspace_id_35e882d7",
}


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0010_runstep_constraints_run_status_index"),
        ("structures", "0006_partner_decision_mode"),
        ("webhooks", "0003_inbound_stuck_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="inboundwebhookrequest",
                    name="started_run",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="integrations.scenariorun",
                        verbose_name="started run",
                    ),
                ),
                migrations.AlterField(
                    model_name="inboundwebhookrequest",
                    name="waiting",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="webhooks.waitingwebhook",
                        verbose_name="waiting webhook",
                    ),
                ),
                migrations.AlterField(
                    model_name="inboundwebhookrequest",
                    name="workspace",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="structures.workspace",
                        verbose_name="workspace",
                    ),
                ),
                migrations.AlterField(
                    model_name="waitingwebhook",
                    name="advertiser",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="structures.advertiser",
                        verbose_name="advertiser",
                    ),
                ),
                migrations.AlterField(
                    model_name="waitingwebhook",
                    name="endpoint",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="waiting",
                        to="webhooks.webhookendpoint",
                        verbose_name="endpoint",
                    ),
                ),
                migrations.AlterField(
                    model_name="waitingwebhook",
                    name="workspace",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="structures.workspace",
                        verbose_name="workspace",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=[f'DROP INDEX IF EXISTS "{name}"' for name in DROPPED.values()],
                    reverse_sql=[
                        f'CREATE INDEX "{name}" ON "{table}" ("{column}")'
                        for (table, column), name in DROPPED.items()
                    ],
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="inboundwebhookrequest",
            index=models.Index(
                condition=models.Q(("waiting__isnull", False)),
                fields=["waiting"],
                name="inbound_waiting",
            ),
        ),
        migrations.AddIndex(
            model_name="inboundwebhookrequest",
            index=models.Index(
                condition=models.Q(("started_run__isnull", False)),
                fields=["started_run"],
                name="inbound_started_run",
            ),
        ),
        migrations.AddIndex(
            model_name="waitingwebhook",
            index=models.Index(
                condition=models.Q(("advertiser__isnull", False)),
                fields=["advertiser"],
                name="waiting_advertiser",
            ),
        ),
    ]
