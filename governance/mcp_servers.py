"""Upstream MCP servers in the tools registry (docs/mcp.md §"Upstream MCP servers"): register one (its URL through
the tools' SSRF guard, its auth header's value encrypted like tool secrets), discover its tools (``tools/list``) and
keep one global tool per remote tool, named ``<server>.<tool>``, in step with what the server lists.

Discovery talks to the upstream outside any transaction (a slow server must not hold the account's row), then syncs
the tool rows in one transaction under the account row's lock — the lock ``tools.tool_upsert`` takes, so the plan's
tool limit and the one-tool-per-normalised-name rule hold against concurrent registrations. A tool the server no
longer lists is disabled, never deleted by a discovery: its decisions, approvals and the operator's price and risk
refer to it by name. Each write is audited (billing.services.audit_record), as tool writes are.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone
from rest_framework import exceptions, serializers

from billing.models import Account
from billing.services import audit_record
from governance import mcp_upstream, secrets, ssrf
from governance.models import McpServer, Tool
from onceonly_site.api import BodyCheck
from onceonly_site.bodies import Body, Boolean, Choice, Integer, String, Usd
from onceonly_site.identifiers import REGISTERED_NAME, control_problem, normalise_tool
from onceonly_site.openapi import URL_PATTERN
from onceonly_site.params import MAX_USD

logger = logging.getLogger(__name__)

NAME_MAX = 64
NAME_RE = re.compile(rf"[a-z0-9_-]{{1,{NAME_MAX}}}\Z")
NAME_PATTERN = r"^[a-z0-9_-]+$"  # and at most NAME_MAX characters (the field's maxLength)
NAME_RULE = (
    f"Required: 1–{NAME_MAX} lowercase letters, digits, '-' and '_' (the prefix of its tools' names).",
    "string_pattern_mismatch",
)
# An HTTP field name (RFC 9110 token).
HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}\Z")
HEADER_NAME_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
# Headers the gateway sets itself on every request to the upstream (docs/mcp.md): not an auth header's to replace.
RESERVED_HEADERS = frozenset(
    {
        "accept",
        "connection",
        "content-length",
        "content-type",
        "host",
        "mcp-protocol-version",
        "mcp-session-id",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_HEADER_VALUE = 4096
REMOTE_NAME_MAX: int = Tool._meta.get_field("remote_name").max_length or 128
DESCRIPTION_MAX = Tool._meta.get_field("description").max_length
LAST_ERROR_MAX: int = McpServer._meta.get_field("last_error").max_length or 512
AUDIT_NAMES = 50  # tool names listed in a discovery's audit entry (the counts are always whole)
URL_HELP = (
    "The server's Streamable HTTP endpoint (e.g. https://mcp.example.com/mcp): http(s), no credentials, not a "
    "private, loopback or link-local address unless the operator allows them (docs/security.md); checked again at "
    "every connection."
)


class ServerExists(Exception):
    """An MCP server of that name is already registered in the account."""

    def __init__(self, server: McpServer) -> None:
        super().__init__(f"An MCP server named {server.name!r} is already registered.")
        self.server = server


def _name_problem(value: str) -> str | None:
    return None if NAME_RE.match(value) else NAME_RULE[0]


def _header_name_problem(value: str) -> str | None:
    if not HEADER_NAME_RE.match(value):
        return "An HTTP header name: 1–100 letters, digits and !#$%&'*+-.^_`|~ (e.g. Authorization)."
    if value.lower() in RESERVED_HEADERS:
        return f"{value} is a header the gateway sets itself; use another one (e.g. Authorization)."
    return None


def _server_name(*, required: bool) -> String:
    return String(
        NAME_MAX, rules=(_name_problem,), pattern=NAME_PATTERN, invalid=NAME_RULE, refused=NAME_RULE, required=required
    )


def _url(*, required: bool) -> String:
    return String(
        2000,
        min_length=1,
        pattern=URL_PATTERN,
        description=URL_HELP,
        required=required,
        nullable=False,
        invalid=("Required: an http(s) URL of at most 2000 characters.", "url_type"),
    )


def _header_name() -> String:
    return String(
        100,
        required=False,
        nullable=False,
        rules=(_header_name_problem,),
        pattern=HEADER_NAME_PATTERN,
        description="The header that carries the credential (default Authorization).",
    )


def _ascii_problem(value: str) -> str | None:
    """An HTTP header value is sent as bytes: printable ASCII only (a "…" pasted from an example could not be)."""
    if value.isascii():
        return None
    return "Printable ASCII only: an HTTP header cannot carry this text (was it pasted with a placeholder like …?)."


def _header_value() -> String:
    return String(
        MAX_HEADER_VALUE,
        required=False,
        nullable=False,
        blank=True,
        rules=(control_problem, _ascii_problem),
        pattern="^[ -~]*$",  # printable ASCII, as _ascii_problem and control_problem check it
        description='Its value, e.g. "Bearer …": write-only, stored encrypted, shown masked. Empty: no auth header.',
    )


class _UrlChecked(Body):
    url_warning: str | None = None

    def clean_url(self, check: BodyCheck, loc: str, url: str) -> str | None:
        """Where the URL may point (governance/ssrf.py): refused, or allowed with a warning (it does not resolve)."""
        try:
            checked = ssrf.check(url)
        except ssrf.RefusedUrl as refused:
            check.fail(loc, str(refused), "url_refused")
            return None
        self.url_warning = checked.warning or None
        return url


class ServerInput(_UrlChecked):
    """An MCP server as ``POST /v1/mcp/servers`` and the dashboard register it."""

    not_object = ("The request body must be a JSON object.", "invalid")
    name = _server_name(required=True)
    url = _url(required=True)
    auth_header_name = _header_name()
    auth_header_value = _header_value()
    timeout_ms = Integer(
        250, 120_000, nullable=False, description="Bounds each request of a discovery, and is its new tools' timeout."
    )


class ServerUpdateInput(_UrlChecked):
    """``PATCH /v1/mcp/servers/{name}``: the fields sent change, the others stay (the name is the server's id)."""

    not_object = ("The request body must be a JSON object.", "invalid")
    url = _url(required=False)
    auth_header_name = _header_name()
    auth_header_value = _header_value()
    timeout_ms = Integer(250, 120_000, nullable=False)
    enabled = Boolean(nullable=False, invalid=("true or false.", "bool_type"))


class McpToolInput(Body):
    """What an operator sets on a tool of an MCP server (its name, URL and schema are the server's)."""

    timeout_ms = Integer(250, 120_000, nullable=False)
    enabled = Boolean(nullable=False, invalid=("true or false.", "bool_type"))
    risk_level = Choice(["low", "medium", "high"], invalid=("low, medium or high.", "enum"))
    price_usd = Usd(invalid=(f"A number from 0 to {MAX_USD:,}.", "float_type"))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _validation(field_name: str, message: str, code: str) -> exceptions.ValidationError:
    return exceptions.ValidationError({field_name: [serializers.ErrorDetail(message, code=code)]})


# --- discovery ---------------------------------------------------------------------------------------------------


@dataclass
class Discovery:
    """What one discovery did: tool names (``<server>.<tool>``) added, updated and disabled; remote tools skipped,
    each with why; ``error`` when the server could not be asked (then nothing else changed)."""

    error: str = ""
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    still_disabled: list[str] = field(default_factory=list)  # listed again after a discovery disabled them
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error or None,
            "added": self.added,
            "updated": self.updated,
            "disabled": self.disabled,
            "still_disabled": self.still_disabled,
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        """One line for a person (the dashboard's message)."""
        if self.error:
            return f"Discovery failed: {self.error}"
        parts = [f"{len(self.added)} added", f"{len(self.updated)} up to date"]
        if self.disabled:
            parts.append(f"{len(self.disabled)} no longer listed (disabled)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return "Discovered: " + ", ".join(parts) + "."


def _skipped_text(skipped: list[dict[str, str]]) -> str:
    """``last_error`` of a discovery that skipped tools, cut to the column."""
    text = f"{len(skipped)} tool(s) skipped: " + "; ".join(f"{s['tool']!r}: {s['reason']}" for s in skipped)
    return text if len(text) <= LAST_ERROR_MAX else text[: LAST_ERROR_MAX - 1] + "…"


def server_discover(server: McpServer, actor: str) -> Discovery:
    """Ask the server for its tools and sync the registry with them (module docstring). An UpstreamError (the server
    could not be reached, refused the credentials, is not an MCP server…) is recorded as ``last_error`` and raised:
    the tools stay as they were."""
    try:
        remote = mcp_upstream.discover(server)
    except Exception as caught:
        exc = caught
        if not isinstance(exc, mcp_upstream.UpstreamError):  # an answer nothing foresaw: its error, never a 500
            logger.exception("discovery of MCP server %s failed unexpectedly", server.pk)
            exc = mcp_upstream.UpstreamError(f"the server's answer could not be read ({caught.__class__.__name__})")
        message = str(exc)[:LAST_ERROR_MAX]
        with transaction.atomic():
            server.last_error = message
            server.save(update_fields=["last_error"])
            audit_record(
                account=server.account,
                actor_label=actor,
                action="governance.mcp_server.discovered",
                object_type="mcp_server",
                object_id=server.name,
                data={"ok": False, "error": message},
            )
        raise exc from None
    return _sync(server, remote, actor)


def _sync(server: McpServer, remote: list[Any], actor: str) -> Discovery:
    result = Discovery()
    now = timezone.now()
    with transaction.atomic():
        # The lock tools.tool_upsert takes: the plan's limit and the name rule hold against concurrent writers.
        # of=self: the plan's row is shared by every account on it and must not be locked with this one.
        account = Account.objects.select_for_update(of=("self",)).select_related("plan").get(pk=server.account_id)
        server.account = account
        mine = {t.remote_name: t for t in Tool.objects.filter(mcp_server=server)}
        listed: dict[str, Any] = {}
        for tool in remote:
            name = f"{server.name}.{tool.name}"
            if len(tool.name) > REMOTE_NAME_MAX or not REGISTERED_NAME.match(name):
                result.skipped.append({"tool": tool.name[:REMOTE_NAME_MAX], "reason": "not a valid tool name"})
                continue
            listed[tool.name] = tool
        # Names held by other tools of the account's global scope, in normalised form (the governed call's lookup).
        wanted = {normalise_tool(f"{server.name}.{name}"): name for name in listed if name not in mine}
        held = dict(
            Tool.objects.filter(account=account, scope_id="global", name_key__in=list(wanted))
            .exclude(mcp_server=server)
            .values_list("name_key", "name")
        )
        taken = {t.name_key: t.name for t in mine.values()}
        room = account.plan.tools_limit - Tool.objects.filter(account=account).count()
        updates: list[Tool] = []
        creates: list[Tool] = []
        for remote_name, tool in listed.items():
            existing = mine.get(remote_name)
            description = (tool.description or "")[:DESCRIPTION_MAX]
            if existing is not None:
                fresh = (description, tool.input_schema, server.url)
                if (existing.description, existing.input_schema, existing.url) != fresh:
                    existing.description, existing.input_schema, existing.url = fresh
                    existing.updated_at = now
                    updates.append(existing)
                result.updated.append(existing.name)
                if not existing.enabled:
                    result.still_disabled.append(existing.name)
                continue
            name = f"{server.name}.{remote_name}"
            key = normalise_tool(name)
            other = held.get(key) or taken.get(key)
            if other is not None:
                reason = f"its name {name!r} is taken by the tool {other!r} (names differing only in case are one)"
                result.skipped.append({"tool": remote_name, "reason": reason})
                continue
            if room <= 0:
                reason = f"the {account.plan.code} plan allows {account.plan.tools_limit} tools"
                result.skipped.append({"tool": remote_name, "reason": reason})
                continue
            room -= 1
            taken[key] = name
            creates.append(
                Tool(
                    account=account,
                    scope_id="global",
                    name=name,
                    name_key=key,
                    kind="mcp",
                    mcp_server=server,
                    remote_name=remote_name,
                    url=server.url,
                    description=description,
                    input_schema=tool.input_schema,
                    timeout_ms=server.timeout_ms,
                    # A retried tools/call may run twice at an upstream that does not deduplicate (docs/mcp.md).
                    max_retries=0,
                    enabled=True,
                    created_at=now,
                    updated_at=now,
                )
            )
            result.added.append(name)
        gone = [t for name, t in mine.items() if name not in listed and t.enabled]
        for tool in gone:
            tool.enabled, tool.updated_at = False, now
            result.disabled.append(tool.name)
        Tool.objects.bulk_create(creates)
        Tool.objects.bulk_update(updates, ["description", "input_schema", "url", "updated_at"])
        Tool.objects.bulk_update(gone, ["enabled", "updated_at"])
        # Not updated_at: that one names the upstream session (mcp_upstream), which a discovery does not change.
        server.last_discovered_at = now
        server.last_error = _skipped_text(result.skipped) if result.skipped else ""
        server.save(update_fields=["last_discovered_at", "last_error"])
        audit_record(
            account=account,
            actor_label=actor,
            action="governance.mcp_server.discovered",
            object_type="mcp_server",
            object_id=server.name,
            data={
                "ok": True,
                "listed": len(remote),
                "added": result.added[:AUDIT_NAMES],
                "added_count": len(result.added),
                "disabled": result.disabled[:AUDIT_NAMES],
                "skipped": result.skipped[:AUDIT_NAMES],
            },
        )
    return result


# --- the server --------------------------------------------------------------------------------------------------


def _set_auth(server: McpServer, header_name: str | None, value: str | None) -> None:
    if header_name is not None:
        server.auth_header_name = header_name
    if value is not None:
        server.auth_header_encrypted = secrets.encrypt(value) if value else ""
        server.auth_header_mask = secrets.mask(value) if value else ""


def server_register(
    account: Account,
    name: Any,
    url: Any,
    auth_header_name: Any = None,
    auth_header_value: Any = None,
    timeout_ms: Any = None,
    actor: str = "",
) -> tuple[McpServer, Discovery, list[str]]:
    """Register a server and discover its tools at once (``register_body``, the arguments as a body: None is not
    sent)."""
    data: dict[str, Any] = {"name": name, "url": url}
    optional = {"auth_header_name": auth_header_name, "auth_header_value": auth_header_value, "timeout_ms": timeout_ms}
    data.update((key, value) for key, value in optional.items() if value is not None)
    return register_body(account.pk, data, actor)


def register_body(account_id: int, data: Any, actor: str) -> tuple[McpServer, Discovery, list[str]]:
    """Register a server from a body (``ServerInput``: one 422 naming every bad field, unknown ones included) and
    discover its tools at once. A name already registered raises ServerExists. The server is kept when its
    discovery fails: the Discovery says why (as ``last_error`` does), and a later discovery may succeed (the server
    was down, its credentials are fixed with an update). Returns the server, its discovery and URL warnings."""
    parsed = ServerInput.parse(data)
    now = timezone.now()
    with transaction.atomic():
        account = Account.objects.select_for_update().get(pk=account_id)
        existing = McpServer.objects.filter(account=account, name=parsed.name).first()
        if existing is not None:
            raise ServerExists(existing)
        server = McpServer(
            account=account,
            name=parsed.name,
            url=parsed.url,
            timeout_ms=parsed.timeout_ms or McpServer._meta.get_field("timeout_ms").default,
            created_at=now,
            updated_at=now,
        )
        _set_auth(server, parsed.auth_header_name, parsed.auth_header_value)
        server.save()
        audit_record(
            account=account,
            actor_label=actor,
            action="governance.mcp_server.registered",
            object_type="mcp_server",
            object_id=server.name,
            data={"url": server.url, "auth_header": server.auth_header_name if server.auth_header_mask else None},
        )
    try:
        discovery = server_discover(server, actor)
    except mcp_upstream.UpstreamError:
        discovery = Discovery(error=server.last_error)
    return server, discovery, [parsed.url_warning] if parsed.url_warning else []


def server_update(server: McpServer, changes: Any, actor: str) -> tuple[McpServer, list[str]]:
    """Change the fields ``changes`` sends (url, auth_header_name, auth_header_value — "" removes it —, timeout_ms,
    enabled; a 422 for bad ones). A new URL is its tools' URL too; the tools' own timeouts stay (each is edited on
    its own). Any change starts a new upstream session (``updated_at``). No discovery: ask for one."""
    data = changes if isinstance(changes, ServerUpdateInput) else ServerUpdateInput.parse(changes)
    sent = data.sent - {name for name in data.sent if getattr(data, name) is None}
    moved = "url" in sent and _origin(data.url) != _origin(server.url)
    if moved and server.auth_header_encrypted and "auth_header_value" not in data.sent:
        # Else any key of the account could point the server elsewhere and receive its credential with the next
        # discovery or call.
        raise _validation(
            "auth_header_value",
            'A new address (scheme, host or port) needs the credential again: send auth_header_value ("" for none).',
            "missing",
        )
    with transaction.atomic():
        before = {"url": server.url, "enabled": server.enabled, "timeout_ms": server.timeout_ms}
        if "url" in sent:
            server.url = data.url
        if "timeout_ms" in sent and data.timeout_ms is not None:  # not nullable: sent means a number
            server.timeout_ms = data.timeout_ms
        if "enabled" in sent:
            server.enabled = bool(data.enabled)
        _set_auth(
            server,
            data.auth_header_name if "auth_header_name" in sent else None,
            data.auth_header_value if "auth_header_value" in sent else None,
        )
        server.updated_at = timezone.now()
        server.save(
            update_fields=[
                "url",
                "timeout_ms",
                "enabled",
                "auth_header_name",
                "auth_header_encrypted",
                "auth_header_mask",
                "updated_at",
            ]
        )
        if "url" in sent and data.url != before["url"]:
            server.tools.update(url=server.url, updated_at=server.updated_at)
        audit_record(
            account=server.account,
            actor_label=actor,
            action="governance.mcp_server.updated",
            object_type="mcp_server",
            object_id=server.name,
            data={
                "before": before,
                "after": {"url": server.url, "enabled": server.enabled, "timeout_ms": server.timeout_ms},
                "auth_replaced": "auth_header_value" in sent,
            },
        )
    return server, [data.url_warning] if data.url_warning else []


def server_delete(server: McpServer, actor: str) -> list[str]:
    """Delete the server and its tools (the names it returns). Decisions and approvals name their tool as text, not
    as a row (governance.models.Decision.tool), so the log keeps them; a later call of such a name is a call of an
    unregistered tool."""
    with transaction.atomic():
        names = list(Tool.objects.filter(mcp_server=server).order_by("name").values_list("name", flat=True))
        audit_record(
            account=server.account,
            actor_label=actor,
            action="governance.mcp_server.deleted",
            object_type="mcp_server",
            object_id=server.name,
            data={"url": server.url, "tools": names[:AUDIT_NAMES], "tools_count": len(names)},
        )
        server.delete()  # its tools go with it (Tool.mcp_server: CASCADE)
    return names


def mcp_tool_update(tool: Tool, changes: Any, actor: str) -> Tool:
    """Set what an operator owns on a tool of an MCP server: timeout, enabled, risk, price (null clears the last
    two); ``changes`` a body or a parsed McpToolInput. A 422 for bad values; its name, URL, description and schema
    come from the server."""
    if tool.kind != "mcp":
        raise _validation("name", f"{tool.name!r} is not a tool of an MCP server.", "invalid")
    data = changes if isinstance(changes, McpToolInput) else McpToolInput.parse(changes)
    sent = data.sent
    with transaction.atomic():
        if "timeout_ms" in sent and data.timeout_ms is not None:
            tool.timeout_ms = data.timeout_ms
        if "enabled" in sent and data.enabled is not None:
            tool.enabled = bool(data.enabled)
        if "risk_level" in sent:
            tool.risk_level = data.risk_level or ""
        if "price_usd" in sent:
            tool.price_usd = None if data.price_usd is None else Decimal(str(data.price_usd))
        tool.updated_at = timezone.now()
        tool.save(update_fields=["timeout_ms", "enabled", "risk_level", "price_usd", "updated_at"])
        audit_record(
            account=tool.account,
            actor_label=actor,
            action="governance.tool.saved",
            object_type="tool",
            object_id=f"{tool.scope_id}/{tool.name}",
            data={
                "created": False,
                "mcp_server": tool.mcp_server.name if tool.mcp_server else None,
                "enabled": tool.enabled,
                "timeout_ms": tool.timeout_ms,
                "risk_level": tool.risk_level or None,
                "price_usd": str(tool.price_usd) if tool.price_usd is not None else None,
            },
        )
    return tool
