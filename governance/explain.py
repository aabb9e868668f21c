"""Why a decision came out as it did, in words and numbers (docs/architecture.md §3.9, §4.8).

``Decision.explain`` holds what the rule saw when it decided (written by ``services.governed_call``): the policy
version always, then the reason's own numbers — the limit and the count before the call, the spend before and this
call's cost, the blocked_tools pattern that matched, who pressed the kill switch. ``explain_text`` turns it into one
sentence; ``explain_numbers`` and ``explain_facts`` into the lists the decision page shows. Decisions recorded
before ``explain`` existed (``explain`` is null) get the sentence their other fields allow. No queries here except
``registered_tool``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse

from governance.choices import RUN_CAP_REASONS, Outcome, Reason
from governance.models import Decision, Tool
from onceonly_site.formatting import num, usd
from onceonly_site.identifiers import normalise_tool


@dataclass(frozen=True)
class Fact:
    label: str
    value: str
    link: str = ""
    mono: bool = False


def _policy(decision: Decision, seen: dict[str, Any]) -> str:
    version = seen.get("policy_version", decision.policy_version)
    return f"policy v{version}" if version is not None else "no policy: ungoverned"


def _when(value: Any) -> str:
    """An ISO timestamp (as explain keeps it) as the dashboard shows times: 2026-12-06 07:10 UTC."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(value)


def _quoted(text: Any, limit: int = 200) -> str:
    text = str(text)
    return f"'{text[: limit - 1]}…'" if len(text) > limit else f"'{text}'"


def _kill_switch(seen: dict[str, Any]) -> str:
    """ "by alice@x at 2026-12-06 07:10 UTC — 'runaway loop'" (whatever of it is known)."""
    parts = ""
    if seen.get("disabled_by"):
        parts += f" by {seen['disabled_by']}"
    if seen.get("disabled_at"):
        parts += f" at {_when(seen['disabled_at'])}"
    if seen.get("disabled_reason"):
        parts += f" — {_quoted(seen['disabled_reason'])}"
    return parts


def _left(left: dict[str, Any]) -> str:
    words = []
    if "spend_usd_today" in left:
        words.append(f"{usd(left['spend_usd_today'])} of spend today")
    if "actions_this_hour" in left:
        words.append(f"{_count(left['actions_this_hour'], 'action')} this hour")
    if "calls_today" in left:
        words.append(f"{_count(left['calls_today'], 'call')} of this tool today")
    if "run_actions" in left:
        words.append(f"{_count(left['run_actions'], 'action')} in this run")
    if "run_calls" in left:
        words.append(f"{_count(left['run_calls'], 'call')} of this tool in this run")
    if "run_spend_usd" in left:
        words.append(f"{usd(left['run_spend_usd'])} of spend in this run")
    return ", ".join(words)


def _count(n: Any, noun: str) -> str:
    """ "1 call", "3 calls"."""
    return f"{num(n)} {noun}{'' if n == 1 else 's'}"


def _attempts(seen: dict[str, Any]) -> str:
    attempts = seen.get("attempts")
    text = f"{attempts} attempt{'s' if attempts != 1 else ''}" if attempts is not None else ""
    if seen.get("http_status"):
        text += f", last HTTP {seen['http_status']}" if text else f"HTTP {seen['http_status']}"
    return text


def _approval(seen: dict[str, Any], reason: str) -> str:
    """ "needs a person's approval (require_approval "stripe.*" over $50.00; this call costs $75.00) — apr_… pending
    until 14:05 UTC", or "denied by alice@example.com: …"."""
    rule = seen.get("rule") or {}
    over = rule.get("over_usd")
    named = f"require_approval {_quoted(rule.get('tool', '?'))}" + (f" over {usd(over)}" if over is not None else "")
    cost = f"; this call costs {usd(seen['cost'])}" if over is not None and "cost" in seen else ""
    approval = seen.get("approval_id")
    if reason == Reason.APPROVAL_DENIED:
        by = seen.get("decided_by") or "an approver"
        why = f": {_quoted(seen['reason'])}" if seen.get("reason") else ""
        return f"blocked — approval {approval} denied by {by}{why} ({named})"
    if not approval and seen.get("queue_full"):
        return (
            f"blocked — needs a person's approval ({named}{cost}), but the agent already has "
            f"{num(seen['queue_full'])} requests open: none was made (decide or let them expire first)"
        )
    if not approval:
        return f"blocked — needs a person's approval ({named}{cost}); a dry run asks for none"
    until = f" until {_when(seen['expires_at'])}" if seen.get("expires_at") else ""
    return f"blocked — needs a person's approval ({named}{cost}): approval {approval} pending{until}"


