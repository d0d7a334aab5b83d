from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("integrations", "0002_docs_url"),
    ]

    operations = [
        migrations.AddField(
            model_name="integration",
            name="config_version",
            field=models.PositiveIntegerField(
                default=0,
                editable=False,
                help_text="Bumped on every change to the integration, its requests or their "
                "rows; each process checks it before using its cached copy of a request's "
                "configuration.",
                verbose_name="configuration version",
            ),
        ),
    ]
