"""Decisions written straight to the database, as the governed call records them (the rows and their hourly
rollup), for tests that need many, old or failed ones without a tool endpoint or a clock to move."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import F
from django.utils import timezone

from governance.models import Agent, Decision, DecisionRollup

REASONS = {"blocked": "tool_call_limit_exceeded", "failed": "tool_error", "dedup": "idempotency_key_hit"}


def agent(account, agent_id: str, policy: dict | None = None, **fields) -> Agent:
    return Agent.objects.create(
        account=account, agent_id=agent_id, policy=policy, policy_version=1 if policy else None, **fields
    )


def decide(
    a: Agent,
    *,
    tool: str = "t",
    outcome: str = "executed",
    spend: str = "0",
    ts: datetime | None = None,
    n: int = 1,
    reason: str | None = None,
    explain: dict | None = None,
) -> list[Decision]:
    """``n`` decisions of ``a`` at ``ts`` (now by default), and their count and spend in the hourly rollup (charged
    spend is the rollup's spend of charged outcomes, as in the governed call)."""
    ts = ts or timezone.now()
    allowed = outcome in ("executed", "allowed", "dedup")
    rows = Decision.objects.bulk_create(
        Decision(
            account_id=a.account_id,
            agent=a,
            ts=ts,
            tool=tool,
            outcome=outcome,
            allowed=allowed,
            policy_reason=reason or REASONS.get(outcome, "within_budget"),
            risk_level="low",
            spend_usd=Decimal(spend),
            args_hash="x" * 64,
            explain=explain,
        )
        for _ in range(n)
    )
    hour = ts.replace(minute=0, second=0, microsecond=0)
    rollup, _ = DecisionRollup.objects.get_or_create(
        account_id=a.account_id, agent=a, hour=hour, tool=tool, outcome=outcome
    )
    DecisionRollup.objects.filter(pk=rollup.pk).update(
        count=F("count") + n, spend_usd=F("spend_usd") + Decimal(spend) * n
    )
    return rows
