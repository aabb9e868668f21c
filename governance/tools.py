"""The tools registry (docs/api.md §"Tools registry"): the body of a tool (its validation and schema), upsert with the
plan's tool limit, lookup for governed calls."""

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
from onceonly_site.api import BodyCheck
from onceonly_site.bodies import AgentId, Body, Boolean, Choice, Integer, Nested, RegisteredName, String, Text, Usd
from onceonly_site.identifiers import REGISTERED_NAME, normalise_tool
from onceonly_site.openapi import SCOPE_PATTERN, URL_PATTERN
from onceonly_site.params import MAX_USD

# 1–200 ASCII letters, digits and `_ . : -`: no whitespace, control or look-alike character, no final newline.
NAME = REGISTERED_NAME


class PlanLimitReached(Exception):
    def __init__(self, limit: int, plan: str) -> None:
        super().__init__(f"{plan} plan limit: at most {limit} tools")
        self.limit, self.plan = limit, plan


class ToolExists(Exception):
    """``tool_upsert(create_only=True)`` found the name, or a name equal to it once normalised, in the scope."""

    def __init__(self, tool: Tool) -> None:
        super().__init__(f"A tool named {tool.name!r} is already registered in scope {tool.scope_id}.")
        self.tool = tool


AGENT_ID = AgentId()
SCOPE_PREFIX = "agent:"


def valid_scope(scope_id: str) -> bool:
    """``global``, or ``agent:`` and an agent id without whitespace around it."""
    if scope_id == "global":
        return True
    agent = scope_id.removeprefix(SCOPE_PREFIX)
    return scope_id.startswith(SCOPE_PREFIX) and agent.strip() == agent and AGENT_ID.valid(agent)


def _scope_problem(scope_id: str) -> str | None:
    return None if valid_scope(scope_id) else "not a scope"


SCOPE_RULE = ('Either "global" or "agent:<agent id>".', "string_pattern_mismatch")


class Scope(String[str]):
    """A registry scope: "global" (the default) or "agent:<agent id>" (in a tool's body and the ``scope_id`` query
    parameter alike)."""

    rules = (_scope_problem,)
    pattern = SCOPE_PATTERN

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            len(SCOPE_PREFIX) + AgentId.MAX_LENGTH,
            required=False,
            nullable=False,
            default="global",
            invalid=SCOPE_RULE,
            refused=SCOPE_RULE,
            description='"global" (default) or "agent:<agent id>"',
            **kwargs,
        )


class ScopeQuery(Body):
    """``?scope_id=`` of the registry's endpoints."""

    strict = False
    scope_id = Scope()


class ToolAuthInput(Body):
    type = Choice(["hmac_sha256"], nullable=False)
    secret: String[str] = String(256, min_length=8, blank=True)


NAME_RULE = ("Required: 1–200 characters of letters, digits, _ . : -", "string_pattern_mismatch")
URL_HELP = (
    "http(s), no credentials. It must not point at a private, loopback or link-local address (by name or "
    "literal) unless the operator allows them, and http:// needs ONCEONLY_ALLOW_HTTP_TOOL_URLS or a private "
    "address (docs/security.md)."
)
RISK_LEVELS = ["low", "medium", "high"]


class ToolInput(Body):
    """A tool as the API and the dashboard's editor register it (``clean``)."""

    not_object = ("The request body must be a JSON object.", "invalid")
    name: RegisteredName[str] = RegisteredName(invalid=NAME_RULE, refused=NAME_RULE)
    scope_id = Scope()
    url: String[str] = String(
        2000,
        min_length=1,
        blank=True,
        pattern=URL_PATTERN,
        description=URL_HELP,
        invalid=("Required: an http(s) URL of at most 2000 characters.", "url_type"),
    )
    auth = Nested(ToolAuthInput, invalid=('{"type": "hmac_sha256", "secret": 8–256 characters}.', "invalid"))
    timeout_ms = Integer(250, 120_000, nullable=False)
    max_retries = Integer(0, 10, nullable=False)
    enabled = Boolean(nullable=False, default=True, invalid=("true or false.", "bool_type"))
    description = Text(512, nullable=False, default="", invalid=("At most 512 characters.", "string_too_long"))
    risk_level = Choice(RISK_LEVELS, invalid=("low, medium or high.", "enum"))
    price_usd = Usd(invalid=(f"A number from 0 to {MAX_USD:,}.", "float_type"))

    url_warning: str | None = None

    def clean_url(self, check: BodyCheck, loc: str, url: str) -> str | None:
        """Where the URL may point (governance/ssrf.py): refused, or allowed with a warning."""
        try:
            checked = ssrf.check(url)
        except ssrf.RefusedUrl as refused:
            check.fail(loc, str(refused), "url_refused")
            return None
        self.url_warning = checked.warning
        return url


