"""Upstream MCP servers in the /v1 API (docs/api.md §"Upstream MCP servers"): list and register, read, change,
delete, and discover again; change one of a server's tools (what an operator owns on it: price, risk, timeout,
enabled). Writes go through governance.mcp_servers; the auth header's value is never answered, only its mask. Any
API key of the account may use them, as the tools registry's writes (same ``tools`` feature)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import mcp_servers, mcp_upstream
from governance.models import McpServer, Tool
from onceonly_site.api import ApiProblem, PathValidationError, body, page_params
from onceonly_site.bodies import Body
from onceonly_site.identifiers import REGISTERED_NAME
from onceonly_site.openapi import REGISTERED_NAME_PATTERN, errors, page_parameters

DEFAULT_PAGE = 50
TOOLS_SHOWN = 1000  # a server's tools in its answer (discovery takes at most mcp_upstream.MAX_TOOLS)


def _actor(request: Request) -> str:
    return f"api key {principal(request).key_preview}"


def tool_body(tool: Tool) -> dict[str, Any]:
    return {
        "name": tool.name,
        "remote_name": tool.remote_name,
        "enabled": tool.enabled,
        "description": tool.description,
        "timeout_ms": tool.timeout_ms,
        "risk_level": tool.risk_level or None,
        "price_usd": float(tool.price_usd) if tool.price_usd is not None else None,
        "input_schema": tool.input_schema,
    }


def server_body(server: McpServer, tools_count: int | None = None) -> dict[str, Any]:
    """A server as the API answers it: the auth header's value never, its mask only."""
    data: dict[str, Any] = {
        "name": server.name,
        "url": server.url,
        "auth_header_name": server.auth_header_name if server.auth_header_encrypted else None,
        "has_auth": bool(server.auth_header_encrypted),
        "auth_header_mask": server.auth_header_mask or None,
        "timeout_ms": server.timeout_ms,
        "enabled": server.enabled,
        "last_discovered_at": server.last_discovered_at.isoformat() if server.last_discovered_at else None,
        "last_error": server.last_error or None,
        "created_at": server.created_at.isoformat(),
        "updated_at": server.updated_at.isoformat(),
    }
    if tools_count is not None:
        data["tools_count"] = tools_count
    return data


def _with_tools(server: McpServer, **extra: Any) -> dict[str, Any]:
    """The server, its tools (the first TOOLS_SHOWN by name) and ``extra``."""
    tools = list(Tool.objects.filter(mcp_server=server).order_by("name")[: TOOLS_SHOWN + 1])
    count = Tool.objects.filter(mcp_server=server).count() if len(tools) > TOOLS_SHOWN else len(tools)
    return {**server_body(server, count), "tools": [tool_body(t) for t in tools[:TOOLS_SHOWN]], **extra}


def _name(raw: str) -> str:
    if not mcp_servers.NAME_RE.match(raw):
        detail = serializers.ErrorDetail(mcp_servers.NAME_RULE[0], code="string_pattern_mismatch")
        raise PathValidationError({"name": [detail]})
    return raw


def _server_or_404(request: Request, name: str) -> McpServer:
    server = (
        McpServer.objects.select_related("account")
        .filter(account_id=principal(request).account_id, name=_name(name))
        .first()
    )
    if server is None:
        raise ApiProblem(404, "mcp_server_not_found", f"No MCP server {name!r}.")
    return server


TOOL_RULE = (
    f"Required: the tool's name on its server (its remote_name): 1–{mcp_servers.REMOTE_NAME_MAX} characters of "
    "letters, digits, _ . : -",
    "string_pattern_mismatch",
)


def _tool_or_404(request: Request, name: str, remote_name: str) -> Tool:
    """The server's tool whose ``remote_name`` is exactly ``remote_name``. Both path parameters are checked before
    either is looked up: a malformed one is a 422 whether the other exists or not."""
    _name(name)
    if len(remote_name) > mcp_servers.REMOTE_NAME_MAX or not REGISTERED_NAME.match(remote_name):
        raise PathValidationError({"tool": [serializers.ErrorDetail(TOOL_RULE[0], code=TOOL_RULE[1])]})
    server = _server_or_404(request, name)
    tool = Tool.objects.select_related("account").filter(mcp_server=server, remote_name=remote_name).first()
    if tool is None:
        raise ApiProblem(404, "mcp_tool_not_found", f"The MCP server {server.name!r} has no tool {remote_name!r}.")
    tool.mcp_server = server  # the audit entry names it: no second query
    return tool


