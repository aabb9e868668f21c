"""Per-run caps (docs/governance.md §"Per-run caps"): max_actions_per_run, max_spend_usd_per_run,
max_calls_per_tool_per_run and max_run_seconds, decided in the governed call's atomic step on the run's own counters
(rebuilt after a Redis loss); a keyed run that meets one pauses, and Raise & resume continues it from the next
action exactly once (docs/runs.md §"Runs that pause at a cap") — in-process here, with the real SDK, a real Celery
worker and a kill -9 at the end."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from billing.choices import ApiKeyScope
from billing.services import api_key_create
from governance import services as governance
from governance.models import Agent, Alert, Decision
from idempotency import runs
from idempotency.choices import RunStatus
from idempotency.models import Run
from onceonly_site.redis_client import get_redis
from tests.conftest import ARTIFACTS, Key
from tests.support.redis_calls import replication_id
from tests.support.servers import CeleryWorker
from tests.support.tool_endpoint import ToolEndpoint

AGENT = "runner"


@pytest.fixture
def client(key_a):
    return key_a.client()


@pytest.fixture
def admin(account_a):
    new = api_key_create(account=account_a, label="ops console", scope=ApiKeyScope.ADMIN)
    return Key(raw=new.raw, api_key=new.api_key).client()


def policy(account, **fields):
    governance.policy_upsert(account_id=account.pk, agent_id=AGENT, changes=fields, actor="test")


def call(client, tool="crm.note", run_id="run-1", spend_usd=None, **args):
    body = {"agent_id": AGENT, "tool": tool, "args": {"run_id": run_id, **args}}
    if spend_usd is not None:
        body["spend_usd"] = spend_usd
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def test_max_actions_per_run_blocks_the_run_and_no_other(client, account_a):
    policy(account_a, max_actions_per_run=2)
    assert [call(client, n=n)["decision"] for n in (1, 2)] == ["allowed", "allowed"]
    third = call(client, n=3)
    assert (third["decision"], third["policy_reason"]) == ("blocked", "run_action_limit_exceeded")
    decision = Decision.objects.get(pk=third["decision_id"])
    assert decision.explain["limit"] == 2 and decision.explain["count"] == 2 and decision.explain["run_id"] == "run-1"
    assert "run action cap reached — 2 of 2 actions in run 'run-1'" in third["explanation"]
    assert call(client, run_id="run-2", n=3)["decision"] == "allowed"  # another run has its own count
    # A call without a run id is no run's: the per-run caps do not apply to it.
    response = client.post(
        "/v1/ai/run", {"agent_id": AGENT, "tool": "crm.note", "args": {"n": 4}}, content_type="application/json"
    )
    assert response.json()["decision"] == "allowed"


def test_spend_tool_and_time_caps_with_their_numbers(client, account_a):
    policy(account_a, max_spend_usd_per_run=1.0, max_calls_per_tool_per_run=2)
    assert call(client, "a.x", spend_usd=0.6, n=1)["decision"] == "allowed"
    spend = call(client, "a.y", spend_usd=0.5, n=2)
    assert (spend["decision"], spend["policy_reason"]) == ("blocked", "run_spend_exceeded")
    assert "run spend $0.60 + $0.50 would exceed $1.00" in spend["explanation"]
    assert call(client, "a.x", n=3)["decision"] == "allowed"
    tool = call(client, "a.x", n=4)
    assert (
        tool["policy_reason"] == "run_tool_call_limit_exceeded"
        and "2 of 2 calls of this tool in run" in tool["explanation"]
    )
    assert call(client, "a.y", n=5)["decision"] == "allowed"  # another tool of the same run

    policy(account_a, max_run_seconds=1)
    assert call(client, run_id="timed", n=1)["decision"] == "allowed"
    time.sleep(1.2)
    late = call(client, run_id="timed", n=2)
    assert late["policy_reason"] == "run_time_exceeded"
    seen = Decision.objects.get(pk=late["decision_id"]).explain
    assert seen["limit_seconds"] == 1 and seen["elapsed_seconds"] >= 1.2


def test_a_blocked_call_counts_nothing_and_the_counts_survive_a_redis_flush(client, account_a):
    policy(account_a, max_actions_per_run=3, blocked_tools=["nope"])
    call(client, n=1)
    assert call(client, "nope", n=2)["decision"] == "blocked"  # not charged: not counted
    call(client, n=3)
    get_redis().flushdb()  # Redis loses every counter: the agent's rebuild restores the run's from the log
    assert call(client, n=4)["decision"] == "allowed"
    blocked = call(client, n=5)
    assert blocked["policy_reason"] == "run_action_limit_exceeded"
    assert Decision.objects.get(pk=blocked["decision_id"]).explain["count"] == 3


def test_a_run_id_longer_than_the_log_keeps_its_count_through_a_redis_flush(client, account_a):
    """Decisions keep a run id's first 256 characters: the run's counters are named by those, so the rebuild after a
    Redis loss restores the very hash the calls count in."""
    policy(account_a, max_actions_per_run=2)
    long = "r" * 300
    assert [call(client, run_id=long, n=n)["decision"] for n in (1, 2)] == ["allowed", "allowed"]
    get_redis().flushdb()
    assert call(client, run_id=long, n=3)["policy_reason"] == "run_action_limit_exceeded"


def keep_run(account, marker: str, run_id: str = "run-1", **counts: int) -> str:
    """Sets the run's hash to ``counts`` and the agent's ready marker to ``marker``, as a failover may leave them: a
    replica promoted with a hash that missed the last increments (asynchronous replication) under a marker stamped by
    the old primary. Returns the run's hash."""
    agent = Agent.objects.get(account_id=account.pk, agent_id=AGENT)
    redis, run = get_redis(), governance.run_key(agent, run_id)
    redis.hset(run, mapping=counts)
    redis.set(governance._keys(agent, "-", timezone.now()).ready, marker, ex=governance.READY_SECONDS)
    return run


