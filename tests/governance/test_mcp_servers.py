"""Upstream MCP servers in the tools registry (governance/mcp_servers.py, governance/mcp_api.py): registration with
the SSRF guard and an encrypted auth header, discovery against a real upstream (the official SDK's, a process of its
own: tests/support/mcp_upstream.py) and the sync of its tools (added, updated, disabled, skipped, the plan's limit),
the /v1 API's answers and refusals, tenant scoping."""

from __future__ import annotations

import pytest
from rest_framework import exceptions

from billing.models import AuditEntry, Plan
from billing.services import account_set_plan
from governance import mcp_servers, mcp_upstream, secrets
from governance.mcp_upstream import RemoteTool
from governance.models import Agent, Decision, McpServer, Tool
from tests.support.decisions import decide
from tests.support.mcp_upstream import McpUpstream

TOKEN = "upstream-token-123"
UPSTREAM_TOOLS = ["up.charge", "up.echo", "up.fail", "up.slow"]
JSON = "application/json"


@pytest.fixture(autouse=True)
def _private_urls(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the upstream is on loopback
    mcp_upstream.forget_sessions()
    yield
    mcp_upstream.forget_sessions()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with McpUpstream(tmp_path_factory.mktemp("mcp") / "journal.jsonl") as running:
        yield running


@pytest.fixture(scope="module")
def authed_upstream(tmp_path_factory):
    with McpUpstream(tmp_path_factory.mktemp("mcp") / "journal.jsonl", require_auth=TOKEN) as running:
        yield running


@pytest.fixture
def client(key_a):
    return key_a.client()


def register(account, url, name="up", **extra):
    return mcp_servers.server_register(account, name, url, actor="test", **extra)


def remote(name, description="", schema=None):
    return RemoteTool(name=name, description=description, input_schema=schema or {"type": "object"}, annotations=None)


def names(account):
    return sorted(Tool.objects.filter(account=account).values_list("name", flat=True))


# --- services ----------------------------------------------------------------------------------------------------


def test_register_discovers_the_upstreams_tools(account_a, upstream):
    server, discovery, warnings = register(account_a, upstream.url, timeout_ms=4000)
    assert discovery.ok and sorted(discovery.added) == UPSTREAM_TOOLS and warnings == []
    assert names(account_a) == UPSTREAM_TOOLS
    echo = Tool.objects.get(name="up.echo")
    assert (echo.kind, echo.mcp_server, echo.remote_name, echo.scope_id) == ("mcp", server, "echo", "global")
    assert (echo.url, echo.timeout_ms, echo.max_retries, echo.enabled) == (upstream.url, 4000, 0, True)
    assert echo.description == "Answer the text it is given." and "text" in echo.input_schema["properties"]
    assert echo.secret_encrypted == "" and echo.name_key == "up.echo"
    server.refresh_from_db()
    assert server.last_discovered_at is not None and server.last_error == ""
    actions = list(AuditEntry.objects.filter(object_type="mcp_server").order_by("pk").values_list("action", flat=True))
    assert actions == ["governance.mcp_server.registered", "governance.mcp_server.discovered"]
    assert upstream.journal_lines() == []  # discovery calls no tool


def test_the_auth_header_is_encrypted_and_sent(account_a, authed_upstream):
    server, discovery, _ = register(account_a, authed_upstream.url, auth_header_value=f"Bearer {TOKEN}")
    assert discovery.ok and len(discovery.added) == 4
    server.refresh_from_db()
    assert TOKEN not in server.auth_header_encrypted and secrets.decrypt(server.auth_header_encrypted).endswith(TOKEN)
    assert server.auth_header_mask == "***123" and server.auth_header_name == "Authorization"
    assert not AuditEntry.objects.filter(data__icontains=TOKEN).exists()


def test_a_failed_discovery_keeps_the_server_and_says_why(account_a, authed_upstream):
    server, discovery, _ = register(account_a, authed_upstream.url, auth_header_value="Bearer wrong-token")
    assert not discovery.ok and "401" in discovery.error and "credentials" in discovery.error
    server.refresh_from_db()
    assert server.last_error == discovery.error and server.last_discovered_at is None
    assert not Tool.objects.exists()
    # Fixed with an update, the next discovery registers the tools.
    mcp_servers.server_update(server, {"auth_header_value": f"Bearer {TOKEN}"}, "test")
    assert len(mcp_servers.server_discover(server, "test").added) == 4
    server.refresh_from_db()
    assert server.last_error == ""


def test_an_unreachable_server_leaves_its_tools_untouched(account_a, tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl") as running:
        server, discovery, _ = register(account_a, running.url)
    assert discovery.ok
    with pytest.raises(mcp_upstream.UpstreamError):
        mcp_servers.server_discover(server, "test")
    server.refresh_from_db()
    assert "connection failed" in server.last_error
    assert Tool.objects.filter(mcp_server=server, enabled=True).count() == 4  # not disabled by a failure


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/mcp", "http://10.0.0.1/mcp", "ftp://mcp.example.com/", "https://user:pw@x.example.com/"],
)
def test_ssrf_and_bad_urls_are_refused_before_anything_is_stored(account_a, settings, url):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    with pytest.raises(exceptions.ValidationError) as refused:
        register(account_a, url)
    assert "url" in refused.value.detail
    assert not McpServer.objects.exists() and not AuditEntry.objects.filter(object_type="mcp_server").exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Up"}, "name"),
        ({"name": "up.x"}, "name"),
        ({"name": "a" * 65}, "name"),
        ({"name": ""}, "name"),
        ({"auth_header_name": "Bad Header"}, "auth_header_name"),
        ({"auth_header_name": "Mcp-Session-Id"}, "auth_header_name"),
        ({"auth_header_value": "Bearer x\r\nHost: evil"}, "auth_header_value"),
        ({"timeout_ms": 10}, "timeout_ms"),
    ],
)
def test_bad_fields_are_a_422_naming_the_field(account_a, fields, field):
    body = {"name": "up", "url": "https://mcp.example.com/mcp", **fields}
    with pytest.raises(exceptions.ValidationError) as refused:
        mcp_servers.register_body(account_a.pk, body, "test")
    assert field in refused.value.detail
    assert not McpServer.objects.exists()