def _reason_text(d: Decision, seen: dict[str, Any]) -> str:
    reason, known = d.policy_reason, bool(seen)
    if seen.get("test_call"):
        result = "executed" if d.outcome == Outcome.EXECUTED else "failed"
        detail = _attempts(seen)
        error = f": {_quoted(seen['error'])}" if seen.get("error") else ""
        return f"operator test call by {seen.get('actor') or 'an operator'} — {result}" + (
            f" ({detail}){error}" if detail else error
        )
    if reason == Reason.AGENT_DISABLED:
        stage = seen.get("stage")
        if stage == "in_flight_before_attempt":
            return (
                f"blocked — agent disabled{_kill_switch(seen)} while the call was in flight, before any request "
                "was sent (nothing charged)"
            )
        if stage == "in_flight_after_attempt":
            return (
                f"failed — agent disabled{_kill_switch(seen)} before a retry; {_attempts(seen)} had reached the "
                f"tool, so the call stays charged ({usd(d.spend_usd)})"
            )
        return f"blocked — agent disabled{_kill_switch(seen)}" + ("" if known else " (kill switch)")
    if reason == Reason.TOOL_BLOCKED:
        if seen.get("pattern"):
            return f"blocked — matches blocked_tools entry {_quoted(seen['pattern'])}"
        return "blocked — the tool is in blocked_tools"
    if reason == Reason.TOOL_NOT_ALLOWED:
        if "allowed_tools_count" not in seen:
            return "blocked — the tool is not in allowed_tools"
        count, entries = seen["allowed_tools_count"], seen.get("allowed_tools") or []
        if not count:
            return "blocked — allowed_tools is empty: no tool is allowed"
        shown = ", ".join(entries[:3]) + (", …" if count > 3 else "")
        return f"blocked — not in allowed_tools ({num(count)} entr{'y' if count == 1 else 'ies'}: {shown})"
    if reason == Reason.TOOL_DISABLED:
        if seen.get("mcp_server"):
            return f"blocked — its MCP server {_quoted(seen['mcp_server'])} is disabled in the registry"
        scope = f" (scope {seen['scope_id']})" if seen.get("scope_id") else ""
        return f"blocked — the tool is disabled in the registry{scope}"
    if reason == Reason.HOURLY_ACTION_LIMIT_EXCEEDED:
        if "limit" not in seen or "count" not in seen:
            return "blocked — hourly action limit reached"
        return f"hourly action limit reached — {num(seen['count'])} of {num(seen['limit'])} actions in the last hour"
    if reason == Reason.TOOL_CALL_LIMIT_EXCEEDED:
        if "limit" not in seen or "count" not in seen:
            return "blocked — per-tool daily cap reached"
        key = seen.get("cap_key")
        named = f" (max_calls_per_tool[{json.dumps(key)}])" if key and key != d.tool else ""
        return f"per-tool cap reached — {num(seen['count'])} of {num(seen['limit'])} today{named}"
    if reason == Reason.DAILY_SPEND_EXCEEDED:
        if not {"limit", "spent", "cost"} <= seen.keys():
            return "blocked — this call would exceed the daily spend cap"
        text = f"daily spend {usd(seen['spent'])} + {usd(seen['cost'])} would exceed {usd(seen['limit'])}"
        declared, price = seen.get("declared"), seen.get("price")
        if declared is not None and price and declared != price:  # both known: the call costs the larger
            text += f" (declared {usd(declared)}, operator price {usd(price)})"
        return text
    if reason in RUN_CAP_REASONS:
        return _run_cap(reason, seen)
    if reason == Reason.IDEMPOTENCY_KEY_HIT:
        original = seen.get("original_decision_id", d.original_id)
        same = "idempotency key" if seen.get("idempotency_key") else "arguments"
        if original:
            return f"deduplicated — same {same} as decision #{original}, whose result was replayed (not charged)"
        return "deduplicated — the same call is in flight or its decision is gone; nothing replayed (not charged)"
    if reason == Reason.TOOL_ERROR:
        detail = _attempts(seen) if known else (f"HTTP {d.http_status}" if d.http_status else "")
        error = f": {_quoted(seen['error'])}" if seen.get("error") else ""
        return f"failed — tool error{f' after {detail}' if detail else ''}{error} (charged {usd(d.spend_usd)})"
    if reason == Reason.OUTCOME_UNKNOWN:
        return (
            "outcome unknown — the server called the tool but stopped before recording its answer; recorded "
            f"as failed and charged {usd(d.spend_usd)}"
        )
    if reason in (Reason.APPROVAL_REQUIRED, Reason.APPROVAL_DENIED):
        return _approval(seen, reason)
    if reason == Reason.WITHIN_BUDGET:
        verbs: dict[str, str] = {Outcome.EXECUTED: "executed", Outcome.ALLOWED: "allowed (permit-only)"}
        verb = verbs.get(d.outcome, d.outcome)
        cost = seen.get("cost", float(d.spend_usd or 0))
        left = _left(seen.get("left") or {})
        text = f"{verb} within budget — cost {usd(cost)}"
        if "left" in seen:
            text += f"; left: {left}" if left else "; no cap applies to this call"
        if d.outcome == Outcome.EXECUTED and seen.get("http_status"):
            text += f"; HTTP {seen['http_status']}"
        return text
    return f"{d.outcome} — {reason}"


