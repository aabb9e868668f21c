"""Keyed runs (key form of /v1/ai/run) in-process: start, claim/fence, actions through governance, handlers,
sweeper, bad input. The worker-process, crash and SDK tests are in tests/sdk/test_sdk_keyed_runs.py."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from billing import usage
from billing.models import Account
from governance import services as governance
from governance.models import Decision
from idempotency import jobs, runs
from idempotency.choices import RunStatus
from idempotency.models import Lease, LeaseAttempt, Run, RunEvent
from tests.support.job_handlers import executions


@pytest.fixture
def client(key_a):
    return key_a.client()


def start(client, key="job:1", **body):
    response = client.post("/v1/ai/run", {"key": key, **body}, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def status(client, key="job:1"):
    return client.get("/v1/ai/result", {"key": key}).json()


def timeline(client, run_id):
    response = client.get(f"/v1/runs/{run_id}", {"limit": 2000})
    assert response.status_code == 200, response.content
    return response.json()


def types(client, run_id):
    return [e["type"] for e in timeline(client, run_id)["events"]]


def test_key_form_answers_like_a_lease_and_queues_one_run(client, key_a):
    first = start(client, ttl=120, metadata={"task": "test.count", "params": {"n": 1}})
    assert first["status"] == "acquired" and first["lease_id"].startswith("lease_") and first["charged"] == 1
    assert "allowed" not in first and "decision" not in first  # the SDK would parse it as a tool result
    run = Run.objects.get()
    assert (run.status, run.key, run.run_id, run.task, run.fence) == (
        RunStatus.QUEUED,
        "job:1",
        "job:1",
        "test.count",
        0,
    )
    assert run.holder == first["lease_id"] and run.params == {"n": 1}

    again = start(client, ttl=120, metadata={"task": "test.count"})
    assert again["status"] == "polling" and again["lease_id"] is None and again["charged"] == 0
    assert Run.objects.count() == 1
    assert types(client, "job:1") == ["run_queued"]


def test_the_key_form_leaves_the_lean_path_authenticated_once(client, key_a, monkeypatch):
    """/v1/ai/run's lean path (the governed call's) hands the key form to DRF with the caller it authenticated: the
    request is counted once, and a bad key is refused before the body is read."""
    from billing import counters, lean_api

    parsed = []
    monkeypatch.setattr(lean_api, "parse_json_body", lambda raw: parsed.append(raw) or lean_api.json.loads(raw))

    account = key_a.api_key.account_id
    before = counters.pending(account)
    assert start(client, metadata={"task": "test.count"})["status"] == "acquired"
    assert counters.pending(account) == before + 1
    bad = Client(headers={"Authorization": "Bearer once_live_nope"}).post(
        "/v1/ai/run", b'{"key": ', content_type="application/json"
    )
    assert bad.status_code == 403 and len(parsed) == 1  # the key is checked before the body is read


def test_worker_completes_the_run_once_and_the_key_replays_the_result(client):
    start(client, metadata={"task": "test.count", "params": {"hello": "world"}})
    run = Run.objects.get()
    assert runs.execute(run.pk) == "completed"
    assert runs.execute(run.pk) == "not_claimed"  # a duplicate delivery is a no-op
    result = status(client)
    assert result["status"] == "completed"
    assert result["result"]["output"] == {"execution": 1, "params": {"hello": "world"}, "attempt": 1}
    assert result["result"]["handler"] == "test.count" and result["result"]["actions"] == []

    replay = start(client, metadata={"task": "test.count"})
    assert replay["status"] == "completed" and replay["result"] == result["result"] and replay["charged"] == 0
    assert executions("job:1") == 1 and Run.objects.count() == 1
    assert types(client, "job:1") == ["run_queued", "run_started", "note", "run_finished"]
    finished = timeline(client, "job:1")["events"][-1]
    assert finished["status"] == "completed" and finished["duration_ms"] >= 0


def test_nothing_to_do_completes_with_no_actions(client):
    start(client, key="empty")
    runs.execute(Run.objects.get().pk)
    assert status(client, "empty")["result"] == {"actions": []}


def test_metadata_run_id_names_the_timeline(client):
    start(client, key="k", metadata={"run_id": "team/a run 1", "task": "demo.echo", "params": {"x": 1}})
    runs.execute(Run.objects.get().pk)
    assert status(client, "k")["result"]["output"] == {"echo": {"x": 1}, "key": "k"}
    response = client.get("/v1/runs/team%2Fa%20run%201")
    body = response.json()
    assert body["run_id"] == "team/a run 1" and body["total"] == 3
    assert [e["type"] for e in body["events"]] == ["run_queued", "run_started", "run_finished"]


def test_unregistered_task_is_a_label_unless_strict(client, account_a):
    start(client, key="label", metadata={"task": "daily_summary"})
    runs.execute(Run.objects.get().pk)
    result = status(client, "label")
    assert result["status"] == "completed"
    assert result["result"] == {"actions": [], "task": "daily_summary", "handler": None}
    warning = [e for e in timeline(client, "label")["events"] if e["type"] == "warning"]
    assert warning and warning[0]["status"] == "handler_not_found" and "demo.echo" in warning[0]["data"]["registered"]

    Account.objects.filter(pk=account_a.pk).update(strict_mode=True)
    start(client, key="strict", metadata={"task": "daily_summary"})
    runs.execute(Run.objects.get(key="strict").pk)
    failed = status(client, "strict")
    assert failed["status"] == "failed" and failed["error_code"] == "handler_not_found"


def test_handler_exception_fails_the_run_and_the_next_run_acquires_again(client):
    start(client, key="boom", metadata={"task": "test.fail"})
    runs.execute(Run.objects.get().pk)
    failed = status(client, "boom")
    assert failed["status"] == "failed" and failed["error_code"] == "handler_error"
    error = next(e for e in timeline(client, "boom")["events"] if e["type"] == "handler_error")
    assert "failed on purpose" in error["message"]
    retry = start(client, key="boom", metadata={"task": "demo.echo"})
    assert retry["status"] == "acquired" and retry["version"] == 2
    assert Run.objects.filter(key="boom").count() == 2


def test_actions_one_allowed_one_blocked_fail_with_policy_blocked(client, account_a):
    governance.policy_upsert(
        account_id=account_a.pk, agent_id="billing-agent", changes={"blocked_tools": ["delete_user"]}, actor="test"
    )
    actions = [
        {"tool": "send_email", "args": {"to": "a@b.c"}, "spend_usd": 0.25},
        {"tool": "delete_user", "args": {"id": 7}},
    ]
    start(client, key="acts", metadata={"agent_id": "billing-agent", "actions": actions, "run_id": "run-acts"})
    runs.execute(Run.objects.get().pk)
    failed = status(client, "acts")
    assert failed["status"] == "failed" and failed["error_code"] == "policy_blocked"
    run = Run.objects.get()
    assert [a["decision"] for a in run.result["actions"]] == ["allowed", "blocked"]
    assert "delete_user" in run.error_message

    decisions = {d.tool: d for d in Decision.objects.filter(account=account_a)}
    assert decisions["send_email"].outcome == "allowed" and decisions["delete_user"].policy_reason == "tool_blocked"
    assert {d.run_id for d in decisions.values()} == {"run-acts"}
    events = timeline(client, "run-acts")["events"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert [(e["tool"], e["status"], e["decision_id"]) for e in results] == [
        ("send_email", "allowed", decisions["send_email"].pk),
        ("delete_user", "blocked", decisions["delete_user"].pk),
    ]
    assert [e["type"] for e in events].count("run_finished") == 1  # the run's, not one per action
    assert float(decisions["send_email"].spend_usd) == 0.25


def test_dry_run_decides_without_charging_or_recording(client, account_a, key_a):
    governance.policy_upsert(
        account_id=account_a.pk, agent_id="bot", changes={"max_spend_usd_per_day": 1.0}, actor="test"
    )
    before = usage.current(account_a.pk, usage.AI)
    actions = [
        {"tool": "stripe.charge", "args": {"amount": 1}, "spend_usd": 0.75},
        {"tool": "stripe.charge", "args": {"amount": 2}, "spend_usd": 0.75},
    ]
    start(client, key="dry", metadata={"agent_id": "bot", "actions": actions, "dry_run": True})
    runs.execute(Run.objects.get().pk)
    run = Run.objects.get()
    # Each dry action is decided against the real counters: nothing was reserved, so both fit the $1 cap alone.
    assert run.status == RunStatus.COMPLETED and run.result["dry_run"] is True
    assert [a["decision"] for a in run.result["actions"]] == ["allowed", "allowed"]
    assert not Decision.objects.exists()
    assert usage.current(account_a.pk, usage.AI) == before + 1  # the run's acquisition; dry actions cost nothing
    # A real call afterwards still has the whole budget.
    real = governance.governed_call(
        account_id=account_a.pk,
        plan=key_a_plan(key_a),
        agent_id="bot",
        tool="stripe.charge",
        args={"amount": 3},
        spend_usd=None,
    )
    assert real.remaining["spend_usd_today"] == 0.0
    dry_events = [e for e in timeline(client, "dry")["events"] if e["type"] == "tool_result"]
    assert len(dry_events) == 2 and all(e["data"]["dry_run"] for e in dry_events)
    assert all(e["decision_id"] is None for e in dry_events)


def key_a_plan(key_a):
    from billing.auth import plan_limits_for

    return plan_limits_for(key_a.api_key.account_id)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "x", "metadata": {"actions": "send_email"}}, "metadata.actions"),
        ({"key": "x", "metadata": {"agent_id": "a", "actions": [{"tool": "t"}] * 51}}, "metadata.actions"),
        ({"key": "x", "metadata": {"agent_id": "a", "actions": [{"args": {}}]}}, "metadata.actions.0.tool"),
        (
            {"key": "x", "metadata": {"agent_id": "a", "actions": [{"tool": "t", "spend_usd": -1}]}},
            "metadata.actions.0.spend_usd",
        ),
        ({"key": "x", "metadata": {"actions": [{"tool": "t"}]}}, "metadata.agent_id"),
        ({"key": "x", "metadata": {"task": "no spaces allowed"}}, "metadata.task"),
        ({"key": "x", "metadata": {"task": "demo.echo\n"}}, "metadata.task"),  # `$` let a final newline pass
        ({"key": "x", "metadata": {"run_id": "  "}}, "metadata.run_id"),
        ({"key": "x", "metadata": {"dry_run": "yes"}}, "metadata.dry_run"),
        ({"key": "x", "metadata": {"params": [1]}}, "metadata.params"),
        ({"key": "x", "agent_id": "a", "tool": "t"}, "agent_id"),
        ({"key": "", "metadata": {}}, "key"),
    ],
)
def test_bad_run_input_is_422_and_writes_nothing(client, body, field):
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert field in {".".join(str(p) for p in item["loc"][1:]) for item in response.json()["detail"]}
    assert not Lease.objects.exists() and not Run.objects.exists() and not RunEvent.objects.exists()


@pytest.mark.parametrize("name", ["demo.echo\n", "", "no spaces", "x" * 201])
def test_a_job_handler_name_outside_the_pattern_cannot_be_registered(name):
    with pytest.raises(ValueError, match="invalid job handler name"):
        jobs.handler(name)


def test_actions_need_a_plan_with_governance(key_a, plans):
    Account.objects.filter(pk=key_a.api_key.account_id).update(plan=plans["starter"])
    from billing import auth

    auth.clear_local_cache()
    body = {"key": "x", "metadata": {"agent_id": "a", "actions": [{"tool": "t"}]}}
    response = key_a.client().post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 403 and response.json()["detail"]["error"] == "feature_not_available"
    assert not Lease.objects.exists()


def test_a_worker_that_lost_its_claim_cannot_write(client):
    start(client, metadata={"task": "demo.echo"})
    run = Run.objects.get()
    first = runs.claim(run.pk, "worker-1")
    assert first is not None and first.fence == 1
    assert runs.claim(run.pk, "worker-2") is None  # held
    Run.objects.filter(pk=run.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))  # worker-1 went silent
    second = runs.claim(run.pk, "worker-2")
    assert second is not None and second.fence == 2
    assert runs.finish(first, status=RunStatus.COMPLETED, result={"by": "worker-1"}) is False
    assert runs.renew(first) is False
    assert runs.finish(second, status=RunStatus.COMPLETED, result={"by": "worker-2"}) is True
    assert status(client)["result"] == {"by": "worker-2"}
    attempts = LeaseAttempt.objects.filter(lease__key="job:1")
    assert [(a.version, a.outcome) for a in attempts] == [(1, "completed")]  # the lease was completed once


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_execute_the_handler_once(key_a):
    start(key_a.client(), key="race", metadata={"task": "test.count", "params": {"seconds": 0.3}})
    pk = Run.objects.get().pk
    outcomes, barrier = [], threading.Barrier(4)

    def deliver():
        barrier.wait()
        try:
            outcomes.append(runs.execute(pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["completed", "not_claimed", "not_claimed", "not_claimed"]
    assert executions("race") == 1 and Run.objects.get().fence == 1


def test_sweeper_wakes_lapsed_claims_and_times_out_late_runs(client, settings):
    start(client, key="lapsed", metadata={"task": "demo.echo"})
    start(client, key="late", metadata={"task": "demo.echo"})
    lapsed, late = Run.objects.get(key="lapsed"), Run.objects.get(key="late")
    runs.claim(lapsed.pk, "dead-worker")
    past = timezone.now() - timedelta(minutes=5)
    Run.objects.filter(pk=lapsed.pk).update(claimed_until=past, enqueued_at=past)
    Run.objects.filter(pk=late.pk).update(deadline_at=past)
    assert runs.sweep() == {"timed_out": 1, "woken": 1}
    assert runs.sweep() == {"timed_out": 0, "woken": 0}  # rate-limited per run by enqueued_at
    assert status(client, "late")["error_code"] == "timeout"
    assert runs.execute(lapsed.pk) == "completed"  # the woken worker takes it over (fence 2)
    assert Run.objects.get(pk=lapsed.pk).fence == 2


def test_a_reset_lease_stops_the_run(client, owner_a, account_a):
    from idempotency.services import lease_reset

    start(client, key="reset-me", metadata={"task": "demo.echo"})
    lease_reset(account=account_a, key="reset-me", reason="operator test", actor=owner_a.user)
    assert runs.execute(Run.objects.get().pk) == "not_claimed"
    run = Run.objects.get()
    assert run.status == RunStatus.FAILED and run.error_code == "lease_lost"


def test_an_output_that_cannot_be_stored_fails_the_run_at_once(client):
    start(client, key="big", metadata={"task": "test.big_number"})
    assert runs.execute(Run.objects.get().pk) == "failed"
    failed = status(client, "big")
    assert failed["status"] == "failed" and failed["error_code"] == "handler_error"
    assert "send big numbers as strings" in Run.objects.get().error_message


def test_retention_takes_runs_and_events_with_the_lease_and_the_key_runs_again(client, settings):
    from idempotency.services import retention_sweep

    start(client, key="old", metadata={"task": "demo.echo"})
    runs.execute(Run.objects.get().pk)
    long_ago = timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS + 1)
    Lease.objects.filter(key="old").update(updated_at=long_ago, done_at=long_ago)
    RunEvent.objects.filter(run_id="old").update(ts=long_ago)
    assert retention_sweep() >= 2
    assert not Run.objects.exists() and not RunEvent.objects.exists()
    again = start(client, key="old", metadata={"task": "demo.echo"})
    assert again["status"] == "acquired" and again["version"] == 1
    assert runs.execute(Run.objects.get().pk) == "completed"