OTHER_SERVER = "f" * 40  # a replication id that is not this server's: a marker written before a failover


def test_a_run_hash_kept_by_a_failover_below_the_log_is_raised_to_it(client, account_a):
    """A run's hash that survived a failover without its last increments is rebuilt from the decision log in the step
    that stamps the marker again, so the per-run cap holds (the stale hash would let the third call through)."""
    policy(account_a, max_actions_per_run=2, max_calls_per_tool_per_run=5, max_spend_usd_per_run=1.0)
    assert [call(client, spend_usd=0.4, n=n)["decision"] for n in (1, 2)] == ["allowed", "allowed"]
    assert replication_id() != OTHER_SERVER
    run = keep_run(account_a, OTHER_SERVER, a=1, s=400_000, **{"t:crm.note": 1})
    blocked = call(client, n=3)
    assert blocked["policy_reason"] == "run_action_limit_exceeded"
    assert Decision.objects.get(pk=blocked["decision_id"]).explain["count"] == 2
    assert get_redis().hmget(run, "a", "s", "t:crm.note") == [b"2", b"800000", b"2"]
    assert get_redis().ttl(run) > governance.DAY_COUNTER_SECONDS - 60


def test_a_run_count_above_the_log_stays_through_the_rebuild(client, account_a):
    """The rebuild raises a run's counts, never lowers them: the hash may count actions the log's two days do not
    (a long run), or a reservation whose decision is not written yet."""
    policy(account_a, max_actions_per_run=4)
    assert call(client, n=1)["decision"] == "allowed"
    early = int((timezone.now() - timedelta(days=3)).timestamp() * 1000)
    run = keep_run(account_a, OTHER_SERVER, a=4, t0=early)
    blocked = call(client, n=2)
    assert blocked["policy_reason"] == "run_action_limit_exceeded"
    assert Decision.objects.get(pk=blocked["decision_id"]).explain["count"] == 4
    assert get_redis().hmget(run, "a", "t0", "t:crm.note") == [b"4", str(early).encode(), b"1"]


