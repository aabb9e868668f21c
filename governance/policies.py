"""Policy fields: their declaration (validation and schema), the merge of an upsert, templates, glob matching
(docs/architecture.md §7.7; docs/api.md §"Policies")."""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any

from rest_framework import serializers

from onceonly_site.api import BodyCheck
from onceonly_site.bodies import Body, Field, Ignored, Integer, Invalid, String, Usd
from onceonly_site.identifiers import identifier_problem, normalise_tool, tool_name_problem
from onceonly_site.openapi import POLICY_TOOL_PATTERN, TOOL_NAME_RULES

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
        # Money leaving the account waits for a person (docs/approvals.md).
        "require_approval": ["*refund*", "transfer*", "*.transfer*", "*payout*"],
    },
    "permissive": {
        "blocked_tools": ["drop_*"],
        "max_actions_per_hour": 1000,
        "max_spend_usd_per_day": 200.0,
        "require_approval": [{"tool": "*", "over_usd": 100.0}],
    },
    "read_only": {
        "allowed_tools": ["get_*", "list_*", "search_*", "read_*", "*.get*", "*.list*", "*.search*", "*.read*"],
        "max_actions_per_hour": 300,
        "max_spend_usd_per_day": 5.0,
    },
    "support_bot": {
        "allowed_tools": [
            "send_email",
            "create_ticket",
            "read_knowledge_base",
            "read_customer_data",
            "read_order_history",
        ],
        "blocked_tools": ["delete_customer", "delete_ticket", "process_refund", "update_customer_data"],
        "max_actions_per_hour": 150,
        "max_spend_usd_per_day": 50.0,
        "max_calls_per_tool": {"send_email": 50, "create_ticket": 100},
        "pricing_rules": [{"tool": "send_email", "price_usd": 0.001}, {"tool": "create_ticket", "price_usd": 0.01}],
    },
}


# --- the policy fields: one declaration for the API's validation, its schema and the dashboard's editor -----------


def _policy_tool_problem(value: str) -> str | None:
    return identifier_problem(value) or tool_name_problem(value.strip())


class PolicyTool(String[str]):
    """A tool name or glob in a policy, trimmed: a tool name's rules (identifiers.tool_name_problem), with
    whitespace around it allowed."""

    rules = (_policy_tool_problem,)
    pattern = POLICY_TOOL_PATTERN

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("description", TOOL_NAME_RULES)
        super().__init__(MAX_TOOL_NAME, **kwargs)

    def parse(self, value: Any) -> str:
        return super().parse(value).strip()

    def problem(self, value: Any, shape: str) -> Invalid | None:
        """None, or ``value``'s problem in a policy's words: ``shape`` for a value that is no non-blank string of
        at most MAX_TOOL_NAME characters, else the rule's message."""
        if self.shape(value):
            return Invalid(shape, "invalid")
        refused = self.refusal(value)
        return Invalid(*refused) if refused else None


