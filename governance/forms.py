"""Dashboard forms of governance. They turn text inputs into the API's bodies, which validate them: policy fields
(policies.clean_fields), a tool (tools.clean), a test call's args; the limits of the tool form's inputs are those
bodies' declarations."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django import forms
from rest_framework import exceptions, serializers

from governance import policies
from governance.api import GovernedCallInput
from governance.tools import ToolAuthInput, ToolInput
from onceonly_site.api import parse_json_body
from onceonly_site.bodies import Invalid
from onceonly_site.identifiers import validate_identifier
from onceonly_site.params import MAX_USD, whole_number

MAX_VERSION = 2_147_483_647  # a policy version number (a positive integer column)


def _split(text: str) -> list[str]:
    """Lines end at \\n (or \\r\\n) only. str.splitlines() also ends them at U+2028, U+2029, U+001C–U+001E, U+0085,
    \\v and \\f: such a character now stays in its entry, which the name checks refuse, instead of silently making
    two entries of one. A comma is a character of a tool name (the API takes `a,b` as one name), not a separator."""
    return text.split("\n")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in _split(text) if line.strip()]


def _pairs(text: str, field: str) -> list[tuple[str, str]]:
    pairs = []
    for line in _split(text):
        if not line.strip():
            continue
        tool, sep, value = line.rpartition(":")
        if not sep or not tool.strip():
            raise forms.ValidationError(f"Write one “tool: number” per line ({field}).")
        pairs.append((tool.strip(), value.strip()))
    return pairs


# What the editor's number fields accept: ASCII digits only. int() and float() also read "1_000" and other scripts'
# digits ("١٢" is 12), float() exponents ("1.0e-9"), infinities and long runs of digits.
COUNT_RULE = (
    f"Must be a whole number from 0 to {policies.MAX_NUMBER:,}. Write it in ASCII digits 0–9, without "
    "separators or signs."
)
AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]{1,6})?", re.ASCII)
AMOUNT_RULE = (
    f"Must be a number from 0 to {MAX_USD:,}. Write it in ASCII digits 0–9 with at most 6 "
    "decimals after a point (12.50), without separators, signs or exponent."
)


def _count(text: str) -> int:
    value = whole_number(text, policies.MAX_NUMBER)
    if value is None:
        raise forms.ValidationError(COUNT_RULE)
    return value


def _ttl(text: str) -> int:
    """Seconds an approval stays open: what PolicyInput.approval_ttl_seconds takes, said in the editor's words."""
    field = policies.PolicyInput.approval_ttl_seconds
    value = whole_number(text, field.high)
    if value is None or value < field.low:
        raise forms.ValidationError(
            f"Must be a whole number of seconds from {field.low} to {field.high:,} (7 days). Write it in ASCII "
            "digits 0–9, without separators or signs."
        )
    return value


def _run_seconds(text: str) -> int:
    value = whole_number(text, policies.RUN_SECONDS_MAX)
    if value is None or value < 1:
        raise forms.ValidationError(
            f"Must be a whole number of seconds from 1 to {policies.RUN_SECONDS_MAX:,} (30 days), in ASCII digits."
        )
    return value


def _thresholds(text: str) -> list[Any]:
    """ "50, 80, 95" → [50, 80, 95]; "none" → [] (no alerts). The policy field checks the numbers."""
    if text.strip().lower() in ("none", "off", "[]"):
        return []
    out: list[Any] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().rstrip("%").strip()
        if part:
            number = whole_number(part, 100)
            out.append(number if number is not None else part)
    return out


def _thresholds_text(value: Any) -> str:
    if value is None:
        return ""
    return ", ".join(str(n) for n in value) if value else "none"


