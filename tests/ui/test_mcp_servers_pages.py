"""Tools → MCP servers pages: register a server (discovering its tools from a real upstream, the official SDK's, a
process of its own), its tools in the tools table badged MCP with their own edit page (price, risk, state, timeout
only), discover again, edit, delete with confirmation; the auth header's value never shown; CSRF; viewers read only;
other accounts' servers are 404; pages and pinned query counts."""

from __future__ import annotations

import pytest
from django.test import Client

from governance import mcp_servers, mcp_upstream
from governance.models import McpServer, Tool
from tests.support.mcp_upstream import McpUpstream

TOKEN = "upstream-token-123"


@pytest.fixture(autouse=True)
def _private_urls(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the upstream is on loopback
    mcp_upstream.forget_sessions()
    yield
    mcp_upstream.forget_sessions()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with McpUpstream(tmp_path_factory.mktemp("mcp") / "journal.jsonl", require_auth=TOKEN) as running:
        yield running


def form(upstream, **extra):
    return {
        "name": "up",
        "url": upstream.url,
        "auth_header_name": "Authorization",
        "auth_header_value": f"Bearer {TOKEN}",
        "timeout_ms": "5000",
        **extra,
    }


def test_register_discover_edit_delete(owner_a, upstream):
    client = owner_a.login(Client())
    empty = client.get("/tools/").content.decode()
    assert "No MCP server registered yet" in empty and "Register an MCP server" in empty
    response = client.post("/tools/mcp/new/", form(upstream), follow=True)
    html = response.content.decode()
    assert response.status_code == 200 and "Discovered: 4 added" in html
    assert TOKEN not in html and "***123" in html
    server = McpServer.objects.get()
    tools_page = client.get("/tools/").content.decode()
    assert TOKEN not in tools_page
    assert 'id="mcp-servers"' in tools_page and f"/tools/mcp/{server.pk}/" in tools_page
    assert "up.echo" in tools_page and ">MCP</span>" in tools_page
    assert TOKEN not in client.get(f"/tools/mcp/{server.pk}/").content.decode()

    discovered = client.post(f"/tools/mcp/{server.pk}/discover/", {"next": "tools"}, follow=True)
    assert discovered.redirect_chain[-1][0] == "/tools/" and "0 added, 4 up to date" in discovered.content.decode()

    edit = {"url": upstream.url, "auth_header_name": "Authorization", "auth_header_value": "", "timeout_ms": "7000"}
    saved = client.post(f"/tools/mcp/{server.pk}/", {**edit, "enabled": "on"}, follow=True)
    assert "MCP server up saved." in saved.content.decode()
    server.refresh_from_db()
    assert server.timeout_ms == 7000 and server.auth_header_mask == "***123"  # empty kept the value
    client.post(f"/tools/mcp/{server.pk}/", {**edit, "remove_auth": "on"})
    server.refresh_from_db()
    assert (server.auth_header_encrypted, server.enabled) == ("", False)

    assert "4 tools" in client.get(f"/tools/mcp/{server.pk}/delete/").content.decode()
    client.post(f"/tools/mcp/{server.pk}/delete/")
    assert not McpServer.objects.exists() and not Tool.objects.exists()


def test_a_failed_discovery_is_shown(owner_a, upstream):
    client = owner_a.login(Client())
    html = client.post("/tools/mcp/new/", form(upstream, auth_header_value="Bearer nope"), follow=True)
    assert "Discovery failed: HTTP 401" in html.content.decode()
    assert "refused the gateway&#x27;s credentials" in client.get("/tools/").content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "Up"}, "lowercase letters"),
        ({"url": "http://169.254.169.254/mcp"}, "link-local/metadata"),
        ({"auth_header_name": "Host"}, "a header the gateway sets itself"),
    ],
)
def test_bad_input_is_an_inline_error(owner_a, upstream, settings, fields, message):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    response = owner_a.login(Client()).post("/tools/mcp/new/", form(upstream, **fields))
    assert response.status_code == 422 and message in response.content.decode()
    assert not McpServer.objects.exists()


def test_a_duplicate_name_links_to_the_server(owner_a, upstream):
    client = owner_a.login(Client())
    client.post("/tools/mcp/new/", form(upstream))
    response = client.post("/tools/mcp/new/", form(upstream))
    server = McpServer.objects.get()
    assert response.status_code == 422 and f'href="/tools/mcp/{server.pk}/"' in response.content.decode()


