"""Policy fields: validation, the merge of an upsert, templates, glob matching (docs/architecture.md §7.7;
docs/api.md §"Policies")."""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any

from rest_framework import exceptions, serializers

from onceonly_site.identifiers import identifier_problem, normalise_tool, tool_name_problem
from onceonly_site.params import MAX_USD, is_whole, json_number

FIELDS = (
    "allowed_tools",
    "blocked_tools",
    "max_actions_per_hour",
    "max_spend_usd_per_day",
    "max_calls_per_tool",
    "pricing_rules",
)
MAX_LIST = 500
MAX_TOOL_NAME = 200

# The built-in templates (docs/architecture.md §7.7). Shown on the policy editor and in docs/api.md.
TEMPLATES: dict[str, dict[str, Any]] = {
    "strict": {
        "blocked_tools": ["delete_*", "*.delete*", "drop_*", "*refund*", "transfer*", "*.transfer*", "export*"],
        "max_actions_per_hour": 30,
        "max_spend_usd_per_day": 5.0,
    },
    "moderate": {
        "blocked_tools": ["delete_*", "*.delete*", "drop_*"],
        "max_actions_per_hour": 100,
        "max_spend_usd_per_day": 25.0,
    },
    "permissive": {
        "blocked_tools": ["drop_*"],
        "max_actions_per_hour": 1000,
        "max_spend_usd_per_day": 200.0,
    },
    "read_only": {
        "allowed_tools": ["get_*", "list_*", "search_*", "read_*", "*.get*", "*.list*", "*.search*", "*.read*"],
        "max_actions_per_hour": 300,
        "max_spend_usd_per_day": 5.0,
    },
    "support_bot": {
        "allowed_tools": ["send_email", "create_ticket", "read_knowledge_base", "read_customer_data",
                          "read_order_history"],
        "blocked_tools": ["delete_customer", "delete_ticket", "process_refund", "update_customer_data"],
        "max_actions_per_hour": 150,
        "max_spend_usd_per_day": 50.0,
        "max_calls_per_tool": {"send_email": 50, "create_ticket": 100},
        "pricing_rules": [{"tool": "send_email", "price_usd": 0.001}, {"tool": "create_ticket", "price_usd": 0.01}],
    },
}  # fmt: skip


def _err(errors: dict[str, list], field: str, message: str, code: str = "invalid") -> None:
    errors.setdefault(field, []).append(serializers.ErrorDetail(message, code=code))


def _tool_list(value: Any, field: str, errors: dict[str, list]) -> list[str] | None:
    if not isinstance(value, list):
        _err(errors, field, "Must be a list of tool names or glob patterns.", "list_type")
        return None
    if len(value) > MAX_LIST:
        _err(errors, field, f"At most {MAX_LIST} entries.", "too_long")
        return None
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_TOOL_NAME:
            _err(errors, field, f"Each entry must be a non-empty string of at most {MAX_TOOL_NAME} characters.")
            return None
        if problem := identifier_problem(item) or tool_name_problem(item.strip()):
            _err(errors, field, f"{item.strip()!r}: {problem}", "string_pattern_mismatch")
            return None
        if item.strip() not in out:
            out.append(item.strip())
    return out


MAX_NUMBER = 1_000_000_000  # counts above a billion are typos


# Bounds are compared before int()/float()/round() convert a number (onceonly_site/params.py): float(10**400) raises.
def _non_negative_int(value: Any, field: str, errors: dict[str, list]) -> int | None:
    if not is_whole(value) or json_number(value, 0, MAX_NUMBER) is None:
        _err(errors, field, f"Must be a whole number from 0 to {MAX_NUMBER:,}.", "int_type")
        return None
    return int(value)


def _non_negative_number(value: Any, field: str, errors: dict[str, list]) -> float | None:
    if json_number(value, 0, MAX_USD) is None:
        _err(errors, field, f"Must be a number from 0 to {MAX_USD:,}.", "float_type")
        return None
    amount = round(float(value), 6)  # amounts are stored to the millionth of a dollar
    if amount == 0 and value != 0:
        # 1e-9 would be stored as 0: a spend cap of 0 blocks every charged call, a price of 0 makes the tool free.
        _err(errors, field, "Rounds to 0 (amounts are kept to 6 decimals): write 0, or at least 0.000001.",
             "greater_than_equal")  # fmt: skip
        return None
    return amount


