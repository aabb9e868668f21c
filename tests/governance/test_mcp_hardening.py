"""The MCP gateway under attack (an adversarial review's findings, each kept as a test): approvals bound to the
arguments even under an idempotency key, key digests that cannot collide with arguments, a moved server that needs
its credential again, hostile upstream answers, Redis down, the rate limit on every refusal, bounded sessions."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from governance import approvals, mcp_gateway, mcp_upstream
from governance.dispatch import _result_of
from governance.models import Approval, Decision, McpServer
from tests.governance.test_dispatch import SECRET, stats
from tests.governance.test_dispatch import receiver as receiver

JSON = "application/json"


def rpc(client: Client, method: str, params: dict | None = None, path: str = "/mcp/bot", **headers):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return client.post(path, json.dumps(body), content_type=JSON, headers=headers)


def call(client: Client, args: dict, key: str | None = None, tool: str = "pay"):
    params: dict = {"name": tool, "arguments": args}
    if key is not None:
        params["idempotencyKey"] = key
    return rpc(client, "tools/call", params).json()


@pytest.fixture
def pay(key_a, receiver):
    api = key_a.client()
    body = {"name": "pay", "url": f"{receiver}/ok", "auth": {"type": "hmac_sha256", "secret": SECRET}}
    assert api.post("/v1/tools", body, content_type=JSON).status_code == 200
    return api


def forget_key_records() -> None:
    """What the dedup window's end (or a Redis restart) does to the keys' conflict records."""
    from onceonly_site.redis_client import get_redis

    for name in get_redis().keys("oo:*:mcp:k:*"):
        get_redis().delete(name)


def test_an_approval_covers_the_arguments_it_was_asked_for_even_under_one_key(pay, key_a, receiver, owner_a):
    assert pay.post("/v1/policies/bot", {"require_approval": ["pay"]}, content_type=JSON).status_code == 200
    asked = call(pay, {"amount": 1, "to": "alice"}, key="K1")["result"]
    assert asked["_meta"]["onceonly/decision"]["policy_reason"] == "approval_required"
    approvals.decide(
        account_id=key_a.api_key.account_id,
        public_id=Approval.objects.get().public_id,
        approve=True,
        reason="",
        actor="a",
    )
    # The key's conflict record lapsed (it lives for the dedup window; an approval may live a week):
    forget_key_records()
    other = call(pay, {"amount": 99999, "to": "mallory"}, key="K1")["result"]
    assert other["_meta"]["onceonly/decision"]["policy_reason"] == "approval_required"  # a request of its own
    assert stats(receiver)["requests"] == 0
    forget_key_records()  # mallory's arguments hold the key now
    approved = call(pay, {"amount": 1, "to": "alice"}, key="K1")["result"]
    assert approved["_meta"]["onceonly/decision"]["decision"] == "executed" and stats(receiver)["requests"] == 1


def test_a_key_digest_never_equals_an_arguments_digest(pay, receiver):
    keyed = call(pay, {"amount": 5}, key="order-1")["result"]
    assert keyed["_meta"]["onceonly/decision"]["decision"] == "executed"
    lookalike = call(pay, {"idempotency_key": "order-1"})["result"]
    assert lookalike["_meta"]["onceonly/decision"]["decision"] == "executed"  # not the keyed call's result
    # Two calls with the same arguments under two keys are two calls; under one key, one.
    assert call(pay, {"amount": 5}, key="order-2")["result"]["_meta"]["onceonly/decision"]["decision"] == "executed"
    again = call(pay, {"amount": 5}, key="order-2")["result"]["_meta"]["onceonly/decision"]
    assert again["decision"] == "dedup" and "same idempotency key as decision" in again["explanation"]
    assert stats(receiver)["requests"] == 3


def test_a_null_params_key_falls_back_to_the_meta_key(pay, receiver):
    params = {"name": "pay", "arguments": {"n": 1}, "idempotencyKey": None, "_meta": {"onceonly/idempotency_key": "m"}}
    rpc(pay, "tools/call", params)
    conflict = rpc(pay, "tools/call", {**params, "arguments": {"n": 2}}).json()
    assert conflict["error"]["data"]["type"] == "idempotency_key_conflict"


def test_moving_a_server_needs_its_credential_again(key_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    McpServer.objects.create(
        account_id=key_a.api_key.account_id,
        name="github",
        url="http://127.0.0.1:9/mcp",
        auth_header_encrypted=__import__("governance.secrets", fromlist=["x"]).encrypt("Bearer ghp_SECRET"),
        auth_header_mask="***RET",
    )
    api = key_a.client()
    moved = api.patch("/v1/mcp/servers/github", {"url": "http://127.0.0.2:9/mcp"}, content_type=JSON)
    assert moved.status_code == 422 and moved.json()["detail"][0]["loc"] == ["body", "auth_header_value"]
    assert McpServer.objects.get().url == "http://127.0.0.1:9/mcp"
    path_only = api.patch("/v1/mcp/servers/github", {"url": "http://127.0.0.1:9/other"}, content_type=JSON)
    assert path_only.status_code == 200  # same origin: the credential goes where it went
    with_it = {"url": "http://127.0.0.2:9/mcp", "auth_header_value": "Bearer new"}
    assert api.patch("/v1/mcp/servers/github", with_it, content_type=JSON).status_code == 200


def test_hostile_answers_are_tool_errors_not_500s():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert _result_of(deep) == (None, "response is not JSON (or nested too deeply)")
    assert _result_of(b'{"a": "\\u0000"}')[1].startswith("response holds text no database can store")
    assert _result_of(b'{"a": "\\ud800"}')[1].startswith("response holds text no database can store")
    with pytest.raises(mcp_upstream.UpstreamError):
        mcp_upstream._from_json(deep, 1)
    result, error = mcp_upstream._call_result({"content": [{"type": "text", "text": "\x00"}]})
    assert result is None and "no database can store" in error
    with pytest.raises(mcp_upstream.UpstreamError, match="no database can store"):
        mcp_upstream._remote_tool({"name": "t", "description": "\ud800"}, 0)


def test_the_cursor_takes_ascii_digits_only(key_a):
    answer = rpc(key_a.client(), "tools/list", {"cursor": "²"})
    assert answer.status_code == 200 and answer.json()["error"]["code"] == -32602


def test_redis_down_is_a_json_rpc_503(key_a, private_redis, pay):
    client = key_a.client()
    assert rpc(client, "tools/list").status_code == 200
    private_redis.stop()
    for method, params in (("tools/call", {"name": "pay", "arguments": {}}), ("initialize", {})):
        answer = rpc(client, method, params)
        assert answer.status_code == 503 and answer["Content-Type"] == JSON, (method, answer.content)
        assert answer.json()["error"]["code"] == -32603 and answer["Retry-After"]
    assert not Decision.objects.exists()


def test_every_refused_request_takes_a_token(key_a):
    plan = key_a.api_key.account.plan
    plan.rate_limit_per_second, plan.rate_limit_burst = 1, 2
    plan.save(update_fields=["rate_limit_per_second", "rate_limit_burst"])
    from billing import auth

    auth.clear_local_cache()
    client = key_a.client()
    statuses = [rpc(client, "tools/call", {"name": "nope", "arguments": {}}).status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and statuses[2:] == [429, 429]


def test_sessions_per_key_are_bounded(key_a, monkeypatch):
    monkeypatch.setattr(mcp_gateway, "MAX_SESSIONS_PER_KEY", 3)
    client = key_a.client()
    ids = [rpc(client, "initialize", {"protocolVersion": "2025-11-25"})["Mcp-Session-Id"] for _ in range(5)]
    alive = [rpc(client, "tools/list", **{"Mcp-Session-Id": sid}).status_code for sid in ids]
    assert alive == [404, 404, 200, 200, 200]


def test_a_null_body_says_what_is_wrong(key_a):
    answer = key_a.client().post("/mcp/bot", "null", content_type=JSON).json()
    assert answer["error"]["message"] == "Parse error: The request body must be a JSON object."
