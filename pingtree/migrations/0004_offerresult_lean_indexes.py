# Written by hand around makemigrations' output: Django's AlterField(db_index=False)
# drops every single-column index on the column that is not in Meta.indexes, which on
# "distribution" includes offerresult_one_exclusive_sale (a UniqueConstraint with a
# condition is a partial unique index): the database's guard against a second exclusive
# sale. So the state changes as makemigrations wrote it, and the database drops exactly
# the six indexes Django made for the foreign keys (same names on PostgreSQL and SQLite).

import django.db.models.deletion
from django.db import migrations, models

DROPPED = {
    "distribution_id": "pingtree_offerresult_distribution_id_82d06794",
    "offer_id": "pingtree_offerresult_offer_id_30b6af24",
    "ping_log_id": "pingtree_offerresult_ping_log_id_24fec938",
    "ping_run_id": "pingtree_offerresult_ping_run_id_6e162358",
    "post_log_id": "pingtree_offerresult_post_log_id_b34f6f5c",
    "post_run_id": "pingtree_offerresult_post_run_id_bb7164c5",
}


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0009_hot_tables_redundant_indexes"),
        ("pingtree", "0003_offerresult_call_logs"),
        ("structures", "0006_partner_decision_mode"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="offerresult",
                    name="distribution",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="results",
                        to="pingtree.distribution",
                    ),
                ),
                migrations.AlterField(
                    model_name="offerresult",
                    name="offer",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="results",
                        to="pingtree.offer",
                    ),
                ),
                migrations.AlterField(
                    model_name="offerresult",
                    name="ping_log",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The ping's request log when it was called without a scenario run.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="integrations.requestlog",
                        verbose_name="ping call",
                    ),
                ),
                migrations.AlterField(
                    model_name="offerresult",
                    name="ping_run",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="integrations.scenariorun",
                        verbose_name="ping run",
                    ),
                ),
                migrations.AlterField(
                    model_name="offerresult",
                    name="post_log",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The post's request log when it was called without a scenario run.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="integrations.requestlog",
                        verbose_name="post call",
                    ),
                ),
                migrations.AlterField(
                    model_name="offerresult",
                    name="post_run",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="integrations.scenariorun",
                        verbose_name="post run",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    sql=[f'DROP INDEX IF EXISTS "{name}"' for name in DROPPED.values()],
                    reverse_sql=[
                        f'CREATE INDEX "{name}" ON "pingtree_offerresult" ("{column}")'
                        for column, name in DROPPED.items()
                    ],
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="offerresult",
            index=models.Index(
                condition=models.Q(("ping_run__isnull", False)),
                fields=["ping_run"],
                name="offerresult_ping_run",
            ),
        ),
        migrations.AddIndex(
            model_name="offerresult",
            index=models.Index(
                condition=models.Q(("post_run__isnull", False)),
                fields=["post_run"],
                name="offerresult_post_run",
            ),
        ),
        migrations.AddIndex(
            model_name="offerresult",
            index=models.Index(
                condition=models.Q(("ping_log__isnull", False)),
                fields=["ping_log"],
                name="offerresult_ping_log",
            ),
        ),
        migrations.AddIndex(
            model_name="offerresult",
            index=models.Index(
                condition=models.Q(("post_log__isnull", False)),
                fields=["post_log"],
                name="offerresult_post_log",
            ),
        ),
    ]