def _detectors(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise forms.ValidationError(
            'Must be a JSON object, e.g. {"call_loop": {"mode": "alert"}} (double quotes around names).'
        ) from None


def _amount(text: str) -> float:
    """At most 6 decimals: amounts are kept to the millionth of a dollar, so "0.0000001" would be 0. A long run of
    digits is infinity for float(), which clean_fields refuses."""
    if not AMOUNT.fullmatch(text):
        raise forms.ValidationError(AMOUNT_RULE)
    return float(text)


def _amount_text(value: Any) -> str:
    """A stored amount as the editor accepts it back: 1e-06 is written 0.000001."""
    return format(Decimal(str(value)), "f") if isinstance(value, float) else str(value)


# A line of "Require approval for": a tool name or glob, or one with a threshold, "stripe.* > 50" (spaces around
# ">": a tool name has no whitespace, but may hold ">"). "over" reads as well as ">", and "$50" as "50".
APPROVAL_LINE = re.compile(r"(?P<tool>\S+)\s+(?:>|over)\s+\$?(?P<amount>\S+)", re.ASCII)
APPROVAL_RULE = (
    "Write one tool name or glob per line, or “tool > amount” (with spaces around >) to ask only for calls "
    "costing more than that many USD."
)
SQUEEZED_THRESHOLD = re.compile(r"\S*[^\s>]>\$?[0-9.]+|\S+>", re.ASCII)


def _approval_lines(text: str) -> list[Any]:
    """The "Require approval for" text as policy entries: "stripe.refund" or {"tool": "stripe.*", "over_usd": 50}."""
    entries: list[Any] = []
    for line in _lines(text):
        threshold = APPROVAL_LINE.fullmatch(line)
        if threshold is not None:
            try:
                entries.append({"tool": threshold["tool"], "over_usd": _amount(threshold["amount"])})
            except forms.ValidationError as exc:
                raise forms.ValidationError(f"{threshold['tool']}: {exc.messages[0]}") from None
        elif len(line.split()) != 1 or SQUEEZED_THRESHOLD.fullmatch(line):
            raise forms.ValidationError(f"“{line}”: {APPROVAL_RULE}")
        else:
            entries.append(line)
    return entries


def _approval_text(entries: list[Any]) -> str:
    return "\n".join(
        pattern if over is None else f"{pattern} > {_amount_text(over)}"
        for pattern, over in policies.approval_entries({"require_approval": entries})
    )


# An empty allow-list is a policy that blocks every call: never saved by accident (issue 20), only by this choice.
DENY_ALL_LABEL = "Block every tool (deny all)"
DENY_ALL_REFUSAL = (
    "The allow-list is empty: with “Only allow the tools listed below” ticked, this agent could call no tool at "
    f"all. List the tools to allow, untick “Only allow the tools listed below”, or tick “{DENY_ALL_LABEL}” if "
    "that is what you mean."
)
DENY_ALL_CONFLICT = f"“{DENY_ALL_LABEL}” is ticked but tools are listed as allowed: untick it, or empty the list."


def _number(low: int | float, high: int | float, step: str) -> forms.NumberInput:
    """A real number input whose bounds are the policy field's (policies.PolicyInput); the server checks them
    again — the page is submitted without the browser's validation, so its own messages are shown."""
    return forms.NumberInput(attrs={"min": low, "max": high, "step": step})


class PolicyForm(forms.Form):
    restrict_tools = forms.BooleanField(required=False, label="Only allow the tools listed below")
    allowed_tools = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "data-tool-list": "allowed_tools"}),
        label="Allowed tools",
        help_text="One per line; globs like stripe.* allowed. Matched ignoring case (DELETE_USER is delete_user).",
    )
    deny_all = forms.BooleanField(
        required=False,
        label=DENY_ALL_LABEL,
        help_text="Every call of this agent is refused (an empty allow-list), whatever the lists say. Only with "
        "this box ticked is an empty allow-list saved.",
    )
    blocked_tools = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "data-tool-list": "blocked_tools"}),
        label="Blocked tools",
        help_text="One per line; blocked wins over allowed. Matched ignoring case (DELETE_USER is delete_user).",
    )
    max_actions_per_hour = forms.CharField(
        required=False,
        widget=_number(0, policies.MAX_NUMBER, "1"),
        label="Max actions per hour",
        help_text=f"Rolling 60 minutes, a whole number from 0 to {policies.MAX_NUMBER:,}; empty = no limit.",
    )
    max_spend_usd_per_day = forms.CharField(
        required=False,
        widget=_number(0, MAX_USD, "0.000001"),
        label="Max spend per day (USD)",
        help_text=f"UTC day, from 0 to {MAX_USD:,} with at most 6 decimals; empty = no limit.",
    )
    max_calls_per_tool = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Max calls per tool per day",
        help_text="“send_email: 50” per line.",
    )
    pricing_rules = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        label="Pricing rules",
        help_text="“stripe.*: 0.25” per line (USD per call).",
    )
    require_approval = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "data-tool-list": "require_approval"}),
        label="Require approval for",
        help_text="A person approves each call of these tools first (on the Approvals page); the agent's identical "
        "retry then runs once. One tool name or glob per line (stripe.refund, *delete*), or “stripe.* > 50” for "
        "only the calls costing more than 50 USD. Matched ignoring case.",
    )
    approval_ttl_seconds = forms.CharField(
        required=False,
        widget=_number(policies.PolicyInput.approval_ttl_seconds.low, policies.APPROVAL_TTL_MAX, "1"),
        label="Approval expires after (seconds)",
        help_text=f"How long a request waits for a person, and an approval stays usable: "
        f"{policies.PolicyInput.approval_ttl_seconds.low} to {policies.APPROVAL_TTL_MAX:,} seconds (7 days); "
        f"empty = {policies.APPROVAL_TTL_DEFAULT:,} (1 hour).",
    )
    max_actions_per_run = forms.CharField(
        required=False,
        widget=_number(0, policies.MAX_NUMBER, "1"),
        label="Max actions per run",
        help_text="Charged calls carrying one run id (args.run_id, a keyed run's actions); a keyed run pauses at it "
        "until raised and resumed. Empty = no limit.",
    )
    max_spend_usd_per_run = forms.CharField(
        required=False,
        widget=_number(0, MAX_USD, "0.000001"),
        label="Max spend per run (USD)",
        help_text="Spend of one run id, at most 6 decimals; empty = no limit.",
    )
    max_calls_per_tool_per_run = forms.CharField(
        required=False,
        widget=_number(0, policies.MAX_NUMBER, "1"),
        label="Max calls of any one tool per run",
        help_text="Empty = no limit.",
    )
    max_run_seconds = forms.CharField(
        required=False,
        widget=_number(1, policies.RUN_SECONDS_MAX, "1"),
        label="Max run seconds",
        help_text=f"From a run id's first action, 1 to {policies.RUN_SECONDS_MAX:,} (30 days); empty = no limit.",
    )
    alert_thresholds = forms.CharField(
        required=False,
        label="Budget alert thresholds (%)",
        help_text="Percentages of each cap at which an alert fires, once per period, e.g. “50, 80, 95, 100”; empty "
        "= those defaults; “none” = no budget alerts.",
    )
    detectors = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        label="Containment detectors (JSON)",
        help_text='Only what differs from the defaults, e.g. {"call_loop": {"mode": "alert"}, "deny_spike": '
        '{"mode": "contain", "share": 0.8}}. Detectors: call_loop, deny_spike, spend_velocity, '
        "first_high_risk_tool; modes off, alert, contain. Empty = the defaults.",
    )
    base_version = forms.IntegerField(required=False, min_value=1, max_value=MAX_VERSION, widget=forms.HiddenInput)

    @classmethod
    def from_policy(cls, policy: dict[str, Any] | None, version: int | None) -> PolicyForm:
        policy = policy or {}
        return cls(
            initial={
                "restrict_tools": policy.get("allowed_tools") is not None,
                "deny_all": policy.get("allowed_tools") == [],
                "allowed_tools": "\n".join(policy.get("allowed_tools") or []),
                "blocked_tools": "\n".join(policy.get("blocked_tools") or []),
                "max_actions_per_hour": policy.get("max_actions_per_hour", ""),
                "max_spend_usd_per_day": _amount_text(policy.get("max_spend_usd_per_day", "")),
                "max_calls_per_tool": "\n".join(
                    f"{k}: {v}" for k, v in (policy.get("max_calls_per_tool") or {}).items()
                ),
                "pricing_rules": "\n".join(
                    f"{r['tool']}: {_amount_text(r['price_usd'])}" for r in policy.get("pricing_rules") or []
                ),
                "require_approval": _approval_text(policy.get("require_approval") or []),
                "approval_ttl_seconds": policy.get("approval_ttl_seconds", ""),
                "max_actions_per_run": policy.get("max_actions_per_run", ""),
                "max_spend_usd_per_run": _amount_text(policy.get("max_spend_usd_per_run", "")),
                "max_calls_per_tool_per_run": policy.get("max_calls_per_tool_per_run", ""),
                "max_run_seconds": policy.get("max_run_seconds", ""),
                "alert_thresholds": _thresholds_text(policy.get("alert_thresholds")),
                "detectors": json.dumps(policy["detectors"]) if policy.get("detectors") else "",
                "base_version": version,
            }
        )

    def carried(self) -> list[tuple[str, str]]:
        """The submitted fields as the confirm step posts them back (hidden), less ``deny_all``, which the confirm
        step asks for itself."""
        return [
            (name, str(self.data.get(name, ""))) for name in self.fields if name != "deny_all" and name in self.data
        ]

    def tool_lists(self) -> dict[str, list[tuple[str, str]]]:
        """The three tool lists as typed — (tool or glob, line) each, at most policies.MAX_LIST — for the chips
        under their fields, read leniently: a line the form refuses is still shown."""
        source = self.data if self.is_bound else self.initial
        lists: dict[str, list[tuple[str, str]]] = {}
        for name in ("allowed_tools", "blocked_tools", "require_approval"):
            lines = _lines(str(source.get(name) or ""))[: policies.MAX_LIST]
            if name == "require_approval":
                lists[name] = [(m["tool"] if (m := APPROVAL_LINE.fullmatch(line)) else line, line) for line in lines]
            else:
                lists[name] = [(line, line) for line in lines]
        return lists

    def normalised_entries(self) -> list[dict[str, str]]:
        """The tool entries whose normalised form — the one calls are matched against (policies.matches) — differs
        from what was typed, e.g. DELETE_USER → delete_user: shown under the editor's fields."""
        source = self.data if self.is_bound else self.initial
        text = {
            name: str(source.get(name) or "")
            for name in ("allowed_tools", "blocked_tools", "max_calls_per_tool", "pricing_rules", "require_approval")
        }
        policy: dict[str, Any] = {
            "allowed_tools": _lines(text["allowed_tools"]),
            "blocked_tools": _lines(text["blocked_tools"]),
        }
        try:
            policy["max_calls_per_tool"] = dict(_pairs(text["max_calls_per_tool"], "calls"))
            policy["pricing_rules"] = [{"tool": t} for t, _ in _pairs(text["pricing_rules"], "pricing")]
            policy["require_approval"] = [
                entry if isinstance(entry, str) else {"tool": entry["tool"]}
                for entry in _approval_lines(text["require_approval"])
            ]
        except forms.ValidationError:
            pass  # the form reports the malformed line; the names of the lists are still shown
        return [
            {"field": str(self.fields[field].label), "entry": entry, "normalised": normalised}
            for field, entry, normalised in policies.normalised_entries(policy)
        ]

    def _calls(self, text: str) -> dict[str, int]:
        caps: dict[str, int] = {}
        for tool, value in _pairs(text, "calls"):
            if tool in caps:  # a dict would keep the last one silently (names equal once normalised: clean_fields)
                raise forms.ValidationError(f"{tool!r} is listed twice: one cap per tool.")
            try:
                caps[tool] = _count(value)
            except forms.ValidationError as exc:
                raise forms.ValidationError(f"{tool}: {exc.messages[0]}") from None
        return caps

    def _pricing(self, text: str) -> list[dict[str, Any]]:
        rules = []
        for tool, value in _pairs(text, "pricing"):
            try:
                rules.append({"tool": tool, "price_usd": _amount(value)})
            except forms.ValidationError as exc:
                raise forms.ValidationError(f"{tool}: {exc.messages[0]}") from None
        return rules

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data  # what Form.clean returns (its stubs allow None)
        if self.has_error("base_version"):  # a hidden field: its error would not be shown
            self.add_error(None, "This page's policy version is not a version number: reload the page.")
        raw: dict[str, Any] = {}
        allowed = _lines(data.get("allowed_tools", ""))
        if data.get("deny_all"):  # the explicit choice, whether "Only allow…" is ticked or not
            if allowed:
                self.add_error("deny_all", DENY_ALL_CONFLICT)
            raw["allowed_tools"] = []
        elif data.get("restrict_tools"):
            if not allowed:
                self.add_error("allowed_tools", DENY_ALL_REFUSAL)
            raw["allowed_tools"] = allowed
        if _lines(data.get("blocked_tools", "")):
            raw["blocked_tools"] = _lines(data["blocked_tools"])
        parsers = {
            "max_actions_per_hour": _count,
            "max_spend_usd_per_day": _amount,
            "max_calls_per_tool": self._calls,
            "pricing_rules": self._pricing,
            "require_approval": _approval_lines,
            "approval_ttl_seconds": _ttl,
            "max_actions_per_run": _count,
            "max_spend_usd_per_run": _amount,
            "max_calls_per_tool_per_run": _count,
            "max_run_seconds": _run_seconds,
            "alert_thresholds": _thresholds,
            "detectors": _detectors,
        }
        for name, parse in parsers.items():
            text = str(data.get(name) or "").strip()
            if text:
                try:
                    raw[name] = parse(text)
                except forms.ValidationError as exc:
                    self.add_error(name, exc)
        try:
            data["policy"] = policies.clean_fields(raw)
        except Exception as exc:  # rest_framework ValidationError with per-field messages
            detail = getattr(exc, "detail", None)
            if not isinstance(detail, dict):
                raise
            for field, messages in detail.items():
                target = field.split(".")[0]
                for message in messages:
                    self.add_error(target if target in self.fields else None, str(message))
        return data


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=500,
        label="Reason (recorded in the audit log)",
        error_messages={"required": "Say why: the reason is kept in the audit log."},
    )
    confirm = forms.BooleanField(
        label="I understand this takes effect on the agent's very next call",
        error_messages={"required": "Tick the confirmation box."},
    )


