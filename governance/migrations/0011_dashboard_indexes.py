"""Indexes for the operator console at a million decisions (docs/benchmarks.md, "2026-12-06: the operator console at
1,000,000 decisions"): the decision log filtered by reason reads (account, policy_reason, -ts), partial (not the
decisions within budget, most of them, which the time index finds at once); the tools an account called are read from
the hourly rollups' (account, tool, outcome) index, one probe per name (governance.selectors.called_tools), and so
are the decision log's totals by tool."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0011_audit_chain"),
        ("governance", "0010_decision_explain"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="decision",
            index=models.Index(
                fields=["account", "policy_reason", "-ts"],
                name="governance_decision_reason_ts",
                condition=~models.Q(policy_reason="within_budget"),
            ),
        ),
        migrations.AddIndex(
            model_name="decisionrollup",
            index=models.Index(fields=["account", "tool", "outcome"], name="governance_rollup_account_tool"),
        ),
    ]