def test_a_run_hash_under_this_servers_marker_is_left_alone(client, account_a):
    """The converse: under a marker of this server's replication id the run's hash is the one decided on (set by hand
    below the log here, so it shows), and no rebuild touches it."""
    policy(account_a, max_actions_per_run=2)
    assert [call(client, n=n)["decision"] for n in (1, 2)] == ["allowed", "allowed"]
    run = keep_run(account_a, replication_id(), a=1)
    assert call(client, n=3)["decision"] == "allowed"  # a rebuild would have blocked it
    assert get_redis().hget(run, "a") == b"2"
    assert call(client, n=4)["policy_reason"] == "run_action_limit_exceeded"


def test_an_agents_own_key_may_tighten_its_guards_but_not_loosen_them(client, admin, account_a):
    """Per-run caps, budget-alert thresholds and detectors are guards against a runaway agent: its own key may make
    them stricter, only an admin-scoped key may loosen them (as for the approval gate)."""
    policy(account_a, max_actions_per_run=5, detectors={"call_loop": {"mode": "contain", "count": 20}})
    tighter = {"max_actions_per_run": 3, "detectors": {"call_loop": {"count": 10}}, "max_run_seconds": 60}
    assert client.post(f"/v1/policies/{AGENT}", tighter, content_type="application/json").status_code == 200
    for looser, words in (
        ({"max_actions_per_run": None}, "max_actions_per_run removed"),
        ({"max_run_seconds": 600}, "max_run_seconds raised"),
        ({"alert_thresholds": []}, "alert_thresholds 50%, 80%, 95%, 100% removed"),
        ({"detectors": {"call_loop": {"count": 50}}}, "detectors.call_loop.count raised"),
        ({"detectors": {"call_loop": {"mode": "off"}}}, "detectors.call_loop mode contain → off"),
        ({"detectors": {"deny_spike": {"mode": "off"}}}, "detectors.deny_spike mode alert → off"),
    ):
        refused = client.post(f"/v1/policies/{AGENT}", looser, content_type="application/json")
        assert refused.status_code == 403, (looser, refused.content)
        assert (
            refused.json()["detail"]["error"] == "admin_key_required" and words in refused.json()["detail"]["message"]
        )
    applied = admin.post(
        f"/v1/policies/{AGENT}", {"detectors": {"call_loop": {"mode": "off"}}}, content_type="application/json"
    )
    assert applied.status_code == 200 and applied.json()["policy"]["detectors"] == {"call_loop": {"mode": "off"}}


def test_bad_caps_are_a_422_and_write_nothing(client, account_a):
    for body, loc in (
        ({"max_actions_per_run": -1}, "max_actions_per_run"),
        ({"max_run_seconds": 0}, "max_run_seconds"),
        ({"max_spend_usd_per_run": "lots"}, "max_spend_usd_per_run"),
        ({"max_calls_per_tool_per_run": 2.5}, "max_calls_per_tool_per_run"),
    ):
        response = client.post(f"/v1/policies/{AGENT}", {**body}, content_type="application/json")
        assert response.status_code == 422, (body, response.content)
        assert response.json()["detail"][0]["loc"][-1] == loc
    assert not Decision.objects.exists()


# --- keyed runs: pause, Raise & resume --------------------------------------------------------------------------


@pytest.fixture
def endpoint(settings, client):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    registered = {"name": "crm.note", "url": tool.base + "/note", "auth": {"type": "hmac_sha256", "secret": "s" * 24}}
    assert client.post("/v1/tools", registered, content_type="application/json").status_code == 200
    yield tool
    tool.stop()


FIVE = [{"tool": "crm.note", "args": {"n": n}} for n in range(1, 6)]


