"""The MCP gateway end to end (docs/mcp.md): the official `mcp` client → our /mcp/ endpoint → the governed call →
a registered upstream MCP server built with the same SDK, a real process that journals every call it runs. The
journal is the upstream's side effects: what exactly-once is about."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.test import Client

from governance.models import Decision, McpServer
from tests.governance.test_mcp_gateway import mcp
from tests.support.mcp_upstream import McpUpstream

pytestmark = pytest.mark.slow
JSON = "application/json"


@pytest.fixture
def upstream(tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl") as server:
        yield server


def register_upstream(api, upstream, policy: dict) -> None:
    """The upstream as `pay`, its tools discovered (pay.charge, pay.echo…), and the agent's policy."""
    registered = api.post("/mcp/servers", json={"name": "pay", "url": upstream.url})
    assert registered.status_code == 201, registered.text
    tools = {tool["name"] for tool in registered.json()["tools"]}
    assert {"pay.charge", "pay.echo", "pay.fail", "pay.slow"} <= tools
    assert api.post("/policies/buyer", json=policy).status_code == 200


def test_official_client_lists_calls_dedups_blocks_and_caps(live_server, key_a, owner_a, upstream, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the upstream is on loopback
    api = httpx.Client(base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30)
    policy = {"blocked_tools": ["pay.fail"], "max_spend_usd_per_day": 1.0}
    register_upstream(api, upstream, policy)
    charge = {"amount": 700, "customer": "cus_1"}

    async def steps(client):
        listed = await client.list_tools()
        first = await client.call_tool("pay.charge", charge, meta={"onceonly/spend_usd": 0.4})
        again = await client.call_tool("pay.charge", charge, meta={"onceonly/spend_usd": 0.4})
        blocked = await client.call_tool("pay.fail", {})
        second = await client.call_tool("pay.charge", {**charge, "customer": "cus_2"}, meta={"onceonly/spend_usd": 0.4})
        over = await client.call_tool("pay.charge", {**charge, "customer": "cus_3"}, meta={"onceonly/spend_usd": 0.4})
        return listed, first, again, blocked, second, over

    listed, first, again, blocked, second, over = mcp(f"{live_server.url}/mcp/buyer", key_a.raw, steps)
    names = [tool.name for tool in listed.tools]
    assert "pay.charge" in names and "pay.fail" not in names  # a blocked tool is not offered
    schema = next(tool for tool in listed.tools if tool.name == "pay.charge").input_schema
    assert set(schema["properties"]) == {"amount", "customer"}  # the upstream's schema, as discovered

    assert not first.is_error and first.structured_content["charged"] == 700
    assert again.structured_content == first.structured_content and not again.is_error  # the original's result
    charged = [line["arguments"]["customer"] for line in upstream.journal_lines()]
    assert charged.count("cus_1") == 1  # journal: 1 after the repeat

    assert blocked.is_error and "tool_blocked" in blocked.content[0].text and "pay.fail" in blocked.content[0].text
    assert not second.is_error  # $0.80 of $1.00 spent
    assert over.is_error and "daily_spend_exceeded" in over.content[0].text and "$1.00" in over.content[0].text
    assert [line["arguments"]["customer"] for line in upstream.journal_lines()] == ["cus_1", "cus_2"]

    # Every decision is a step of the session's run, and the dashboard's timeline shows them.
    decisions = list(Decision.objects.order_by("pk"))
    assert [(d.tool, d.outcome) for d in decisions] == [
        ("pay.charge", "executed"),
        ("pay.charge", "dedup"),
        ("pay.fail", "blocked"),
        ("pay.charge", "executed"),
        ("pay.charge", "blocked"),
    ]
    run_ids = {d.run_id for d in decisions}
    assert len(run_ids) == 1 and run_ids != {""}
    page = owner_a.login(Client()).get("/runs/timeline/", {"run_id": run_ids.pop()}).content.decode()
    for d in decisions:
        assert f"/decisions/{d.pk}/" in page
    # What the upstream received: the dispatch's id and the call's idempotency key in _meta.
    meta = upstream.journal_lines()[0]["meta"]
    assert meta["onceonly/dispatch_id"] == decisions[0].dispatch_id and meta["onceonly/idempotency_key"]


@pytest.fixture
def stack(gunicorn_server_mcp, key_a, upstream):
    api = httpx.Client(
        base_url=f"{gunicorn_server_mcp.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30
    )
    register_upstream(api, upstream, {})
    return gunicorn_server_mcp, api


@pytest.fixture
def gunicorn_server_mcp(transactional_db):
    from tests.support.servers import GunicornServer

    server = GunicornServer(workers=2, threads=8, ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1")
    yield server
    server.stop()


def call(url: str, key: str, tool: str, arguments: dict, request_id: int = 1) -> dict:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_fifty_concurrent_identical_calls_reach_the_upstream_once(stack, key_a, upstream):
    server, _ = stack
    url = f"{server.url}/mcp/buyer"
    start = threading.Barrier(50)

    def one(n):
        start.wait()
        return call(url, key_a.raw, "pay.slow", {"seconds": 0.5}, request_id=n)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    assert [line["tool"] for line in upstream.journal_lines()] == ["slow"]  # exactly once
    outcomes = sorted(answer["result"]["_meta"]["onceonly/decision"]["decision"] for answer in answers)
    assert outcomes == ["dedup"] * 49 + ["executed"]
    # The twins waited for the first call and answered its result.
    assert {json.dumps(answer["result"]["content"], sort_keys=True) for answer in answers} == {
        json.dumps([{"type": "text", "text": "slept 0.5"}], sort_keys=True)
    }


def test_no_upstream_call_after_the_kill_switch_answers(stack, key_a, upstream):
    server, api = stack
    url = f"{server.url}/mcp/buyer"
    stop = threading.Event()
    answers: list[dict] = []

    def traffic(worker):
        n = 0
        while not stop.is_set():
            n += 1
            answers.append(call(url, key_a.raw, "pay.slow", {"seconds": 0.05, "n": f"{worker}-{n}"}))

    with ThreadPoolExecutor(8) as pool:
        for worker in range(8):
            pool.submit(traffic, worker)
        time.sleep(1.5)
        disabled = api.post("/agents/buyer/disable", json={"reason": "incident"})
        answered_at = time.time()
        assert disabled.status_code == 200, disabled.text
        time.sleep(1.0)
        stop.set()
    # The guarantee is about requests leaving the gateway: none is written after the disable answered (the kill
    # switch's fence). A request written just before it is journaled by the upstream a few milliseconds later (its
    # HTTP server and MCP routing); traffic went on for a second after the answer, so a request let through by the
    # switch would be journaled well after this margin.
    journal = upstream.journal_lines()
    before = [line for line in journal if line["at"] <= answered_at]
    after = [line for line in journal if line["at"] > answered_at + 0.2]
    assert len(before) >= 10 and after == []  # traffic ran, and nothing reached the upstream once disabled
    decided = [a["result"] for a in answers if a["result"]["_meta"]["onceonly/decision"]]
    # The rest were refused before any decision: the tool's 4 dispatch slots were full (8 callers), nothing reserved.
    busy = [a["result"]["_meta"]["onceonly/refused"]["error"] for a in answers if a["result"] not in decided]
    assert set(busy) <= {"dispatch_busy"}
    refused = [r for r in decided if r["_meta"]["onceonly/decision"]["policy_reason"] == "agent_disabled"]
    assert refused and all(r["isError"] for r in refused)


def test_a_disabled_upstream_server_is_not_offered_and_its_tools_are_blocked(live_server, key_a, upstream, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    api = httpx.Client(base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30)
    register_upstream(api, upstream, {})
    McpServer.objects.update(enabled=False)

    async def steps(client):
        return await client.list_tools(), await client.call_tool("pay.echo", {"text": "hi"})

    listed, called = mcp(f"{live_server.url}/mcp/buyer", key_a.raw, steps)
    assert [tool.name for tool in listed.tools] == []
    assert called.is_error and "its MCP server 'pay' is disabled" in called.content[0].text
    assert called.meta["onceonly/decision"]["policy_reason"] == "tool_disabled"
    assert upstream.journal_lines() == []
