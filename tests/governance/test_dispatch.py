"""Signed dispatch against the example receiver (examples/tool_receiver.py) running as a real process on loopback."""

import json
import subprocess
import sys
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from billing.models import Notification
from governance.models import Decision, Tool
from tests.support.servers import ROOT, free_port, wait_http

SECRET = "example_secret_123"


@pytest.fixture
def receiver(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the receiver is on loopback
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "examples/tool_receiver.py", str(port)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TOOL_SECRET": SECRET, "SLOW_SECONDS": "1.5"},
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/_stats", process=process)
    yield base
    process.terminate()
    process.wait(10)


def stats(base):
    return httpx.get(f"{base}/_stats").json()


def register(client, base, name, path, **extra):
    body = {"name": name, "url": f"{base}{path}", "auth": {"type": "hmac_sha256", "secret": SECRET}, **extra}
    response = client.post("/v1/tools", body, content_type="application/json")
    assert response.status_code == 200, response.content


def run(client, tool, **args):
    return client.post(
        "/v1/ai/run",
        {"agent_id": "billing-agent", "tool": tool, "args": args, "spend_usd": 0.5},
        content_type="application/json",
    ).json()


def test_executed_with_the_receivers_result_and_verifiable_signatures(key_a, receiver):
    client = key_a.client()
    register(client, receiver, "send_email", "/ok")
    body = run(client, "send_email", to="a@x.test")
    assert (body["ok"], body["decision"], body["policy_reason"]) == (True, "executed", "within_budget")
    assert body["result"] == {"received": {"to": "a@x.test"}, "tool": "send_email", "first_time": True}
    seen = stats(receiver)
    assert seen["requests"] == 1 and seen["rejected"] == 0 and seen["executed"] == 1
    headers = seen["last_headers"]
    assert headers["x-onceonly-signature-alg"] == "hmac_sha256"
    assert headers["idempotency-key"].startswith("oo_") and headers["x-onceonly-fence"].isdigit()
    decision = Decision.objects.get()
    assert decision.http_status == 200 and decision.dispatch_id == headers["webhook-id"]

    again = run(client, "send_email", to="a@x.test")
    assert again["decision"] == "dedup" and again["result"] == body["result"]
    assert stats(receiver)["requests"] == 1  # not called again
    assert Tool.objects.get().last_status == 200


def test_the_signature_verifies_with_standardwebhooks_and_the_hex_header(key_a, receiver):
    import hashlib
    import hmac

    from governance import dispatch

    client = key_a.client()
    register(client, receiver, "t", "/ok")
    tool = Tool.objects.get()
    body = json.dumps({"args": {}}).encode()
    headers = dispatch.signed_request(tool, dispatch_id="msg_1", body=body, idempotency_key="k", fence=1)
    assert Webhook(SECRET.encode()).verify(body, headers) == {"args": {}}
    assert headers["X-OnceOnly-Signature"] == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_a_slow_tool_is_retried_then_fails_and_may_run_again(key_a, receiver, settings):
    settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS = 10
    client = key_a.client()
    register(client, receiver, "slow_tool", "/slow", timeout_ms=300, max_retries=2)
    body = run(client, "slow_tool", n=1)
    assert (body["ok"], body["decision"], body["policy_reason"]) == (False, "failed", "tool_error")
    assert stats(receiver)["by_path"]["/slow"] == 3  # first attempt + 2 retries
    assert body["remaining"]["spend_usd_today"] == 0.5  # spend kept
    assert Notification.objects.filter(kind="tool_error").count() == 1
    time.sleep(1.6)
    again = run(client, "slow_tool", n=1)
    assert again["decision"] == "failed"  # dispatched again, not dedup
    assert stats(receiver)["by_path"]["/slow"] == 6


def test_a_4xx_is_not_retried_and_a_5xx_is(key_a, receiver):
    client = key_a.client()
    register(client, receiver, "bad", "/error400", max_retries=3)
    register(client, receiver, "flaky", "/error500", max_retries=2)
    assert run(client, "bad")["policy_reason"] == "tool_error"
    assert run(client, "flaky")["policy_reason"] == "tool_error"
    by_path = stats(receiver)["by_path"]
    assert by_path["/error400"] == 1 and by_path["/error500"] == 3
    assert Decision.objects.get(tool="bad").http_status == 400


def test_a_non_json_answer_is_a_tool_error(key_a, receiver):
    client = key_a.client()
    register(client, receiver, "texty", "/text")
    assert run(client, "texty")["policy_reason"] == "tool_error"


def test_a_disabled_tool_is_blocked_and_not_called(key_a, receiver):
    client = key_a.client()
    register(client, receiver, "off", "/ok", enabled=False)
    body = run(client, "off")
    assert (body["decision"], body["policy_reason"]) == ("blocked", "tool_disabled")
    assert stats(receiver)["requests"] == 0


def test_dispatch_rechecks_the_url(key_a, receiver, settings):
    client = key_a.client()
    register(client, receiver, "later_private", "/ok")
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False  # e.g. the operator turned the setting off
    body = run(client, "later_private")
    assert body["policy_reason"] == "tool_error"
    assert stats(receiver)["requests"] == 0


def test_run_tool_through_the_sdk(live_server, key_a, receiver):
    from onceonly import OnceOnly

    with OnceOnly(api_key=key_a.raw, base_url=f"{live_server.url}/v1", fail_open=False) as sdk:
        sdk.gov.create_tool(
            {"name": "stripe.charge", "url": f"{receiver}/ok", "auth": {"type": "hmac_sha256", "secret": SECRET}}
        )
        result = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.charge", args={"amount": 9999}, spend_usd=0.5)
    assert result.allowed and result.decision == "executed"
    assert result.result["received"] == {"amount": 9999}
    assert stats(receiver)["rejected"] == 0 and stats(receiver)["executed"] == 1


def test_dispatch_connects_to_the_checked_address_and_keeps_the_host(key_a, receiver):
    client = key_a.client()
    port = receiver.rsplit(":", 1)[1]
    register(client, f"http://localhost:{port}", "by_name", "/ok")
    assert run(client, "by_name")["decision"] == "executed"
    assert stats(receiver)["last_headers"]["host"] == f"localhost:{port}"


def test_pinning_rewrites_names_only():
    from governance import dispatch, ssrf

    named = ssrf.CheckedUrl("https://tools.example.com:8443/hook?x=1", "tools.example.com", 8443, ("93.184.216.34",))
    assert dispatch.pinned(named) == (
        "https://93.184.216.34:8443/hook?x=1",
        {"Host": "tools.example.com:8443"},
        {"sni_hostname": "tools.example.com"},
    )
    literal = ssrf.CheckedUrl("http://[2001:db8::1]/x", "2001:db8::1", 80, ("2001:db8::1",))
    assert dispatch.pinned(literal) == ("http://[2001:db8::1]/x", {}, {})
