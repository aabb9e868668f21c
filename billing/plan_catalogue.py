"""The plan catalogue (docs/architecture.md §7.1): the rows seeded by migration 0002.

Used by that migration (with the historical model) and by the test suite, whose transactional tests flush the
tables and re-seed. Once seeded, plans are database rows an operator may edit; this list is only the start.
"""

from decimal import Decimal

HOUR, DAY = 3600, 86400

FIELDS = (
    "code",
    "name",
    "sort_order",
    "price_usd_month",
    "make_monthly_limit",
    "ai_monthly_limit",
    "default_ttl_seconds",
    "max_ttl_seconds",
    "tools_limit",
    "has_governance",
    "has_allowed_tools",
    "has_kill_switch",
    "rate_limit_per_second",
    "rate_limit_burst",
)

PLANS = [
    # code, name, order, $/month, check-locks/month, ai/month, default ttl, max ttl, tools, policies+logs+metrics,
    # allowed_tools, kill switch, rate limit per second per key, burst
    ("free", "Free", 0, Decimal("0"), 1_000, 3_000, 60, HOUR, 0, False, False, False, 5, 20),
    ("starter", "Starter", 1, Decimal("29"), 20_000, 100_000, HOUR, DAY, 0, False, False, False, 20, 60),
    ("pro", "Pro", 2, Decimal("149"), 200_000, 1_000_000, 6 * HOUR, 7 * DAY, 10, True, False, False, 100, 300),
    ("agency", "Agency", 3, Decimal("799"), 2_000_000, 10_000_000, DAY, 30 * DAY, 500, True, True, True, 500, 1000),
]


def seed(plan_model) -> None:
    # Only the fields the given model has: migration 0002's historical Plan must keep working when later
    # migrations add columns (their own data migrations fill those).
    known = {f.name for f in plan_model._meta.get_fields()}
    for row in PLANS:
        values = {name: value for name, value in zip(FIELDS, row, strict=True) if name in known}
        plan_model.objects.update_or_create(code=values.pop("code"), defaults=values)