def clean(data: Any) -> tuple[dict[str, Any], list[str]]:
    """Validate a tool body; returns (fields, warnings) or raises a 422 naming every bad field. The fields: name,
    scope_id and url always, the secret when ``auth`` is sent, the others when they are sent (a new tool gets the
    defaults, an existing one keeps its values)."""
    tool = ToolInput.parse(data)
    out: dict[str, Any] = {"name": tool.name, "scope_id": tool.scope_id, "url": tool.url}
    if tool.auth is not None:
        out["secret"] = tool.auth.secret
    out.update(
        (name, getattr(tool, name))
        for name in ("timeout_ms", "max_retries", "enabled", "description")
        if name in tool.sent
    )
    if "risk_level" in tool.sent:
        out["risk_level"] = tool.risk_level or ""
    if "price_usd" in tool.sent:
        out["price_usd"] = None if tool.price_usd is None else Decimal(str(tool.price_usd))
    return out, [tool.url_warning] if tool.url_warning else []


def mcp_tool_refused(tool: Tool, *, deleting: bool = False) -> str:
    """Why a tool of an upstream MCP server is not replaced (or deleted) as a webhook tool is: its URL, description
    and schema are its server's and it is never retried (governance/mcp_servers.py); a deleted one comes back at the
    next discovery. The message names the server and the endpoints that do change it."""
    server = tool.mcp_server.name if tool.mcp_server is not None else tool.name.partition(".")[0]
    endpoint = f"/v1/mcp/servers/{server}/tools/{tool.remote_name}"
    if deleting:
        return (
            f"{tool.name!r} is a tool of the MCP server {server!r}: its next discovery would register it again. "
            f"Disable it (POST /v1/tools/{tool.name}/toggle or PATCH {endpoint}), or delete the server "
            f"(DELETE /v1/mcp/servers/{server})."
        )
    return (
        f"{tool.name!r} is a tool of the MCP server {server!r}: its URL, description and schema are the server's "
        f"and it is never retried. Set its price, risk level, timeout or state with PATCH {endpoint}."
    )


def tool_upsert(
    *, account_id: int, plan: PlanLimits, fields: dict[str, Any], actor: str, create_only: bool = False
) -> tuple[Tool, bool]:
    """Create or update (scope_id, name). A new tool counts against the plan's tool limit (402 plan_limit).
    ``create_only`` (the dashboard's "New tool") raises ToolExists instead of replacing a tool of that name. A tool
    of an upstream MCP server is refused (422 ``mcp_tool``: ``mcp_tool_refused``), its server owns it."""
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
        if tool is not None and tool.kind == "mcp":  # not the API's to replace: nothing is written
            message = mcp_tool_refused(tool)
            raise exceptions.ValidationError({"name": [serializers.ErrorDetail(message, code="mcp_tool")]})
        created = tool is None
        if created and namesakes:
            message = (
                f"A tool named {namesakes[0].name!r} is registered in this scope: names that differ only in "
                "case are refused (policies and governed calls match tool names "
                "case-insensitively)."
            )
            raise exceptions.ValidationError({"name": [serializers.ErrorDetail(message, code="name_conflict")]})
        if tool is None:  # created
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
        audit_record(
            account=account,
            actor_label=actor,
            action="governance.tool.saved",
            object_type="tool",
            object_id=f"{tool.scope_id}/{tool.name}",
            data={"created": created, "url": tool.url, "enabled": tool.enabled, "secret_replaced": bool(secret)},
        )
    return tool, created


def tool_toggle(*, tool: Tool, enabled: bool, actor: str) -> Tool:
    with transaction.atomic():
        tool.enabled, tool.updated_at = enabled, timezone.now()
        tool.save(update_fields=["enabled", "updated_at"])
        audit_record(
            account=tool.account,
            actor_label=actor,
            action="governance.tool.toggled",
            object_type="tool",
            object_id=f"{tool.scope_id}/{tool.name}",
            data={"enabled": enabled},
        )
    return tool


def tool_delete(*, tool: Tool, actor: str) -> None:
    with transaction.atomic():
        audit_record(
            account=tool.account,
            actor_label=actor,
            action="governance.tool.deleted",
            object_type="tool",
            object_id=f"{tool.scope_id}/{tool.name}",
            data={"url": tool.url},
        )
        tool.delete()