class ToolPatterns(Field[list[str] | None]):
    """``allowed_tools``, ``blocked_tools``: a list of tool names or globs (trimmed, duplicates dropped)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entry = PolicyTool()

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise Invalid("Must be a list of tool names or glob patterns.", "list_type")
        if len(value) > MAX_LIST:
            raise Invalid(f"At most {MAX_LIST} entries.", "too_long")
        out: list[str] = []
        for item in value:
            problem = self.entry.problem(
                item, f"Each entry must be a non-empty string of at most {MAX_TOOL_NAME} characters."
            )
            if problem is not None:
                raise (
                    problem
                    if problem.code == "invalid"
                    else Invalid(f"{item.strip()!r}: {problem.message}", problem.code)
                )
            if item.strip() not in out:
                out.append(item.strip())
        return out

    def openapi(self) -> dict[str, Any]:
        return {"type": "array", "items": self.entry.schema(), "maxItems": MAX_LIST}


MAX_NUMBER = 1_000_000_000  # counts above a billion are typos
COUNT_RULE = (f"Must be a whole number from 0 to {MAX_NUMBER:,}.", "int_type")


def _count(*, nullable: bool = True, description: str | None = None) -> Integer:
    """A count of calls or actions (``5.0`` is 5)."""
    return Integer(0, MAX_NUMBER, whole_floats=True, invalid=COUNT_RULE, nullable=nullable, description=description)


class CallCaps(Field[dict[str, int] | None]):
    """``max_calls_per_tool``: {tool: calls per day}, no two keys naming the same tool once normalised. Every key's
    problem is reported (at the field; a cap's at ``max_calls_per_tool.<tool>``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tool, self.cap = PolicyTool(), _count(nullable=False)

    def clean(self, check: BodyCheck, loc: str, value: Any) -> dict[str, int] | None:
        if not isinstance(value, dict):
            check.fail(loc, "Must be an object {tool: calls per day}.", "dict_type")
            return None
        if len(value) > MAX_LIST:
            check.fail(loc, f"At most {MAX_LIST} tools.", "too_long")
            return None
        caps: dict[str, int] = {}
        seen: dict[str, str] = {}  # normalised name → the key that has it
        for tool, cap in value.items():
            problem = self.tool.problem(
                tool, f"Tool names must be non-empty strings of at most {MAX_TOOL_NAME} characters."
            )
            if problem is not None:
                message = problem.message if problem.code == "invalid" else f"{tool.strip()!r}: {problem.message}"
                check.fail(loc, message, problem.code)
                continue
            twin = seen.setdefault(normalise_tool(tool), tool.strip())
            if twin != tool.strip():  # one cap per tool: both keys would apply to the same calls
                check.fail(
                    loc,
                    f"{twin!r} and {tool.strip()!r} name the same tool (matching ignores case and Unicode "
                    "compatibility forms).",
                    "value_error",
                )
                continue
            number = self.cap.clean(check, f"{loc}.{tool}", cap)
            if number is not None:
                caps[tool.strip()] = number
        return caps

    def openapi(self) -> dict[str, Any]:
        return {"type": "object", "maxProperties": MAX_LIST, "additionalProperties": self.cap.openapi()}


class PricingRuleInput(Body):
    """``{"tool": <name or glob>, "price_usd": <amount>}``: the price of a call of the tools it matches."""

    tool = PolicyTool()
    price_usd = Usd(rounded=True, required=True)


class PricingRules(Field[list[dict[str, Any]] | None]):
    """``pricing_rules``: a list of ``PricingRuleInput`` (problems at ``pricing_rules.<index>…``)."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> list[dict[str, Any]] | None:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            check.fail(loc, f"Must be a list of at most {MAX_LIST} {{tool, price_usd}} objects.", "list_type")
            return None
        rules = []
        for index, rule in enumerate(value):
            where = f"{loc}.{index}"
            if not isinstance(rule, dict) or set(rule) != set(PricingRuleInput.fields):
                check.fail(where, 'Each rule is exactly {"tool": str, "price_usd": number}.', "invalid")
                continue
            problem = PricingRuleInput.tool.problem(
                rule["tool"], f"Must be a non-empty string of at most {MAX_TOOL_NAME} characters."
            )
            if problem is not None:
                check.fail(f"{where}.tool", problem.message, problem.code)
                continue
            try:
                price = PricingRuleInput.price_usd.parse(rule["price_usd"])
            except Invalid as refused:
                check.fail(f"{where}.price_usd", refused.message, refused.code)
                continue
            rules.append({"tool": rule["tool"].strip(), "price_usd": price})
        return rules

    def serializer_field(self) -> serializers.Field:
        return serializers.ListField(
            child=PricingRuleInput.serializer(),
            required=False,
            allow_null=True,
            max_length=MAX_LIST,
            help_text=self.description,
        )


APPROVAL_TTL_DEFAULT = 3600  # an approval request's lifetime when the policy sets no approval_ttl_seconds
APPROVAL_TTL_MAX = 7 * 24 * 3600


class ApprovalRules(Field[list[Any] | None]):
    """``require_approval``: tool names or globs whose calls a person must approve first, each a string
    (``"stripe.refund"``) or ``{"tool": <name or glob>, "over_usd": <amount>}`` (only calls costing more than it)
    (docs/approvals.md). Problems at ``require_approval.<index>…``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tool, self.over = PolicyTool(), Usd(rounded=True)

    def clean(self, check: BodyCheck, loc: str, value: Any) -> list[Any] | None:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            check.fail(
                loc, f"Must be a list of at most {MAX_LIST} tool names, globs or {{tool, over_usd}}.", "list_type"
            )
            return None
        rules: list[Any] = []
        for index, entry in enumerate(value):
            where = f"{loc}.{index}"
            if isinstance(entry, dict):
                if "tool" not in entry or not set(entry) <= {"tool", "over_usd"}:
                    check.fail(where, 'Each object is {"tool": str} or {"tool": str, "over_usd": number}.', "invalid")
                    continue
                name = entry["tool"]
                where = f"{where}.tool"
            else:
                name = entry
            problem = self.tool.problem(name, f"Must be a non-empty string of at most {MAX_TOOL_NAME} characters.")
            if problem is not None:
                check.fail(where, problem.message, problem.code)
                continue
            if not isinstance(entry, dict) or "over_usd" not in entry:
                rules.append(name.strip())
                continue
            try:
                over = self.over.parse(entry["over_usd"])
            except Invalid as refused:
                check.fail(f"{loc}.{index}.over_usd", refused.message, refused.code)
                continue
            rules.append({"tool": name.strip(), "over_usd": over})
        return rules

    def openapi(self) -> dict[str, Any]:
        entry = {
            "type": "object",
            "properties": {"tool": self.tool.schema(), "over_usd": self.over.openapi()},
            "required": ["tool"],
            "additionalProperties": False,
        }
        return {"type": "array", "maxItems": MAX_LIST, "items": {"oneOf": [self.tool.schema(), entry]}}


RUN_SECONDS_MAX = 30 * 86400
ALERT_THRESHOLDS_DEFAULT = [50, 80, 95, 100]  # percent of a cap (docs/governance.md §"Budget alerts")
DETECTOR_MODES = ("off", "alert", "contain")

# The containment detectors and their defaults (docs/governance.md §"Containment detectors"); a policy's
# ``detectors`` sets some of them (each the fields it sends), the rest keep these. Each param: (low, high, integer).
DETECTORS: dict[str, dict[str, Any]] = {
    # The same args digest blocked or deduplicated more than `count` times within `window_minutes`.
    "call_loop": {"mode": "contain", "count": 50, "window_minutes": 10},
    # Blocked calls at least `share` of the calls of the last `window_minutes`, once at least `min_calls` were made.
    "deny_spike": {"mode": "alert", "share": 0.5, "min_calls": 20, "window_minutes": 10},
    # Spend of the last `window_minutes` above `factor` × the agent's trailing 24-hour average for such a window,
    # once it is at least `min_spend_usd`.
    "spend_velocity": {"mode": "alert", "factor": 5.0, "min_spend_usd": 5.0, "window_minutes": 10},
    # The agent's first call of a high-risk tool (registry risk level, else the name heuristic).
    "first_high_risk_tool": {"mode": "alert"},
}
DETECTOR_PARAMS: dict[str, tuple[float, float, bool]] = {
    "count": (2, 100_000, True),
    "window_minutes": (1, 60, True),
    "share": (0.01, 1.0, False),
    "min_calls": (1, 100_000, True),
    "factor": (1.0, 1000.0, False),
    "min_spend_usd": (0.0, 1_000_000.0, False),
}


class Thresholds(Field[list[int] | None]):
    """``alert_thresholds``: the percentages of each cap at which a budget alert fires (each once per period),
    1–100, at most 10, kept sorted; ``[]`` turns budget alerts off."""

    def parse(self, value: Any) -> list[int]:
        if not isinstance(value, list) or len(value) > 10:
            raise Invalid("Must be a list of at most 10 whole percentages from 1 to 100.", "list_type")
        out: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float) or not 1 <= item <= 100 or item != int(item):
                raise Invalid(f"{item!r}: each threshold is a whole percentage from 1 to 100.", "int_type")
            out.add(int(item))
        return sorted(out)

    def openapi(self) -> dict[str, Any]:
        return {
            "type": "array",
            "maxItems": 10,
            "items": {"type": "integer", "minimum": 1, "maximum": 100},
            "default": ALERT_THRESHOLDS_DEFAULT,
        }


