"""Reads of governance: policies, agent logs and metrics (from hourly rollups, so they stay fast)."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Case, Count, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate
from django.http import Http404

from billing import usage
from billing.models import AuditEntry
from governance import policies, sql
from governance.choices import CHARGED_OUTCOMES, Outcome
from governance.models import Agent, Decision, DecisionRollup, Tool
from governance.services import OPERATOR_AGENT
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


def agent_metrics(account_id: int, agent_id: str, period: str, now: datetime) -> dict[str, Any]:
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


CALLED_TOOLS_MAX = 1000  # names read by called_tools; an account calling more tools is matched in place


def called_tools(account_id: int) -> list[str] | None:
    """Every tool name the account's decisions name, in order (one query): each decision counts in an hourly rollup
    of its tool, and the rollups' (account, tool, outcome) index is read from one name to the next (a loose index
    scan: one index probe per name, not a read of every rollup). None when there are more than
    ``CALLED_TOOLS_MAX`` names (callers then match tools in place)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.CALLED_TOOLS, [account_id, account_id, CALLED_TOOLS_MAX + 1])
        names = [name for (name,) in cursor.fetchall()]
    return None if len(names) > CALLED_TOOLS_MAX else names


# --- the account's event feed and daily metrics (GET /v1/events, GET /v1/metrics) --------------------------------

# /v1/metrics "leases" → the per-day usage counters they come from (idempotency.services counts them).
LEASE_COUNTERS = {
    "acquired": "lease_acquired",
    "polling": "polling_ai",
    "completed": "lease_completed",
    "failed": "lease_failed",
}
FEED_MAX_WINDOW = 5000  # offset + limit: a feed, not an export (the decision log and the audit log page further)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decision_item(d: Decision) -> dict[str, Any]:
    return {
        "kind": "decision",
        "event_id": None,
        "run_id": d.run_id or None,
        "ts": int(d.ts.timestamp()),
        "at": _iso(d.ts),
        "type": "decision",
        "status": d.outcome,
        "tool": d.tool,
        "agent_id": d.agent.agent_id,
        "message": d.policy_reason,
        "decision_id": d.pk,
        "data": {
            "allowed": d.allowed,
            "spend_usd": float(d.spend_usd),
            "risk_level": d.risk_level or None,
            "policy_version": d.policy_version,
        },
    }


def _audit_item(a: AuditEntry) -> dict[str, Any]:
    return {
        "kind": "audit",
        "event_id": None,
        "run_id": None,
        "ts": int(a.created_at.timestamp()),
        "at": _iso(a.created_at),
        "type": a.action,
        "status": None,
        "tool": None,
        "agent_id": a.object_id if a.object_type == "agent" else None,
        "actor": a.actor_label,
        "message": (a.data or {}).get("reason") or None,
        "data": a.data,
    }


