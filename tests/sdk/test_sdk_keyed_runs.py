"""Keyed runs end to end: the real onceonly-sdk against a live server, real Celery worker processes on the test
database and Redis — exactly-once execution, duplicate deliveries, a worker killed mid-run, actions through
governance, timelines and metrics."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from governance.models import Decision, DecisionRollup
from idempotency.models import LeaseAttempt, Run
from idempotency.tasks import execute_run
from onceonly_site.redis_client import get_redis
from tests.conftest import ARTIFACTS
from tests.support.job_handlers import executions
from tests.support.servers import CeleryWorker


@pytest.fixture
def workers(transactional_db, request):
    started: list[CeleryWorker] = []

    def start(name: str, **kwargs) -> CeleryWorker:
        worker = CeleryWorker(name, log_dir=ARTIFACTS / "workers", **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def event_types(sdk, run_id: str) -> list[str]:
    return [e["type"] for e in sdk.get_run_timeline(run_id, limit=2000)["events"]]


def test_run_and_wait_returns_the_handler_result_and_a_second_call_does_not_run_it_again(sdk, workers):
    workers("w1")
    first = sdk.ai.run_and_wait(
        key="job:count:1",
        ttl=60,
        metadata={"task": "test.count", "params": {"n": 7}},
        timeout=30,
        poll_min=0.2,
        poll_max=0.5,
    )
    assert first.status == "completed", first
    assert first.result["output"] == {"execution": 1, "params": {"n": 7}, "attempt": 1}
    second = sdk.ai.run_and_wait(key="job:count:1", ttl=60, metadata={"task": "test.count"}, timeout=10)
    assert second.status == "completed" and second.result == first.result
    assert executions("job:count:1") == 1 and Run.objects.filter(key="job:count:1").count() == 1

    echo = sdk.ai.run_and_wait(
        key="job:echo",
        metadata={"task": "demo.echo", "params": {"hello": "world"}},
        timeout=30,
        poll_min=0.2,
        poll_max=0.5,
    )
    assert echo.status == "completed" and echo.result["output"] == {"echo": {"hello": "world"}, "key": "job:echo"}


def test_duplicate_deliveries_execute_the_run_once(sdk, workers):
    run = sdk.ai.run(key="job:dup", metadata={"task": "test.count", "params": {"seconds": 0.5}})
    assert run.status == "acquired"
    pk = Run.objects.get(key="job:dup").pk
    for _ in range(3):  # Celery redelivers (visibility timeout, acks_late): the same wake-up, three more times
        execute_run.delay(pk)
    workers("a")
    workers("b")
    result = sdk.ai.wait("job:dup", timeout=30, poll_min=0.2, poll_max=0.5)
    assert result.status == "completed"
    wait_for(lambda: get_redis().llen("celery") == 0, 20, "every delivery to be consumed")
    time.sleep(1.0)  # the last delivery's (no-op) claim
    assert executions("job:dup") == 1 and executions("job:dup", "finished") == 1
    assert Run.objects.get(pk=pk).fence == 1
    assert event_types(sdk, "job:dup").count("run_started") == 1


def test_worker_killed_mid_run_is_replaced_and_the_result_is_written_once(sdk, workers):
    doomed = workers("doomed")
    outcome: dict = {}

    def client_side():  # the agent: run_and_wait heart-beats the lease and polls while the workers come and go
        outcome["result"] = sdk.ai.run_and_wait(
            key="job:crash",
            ttl=60,
            timeout=60,
            poll_min=0.3,
            poll_max=0.5,
            metadata={"task": "demo.sleep", "params": {"seconds": 3}},
        )

    agent = threading.Thread(target=client_side)
    agent.start()
    wait_for(lambda: "progress" in event_types(sdk, "job:crash"), 30, "demo.sleep to be running")
    doomed.kill()  # kill -9 mid-handler: no result, the claim simply stops being renewed
    assert Run.objects.get(key="job:crash").status == "running"
    workers("rescuer", beat=True)  # its beat sweeps every 0.5 s; the dead claim lapses after 2 s
    agent.join(timeout=90)
    assert not agent.is_alive()

    result = outcome["result"]
    assert result.status == "completed", result
    assert result.result["output"] == {"slept_seconds": 3.0}
    run = Run.objects.get(key="job:crash")
    assert run.fence == 2 and run.status == "completed"  # claimed twice (the second worker took over)
    types = event_types(sdk, "job:crash")
    assert types.count("run_started") == 2 and types.count("run_finished") == 1  # result written once
    attempts = LeaseAttempt.objects.filter(lease__key="job:crash")
    assert [(a.version, a.outcome) for a in attempts] == [(1, "completed")]  # the key was completed once


def test_actions_with_a_blocked_tool_fail_the_run_and_dry_runs_charge_nothing(sdk, workers):
    workers("w1")
    sdk.gov.upsert_policy(
        {"agent_id": "billing-agent", "blocked_tools": ["delete_user"], "max_spend_usd_per_day": 10.0}
    )
    actions = [
        {"tool": "send_email", "args": {"to": "a@example.com"}, "spend_usd": 0.5},
        {"tool": "delete_user", "args": {"id": 42}},
    ]
    failed = sdk.ai.run_and_wait(
        key="job:acts",
        run_id="run-acts",
        timeout=30,
        poll_min=0.2,
        poll_max=0.5,
        metadata={"agent_id": "billing-agent", "actions": actions},
    )
    assert failed.status == "failed" and failed.error_code == "policy_blocked"
    events = sdk.get_run_timeline("run-acts")["events"]
    decided = [(e["tool"], e["status"]) for e in events if e["type"] == "tool_result"]
    assert decided == [("send_email", "allowed"), ("delete_user", "blocked")]
    ids = {e["decision_id"] for e in events if e["type"] == "tool_result"}
    assert ids == set(Decision.objects.filter(run_id="run-acts").values_list("id", flat=True)) and len(ids) == 2

    decisions_before = Decision.objects.count()
    spend_before = sdk.gov.agent_metrics("billing-agent", period="day").total_spend_usd
    dry_meta = {
        "agent_id": "billing-agent",
        "dry_run": True,
        "actions": [{"tool": "send_email", "args": {"n": 2}, "spend_usd": 5}],
    }
    dry = sdk.ai.run_and_wait(key="job:dry", timeout=30, poll_min=0.2, poll_max=0.5, metadata=dry_meta)
    assert dry.status == "completed" and dry.result["actions"][0]["decision"] == "allowed"
    assert Decision.objects.count() == decisions_before
    assert sdk.gov.agent_metrics("billing-agent", period="day").total_spend_usd == spend_before == 0.5
    assert DecisionRollup.objects.filter(tool="send_email").get().count == 1


def test_post_event_and_timeline_with_a_slash_and_a_space_in_the_run_id(sdk):
    run_id = "team/a nightly run"
    posted = sdk.post_event(
        run_id=run_id, type="note", status="start", message="hello", data={"step": 1}, custom_field="kept"
    )
    assert posted["ok"] is True and posted["run_id"] == run_id and isinstance(posted["event_id"], int)
    sdk.post_event(run_id=run_id, type="note", status="done", ts=int(time.time()) + 1)
    timeline = sdk.get_run_timeline(run_id)
    assert timeline["run_id"] == run_id and timeline["total"] == 2
    first = timeline["events"][0]
    assert (first["type"], first["status"], first["message"], first["data"]) == ("note", "start", "hello", {"step": 1})
    assert first["custom_field"] == "kept"
    assert sdk.get_run_timeline("never-seen") == {
        "run_id": "never-seen",
        "total": 0,
        "limit": 200,
        "offset": 0,
        "events": [],
    }
    feed = sdk.events(limit=10)
    assert feed["total"] >= 2 and {e["run_id"] for e in feed["data"]} == {run_id}


def test_timeline_example_flow_shows_the_workers_events(sdk, workers, capsys):
    """examples/ai/run_debug_timeline.py of onceonly-python, against this server."""
    workers("w1")
    run_id = f"run_demo_{int(time.time())}"
    key = f"ai:job:debug:{run_id}"
    posted = sdk.post_event(
        run_id=run_id,
        type="sdk_debug",
        status="start",
        message="run debug demo started from sdk",
        data={"source": "test"},
    )
    print("post_event:", posted)
    run = sdk.ai_run(key=key, ttl=300, metadata={"task": "debug_timeline_demo", "agent_id": "default"}, run_id=run_id)
    # The first answer waits for the run (docs/runs.md §"Waiting for a run"): completed when the worker was quick,
    # else acquired; this call acquired the key either way.
    assert run.charged == 1 and run.status in ("acquired", "completed")
    total, last = 0, run.status
    for _ in range(10):
        time.sleep(1.0)
        last = sdk.ai.status(key).status
        total = int(sdk.get_run_timeline(run_id, limit=100)["total"])
        if total > 1 and last == "completed":
            break
    for ev in sdk.get_run_timeline(run_id, limit=100)["events"]:
        print(
            f"- ts={ev['ts']} type={ev['type']} status={ev['status']} step={ev['step']} tool={ev['tool']} "
            f"message={ev['message']}"
        )
    printed = capsys.readouterr().out
    assert "type=run_started" in printed and "type=run_finished status=completed" in printed
    assert last == "completed" and total > 1


def test_a_governed_call_with_a_run_id_writes_its_timeline(sdk):
    result = sdk.ai.run_tool(agent_id="debug-agent", tool="this_tool_must_not_exist", args={}, run_id="dbg/1")
    assert result.decision == "allowed"
    types = [(e["type"], e["status"]) for e in sdk.get_run_timeline("dbg/1")["events"]]
    assert types == [("tool_call", "requested"), ("tool_result", "allowed"), ("run_finished", "completed")]


def test_metrics_count_the_day(sdk):
    sdk.check_lock(key="m:1", ttl=60)
    sdk.check_lock(key="m:1", ttl=60)
    lease = sdk.ai.lease(key="m:lease", ttl=60)
    sdk.ai.complete(key="m:lease", lease_id=lease["lease_id"], result={"ok": True})
    sdk.ai.run_tool(agent_id="bot", tool="send_email", args={"n": 1}, spend_usd=0.25)
    today = datetime.now(UTC).date().isoformat()
    metrics = sdk.metrics(from_day=today, to_day=today)
    (day,) = metrics["days"]
    assert day["day"] == today
    assert day["check_locks"] == {"locked": 1, "duplicate": 1}
    assert day["leases"] == {"acquired": 1, "polling": 0, "completed": 1, "failed": 0}
    assert day["decisions"]["allowed"] == 1 and day["decisions"]["total"] == 1 and day["spend_usd"] == 0.25
    assert metrics["totals"]["check_locks"]["locked"] == 1
