"""Containment detectors on the decision stream (docs/governance.md §"Containment detectors").

Every recorded governed-call decision is observed once, right after it is written (``services.call_record``):
``observe`` sends it to ``detectors.lua`` — one EVALSHA, on the agent's own small counters (a per-minute ring, a
per-hour ring, a counter per repeated args digest, a set of high-risk tools used), nothing read from the decision
log — and the script answers which detectors fired, with their numbers. None on (every detector ``off``): no Redis
call at all. A detector that fires writes an ``Alert`` (kind ``detector``; its ``once`` key makes a second insert of
the same firing a no-op), publishes the ``detector`` event to the notification channels and, in ``contain`` mode,
flips the agent's kill switch (``disabled_by: "auto"``, the explanation with its numbers as the reason). ``release``
is the one-click way back: the agent enabled, the alert marked released, the agent's detector counters reset.

Nothing here may fail the call: its decision is already recorded, so an error (Redis down, a database hiccup) is
logged and the call's answer goes out as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Sum
from django.urls import reverse
from django.utils import timezone

from billing.models import Account
from billing.services import audit_record
from governance import channels, policies
from governance.choices import CHARGED_OUTCOMES, AlertKind, AlertMode, Outcome, Reason, RiskLevel
from governance.models import Agent, Alert, Decision, DecisionRollup, NotificationChannel
from onceonly_site import formatting
from onceonly_site.redis_client import LuaScript, get_redis

if TYPE_CHECKING:
    from governance.services import Call

logger = logging.getLogger(__name__)

DETECTORS_LUA = Path(__file__).with_name("detectors.lua")
MICRO = Decimal(1_000_000)
AUTO = "auto"  # the kill switch's actor when a detector contained the agent
# What the deny spike and the loop leave out: a call waiting on a person (an agent polling its approval request
# repeats the same call by design) and a call of an agent already stopped (agent_disabled: never observed at all).
NOT_A_DENY = (Reason.APPROVAL_REQUIRED,)


class DetectorKeys(NamedTuple):
    minutes: str
    hours: str
    loop: str
    risky: str
    spike_fired: str
    velocity_fired: str
    released: str


class DetectorArgs(NamedTuple):
    now_ms: int
    blocked: str
    repeat: str
    spend: int
    risky_tool: str
    loop_count: int
    loop_window: int
    spike_share: int
    spike_min_calls: int
    spike_window: int
    velocity_factor: int
    velocity_min: int
    velocity_window: int


DETECT = LuaScript(DETECTORS_LUA, DetectorKeys, DetectorArgs)


def key_prefix(agent: Agent) -> str:
    """The agent's detector keys: under the account's hash tag, so every key of one script is in one cluster slot."""
    return f"oo:{{a{agent.account_id}}}:gov:{agent.pk}:det"


def _keys(agent: Agent, digest: str) -> DetectorKeys:
    base = key_prefix(agent)
    return DetectorKeys(
        minutes=f"{base}:min",
        hours=f"{base}:hr",
        loop=f"{base}:loop:{digest}",
        risky=f"{base}:risky",
        spike_fired=f"{base}:fired:deny_spike",
        velocity_fired=f"{base}:fired:spend_velocity",
        released=f"{base}:released",
    )


@dataclass(frozen=True, slots=True)
class Fired:
    """A detector that fired: its name, the explanation with its numbers (the kill switch's reason when it
    contains), the numbers themselves (the alert's ``data``) and what makes its alert fire once (``token``)."""

    detector: str
    message: str
    data: dict[str, Any]
    token: str


def _on(settings_: dict[str, Any]) -> bool:
    return settings_["mode"] != "off"


def observe(call: Call, decision: Decision) -> None:
    """The detectors' look at one recorded decision (never raises: the decision is recorded and answered)."""
    try:
        _observe(call, decision)
    except Exception:  # the call's answer must go out whatever the detectors' storage says
        logger.exception("detectors: decision %s not observed", decision.pk)


def _observe(call: Call, decision: Decision) -> None:
    if decision.policy_reason == Reason.AGENT_DISABLED:
        return  # already stopped: nothing to detect, nothing to contain
    chosen = policies.detector_settings(call.policy)
    loop, spike, velocity, risky = (
        chosen["call_loop"],
        chosen["deny_spike"],
        chosen["spend_velocity"],
        chosen["first_high_risk_tool"],
    )
    if not (_on(loop) or _on(spike) or _on(velocity) or _on(risky)):
        return
    outcome, reason = decision.outcome, decision.policy_reason
    blocked = outcome == Outcome.BLOCKED and reason not in NOT_A_DENY
    repeat = "b" if blocked else "d" if outcome == Outcome.DEDUP else ""
    charged = outcome in CHARGED_OUTCOMES
    spend = int(Decimal(decision.spend_usd or 0) * MICRO) if charged else 0
    risky_tool = call.tool if _on(risky) and charged and decision.risk_level == RiskLevel.HIGH else ""
    now_ms = int(decision.ts.timestamp() * 1000)
    args = DetectorArgs(
        now_ms=now_ms,
        blocked="1" if blocked else "0",
        repeat=repeat,
        spend=spend,
        risky_tool=risky_tool,
        loop_count=int(loop["count"]) if _on(loop) else 0,
        loop_window=int(loop["window_minutes"]) * 60,
        spike_share=round(float(spike["share"]) * 1_000_000) if _on(spike) else 0,
        spike_min_calls=int(spike["min_calls"]),
        spike_window=int(spike["window_minutes"]),
        velocity_factor=round(float(velocity["factor"]) * 1000) if _on(velocity) else 0,
        velocity_min=int(Decimal(str(velocity["min_spend_usd"])) * MICRO),
        velocity_window=int(velocity["window_minutes"]),
    )
    if not (args.loop_count and repeat) and not args.spike_share and not args.velocity_factor and not risky_tool:
        return  # nothing this decision could count towards
    reply = DETECT(get_redis(), _keys(call.agent, call.digest), args)
    if len(reply) <= 1:
        return
    for fired in parse(reply, call, chosen):
        if fired.detector == "first_high_risk_tool" and used_before(call.agent, call.tool):
            continue
        fire(call.agent, fired, chosen[fired.detector]["mode"], tool=call.tool, decision=decision)


def used_before(agent: Agent, tool: str) -> bool:
    """Has the agent used ``tool`` before this call? The set in Redis says no the first time it sees the tool — also
    for an agent that used it long before the detectors watched it (or before Redis lost the set): the hourly
    rollups of the decision log settle it, in one indexed query, on that first sight only."""
    used = DecisionRollup.objects.filter(agent_id=agent.pk, tool=tool, outcome__in=CHARGED_OUTCOMES).aggregate(
        n=Sum("count")
    )["n"]
    return (used or 0) > 1  # this call's own decision is in them already


def _usd(micro: int | float) -> str:
    return formatting.usd(Decimal(int(micro)) / MICRO)


def parse(reply: list[Any], call: Call, chosen: dict[str, dict[str, Any]]) -> list[Fired]:
    """The script's reply as what fired: each detector's explanation worded with its numbers."""
    out: list[Fired] = []
    items = [item.decode() if isinstance(item, bytes) else item for item in reply[1:]]
    at = 0
    while at < len(items):
        name = items[at]
        if name == "call_loop":
            total, blocked, dedup, first_ms = (int(v) for v in items[at + 1 : at + 5])
            at += 5
            cfg = chosen[name]
            how = (
                f"blocked {total} times"
                if not dedup
                else f"deduplicated {total} times"
                if not blocked
                else f"blocked or deduplicated {total} times ({blocked} blocked, {dedup} deduplicated)"
            )
            message = (
                f"call_loop: the same {call.tool} call (args {call.digest[:12]}) was {how} in "
                f"{cfg['window_minutes']} min (limit {cfg['count']})"
            )
            data = {
                "tool": call.tool,
                "args_hash": call.digest,
                "count": total,
                "blocked": blocked,
                "deduplicated": dedup,
                "limit": cfg["count"],
                "window_minutes": cfg["window_minutes"],
            }
            out.append(Fired(name, message, data, f"{call.digest[:32]}:{first_ms}"))
        elif name == "deny_spike":
            denied, calls = int(items[at + 1]), int(items[at + 2])
            at += 3
            cfg = chosen[name]
            share = denied / max(calls, 1)
            message = (
                f"deny_spike: {denied} of the agent's last {calls} calls in {cfg['window_minutes']} min were blocked "
                f"({share:.0%}, threshold {float(cfg['share']):.0%}, at least {cfg['min_calls']} calls)"
            )
            data = {
                "blocked": denied,
                "calls": calls,
                "share": round(share, 4),
                "threshold": cfg["share"],
                "min_calls": cfg["min_calls"],
                "window_minutes": cfg["window_minutes"],
            }
            out.append(Fired(name, message, data, ""))
        elif name == "spend_velocity":
            spent, baseline, active = int(items[at + 1]), int(items[at + 2]), int(items[at + 3])
            at += 4
            cfg = chosen[name]
            window = cfg["window_minutes"]
            if active:
                ratio = spent / baseline if baseline else float("inf")
                times = f"{ratio:.1f}×" if baseline else "far above"
                against = (
                    f"{times} the agent's trailing 24 h baseline of {_usd(baseline)} per {window} min "
                    f"({active} active hours)"
                )
            else:
                against = "with no spend in the trailing 24 h"
            message = (
                f"spend_velocity: {_usd(spent)} spent in the last {window} min, {against} "
                f"(limit {float(cfg['factor']):g}×, at least {_usd(int(Decimal(str(cfg['min_spend_usd'])) * MICRO))})"
            )
            data = {
                "spend_usd": float(Decimal(spent) / MICRO),
                "baseline_usd": float(Decimal(baseline) / MICRO),
                "active_hours": active,
                "factor": cfg["factor"],
                "min_spend_usd": cfg["min_spend_usd"],
                "window_minutes": window,
            }
            out.append(Fired(name, message, data, ""))
        elif name == "first_high_risk_tool":
            tool = items[at + 1]
            at += 2
            message = f"first_high_risk_tool: the agent's first call of the high-risk tool {tool}"
            out.append(Fired(name, message, {"tool": tool}, tool))
        else:  # a reply this code does not know (a newer script): stop rather than misread
            logger.warning("detectors: unknown reply item %r", name)
            break
    return out


def fire(agent: Agent, fired: Fired, mode: str, *, tool: str, decision: Decision) -> Alert | None:
    """A detector fired: the alert (once), the containment in contain mode (not of an agent already stopped, nor on
    a plan without the kill switch), the channels told. None when this firing was already recorded."""
    now = timezone.now()
    token = fired.token or str(int(now.timestamp() * 1000))
    contain = mode == AlertMode.CONTAIN
    data = {**fired.data, "decision_id": decision.pk}
    if contain:
        has_kill_switch = Account.objects.filter(pk=agent.account_id).values_list("plan__has_kill_switch", flat=True)
        enabled = Agent.objects.filter(pk=agent.pk).values_list("is_enabled", flat=True).first()
        if not has_kill_switch.first():
            contain, data["not_contained"] = False, "the plan has no kill switch"
        elif not enabled:
            contain, data["not_contained"] = False, "the agent was already disabled"
    data["contained"] = contain
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                account_id=agent.account_id,
                agent_id=agent.pk,
                kind=AlertKind.DETECTOR,
                code=fired.detector,
                mode=AlertMode.CONTAIN if mode == AlertMode.CONTAIN else AlertMode.ALERT,
                once=f"detector:{agent.pk}:{fired.detector}:{token}"[:300],
                message=fired.message[:1000],
                data=data,
                created_at=now,
            )
    except IntegrityError:
        return None  # this firing is recorded already (another process, or a Redis that lost the counters)
    if contain:
        from governance import services  # services imports this module

        services.agent_set_enabled(
            account_id=agent.account_id, agent_id=agent.agent_id, enabled=False, reason=fired.message, actor=AUTO
        )
    _publish(agent, alert, tool)
    return alert


