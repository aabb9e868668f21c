"""The MCP gateway (/mcp/) driven by the official `mcp` client against a live server: the handshake era and
2026-07-28, tools/list filtered by policy, tools/call through the governed call to a registered webhook tool (the
example receiver, a real process), deduplication by idempotency key, refusals as tool errors, protocol errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

from governance.models import Decision
from idempotency.models import RunEvent
from tests.governance.test_dispatch import SECRET, stats
from tests.governance.test_dispatch import receiver as receiver


def mcp(url: str, key: str, steps, *, mode: str = "legacy", headers: dict[str, str] | None = None) -> Any:
    """Run ``steps(client)`` (async) with the official client connected to ``url``; its return value."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def main():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}", **(headers or {})}, timeout=30)
        async with http, Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            return await steps(client)

    # In a thread of its own: the browser tests' Playwright keeps an event loop running in the test thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, main).result()


def register(client, base, name, path="/ok", **extra):
    body = {"name": name, "url": f"{base}{path}", "auth": {"type": "hmac_sha256", "secret": SECRET}, **extra}
    response = client.post("/v1/tools", body, content_type="application/json")
    assert response.status_code == 200, response.content


@pytest.fixture
def gateway(live_server, key_a, receiver):
    client = key_a.client()
    register(client, receiver, "send_email", description="Send an email")
    register(client, receiver, "delete_user")
    response = client.post(
        "/v1/policies/mailer",
        {"agent_id": "mailer", "blocked_tools": ["delete_user"], "max_spend_usd_per_day": 1.0},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    return f"{live_server.url}/mcp/mailer"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
def test_list_and_call_in_each_era(gateway, key_a, receiver, mode):
    async def steps(client):
        listed = await client.list_tools()
        first = await client.call_tool("send_email", {"to": "a@x.test"}, meta={"onceonly/idempotency_key": "k1"})
        again = await client.call_tool("send_email", {"to": "a@x.test"}, meta={"onceonly/idempotency_key": "k1"})
        blocked = await client.call_tool("delete_user", {"id": 1})
        return client.protocol_version, listed, first, again, blocked

    version, listed, first, again, blocked = mcp(gateway, key_a.raw, steps, mode=mode)
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    assert [tool.name for tool in listed.tools] == ["send_email"]  # delete_user is blocked: not offered
    assert listed.tools[0].description == "Send an email"
    assert not first.is_error and first.structured_content["received"] == {"to": "a@x.test"}
    assert again.structured_content == first.structured_content and not again.is_error
    decision = first.meta["onceonly/decision"]
    assert (decision["decision"], again.meta["onceonly/decision"]["decision"]) == ("executed", "dedup")
    assert stats(receiver)["requests"] == 1  # the twin never reached the tool
    assert blocked.is_error and "tool_blocked" in blocked.content[0].text and "delete_user" in blocked.content[0].text
    outcomes = list(Decision.objects.order_by("pk").values_list("tool", "outcome"))
    assert outcomes == [("send_email", "executed"), ("send_email", "dedup"), ("delete_user", "blocked")]


def test_a_session_is_a_run_and_closing_it_finishes_the_run(gateway, key_a, receiver):
    async def steps(client):
        await client.call_tool("send_email", {"to": "b@x.test"})
        await client.call_tool("delete_user", {"id": 2})

    mcp(gateway, key_a.raw, steps)
    run_ids = set(Decision.objects.values_list("run_id", flat=True))
    assert len(run_ids) == 1 and next(iter(run_ids)).startswith("mcp-")
    run_id = run_ids.pop()
    kinds = list(RunEvent.objects.filter(run_id=run_id).order_by("pk").values_list("type", flat=True))
    assert kinds == ["tool_call", "tool_result", "tool_call", "tool_result", "run_finished"]


def test_the_daily_spend_cap_blocks_with_its_numbers(gateway, key_a, receiver):
    async def steps(client):
        meta = {"onceonly/spend_usd": 0.6}
        return [await client.call_tool("send_email", {"n": n}, meta=meta) for n in range(2)]

    first, second = mcp(gateway, key_a.raw, steps)
    assert not first.is_error
    assert second.is_error and "daily_spend_exceeded" in second.content[0].text
    assert "$0.60" in second.content[0].text and "$1.00" in second.content[0].text


def raw(url: str, key: str | None, body: Any, **headers: str) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **headers}, timeout=10)


