"""The operational overview on "/" (governance.panels.operations_panel): decisions by outcome over a time range, top
block reasons, spend against the daily caps, failing tools, agents over or near a cap, failing runs, and the latest
blocked decision of each agent.

Every read is bounded whatever the size of the decision log: series come from the hourly rollups (the last hour, in
five-minute buckets, from that hour's decisions; the closed hours of the longer ranges are cached for a few
minutes), block reasons from the latest ``REASON_SAMPLE`` decisions through the (account, -ts) index, and the recent
blocked decisions from the rollups (which agents, which hour: one index read per agent) and then one index read per
agent bounded to that hour. The query count does not depend on the data (tests pin it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Case, Count, DateTimeField, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import TruncMinute
from django.urls import reverse
from django.utils.http import urlencode

from governance import alert_selectors, explain, selectors, sql
from governance.choices import CHARGED_OUTCOMES, Outcome
from governance.models import Agent, Decision, DecisionRollup
from governance.services import OPERATOR_AGENT
from idempotency.choices import RunStatus
from idempotency.models import Run
from onceonly_site.formatting import num, usd

HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REASON_SAMPLE = 5000  # block reasons are counted among this many latest decisions of the range
SHOWN = 10  # rows per list
CHARTED = 6  # spend-vs-cap charts (the capped agents nearest or over their cap)
MAX_AGENTS = 500  # agents whose caps are read (capped or disabled ones, by agent id)
RUNS_COUNTED = 100  # failed runs are counted up to this ("100+")
SERIES_CACHE_SECONDS = 300  # closed hours of the outcome series (_rollup_series)


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    span: timedelta
    step: timedelta
    fmt: str  # bucket label (UTC)
    per: str  # one bucket, in words ("5 min")

    @property
    def buckets(self) -> int:
        return self.span // self.step


RANGES = {
    r.key: r
    for r in (
        Range("1h", "1 h", HOUR, timedelta(minutes=5), "%H:%M", "5 min"),
        Range("24h", "24 h", timedelta(days=1), HOUR, "%H:00", "hour"),
        Range("7d", "7 d", timedelta(days=7), timedelta(hours=6), "%a %d %H:00", "6 h"),
        Range("30d", "30 d", timedelta(days=30), timedelta(days=1), "%b %d", "day"),
    )
}
DEFAULT_RANGE = "24h"


def parse_range(value: str | None) -> Range:
    """``?range=`` (1h, 24h, 7d, 30d); anything else is the default, 24 h."""
    return RANGES.get(value or "", RANGES[DEFAULT_RANGE])


def _floor(ts: datetime, step: timedelta) -> datetime:
    return EPOCH + ((ts - EPOCH) // step) * step


def _decisions_url(**params: str) -> str:
    return f"{reverse('governance:decisions')}?{urlencode({k: v for k, v in params.items() if v})}"


def _since_param(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


# --- words for a cap state (the overview's agent list and the agent page's bars) ----------------------------------


def _verdict(used: Decimal | int, cap: Decimal | int, name: str) -> tuple[str, str]:
    """(level, words) of one cap: over (beyond it), at (reached: the next charged call is blocked), near (≥ 80 %)."""
    if used > cap:
        return "over", f"over the {name}"
    if used == cap:
        return "over", f"at the {name}: the next call is blocked"
    if Decimal(used) >= selectors.NEAR_CAP * Decimal(cap):
        return "near", f"near the {name}"
    return "ok", f"within the {name}"


def cap_lines(state: selectors.CapState) -> list[dict[str, Any]]:
    """One line per cap the policy sets: {kind, level, pct, text, tool}, e.g. "$20.31 of $10.00 today — over the
    daily cap"."""
    lines = []
    if state.spend_cap is not None:
        level, words = _verdict(state.spent_today, state.spend_cap, "daily cap")
        lines.append(
            {
                "kind": "spend",
                "level": level,
                "pct": state.spend_pct,
                "tool": None,
                "text": f"{usd(state.spent_today)} of {usd(state.spend_cap)} today — {words}",
            }
        )
    if state.hourly_cap is not None:
        level, words = _verdict(state.actions_hour, state.hourly_cap, "hourly cap")
        lines.append(
            {
                "kind": "actions",
                "level": level,
                "pct": state.actions_pct,
                "tool": None,
                "text": f"{num(state.actions_hour)} of {num(state.hourly_cap)} actions in the last hour — {words}",
            }
        )
    for tool, (calls, cap) in state.tool_calls.items():
        level, words = _verdict(calls, cap, f"{tool} cap")
        lines.append(
            {
                "kind": "tool",
                "level": level,
                "pct": state.tool_pct[tool],
                "tool": tool,
                "text": f"{num(calls)} of {num(cap)} {tool} calls today — {words}",
            }
        )
    return lines