def agent_url(agent: Agent) -> str:
    """The agent's page: absolute when ONCEONLY_PUBLIC_URL is set, else the path."""
    return settings.ONCEONLY_PUBLIC_URL.rstrip("/") + reverse("governance:agent-detail", args=[agent.pk])


def _publish(agent: Agent, alert: Alert, tool: str) -> None:
    contained = bool(alert.data.get("contained"))
    payload = {
        "alert_id": alert.pk,
        "detector": alert.code,
        "mode": alert.mode,
        "contained": contained,
        "agent_id": agent.agent_id,
        "tool": tool,
        "message": alert.message,
        "numbers": alert.data,
        "agent_url": agent_url(agent),
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
    }
    did = "contained (its kill switch is on; release it on its page)" if contained else "flagged"
    text = f"Agent {agent.agent_id} {did} — {alert.message}"
    try:
        channels.publish(agent.account_id, NotificationChannel.Event.DETECTOR, payload, text)
    except Exception:  # the alert and the containment stand; a channel row that could not be written is logged
        logger.exception("detectors: alert %s not published", alert.pk)


# --- release -----------------------------------------------------------------------------------------------------


def containment_of(agent: Agent) -> Alert | None:
    """The alert that contained the agent, while it is contained (disabled by ``auto``, not released)."""
    if agent.is_enabled or agent.disabled_by != AUTO:
        return None
    return (
        Alert.objects.filter(agent=agent, kind=AlertKind.DETECTOR, mode=AlertMode.CONTAIN, released_at__isnull=True)
        .order_by("-created_at", "-id")
        .first()
    )


