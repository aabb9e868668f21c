"""Stored JSON objects as people read them on the dashboard — a policy as a table (with YAML and JSON), an audit
entry's before/after as the coloured line diff of the policy page — never a Python repr.

Pure functions over plain data (no queries); the templates are governance/_policy_table.html, _diff.html and
_audit_data.html, reached through governance/templatetags/governance_display.py."""

from __future__ import annotations

import difflib
import json
from typing import Any

import yaml

from governance import policies
from onceonly_site import formatting


def dumps(value: Any) -> str:
    """Indented JSON with sorted keys (what the diff compares, and the JSON view)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def diff_lines(a: Any, b: Any) -> list[str]:
    """A unified diff (2 lines of context, no file header) of two JSON values, line by line of their indented form.
    A missing side (None) compares as an empty object when the other side is an object."""
    empty: Any = {} if isinstance(a, dict) or isinstance(b, dict) else None
    left = dumps(empty if a is None else a).splitlines()
    right = dumps(empty if b is None else b).splitlines()
    return list(difflib.unified_diff(left, right, "before", "after", lineterm="", n=2))[2:]


def diff_rows(lines: list[str]) -> list[dict[str, str]]:
    """Each diff line with its kind for colouring and for words (screen readers, print): add / del / hunk / ''."""
    rows = []
    for line in lines:
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "")
        rows.append({"kind": kind, "text": line})
    return rows


def to_yaml(value: Any) -> str:
    """Block-style YAML in the policy's own field order (safe_dump: plain types only)."""
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)


def policy_view(policy: dict[str, Any] | None) -> dict[str, Any]:
    """What the policy table shows: each field in words, with units, plus the policy as YAML and JSON."""
    policy = policy or {}
    caps = policy.get("max_calls_per_tool") or {}
    rules = policy.get("pricing_rules") or []
    known = {
        "allowed_tools",
        "blocked_tools",
        "max_actions_per_hour",
        "max_spend_usd_per_day",
        "max_calls_per_tool",
        "pricing_rules",
        "require_approval",
        "approval_ttl_seconds",
        *policies.RUN_CAP_FIELDS,
        "alert_thresholds",
        "detectors",
    }
    approval = policies.approval_entries(policy) if isinstance(policy.get("require_approval"), list) else []
    return {
        "empty": not policy,
        "allowed_tools": policy.get("allowed_tools"),  # None: any tool; []: none
        "blocked_tools": policy.get("blocked_tools") or [],
        "max_actions_per_hour": policy.get("max_actions_per_hour"),
        "max_spend_usd_per_day": policy.get("max_spend_usd_per_day"),
        "tool_caps": sorted(caps.items(), key=lambda item: item[0].casefold()),
        "pricing_rules": [(r.get("tool", ""), r.get("price_usd")) for r in rules if isinstance(r, dict)],
        # (tool or glob, over_usd or None): "stripe.* — over $50.00", "stripe.refund — every call".
        "require_approval": approval,
        "approval_ttl_seconds": policy.get("approval_ttl_seconds")
        or (policies.APPROVAL_TTL_DEFAULT if approval else None),
        "approval_ttl_default": bool(approval) and not policy.get("approval_ttl_seconds"),
        # Per-run caps, budget alerts and detectors (docs/governance.md): the detectors with their defaults, which
        # apply when the policy sets none.
        "run_caps": [
            (label, policy.get(field), kind)
            for field, label, kind in (
                ("max_actions_per_run", "Actions per run", "num"),
                ("max_spend_usd_per_run", "Spend per run", "usd"),
                ("max_calls_per_tool_per_run", "Calls of a tool per run", "num"),
                ("max_run_seconds", "Run time", "seconds"),
            )
        ],
        "alert_thresholds": policies.alert_thresholds(policy) if _valid_thresholds(policy) else [],
        "alert_thresholds_default": policy.get("alert_thresholds") is None,
        "detectors": [
            (name, settings["mode"], ", ".join(f"{k} {v}" for k, v in settings.items() if k != "mode"))
            for name, settings in policies.detector_settings(policy).items()
        ]
        if _valid_detectors(policy)
        else [],
        "detectors_default": not policy.get("detectors"),
        # Fields a later version may add: text, or indented JSON for an object or a list (never a Python repr).
        "other": {k: _text(v) if _scalar(v) else dumps(v) for k, v in policy.items() if k not in known},
        "yaml": to_yaml(policy) if policy else "{}\n",
        "json": dumps(policy),
    }


def _valid_thresholds(policy: dict[str, Any]) -> bool:
    value = policy.get("alert_thresholds")
    return value is None or (isinstance(value, list) and all(isinstance(n, int) for n in value))