class ApprovalDecisionForm(forms.Form):
    """Approve or deny a pending approval (governance/approval_views.py): a reason is optional to approve and
    required to deny (the agent is answered it, and it is audited)."""

    action = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    reason = forms.CharField(
        validators=[validate_identifier],
        required=False,
        max_length=1000,
        label="Reason (recorded in the audit log)",
        error_messages={"max_length": "At most 1,000 characters."},
    )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        data["reason"] = (data.get("reason") or "").strip()
        if data.get("action") == "deny" and not data["reason"]:
            self.add_error("reason", "Say why it is denied: the agent is answered this reason, and it is audited.")
        return data


class ToolForm(forms.Form):
    """Create/edit a registered tool. The secret is write-only: empty on edit keeps the stored one."""

    name = forms.CharField(
        max_length=ToolInput.name.max_length, help_text="Letters, digits and _ . : - (e.g. stripe.charge)."
    )
    scope_id = forms.CharField(
        max_length=210, initial="global", label="Scope", help_text='"global", or "agent:<agent id>" for one agent only.'
    )
    url = forms.CharField(
        max_length=ToolInput.url.max_length, label="URL", help_text="http(s); calls are POSTed here, signed."
    )
    secret = forms.CharField(
        required=False,
        max_length=ToolAuthInput.secret.max_length,
        widget=forms.PasswordInput(render_value=False),
        label="Signing secret",
        help_text=f"{ToolAuthInput.secret.min_length}–{ToolAuthInput.secret.max_length} characters. Leave empty to "
        "keep the current one.",
    )
    timeout_ms = forms.IntegerField(
        initial=15000, label="Timeout (ms)", min_value=ToolInput.timeout_ms.low, max_value=ToolInput.timeout_ms.high
    )
    max_retries = forms.IntegerField(
        initial=2, label="Retries", min_value=ToolInput.max_retries.low, max_value=ToolInput.max_retries.high
    )
    enabled = forms.BooleanField(required=False, initial=True)
    description = forms.CharField(required=False, max_length=ToolInput.description.max_length)
    risk_level = forms.ChoiceField(
        required=False, choices=[("", "by name"), ("low", "low"), ("medium", "medium"), ("high", "high")]
    )
    price_usd = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=6, label="Price per call (USD)"
    )

    def to_body(self) -> dict:
        data = self.cleaned_data
        body = {k: data[k] for k in ("name", "scope_id", "url", "timeout_ms", "max_retries", "enabled", "description")}
        if data.get("secret"):
            body["auth"] = {"type": "hmac_sha256", "secret": data["secret"]}
        if data.get("risk_level"):
            body["risk_level"] = data["risk_level"]
        if data.get("price_usd") is not None:
            body["price_usd"] = float(data["price_usd"])
        return body


