"""Drop single-column indexes on foreign keys that a composite index already leads with (one index write fewer
per row on the hot path). Only the indexes go: re-creating the foreign-key constraints, as a plain AlterField
would, re-validates every row under an exclusive lock — minutes on a large decision log."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0007_stripe_billing'),
        ('governance', '0004_decision_dispatch'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='decision',
                    name='account',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='decisions', to='billing.account'),
                ),
                migrations.AlterField(
                    model_name='decision',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='decisions', to='governance.agent'),
                ),
                migrations.AlterField(
                    model_name='decisionrollup',
                    name='account',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='billing.account'),
                ),
                migrations.AlterField(
                    model_name='decisionrollup',
                    name='agent',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='rollups', to='governance.agent'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "DROP INDEX IF EXISTS governance_decision_account_id_8754361d",
                    reverse_sql="CREATE INDEX IF NOT EXISTS governance_decision_account_id_8754361d ON governance_decision (account_id)",
                ),
                        migrations.RunSQL(
                    "DROP INDEX IF EXISTS governance_decision_agent_id_9d803f53",
                    reverse_sql="CREATE INDEX IF NOT EXISTS governance_decision_agent_id_9d803f53 ON governance_decision (agent_id)",
                ),
                        migrations.RunSQL(
                    "DROP INDEX IF EXISTS governance_decisionrollup_account_id_352174ba",
                    reverse_sql="CREATE INDEX IF NOT EXISTS governance_decisionrollup_account_id_352174ba ON governance_decisionrollup (account_id)",
                ),
                        migrations.RunSQL(
                    "DROP INDEX IF EXISTS governance_decisionrollup_agent_id_b5168e2a",
                    reverse_sql="CREATE INDEX IF NOT EXISTS governance_decisionrollup_agent_id_b5168e2a ON governance_decisionrollup (agent_id)",
                ),
            ],
        ),
    ]
