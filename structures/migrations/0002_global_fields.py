from django.db import migrations

from structures.catalogue import sync_global_fields


def load(apps, schema_editor):
    sync_global_fields(apps.get_model("structures", "Field"))


class Migration(migrations.Migration):
    dependencies = [("structures", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