def _run_cap(reason: str, seen: dict[str, Any]) -> str:
    """A per-run cap (docs/governance.md §"Per-run caps"): "run action cap reached — 3 of 3 actions in run r-7"."""
    run = f" in run {_quoted(seen['run_id'], 80)}" if seen.get("run_id") else ""
    raised = " (its raised caps)" if seen.get("run_caps") == "raised" else ""
    if reason == Reason.RUN_TIME_EXCEEDED:
        if "limit_seconds" not in seen:
            return "blocked — the run's time cap was reached"
        return (
            f"run time cap reached — {num(seen.get('elapsed_seconds'))} s since the run's first action, "
            f"limit {num(seen['limit_seconds'])} s{run}{raised}"
        )
    if reason == Reason.RUN_SPEND_EXCEEDED:
        if not {"limit", "spent", "cost"} <= seen.keys():
            return "blocked — this call would exceed the run's spend cap"
        return f"run spend {usd(seen['spent'])} + {usd(seen['cost'])} would exceed {usd(seen['limit'])}{run}{raised}"
    actions = reason == Reason.RUN_ACTION_LIMIT_EXCEEDED
    what = "run action cap" if actions else "run per-tool cap"
    if "limit" not in seen or "count" not in seen:
        return f"blocked — {what} reached"
    noun = "actions" if actions else "calls of this tool"
    return f"{what} reached — {num(seen['count'])} of {num(seen['limit'])} {noun}{run}{raised}"


def explain_text(decision: Decision) -> str:
    """One sentence with the numbers: "stripe.refund: per-tool cap reached — 3 of 3 today (policy v4)"."""
    seen = decision.explain or {}
    approved = seen.get("approval") if isinstance(seen.get("approval"), dict) else None
    by = ""
    if approved and approved.get("approval_id"):
        who = f" by {approved['decided_by']}" if approved.get("decided_by") else ""
        by = f"; approved{who} ({approved['approval_id']})"
    return f"{decision.tool}: {_reason_text(decision, seen)}{by} ({_policy(decision, seen)})"


_NUMBERS = (
    ("seen", "spent", "Spent today before this call", usd),
    ("seen", "cost", "This call's cost", usd),
    ("seen", "declared", "Declared by the request", usd),
    ("seen", "price", "Operator price", usd),
    ("left", "spend_usd_today", "Spend left today", usd),
    ("left", "actions_this_hour", "Actions left this hour", num),
    ("left", "calls_today", "Calls of this tool left today", num),
    ("left", "run_actions", "Actions left in this run", num),
    ("left", "run_calls", "Calls of this tool left in this run", num),
    ("left", "run_spend_usd", "Spend left in this run", usd),
    ("seen", "limit_seconds", "Run time limit (s)", num),
    ("seen", "elapsed_seconds", "Since the run's first action (s)", num),
    ("seen", "attempts", "Attempts", num),
)


