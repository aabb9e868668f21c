"""Drop single-column indexes on foreign keys that a composite index already leads with (one index write fewer
per row on the hot path). Only the indexes go: re-creating the foreign-key constraints, as a plain AlterField
would, re-validates every row under an exclusive lock — minutes on a large decision log."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0007_stripe_billing'),
        ('idempotency', '0002_runs_and_events'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='lockrecord',
                    name='account',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='lock_records', to='billing.account'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "DROP INDEX IF EXISTS idempotency_lockrecord_account_id_59580606",
                    reverse_sql="CREATE INDEX IF NOT EXISTS idempotency_lockrecord_account_id_59580606 ON idempotency_lockrecord (account_id)",
                ),
            ],
        ),
    ]
