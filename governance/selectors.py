"""Reads of governance: policies, agent logs and metrics (from hourly rollups, so they stay fast)."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Case, Count, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate
from django.http import Http404

from billing import usage
from billing.models import AuditEntry
from governance.choices import CHARGED_OUTCOMES, Outcome
from governance.models import Agent, Decision, DecisionRollup, Tool
from idempotency import events
from idempotency.models import RunEvent
from onceonly_site.identifiers import normalise_tool

PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


def agent_for_account(account_id: int, agent_id: str) -> Agent | None:
    return Agent.objects.filter(account_id=account_id, agent_id=agent_id).first()


def get_agent_for_account(account_id: int, pk: int) -> Agent:
    """The agent whose row is ``pk`` in that account; another account's is a 404, like a missing one. Dashboard URLs
    name agents by row, not by agent id (governance/urls.py says why)."""
    agent = Agent.objects.filter(account_id=account_id, pk=pk).first()
    if agent is None:
        raise Http404("No such agent in this account.")
    return agent


def tool_for_account(account_id: int, scope_id: str, name: str) -> Tool | None:
    """The tool of that scope that ``name`` names, compared in normalised form as a governed call compares it
    (`SEND_EMAIL` finds `send_email`); among the legacy twins of migration 0009, the exact name, else the oldest."""
    return (
        Tool.objects.select_related("account")
        .filter(account_id=account_id, scope_id=scope_id, name_key=normalise_tool(name))
        .order_by(Case(When(name=name, then=Value(0)), default=Value(1)), "legacy_twin")
        .first()
    )


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


# --- the account's event feed and daily metrics (GET /v1/events, GET /v1/metrics) --------------------------------

# /v1/metrics "leases" → the per-day usage counters they come from (idempotency.services counts them).
LEASE_COUNTERS = {"acquired": "lease_acquired", "polling": "polling_ai", "completed": "lease_completed",
                  "failed": "lease_failed"}  # fmt: skip
FEED_MAX_WINDOW = 5000  # offset + limit: a feed, not an export (the decision log and the audit log page further)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decision_item(d: Decision) -> dict[str, Any]:
    return {"kind": "decision", "event_id": None, "run_id": d.run_id or None, "ts": int(d.ts.timestamp()),
            "at": _iso(d.ts), "type": "decision", "status": d.outcome, "tool": d.tool, "agent_id": d.agent.agent_id,
            "message": d.policy_reason, "decision_id": d.pk,
            "data": {"allowed": d.allowed, "spend_usd": float(d.spend_usd), "risk_level": d.risk_level or None,
                     "policy_version": d.policy_version}}  # fmt: skip


def _audit_item(a: AuditEntry) -> dict[str, Any]:
    return {"kind": "audit", "event_id": None, "run_id": None, "ts": int(a.created_at.timestamp()),
            "at": _iso(a.created_at), "type": a.action, "status": None, "tool": None,
            "agent_id": a.object_id if a.object_type == "agent" else None, "actor": a.actor_label,
            "message": (a.data or {}).get("reason") or None, "data": a.data}  # fmt: skip


def account_feed(account_id: int, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Recent events of an account, newest first: run events, decisions, and governance changes (kill switch,
    policies, tools). Each source is read newest-first through its (account, time) index, at most
    ``offset + limit`` rows each, and merged; the total comes from counts (decisions from their rollups)."""
    window = offset + limit
    run_events = [(e.ts, e.pk, {**events.as_json(e), "kind": "run_event"})  # a client's extra "kind" never wins
                  for e in RunEvent.objects.filter(account_id=account_id).order_by("-ts", "-id")[:window]]  # fmt: skip
    decisions = [(d.ts, d.pk, _decision_item(d)) for d in Decision.objects.filter(account_id=account_id)
                 .select_related("agent").order_by("-ts", "-id")[:window]]  # fmt: skip
    audits = AuditEntry.objects.filter(account_id=account_id, action__startswith="governance.")
    changes = [(a.created_at, a.pk, _audit_item(a)) for a in audits.order_by("-created_at", "-id")[:window]]
    merged = heapq.merge(run_events, decisions, changes, key=lambda item: (item[0], item[1]), reverse=True)
    page = [item for _, _, item in itertools.islice(merged, offset, window)]
    decided = DecisionRollup.objects.filter(account_id=account_id).aggregate(n=Sum("count"))["n"] or 0
    total = RunEvent.objects.filter(account_id=account_id).count() + decided + audits.count()
    return page, total


def daily_metrics(account_id: int, first: date, last: date) -> list[dict[str, Any]]:
    """Per UTC day from ``first`` to ``last`` (inclusive): check-locks, leases, decisions by outcome and spend —
    from the usage counters (per-day fields) and the hourly decision rollups; no scan of the logs."""
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    decided: dict[date, dict[str, int]] = {}
    spent: dict[date, Decimal] = {}
    rows = (DecisionRollup.objects.filter(account_id=account_id, hour__gte=start, hour__lt=end)
            .annotate(day=TruncDate("hour", tzinfo=UTC)).values("day", "outcome")
            .annotate(n=Sum("count"), usd=Sum("spend_usd")))  # fmt: skip
    for row in rows:
        decided.setdefault(row["day"], {})[row["outcome"]] = row["n"]
        if row["outcome"] in CHARGED_OUTCOMES:
            spent[row["day"]] = spent.get(row["day"], Decimal(0)) + (row["usd"] or Decimal(0))
    months: dict[str, dict[str, int]] = {}
    result = []
    day = first
    while day <= last:
        month = day.strftime("%Y-%m")
        if month not in months:
            months[month] = usage.day_fields(account_id, month)
        counts = months[month]
        dd = day.strftime("%d")
        outcomes = {outcome: decided.get(day, {}).get(outcome, 0) for outcome in Outcome.values}
        result.append({
            "day": day.isoformat(),
            "check_locks": {"locked": counts.get(f"make:{dd}", 0), "duplicate": counts.get(f"dup:{dd}", 0)},
            "leases": {name: counts.get(f"{field}:{dd}", 0) for name, field in LEASE_COUNTERS.items()},
            "decisions": {**outcomes, "total": sum(outcomes.values())},
            "ai_usage": counts.get(f"ai:{dd}", 0),
            "spend_usd": float(spent.get(day, Decimal(0))),
        })  # fmt: skip
        day += timedelta(days=1)
    return result
