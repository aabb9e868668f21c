"""The kill switch stops dispatches already in flight: the agent's enabled state is re-checked right before each
attempt's request is written (retries included), under a fence the disable waits for, so no tool request leaves the
server after the disable has answered. A call caught before its first attempt ends as blocked / agent_disabled:
reservation released, nothing charged. A call caught before a retry ends as failed / agent_disabled, charged like a
tool error: its earlier attempt reached the tool, which may have acted on it. Either way its intent is gone and the
decision recorded.

Without the re-check, with 50 calls in flight, up to 7 of 200 tool requests (mostly retries) reached the tool
1–108 ms after the disable was acknowledged: an operator who pressed the switch could not rely on it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest
from django.db import connection

from billing import usage
from billing.auth import plan_limits_for
from governance import ledger, services
from governance.choices import CHARGED_OUTCOMES
from governance.models import Agent, Decision, DecisionRollup, DispatchIntent
from tests.support.governance import register_tool
from tests.support.redis_calls import lose_redis_state
from tests.support.servers import ROOT, GunicornServer, free_port, wait_http
from tests.support.tool_endpoint import ToolEndpoint

AGENT, TOOL, PRICE = "billing-agent", "stripe.refund", Decimal(1)
RECEIVER = ROOT / "tests" / "support" / "timestamping_receiver.py"


def register(client, url, **extra):
    response = register_tool(client, TOOL, url, price_usd=int(PRICE), **extra)
    assert response.status_code == 200, response.content


def counters(account_id: int) -> tuple[int, Decimal]:
    """Today's reserved calls of TOOL and the agent's spend, as the caps see them: what a dry run of one more call
    reports (``remaining``, the counts after its reservation) less that call. A dry run decides like a real call —
    from the Redis counters, rebuilt from the decision log first if Redis lost them — and writes nothing; it needs the
    agent enabled, so the agent is enabled first if the test disabled it."""
    if not Agent.objects.get(account_id=account_id, agent_id=AGENT).is_enabled:
        services.agent_set_enabled(
            account_id=account_id, agent_id=AGENT, enabled=True, reason="reading the counters", actor="test"
        )
    outcome = services.governed_call(
        account_id=account_id,
        plan=plan_limits_for(account_id),
        agent_id=AGENT,
        tool=TOOL,
        args={"probe": uuid.uuid4().hex},
        spend_usd=None,
        dry_run=True,
    )
    assert outcome.decision.policy_reason == "within_budget", outcome.decision.policy_reason
    remaining = outcome.remaining
    return remaining["calls_today"] - 1, Decimal(str(remaining["spend_usd_today"])) - PRICE


@pytest.mark.django_db(transaction=True)
def test_a_retry_after_the_disable_is_not_sent_and_the_attempt_stays_charged(key_a, settings):
    """The first attempt reaches the tool, which has the agent disabled (committed, from another connection) and then
    drops the connection: the retry must not go out, and the attempt that went out stays charged (the tool may have
    acted on it before the connection dropped)."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    client = key_a.client()
    register(client, endpoint.base + "/refund", max_retries=2)
    capped = client.post(f"/v1/policies/{AGENT}", {"max_spend_usd_per_day": 10}, content_type="application/json")
    assert capped.status_code == 200, capped.content

    def disable_then_drop_the_connection() -> None:
        endpoint.on_call = None
        services.agent_set_enabled(
            account_id=key_a.api_key.account_id, agent_id=AGENT, enabled=False, reason="runaway", actor="test"
        )
        connection.close()  # this thread's own connection
        raise ConnectionAbortedError("the tool fell over")  # no answer: the server retries

    endpoint.on_call = disable_then_drop_the_connection
    try:
        body = client.post(
            "/v1/ai/run",
            {"agent_id": AGENT, "tool": TOOL, "args": {"order": 1}, "spend_usd": 2},
            content_type="application/json",
        ).json()
    finally:
        endpoint.stop()
    assert len(endpoint.calls) == 1  # the retry never left
    assert (body["ok"], body["decision"], body["policy_reason"]) == (False, "failed", "agent_disabled")
    decision = Decision.objects.get()
    assert (decision.outcome, decision.policy_reason, decision.spend_usd) == ("failed", "agent_disabled", 2)
    assert decision.dispatch_id == endpoint.calls[0]["webhook_id"]  # the operator can ask the tool about it
    assert (decision.declared_spend_usd, decision.operator_price_usd) == (2, 1)
    assert not DispatchIntent.objects.exists()
    assert ledger.verify(decision.account_id).ok
    rollup = DecisionRollup.objects.get()
    assert (rollup.outcome, rollup.count, rollup.spend_usd) == ("failed", 1, 2)
    assert usage.current(key_a.api_key.account_id, usage.AI) == 0  # ai counts executed or allowed calls only
    assert counters(key_a.api_key.account_id) == (1, 2)  # the reservation stands, as for a tool error
    lose_redis_state()  # …and the rebuild from the decision log counts it again
    assert counters(key_a.api_key.account_id) == (1, 2)