@pytest.fixture
def queued(monkeypatch):
    sent: list[int] = []
    monkeypatch.setattr(runs, "enqueue", sent.append)
    return sent


def start(client, key="notes:1"):
    body = {"key": key, "ttl": 60, "metadata": {"agent_id": AGENT, "actions": FIVE, "run_id": key}}
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return Run.objects.get(key=key)


def resume(admin, run_id, **caps):
    return admin.post(f"/v1/runs/{run_id}/resume", caps, content_type="application/json")


def test_a_keyed_run_pauses_at_its_cap_and_resumes_from_the_next_action_once(
    client, admin, account_a, endpoint, queued, django_capture_on_commit_callbacks
):
    policy(account_a, max_actions_per_run=3)
    run = start(client)
    with django_capture_on_commit_callbacks(execute=True):
        assert runs.execute(run.pk) == "paused"
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED and run.actions_done == 3 and len(endpoint.calls) == 3
    status = client.get("/v1/ai/status", {"key": "notes:1"}).json()
    assert status["status"] == "paused"
    assert status["result"]["reason"] == "run_action_limit_exceeded" and status["result"]["count"] == 3
    alert = Alert.objects.get(kind="run_paused")
    assert "paused at action 4 (crm.note): run_action_limit_exceeded" in alert.message

    # Not an admin key: refused, nothing changed. Caps that would pause it again: a 422 naming the field.
    assert resume(client, "notes:1", max_actions_per_run=5).json()["detail"]["error"] == "admin_key_required"
    again = resume(admin, "notes:1", max_actions_per_run=3)
    assert again.status_code == 422 and again.json()["detail"][0]["loc"] == ["body", "max_actions_per_run"]
    assert Run.objects.get(pk=run.pk).status == RunStatus.PAUSED

    with django_capture_on_commit_callbacks(execute=True):
        answer = resume(admin, "notes:1", max_actions_per_run=5)
    assert answer.status_code == 200, answer.content
    assert answer.json()["from_step"] == 4 and answer.json()["caps"] == {"max_actions_per_run": 5}
    assert queued == [run.pk]
    with django_capture_on_commit_callbacks(execute=True):
        assert runs.execute(run.pk) == RunStatus.COMPLETED
    run.refresh_from_db()
    assert [c["args"]["n"] for c in endpoint.calls] == [1, 2, 3, 4, 5]  # 4 and 5 once, after the resume
    assert [a["step"] for a in run.result["actions"]] == [1, 2, 3, 4, 5]
    assert resume(admin, "notes:1").json()["detail"]["error"] == "run_not_paused"
    assert resume(admin, "never-ran").json()["detail"]["error"] == "run_not_found"
    events = client.get("/v1/runs/notes:1").json()["events"]
    assert [e["type"] for e in events if e["type"] in ("paused", "resumed", "run_finished")] == [
        "paused",
        "resumed",
        "run_finished",
    ]


def test_a_resume_is_checked_against_every_cap_and_a_stale_sweep_cannot_fail_it(
    client, admin, account_a, endpoint, queued
):
    policy(account_a, max_actions_per_run=3)
    run = start(client, key="notes:all-caps")
    assert runs.execute(run.pk) == "paused"
    # Raising the cap that paused it while another would stop the same action: refused, naming the other.
    again = resume(admin, "notes:all-caps", max_actions_per_run=10, max_calls_per_tool_per_run=3)
    assert again.status_code == 422 and again.json()["detail"][0]["loc"] == ["body", "max_calls_per_tool_per_run"]
    assert "made 3 calls of the paused action's tool" in again.json()["detail"][0]["msg"]
    # The sweeper read the run while it was paused and its pause ended; the resume wins the race: it stays queued.
    stale = Run.objects.get(pk=run.pk)
    assert resume(admin, "notes:all-caps", max_actions_per_run=10).status_code == 200
    assert not runs._end_pause(stale, message="late", event={"type": "run_cap_exceeded", "message": "late"})
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_a_paused_run_not_resumed_in_time_fails_run_cap_exceeded(client, account_a, endpoint, queued):
    policy(account_a, max_actions_per_run=1)
    run = start(client, key="notes:late")
    assert runs.execute(run.pk) == "paused"
    Run.objects.filter(pk=run.pk).update(waiting_until=run.created_at - timedelta(seconds=1))
    assert runs.sweep()["run_cap_exceeded"] == 1
    run.refresh_from_db()
    assert (run.status, run.error_code) == (RunStatus.FAILED, "run_cap_exceeded")
    assert client.get("/v1/ai/status", {"key": "notes:late"}).json()["status"] == "failed"