def test_a_name_is_registered_once_per_account(account_a, account_b, upstream):
    register(account_a, upstream.url)
    with pytest.raises(mcp_servers.ServerExists):
        register(account_a, upstream.url)
    assert register(account_b, upstream.url)[1].ok  # another account's namespace
    assert McpServer.objects.count() == 2


def test_sync_adds_updates_disables_and_keeps_the_operators_settings(account_a):
    server = McpServer.objects.create(account=account_a, name="gh", url="https://mcp.example.com/mcp", timeout_ms=3000)
    first = mcp_servers._sync(server, [remote("create_issue", "Create"), remote("search")], "test")
    assert sorted(first.added) == ["gh.create_issue", "gh.search"]
    tool = Tool.objects.get(name="gh.create_issue")
    mcp_servers.mcp_tool_update(tool, {"price_usd": 0.5, "risk_level": "high", "timeout_ms": 9000}, "test")
    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    second = mcp_servers._sync(server, [remote("create_issue", "Create an issue", schema), remote("close")], "test")
    assert second.added == ["gh.close"] and second.updated == ["gh.create_issue"] and second.disabled == ["gh.search"]
    tool.refresh_from_db()
    assert (tool.description, tool.input_schema) == ("Create an issue", schema)
    assert (float(tool.price_usd), tool.risk_level, tool.timeout_ms, tool.enabled) == (0.5, "high", 9000, True)
    search = Tool.objects.get(name="gh.search")
    assert not search.enabled  # kept, not deleted: its decisions name it
    # Listed again: still disabled (a discovery cannot tell a vanished tool from one an operator disabled).
    third = mcp_servers._sync(server, [remote("create_issue"), remote("close"), remote("search")], "test")
    assert third.still_disabled == ["gh.search"] and not Tool.objects.get(name="gh.search").enabled


def test_sync_skips_invalid_and_colliding_names_and_reports_them(account_a, client):
    secret = {"type": "hmac_sha256", "secret": "s" * 8}
    webhook = {"name": "gh.taken", "url": "https://tools.example.com/x", "auth": secret}
    assert client.post("/v1/tools", webhook, content_type=JSON).status_code == 200
    server = McpServer.objects.create(account=account_a, name="gh", url="https://mcp.example.com/mcp")
    listed = [remote("ok"), remote("has space"), remote("x" * 129), remote("TAKEN"), remote("Ok2"), remote("ok2")]
    result = mcp_servers._sync(server, listed, "test")
    assert result.added == ["gh.ok", "gh.Ok2"]
    assert [s["tool"] for s in result.skipped] == ["has space", "x" * 128, "TAKEN", "ok2"]
    assert "not a valid tool name" in result.skipped[0]["reason"] and "'gh.taken'" in result.skipped[2]["reason"]
    server.refresh_from_db()
    assert server.last_error.startswith("4 tool(s) skipped: 'has space': not a valid tool name")
    assert len(server.last_error) <= 512
    assert Tool.objects.get(name="gh.taken").kind == "webhook"  # the webhook tool is untouched