def account_feed(account_id: int, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Recent events of an account, newest first: run events, decisions, and governance changes (kill switch,
    policies, tools). Each source is read newest-first through its (account, time) index, at most
    ``offset + limit`` rows each, and merged; the total comes from counts (decisions from their rollups)."""
    window = offset + limit
    run_events = [
        (e.ts, e.pk, {**events.as_json(e), "kind": "run_event"})  # a client's extra "kind" never wins
        for e in RunEvent.objects.filter(account_id=account_id).order_by("-ts", "-id")[:window]
    ]
    decisions = [
        (d.ts, d.pk, _decision_item(d))
        for d in Decision.objects.filter(account_id=account_id).select_related("agent").order_by("-ts", "-id")[:window]
    ]
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
    rows = (
        DecisionRollup.objects.filter(account_id=account_id, hour__gte=start, hour__lt=end)
        .annotate(day=TruncDate("hour", tzinfo=UTC))
        .values("day", "outcome")
        .annotate(n=Sum("count"), usd=Sum("spend_usd"))
    )
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
        result.append(
            {
                "day": day.isoformat(),
                "check_locks": {"locked": counts.get(f"make:{dd}", 0), "duplicate": counts.get(f"dup:{dd}", 0)},
                "leases": {name: counts.get(f"{field}:{dd}", 0) for name, field in LEASE_COUNTERS.items()},
                "decisions": {**outcomes, "total": sum(outcomes.values())},
                "ai_usage": counts.get(f"ai:{dd}", 0),
                "spend_usd": float(spent.get(day, Decimal(0))),
            }
        )
        day += timedelta(days=1)
    return result


# --- state you can't miss: caps and failing tools (the overview, the agent page, the Agents and Tools tables) -----

NEAR_CAP = Decimal("0.8")  # "near" a cap from 80 % of it
FAILING_MIN_CALLS = 4  # a tool is "failing" from this many dispatched calls in the last hour…
FAILING_SHARE = Decimal("0.5")  # …of which at least this share failed


def listed_agents(account_id: int) -> QuerySet[Agent]:
    """The account's agents as the console lists them: without the built-in operator agent that the Tools page's
    "Send test call" records its decisions under (governance.services.tool_test_call) — an operator is not an agent.
    Its decisions stay in the decision log (and its verification); only the agent lists leave it out."""
    return Agent.objects.filter(account_id=account_id).exclude(agent_id=OPERATOR_AGENT)


@dataclass(frozen=True)
class CapState:
    """Where an agent stands against its policy's caps now: spend today (UTC day, as the governed call counts it),
    charged actions in the last hour (a rolling hour, as its counter is), and calls today per capped tool.

    ``level``: "over" when a cap is reached (the next charged call is blocked: spend ≥ its cap, actions or a tool's
    calls = theirs), "near" from 80 %, "ok" below, None when the policy sets no cap at all."""

    spent_today: Decimal
    spend_cap: Decimal | None
    actions_hour: int
    hourly_cap: int | None
    spend_pct: int | None  # percentages are whole numbers, not capped at 100 ("203 %")
    actions_pct: int | None
    tool_calls: dict[str, tuple[int, int]] = field(default_factory=dict)  # capped tool → (calls today, cap)
    level: str | None = None

    @property
    def tool_pct(self) -> dict[str, int]:
        return {tool: _pct(calls, cap) for tool, (calls, cap) in self.tool_calls.items()}

    @property
    def worst_tool(self) -> tuple[str, int, int] | None:
        """The capped tool nearest its cap: (tool, calls today, cap)."""
        if not self.tool_calls:
            return None
        tool, (calls, cap) = max(self.tool_calls.items(), key=lambda item: (_ratio(*item[1]), item[0]))
        return tool, calls, cap


def _ratio(used: Decimal | int, cap: Decimal | int) -> Decimal:
    if not cap:  # a cap of 0 allows nothing: reached at once
        return Decimal(1)
    return Decimal(used) / Decimal(cap)


def _pct(used: Decimal | int, cap: Decimal | int) -> int:
    return int(_ratio(used, cap) * 100)


def _level(ratios: list[Decimal]) -> str | None:
    if not ratios:
        return None
    worst = max(ratios)
    return "over" if worst >= 1 else "near" if worst >= NEAR_CAP else "ok"


def cap_states(account_id: int, agents: list[Agent], now: datetime) -> dict[int, CapState]:
    """CapState per agent pk, in two queries whatever the number of agents: today's hourly rollups (spend and
    per-tool calls, charged outcomes) and the last hour's charged decisions counted per agent through the
    (account, agent, -ts) index. Pass a page of agents (or the capped ones), not an unbounded list."""
    if not agents:
        return {}
    ids = [a.pk for a in agents]
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    spend: dict[int, Decimal] = {}
    calls: dict[int, Counter[str]] = {}
    today = (
        DecisionRollup.objects.filter(
            account_id=account_id, agent_id__in=ids, hour__gte=day_start, outcome__in=CHARGED_OUTCOMES
        )
        .values_list("agent_id", "tool")
        .annotate(n=Sum("count"), usd=Sum("spend_usd"))
    )
    for agent_pk, tool, n, usd in today:
        spend[agent_pk] = spend.get(agent_pk, Decimal(0)) + (usd or Decimal(0))
        calls.setdefault(agent_pk, Counter())[policies.counter_name(tool)] += n or 0
    hour = dict(
        Decision.objects.filter(
            account_id=account_id,
            agent_id__in=ids,
            ts__gt=now - timedelta(hours=1),
            ts__lte=now,
            outcome__in=CHARGED_OUTCOMES,
        )
        .values_list("agent_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    states = {}
    for agent in agents:
        policy = agent.policy or {}
        raw_cap = policy.get("max_spend_usd_per_day")
        spend_cap = Decimal(str(raw_cap)) if raw_cap is not None else None
        hourly_cap = policy.get("max_actions_per_hour")
        spent = spend.get(agent.pk, Decimal(0))
        actions = hour.get(agent.pk, 0)
        made = calls.get(agent.pk, Counter())
        tool_calls = {
            tool: (made[policies.counter_name(tool)], cap)
            for tool, cap in sorted((policy.get("max_calls_per_tool") or {}).items())
        }
        ratios = [_ratio(used, cap) for used, cap in tool_calls.values()]
        if spend_cap is not None:
            ratios.append(_ratio(spent, spend_cap))
        if hourly_cap is not None:
            ratios.append(_ratio(actions, hourly_cap))
        states[agent.pk] = CapState(
            spent_today=spent,
            spend_cap=spend_cap,
            actions_hour=actions,
            hourly_cap=hourly_cap,
            spend_pct=_pct(spent, spend_cap) if spend_cap is not None else None,
            actions_pct=_pct(actions, hourly_cap) if hourly_cap is not None else None,
            tool_calls=tool_calls,
            level=_level(ratios),
        )
    return states


@dataclass(frozen=True)
class ToolHealth:
    """A tool's dispatched calls in the last hour (executed or failed; blocked and deduplicated calls never reached
    it): flagged as failing from 4 calls when at least half failed."""

    failed: int
    total: int

    @property
    def share(self) -> Decimal:
        return Decimal(self.failed) / Decimal(self.total) if self.total else Decimal(0)

    @property
    def pct(self) -> int:
        return int(self.share * 100)

    @property
    def flagged(self) -> bool:
        return self.total >= FAILING_MIN_CALLS and self.share >= FAILING_SHARE


def tool_health(account_id: int, now: datetime) -> dict[str, ToolHealth]:
    """ToolHealth of every tool dispatched in the last hour, by tool name as the calls named it; one query, an
    index range over the account's last hour of decisions."""
    rows = (
        Decision.objects.filter(
            account_id=account_id,
            ts__gt=now - timedelta(hours=1),
            ts__lte=now,
            outcome__in=(Outcome.EXECUTED, Outcome.FAILED),
        )
        .values_list("tool", "outcome")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts: dict[str, Counter[str]] = {}
    for tool, outcome, n in rows:
        counts.setdefault(tool, Counter())[outcome] += n
    return {
        tool: ToolHealth(failed=c[Outcome.FAILED], total=c[Outcome.FAILED] + c[Outcome.EXECUTED])
        for tool, c in counts.items()
    }


def failing_tools(account_id: int, now: datetime) -> dict[str, ToolHealth]:
    """The tools failing now: ≥ 4 dispatched calls in the last hour, ≥ 50 % of them failed (worst first)."""
    flagged = [(tool, h) for tool, h in tool_health(account_id, now).items() if h.flagged]
    return dict(sorted(flagged, key=lambda item: (-item[1].share, -item[1].total, item[0])))
