"""The review of a policy change before it is published (docs/operations.md §"Governance pages"): the semantic diff
and the coloured line diff against the live policy, the tool lists as chips checked against the account's known
tools (registered, or called), what each glob matches among them, and the warnings the confirm step shows —
unknown tool names, caps the agent is already past today, a policy that allows no tool.

Reads only (selectors and the known tools); the editor, template and rollback views render it with
templates/governance/_policy_confirm.html and publish through services.policy_publish only once confirmed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from governance import display, policies, selectors, services
from governance.models import Agent
from onceonly_site.formatting import num, usd
from onceonly_site.identifiers import normalise_tool

CHIP_FIELDS = (
    ("allowed_tools", "Allowed tools"),
    ("blocked_tools", "Blocked tools"),
    ("require_approval", "Require approval for"),
)
KNOWN_LIMIT = 2000  # known tools a glob is previewed against (and the editor's script receives)
SHOWN_MATCHES = 8  # tools named per glob: "stripe.* matches a, b, c and 12 more"
PREVIEWED_GLOBS = 100  # globs previewed per list; the rest say so (a list holds up to 500 entries)


def is_glob(entry: str) -> bool:
    return any(ch in entry for ch in "*?[")


def known_names(account_id: int, tools: set[str] | None = None) -> dict[str, str]:
    """The account's known tools (registered, or seen in its decisions: services.known_tools, unless given) by
    normalised name, in name order, at most KNOWN_LIMIT: what entries are checked and globs previewed against."""
    names = sorted(services.known_tools(account_id) if tools is None else tools, key=str.casefold)[:KNOWN_LIMIT]
    known: dict[str, str] = {}
    for name in names:
        known.setdefault(normalise_tool(name), name)
    return known


def chip(entry: str, known: dict[str, str], *, label: str | None = None, preview: bool = True) -> dict[str, Any]:
    """One list entry as a chip: ``kind`` known / unknown (an exact name no tool has) / glob (with ``matches``, the
    known tools it matches, at most SHOWN_MATCHES of them, and ``more``)."""
    text = label or entry
    if not is_glob(entry):
        if normalise_tool(entry) in known:
            return {"entry": text, "kind": "known", "note": "known tool"}
        return {"entry": text, "kind": "unknown", "note": "unknown tool: not registered, never called"}
    if not preview:
        return {"entry": text, "kind": "glob", "note": "glob (not previewed: too many in this list)"}
    matched = [name for norm, name in known.items() if policies.matches(norm, [entry])]
    if not matched:
        return {"entry": text, "kind": "glob-none", "note": "matches no known tool"}
    shown = ", ".join(matched[:SHOWN_MATCHES])
    more = len(matched) - SHOWN_MATCHES
    return {"entry": text, "kind": "glob", "note": f"matches {shown}" + (f" and {more} more" if more > 0 else "")}


def chips(entries: list[tuple[str, str]], known: dict[str, str]) -> list[dict[str, Any]]:
    """Chips of (tool or glob, shown text) entries; the first PREVIEWED_GLOBS globs are previewed."""
    out, globs = [], 0
    for entry, label in entries:
        globs += is_glob(entry)
        out.append(chip(entry, known, label=label, preview=globs <= PREVIEWED_GLOBS))
    return out


def list_entries(policy: dict[str, Any], field: str) -> list[tuple[str, str]]:
    """A tool list of ``policy`` as (tool or glob, text as the editor writes it) pairs."""
    if field == "require_approval":
        return [
            (pattern, pattern if over is None else f"{pattern} over {usd(over)}")
            for pattern, over in policies.approval_entries(policy)
        ]
    return [(entry, entry) for entry in policy.get(field) or ()]


def policy_chips(policy: dict[str, Any], known: dict[str, str]) -> list[dict[str, Any]]:
    """The chips of each tool list the policy sets: [{"name", "label", "chips"}]."""
    return [
        {"name": field, "label": label, "chips": chips(list_entries(policy, field), known)}
        for field, label in CHIP_FIELDS
        if policy.get(field) is not None
    ]


def unknown_warnings(policy: dict[str, Any], known: dict[str, str]) -> list[dict[str, str]]:
    """Every exact tool name of the policy (lists, per-tool caps, pricing rules) no known tool has — what
    services.policy_publish warns about, said before publishing."""
    unknown = sorted(name for name in policies.named_tools(policy) if normalise_tool(name) not in known)
    return [
        {
            "code": "unknown_tool",
            "level": "warn",
            "message": f"“{name}” is not a registered tool and no agent of this account has called it yet: "
            "check the spelling.",
        }
        for name in unknown
    ]


def cap_warnings(
    account_id: int, agent: Agent, before: dict[str, Any], after: dict[str, Any], now: datetime
) -> list[dict[str, str]]:
    """The caps ``after`` sets or changes that the agent has already reached (spend today, charged actions in the
    last hour, a tool's calls today — none of them zero: a cap of 0 on an unused budget is a choice, not a
    surprise): the next such call would be blocked. Counted as the Agents page counts them
    (selectors.cap_states), for the draft policy."""
    draft = Agent(pk=agent.pk, account_id=account_id, agent_id=agent.agent_id, policy=after)
    state = selectors.cap_states(account_id, [draft], now)[agent.pk]
    warnings = []
    cap = state.spend_cap
    changed = after.get("max_spend_usd_per_day") != before.get("max_spend_usd_per_day")
    if cap is not None and changed and state.spent_today >= cap and state.spent_today > 0:
        warnings.append(
            {
                "code": "over_spend_cap",
                "level": "over",
                "message": f"This agent already spent {usd(state.spent_today)} today; the new cap {usd(cap)} "
                "blocks every further call today.",
            }
        )
    hourly = state.hourly_cap
    changed = after.get("max_actions_per_hour") != before.get("max_actions_per_hour")
    if hourly is not None and changed and state.actions_hour >= hourly and state.actions_hour > 0:
        warnings.append(
            {
                "code": "over_hourly_cap",
                "level": "over",
                "message": f"This agent made {num(state.actions_hour)} charged calls in the last hour; the new "
                f"cap of {num(hourly)} per hour blocks every further call until that rolling count falls below "
                f"{num(hourly)}.",
            }
        )
    old_caps = {normalise_tool(k): v for k, v in (before.get("max_calls_per_tool") or {}).items()}
    for tool, (calls, tool_cap) in state.tool_calls.items():
        if old_caps.get(normalise_tool(tool)) == tool_cap or calls < tool_cap or calls == 0:
            continue
        warnings.append(
            {
                "code": "over_tool_cap",
                "level": "over",
                "message": f"{tool} was already called {num(calls)} times today; the new cap of {num(tool_cap)} "
                f"blocks every further {tool} call today.",
            }
        )
    return warnings


def review(
    account_id: int,
    agent: Agent,
    after: dict[str, Any],
    now: datetime | None = None,
    known: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What publishing ``after`` as the agent's policy does, against its live policy (what the partial
    templates/governance/_policy_confirm.html shows): ``after`` (the draft), ``changes``
    (display.policy_changes), ``diff`` (the coloured line diff's rows), ``chips`` (policy_chips), ``warnings``
    ([{code, level: warn | over, message}]), ``deny_all`` (the draft allows no tool), ``no_change`` (nothing to
    publish), ``ungoverned`` (the agent has no policy yet), ``expected_version`` (the live version the review was
    computed against: the confirm must still find it) and ``next_version``. ``known``: known_names, when the
    caller has them already."""
    now = now or timezone.now()
    live = agent.policy_version is not None
    before = (agent.policy or {}) if live else {}
    known = known_names(account_id) if known is None else known
    warnings = unknown_warnings(after, known) + cap_warnings(account_id, agent, before, after, now)
    warnings += [{**w, "level": "warn"} for w in services.unpriced_thresholds(account_id, after)]
    return {
        "agent_id": agent.agent_id,
        "after": after,
        "changes": display.policy_changes(before if live else None, after),
        "diff": display.diff_rows(display.diff_lines(before if live else None, after)),
        "chips": policy_chips(after, known),
        "warnings": warnings,
        "deny_all": after.get("allowed_tools") == [],
        "no_change": live and before == after,
        "ungoverned": not live,
        "expected_version": agent.policy_version,
        "next_version": (agent.policy_version or 0) + 1,
    }