def test_sync_respects_the_plans_tool_limit(account_a):
    plan = Plan.objects.get(code="agency")
    plan.pk, plan.code, plan.name, plan.tools_limit = None, "three", "Three", 3
    plan.save()
    account_set_plan(account=account_a, plan=plan)
    Tool.objects.create(account=account_a, name="w", name_key="w", url="https://tools.example.com/w")
    server = McpServer.objects.create(account=account_a, name="s", url="https://mcp.example.com/mcp")
    result = mcp_servers._sync(server, [remote("a"), remote("b"), remote("c"), remote("d")], "test")
    assert result.added == ["s.a", "s.b"] and [s["tool"] for s in result.skipped] == ["c", "d"]
    assert "three plan allows 3 tools" in result.skipped[0]["reason"]
    assert Tool.objects.filter(account=account_a).count() == 3


def test_delete_removes_its_tools_and_keeps_their_decisions(account_a, upstream):
    server, _, _ = register(account_a, upstream.url)
    decide(Agent.objects.create(account=account_a, agent_id="bot"), tool="up.echo")
    assert sorted(mcp_servers.server_delete(server, "test")) == UPSTREAM_TOOLS
    assert not Tool.objects.exists() and not McpServer.objects.exists()
    assert Decision.objects.filter(tool="up.echo").count() == 1
    assert AuditEntry.objects.filter(action="governance.mcp_server.deleted").get().data["tools_count"] == 4


# --- the API -----------------------------------------------------------------------------------------------------


def test_api_register_get_list_patch_discover_delete(client, upstream, authed_upstream):
    body = {"name": "up", "url": authed_upstream.url, "auth_header_value": f"Bearer {TOKEN}", "timeout_ms": 5000}
    created = client.post("/v1/mcp/servers", body, content_type=JSON)
    assert created.status_code == 201, created.content
    answer = created.json()
    assert TOKEN not in created.content.decode()
    assert (answer["auth_header_mask"], answer["has_auth"], answer["tools_count"]) == ("***123", True, 4)
    assert answer["discovery"]["ok"] and sorted(answer["discovery"]["added"]) == UPSTREAM_TOOLS
    assert [t["name"] for t in answer["tools"]] == UPSTREAM_TOOLS
    assert answer["tools"][1]["input_schema"]["properties"]["text"]["type"] == "string"

    listed = client.get("/v1/mcp/servers").json()
    assert (listed["total"], listed["items"][0]["name"], listed["items"][0]["tools_count"]) == (1, "up", 4)
    assert TOKEN not in client.get("/v1/mcp/servers/up").content.decode()

    patched = client.patch("/v1/mcp/servers/up", {"url": upstream.url, "auth_header_value": ""}, content_type=JSON)
    assert patched.status_code == 200, patched.content
    assert (patched.json()["has_auth"], patched.json()["auth_header_mask"]) == (False, None)
    assert Tool.objects.get(name="up.echo").url == upstream.url  # the tools follow the server's URL

    discovered = client.post("/v1/mcp/servers/up/discover", content_type=JSON).json()
    assert discovered["discovery"]["ok"] and sorted(discovered["discovery"]["updated"]) == UPSTREAM_TOOLS

    deleted = client.delete("/v1/mcp/servers/up").json()
    assert deleted["ok"] and deleted["deleted"] == "up" and sorted(deleted["tools_deleted"]) == UPSTREAM_TOOLS
    assert client.get("/v1/mcp/servers/up").status_code == 404


def test_api_failed_discovery_is_answered_in_the_body(client, authed_upstream):
    created = client.post("/v1/mcp/servers", {"name": "up", "url": authed_upstream.url}, content_type=JSON)
    assert created.status_code == 201
    assert created.json()["discovery"]["ok"] is False and "401" in created.json()["last_error"]
    again = client.post("/v1/mcp/servers/up/discover", content_type=JSON).json()
    assert again["discovery"]["ok"] is False and again["tools"] == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "Bad Name", "url": "https://mcp.example.com/"}, ["body", "name"]),
        ({"name": "up"}, ["body", "url"]),
        ({"name": "up", "url": "http://169.254.169.254/"}, ["body", "url"]),
        ({"name": "up", "url": "https://mcp.example.com/", "extra": 1}, ["body", "extra"]),
        ({"name": "up", "url": "https://mcp.example.com/", "timeout_ms": "x"}, ["body", "timeout_ms"]),
        ([1], ["body"]),
    ],
)
def test_api_bad_input_is_a_structured_422(client, settings, body, loc):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    response = client.post("/v1/mcp/servers", body, content_type=JSON)
    assert response.status_code == 422, response.content
    assert loc in [item["loc"] for item in response.json()["detail"]]
    assert not McpServer.objects.exists()


