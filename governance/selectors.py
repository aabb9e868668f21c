"""Reads of governance: policies, agent logs and metrics (from hourly rollups, so they stay fast)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum

from governance.choices import CHARGED_OUTCOMES, Outcome
from governance.models import Agent, Decision, DecisionRollup

PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


def agent_for_account(account_id: int, agent_id: str) -> Agent | None:
    return Agent.objects.filter(account_id=account_id, agent_id=agent_id).first()


def governed_agents(account_id: int) -> QuerySet[Agent]:
    return Agent.objects.filter(account_id=account_id, policy_version__isnull=False).order_by("agent_id", "id")


def agent_logs(account_id: int, agent_id: str, *, limit: int, offset: int) -> list[Decision]:
    return list(
        Decision.objects.filter(account_id=account_id, agent__agent_id=agent_id).order_by("-ts", "-id")[
            offset : offset + limit
        ]
    )


def agent_metrics(account_id: int, agent_id: str, period: str, now: datetime) -> dict:
    """Totals over the last hour / 24 hours / 7 days. Whole hours come from the rollups; the partial hour at the
    start of the window from the decisions themselves (at most an hour of one agent's rows)."""
    start = now - PERIODS[period]
    first_whole_hour = start.replace(minute=0, second=0, microsecond=0)
    if first_whole_hour < start:
        first_whole_hour += timedelta(hours=1)
    counts: Counter[tuple[str, str]] = Counter()
    spend = Decimal(0)
    rollups = (
        DecisionRollup.objects.filter(account_id=account_id, agent__agent_id=agent_id, hour__gte=first_whole_hour)
        .values("tool", "outcome")
        .annotate(n=Sum("count"), usd=Sum("spend_usd"))
    )
    edge = (
        Decision.objects.filter(account_id=account_id, agent__agent_id=agent_id, ts__gte=start, ts__lt=first_whole_hour)
        .values("tool", "outcome")
        .annotate(n=Count("id"), usd=Sum("spend_usd"))
    )
    for row in [*rollups, *edge]:
        counts[(row["tool"], row["outcome"])] += row["n"]
        if row["outcome"] in CHARGED_OUTCOMES:
            spend += row["usd"] or 0
    by_tool: Counter[str] = Counter()
    for (tool, _), n in counts.items():
        by_tool[tool] += n
    return {
        "agent_id": agent_id,
        "period": period,
        "total_actions": sum(counts.values()),
        "blocked_actions": sum(n for (_, outcome), n in counts.items() if outcome == Outcome.BLOCKED),
        "total_spend_usd": float(spend),
        "top_tools": [
            {"tool": tool, "count": n} for tool, n in sorted(by_tool.items(), key=lambda t: (-t[1], t[0]))[:10]
        ],
        "from": start.isoformat(),
        "to": now.isoformat(),
    }
