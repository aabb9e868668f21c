"""Tools → MCP servers (docs/mcp.md §"Upstream MCP servers"): register a server, edit it, discover its tools again,
delete it (owners and admins; viewers read), and the settings an operator owns on one of its tools (the tool's edit
page, governance.views.tool_edit). The writes are governance.mcp_servers'; the auth header's value is write-only."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework import exceptions

from billing.selectors import current_membership, editor_membership
from governance import mcp_servers, mcp_upstream
from governance.models import McpServer, Tool
from onceonly_site.params import whole_number

SERVERS_PER_PAGE = 10  # on the Tools page
TOOLS_PER_PAGE = 50  # on a server's page
SCHEMA_SHOWN = 20_000  # characters of a tool's input schema on its page
RISK_CHOICES = [("", "by name"), ("low", "low"), ("medium", "medium"), ("high", "high")]


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


class ServerForm(forms.Form):
    """Register (``server`` None) or edit an MCP server. The header's value is write-only: empty on edit keeps it."""

    name = forms.CharField(
        max_length=mcp_servers.NAME_MAX,
        help_text="Lowercase letters, digits, - and _: its tools are named <name>.<tool> (e.g. github.create_issue).",
    )
    url = forms.CharField(max_length=2000, label="URL", strip=False, help_text=mcp_servers.URL_HELP)
    auth_header_name = forms.CharField(
        max_length=100,
        initial="Authorization",
        label="Auth header",
        help_text="The header that carries the credential.",
    )
    auth_header_value = forms.CharField(
        required=False,
        strip=False,
        max_length=mcp_servers.MAX_HEADER_VALUE,
        widget=forms.PasswordInput(render_value=False),
        label="Auth header value",
        help_text='e.g. "Bearer …". Stored encrypted, never shown again. Empty: no auth header.',
    )
    remove_auth = forms.BooleanField(required=False, label="Remove the auth header")
    timeout_ms = forms.IntegerField(
        initial=15000,
        label="Timeout (ms)",
        min_value=mcp_servers.ServerInput.timeout_ms.low,
        max_value=mcp_servers.ServerInput.timeout_ms.high,
        help_text="Bounds each request of a discovery; the timeout its new tools start with.",
    )
    enabled = forms.BooleanField(
        required=False, initial=True, help_text="A disabled server's tools are not offered to MCP clients."
    )

    def __init__(self, *args: Any, server: McpServer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        if server is None:
            del self.fields["remove_auth"], self.fields["enabled"]
        else:  # the name is the server's id: it stays
            del self.fields["name"]
            current = server.auth_header_mask or "none"
            self.fields[
                "auth_header_value"
            ].help_text = f"Now {current}. Type a new value to replace it, or leave empty to keep it."

    def changes(self) -> dict[str, Any]:
        """The body of mcp_servers.server_update (an edit)."""
        data = self.cleaned_data
        body: dict[str, Any] = {k: data[k] for k in ("url", "auth_header_name", "timeout_ms", "enabled")}
        if data.get("remove_auth"):
            body["auth_header_value"] = ""
        elif data.get("auth_header_value"):
            body["auth_header_value"] = data["auth_header_value"]
        return body

    def add_problems(self, exc: exceptions.ValidationError) -> None:
        """The services' 422 (the API's words) on the form's fields."""
        detail = exc.detail if isinstance(exc.detail, dict) else {None: exc.detail}
        for field, problems in detail.items():
            for problem in problems if isinstance(problems, list) else [problems]:
                self.add_error(field if field in self.fields else None, str(problem))


class McpToolForm(forms.Form):
    """What an operator sets on a tool of an MCP server: its name, URL, description and schema are the server's."""

    enabled = forms.BooleanField(required=False)
    timeout_ms = forms.IntegerField(
        label="Timeout (ms)",
        min_value=mcp_servers.McpToolInput.timeout_ms.low,
        max_value=mcp_servers.McpToolInput.timeout_ms.high,
        help_text="Bounds each call; a call is not retried (docs/mcp.md).",
    )
    risk_level = forms.ChoiceField(required=False, choices=RISK_CHOICES)
    price_usd = forms.DecimalField(
        required=False, min_value=0, max_digits=14, decimal_places=6, label="Price per call (USD)"
    )

    def changes(self) -> dict[str, Any]:
        data = self.cleaned_data
        price = data.get("price_usd")
        return {
            "enabled": data["enabled"],
            "timeout_ms": data["timeout_ms"],
            "risk_level": data.get("risk_level") or None,
            "price_usd": None if price is None else float(price),
        }


def server_or_404(account_id: int, pk: int) -> McpServer:
    server = McpServer.objects.select_related("account").filter(account_id=account_id, pk=pk).first()
    if server is None:
        raise Http404("No such MCP server in this account.")
    return server


def _page_number(request: HttpRequest, param: str) -> int:
    return max(1, whole_number(request.GET.get(param, "1"), 100_000) or 1)


def _page_url(request: HttpRequest, param: str, number: int) -> str:
    query: QueryDict = request.GET.copy()
    query[param] = str(number)
    return f"{request.path}?{query.urlencode()}"


def paged(request: HttpRequest, queryset: Any, param: str, per_page: int) -> dict[str, Any]:
    """One page of ``queryset`` in one query (a row more than the page says whether a next one exists), with its
    previous/next links (``?<param>=N``, the page's other parameters kept)."""
    number = _page_number(request, param)
    start = (number - 1) * per_page
    rows = list(queryset[start : start + per_page + 1])
    return {
        "rows": rows[:per_page],
        "number": number,
        "previous": _page_url(request, param, number - 1) if number > 1 else None,
        "next": _page_url(request, param, number + 1) if len(rows) > per_page else None,
    }


def servers_section(request: HttpRequest, account_id: int) -> dict[str, Any]:
    """The Tools page's "MCP servers" section: a page of the account's servers by name, each with its tools' count
    (one query)."""
    servers = McpServer.objects.filter(account_id=account_id).annotate(tools_total=Count("tools")).order_by("name")
    return paged(request, servers, "mcp_page", SERVERS_PER_PAGE)


def _discovered(request: HttpRequest, server: McpServer, discovery: mcp_servers.Discovery) -> None:
    if discovery.ok:
        messages.success(request, f"MCP server {server.name}: {discovery.summary()}")
        if discovery.skipped:
            messages.warning(request, f"Skipped: {server.last_error}")
        if discovery.disabled:
            messages.warning(request, "No longer listed by the server, now disabled: " + ", ".join(discovery.disabled))
    else:
        messages.error(request, f"MCP server {server.name}: {discovery.summary()}")


@login_required
@require_http_methods(["GET", "POST"])
def server_new(request: HttpRequest) -> HttpResponse:
    account = editor_membership(request).account
    if not account.plan.tools_limit:
        raise PermissionDenied(f"The tools registry is not on the {account.plan.name} plan (Usage & plan).")
    form = ServerForm()
    status = 200
    if request.method == "POST":
        form = ServerForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                server, discovery, warnings = mcp_servers.server_register(
                    account,
                    data["name"],
                    data["url"],
                    data["auth_header_name"],
                    data["auth_header_value"],
                    data["timeout_ms"],
                    actor=_actor(request),
                )
            except mcp_servers.ServerExists as exists:
                form.add_error(
                    "name",
                    format_html(
                        'An MCP server named {} is already registered: <a href="{}">open it</a>, or choose another '
                        "name.",
                        exists.server.name,
                        reverse("governance:mcp-server", args=[exists.server.pk]),
                    ),
                )
            except exceptions.ValidationError as exc:
                form.add_problems(exc)
            else:
                for warning in warnings:
                    messages.warning(request, warning)
                _discovered(request, server, discovery)
                return redirect("governance:mcp-server", server.pk)
        status = 422
    return render(request, "governance/mcp/server_edit.html", {"form": form, "server": None}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def server_edit(request: HttpRequest, pk: int) -> HttpResponse:
    membership = current_membership(request)
    server = server_or_404(membership.account_id, pk)
    initial = {
        "url": server.url,
        "auth_header_name": server.auth_header_name or "Authorization",
        "timeout_ms": server.timeout_ms,
        "enabled": server.enabled,
    }
    form = ServerForm(initial=initial, server=server)
    status = 200
    if request.method == "POST":
        editor_membership(request)
        form = ServerForm(request.POST, server=server)
        if form.is_valid():
            try:
                server, warnings = mcp_servers.server_update(server, form.changes(), _actor(request))
            except exceptions.ValidationError as exc:
                form.add_problems(exc)
            else:
                for warning in warnings:
                    messages.warning(request, warning)
                messages.success(request, f"MCP server {server.name} saved. Discover its tools again to see changes.")
                return redirect("governance:mcp-server", server.pk)
        status = 422
    tools = paged(request, Tool.objects.filter(mcp_server=server).order_by("name"), "page", TOOLS_PER_PAGE)
    context = {"form": form, "server": server, "tools": tools}
    return render(request, "governance/mcp/server_edit.html", context, status=status)


@login_required
@require_POST
def server_discover(request: HttpRequest, pk: int) -> HttpResponse:
    server = server_or_404(editor_membership(request).account_id, pk)
    try:
        discovery = mcp_servers.server_discover(server, _actor(request))
    except mcp_upstream.UpstreamError:
        discovery = mcp_servers.Discovery(error=server.last_error)
    _discovered(request, server, discovery)
    if request.POST.get("next") == "tools":  # the Tools page's Discover button
        return redirect("governance:tools")
    return redirect("governance:mcp-server", server.pk)


@login_required
@require_http_methods(["GET", "POST"])
def server_delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = server_or_404(editor_membership(request).account_id, pk)
    if request.method == "POST":
        names = mcp_servers.server_delete(server, _actor(request))
        messages.success(request, f"MCP server {server.name} deleted, with its {len(names)} tool(s).")
        return redirect("governance:tools")
    count = Tool.objects.filter(mcp_server=server).count()
    return render(request, "governance/mcp/server_delete.html", {"server": server, "tools_count": count})


def tool_edit(request: HttpRequest, tool: Tool) -> HttpResponse:
    """The edit page of a tool of an MCP server (governance.views.tool_edit sends it here): enabled, timeout, risk and
    price; the rest is the server's, shown read-only."""
    initial = {
        "enabled": tool.enabled,
        "timeout_ms": tool.timeout_ms,
        "risk_level": tool.risk_level,
        "price_usd": tool.price_usd,
    }
    form = McpToolForm(initial=initial)
    status = 200
    if request.method == "POST":
        account = editor_membership(request).account
        if not account.plan.tools_limit:
            raise PermissionDenied(f"The tools registry is not on the {account.plan.name} plan (Usage & plan).")
        form = McpToolForm(request.POST)
        if form.is_valid():
            try:
                mcp_servers.mcp_tool_update(tool, form.changes(), _actor(request))
            except exceptions.ValidationError as exc:
                detail = exc.detail if isinstance(exc.detail, dict) else {}
                for field, problems in detail.items():
                    for problem in problems:
                        form.add_error(field if field in form.fields else None, str(problem))
            else:
                messages.success(request, f"Tool {tool.name} saved.")
                return redirect("governance:tools")
        status = 422
    schema = "" if tool.input_schema is None else json.dumps(tool.input_schema, indent=2, ensure_ascii=False)
    context = {"form": form, "tool": tool, "schema": schema[:SCHEMA_SHOWN]}
    return render(request, "governance/mcp/tool_edit.html", context, status=status)
