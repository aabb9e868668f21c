"""The SDK's exactly-once helpers end to end through the real onceonly-sdk 3.0.5 against a live server."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from onceonly import OnceOnly, idempotent, idempotent_ai

from idempotency.models import Lease, LeaseAttempt, LockRecord
from tests.conftest import make_key
from tests.support.sdk_race import race


def run_async(coroutine):
    """``asyncio.run`` in a thread of its own: once a browser test has started Playwright's sync API (a session-wide
    fixture), the test thread has a running event loop and refuses a second one. Agents run their loops anyway."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_check_lock_locked_then_duplicate(sdk):
    first = sdk.check_lock(key="example:basic:order-123:charge", ttl=60, meta={"order": 123}, request_id="req-basic-1")
    assert (first.locked, first.duplicate) == (True, False)
    assert first.ttl == 60 and first.request_id == "req-basic-1"
    second = sdk.check_lock(key="example:basic:order-123:charge", ttl=60)
    assert (second.locked, second.duplicate) == (False, True)
    assert second.first_seen_at and second.first_seen_at.endswith("Z")
    assert second.raw["metadata"] == {"order": 123}


def test_check_lock_async(sdk):
    async def twice():
        a = await sdk.check_lock_async(key="example:async:1", ttl=60)
        b = await sdk.check_lock_async(key="example:async:1", ttl=60)
        return a, b

    a, b = run_async(twice())
    assert a.locked and b.duplicate


def test_with_ttl_a_lock_is_free_again_after_expiry(sdk):
    assert sdk.check_lock(key="example:ttl", ttl=1).locked
    assert sdk.check_lock(key="example:ttl", ttl=1).duplicate
    time.sleep(1.1)
    assert sdk.check_lock(key="example:ttl", ttl=1).locked


def test_idempotent_decorator_runs_the_function_once_per_input(sdk):
    sent = []

    @idempotent(sdk, key_prefix="example:decorator:sync", ttl=60, return_value_on_duplicate="DUPLICATE")
    def send_welcome(user: str) -> str:
        sent.append(user)
        return "SENT"

    assert send_welcome("alice") == "SENT"
    assert send_welcome("alice") == "DUPLICATE"
    assert send_welcome("bob") == "SENT"
    assert sent == ["alice", "bob"]


def test_idempotent_decorator_on_an_async_function(sdk):
    calls = []

    @idempotent(sdk, key_prefix="example:async", ttl=60, return_value_on_duplicate="DUPLICATE")
    async def job(n: int) -> str:
        calls.append(n)
        return "SUCCESS"

    async def run():
        return await job(1), await job(1)

    assert run_async(run()) == ("SUCCESS", "DUPLICATE")
    assert calls == [1]


def test_lease_extend_complete_through_the_sdk(sdk):
    lease = sdk.ai.lease(key="ai:tool:refund:u1:10", ttl=60)
    assert lease["status"] == "acquired"
    extended = sdk.ai.extend(key="ai:tool:refund:u1:10", lease_id=lease["lease_id"], ttl=120)
    assert extended["status"] == "extended"
    done = sdk.ai.complete(key="ai:tool:refund:u1:10", lease_id=lease["lease_id"], result={"refund": "re_1"})
    assert done["status"] == "completed"
    assert sdk.ai.result("ai:tool:refund:u1:10").result == {"refund": "re_1"}
    assert sdk.ai.status("ai:tool:refund:u1:10").status == "completed"


def test_lease_fail_and_cancel_through_the_sdk(sdk):
    lease = sdk.ai.lease(key="k-fail", ttl=60)
    assert sdk.ai.fail(key="k-fail", lease_id=lease["lease_id"], error_code="charge_failed")["status"] == "failed"
    assert sdk.ai.result("k-fail").error_code == "charge_failed"
    lease = sdk.ai.lease(key="k-cancel", ttl=60)
    assert sdk.ai.cancel(key="k-cancel", lease_id=lease["lease_id"], reason="stop")["status"] == "cancelled"
    assert sdk.ai.lease(key="k-cancel", ttl=60)["status"] == "acquired"


def test_run_fn_runs_once_and_replays_the_result(sdk):
    calls = []

    def charge():
        calls.append(1)
        return {"ok": True}

    first = sdk.ai.run_fn("ai:agent:charge:user_42:invoice_101", charge, ttl=300, extend_every=0.2)
    assert (first.ok, first.status, first.result) == (True, "completed", {"ok": True})
    again = sdk.ai.run_fn("ai:agent:charge:user_42:invoice_101", charge, ttl=300)
    assert again.status == "completed" and again.result == {"ok": True}
    assert calls == [1]


def test_run_fn_after_an_exception_fails_and_the_next_run_re_executes(sdk):
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("card declined")
        return {"paid": True}

    with pytest.raises(RuntimeError, match="card declined"):
        sdk.ai.run_fn("ai:flaky", flaky, ttl=60, error_code="charge_failed")
    assert sdk.ai.status("ai:flaky").status == "failed"
    second = sdk.ai.run_fn("ai:flaky", flaky, ttl=60)
    assert second.status == "completed" and second.result == {"paid": True}
    assert len(attempts) == 2
    assert list(LeaseAttempt.objects.order_by("version").values_list("outcome", flat=True)) == ["failed", "completed"]