def test_the_dashboard_raises_and_resumes_a_paused_run(client, owner_a, account_a, endpoint, queued):
    from django.test import Client

    policy(account_a, max_actions_per_run=2)
    run = start(client, key="notes:ui")
    assert runs.execute(run.pk) == "paused"
    browser = owner_a.login(Client())
    page = browser.get("/runs/timeline/", {"run_id": "notes:ui"}).content.decode()
    assert "Raise &amp; resume" in page and "run_action_limit_exceeded" in page
    refused = browser.post(f"/runs/resume/{run.pk}/", {"max_actions_per_run": "2"}, follow=True).content.decode()
    assert "must be more than 2" in refused
    browser.post(f"/runs/resume/{run.pk}/", {"max_actions_per_run": "9"})
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.cap_overrides == {"max_actions_per_run": 9}


def test_sdk_run_pauses_resumes_and_survives_a_worker_killed_during_the_resumed_action(
    sdk, admin, account_a, settings, transactional_db
):
    """The issue's acceptance: 5 actions under max_actions_per_run 3 pause after 3; a raise resumes them; the worker
    is killed (-9) while action 4's tool is answering; a second worker finishes the run — the tool saw 1…5 once."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    answering = threading.Event()

    def slow_fourth() -> None:
        if endpoint.calls[-1]["args"]["n"] == 4:
            answering.set()
            time.sleep(4)  # the worker is killed meanwhile

    endpoint.on_call = slow_fourth
    env = {"ONCEONLY_ALLOW_PRIVATE_TOOL_URLS": "1"}
    first = CeleryWorker("paused-1", log_dir=ARTIFACTS / "workers", **env)
    second = None
    tool = {"name": "crm.note", "url": endpoint.base + "/note", "auth": {"type": "hmac_sha256", "secret": "s" * 24}}
    try:
        sdk.gov.upsert_policy({"agent_id": AGENT, "max_actions_per_run": 3})
        response = admin.post("/v1/tools", tool, content_type="application/json")
        assert response.status_code == 200, response.content
        sdk.ai.run(key="sdk:notes", ttl=60, metadata={"agent_id": AGENT, "actions": FIVE})
        deadline = time.monotonic() + 30
        while sdk.ai.status("sdk:notes").status != "paused":
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.2)
        assert [c["args"]["n"] for c in endpoint.calls] == [1, 2, 3]

        assert resume(admin, "sdk:notes", max_actions_per_run=5).status_code == 200
        assert answering.wait(30), first.log()
        first.kill()  # kill -9 while action 4's tool is answering: its decision is never written
        second = CeleryWorker("paused-2", beat=True, log_dir=ARTIFACTS / "workers", **env)
        done = sdk.ai.wait("sdk:notes", timeout=60, poll_min=0.3, poll_max=0.5)
        assert done.status == "completed", (done, second.log())
        assert sorted(c["args"]["n"] for c in endpoint.calls) == [1, 2, 3, 4, 5]  # each once
        assert Run.objects.get(key="sdk:notes").fence == 3  # claimed before the pause, after it, and by the rescuer
    finally:
        first.stop()
        if second is not None:
            second.stop()
        endpoint.stop()
