"""Reads of the MCP gateway (docs/mcp.md): the tools an agent sees, and the one it calls."""

from __future__ import annotations

import re

from governance import policies
from governance.models import Agent, Tool
from onceonly_site.identifiers import normalise_tool

# What the MCP specification allows in a tool name (2025-11-25 and later): a tool whose registered name has anything
# else is not listed (clients may refuse it) — it stays callable through POST /v1/ai/run.
MCP_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def agent_policy(account_id: int, agent_id: str) -> dict:
    """The agent's current policy ({} for an agent not seen yet, or without one)."""
    row = Agent.objects.filter(account_id=account_id, agent_id=agent_id).values_list("policy", flat=True).first()
    return row or {}


def visible_tools(account_id: int, agent_id: str) -> list[Tool]:
    """The tools ``tools/list`` shows the agent: enabled, registered for it or globally (its own scope hides a global
    tool of the same name, as the governed call resolves them), with an MCP-valid name, and not refused by its policy's
    tool lists — a tool it may not call is not offered. Ordered by name. One query for the tools, one for the policy."""
    policy = agent_policy(account_id, agent_id)
    blocked = policy.get("blocked_tools") or []
    allowed = policy.get("allowed_tools")
    mine = f"agent:{agent_id}"
    chosen: dict[str, Tool] = {}
    rows = (
        Tool.objects.filter(account_id=account_id, scope_id__in=["global", mine], enabled=True)
        .select_related("mcp_server")
        .order_by("name", "legacy_twin")
    )
    for tool in rows:
        if tool.kind == "mcp" and (tool.mcp_server is None or not tool.mcp_server.enabled):
            continue
        held = chosen.get(tool.name_key)
        if held is None or (held.scope_id == "global" and tool.scope_id == mine):
            chosen[tool.name_key] = tool
    return [
        tool
        for tool in sorted(chosen.values(), key=lambda t: t.name)
        if MCP_TOOL_NAME.match(tool.name)
        and policies.matching_pattern(tool.name, blocked) is None
        and (allowed is None or policies.matches(tool.name, allowed))
    ]


def registered_tool(account_id: int, agent_id: str, name: str) -> Tool | None:
    """The registered tool a ``tools/call`` of ``name`` reaches (agent scope first, then global), enabled or not: a
    call of a disabled or refused tool is still decided and logged (tool_disabled, tool_blocked…); None for a name no
    tool of the account has (an MCP protocol error, nothing decided)."""
    found = Tool.objects.filter(
        account_id=account_id, name_key=normalise_tool(name), scope_id__in=["global", f"agent:{agent_id}"]
    ).order_by("legacy_twin")
    tools = sorted(found, key=lambda t: t.scope_id == "global")
    return tools[0] if tools else None