def test_concurrent_run_fn_runs_fn_once_and_the_waiter_gets_the_result(live_server, key_a):
    calls = []
    started = threading.Event()

    def slow():
        calls.append(1)
        started.set()
        time.sleep(1.0)
        return {"value": 42}

    def run():
        with OnceOnly(api_key=key_a.raw, base_url=f"{live_server.url}/v1", fail_open=False) as client:
            return client.ai.run_fn("ai:job:shared", slow, ttl=30, timeout=20, poll_min=0.2, poll_max=0.5)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run)
        started.wait(10)
        second = pool.submit(run)
        results = [first.result(30), second.result(30)]
    assert calls == [1]
    assert all(r.status == "completed" and r.result == {"value": 42} for r in results)


def test_idempotent_ai_decorator(sdk):
    runs = []

    @idempotent_ai(sdk, key_fn=lambda user, amount: f"ai:tool:refund:{user}:{amount}", ttl=3600)
    def refund(user: str, amount: int) -> dict:
        runs.append((user, amount))
        return {"refunded": amount}

    first = refund("u1", 5)
    assert first.status == "completed" and first.result == {"refunded": 5}
    assert refund("u1", 5).result == {"refunded": 5}
    assert refund("u2", 5).status == "completed"
    assert runs == [("u1", 5), ("u2", 5)]


def test_langchain_idempotent_tool(sdk):
    from langchain_core.tools import tool
    from onceonly.integrations.langchain import make_idempotent_tool

    sent = []

    @tool
    def send_email(to: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    safe = make_idempotent_tool(send_email, client=sdk, key_prefix="tool", ttl=60)
    assert safe.invoke({"to": "a@x.test"}) == "sent to a@x.test"
    assert safe.invoke({"to": "a@x.test"}) == "Action 'send_email' skipped (idempotency key duplicate)."
    assert sent == ["a@x.test"]
    assert LockRecord.objects.get().metadata == {"tool": "send_email"}


# --- one winner under real concurrency, across server processes ----------------------------------------------


@pytest.mark.slow
def test_fifty_concurrent_check_locks_have_exactly_one_winner(gunicorn_server, account_a):
    key = make_key(account_a)
    results = race(f"{gunicorn_server.url}/v1", key.raw, 50, lambda c, _: c.check_lock(key="race:lock", ttl=60))
    assert sum(r.locked for r in results) == 1
    assert sum(r.duplicate for r in results) == 49
    assert LockRecord.objects.count() == 1


@pytest.mark.slow
def test_fifty_concurrent_leases_have_exactly_one_holder(gunicorn_server, account_a):
    key = make_key(account_a)
    results = race(f"{gunicorn_server.url}/v1", key.raw, 50, lambda c, _: c.ai.lease(key="race:lease", ttl=60))
    statuses = [r["status"] for r in results]
    assert statuses.count("acquired") == 1, statuses
    assert statuses.count("polling") == 49
    assert len({r["lease_id"] for r in results if r["lease_id"]}) == 1
    lease = Lease.objects.get()
    assert lease.version == 1 and LeaseAttempt.objects.count() == 1


@pytest.mark.slow
@pytest.mark.parametrize("ended", ["expired", "failed"])
def test_fifty_concurrent_takeovers_of_an_ended_lease_have_exactly_one_holder(gunicorn_server, account_a, ended):
    """The takeover: the conditional upsert lets one caller of fifty take the key over (version 2) and ends the old
    holder's attempt in the same statement; the old holder is refused."""
    key = make_key(account_a)
    url = f"{gunicorn_server.url}/v1"
    with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
        first = client.ai.lease(key="race:takeover", ttl=60)
        if ended == "failed":
            client.ai.fail(key="race:takeover", lease_id=first["lease_id"], error_code="boom")
        else:  # the holder stopped heart-beating a second ago
            Lease.objects.filter(key="race:takeover").update(expires_at=timezone.now() - timedelta(seconds=1))
    results = race(url, key.raw, 50, lambda c, _: c.ai.lease(key="race:takeover", ttl=60))
    statuses = [r["status"] for r in results]
    assert statuses.count("acquired") == 1 and statuses.count("polling") == 49, statuses
    winner = next(r for r in results if r["status"] == "acquired")
    assert winner["version"] == 2 and winner["lease_id"] != first["lease_id"]
    lease = Lease.objects.get()
    assert (lease.version, lease.lease_id, lease.status) == (2, winner["lease_id"], "in_progress")
    attempts = {a.version: (a.holder, a.outcome) for a in LeaseAttempt.objects.all()}
    assert attempts == {1: (first["lease_id"], ended), 2: (winner["lease_id"], "in_progress")}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key.raw}"}) as http:
        late = http.post("/ai/complete", json={"key": "race:takeover", "lease_id": first["lease_id"], "result": {}})
    assert late.status_code == 409 and late.json()["detail"]["error"] == "lease_mismatch"
