"""Budget alerts (docs/governance.md §"Budget alerts"): a governed call that carries a count over one of its policy's
``alert_thresholds`` (default 50/80/95/100 % of a cap) raises an alert, once per threshold and period, delivered
through the notification channels (event ``budget_alert``) and listed in the alerts feed.

``after_call`` runs after a real call's reservation is recorded (governance/services.py, right after
``call_tidy``). The counts governed_call.lua answered are the counts *after* this call; *before* is that minus the
call's own share (one hourly action, one call of the tool, its cost, one `ai` unit). A threshold ``t`` of a cap is
crossed by this call when ``before * 100 < t * cap <= after * 100`` — pure arithmetic: a call that crosses nothing
(nearly every call) touches neither Redis nor the database. The atomic step serialises an agent's calls, so exactly
one call crosses each threshold of a counter that only grows (a day's spend, a tool's calls of the day, the month's
units); the hourly actions are a sliding window that shrinks as entries age out, so the same threshold can be
crossed again within an hour — the period of that alert is the UTC clock hour, and it fires at most once per clock
hour.

The crossing inserts an ``Alert`` whose ``once`` names the metric, the period, the threshold, the agent (and the
tool): the unique constraint (account, once) makes the first insert win between processes and threads; a second is
an IntegrityError, and nothing else happens. The alert's deliveries are written in the same transaction and woken
after the commit (channels.publish).

The projection: the burn rate is the counter's value over the time since its period started (the UTC day, the UTC
month; the hourly window's whole hour), and the time to the cap is ``(cap - value) / rate``, i.e.
``elapsed * (cap - value) / value`` — "at the current rate the cap is hit in ~2 h 10 min"; when that is after the
period ends (the counter resets), the message says so instead.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from governance import channels, policies
from governance.choices import AlertKind, Outcome
from governance.models import Agent, Alert, NotificationChannel
from onceonly_site import formatting

if TYPE_CHECKING:
    from billing.auth import PlanLimits
    from governance.services import Call, Reserved

logger = logging.getLogger(__name__)

MICRO = Decimal(1_000_000)
MIN_ELAPSED_SECONDS = 60  # a rate over less than a minute says nothing (and must not divide by ~0)


class Metric:
    """What a budget alert measures (``Alert.code``)."""

    DAILY_SPEND = "daily_spend"  # the agent's spend today against max_spend_usd_per_day
    HOURLY_ACTIONS = "hourly_actions"  # its charged actions in the last hour against max_actions_per_hour
    TOOL_CALLS = "tool_calls"  # its calls of one tool today against max_calls_per_tool
    AI_QUOTA = "ai_quota"  # the account's `ai` units this month against the plan's monthly quota
    MAKE_QUOTA = "make_quota"  # its `make` units (check-locks) this month against the plan's (``after_quota``)


METRICS = (Metric.DAILY_SPEND, Metric.HOURLY_ACTIONS, Metric.TOOL_CALLS, Metric.AI_QUOTA, Metric.MAKE_QUOTA)
QUOTAS = {"ai": Metric.AI_QUOTA, "make": Metric.MAKE_QUOTA}  # billing.usage's kinds


def crossed(before: int, after: int, cap: int, thresholds: list[int]) -> list[int]:
    """The thresholds (percent of ``cap``) that going from ``before`` to ``after`` crosses: ``before`` under the
    threshold, ``after`` at or over it. A cap of 0 or less has none (0: every call is blocked; -1: no cap)."""
    if cap <= 0 or after <= before:
        return []
    return [t for t in thresholds if before * 100 < t * cap <= after * 100]


@dataclass(frozen=True, slots=True)
class Crossing:
    """One threshold of one counter crossed by a call, with what its message and payload need."""

    metric: str
    threshold: int
    value: int  # after the call (micro-$ for spend)
    cap: int
    period: str  # "2026-12-07", "2026-12-07T15", "2026-12"
    period_start: datetime
    period_end: datetime  # when the counter resets (the hourly window: an hour from now)
    tool: str = ""  # the tool as called (tool_calls)
    counter: str = ""  # …and its day counter's name (policies.counter_name: SEND_EMAIL counts as send_email)


def after_call(call: Call, reserved: Reserved, plan: PlanLimits, outcome: str) -> None:
    """The budget alerts a recorded real call crosses (nothing, and no I/O, when it crosses none). ``outcome``: the
    call's decision — a call stopped before any attempt (blocked by the kill switch in flight) gave its reservation
    back and crosses nothing; a failed call gave its `ai` unit back (its spend, action and tool call stay)."""
    if outcome == Outcome.BLOCKED:
        return
    found = crossings(call, reserved, plan, outcome)
    if found:
        fire(call.account_id, call.agent, call.agent_id, reserved.now, found)


def after_quota(account_id: int, kind: str, used: int, limit: int, now: datetime | None = None) -> list[Alert]:
    """A monthly quota unit counted outside a governed call (a check-lock's `make`, a lease's `ai`): ``used`` is the
    month's usage after it (billing.usage.reserve, check_lock.lua answer it), ``limit`` the plan's (-1: none). The
    same arithmetic and firing as a governed call's quota; nothing, and no I/O, when it crosses no threshold."""
    ts = crossed(used - 1, used, limit, policies.ALERT_THRESHOLDS_DEFAULT) if limit > 0 else []
    if not ts:
        return []
    moment = (now or timezone.now()).astimezone(UTC)
    month = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (month + timedelta(days=32)).replace(day=1)
    found = [Crossing(QUOTAS[kind], t, used, limit, month.strftime("%Y-%m"), month, following) for t in ts]
    return fire(account_id, None, "", moment, found)