def test_api_duplicate_name_is_409_and_bad_patch_422(client, upstream):
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    again = client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON)
    assert again.status_code == 409 and again.json()["detail"]["error"] == "mcp_server_exists"
    assert McpServer.objects.count() == 1
    pasted = client.post(
        "/v1/mcp/servers", {"name": "p", "url": upstream.url, "auth_header_value": "Bearer ghp_…"}, content_type=JSON
    )
    assert pasted.status_code == 422 and pasted.json()["detail"][0]["loc"] == ["body", "auth_header_value"]
    for patch in ({"enabled": "yes"}, {"url": None}, {"name": "other"}, {"auth_header_name": "Host"}):
        response = client.patch("/v1/mcp/servers/up", patch, content_type=JSON)
        assert response.status_code == 422, (patch, response.content)
    assert client.get("/v1/mcp/servers/Not%20A%20Name").status_code == 422


def test_api_is_scoped_to_the_account(client, key_b, upstream):
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    other = key_b.client()
    assert other.get("/v1/mcp/servers").json()["total"] == 0
    for method, path in (
        ("get", "/v1/mcp/servers/up"),
        ("patch", "/v1/mcp/servers/up"),
        ("delete", "/v1/mcp/servers/up"),
        ("post", "/v1/mcp/servers/up/discover"),
    ):
        response = getattr(other, method)(path, {"enabled": False} if method == "patch" else None, content_type=JSON)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"]["error"] == "mcp_server_not_found"
    assert McpServer.objects.get().enabled and Tool.objects.count() == 4


# --- a server's tools: PATCH …/tools/{tool} here, not POST /v1/tools --------------------------------------------


def _tool_state(name):
    return Tool.objects.filter(name=name).values("url", "max_retries", "secret_encrypted", "enabled", "timeout_ms")


def test_api_patch_a_tool_by_its_remote_name(client, upstream):
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    body = {"price_usd": 0.25, "risk_level": "high", "timeout_ms": 9000, "enabled": False}
    response = client.patch("/v1/mcp/servers/up/tools/charge", body, content_type=JSON)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["name"], answer["remote_name"], answer["enabled"]) == ("up.charge", "charge", False)
    assert (answer["price_usd"], answer["risk_level"], answer["timeout_ms"]) == (0.25, "high", 9000)
    assert answer["input_schema"]["type"] == "object"
    tool = Tool.objects.get(name="up.charge")
    assert (float(tool.price_usd), tool.risk_level, tool.timeout_ms, tool.enabled) == (0.25, "high", 9000, False)
    assert (tool.max_retries, tool.url) == (0, upstream.url)  # the server's: untouched
    entry = AuditEntry.objects.filter(action="governance.tool.saved").get()
    assert entry.object_id == "global/up.charge" and entry.data["mcp_server"] == "up"
    assert entry.actor_label.startswith("api key ")
    # Only what is sent changes; null clears price and risk.
    cleared = client.patch(
        "/v1/mcp/servers/up/tools/charge", {"price_usd": None, "risk_level": None}, content_type=JSON
    )
    assert cleared.status_code == 200
    assert (cleared.json()["price_usd"], cleared.json()["risk_level"], cleared.json()["timeout_ms"]) == (
        None,
        None,
        9000,
    )
    assert client.get("/v1/mcp/servers/up").json()["tools"][0]["enabled"] is False  # up.charge, first by name