def test_protocol_errors_are_json_rpc_errors_and_write_nothing(gateway, key_a, key_b):
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "send_email", "arguments": {}}}
    no_key = raw(gateway, None, call)
    assert no_key.status_code == 401 and no_key.headers["WWW-Authenticate"].startswith("Bearer")
    assert no_key.json()["error"]["code"] == -32600
    assert raw(gateway, "oo_live_wrong", call).status_code == 401
    unknown = raw(gateway, key_a.raw, {**call, "params": {"name": "nope"}}).json()
    assert unknown["error"] == {"code": -32602, "message": "Unknown tool: nope"} and unknown["id"] == 7
    # Another account's key does not see this account's tools.
    assert raw(gateway, key_b.raw, call).json()["error"]["message"] == "Unknown tool: send_email"
    bad_args = raw(gateway, key_a.raw, {**call, "params": {"name": "send_email", "arguments": [1]}}).json()
    assert bad_args["error"]["code"] == -32602
    huge = raw(gateway, key_a.raw, {**call, "params": {"name": "send_email", "arguments": {"n": 2**60}}}).json()
    assert huge["error"]["code"] == -32602 and huge["error"]["data"]["detail"][0]["loc"][:2] == ["body", "args"]
    assert raw(gateway, key_a.raw, b"{not json").json()["error"]["code"] == -32700
    assert raw(gateway, key_a.raw, [call]).status_code == 400
    assert raw(gateway, key_a.raw, {"jsonrpc": "2.0", "id": 1, "method": "nope"}).json()["error"]["code"] == -32601
    unsupported = raw(gateway, key_a.raw, call, **{"MCP-Protocol-Version": "1999-01-01"})
    assert unsupported.status_code == 400 and unsupported.json()["error"]["code"] == -32022
    mismatch = raw(gateway, key_a.raw, call, **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
    stranger = raw(gateway, key_a.raw, call, **{"Mcp-Session-Id": "made-up"})
    assert stranger.status_code == 404
    assert raw(gateway, key_a.raw, call, Origin="https://evil.example").status_code == 403
    assert httpx.get(gateway, headers={"Authorization": f"Bearer {key_a.raw}"}).status_code == 405
    assert raw(gateway.rsplit("/", 1)[0] + "/", key_a.raw, call).status_code == 400  # no agent named
    assert not Decision.objects.exists()


def test_idempotency_key_with_other_arguments_is_a_conflict(gateway, key_a, receiver):
    def call(args, key="same"):
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
        body["params"] = {"name": "send_email", "arguments": args, "idempotencyKey": key}
        return raw(gateway, key_a.raw, body).json()

    first = call({"to": "a@x.test"})
    assert first["result"]["isError"] is False
    conflict = call({"to": "someone-else@x.test"})
    assert conflict["error"]["data"] == {"type": "idempotency_key_conflict", "idempotencyKey": "same"}
    assert Decision.objects.count() == 1


def test_a_test_call_starts_from_the_tools_input_schema():
    from governance.forms import sample_args

    schema = {
        "type": "object",
        "properties": {
            "amount": {"type": "integer"},
            "currency": {"type": "string", "enum": ["eur", "usd"]},
            "note": {"type": "string"},
            "capture": {"type": "boolean", "default": False},
        },
        "required": ["amount", "currency", "capture"],
    }
    assert json.loads(sample_args(schema)) == {"amount": 1, "currency": "eur", "capture": False}
    assert json.loads(sample_args({"properties": {"q": {}}})) == {"q": "example"}
    assert sample_args(None) == sample_args({"type": "object"}) == '{"example": true}'