ToolOutput = inline_serializer(
    "McpToolOutput",
    {
        "name": serializers.CharField(help_text="<server>.<remote_name>: what agents and policies call it."),
        "remote_name": serializers.CharField(),
        "enabled": serializers.BooleanField(),
        "description": serializers.CharField(),
        "timeout_ms": serializers.IntegerField(),
        "risk_level": serializers.ChoiceField(choices=["low", "medium", "high"], allow_null=True),
        "price_usd": serializers.FloatField(allow_null=True),
        "input_schema": serializers.DictField(allow_null=True),
    },
)
_SERVER_FIELDS: dict[str, serializers.Field] = {
    "name": serializers.CharField(),
    "url": serializers.CharField(),
    "auth_header_name": serializers.CharField(allow_null=True),
    "has_auth": serializers.BooleanField(),
    "auth_header_mask": serializers.CharField(allow_null=True, help_text="The value is never returned."),
    "timeout_ms": serializers.IntegerField(),
    "enabled": serializers.BooleanField(),
    "last_discovered_at": serializers.DateTimeField(allow_null=True),
    "last_error": serializers.CharField(
        allow_null=True, help_text="Why the last discovery failed, or which listed tools it skipped."
    ),
    "created_at": serializers.DateTimeField(),
    "updated_at": serializers.DateTimeField(),
    "tools_count": serializers.IntegerField(),
}
DiscoveryOutput = inline_serializer(
    "McpDiscovery",
    {
        "ok": serializers.BooleanField(help_text="false: the server could not be asked; its tools are unchanged."),
        "error": serializers.CharField(allow_null=True),
        "added": serializers.ListField(child=serializers.CharField()),
        "updated": serializers.ListField(child=serializers.CharField()),
        "disabled": serializers.ListField(child=serializers.CharField(), help_text="No longer listed: disabled."),
        "still_disabled": serializers.ListField(child=serializers.CharField()),
        "skipped": serializers.ListField(child=serializers.DictField(), help_text="{tool, reason} each."),
    },
)
ServerListItem = inline_serializer("McpServerListItem", _SERVER_FIELDS)
ServerOutput = inline_serializer("McpServerOutput", {**_SERVER_FIELDS, "tools": ToolOutput.__class__(many=True)})
ServerDiscovered = inline_serializer(
    "McpServerDiscovered",
    {
        **_SERVER_FIELDS,
        "tools": ToolOutput.__class__(many=True),
        "discovery": DiscoveryOutput,
        "warnings": serializers.ListField(child=serializers.CharField(), required=False),
    },
)
NAME_PARAM = OpenApiParameter(
    "name",
    {"type": "string", "minLength": 1, "maxLength": mcp_servers.NAME_MAX, "pattern": mcp_servers.NAME_PATTERN},
    OpenApiParameter.PATH,
    description="Its name.",
)


TOOL_PARAM = OpenApiParameter(
    "tool",
    {"type": "string", "minLength": 1, "maxLength": mcp_servers.REMOTE_NAME_MAX, "pattern": REGISTERED_NAME_PATTERN},
    OpenApiParameter.PATH,
    description="The tool's name on its server (remote_name: `create_issue`, not `github.create_issue`).",
)


def _exists(exc: mcp_servers.ServerExists) -> ApiProblem:
    """409 ``mcp_server_exists``: the name is taken (a state of the registry, not a bad body); nothing was done."""
    return ApiProblem(
        409, "mcp_server_exists", f"{exc} Choose another name, or change it with PATCH.", name=exc.server.name
    )


class McpServersApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="mcp_servers_list",
        parameters=page_parameters(default=DEFAULT_PAGE),
        responses=inline_serializer(
            "McpServerList",
            {
                "items": ServerListItem.__class__(many=True),
                "total": serializers.IntegerField(),
                "limit": serializers.IntegerField(),
                "offset": serializers.IntegerField(),
            },
        ),
        summary="Registered MCP servers, by name ({items, total, limit, offset})",
    )
    def get(self, request: Request) -> Response:
        limit, offset = page_params(request, default=DEFAULT_PAGE)
        servers = McpServer.objects.filter(account_id=principal(request).account_id).order_by("name")
        page = servers.annotate(tools_total=Count("tools"))[offset : offset + limit]
        return Response(
            {
                "items": [server_body(s, s.tools_total) for s in page],
                "total": servers.count(),
                "limit": limit,
                "offset": offset,
            }
        )

    @extend_schema(
        operation_id="mcp_server_register",
        request=mcp_servers.ServerInput.serializer,
        responses={201: ServerDiscovered, **errors(409)},
        summary="Register an MCP server and discover its tools (201 even when the discovery fails: see discovery)",
    )
    def post(self, request: Request) -> Response:
        try:
            server, discovery, warnings = mcp_servers.register_body(
                principal(request).account_id, body(request), _actor(request)
            )
        except mcp_servers.ServerExists as exists:
            raise _exists(exists) from None
        answer = _with_tools(server, discovery=discovery.as_dict(), warnings=warnings)
        return Response(answer, status=201)


class McpServerApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="mcp_server_get",
        parameters=[NAME_PARAM],
        responses={200: ServerOutput, **errors(404)},
        summary="One MCP server and its tools",
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(_with_tools(_server_or_404(request, name)))

    @extend_schema(
        operation_id="mcp_server_update",
        parameters=[NAME_PARAM],
        request=mcp_servers.ServerUpdateInput.serializer,
        responses={200: ServerOutput, **errors(404)},
        summary="Change an MCP server's URL, auth header, timeout or state (no discovery: POST …/discover)",
    )
    def patch(self, request: Request, name: str) -> Response:
        # Checked first, as every /v1 body: a bad one is refused whatever the name.
        changes = mcp_servers.ServerUpdateInput.parse(body(request))
        server, warnings = mcp_servers.server_update(_server_or_404(request, name), changes, _actor(request))
        return Response(_with_tools(server, warnings=warnings))

    @extend_schema(
        operation_id="mcp_server_delete",
        parameters=[NAME_PARAM],
        responses={
            200: inline_serializer(
                "McpServerDeleted",
                {
                    "ok": serializers.BooleanField(),
                    "deleted": serializers.CharField(),
                    "tools_deleted": serializers.ListField(child=serializers.CharField()),
                },
            ),
            **errors(404),
        },
        summary="Delete an MCP server and its tools (their decisions stay in the log)",
    )
    def delete(self, request: Request, name: str) -> Response:
        server = _server_or_404(request, name)
        names = mcp_servers.server_delete(server, _actor(request))
        return Response({"ok": True, "deleted": server.name, "tools_deleted": names})


class DiscoverInput(Body):
    """No fields: the body is empty or ``{}``."""

    not_object = ("The request body must be a JSON object (or empty).", "invalid")


class McpServerDiscoverApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="mcp_server_discover",
        parameters=[NAME_PARAM],
        request=DiscoverInput.serializer,
        responses={200: ServerDiscovered, **errors(404)},
        summary="Discover the server's tools again (200 with discovery.ok false when it could not be asked)",
    )
    def post(self, request: Request, name: str) -> Response:
        DiscoverInput.parse(body(request))
        server = _server_or_404(request, name)
        try:
            discovery = mcp_servers.server_discover(server, _actor(request))
        except mcp_upstream.UpstreamError:
            discovery = mcp_servers.Discovery(error=server.last_error)
        return Response(_with_tools(server, discovery=discovery.as_dict()))


class McpServerToolApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="mcp_server_tool_update",
        parameters=[NAME_PARAM, TOOL_PARAM],
        request=mcp_servers.McpToolInput.serializer,
        responses={200: ToolOutput, **errors(404)},
        summary="Change a tool of an MCP server: its price, risk level, timeout or state (the rest is the server's)",
    )
    def patch(self, request: Request, name: str, tool: str) -> Response:
        # Checked first, as every /v1 body: a bad one is refused whatever the names.
        changes = mcp_servers.McpToolInput.parse(body(request))
        found = _tool_or_404(request, name, tool)
        return Response(tool_body(mcp_servers.mcp_tool_update(found, changes, _actor(request))))
