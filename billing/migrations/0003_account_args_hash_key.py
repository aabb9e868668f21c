import secrets

from django.db import migrations, models

import billing.models


def distinct_keys(apps, schema_editor):
    # AddField evaluates a callable default once for all existing rows: give every account its own key.
    Account = apps.get_model("billing", "Account")
    for account in Account.objects.only("pk"):
        Account.objects.filter(pk=account.pk).update(args_hash_key=secrets.token_hex(32))


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_seed_plans")]

    operations = [
        migrations.AddField(
            model_name="account",
            name="args_hash_key",
            field=models.CharField(default=billing.models.new_args_hash_key, editable=False, max_length=64),
        ),
        migrations.RunPython(distinct_keys, migrations.RunPython.noop),
    ]