class NotContained(Exception):
    """Release of an agent no detector contained (enabled, or disabled by a person: that is the kill switch's)."""


def release(*, account_id: int, agent_id: str, actor: str, reason: str = "") -> Agent:
    """One-click release of a contained agent: enabled (the kill switch's own audited write), every unreleased
    containment of it marked released, ``governance.agent.released`` audited, and its detector counters reset — so
    the loop that contained it must happen again, in full, to contain it again."""
    from governance import services

    agent = Agent.objects.filter(account_id=account_id, agent_id=agent_id).first()
    if agent is None or agent.is_enabled or agent.disabled_by != AUTO:
        raise NotContained(agent_id)
    alerts = Alert.objects.filter(
        agent=agent, kind=AlertKind.DETECTOR, mode=AlertMode.CONTAIN, released_at__isnull=True
    )
    codes = sorted(set(alerts.values_list("code", flat=True)))
    now = timezone.now()
    with transaction.atomic():
        agent = services.agent_set_enabled(
            account_id=account_id,
            agent_id=agent_id,
            enabled=True,
            reason=reason or f"released after containment ({', '.join(codes) or 'detector'})",
            actor=actor,
            release=True,
        )
        released = alerts.update(released_at=now, released_by=actor[:200])
        audit_record(
            account=agent.account,
            actor_label=actor,
            action="governance.agent.released",
            object_type="agent",
            object_id=agent_id,
            data={"detectors": codes, "alerts_released": released, "reason": reason},
        )
    try:
        reset_counters(agent)
    except Exception:  # released all the same; the counters expire within their window
        logger.exception("detectors: counters of agent %s not reset", agent.pk)
    return agent


