"""The overview's "agents needing attention": disabled, or at ≥ 80 % of a spend or hourly-action cap."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.utils import timezone

from billing.models import Account
from governance.choices import CHARGED_OUTCOMES
from governance.models import Agent, Decision, DecisionRollup

NEAR = Decimal("0.8")
SHOWN = 10


def agents_needing_attention(account: Account) -> dict[str, Any] | None:
    now = timezone.now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    agents = list(Agent.objects.filter(account=account).exclude(policy=None).order_by("agent_id")[:500])
    agents += list(Agent.objects.filter(account=account, policy=None, is_enabled=False)[:SHOWN])
    if not agents:
        return None
    ids = [a.pk for a in agents]
    spend = dict(DecisionRollup.objects.filter(agent_id__in=ids, hour__gte=day_start, outcome__in=CHARGED_OUTCOMES)
                 .values_list("agent_id").annotate(s=Sum("spend_usd")))  # fmt: skip
    # account first: the (account, agent, -ts) index reads only the last hour, however long the log is.
    recent = Decision.objects.filter(account=account, agent_id__in=ids, ts__gt=now - timedelta(hours=1),
                                     outcome__in=CHARGED_OUTCOMES)  # fmt: skip
    hour = dict(recent.values_list("agent_id").annotate(n=Count("id")))
    rows = []
    for agent in agents:
        policy = agent.policy or {}
        reasons = []
        if not agent.is_enabled:
            reasons.append(f"disabled: {agent.disabled_reason or 'no reason given'}")
        cap = policy.get("max_spend_usd_per_day")
        spent = spend.get(agent.pk) or Decimal(0)
        if cap and spent >= NEAR * Decimal(str(cap)):
            reasons.append(f"spend ${spent:.2f} of ${cap:.2f} today")
        per_hour = policy.get("max_actions_per_hour")
        if per_hour and hour.get(agent.pk, 0) >= NEAR * per_hour:
            reasons.append(f"{hour.get(agent.pk, 0)} of {per_hour} actions this hour")
        if reasons:
            rows.append({"agent": agent, "reasons": reasons})
    return {"template": "governance/_attention_panel.html", "rows": rows[:SHOWN], "more": max(0, len(rows) - SHOWN)}
