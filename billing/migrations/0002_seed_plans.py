"""Seed the plan catalogue (billing/plan_catalogue.py, docs/architecture.md §7.1). Rows stay editable afterwards."""

from django.db import migrations

from billing import plan_catalogue


def seed(apps, schema_editor):
    plan_catalogue.seed(apps.get_model("billing", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
