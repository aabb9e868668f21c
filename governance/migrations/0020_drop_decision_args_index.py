"""The decision log's ``(agent, args_hash)`` index goes: a random hash puts each new row's entry anywhere in a large
index (most of the table's write growth with history: docs/benchmarks.md), and every lookup it served is answered
by ``governance_decision_agent_ts`` within a time range. Dropped concurrently on PostgreSQL: no lock a large table
would wait on."""

from django.db import migrations

from onceonly_site.migration_ops import RemoveIndexConcurrently


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("governance", "0019_alerts_and_run_caps"),
    ]

    operations = [
        RemoveIndexConcurrently(model_name="decision", name="governance_decision_args"),
    ]