def crossings(call: Call, reserved: Reserved, plan: PlanLimits, outcome: str) -> list[Crossing]:
    """The arithmetic of ``after_call``: which thresholds this call's counts crossed, against the caps as the atomic
    step took them (``reserved.args``: -1 none, spend in micro-dollars). Periods are worked out only for a crossing."""
    args = reserved.args
    thresholds = policies.alert_thresholds(call.policy)
    spend = crossed(reserved.spent - args.cost, reserved.spent, args.max_spend, thresholds) if thresholds else []
    hourly = crossed(reserved.actions - 1, reserved.actions, args.max_actions, thresholds) if thresholds else []
    calls = crossed(reserved.calls - 1, reserved.calls, args.max_calls, thresholds) if thresholds else []
    # The account's monthly quota: the plan's, with the default thresholds (an account-wide number, not one agent's
    # policy). A failed call's unit was given back: it crossed nothing.
    quota = []
    if plan.ai_limit > 0 and outcome != Outcome.FAILED:
        quota = crossed(reserved.ai_used - 1, reserved.ai_used, plan.ai_limit, policies.ALERT_THRESHOLDS_DEFAULT)
    if not (spend or hourly or calls or quota):
        return []
    now = reserved.now.astimezone(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day_end = day_start + timedelta(days=1)
    day = day_start.strftime("%Y-%m-%d")
    month = day_start.replace(day=1)
    found = [Crossing(Metric.DAILY_SPEND, t, reserved.spent, args.max_spend, day, day_start, day_end) for t in spend]
    hour = now.strftime("%Y-%m-%dT%H")
    window, ahead = now - timedelta(hours=1), now + timedelta(hours=1)  # the sliding window: the last hour
    found += [
        Crossing(Metric.HOURLY_ACTIONS, t, reserved.actions, args.max_actions, hour, window, ahead) for t in hourly
    ]
    found += [
        Crossing(Metric.TOOL_CALLS, t, reserved.calls, args.max_calls, day, day_start, day_end, call.tool, args.tool)
        for t in calls
    ]
    following = (month + timedelta(days=32)).replace(day=1)
    found += [
        Crossing(Metric.AI_QUOTA, t, reserved.ai_used, plan.ai_limit, month.strftime("%Y-%m"), month, following)
        for t in quota
    ]
    return found


# --- firing ------------------------------------------------------------------------------------------------------


def once_key(crossing: Crossing, agent_pk: int | None) -> str:
    """What makes an alert fire once (unique per account): metric, period, threshold, the agent (by its row: ids may
    be long) and the tool — a long tool name by its digest, so the key fits its column."""
    tool = crossing.counter
    if len(tool) > 120:
        tool = "sha256:" + hashlib.sha256(tool.encode()).hexdigest()
    parts = ["budget", crossing.metric, crossing.period, str(crossing.threshold)]
    if agent_pk is not None:
        parts.append(f"a{agent_pk}")
    if tool:
        parts.append(tool)
    return ":".join(parts)


def fire(account_id: int, agent: Agent | None, agent_id: str, now: datetime, found: list[Crossing]) -> list[Alert]:
    """Insert each crossing's alert (a duplicate — another process fired it — is skipped) and publish it to the
    channels subscribed to ``budget_alert``; count it for /metrics. Never fails the call: it is recorded already.
    A quota's alert is the account's (no agent)."""
    fired: list[Alert] = []
    for crossing in found:
        mine = None if crossing.metric in QUOTAS.values() else agent
        text = message(agent_id, crossing, now)
        data = payload_numbers(agent_id, crossing, now)
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    account_id=account_id,
                    agent=mine,
                    kind=AlertKind.BUDGET,
                    code=crossing.metric,
                    once=once_key(crossing, None if mine is None else mine.pk),
                    message=text[:1000],
                    data=data,
                    created_at=now,
                )
                channels.publish(
                    account_id, NotificationChannel.Event.BUDGET_ALERT, event_payload(alert), alert.message
                )
        except IntegrityError:
            continue  # fired already (another caller crossed it first, in this period)
        except DatabaseError:
            logger.warning("budget alert %s not recorded", crossing, exc_info=True)
            continue
        fired.append(alert)
    return fired