# --- the panel's sections ------------------------------------------------------------------------------------------


def outcome_series(account_id: int, rng: Range, now: datetime) -> dict[str, Any]:
    """Decisions per bucket and outcome over the range (one query): labels, counts per outcome, totals, start."""
    first = _floor(now, rng.step) - (rng.buckets - 1) * rng.step
    rows: Iterable[tuple[datetime, str, int]]
    if rng.step >= HOUR:
        rows = _rollup_series(account_id, first, now)
    else:  # the last hour, from its decisions: an index range over one hour
        rows = (
            Decision.objects.filter(account_id=account_id, ts__gte=first, ts__lte=now)
            .annotate(minute=TruncMinute("ts", tzinfo=UTC))
            .values_list("minute", "outcome")
            .annotate(n=Count("id"))
            .order_by()
        )
    counts = {outcome: [0] * rng.buckets for outcome in Outcome.values}
    for at, outcome, n in rows:
        index = (at - first) // rng.step
        if 0 <= index < rng.buckets and outcome in counts:
            counts[outcome][index] += n or 0
    labels = [(first + i * rng.step).strftime(rng.fmt) for i in range(rng.buckets)]
    totals = {outcome: sum(values) for outcome, values in counts.items()}
    return {"labels": labels, "counts": counts, "totals": totals, "total": sum(totals.values()), "start": first}


def _rollup_series(account_id: int, first: datetime, now: datetime) -> list[tuple[datetime, str, int]]:
    """(hour, outcome, decisions) from ``first`` to now, in one query. The hours before the current one are
    closed (their rollups are complete), so they are kept in the cache for ``SERIES_CACHE_SECONDS`` under a key
    naming the current hour: the next requests of that hour read only its own rollups (a few hundred rows) instead
    of a month of them (hundreds of thousands at a million decisions a month). A decision recorded late into a
    closed hour (the sweeper's outcome_unknown) shows once the entry expires."""
    current = now.replace(minute=0, second=0, microsecond=0)
    key = f"overview:series:{account_id}:{first.timestamp():.0f}:{current.timestamp():.0f}"
    closed = cache.get(key)
    since = first if closed is None else current
    rows = list(
        DecisionRollup.objects.filter(account_id=account_id, hour__gte=since, hour__lte=now)
        .values_list("hour", "outcome")
        .annotate(n=Sum("count"))
        .order_by()
    )
    if closed is None:
        closed = [row for row in rows if row[0] < current]
        cache.set(key, closed, SERIES_CACHE_SECONDS)
        return rows
    return [*closed, *rows]


