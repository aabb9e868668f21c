"""Tool.name_key: the normalised name governed calls and /v1/tools/{name} look tools up by, and the constraint that
keeps one tool per normalised name and scope (docs/api.md §"Tools registry").

Databases from before the registry refused names that differ only in case may hold such pairs (`send_email` and
`Send_Email` in one scope). Failing the migration on them, or deleting one, would take an operator's tool away
during an upgrade; so each keeps its row, and the backfill numbers them (`legacy_twin`): the oldest (lowest id)
is 0, the next 1, and so on. The unique constraint includes that number, so it holds on old data as on new, where
every tool is 0 and tool_upsert refuses a second spelling.
"""

from collections import defaultdict

from django.db import migrations, models

from onceonly_site.identifiers import normalise_tool  # the very function tool_upsert fills name_key with


def fill_name_keys(apps, schema_editor):
    Tool = apps.get_model("governance", "Tool")
    seen: dict[tuple[int, str, str], int] = defaultdict(int)
    changed = []
    for tool in Tool.objects.order_by("pk").only("pk", "account_id", "scope_id", "name").iterator(chunk_size=2000):
        tool.name_key = normalise_tool(tool.name)
        group = (tool.account_id, tool.scope_id, tool.name_key)
        tool.legacy_twin = seen[group]
        seen[group] += 1
        changed.append(tool)
    Tool.objects.bulk_update(changed, ["name_key", "legacy_twin"], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0008_decision_prices"),
    ]

    operations = [
        migrations.AddField(
            model_name="tool",
            name="name_key",
            field=models.CharField(default="", editable=False, max_length=200),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="tool",
            name="legacy_twin",
            field=models.PositiveSmallIntegerField(
                default=0,
                editable=False,
                help_text="0; 1, 2… for a tool registered, before such names were refused, after another tool of its "
                "scope whose name differs only in case (migration 0009): calls that do not name it exactly reach the "
                "oldest.",
            ),
        ),
        migrations.RunPython(fill_name_keys, migrations.RunPython.noop, elidable=False),
        migrations.AddConstraint(
            model_name="tool",
            constraint=models.UniqueConstraint(
                fields=("account", "name_key", "scope_id", "legacy_twin"), name="governance_tool_unique_name_key"
            ),
        ),
    ]