def _valid_detectors(policy: dict[str, Any]) -> bool:
    """A stored ``detectors`` as the policy field keeps it (a draft shown before validation may be anything)."""
    value = policy.get("detectors")
    if value is None:
        return True
    return isinstance(value, dict) and all(
        name in policies.DETECTORS and isinstance(settings, dict) and set(settings) <= set(policies.DETECTORS[name])
        for name, settings in value.items()
    )


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def audit_view(data: Any) -> dict[str, Any]:
    """An audit entry's data: a policy change's ``changes`` (display.policy_changes' sentences) as a list, the
    `before`/`after` pair (when there is one) as a line diff, every other field as a labelled value (scalars as
    text, objects and lists as indented JSON)."""
    if not isinstance(data, dict):
        return {"fields": [("value", _field(data))], "diff": None, "changes": []}
    changes = data.get("changes")
    readable = isinstance(changes, list) and all(isinstance(change, str) for change in changes)
    skipped = ("before", "after", "changes") if readable else ("before", "after")
    fields = [(key, _field(value)) for key, value in data.items() if key not in skipped]
    diff = None
    if "before" in data or "after" in data:
        before, after = data.get("before"), data.get("after")
        if _scalar(before) and _scalar(after):
            fields.append(("change", {"text": f"{_text(before)} → {_text(after)}", "json": None}))
        else:
            diff = diff_rows(diff_lines(before, after))
    return {"fields": fields, "diff": diff, "changes": changes if readable else []}


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _field(value: Any) -> dict[str, Any]:
    return {"text": _text(value), "json": None} if _scalar(value) else {"text": "", "json": dumps(value)}


# --- the semantic diff of two policies: what a change does, field by field -------------------------------------

_LISTS = ("allowed_tools", "blocked_tools", "require_approval")


def _shown(field: str, value: Any) -> str:
    """One field's value in words: amounts in dollars, counts with separators, durations in units, lists as names."""
    if value is None:
        return "not set"
    if field in ("max_spend_usd_per_day", "max_spend_usd_per_run"):
        return formatting.usd(value)
    if field in ("approval_ttl_seconds", "max_run_seconds"):
        return formatting.seconds(value)
    if field in ("max_actions_per_hour", "max_actions_per_run", "max_calls_per_tool_per_run"):
        return formatting.num(value)
    if field == "alert_thresholds" and isinstance(value, list):
        return ", ".join(f"{n}%" for n in value) if value else "[] — no budget alerts"
    if field == "detectors" and isinstance(value, dict):
        return (
            "; ".join(
                f"{name}: " + ", ".join(f"{k} {v}" for k, v in settings.items()) if isinstance(settings, dict) else name
                for name, settings in value.items()
            )
            or "{} (the defaults)"
        )
    if isinstance(value, list):
        if not value:
            return "[] — no tool is allowed" if field == "allowed_tools" else "[] (empty)"
        return ", ".join(_entry(field, item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {formatting.num(v)}" for k, v in value.items()) if value else "{} (empty)"
    return _text(value)


def _entry(field: str, item: Any) -> str:
    if field == "require_approval" and isinstance(item, dict):
        over = item.get("over_usd")
        return f"{item.get('tool')} over {formatting.usd(over)}" if over is not None else str(item.get("tool"))
    if field == "pricing_rules" and isinstance(item, dict):
        return f"{item.get('tool')} at {formatting.usd(item.get('price_usd'))}"
    return str(item)


def policy_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What changing ``before`` into ``after`` does, one entry per changed field in the policy's field order:
    ``{"field", "change": "set" | "cleared" | "changed", "before", "after", "added", "removed", "text"}`` —
    list entries added and removed (names, globs, rules, tool caps) rather than the whole list, numbers in their
    units. The editor's confirm step, policies as code and the audit log say a change in these words; the coloured
    line diff (``diff_lines``) shows the same change as text."""
    before, after = before or {}, after or {}
    changes: list[dict[str, Any]] = []
    names = [*policies.FIELDS, *sorted((set(before) | set(after)) - set(policies.FIELDS))]
    for field in names:
        old, new = before.get(field), after.get(field)
        if old == new:
            continue
        change: dict[str, Any] = {"field": field, "before": old, "after": new, "added": [], "removed": []}
        if old is None:
            change["change"], text = "set", f"set to {_shown(field, new)}"
        elif new is None:
            change["change"], text = "cleared", f"cleared (was {_shown(field, old)})"
        elif isinstance(old, list) and isinstance(new, list):
            change["change"] = "changed"
            change["added"] = [item for item in new if item not in old]
            change["removed"] = [item for item in old if item not in new]
            parts = [f"+ {_entry(field, item)}" for item in change["added"]]
            parts += [f"− {_entry(field, item)}" for item in change["removed"]]
            text = "; ".join(parts) if parts else "reordered"
            if field == "allowed_tools" and not new:
                text += " — now empty: no tool is allowed"
        elif isinstance(old, dict) and isinstance(new, dict):
            change["change"] = "changed"
            parts = []
            for key in [*old, *(k for k in new if k not in old)]:
                if key not in new:
                    parts.append(f"− {key} (was {formatting.num(old[key])})")
                    change["removed"].append(key)
                elif key not in old:
                    parts.append(f"+ {key}: {formatting.num(new[key])}")
                    change["added"].append(key)
                elif old[key] != new[key]:
                    parts.append(f"{key}: {formatting.num(old[key])} → {formatting.num(new[key])}")
            text = "; ".join(parts)
        else:
            change["change"], text = "changed", f"{_shown(field, old)} → {_shown(field, new)}"
        change["text"] = f"{field}: {text}"
        changes.append(change)
    return changes