def projected_seconds(crossing: Crossing, now: datetime) -> float | None:
    """Seconds until the cap at the current burn rate (value / time since the period started); None when the cap is
    reached already or nothing was used yet."""
    if crossing.value >= crossing.cap or crossing.value <= 0:
        return None
    elapsed = max((now - crossing.period_start).total_seconds(), MIN_ELAPSED_SECONDS)
    return elapsed * (crossing.cap - crossing.value) / crossing.value


WHAT = {
    Metric.DAILY_SPEND: "daily spend cap",
    Metric.HOURLY_ACTIONS: "hourly action cap",
    Metric.TOOL_CALLS: "daily cap on {tool}",
    Metric.AI_QUOTA: "monthly ai quota",
    Metric.MAKE_QUOTA: "monthly make quota",
}
RESETS = {
    Metric.DAILY_SPEND: "00:00 UTC",
    Metric.HOURLY_ACTIONS: "its oldest actions of the last hour age out",
    Metric.TOOL_CALLS: "00:00 UTC",
    Metric.AI_QUOTA: "the month ends (UTC)",
    Metric.MAKE_QUOTA: "the month ends (UTC)",
}


def _amounts(crossing: Crossing) -> str:
    if crossing.metric == Metric.DAILY_SPEND:
        return (
            f"{formatting.usd(Decimal(crossing.value) / MICRO)} of {formatting.usd(Decimal(crossing.cap) / MICRO)}"
            " today"
        )
    if crossing.metric == Metric.HOURLY_ACTIONS:
        return f"{crossing.value:,} of {crossing.cap:,} actions in the last hour"
    if crossing.metric == Metric.TOOL_CALLS:
        return f"{crossing.value:,} of {crossing.cap:,} calls today"
    return f"{crossing.value:,} of {crossing.cap:,} used this month"


def message(agent_id: str, crossing: Crossing, now: datetime) -> str:
    """ "billing-agent reached 80% of its daily spend cap: $8.00 of $10.00 today; at the current rate the cap is hit
    in ~2 h 10 min." At 100 %: the cap is reached and further calls are blocked until it resets."""
    what = WHAT[crossing.metric].format(tool=crossing.tool)
    who = "The account" if crossing.metric in QUOTAS.values() else agent_id
    its = "its"
    if crossing.value >= crossing.cap:
        return (
            f"{who} reached {its} {what}: {_amounts(crossing)}; further calls are blocked until "
            f"{RESETS[crossing.metric]}."
        )
    head = f"{who} reached {crossing.threshold}% of {its} {what}: {_amounts(crossing)}"
    eta = projected_seconds(crossing, now)
    if eta is None:
        return head + "."
    if now + timedelta(seconds=eta) >= crossing.period_end and crossing.metric != Metric.HOURLY_ACTIONS:
        return head + f"; at the current rate the cap is not reached before {RESETS[crossing.metric]}."
    return head + f"; at the current rate the cap is hit in ~{formatting.seconds(max(60, round(eta / 60) * 60))}."


def payload_numbers(agent_id: str, crossing: Crossing, now: datetime) -> dict[str, Any]:
    """The alert's numbers (``Alert.data``), spend in USD."""
    spend = crossing.metric == Metric.DAILY_SPEND
    eta = projected_seconds(crossing, now)
    return {
        "metric": crossing.metric,
        "threshold": crossing.threshold,
        "value": float(Decimal(crossing.value) / MICRO) if spend else crossing.value,
        "cap": float(Decimal(crossing.cap) / MICRO) if spend else crossing.cap,
        "unit": "usd" if spend else "actions" if crossing.metric == Metric.HOURLY_ACTIONS else "calls",
        "period": crossing.period,
        "agent_id": None if crossing.metric in QUOTAS.values() else agent_id,
        "tool": crossing.tool or None,
        "projected_seconds": None if eta is None else int(eta),
    }


def alerts_url() -> str:
    """The alerts feed: absolute when ONCEONLY_PUBLIC_URL is set (notifications), else the path."""
    return settings.ONCEONLY_PUBLIC_URL.rstrip("/") + reverse("governance:alerts")


def event_payload(alert: Alert) -> dict[str, Any]:
    """What the ``budget_alert`` event carries (webhooks' ``data``): the alert's id, message and numbers."""
    return {
        "alert_id": alert.pk,
        "kind": alert.kind,
        "code": alert.code,
        "message": alert.message,
        **alert.data,
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
        "alerts_url": alerts_url(),
    }


def fired_counts() -> dict[str, int]:
    """Budget alerts fired server-wide, by metric (every metric, 0 when none) — from the alert rows, so every process
    answers the same numbers and a loss of Redis forgets none."""
    counts = dict.fromkeys(METRICS, 0)
    rows = Alert.objects.filter(kind=AlertKind.BUDGET).values("code").annotate(n=Count("id")).order_by()
    for row in rows:
        counts[row["code"]] = counts.get(row["code"], 0) + row["n"]
    return counts