@pytest.mark.django_db(transaction=True)
def test_a_call_disabled_before_its_first_attempt_is_blocked_and_not_charged(key_a, settings, monkeypatch):
    """The switch is pressed between the call's start (agent enabled, reservation taken) and its first attempt."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    client = key_a.client()
    register(client, endpoint.base + "/refund")
    original = services.dispatch.dispatch

    def disable_first(*args, **kwargs):
        services.agent_set_enabled(
            account_id=key_a.api_key.account_id, agent_id=AGENT, enabled=False, reason="runaway", actor="test"
        )
        return original(*args, **kwargs)

    monkeypatch.setattr(services.dispatch, "dispatch", disable_first)  # only to time the (real) disable
    try:
        body = client.post(
            "/v1/ai/run", {"agent_id": AGENT, "tool": TOOL, "args": {"order": 2}}, content_type="application/json"
        ).json()
    finally:
        endpoint.stop()
    assert endpoint.calls == []
    assert (body["ok"], body["decision"], body["policy_reason"]) == (False, "blocked", "agent_disabled")
    decision = Decision.objects.get()
    assert (decision.outcome, decision.spend_usd, decision.operator_price_usd) == ("blocked", 0, 1)
    assert not DispatchIntent.objects.exists()
    assert usage.current(key_a.api_key.account_id, usage.AI) == 0
    assert counters(key_a.api_key.account_id) == (0, 0)


def log(base: str) -> list[list]:
    return httpx.get(f"{base}/_log", timeout=10).json()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_no_tool_request_is_received_after_the_disable_answered(key_a, settings):
    """150 client threads make governed calls to a slow-ish tool that fails every first attempt (so every call
    retries) on a real gunicorn (2 processes × 8 threads); the kill switch is pressed through the API mid-load. The
    receiver (tests/support/timestamping_receiver.py) logs the kernel's receive time of every request: none may be
    later than the moment the disable's answer was back in this process (both CLOCK_REALTIME), with no tolerance."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(RECEIVER), str(port), "25"])
    base = f"http://127.0.0.1:{port}"
    server = None
    try:
        wait_http(f"{base}/_log", process=receiver)
        register(key_a.client(), f"{base}/refund", max_retries=3, timeout_ms=2000)
        # Bulkheads wide open: this test wants every thread in flight to one tool when the switch is pressed.
        server = GunicornServer(
            workers=2,
            threads=8,
            ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1",
            ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT="1000",
            ONCEONLY_DISPATCH_SLOTS_PER_TOOL="1000",
            ONCEONLY_DISPATCH_SLOTS_PER_PROCESS="8",
        )
        stop = threading.Event()
        answers: list[tuple[int, dict]] = []

        http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {key_a.raw}"},
            timeout=30,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        )

        def agent_loop(index: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = http.post(
                        "/v1/ai/run",
                        json={"agent_id": AGENT, "tool": TOOL, "spend_usd": 0, "args": {"order": f"{index}-{n}"}},
                    )
                    answers.append((response.status_code, response.json()))
                except Exception as exc:  # reported by the assertion on the answers below
                    answers.append((0, {"error": repr(exc)}))
                    return

        threads = [threading.Thread(target=agent_loop, args=(i,)) for i in range(150)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while len(log(base)) < 60 and time.monotonic() < deadline:  # calls and retries in flight
            time.sleep(0.05)
        # Through the API in this process: it answers as soon as it has committed, not after the gunicorn queue.
        disabled = key_a.client().post(
            f"/v1/agents/{AGENT}/disable", {"reason": "runaway loop"}, content_type="application/json"
        )
        answered_at = time.time_ns()  # the receiver's stamps are CLOCK_REALTIME too
        assert disabled.status_code == 200 and disabled.json()["is_enabled"] is False
        time.sleep(0.5)  # the load goes on against the disabled agent
        stop.set()
        for thread in threads:
            thread.join(30)
        http.close()
        received = log(base)
    finally:
        if server is not None:
            server.stop()
        receiver.terminate()
        try:
            receiver.wait(10)
        except subprocess.TimeoutExpired:
            receiver.kill()
            receiver.wait()

    assert [entry for entry in received if entry[0] is None] == [], "requests without a kernel receive time"
    late = [entry for entry in received if entry[0] > answered_at]
    assert late == [], (
        f"{len(late)} of {len(received)} tool requests were received after the disable answered, by "
        f"{sorted((stamp - answered_at) / 1e6 for stamp, _, _ in late)} ms"
    )
    before = [entry[0] for entry in received]
    print(
        f"{len(received)} tool requests, the last received {(answered_at - max(before)) / 1e6:.3f} ms before the "
        "disable answered"
    )
    assert sum(1 for entry in received if entry[2] == 200) > 0  # retries did happen before the switch
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]

    caught = Decision.objects.filter(policy_reason="agent_disabled").exclude(dispatch_id="")
    assert caught.exists(), "no call was in flight when the switch was pressed"
    # Caught before its first attempt: blocked, free; before a retry (the first was answered 503): failed, charged.
    assert all((d.outcome, d.spend_usd, d.allowed) in {("blocked", 0, False), ("failed", 1, False)} for d in caught)
    assert not DispatchIntent.objects.exists()
    charged = Decision.objects.filter(tool=TOOL, outcome__in=CHARGED_OUTCOMES)
    assert counters(key_a.api_key.account_id) == (charged.count(), sum((d.spend_usd for d in charged), Decimal(0)))


@pytest.mark.django_db(transaction=True)
def test_each_attempt_rechecks_the_agent_once(key_a, settings):
    """The re-check is one read per attempt (in the round trip that takes the fence on PostgreSQL), plus one
    statement that releases the fence; a permit-only call has none (test_decision_ledger pins its two statements)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    client = key_a.client()
    register(client, endpoint.base + "/refund", max_retries=2)
    fails = iter([True])

    def fail_once() -> None:
        if next(fails, False):
            raise ConnectionAbortedError("the tool fell over")

    endpoint.on_call = fail_once
    try:
        with CaptureQueriesContext(connection) as queries:
            body = client.post(
                "/v1/ai/run", {"agent_id": AGENT, "tool": TOOL, "args": {"order": 2}}, content_type="application/json"
            ).json()
    finally:
        endpoint.stop()
    assert body["decision"] == "executed" and len(endpoint.calls) == 2
    statements = [q["sql"] for q in queries]
    assert sum("is_enabled FROM" in sql for sql in statements) == 2  # one per attempt
    if connection.vendor == "postgresql":
        assert sum("pg_advisory_lock_shared" in sql for sql in statements) == 2  # with the read
        assert sum("pg_advisory_unlock_shared" in sql for sql in statements) == 2
