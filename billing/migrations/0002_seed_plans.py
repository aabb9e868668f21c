"""Seed the plan catalogue with the numbers of design §7 (product/sdk-readme.md). Rows stay editable."""

from decimal import Decimal

from django.db import migrations

HOUR, DAY = 3600, 86400

PLANS = [
    # code, name, order, price, make/month, ai/month, default ttl, max ttl, tools, governance, allow-list, kill
    # switch, rate limit per second, burst
    ("free", "Free", 0, "0", 1_000, 3_000, 60, HOUR, 0, False, False, False, 5, 20),
    ("starter", "Starter", 1, "29", 20_000, 100_000, HOUR, DAY, 0, False, False, False, 20, 60),
    ("pro", "Pro", 2, "149", 200_000, 1_000_000, 6 * HOUR, 7 * DAY, 10, True, False, False, 100, 300),
    ("agency", "Agency", 3, "799", 2_000_000, 10_000_000, DAY, 30 * DAY, 500, True, True, True, 500, 1000),
]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for code, name, order, price, make, ai, ttl, max_ttl, tools, gov, allow, kill, rps, burst in PLANS:
        Plan.objects.update_or_create(
            code=code,
            defaults=dict(
                name=name, sort_order=order, price_usd_month=Decimal(price), make_monthly_limit=make,
                ai_monthly_limit=ai, default_ttl_seconds=ttl, max_ttl_seconds=max_ttl, tools_limit=tools,
                has_governance=gov, has_allowed_tools=allow, has_kill_switch=kill,
                rate_limit_per_second=rps, rate_limit_burst=burst,
            ),
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