def clean_fields(data: dict[str, Any], *, partial: bool = True) -> dict[str, Any]:
    """Validate policy fields. Returns {field: value or None}; None means "clear this field". Raises 422."""
    errors: dict[str, list] = {}
    out: dict[str, Any] = {}
    for field, value in data.items():
        if field not in FIELDS:
            _err(errors, field, f"Unknown field. Policy fields: {', '.join(FIELDS)}.", "extra_forbidden")
            continue
        if value is None:
            out[field] = None
        elif field in ("allowed_tools", "blocked_tools"):
            out[field] = _tool_list(value, field, errors)
        elif field == "max_actions_per_hour":
            out[field] = _non_negative_int(value, field, errors)
        elif field == "max_spend_usd_per_day":
            out[field] = _non_negative_number(value, field, errors)
        elif field == "max_calls_per_tool":
            if not isinstance(value, dict):
                _err(errors, field, "Must be an object {tool: calls per day}.", "dict_type")
                continue
            if len(value) > MAX_LIST:
                _err(errors, field, f"At most {MAX_LIST} tools.", "too_long")
                continue
            caps: dict[str, int] = {}
            seen: dict[str, str] = {}  # normalised name → the key that has it
            for tool, cap in value.items():
                if not tool.strip() or len(tool) > MAX_TOOL_NAME:
                    _err(errors, field, f"Tool names must be non-empty strings of at most {MAX_TOOL_NAME} characters.")
                    continue
                if problem := identifier_problem(tool) or tool_name_problem(tool.strip()):
                    _err(errors, field, f"{tool.strip()!r}: {problem}", "string_pattern_mismatch")
                    continue
                twin = seen.setdefault(normalise_tool(tool), tool.strip())
                if twin != tool.strip():  # one cap per tool: both keys would apply to the same calls
                    _err(errors, field, f"{twin!r} and {tool.strip()!r} name the same tool (matching ignores case "
                         "and Unicode compatibility forms).", "value_error")  # fmt: skip
                    continue
                number = _non_negative_int(cap, f"{field}.{tool}", errors)
                if number is not None:
                    caps[tool.strip()] = number
            out[field] = caps
        elif field == "pricing_rules":
            if not isinstance(value, list) or len(value) > MAX_LIST:
                _err(errors, field, f"Must be a list of at most {MAX_LIST} {{tool, price_usd}} objects.", "list_type")
                continue
            rules = []
            for index, rule in enumerate(value):
                if not isinstance(rule, dict) or set(rule) != {"tool", "price_usd"}:
                    _err(errors, f"{field}.{index}", 'Each rule is exactly {"tool": str, "price_usd": number}.')
                    continue
                if not isinstance(rule["tool"], str) or not rule["tool"].strip() or len(rule["tool"]) > MAX_TOOL_NAME:
                    _err(
                        errors,
                        f"{field}.{index}.tool",
                        f"Must be a non-empty string of at most {MAX_TOOL_NAME} characters.",
                    )
                    continue
                if problem := identifier_problem(rule["tool"]) or tool_name_problem(rule["tool"].strip()):
                    _err(errors, f"{field}.{index}.tool", problem, "string_pattern_mismatch")
                    continue
                price = _non_negative_number(rule["price_usd"], f"{field}.{index}.price_usd", errors)
                if price is not None:
                    rules.append({"tool": rule["tool"].strip(), "price_usd": price})
            out[field] = rules
    if errors:
        raise exceptions.ValidationError(errors)
    return out


def merge(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """Fields sent replace; an explicit null clears (docs/architecture.md §7.7)."""
    merged = dict(current or {})
    for field, value in changes.items():
        if value is None:
            merged.pop(field, None)
        else:
            merged[field] = value
    return {field: merged[field] for field in FIELDS if field in merged}


# --- matching: a tool name and the policy's names and globs, both normalised ------------------------------------
# Every lookup of a policy by tool name compares normalised forms (identifiers.normalise_tool: NFKC, case-folded,
# trimmed), so `DELETE_USER`, ` delete_user` and `delete＿user` (fullwidth low line) meet `delete_user` in a block
# list, a call cap or a pricing rule (docs/security.md, "Look-alike tool names"). The normalised forms are cached by
# the entries themselves — a policy version never changes, so this is a cache per policy version — and a plain-ASCII
# tool name is normalised with str.strip().lower(): the governed call's hot path stays a tuple, a dict lookup and one
# regular-expression match.


@lru_cache(maxsize=4096)
def _glob(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One compiled expression matching any of ``patterns``, normalised (None for an empty list)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(normalise_tool(pattern)) for pattern in patterns))


