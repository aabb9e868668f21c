"""The tools registry (docs/api.md §"Tools registry"): validation, upsert with the plan's tool limit, lookup for
governed calls."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions, serializers

from billing.auth import PlanLimits
from billing.models import Account
from billing.services import audit_record
from governance import secrets, ssrf
from governance.models import Tool
from governance.policies import MAX_USD
from onceonly_site.identifiers import REGISTERED_NAME, identifier_problem, normalise_tool

# 1–200 ASCII letters, digits and `_ . : -`: no whitespace, control or look-alike character, no final newline.
NAME = REGISTERED_NAME
FIELDS = {"name", "url", "scope_id", "auth", "timeout_ms", "max_retries", "enabled", "description", "risk_level",
          "price_usd"}  # fmt: skip


class PlanLimitReached(Exception):
    def __init__(self, limit: int, plan: str) -> None:
        super().__init__(f"{plan} plan limit: at most {limit} tools")
        self.limit, self.plan = limit, plan


class ToolExists(Exception):
    """``tool_upsert(create_only=True)`` found the name, or a name equal to it once normalised, in the scope."""

    def __init__(self, tool: Tool) -> None:
        super().__init__(f"A tool named {tool.name!r} is already registered in scope {tool.scope_id}.")
        self.tool = tool


def valid_scope(scope_id: str) -> bool:
    if scope_id == "global":
        return True
    agent = scope_id.removeprefix("agent:")
    return (scope_id.startswith("agent:") and 0 < len(agent) <= 200 and agent.strip() == agent
            and identifier_problem(agent) is None)  # fmt: skip


def clean(data: Any) -> tuple[dict[str, Any], list[str]]:
    """Validate a tool body; returns (fields, warnings) or raises a 422 naming every bad field."""
    errors: dict[str, list] = {}

    def fail(field: str, message: str, code: str = "invalid") -> None:
        errors.setdefault(field, []).append(serializers.ErrorDetail(message, code=code))

    if not isinstance(data, dict):
        raise exceptions.ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for field in sorted(set(data) - FIELDS):
        fail(field, "Unknown field.", "extra_forbidden")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        fail("name", "Required: 1–200 characters of letters, digits, _ . : -", "string_pattern_mismatch")
    else:
        out["name"] = name
    scope_id = data.get("scope_id", "global")
    if not isinstance(scope_id, str) or not valid_scope(scope_id):
        fail("scope_id", 'Either "global" or "agent:<agent id>".', "string_pattern_mismatch")
    else:
        out["scope_id"] = scope_id
    url = data.get("url")
    if not isinstance(url, str) or not url or len(url) > 2000:
        fail("url", "Required: an http(s) URL of at most 2000 characters.", "url_type")
    else:
        try:
            checked = ssrf.check(url)
        except ssrf.RefusedUrl as refused:
            fail("url", str(refused), "url_refused")
        else:
            out["url"] = url
            if checked.warning:
                warnings.append(checked.warning)
    auth = data.get("auth")
    if auth is not None:
        secret = auth.get("secret") if isinstance(auth, dict) else None
        if (not isinstance(auth, dict) or set(auth) - {"type", "secret"}
                or auth.get("type", "hmac_sha256") != "hmac_sha256"
                or not isinstance(secret, str) or not 8 <= len(secret) <= 256):  # fmt: skip
            fail("auth", '{"type": "hmac_sha256", "secret": 8–256 characters}.', "invalid")
        else:
            out["secret"] = auth["secret"]
    for field, low, high in (("timeout_ms", 250, 120_000), ("max_retries", 0, 10)):
        if field not in data:
            continue  # omitted: a new tool gets the default, an existing one keeps its value
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            fail(field, f"A whole number from {low} to {high}.", "int_type")
        else:
            out[field] = value
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        fail("enabled", "true or false.", "bool_type")
    elif "enabled" in data:
        out["enabled"] = enabled
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 512:
        fail("description", "At most 512 characters.", "string_too_long")
    elif "description" in data:
        out["description"] = description
    risk = data.get("risk_level")
    if "risk_level" not in data:
        pass
    elif risk is not None and risk not in ("low", "medium", "high"):
        fail("risk_level", "low, medium or high.", "enum")
    else:
        out["risk_level"] = risk or ""
    price = data.get("price_usd")
    if price is not None and (
        isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price <= MAX_USD
    ):
        fail("price_usd", f"A number from 0 to {MAX_USD:,}.", "float_type")
    elif "price_usd" in data:
        out["price_usd"] = None if price is None else Decimal(str(price))
    if errors:
        raise exceptions.ValidationError(errors)
    return out, warnings


def tool_upsert(
    *, account_id: int, plan: PlanLimits, fields: dict[str, Any], actor: str, create_only: bool = False
) -> tuple[Tool, bool]:
    """Create or update (scope_id, name). A new tool counts against the plan's tool limit (402 plan_limit).
    ``create_only`` (the dashboard's "New tool") raises ToolExists instead of replacing a tool of that name."""
    secret = fields.pop("secret", None)
    with transaction.atomic():
        # Lock the account row: concurrent creates must not slip past the limit together.
        account = Account.objects.select_for_update().get(pk=account_id)
        # Names differing only in case are one tool to a policy and to a governed call (both compare
        # identifiers.normalise_tool forms): refuse a second one. The same query finds the tool itself (more than
        # one row only for the legacy twins of migration 0009). The check cannot race — the account row lock above
        # serialises this account's registrations — and governance_tool_unique_name_key backs it for any other
        # writer.
        key = normalise_tool(fields["name"])
        namesakes = list(Tool.objects.filter(account=account, scope_id=fields["scope_id"], name_key=key))
        tool = next((t for t in namesakes if t.name == fields["name"]), None)
        if create_only and namesakes:  # decided under the account row lock: no create can slip in between
            raise ToolExists(tool or namesakes[0])
        created = tool is None
        if created and namesakes:
            message = (f"A tool named {namesakes[0].name!r} is registered in this scope: names that differ only in "
                       "case are refused (policies and governed calls match tool names "
                       "case-insensitively).")  # fmt: skip
            raise exceptions.ValidationError({"name": [serializers.ErrorDetail(message, code="name_conflict")]})
        if created:
            if Tool.objects.filter(account=account).count() >= plan.tools_limit:
                raise PlanLimitReached(plan.tools_limit, plan.code)
            if secret is None:
                message = 'A new tool needs {"type": "hmac_sha256", "secret": …} to sign its calls.'
                raise exceptions.ValidationError({"auth": [serializers.ErrorDetail(message, code="missing")]})
            tool = Tool(account=account, name_key=key)
        for field, value in fields.items():
            setattr(tool, field, value)
        if secret is not None:
            tool.secret_encrypted, tool.secret_mask = secrets.encrypt(secret), secrets.mask(secret)
        tool.updated_at = timezone.now()
        tool.save()
        audit_record(account=account, actor_label=actor, action="governance.tool.saved", object_type="tool",
                     object_id=f"{tool.scope_id}/{tool.name}",
                     data={"created": created, "url": tool.url, "enabled": tool.enabled,
                           "secret_replaced": bool(secret)})  # fmt: skip
    return tool, created


def tool_toggle(*, tool: Tool, enabled: bool, actor: str) -> Tool:
    with transaction.atomic():
        tool.enabled, tool.updated_at = enabled, timezone.now()
        tool.save(update_fields=["enabled", "updated_at"])
        audit_record(account=tool.account, actor_label=actor, action="governance.tool.toggled", object_type="tool",
                     object_id=f"{tool.scope_id}/{tool.name}", data={"enabled": enabled})  # fmt: skip
    return tool


def tool_delete(*, tool: Tool, actor: str) -> None:
    with transaction.atomic():
        audit_record(account=tool.account, actor_label=actor, action="governance.tool.deleted", object_type="tool",
                     object_id=f"{tool.scope_id}/{tool.name}", data={"url": tool.url})  # fmt: skip
        tool.delete()
