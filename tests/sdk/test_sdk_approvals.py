"""Human approval through the real onceonly-sdk (docs/approvals.md): the blocked call carries its approval in
``result`` (the part of the answer the SDK keeps); once approved, the identical retry runs the tool once; a second
retry is deduplicated; other args need an approval of their own — and 50 concurrent retries of an approved call
against a multi-process server run the tool exactly once."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from onceonly import OnceOnly

from governance import approvals
from governance.models import Approval, Decision
from tests.conftest import make_key
from tests.support.servers import GunicornServer
from tests.support.tool_endpoint import ToolEndpoint

ARGS = {"charge": "ch_1", "amount": 500}


def register(client, endpoint, name="stripe.refund"):
    tool = {"name": name, "url": endpoint.base + "/refund", "auth": {"type": "hmac_sha256", "secret": "s" * 24}}
    response = client.post("/v1/tools", tool, content_type="application/json")
    assert response.status_code == 200, response.content


def approve(approval_id):
    approval = Approval.objects.get(public_id=approval_id)
    approvals.decide(account_id=approval.account_id, public_id=approval_id, approve=True, reason="ok", actor="ops")


@pytest.fixture
def endpoint(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    yield tool
    tool.stop()


def test_approve_then_the_identical_retry_runs_once(sdk, key_a, endpoint):
    register(key_a.client(), endpoint)
    sdk.gov.upsert_policy({"agent_id": "billing-agent", "require_approval": ["stripe.refund"]})

    first = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args=ARGS)
    assert (first.ok, first.allowed, first.decision) == (False, False, "blocked")
    assert first.policy_reason == "approval_required"
    approval_id = first.result["approval_id"]
    assert approval_id.startswith("apr_") and first.result["status"] == "pending" and first.result["expires_at"]
    assert endpoint.calls == []

    approve(approval_id)
    retry = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args=ARGS)
    assert (retry.ok, retry.decision, retry.policy_reason) == (True, "executed", "within_budget")
    assert retry.result == {"refunded": True} and len(endpoint.calls) == 1

    again = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args=ARGS)
    assert again.decision == "dedup" and again.result == {"refunded": True} and len(endpoint.calls) == 1

    other = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args={**ARGS, "amount": 501})
    assert other.policy_reason == "approval_required" and other.result["approval_id"] != approval_id
    assert len(endpoint.calls) == 1
    assert Approval.objects.get(public_id=approval_id).status == Approval.Status.CONSUMED


@pytest.mark.slow
def test_fifty_concurrent_retries_of_an_approved_call_run_the_tool_once(transactional_db, account_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the registration below, made in this process
    endpoint = ToolEndpoint()
    server = GunicornServer(workers=2, threads=8, ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1")
    try:
        key = make_key(account_a)
        url = f"{server.url}/v1"
        with OnceOnly(api_key=key.raw, base_url=url, fail_open=False, timeout=60) as admin:
            admin.gov.upsert_policy({"agent_id": "racer", "require_approval": ["stripe.*"]})
        register(key.client(), endpoint)
        with OnceOnly(api_key=key.raw, base_url=url, fail_open=False, timeout=60) as agent:
            first = agent.ai.run_tool(agent_id="racer", tool="stripe.refund", args=ARGS)
        approve(first.result["approval_id"])

        n = 50
        barrier = threading.Barrier(n)

        def retry(_):
            with OnceOnly(api_key=key.raw, base_url=url, fail_open=False, timeout=60, max_retries_429=20) as client:
                barrier.wait(30)
                return client.ai.run_tool(agent_id="racer", tool="stripe.refund", args=ARGS)

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(retry, range(n)))
        decisions = sorted(r.decision for r in results)
        assert decisions.count("executed") == 1, decisions
        assert set(decisions) <= {"executed", "dedup"}, decisions
        assert len(endpoint.calls) == 1
        assert Decision.objects.filter(agent__agent_id="racer", outcome="executed").count() == 1
        assert Approval.objects.get(public_id=first.result["approval_id"]).status == Approval.Status.CONSUMED
    finally:
        server.stop()
        endpoint.stop()
