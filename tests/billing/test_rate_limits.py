"""Per-key token buckets sized by the plan: 429 rate_limited with an honest integer Retry-After."""

import time

import pytest
from onceonly import OnceOnly
from onceonly.exceptions import RateLimitError

from billing.models import Plan
from billing.services import account_set_plan
from governance.models import Decision
from tests.conftest import make_key


@pytest.fixture
def slow_key(account_a, plans):
    Plan.objects.filter(code="agency").update(rate_limit_per_second=1, rate_limit_burst=3)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="agency"))
    return make_key(account_a)


@pytest.mark.parametrize(
    "call",
    [
        "me",
        "check-lock",
        "lease",
        "lease complete",
        "governed call",
        "keyed run",
        "blocked governed call",
        "call needing approval",
    ],
)
def test_burst_past_the_bucket_is_429_and_retry_after_is_honest(slow_key, call):
    client = slow_key.client()
    if call in ("blocked governed call", "call needing approval"):
        # Calls that end before the governed call's script (blocked by the policy's tool lists, or waiting for an
        # approval) still write a decision: they take a token like every request. The policy is set in the
        # database, not through the API, to leave the bucket full.
        from governance.services import policy_publish

        field = "blocked_tools" if call == "blocked governed call" else "require_approval"
        policy_publish(
            account_id=slow_key.api_key.account_id, agent_id="bot", policy={field: ["search.*"]}, source="t", actor="t"
        )

    if call == "lease complete":  # five holders, made without the API (the bucket stays full)
        from billing.auth import plan_limits_for
        from idempotency.services import lease_acquire

        plan = plan_limits_for(slow_key.api_key.account_id)
        holders = [
            lease_acquire(account_id=slow_key.api_key.account_id, plan=plan, key=f"l{n}", ttl=60, metadata=None)
            for n in range(5)
        ]

    def hit(n):
        if call == "me":
            return client.get("/v1/me")
        if call == "check-lock":
            return client.post("/v1/check-lock", {"key": f"k{n}"}, content_type="application/json")
        if call == "lease":  # the lean path of the lease calls takes its token as DRF's throttle does
            return client.post("/v1/ai/lease", {"key": f"l{n}"}, content_type="application/json")
        if call == "lease complete":
            body = {"key": f"l{n}", "lease_id": holders[n].lease.lease_id, "result": {"n": n}}
            return client.post("/v1/ai/complete", body, content_type="application/json")
        if call == "keyed run":
            body = {"key": f"run-{n}", "metadata": {"task": "demo.echo"}}
            return client.post("/v1/ai/run", body, content_type="application/json")
        body = {"agent_id": "bot", "tool": "search.web", "args": {"n": n}}
        return client.post("/v1/ai/run", body, content_type="application/json")

    statuses = [hit(n).status_code for n in range(3)]
    assert statuses == [200, 200, 200]
    limited = hit(3)
    assert limited.status_code == 429
    assert limited.json()["detail"]["error"] == "rate_limited"
    wait = int(limited["Retry-After"])  # an integer number of seconds
    assert 1 <= wait <= 2
    time.sleep(wait)
    after = hit(4)
    assert after.status_code == 200
    if call == "governed call":  # the refused call was neither decided nor counted against the hourly cap
        assert Decision.objects.count() == 4
        assert after.json()["remaining"]["actions_this_hour"] == 4


def test_each_key_has_its_own_bucket(slow_key, account_a):
    first = slow_key.client()
    for _ in range(3):
        first.get("/v1/me")
    assert first.get("/v1/me").status_code == 429
    assert make_key(account_a).client().get("/v1/me").status_code == 200


def test_the_sdk_rides_through_with_retries(live_server, slow_key):
    with OnceOnly(api_key=slow_key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as strict:
        for n in range(3):
            strict.check_lock(key=f"s{n}", ttl=60)
        with pytest.raises(RateLimitError) as caught:
            strict.check_lock(key="s3", ttl=60)
        assert caught.value.retry_after_sec >= 1
    with OnceOnly(
        api_key=slow_key.raw, base_url=f"{live_server.url}/v1", fail_open=False, max_retries_429=3
    ) as patient:
        assert patient.check_lock(key="s4", ttl=60).locked


@pytest.mark.parametrize("field", ["rate_limit_per_second", "rate_limit_burst"])
def test_the_plan_admin_refuses_a_rate_limit_of_zero(plans, django_user_model, field):
    """0 would refuse every request (burst) or divide by zero in the bucket script (rate): a form error instead."""
    from django.forms.models import model_to_dict
    from django.test import Client

    admin = django_user_model.objects.create_superuser("root@example.com", "root@example.com", "pw-123-456-789")
    client = Client()
    client.force_login(admin)
    plan = plans["agency"]
    form = {k: v for k, v in model_to_dict(plan).items() if v is not None and k != "id"}
    response = client.post(f"/admin/billing/plan/{plan.pk}/change/", {**form, field: 0})
    assert response.status_code == 200  # the form again, with its error
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    plan.refresh_from_db()
    assert getattr(plan, field) >= 1