def test_an_mcp_tools_page_edits_price_risk_state_and_timeout_only(owner_a, upstream):
    client = owner_a.login(Client())
    client.post("/tools/mcp/new/", form(upstream))
    tool = Tool.objects.get(name="up.charge")
    page = client.get(f"/tools/{tool.pk}/").content.decode()
    assert 'name="price_usd"' in page and 'name="risk_level"' in page and 'name="timeout_ms"' in page
    assert 'name="url"' not in page and 'name="secret"' not in page and 'name="name"' not in page
    assert "&quot;customer&quot;" in page  # its input schema, read-only
    response = client.post(f"/tools/{tool.pk}/", {"timeout_ms": "3000", "risk_level": "high", "price_usd": "1.25"})
    assert response.status_code == 302
    tool.refresh_from_db()
    assert (tool.timeout_ms, tool.risk_level, str(tool.price_usd), tool.enabled) == (3000, "high", "1.250000", False)
    assert (tool.url, tool.max_retries, tool.remote_name) == (upstream.url, 0, "charge")
    assert client.post(f"/tools/{tool.pk}/", {"timeout_ms": "1"}).status_code == 422


def test_viewer_reads_but_cannot_write(owner_a, viewer_a, upstream):
    owner_a.login(Client()).post("/tools/mcp/new/", form(upstream))
    server, tool = McpServer.objects.get(), Tool.objects.get(name="up.echo")
    client = viewer_a.login(Client())
    page = client.get(f"/tools/mcp/{server.pk}/").content.decode()
    assert "up.echo" in page and "Viewers can see MCP servers" in page
    assert 'action="/tools/mcp/' not in page and 'name="url"' not in page  # no Discover, no settings form
    assert 'name="price_usd"' not in client.get(f"/tools/{tool.pk}/").content.decode()
    for url in (
        "/tools/mcp/new/",
        f"/tools/mcp/{server.pk}/",
        f"/tools/mcp/{server.pk}/discover/",
        f"/tools/mcp/{server.pk}/delete/",
        f"/tools/{tool.pk}/",
    ):
        assert client.post(url, {**form(upstream), "price_usd": "9"}).status_code == 403, url
    assert client.get("/tools/mcp/new/").status_code == 403
    server.refresh_from_db()
    tool.refresh_from_db()
    assert server.timeout_ms == 5000 and tool.price_usd is None and McpServer.objects.count() == 1


def test_csrf_is_required(owner_a, upstream):
    owner_a.login(Client()).post("/tools/mcp/new/", form(upstream))
    server = McpServer.objects.get()
    client = owner_a.login(Client(enforce_csrf_checks=True))
    for url in (f"/tools/mcp/{server.pk}/discover/", f"/tools/mcp/{server.pk}/delete/", "/tools/mcp/new/"):
        assert client.post(url, form(upstream, name="other")).status_code == 403, url
    assert McpServer.objects.count() == 1


def test_other_accounts_servers_are_404(owner_a, owner_b, upstream):
    owner_a.login(Client()).post("/tools/mcp/new/", form(upstream))
    server = McpServer.objects.get()
    client = owner_b.login(Client())
    assert client.get(f"/tools/mcp/{server.pk}/").status_code == 404
    for url in (f"/tools/mcp/{server.pk}/", f"/tools/mcp/{server.pk}/discover/", f"/tools/mcp/{server.pk}/delete/"):
        assert client.post(url, form(upstream)).status_code == 404, url
    assert "up.echo" not in client.get("/tools/").content.decode()


def _servers(account, n):
    McpServer.objects.bulk_create(
        McpServer(account=account, name=f"s{i:02d}", url=f"https://mcp{i}.example.com/mcp") for i in range(n)
    )


def test_the_servers_section_pages(owner_a):
    _servers(owner_a.account, 12)
    client = owner_a.login(Client())
    first = client.get("/tools/", {"q": "x"}).content.decode()
    assert "s09" in first and "s10" not in first and "/tools/?q=x&amp;mcp_page=2" in first
    second = client.get("/tools/", {"mcp_page": "2"}).content.decode()
    assert "s10" in second and "s11" in second and "s09" not in second
    assert "No MCP server on this page" in client.get("/tools/", {"mcp_page": "9"}).content.decode()


@pytest.mark.parametrize("count", [1, 12])
def test_query_counts_do_not_grow_with_servers(owner_a, count, django_assert_num_queries):
    _servers(owner_a.account, count)
    server = McpServer.objects.order_by("name").first()
    mcp_servers._sync(server, [mcp_upstream.RemoteTool(f"t{i}", "", {}, None) for i in range(count)], "test")
    client = owner_a.login(Client())
    # session, user, membership, scope suggestions, calls of the last hour (health), count, page, MCP servers
    with django_assert_num_queries(8):
        assert client.get("/tools/").status_code == 200
    # session, user, membership, the server, its tools' page
    with django_assert_num_queries(5):
        assert client.get(f"/tools/mcp/{server.pk}/").status_code == 200
