"""The dashboard's "Send test call" on a tool of an upstream MCP server (governance/views.py ``tool_test`` →
services.tool_test_call → dispatch, which forwards it as ``tools/call``: docs/mcp.md §"Upstream MCP servers"), as an
admin, against a real upstream (tests/support/mcp_upstream.py, a process of its own): the upstream runs the tool
once, and the page shows its answer and the decision it was recorded as."""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import AuditEntry
from governance import mcp_servers, mcp_upstream
from governance.models import Decision, Tool
from tests.support.mcp_upstream import McpUpstream

TOKEN = "upstream-token-789"


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


@pytest.fixture
def admin(admin_a, upstream):
    """A's admin in the dashboard, with the upstream registered as ``up`` (its four tools discovered)."""
    _, discovery, _ = mcp_servers.server_register(admin_a.account, "up", upstream.url, actor="test")
    assert discovery.ok and len(discovery.added) == 4
    return admin_a.login(Client())


def _calls(upstream, tool):
    return [line for line in upstream.journal_lines() if line["tool"] == tool]


def test_a_test_call_reaches_the_upstream_once_and_shows_its_answer(admin, upstream):
    tool = Tool.objects.get(name="up.echo")
    before = len(_calls(upstream, "echo"))
    page = admin.get(f"/tools/{tool.pk}/test/")
    assert page.status_code == 200 and 'name="args"' in page.content.decode()

    response = admin.post(f"/tools/{tool.pk}/test/", {"args": '{"text": "hello-from-the-dashboard"}'})
    assert response.status_code == 200, response.content[:500]
    html = response.content.decode()
    calls = _calls(upstream, "echo")[before:]
    assert len(calls) == 1  # no retry: the tool's max_retries is 0
    assert calls[0]["arguments"] == {"text": "hello-from-the-dashboard"}
    decision = Decision.objects.get(tool="up.echo")
    assert calls[0]["meta"]["onceonly/agent_id"] == "onceonly-operator"
    assert decision.agent.agent_id == "onceonly-operator" and decision.outcome == "executed"
    assert decision.explain["test_call"] is True
    assert "Executed" in html and "HTTP 200" in html and "(1 attempt)" in html
    assert "hello-from-the-dashboard" in html  # the upstream's answer, in the response body
    assert f'href="/decisions/{decision.pk}/"' in html
    tool.refresh_from_db()
    assert tool.last_status == 200 and tool.last_latency_ms is not None
    assert AuditEntry.objects.filter(action="governance.tool.test_call", object_id="global/up.echo").count() == 1


def test_a_tool_error_is_shown_as_failed(admin, upstream):
    tool = Tool.objects.get(name="up.fail")
    before = len(_calls(upstream, "fail"))
    response = admin.post(f"/tools/{tool.pk}/test/", {"args": "{}"})
    assert response.status_code == 200
    html = response.content.decode()
    assert len(_calls(upstream, "fail")[before:]) == 1  # a tool error is an answer: not sent again
    assert "Failed" in html and "the card was declined" in html
    assert Decision.objects.get(tool="up.fail").outcome == "failed"


def test_the_page_shows_the_auth_header_masked(admin_a, tmp_path):
    """The request headers on the page are the ones sent, the server's credential masked as everywhere else."""
    with McpUpstream(tmp_path / "journal.jsonl", require_auth=TOKEN) as upstream:
        server = mcp_servers.server_register(
            admin_a.account, "up", upstream.url, auth_header_value=f"Bearer {TOKEN}", actor="test"
        )[0]
        tool = Tool.objects.get(mcp_server=server, remote_name="charge")
        args = '{"amount": 5, "customer": "cus_1"}'
        html = admin_a.login(Client()).post(f"/tools/{tool.pk}/test/", {"args": args}).content.decode()
        assert [line["arguments"] for line in upstream.journal_lines()] == [{"amount": 5, "customer": "cus_1"}]
    assert "Executed" in html and "succeeded" in html
    assert TOKEN not in html and "***789" in html and "Mcp-Session-Id" in html
