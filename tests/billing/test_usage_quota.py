"""Monthly quotas enforced atomically (402 usage_limit), usage endpoints, the database mirror, month rollover."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone
from onceonly import OnceOnly
from onceonly.exceptions import OverLimitError

from billing import usage
from billing.models import Plan, UsageMonth
from billing.services import account_set_plan
from billing.tasks import mirror_usage
from tests.conftest import make_key
from tests.support.redis_calls import lose_redis_state


@pytest.fixture
def tiny(account_a, plans):
    """Account A on the Free plan with small quotas (plan rows are editable)."""
    Plan.objects.filter(code="free").update(make_monthly_limit=3, ai_monthly_limit=2)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="free"))
    return make_key(account_a)


def lock(client, key):
    return client.post("/v1/check-lock", {"key": key, "ttl": 60}, content_type="application/json")


def test_check_locks_stop_at_the_quota_with_402_and_duplicates_stay_free(tiny):
    client = tiny.client()
    assert [lock(client, f"k{n}").status_code for n in range(3)] == [200, 200, 200]
    refused = lock(client, "k3")
    assert refused.status_code == 402
    assert refused.json()["detail"] == {
        "error": "usage_limit",
        "kind": "make",
        "plan": "free",
        "usage": 3,
        "limit": 3,
        "message": "The free plan's monthly make quota is used up (3/3); it resets at the start of the next UTC month.",
    }
    assert lock(client, "k0").json()["status"] == "duplicate"  # a duplicate costs nothing, even over quota
    body = client.get("/v1/usage", {"kind": "make"}).json()
    assert (body["usage"], body["limit"], body["blocked_total_month"], body["requests_total_month"]) == (3, 3, 1, 5)
    assert client.get("/v1/me").json()["blocked_total_all_time"] == 1


def test_lease_quota_charges_only_acquisitions(tiny):
    client = tiny.client()

    def lease(key):
        return client.post("/v1/ai/lease", {"key": key, "ttl": 60}, content_type="application/json")

    assert lease("a").json()["charged"] == 1 and lease("a").json()["status"] == "polling"
    assert lease("b").json()["usage"] == 2
    refused = lease("c")
    assert refused.status_code == 402 and refused.json()["detail"]["kind"] == "ai"
    assert lease("a").json()["status"] == "polling"  # a held key is still answered over quota
    all_ = client.get("/v1/usage/all")
    assert all_["X-OnceOnly-Plan"] == "free" and all_["X-OnceOnly-Month"] == usage.month_of()
    ai = all_.json()["ai"]
    assert (ai["usage"], ai["blocked_total_month"], ai["polling_total_month"]) == (2, 1, 2)


def test_governed_calls_consume_the_ai_quota(account_a, plans):
    Plan.objects.filter(code="pro").update(ai_monthly_limit=2)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="pro"))
    client = make_key(account_a).client()

    def run(n):
        return client.post(
            "/v1/ai/run", {"agent_id": "bot", "tool": "t", "args": {"n": n}}, content_type="application/json"
        )

    assert [run(n).status_code for n in range(2)] == [200, 200]
    assert run(2).status_code == 402
    assert run(0).json()["decision"] == "dedup"  # replays are free


def test_usage_endpoints_validate_kind(key_a):
    assert key_a.client().get("/v1/usage", {"kind": "tokens"}).status_code == 422


def test_redis_loss_rebuilds_usage_from_the_mirror(tiny):
    client = tiny.client()
    for n in range(3):
        lock(client, f"m{n}")
    mirror_usage()
    row = UsageMonth.objects.get()
    assert (row.make, row.requests_make) == (3, 3)
    lose_redis_state()
    assert lock(client, "m-new").status_code == 402  # still used up: rebuilt from the mirror, not reset to 0


def test_month_rollover_resets_usage(tiny, monkeypatch):
    client = tiny.client()
    for n in range(3):
        lock(client, f"r{n}")
    assert lock(client, "r3").status_code == 402
    next_month = (timezone.now().replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=5)
    monkeypatch.setattr(timezone, "now", lambda: next_month)
    assert lock(client, "r3").status_code == 200
    assert client.get("/v1/usage").json()["usage"] == 1
    assert client.get("/v1/usage").json()["month"] == next_month.strftime("%Y-%m")


@pytest.mark.slow
def test_free_plan_quota_under_concurrency_through_the_sdk(gunicorn_server, account_a, plans):
    # 1,000 check-locks a month; its rate limit (5/s) raised for this burst — rate limits have their own tests.
    Plan.objects.filter(code="free").update(rate_limit_per_second=100_000, rate_limit_burst=100_000)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="free"))
    key = make_key(account_a)
    url = f"{gunicorn_server.url}/v1"
    barrier = threading.Barrier(20)

    def worker(w):
        outcomes = []
        with OnceOnly(api_key=key.raw, base_url=url, fail_open=False, timeout=30) as client:
            barrier.wait(30)
            for n in range(55):
                try:
                    outcomes.append(client.check_lock(key=f"q:{w}:{n}", ttl=60).locked)
                except OverLimitError as exc:
                    outcomes.append(exc.detail)
        return outcomes

    with ThreadPoolExecutor(20) as pool:
        results = [o for batch in pool.map(worker, range(20)) for o in batch]
    assert results.count(True) == 1000
    refused = [r for r in results if isinstance(r, dict)]
    assert len(refused) == 100 and all(r["usage"] == 1000 and r["limit"] == 1000 for r in refused)
    with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
        assert client.usage("make")["usage"] == 1000
        assert client.usage_all()["make"]["blocked_total_month"] == 100


def test_daily_usage_is_counted_and_mirrored(tiny):
    client = tiny.client()
    lock(client, "d1")
    lock(client, "d1")  # duplicate: not usage
    client.post("/v1/ai/lease", {"key": "L", "ttl": 60}, content_type="application/json")
    today = timezone.now().day
    days = usage.daily(tiny.api_key.account_id)
    assert days["make"][today - 1] == 1 and sum(days["make"]) == 1
    assert days["ai"][today - 1] == 1
    mirror_usage()
    # The per-day statistics of /v1/metrics are mirrored too (the duplicate, the lease acquisition).
    assert UsageMonth.objects.get().daily == {
        f"make:{today:02d}": 1,
        f"ai:{today:02d}": 1,
        f"dup:{today:02d}": 1,
        f"lease_acquired:{today:02d}": 1,
    }
    lose_redis_state()
    assert usage.daily(tiny.api_key.account_id)["make"][today - 1] == 1  # from the mirror


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("committed", [True, False], ids=["autocommit", "in a transaction"])
def test_a_lease_cycle_counts_its_statistics_once_each(account_a, committed, django_capture_on_commit_callbacks):
    """acquired, polling and completed are counted with the quota unit in its round trip (taken back when the call
    did not acquire), and the completion's answer carries the month's usage and wakes the key's waiters —
    committed or inside a transaction."""
    from django.db import transaction

    from idempotency.waiting import lease_channel
    from onceonly_site.redis_client import get_redis

    client = make_key(account_a).client()
    account = account_a.pk
    today = f"{timezone.now().day:02d}"
    waiter = get_redis().pubsub(ignore_subscribe_messages=True)
    waiter.subscribe(lease_channel(account, "L"))

    def cycle():
        first = client.post("/v1/ai/lease", {"key": "L", "ttl": 60}, content_type="application/json").json()
        polled = client.post("/v1/ai/lease", {"key": "L", "ttl": 60}, content_type="application/json").json()
        body = {"key": "L", "lease_id": first["lease_id"], "result": {"ok": True}}
        return first, polled, client.post("/v1/ai/complete", body, content_type="application/json").json()

    if committed:
        first, polled, done = cycle()
    else:
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            first, polled, done = cycle()
    assert (first["status"], polled["status"], done["status"]) == ("acquired", "polling", "completed")
    assert (first["usage"], polled["usage"], done["usage"]) == (1, 1, 1)
    month = usage.snapshot(account)
    assert (month["ai"], month["requests_ai"], month["polling_ai"]) == (1, 2, 1)
    days = usage.day_fields(account, usage.month_of())
    counted = {
        name: days.get(f"{name}:{today}", 0) for name in ("ai", "lease_acquired", "polling_ai", "lease_completed")
    }
    assert counted == {"ai": 1, "lease_acquired": 1, "polling_ai": 1, "lease_completed": 1}
    woken, deadline = [], time.monotonic() + 1
    while time.monotonic() < deadline:  # get_message answers None for the subscription's confirmation too
        message = waiter.get_message(timeout=0.1)
        if message is not None:
            woken.append(message["channel"])
    waiter.close()
    assert woken == [lease_channel(account, "L").encode()]  # one wake-up, for the completion


def test_a_release_after_redis_lost_the_month_writes_nothing(account_a):
    """A unit given back after Redis lost the month's hash must not leave a hash of bare deltas (-1 ai, no TTL) that
    the next reservation would take for the month: nothing is written, and that reservation rebuilds from the
    mirror."""
    from onceonly_site.redis_client import get_redis

    account = account_a.pk
    assert usage.reserve(account, usage.AI, -1, counted_too="lease_acquired") == (True, 1)
    mirror_usage()
    lose_redis_state()
    usage.release(account, usage.AI, counted_too="lease_acquired", instead="polling_ai")
    assert not get_redis().exists(usage.usage_key(account))
    assert usage.reserve(account, usage.AI, -1) == (True, 2)  # the mirror's 1, then this one
    usage.release(account, usage.AI, counted_too="lease_acquired", instead="polling_ai")  # the hash is there now
    month = usage.snapshot(account)
    assert (month["ai"], month["polling_ai"]) == (1, 1)