def block_reasons(account_id: int, start: datetime, decided: int) -> dict[str, Any]:
    """The most frequent reasons of blocked decisions among the range's latest ``REASON_SAMPLE`` decisions (one
    query: the sample is read through the (account, -ts) index, newest first, and stops there; its rows are
    counted as read, not looked up again one by one by id)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.BLOCK_REASONS, [account_id, start, REASON_SAMPLE, Outcome.BLOCKED.value, SHOWN])
        rows = cursor.fetchall()
    since = _since_param(start)
    return {
        "rows": [
            {
                "reason": reason,
                "count": n,
                "url": _decisions_url(outcome=Outcome.BLOCKED, reason="=" + reason, since=since),
            }
            for reason, n in rows
        ],
        "sampled": decided > REASON_SAMPLE,
        "sample": REASON_SAMPLE,
    }


def _spend_charts(
    account_id: int, capped: list[tuple[Agent, selectors.CapState, Decimal]], now: datetime
) -> dict[str, Any]:
    """Cumulative spend today (UTC) per hour of the capped agents (each with its state and its daily cap) that spent
    today, nearest their cap first, against the cap (one query)."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hours = int((now - day_start) // HOUR) + 1
    spending = [entry for entry in capped if entry[1].spent_today > 0]
    chosen = sorted(spending, key=lambda entry: (-(entry[1].spend_pct or 0), entry[0].agent_id))[:CHARTED]
    per_hour: dict[int, list[Decimal]] = {agent.pk: [Decimal(0)] * hours for agent, _, _ in chosen}
    if chosen:
        rows = (
            DecisionRollup.objects.filter(
                account_id=account_id, agent_id__in=list(per_hour), hour__gte=day_start, outcome__in=CHARGED_OUTCOMES
            )
            .values_list("agent_id", "hour")
            .annotate(usd=Sum("spend_usd"))
            .order_by()
        )
        for agent_pk, hour, spent in rows:
            index = int((hour - day_start) // HOUR)
            if 0 <= index < hours:
                per_hour[agent_pk][index] += spent or Decimal(0)
    charts = []
    for agent, state, cap in chosen:
        running, cumulative = Decimal(0), []
        for spent in per_hour[agent.pk]:
            running += spent
            cumulative.append(float(running))
        line = cap_lines(state)[0]
        charts.append(
            {
                "agent": agent.agent_id,
                "pk": agent.pk,
                "cap": float(cap),
                "spend": cumulative,
                "level": line["level"],
                "text": line["text"],
                "url": reverse("governance:agent-detail", args=[agent.pk]),
            }
        )
    labels = [(day_start + i * HOUR).strftime("%H:00") for i in range(hours)]
    return {"labels": labels, "charts": charts}


def _attention(account_id: int, now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Agents over or near a cap, or disabled (worst first), and the spend-vs-cap charts (four queries)."""
    agents = list(
        selectors.listed_agents(account_id)
        .filter(Q(policy_version__isnull=False) | Q(is_enabled=False))
        .order_by("agent_id", "id")[:MAX_AGENTS]
    )
    states = selectors.cap_states(account_id, agents, now)
    rows: list[dict[str, Any]] = []
    for agent in agents:
        state = states[agent.pk]
        lines = [line for line in cap_lines(state) if line["level"] in ("over", "near")]
        if agent.is_enabled and not lines:
            continue
        rank = 0 if not agent.is_enabled else 1 if state.level == "over" else 2
        rows.append(
            {
                "agent": agent,
                "lines": lines,
                "disabled": not agent.is_enabled,
                "level": state.level,
                "rank": rank,
                "url": _decisions_url(agent="=" + agent.agent_id),
            }
        )
    rows.sort(key=lambda row: (row["rank"], row["agent"].agent_id))
    capped = [(a, states[a.pk], cap) for a in agents if (cap := states[a.pk].spend_cap) is not None and a.is_enabled]
    return rows, _spend_charts(account_id, capped, now)


def _failing_tools(account_id: int, now: datetime) -> list[dict[str, Any]]:
    since = _since_param(now - HOUR)
    return [
        {
            "tool": tool,
            "health": health,
            "url": _decisions_url(tool="=" + tool, outcome=Outcome.FAILED, since=since),
            "all_url": _decisions_url(tool="=" + tool, since=since),
        }
        for tool, health in list(selectors.failing_tools(account_id, now).items())[:SHOWN]
    ]


def recent_blocked(account_id: int, start: datetime) -> list[dict[str, Any]]:
    """The latest blocked decision of each agent that had one in the range, newest first, at most ``SHOWN`` (two
    queries). The rollups say which agents and in which hour their latest blocked decision is; each agent's decision
    is then read through the (account, agent, -ts) index from the end of that hour, so however many calls the agent
    made since, the read covers at most that hour."""
    # Driven by the (small) agent table: each agent's latest blocked hour is one backward read of the rollups'
    # (agent, hour, …) index, not a read of every blocked rollup of the range (a month of them at 30 d).
    # The hour holding ``start`` counts too (its blocked decisions after ``start`` are in the range).
    last = (
        DecisionRollup.objects.filter(agent=OuterRef("pk"), outcome=Outcome.BLOCKED, hour__gte=_floor(start, HOUR))
        .order_by("-hour")
        .values("hour")[:1]
    )
    latest = list(
        Agent.objects.filter(account_id=account_id)
        .exclude(agent_id=OPERATOR_AGENT)
        .annotate(last=Subquery(last))
        .filter(last__isnull=False)
        .values_list("pk", "last")
        .order_by("-last", "pk")[:SHOWN]
    )
    if not latest:
        return []
    bound = Case(*[When(pk=pk, then=Value(last + HOUR)) for pk, last in latest], output_field=DateTimeField())
    newest = (
        Decision.objects.filter(
            account_id=account_id,
            agent=OuterRef("pk"),
            outcome=Outcome.BLOCKED,
            ts__gte=start,
            ts__lt=OuterRef("bound"),
        )
        .order_by("-ts", "-id")
        .values("pk")[:1]
    )
    ids = (
        Agent.objects.filter(account_id=account_id, pk__in=[pk for pk, _ in latest])
        .annotate(bound=bound)
        .annotate(blocked=Subquery(newest))
        .values("blocked")
    )
    decisions = (
        Decision.objects.filter(account_id=account_id, pk__in=ids).select_related("agent").order_by("-ts", "-id")
    )
    return [{"d": d, "why": explain.explain_text(d)} for d in decisions]


def _failed_runs(account_id: int, start: datetime) -> dict[str, Any]:
    """Failed keyed runs of the range: the latest few and a count up to ``RUNS_COUNTED`` (one query, the
    (account, status, -created_at) index)."""
    runs = list(
        Run.objects.filter(account_id=account_id, status=RunStatus.FAILED, created_at__gte=start)
        .order_by("-created_at", "-id")
        .only("run_id", "key", "task", "error_code", "created_at")[: RUNS_COUNTED + 1]
    )
    return {"rows": runs[:5], "count": min(len(runs), RUNS_COUNTED), "more": len(runs) > RUNS_COUNTED}


def operations(account_id: int, rng: Range, now: datetime) -> dict[str, Any]:
    """Everything the overview panel shows, in a fixed number of queries (twelve; tests pin it)."""
    series = outcome_series(account_id, rng, now)
    start = series["start"]
    attention, spend = _attention(account_id, now)
    since = _since_param(start)
    outcome_links = [
        {"outcome": outcome, "count": series["totals"][outcome], "url": _decisions_url(outcome=outcome, since=since)}
        for outcome in Outcome.values
    ]
    return {
        "range": rng,
        "ranges": list(RANGES.values()),
        "since": since,
        "series": series,
        # What static/js/overview_charts.js draws (the panel's data-charts attribute: no inline script).
        "charts": {
            "outcomes": {"labels": series["labels"], "counts": series["counts"], "per": rng.per},
            "spend": spend,
        },
        "outcomes": outcome_links,
        "all_url": _decisions_url(since=since),
        "reasons": block_reasons(account_id, start, series["total"]),
        "attention": attention[:SHOWN],
        "attention_more": max(0, len(attention) - SHOWN),
        "spend": spend,
        "failing": _failing_tools(account_id, now),
        "blocked": recent_blocked(account_id, start),
        "runs": _failed_runs(account_id, start),
        "alerts": alert_selectors.latest(account_id),  # the newest few, whatever the range (one query)
        "now": now,
    }