class Detectors(Field[dict[str, Any] | None]):
    """``detectors``: {detector: {"mode": "off" | "alert" | "contain", <its params>}} — only what differs from the
    defaults (``DETECTORS``) needs sending; problems at ``detectors.<name>.<param>``."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            check.fail(
                loc, f"Must be an object {{detector: {{mode, …}}}}; detectors: {', '.join(DETECTORS)}.", "dict_type"
            )
            return None
        out: dict[str, Any] = {}
        for name, settings in value.items():
            where = f"{loc}.{name}"
            if name not in DETECTORS:
                check.fail(where, f"Unknown detector. Detectors: {', '.join(DETECTORS)}.", "extra_forbidden")
                continue
            if not isinstance(settings, dict):
                check.fail(where, 'Must be an object, e.g. {"mode": "alert"}.', "dict_type")
                continue
            known = DETECTORS[name]
            kept: dict[str, Any] = {}
            for param, given in settings.items():
                if param not in known:
                    check.fail(f"{where}.{param}", f"Unknown setting. {name}: {', '.join(known)}.", "extra_forbidden")
                elif param == "mode":
                    if given not in DETECTOR_MODES:
                        check.fail(f"{where}.mode", f"One of: {', '.join(DETECTOR_MODES)}.", "enum")
                    else:
                        kept["mode"] = given
                else:
                    low, high, whole = DETECTOR_PARAMS[param]
                    number = given if isinstance(given, int | float) and not isinstance(given, bool) else None
                    if (
                        number is None
                        or number != number
                        or not low <= number <= high
                        or (whole and number != int(number))
                    ):
                        kind = "a whole number" if whole else "a number"
                        check.fail(
                            f"{where}.{param}",
                            f"Must be {kind} from {low:g} to {high:g}.",
                            "int_type" if whole else "float_type",
                        )
                    else:
                        kept[param] = int(number) if whole else round(float(number), 6)
            out[name] = kept
        return out

    def openapi(self) -> dict[str, Any]:
        properties = {}
        for name, defaults in DETECTORS.items():
            fields: dict[str, Any] = {
                "mode": {"type": "string", "enum": list(DETECTOR_MODES), "default": defaults["mode"]}
            }
            for param in defaults:
                if param != "mode":
                    low, high, whole = DETECTOR_PARAMS[param]
                    fields[param] = {
                        "type": "integer" if whole else "number",
                        "minimum": low,
                        "maximum": high,
                        "default": defaults[param],
                    }
            properties[name] = {"type": "object", "properties": fields, "additionalProperties": False}
        return {"type": "object", "properties": properties, "additionalProperties": False}


class PolicyInput(Body):
    """A policy upsert (and a template's overrides): the fields sent replace, an explicit null clears. Checked in
    the order sent, an unknown field where it stands; the dashboard's editor checks its policy here too."""

    partial = True
    agent_id = Ignored(description="Ignored (the SDK sends the path's agent id in the body too).")
    allowed_tools = ToolPatterns(description="Glob patterns; set (even empty) = only these. Agency plan.")
    blocked_tools = ToolPatterns()
    max_actions_per_hour = _count()
    max_spend_usd_per_day = Usd(rounded=True)
    max_calls_per_tool = CallCaps(
        description="{tool: calls per day}. Each key a tool name as in allowed_tools, and "
        "no two naming the same tool (matching ignores case and Unicode compatibility "
        "forms)."
    )
    pricing_rules = PricingRules()
    require_approval = ApprovalRules(
        description='Tool names or globs whose calls a person must approve first: "stripe.refund", or '
        '{"tool": "stripe.*", "over_usd": 50} for calls costing more than 50 USD.'
    )
    approval_ttl_seconds = Integer(
        60,
        APPROVAL_TTL_MAX,
        whole_floats=True,
        description=f"Seconds an approval request stays open, and an approval usable (default {APPROVAL_TTL_DEFAULT}).",
    )
    max_actions_per_run = _count(description="Actions (charged calls) per run id; a keyed run pauses at it.")
    max_spend_usd_per_run = Usd(rounded=True, description="Spend per run id (USD); a keyed run pauses at it.")
    max_calls_per_tool_per_run = _count(description="Calls of any one tool per run id; a keyed run pauses at it.")
    max_run_seconds = Integer(
        1,
        RUN_SECONDS_MAX,
        whole_floats=True,
        description="Seconds from a run id's first action after which its calls are blocked (a keyed run pauses).",
    )
    alert_thresholds = Thresholds(
        description="Percentages of each cap at which a budget alert fires, once per period (default "
        f"{ALERT_THRESHOLDS_DEFAULT}; [] = none)."
    )
    detectors = Detectors(
        description="Containment detectors: call_loop, deny_spike, spend_velocity, first_high_risk_tool, each "
        '{"mode": "off" | "alert" | "contain", …its settings}; unset ones keep their defaults.'
    )

    @classmethod
    def refuse_unknown(cls, check: BodyCheck, loc: str, names: list[str]) -> None:
        for name in names:
            check.fail(name, f"Unknown field. Policy fields: {', '.join(FIELDS)}.", "extra_forbidden")


FIELDS = tuple(name for name, field in PolicyInput.fields.items() if not isinstance(field, Ignored))


def clean_fields(data: Any) -> dict[str, Any]:
    """Validate policy fields. Returns {field: value or None} in the order sent; None means "clear this field".
    Raises 422."""
    return PolicyInput.parse(data).changes()


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
    for pattern in patterns:
        glob = _glob((pattern,))  # one pattern: never None
        if glob is not None and glob.match(name):
            return pattern
    return None


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
    out += [("require_approval", pattern, normalise_tool(pattern)) for pattern, _ in approval_entries(policy)]
    return [row for row in out if row[1] != row[2]]


def price_for(policy: dict[str, Any], tool: str) -> Decimal | None:
    """The price of the first pricing rule whose glob matches ``tool`` (a rule of 0 prices the tool at zero), or
    None when no rule names it (the registry's price applies then)."""
    for rule in policy.get("pricing_rules") or ():
        if fnmatch.fnmatchcase(tool, rule["tool"]):
            return Decimal(str(rule["price_usd"]))
    return None


def approval_entries(policy: dict[str, Any]) -> list[tuple[str, float | None]]:
    """``require_approval`` as (tool or glob, over_usd or None) pairs."""
    return [
        (entry, None) if isinstance(entry, str) else (entry["tool"], entry.get("over_usd"))
        for entry in policy.get("require_approval") or ()
    ]


def approval_rule(policy: dict[str, Any], tool: str, cost: Decimal) -> dict[str, Any] | None:
    """The first ``require_approval`` entry naming ``tool`` (as ``matches`` compares names) whose threshold, if any,
    ``cost`` exceeds, as ``{"tool": …, "over_usd": …}``; None: the call needs no approval."""
    for pattern, over in approval_entries(policy):
        if matches(tool, [pattern]) and (over is None or cost > Decimal(str(over))):
            return {"tool": pattern, "over_usd": over}
    return None


def alert_thresholds(policy: dict[str, Any]) -> list[int]:
    """The percentages of a cap at which the policy's budget alerts fire (the default when it sets none)."""
    thresholds = policy.get("alert_thresholds")
    return ALERT_THRESHOLDS_DEFAULT if thresholds is None else thresholds


def detector_settings(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every detector's settings under ``policy``: its defaults with what the policy sets replacing them."""
    chosen = policy.get("detectors") or {}
    return {name: {**defaults, **chosen.get(name, {})} for name, defaults in DETECTORS.items()}


def run_tool_cap(policy: dict[str, Any]) -> int:
    """``max_calls_per_tool_per_run``, or -1 when the policy sets none."""
    cap = policy.get("max_calls_per_tool_per_run")
    return -1 if cap is None else int(cap)


RUN_CAP_FIELDS = ("max_actions_per_run", "max_spend_usd_per_run", "max_calls_per_tool_per_run", "max_run_seconds")


_STRICTER_WHEN_LOWER = ("count", "share", "min_calls", "factor", "min_spend_usd")  # a detector fires sooner
MODE_RANK = {"off": 0, "alert": 1, "contain": 2}


def guard_loosening(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """What changing ``before`` into ``after`` takes away from the agent's runaway guards, in words (empty: nothing):
    a per-run cap raised or removed, a budget-alert threshold dropped, a detector's mode lowered or its setting moved
    so it fires later (a higher count, share, minimum or factor; a shorter window). Like the approval gate, an
    agent's own key may tighten them, not loosen them (docs/governance.md §"Who may loosen the guards")."""
    before, after = before or {}, after or {}
    found: list[str] = []
    for field in RUN_CAP_FIELDS:
        old, new = before.get(field), after.get(field)
        if old is not None and (new is None or new > old):
            found.append(f"{field} {'removed' if new is None else 'raised'}")
    dropped = sorted(set(alert_thresholds(before)) - set(alert_thresholds(after)))
    if dropped:
        found.append(f"alert_thresholds {', '.join(f'{n}%' for n in dropped)} removed")
    old_detectors, new_detectors = detector_settings(before), detector_settings(after)
    for name, old in old_detectors.items():
        new = new_detectors[name]
        if MODE_RANK[new["mode"]] < MODE_RANK[old["mode"]]:
            found.append(f"detectors.{name} mode {old['mode']} → {new['mode']}")
            continue
        if old["mode"] == "off":
            continue  # an off detector's settings guard nothing
        for param in _STRICTER_WHEN_LOWER:
            if param in old and new[param] > old[param]:
                found.append(f"detectors.{name}.{param} raised")
        if "window_minutes" in old and new["window_minutes"] < old["window_minutes"]:
            found.append(f"detectors.{name}.window_minutes shortened")
    return found


def approval_ttl(policy: dict[str, Any]) -> int:
    return int(policy.get("approval_ttl_seconds") or APPROVAL_TTL_DEFAULT)


def named_tools(policy: dict[str, Any]) -> set[str]:
    """The exact (non-glob) tool names a policy mentions, for the unknown-tool warnings."""
    names = set(policy.get("allowed_tools") or ()) | set(policy.get("blocked_tools") or ())
    names |= set(policy.get("max_calls_per_tool") or {})
    names |= {rule["tool"] for rule in policy.get("pricing_rules") or ()}
    names |= {pattern for pattern, _ in approval_entries(policy)}
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