SAMPLES = {"string": "example", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


def sample_args(schema: Any) -> str:
    """A test call's starting args: for a tool with an input schema (an MCP tool's), its properties — the required
    ones, else all — with a value of their type (their first enum value, or default, when they have one)."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return '{"example": true}'
    required = [name for name in schema.get("required") or [] if name in properties] or list(properties)
    sample: dict[str, Any] = {}
    for name in required[:20]:
        spec = properties[name] if isinstance(properties[name], dict) else {}
        kind = spec.get("type")
        if "default" in spec:
            sample[name] = spec["default"]
        elif isinstance(spec.get("enum"), list) and spec["enum"]:
            sample[name] = spec["enum"][0]
        else:
            sample[name] = SAMPLES.get(kind if isinstance(kind, str) else "string", "example")
    return json.dumps(sample)


class TestCallForm(forms.Form):
    args = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), initial='{"example": true}', label="Sample args (JSON object)"
    )

    def clean_args(self) -> dict:
        """What the governed call would accept as its ``args`` (governance/api.py): JSON an API body may hold (depth,
        NaN, text a database can store: onceonly_site.api.parse_json_body), an object of at most 64 KB that RFC 8785
        can hash (integers within ±(2^53−1)). json.loads alone let "[[[…" overflow the stack and 10**400 reach the
        hash: two 500s."""
        try:
            value = parse_json_body(self.cleaned_data["args"].encode())
        except exceptions.ParseError as exc:
            raise forms.ValidationError(f"Not JSON: {exc.detail}") from None
        except exceptions.ValidationError as exc:  # a literal null (type_error), or text no database can store
            first = _first_message(exc.detail)
            raise forms.ValidationError(
                "Must be a JSON object." if first.code == "type_error" else str(first)
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Must be a JSON object.")
        try:
            GovernedCallInput.args.parse(value)  # the object's checks (the run_id in it is not looked at here)
        except Invalid as problem:
            raise forms.ValidationError(problem.message) from None
        return value


def _first_message(detail: Any) -> serializers.ErrorDetail:
    """The first message of a DRF error detail (a dict or list of them)."""
    while isinstance(detail, dict | list):
        detail = next(iter(detail.values())) if isinstance(detail, dict) else detail[0]
    return detail