@pytest.mark.parametrize(
    ("path", "body", "status", "loc_or_error"),
    [
        ("up/tools/charge", {"timeout_ms": 10}, 422, ["body", "timeout_ms"]),
        ("up/tools/charge", {"risk_level": "extreme"}, 422, ["body", "risk_level"]),
        ("up/tools/charge", {"price_usd": -1}, 422, ["body", "price_usd"]),
        ("up/tools/charge", {"enabled": "no"}, 422, ["body", "enabled"]),
        ("up/tools/charge", {"url": "https://evil.example.com/"}, 422, ["body", "url"]),
        ("up/tools/charge", {"max_retries": 3}, 422, ["body", "max_retries"]),
        ("up/tools/charge", [1], 422, ["body"]),
        ("up/tools/nope", {"timeout_ms": 10}, 422, ["body", "timeout_ms"]),  # the body first, whatever the names
        ("up/tools/a%20b", {}, 422, ["path", "tool"]),
        ("up/tools/" + "x" * 129, {}, 422, ["path", "tool"]),
        ("Up/tools/charge", {}, 422, ["path", "name"]),
        ("up/tools/up.charge", {}, 404, "mcp_tool_not_found"),  # the remote name, not the registry's
        ("up/tools/Charge", {}, 404, "mcp_tool_not_found"),  # exactly
        ("up/tools/nope", {}, 404, "mcp_tool_not_found"),
        ("other/tools/charge", {}, 404, "mcp_server_not_found"),
    ],
)
def test_api_patch_a_tool_refusals(client, upstream, path, body, status, loc_or_error):
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    before = list(_tool_state("up.charge"))
    response = client.patch(f"/v1/mcp/servers/{path}", body, content_type=JSON)
    assert response.status_code == status, response.content
    if status == 422:
        assert loc_or_error in [item["loc"] for item in response.json()["detail"]]
    else:
        assert response.json()["detail"]["error"] == loc_or_error
    assert list(_tool_state("up.charge")) == before
    assert not AuditEntry.objects.filter(action="governance.tool.saved").exists()


def test_api_patch_a_webhook_tool_is_not_found(client, upstream):
    """A webhook tool named like a server's tool is not the server's."""
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    secret = {"type": "hmac_sha256", "secret": "s" * 8}
    webhook = {"name": "up.other", "url": "https://tools.example.com/x", "auth": secret}
    assert client.post("/v1/tools", webhook, content_type=JSON).status_code == 200
    response = client.patch("/v1/mcp/servers/up/tools/other", {"enabled": False}, content_type=JSON)
    assert response.status_code == 404 and response.json()["detail"]["error"] == "mcp_tool_not_found"
    assert Tool.objects.get(name="up.other").enabled


@pytest.mark.parametrize(
    "body",
    [
        {"name": "up.echo", "url": "https://evil.example.com/mcp"},
        {"name": "up.echo", "url": "https://evil.example.com/mcp", "auth": {"secret": "s" * 8}, "max_retries": 3},
        {"name": "up.echo", "url": "https://evil.example.com/mcp", "scope_id": "global", "enabled": False},
    ],
)
def test_api_tools_upsert_refuses_an_mcp_tool(client, upstream, body):
    """POST /v1/tools would replace its URL, give it a secret and retries: a 422 naming the server and the endpoint
    that changes it; nothing is written."""
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    before = list(_tool_state("up.echo"))
    audited = AuditEntry.objects.count()
    response = client.post("/v1/tools", body, content_type=JSON)
    assert response.status_code == 422, response.content
    [item] = response.json()["detail"]
    assert (item["type"], item["loc"]) == ("mcp_tool", ["body", "name"])
    assert "MCP server 'up'" in item["msg"] and "PATCH /v1/mcp/servers/up/tools/echo" in item["msg"]
    assert list(_tool_state("up.echo")) == before and AuditEntry.objects.count() == audited
    tool = Tool.objects.get(name="up.echo")
    assert (tool.kind, tool.max_retries, tool.secret_encrypted) == ("mcp", 0, "")


def test_api_tools_toggle_works_on_an_mcp_tool(client, upstream):
    """Enabling and disabling is the operator's on any tool: /v1/tools/{name}/toggle changes an MCP tool too."""
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    response = client.post("/v1/tools/up.echo/toggle", {"enabled": False}, content_type=JSON)
    assert response.status_code == 200 and response.json()["enabled"] is False
    tool = Tool.objects.get(name="up.echo")
    assert (tool.enabled, tool.kind, tool.url, tool.max_retries) == (False, "mcp", upstream.url, 0)


def test_api_tools_delete_refuses_an_mcp_tool(client, upstream):
    assert client.post("/v1/mcp/servers", {"name": "up", "url": upstream.url}, content_type=JSON).status_code == 201
    response = client.delete("/v1/tools/up.echo")
    assert response.status_code == 422, response.content
    [item] = response.json()["detail"]
    assert (item["type"], item["loc"]) == ("mcp_tool", ["path", "name"])
    assert "DELETE /v1/mcp/servers/up" in item["msg"] and "PATCH /v1/mcp/servers/up/tools/echo" in item["msg"]
    assert Tool.objects.filter(name="up.echo").exists()
    assert not AuditEntry.objects.filter(action="governance.tool.deleted").exists()