def reset_counters(agent: Agent) -> None:
    """Forget the agent's windowed detector counters: the rings and the fired markers deleted, and the loop
    counters (one per args digest: not listed anywhere, and not scanned for) made stale by the release time the
    script compares their first count with. The set of high-risk tools it has used stays — a used tool is not new
    again."""
    base = key_prefix(agent)
    pipe = get_redis().pipeline(transaction=True)
    pipe.delete(f"{base}:min", f"{base}:hr", f"{base}:fired:deny_spike", f"{base}:fired:spend_velocity")
    pipe.set(f"{base}:released", int(timezone.now().timestamp() * 1000), ex=86400)
    pipe.execute()


# --- metrics ------------------------------------------------------------------------------------------------------


def totals() -> tuple[dict[str, int], dict[str, int]]:
    """Server-wide, by detector: alerts fired (every mode), and containments (the agent stopped) — from the alert
    rows, so every process answers the same numbers."""
    fired = {name: 0 for name in policies.DETECTORS}
    contained = dict(fired)
    rows = (
        Alert.objects.filter(kind=AlertKind.DETECTOR)
        .values("code", "data__contained")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        fired[row["code"]] = fired.get(row["code"], 0) + row["n"]
        if row["data__contained"] is True:
            contained[row["code"]] = contained.get(row["code"], 0) + row["n"]
    return fired, contained