def matches(tool: str, patterns: list[str]) -> bool:
    """Glob match (`stripe.*`, `delete_*`) of the normalised tool name against the normalised patterns."""
    glob = _glob(tuple(patterns))
    return glob is not None and glob.match(normalise_tool(tool)) is not None


def matching_pattern(tool: str, patterns: list[str]) -> str | None:
    """The first entry of ``patterns`` that ``tool`` matches, as ``matches`` compares them (None: none does). What a
    decision records as the rule it met (``blocked_tools: ["stripe.refund*"]``); the per-entry expressions are only
    compiled once the combined one has matched."""
    if not matches(tool, patterns):
        return None
    name = normalise_tool(tool)
    return next((pattern for pattern in patterns if _glob((pattern,)).match(name)), None)


@lru_cache(maxsize=4096)
def _caps(items: tuple[tuple[str, int], ...]) -> dict[str, int]:
    return {normalise_tool(tool): cap for tool, cap in items}


def call_cap(policy: dict[str, Any], tool: str) -> int:
    """``max_calls_per_tool`` of ``tool`` (exact names, normalised), or -1 when the policy sets none."""
    caps = policy.get("max_calls_per_tool")
    return _caps(tuple(caps.items())).get(normalise_tool(tool), -1) if caps else -1


def call_cap_key(policy: dict[str, Any], tool: str) -> str | None:
    """The key of ``max_calls_per_tool`` whose cap applies to ``tool`` (`SEND_EMAIL` for a call of `send_email`)."""
    name = normalise_tool(tool)
    return next((key for key in policy.get("max_calls_per_tool") or {} if normalise_tool(key) == name), None)


@lru_cache(maxsize=4096)
def _pricing(rules: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    return {"pricing_rules": [{"tool": normalise_tool(tool), "price_usd": price} for tool, price in rules]}


def operator_price(policy: dict[str, Any], tool: str) -> Decimal | None:
    """``price_for`` on the normalised forms of the rules' globs and of ``tool``."""
    rules = policy.get("pricing_rules")
    if not rules:
        return price_for({}, tool)
    return price_for(_pricing(tuple((rule["tool"], rule["price_usd"]) for rule in rules)), normalise_tool(tool))


def counter_name(tool: str) -> str:
    """The field of the agent's per-tool call counter (Redis) that a call of ``tool`` counts in: the normalised
    name, so that `SEND_EMAIL` and `send_email` share one ``max_calls_per_tool`` budget."""
    return normalise_tool(tool)


def normalised_entries(policy: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, entry, normalised entry) for every entry whose normalised form differs: what the policy editor shows
    ("DELETE_USER → delete_user")."""
    out = []
    for field in ("allowed_tools", "blocked_tools"):
        out += [(field, entry, normalise_tool(entry)) for entry in policy.get(field) or ()]
    out += [("max_calls_per_tool", tool, normalise_tool(tool)) for tool in policy.get("max_calls_per_tool") or {}]
    out += [("pricing_rules", rule["tool"], normalise_tool(rule["tool"])) for rule in policy.get("pricing_rules") or ()]
    return [row for row in out if row[1] != row[2]]


def price_for(policy: dict[str, Any], tool: str) -> Decimal | None:
    """The price of the first pricing rule whose glob matches ``tool`` (a rule of 0 prices the tool at zero), or
    None when no rule names it (the registry's price applies then)."""
    for rule in policy.get("pricing_rules") or ():
        if fnmatch.fnmatchcase(tool, rule["tool"]):
            return Decimal(str(rule["price_usd"]))
    return None


def named_tools(policy: dict[str, Any]) -> set[str]:
    """The exact (non-glob) tool names a policy mentions, for the unknown-tool warnings."""
    names = set(policy.get("allowed_tools") or ()) | set(policy.get("blocked_tools") or ())
    names |= set(policy.get("max_calls_per_tool") or {})
    names |= {rule["tool"] for rule in policy.get("pricing_rules") or ()}
    return {name for name in names if not any(ch in name for ch in "*?[")}


HIGH_RISK = ("delete", "refund", "export", "transfer", "charge", "drop", "payout")
MEDIUM_RISK = ("create", "update", "send", "write", "post", "put", "patch", "email")


def risk_of(tool: str) -> str:
    """Name heuristic when the registry has no risk level (docs/architecture.md §7.13), on the words of the name
    (`stripe.refund`, `delete_user`, `sendEmail`), so `compute_total` is not "put"."""
    words = re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", tool).lower())
    if any(word.startswith(HIGH_RISK) for word in words):
        return "high"
    if any(word.startswith(MEDIUM_RISK) for word in words):
        return "medium"
    return "low"