def explain_numbers(decision: Decision) -> list[Fact]:
    """The numbers the rule compared, for the page's headline: limit, count before, spend before, cost, left."""
    seen = decision.explain or {}
    reason, out = decision.policy_reason, []
    money = reason in (Reason.DAILY_SPEND_EXCEEDED, Reason.RUN_SPEND_EXCEEDED)
    if "limit" in seen:
        out.append(Fact("Limit", usd(seen["limit"]) if money else num(seen["limit"])))
    if "count" in seen:
        hourly = reason == Reason.HOURLY_ACTION_LIMIT_EXCEEDED
        if reason in RUN_CAP_REASONS:
            noun = "action" if reason == Reason.RUN_ACTION_LIMIT_EXCEEDED else "call"
            counted = f"{_count(seen['count'], noun)} in this run"
        elif hourly:
            counted = f"{_count(seen['count'], 'action')} in the last hour"
        else:
            counted = f"{_count(seen['count'], 'call')} today"
        out.append(Fact("Count before this call", counted))
    # (where, key, label, format): each shown when recorded (a None amount is "not recorded").
    left = seen.get("left") or {}
    for where, key, label, fmt in _NUMBERS:
        value = (left if where == "left" else seen).get(key)
        if value is not None:
            out.append(Fact(label, fmt(value)))
    if seen.get("http_status"):
        out.append(Fact("Last HTTP status", str(seen["http_status"])))
    version = seen.get("policy_version", decision.policy_version)
    out.append(Fact("Policy version", f"v{version}" if version is not None else "none (ungoverned)"))
    return out


def registered_tool(decision: Decision) -> Tool | None:
    """The registry entry the decision's tool resolves to (the agent's scope first, then global): one query."""
    return (
        Tool.objects.filter(
            account_id=decision.account_id,
            name_key=normalise_tool(decision.tool),
            scope_id__in=[f"agent:{decision.agent.agent_id}", "global"],
        )
        .order_by("scope_id", "legacy_twin")
        .only("pk", "name", "scope_id", "enabled")
        .first()
    )


def _url(name: str, *args: Any, query: dict[str, Any] | None = None, anchor: str = "") -> str:
    url = reverse(name, args=args)
    if query:
        url += "?" + urlencode(query)
    return url + (f"#{anchor}" if anchor else "")


def explain_facts(decision: Decision, tool: Tool | None = None) -> list[Fact]:
    """The decision's context, each with a link where there is a page for it: agent, tool, policy version, run,
    the original decision of a dedup, who disabled the agent, the matched pattern."""
    d, seen = decision, decision.explain or {}
    facts = [Fact("Agent", d.agent.agent_id, _url("governance:agent-detail", d.agent_id), mono=True)]
    if tool is not None:
        state = "" if tool.enabled else ", disabled"
        facts.append(
            Fact(
                "Tool",
                f"{d.tool} (registered, {tool.scope_id}{state})",
                _url("governance:tools", query={"q": tool.name}),
                mono=True,
            )
        )
    else:
        facts.append(Fact("Tool", f"{d.tool} (not registered)", mono=True))
    version = seen.get("policy_version", d.policy_version)
    if version is not None:
        facts.append(
            Fact(
                "Policy",
                f"version {version}",
                _url("governance:policy-edit", d.agent_id, query={"version": version}, anchor=f"version-{version}"),
            )
        )
    else:
        facts.append(Fact("Policy", "none: the agent is ungoverned", _url("governance:policy-edit", d.agent_id)))
    if seen.get("pattern"):
        facts.append(Fact("Matched blocked_tools entry", seen["pattern"], mono=True))
    if seen.get("cap_key"):
        facts.append(Fact("Cap", f"max_calls_per_tool[{json.dumps(seen['cap_key'])}]", mono=True))
    if seen.get("allowed_tools") is not None:
        shown = ", ".join(seen["allowed_tools"]) or "(empty)"
        more = seen.get("allowed_tools_count", 0) - len(seen["allowed_tools"])
        facts.append(Fact("allowed_tools", shown + (f" and {num(more)} more" if more > 0 else ""), mono=True))
    if d.policy_reason == Reason.AGENT_DISABLED:
        facts.append(Fact("Disabled by", seen.get("disabled_by") or "—"))
        facts.append(Fact("Disabled at", _when(seen.get("disabled_at")) or "—"))
        facts.append(Fact("Kill-switch reason", seen.get("disabled_reason") or "—"))
    if seen.get("error"):
        facts.append(Fact("Error", seen["error"]))
    original = seen.get("original_decision_id", d.original_id)
    if original:
        facts.append(Fact("Original decision", f"#{original}", _url("governance:decision-detail", original)))
    if d.run_id:
        facts.append(Fact("Run", d.run_id, _url("idempotency:run-timeline", query={"run_id": d.run_id}), mono=True))
    facts.append(Fact("Spend charged", usd(d.spend_usd)))
    if d.dispatch_id:
        facts.append(Fact("webhook-id", d.dispatch_id, mono=True))
    return facts
