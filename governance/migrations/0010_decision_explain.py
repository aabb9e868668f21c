"""Decision.explain: what the rule saw when it decided (docs/architecture.md §3.9, docs/api.md). Nullable: decisions
recorded before it have none, and their explanation is written from their other fields (governance/explain.py).
DispatchIntent carries it too, so a dispatch the sweeper records (outcome_unknown) keeps what its call was decided on.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0009_tool_name_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="decision",
            name="explain",
            field=models.JSONField(
                blank=True, null=True, help_text="What the rule saw at decision time (limit, count before, policy)."
            ),
        ),
        migrations.AddField(
            model_name="dispatchintent",
            name="explain",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
