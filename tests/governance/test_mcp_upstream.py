"""The gateway's client to upstream MCP servers (governance/mcp_upstream.py) against a real upstream built with the
official SDK (tests/support/mcp_upstream.py), a process of its own on loopback, answering JSON or event streams."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from governance import dispatch, mcp_upstream, secrets, services
from governance.models import McpServer, Tool
from onceonly_site.identifiers import normalise_tool
from tests.support.mcp_upstream import McpUpstream

TOKEN = "upstream-token-123"


@pytest.fixture(autouse=True)
def _private_urls(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the upstream is on loopback
    mcp_upstream.forget_sessions()
    yield
    mcp_upstream.forget_sessions()


@pytest.fixture(params=["json", "sse"])
def upstream(request, tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl", sse=request.param == "sse") as running:
        yield running


@pytest.fixture
def authed_upstream(tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl", require_auth=TOKEN) as running:
        yield running


def make_server(account, url: str, *, auth: str = "", timeout_ms: int = 5000) -> McpServer:
    return McpServer.objects.create(
        account=account,
        name="up",
        url=url,
        auth_header_encrypted=secrets.encrypt(auth) if auth else "",
        auth_header_mask=secrets.mask(auth) if auth else "",
        timeout_ms=timeout_ms,
    )


def make_tool(server: McpServer, remote_name: str, **fields) -> Tool:
    name = f"{server.name}.{remote_name}"
    return Tool.objects.create(
        account=server.account,
        name=name,
        name_key=normalise_tool(name),
        url=server.url,
        kind="mcp",
        mcp_server=server,
        remote_name=remote_name,
        **fields,
    )


def call(tool: Tool, arguments: dict, **extra) -> dispatch.DispatchResult:
    extra.setdefault("deadline", time.monotonic() + 10)
    return mcp_upstream.call_tool(tool, arguments=arguments, meta={"onceonly/dispatch_id": "d1"}, **extra)


def test_discover_lists_the_tools_with_their_schemas(key_a, upstream):
    server = make_server(key_a.api_key.account, upstream.url)
    tools = {tool.name: tool for tool in mcp_upstream.discover(server)}
    assert set(tools) == {"echo", "charge", "fail", "slow"}
    charge = tools["charge"].input_schema
    assert charge["type"] == "object" and set(charge["required"]) == {"amount", "customer"}
    assert charge["properties"]["amount"]["type"] == "integer"
    assert tools["charge"].description == "Charge a customer (a side effect: journaled)."
    assert upstream.journal_lines() == []  # listing runs no tool


def test_a_call_returns_the_tools_content_and_reaches_it_once(key_a, upstream):
    server = make_server(key_a.api_key.account, upstream.url)
    tool = make_tool(server, "charge")
    sent = call(tool, {"amount": 5, "customer": "cus_1"})
    assert (sent.ok, sent.http_status, sent.attempts, sent.error) == (True, 200, 1, "")
    assert sent.result["structuredContent"] == {"charged": 5, "customer": "cus_1", "status": "succeeded"}
    assert sent.result["isError"] is False and sent.result["content"][0]["type"] == "text"
    lines = upstream.journal_lines()
    assert len(lines) == 1
    assert (
        lines[0]["arguments"] == {"amount": 5, "customer": "cus_1"} and lines[0]["meta"]["onceonly/dispatch_id"] == "d1"
    )

    echoed = call(make_tool(server, "echo"), {"text": "hi"})  # the same session, reused
    assert echoed.ok and echoed.result["content"] == [{"type": "text", "text": "hi"}]
    assert len(upstream.journal_lines()) == 2


def test_a_tool_error_is_a_failed_call_with_its_message(key_a, upstream):
    tool = make_tool(make_server(key_a.api_key.account, upstream.url), "fail", max_retries=2)
    sent = call(tool, {})
    assert (sent.ok, sent.http_status, sent.attempts) == (False, 200, 1)  # an answer: never retried
    assert sent.error == "the tool reported an error: Error executing tool fail: the card was declined"
    assert sent.result["isError"] is True
    assert len(upstream.journal_lines()) == 1


def test_the_dispatch_of_an_mcp_tool_carries_the_calls_identity_in_meta(key_a, upstream):
    tool = make_tool(make_server(key_a.api_key.account, upstream.url), "echo")
    sent = dispatch.dispatch(
        tool,
        dispatch_id="dsp_1",
        agent_id="billing-agent",
        args={"text": "x"},
        run_id="",
        args_digest="a" * 64,
        fence=1,
    )
    assert sent.ok and sent.result["structuredContent"] == {"result": "x"}
    (line,) = upstream.journal_lines()
    assert line["meta"] == {
        "onceonly/dispatch_id": "dsp_1",
        "onceonly/agent_id": "billing-agent",
        "onceonly/run_id": None,
        "onceonly/idempotency_key": "oo_" + "a" * 40,
    }


def test_the_kill_switch_stops_the_call_before_it_is_sent(key_a, upstream):
    account_id = key_a.api_key.account_id
    tool = make_tool(make_server(key_a.api_key.account, upstream.url), "charge")
    agent = services.agent_get_or_create(account_id=account_id, agent_id="billing-agent")
    services.agent_set_enabled(account_id=account_id, agent_id="billing-agent", enabled=False, reason="r", actor="t")
    sent = call(tool, {"amount": 1, "customer": "c"}, kill_switch=dispatch.KillSwitch(agent.pk))
    assert (sent.ok, sent.stopped, sent.attempts, sent.error) == (False, True, 0, "the agent was disabled")
    assert upstream.journal_lines() == []

    services.agent_set_enabled(account_id=account_id, agent_id="billing-agent", enabled=True, reason="r", actor="t")
    sent = call(tool, {"amount": 1, "customer": "c"}, kill_switch=dispatch.KillSwitch(agent.pk))
    assert sent.ok and len(upstream.journal_lines()) == 1


def test_an_upstream_restart_renews_the_session_and_the_call_runs_once(key_a, tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl") as upstream:
        tool = make_tool(make_server(key_a.api_key.account, upstream.url), "echo", max_retries=0)
        assert call(tool, {"text": "one"}).ok
        (before,) = mcp_upstream._sessions.values()
        upstream.restart()  # the old session id now answers 404
        sent = call(tool, {"text": "two"})
        assert (sent.ok, sent.attempts) == (True, 1)  # the 404 reached no tool: not an attempt, not a retry
        (after,) = mcp_upstream._sessions.values()
        assert after.id != before.id
        assert [line["arguments"]["text"] for line in upstream.journal_lines()] == ["one", "two"]


def test_an_edit_of_the_server_starts_a_new_session(key_a, upstream):
    server = make_server(key_a.api_key.account, upstream.url)
    tool = make_tool(server, "echo")
    assert call(tool, {"text": "a"}).ok
    first = mcp_upstream._sessions[mcp_upstream._key(server)]
    server.updated_at = server.updated_at.replace(microsecond=(server.updated_at.microsecond + 1) % 1_000_000)
    server.save(update_fields=["updated_at"])
    tool = Tool.objects.select_related("mcp_server").get(pk=tool.pk)
    assert call(tool, {"text": "b"}).ok
    sessions = list(mcp_upstream._sessions.values())
    assert len(sessions) == 1 and sessions[0] != first  # the stale one is dropped


def test_private_urls_are_refused_unless_allowed(key_a, upstream, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    server = make_server(key_a.api_key.account, upstream.url)
    with pytest.raises(mcp_upstream.UpstreamError, match="not a public address"):
        mcp_upstream.discover(server)
    sent = call(make_tool(server, "echo"), {"text": "x"})
    assert (sent.ok, sent.attempts, sent.http_status) == (False, 0, None)
    assert "not a public address" in sent.error
    assert upstream.journal_lines() == []


def test_wrong_credentials_are_a_clear_error_and_the_right_ones_work(key_a, authed_upstream):
    account = key_a.api_key.account
    wrong = make_server(account, authed_upstream.url, auth="Bearer not-the-token")
    with pytest.raises(mcp_upstream.UpstreamError, match="HTTP 401: the MCP server refused the gateway's credentials"):
        mcp_upstream.discover(wrong)
    sent = call(make_tool(wrong, "echo"), {"text": "x"})
    assert (sent.ok, sent.attempts, sent.http_status) == (False, 0, 401)
    assert "refused the gateway's credentials" in sent.error and "not-the-token" not in sent.error

    wrong.delete()
    right = make_server(account, authed_upstream.url, auth=f"Bearer {TOKEN}")
    assert {tool.name for tool in mcp_upstream.discover(right)} == {"echo", "charge", "fail", "slow"}
    sent = call(make_tool(right, "echo"), {"text": "x"})
    assert sent.ok and TOKEN not in json.dumps(sent.request_headers)  # shown masked
    assert len(authed_upstream.journal_lines()) == 1


def test_a_slow_tool_times_out_and_is_retried_like_a_webhook(key_a, tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl") as upstream:
        tool = make_tool(make_server(key_a.api_key.account, upstream.url), "slow", timeout_ms=400, max_retries=1)
        sent = call(tool, {"seconds": 1.5})
        assert (sent.ok, sent.attempts) == (False, 2) and sent.error == "timed out after 0.40 s"
        assert len(upstream.journal_lines()) == 2  # as for a webhook tool: a timeout says nothing of what ran

        sent = call(tool, {"seconds": 1.5}, deadline=time.monotonic() + 0.3)
        assert sent.deadline_hit and not sent.ok


def test_threads_share_one_session(key_a, fake):
    fake.answers["tools/call"] = lambda request: {"result": {"content": [{"type": "text", "text": "ok"}]}}
    tool = make_tool(make_server(key_a.api_key.account, fake.url), "echo")
    results: list[dispatch.DispatchResult] = []
    threads = [threading.Thread(target=lambda: results.append(call(tool, {"text": "x"}))) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12 and all(result.ok for result in results)
    assert fake.initialized == 1


def test_a_json_rpc_error_fails_the_call_with_its_code_and_message(key_a, fake):
    fake.answers["tools/call"] = lambda request: {"error": {"code": -32602, "message": "Unknown tool: nope"}}
    sent = call(make_tool(make_server(key_a.api_key.account, fake.url), "nope"), {})
    assert (sent.ok, sent.http_status, sent.result) == (False, 200, None)
    assert sent.error == "JSON-RPC error -32602: Unknown tool: nope"


def test_discovery_follows_pages_and_streams_with_other_messages_in_between(key_a, fake):
    pages = {None: (["a", "b"], "p2"), "p2": (["c"], "p3"), "p3": ([], None)}

    def listing(request):
        names, cursor = pages[(request.get("params") or {}).get("cursor")]
        result = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names]}
        return {"result": {**result, "nextCursor": cursor} if cursor else result}

    fake.answers["tools/list"] = listing
    fake.sse = True
    tools = mcp_upstream.discover(make_server(key_a.api_key.account, fake.url))
    assert [tool.name for tool in tools] == ["a", "b", "c"]
    assert tools[0].annotations is None and tools[0].description == ""
    assert fake.session_headers == {"mcp-session-id": "fake-session", "mcp-protocol-version": "2025-11-25"}


def test_discovery_refuses_endless_pages(key_a, fake):
    fake.answers["tools/list"] = lambda request: {"result": {"tools": [], "nextCursor": "same"}}
    with pytest.raises(mcp_upstream.UpstreamError, match="nextCursor repeats"):
        mcp_upstream.discover(make_server(key_a.api_key.account, fake.url))


def test_something_that_is_not_an_mcp_server_says_so(key_a, fake):
    fake.plain_html = True
    with pytest.raises(mcp_upstream.UpstreamError, match="not an MCP server: it answered text/html"):
        mcp_upstream.discover(make_server(key_a.api_key.account, fake.url))


class FakeUpstream:
    """A hand-written MCP server on loopback for what the SDK's server does not do: pages of tools, event streams
    that carry notifications and split lines (CRLF across writes) before the response, JSON-RPC errors."""

    def __init__(self) -> None:
        self.answers: dict = {}
        self.sse = False
        self.plain_html = False
        self.session_headers: dict[str, str] = {}
        self.initialized = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if fake.plain_html:
                    return self.reply(200, "text/html", [b"<html>hello</html>"])
                method = request.get("method")
                if method == "initialize":
                    with fake.lock:
                        fake.initialized += 1
                    time.sleep(0.2)  # the other threads arrive meanwhile
                    result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {}}
                    return self.reply(
                        200,
                        "application/json",
                        [json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()],
                        session=True,
                    )
                if "id" not in request:
                    return self.reply(202, "application/json", [])
                fake.session_headers = {name: self.headers[name] for name in ("mcp-session-id", "mcp-protocol-version")}
                answer = {"jsonrpc": "2.0", "id": request["id"], **fake.answers[method](request)}
                if not fake.sse:
                    return self.reply(200, "application/json", [json.dumps(answer).encode()])
                note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
                other = {"jsonrpc": "2.0", "id": "not-ours", "result": {}}
                events = f": keep-alive\r\n\r\nevent: message\r\ndata: {json.dumps(note)}\r\n\r\n"
                events += f"data: {json.dumps(other)}\r\n\r\nevent: message\r\ndata: {json.dumps(answer)}\r\n\r\n"
                raw = events.encode()
                cut = raw.index(b"\r\n", len(raw) - 6) + 1  # the last CRLF split across two writes
                self.reply(200, "text/event-stream", [raw[:cut], raw[cut:]])

            def reply(self, status: int, kind: str, chunks: list[bytes], session: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(sum(len(chunk) for chunk in chunks)))
                if session:
                    self.send_header("Mcp-Session-Id", "fake-session")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(0.01)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mcp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    running = FakeUpstream()
    yield running
    running.stop()
