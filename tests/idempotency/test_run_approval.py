"""Keyed runs whose action needs a person's approval (docs/runs.md §"Runs that wait for an approval"): the run waits
(``waiting_approval``, its key held), goes on from that action once approved (the tool called once), fails
``approval_denied`` / ``approval_expired`` otherwise; the sweeper neither times it out nor wakes it as crashed, and
acts on news its listener missed. In-process workers (``runs.execute``) as in test_keyed_runs.py; the last test runs
the real SDK against a real Celery worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from governance import approvals
from governance import runs as governance_runs
from governance import services as governance
from governance.models import Approval, Decision
from idempotency import runs
from idempotency.choices import RunStatus
from idempotency.models import Lease, Run
from tests.conftest import ARTIFACTS
from tests.support.servers import CeleryWorker
from tests.support.tool_endpoint import ToolEndpoint

AGENT = "billing-agent"
ACTIONS = [
    {"tool": "send_email", "args": {"to": "a@b.c"}},  # not registered: permitted, no approval needed
    {"tool": "stripe.refund", "args": {"charge": "ch_1", "amount": 500}},  # registered, needs approval
    {"tool": "crm.note", "args": {"text": "refunded"}},
]


@pytest.fixture
def client(key_a):
    return key_a.client()


@pytest.fixture
def endpoint(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    yield tool
    tool.stop()


@pytest.fixture
def gated(client, account_a, endpoint):
    tool = {
        "name": "stripe.refund",
        "url": endpoint.base + "/refund",
        "auth": {"type": "hmac_sha256", "secret": "s" * 24},
    }
    response = client.post("/v1/tools", tool, content_type="application/json")
    assert response.status_code == 200, response.content
    governance.policy_upsert(
        account_id=account_a.pk, agent_id=AGENT, changes={"require_approval": ["stripe.refund"]}, actor="test"
    )
    return endpoint


@pytest.fixture
def queued(monkeypatch):
    """The wake-ups sent to workers (Celery's broker is not consumed in-process): run pks, in order."""
    sent: list[int] = []
    monkeypatch.setattr(runs, "enqueue", sent.append)
    return sent


def start(client, key="refund:1", actions=ACTIONS, **metadata):
    body = {"key": key, "ttl": 60, "metadata": {"agent_id": AGENT, "actions": actions, **metadata}}
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def waiting_run(client, key="refund:1", **metadata) -> Run:
    start(client, key=key, **metadata)
    run = Run.objects.get(key=key)
    assert runs.execute(run.pk) == "waiting"
    run.refresh_from_db()
    return run


def decide(run: Run, approve: bool = True, reason: str = "", actor: str = "alice@example.com") -> Approval:
    return approvals.decide(
        account_id=run.account_id, public_id=run.waiting_for, approve=approve, reason=reason, actor=actor
    )


def events(client, run_id="refund:1"):
    response = client.get(f"/v1/runs/{run_id}", {"limit": 2000})
    assert response.status_code == 200, response.content
    return response.json()["events"]


def types(client, run_id="refund:1"):
    return [e["type"] for e in events(client, run_id)]


def in_order(seen: list[str], wanted: list[str]) -> bool:
    """``wanted`` is a subsequence of ``seen``."""
    rest = iter(seen)
    return all(any(s == w for s in rest) for w in wanted)


def test_governance_tells_keyed_runs_of_approvals_from_start_up():
    # GovernanceConfig.ready() connects them (idempotency never imports governance).
    assert governance_runs.approval_settled in approvals.SETTLED
    assert runs._approval_reader == [governance_runs.read_approvals]


def test_a_gated_action_waits_then_the_run_completes_after_approval(
    client, key_a, gated, queued, django_capture_on_commit_callbacks
):
    run = waiting_run(client)
    assert run.status == RunStatus.WAITING_APPROVAL and run.claimed_until is None
    approval = Approval.objects.get()
    assert run.waiting_for == approval.public_id and run.waiting_until == approval.expires_at
    assert run.actions_done == 1 and [a["tool"] for a in run.result["actions"]] == ["send_email"]
    assert gated.calls == []

    waiting = next(e for e in events(client) if e["type"] == "waiting_approval")
    assert (waiting["status"], waiting["step"], waiting["tool"]) == ("pending", "action 2", "stripe.refund")
    assert waiting["data"]["approval_id"] == approval.public_id
    assert waiting["data"]["approval_url"] == f"/approvals/{approval.public_id}/"
    assert waiting["data"]["expires_at"] and waiting["decision_id"] == approval.requested_by_id

    # The key: held, visibly waiting, with the approval where the SDK looks (result); no second run.
    for path in ("/v1/ai/status", "/v1/ai/result"):
        body = client.get(path, {"key": "refund:1"}).json()
        assert (body["ok"], body["status"]) == (True, "waiting_approval"), body
        assert body["result"]["approval_id"] == approval.public_id and body["result"]["status"] == "pending"
        assert (body["result"]["step"], body["result"]["tool"]) == (2, "stripe.refund")
    assert client.get("/v1/ai/status", {"key": "refund:1"}).json()["retry_after_sec"] == 5
    again = start(client)
    assert (again["status"], again["charged"]) == ("polling", 0) and Run.objects.count() == 1

    with django_capture_on_commit_callbacks(execute=True):
        decide(run, reason="customer confirmed")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.waiting_for == "" and queued == [run.pk]
    approved = next(e for e in events(client) if e["type"] == "approved")
    assert approved["data"]["decided_by"] == "alice@example.com" and "customer confirmed" in approved["message"]

    assert runs.execute(run.pk) == "completed"
    run.refresh_from_db()
    assert [(a["step"], a["tool"], a["decision"]) for a in run.result["actions"]] == [
        (1, "send_email", "allowed"),
        (2, "stripe.refund", "executed"),
        (3, "crm.note", "allowed"),
    ]
    assert "approval" not in run.result and run.result["actions"][1]["result"] == {"refunded": True}
    assert len(gated.calls) == 1  # the receiver, once
    # The action before the wait was decided once: the run went on from the gated one, it did not replay.
    assert Decision.objects.filter(tool="send_email").count() == 1
    assert Approval.objects.get().status == Approval.Status.CONSUMED
    seen = types(client)
    assert in_order(seen, ["run_started", "tool_result", "waiting_approval", "approved", "run_started"])
    assert in_order(seen, ["waiting_approval", "approved", "tool_call", "tool_result", "run_finished"])
    refund_results = [
        e["status"] for e in events(client) if e["type"] == "tool_result" and e["tool"] == "stripe.refund"
    ]
    assert refund_results == ["blocked", "executed"]
    assert (
        next(e for e in events(client) if e["type"] == "run_started" and e["data"]["attempt"] == 2)["data"]["from_step"]
        == 2
    )
    result = client.get("/v1/ai/result", {"key": "refund:1"}).json()
    assert result["status"] == "completed" and result["result"] == run.result


def test_denied_fails_the_run_and_the_next_run_of_the_key_is_denied_at_once(
    client, gated, queued, django_capture_on_commit_callbacks
):
    run = waiting_run(client)
    with django_capture_on_commit_callbacks(execute=True):
        decide(run, approve=False, reason="not this customer")
    run.refresh_from_db()
    assert (run.status, run.error_code) == (RunStatus.FAILED, "approval_denied") and queued == []
    assert run.error_message == "Action 2 (stripe.refund) was denied by alice@example.com: not this customer"
    assert run.result["approval"]["status"] == "denied"
    assert in_order(types(client), ["waiting_approval", "approval_denied", "run_finished"])
    failed = client.get("/v1/ai/result", {"key": "refund:1"}).json()
    assert (failed["status"], failed["error_code"]) == ("failed", "approval_denied")
    assert gated.calls == []

    # The key is free again; the identical action meets the denial (until it expires) and fails at once.
    assert start(client)["status"] == "acquired"
    second = Run.objects.get(key="refund:1", lease_version=2)
    assert runs.execute(second.pk) == "failed"
    second.refresh_from_db()
    assert second.error_code == "approval_denied" and "not this customer" in second.error_message
    assert gated.calls == []


def test_expired_fails_the_run_with_approval_expired(client, gated, django_capture_on_commit_callbacks):
    run = waiting_run(client)
    Approval.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert approvals.expire_due() == 1
    run.refresh_from_db()
    assert (run.status, run.error_code) == (RunStatus.FAILED, "approval_expired")
    assert "expired before it was approved" in run.error_message
    expired = next(e for e in events(client) if e["type"] == "approval_expired")
    assert expired["status"] == "expired" and expired["step"] == "action 2"
    assert client.get("/v1/ai/status", {"key": "refund:1"}).json()["error_code"] == "approval_expired"
    assert gated.calls == []


def test_a_policy_change_supersedes_the_approval_and_fails_the_run(
    client, account_a, gated, django_capture_on_commit_callbacks
):
    run = waiting_run(client)
    with django_capture_on_commit_callbacks(execute=True):
        governance.policy_upsert(
            account_id=account_a.pk, agent_id=AGENT, changes={"max_actions_per_hour": 100}, actor="test"
        )
    run.refresh_from_db()
    assert (run.status, run.error_code) == (RunStatus.FAILED, "approval_expired")
    assert "superseded" in run.error_message
    assert next(e for e in events(client) if e["type"] == "approval_expired")["status"] == "superseded"


def test_a_waiting_run_is_neither_swept_as_crashed_nor_timed_out_and_keeps_its_key(client, gated, queued):
    run = waiting_run(client)
    lease = Lease.objects.get(key="refund:1")
    assert lease.expires_at >= run.waiting_until + runs.WAIT_GRACE  # held past the approval's expiry (ttl was 60)
    past = timezone.now() - timedelta(hours=1)
    Run.objects.filter(pk=run.pk).update(deadline_at=past, enqueued_at=timezone.now())
    assert runs.sweep() == {"timed_out": 0, "woken": 0}
    assert Run.objects.get(pk=run.pk).status == RunStatus.WAITING_APPROVAL and queued == []

    # The holder's extend shortened the lease (the SDK's run_and_wait extends by the ttl while it waits): held again.
    Lease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() + timedelta(seconds=60))
    assert runs.sweep() == {"timed_out": 0, "woken": 0, "held": 1}
    assert Lease.objects.get(pk=lease.pk).expires_at >= run.waiting_until + runs.WAIT_GRACE
    # A second caller with the key, long after the run's ttl: the in-progress answer, not a second run.
    second = start(client)
    assert (second["status"], second["lease_id"]) == ("polling", None) and Run.objects.count() == 1
    assert client.get("/v1/ai/status", {"key": "refund:1"}).json()["status"] == "waiting_approval"


def test_the_sweeper_acts_on_a_decision_its_listener_missed(client, gated, queued, django_capture_on_commit_callbacks):
    run = waiting_run(client)
    decide(run)  # inside the test's transaction: the after-commit listener never runs, as if its process died
    assert Run.objects.get(pk=run.pk).status == RunStatus.WAITING_APPROVAL
    assert runs.sweep() == {"timed_out": 0, "woken": 0}  # looked at again only after a claim length
    Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert runs.sweep() == {"timed_out": 0, "woken": 0, "settled": 1}
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED and queued == [run.pk]
    assert runs.execute(run.pk) == "completed" and len(gated.calls) == 1


def test_a_decision_taken_while_the_run_was_parking_is_not_missed(
    client, gated, queued, monkeypatch, django_capture_on_commit_callbacks
):
    from idempotency import jobs

    executor = jobs.action_executor()

    def approve_at_once(**call):
        decided = executor(**call)
        if decided.policy_reason == "approval_required":  # an approver faster than the worker's next statement
            approval = Approval.objects.get(public_id=decided.result["approval_id"])
            approvals.decide(
                account_id=approval.account_id, public_id=approval.public_id, approve=True, reason="", actor="bot"
            )
        return decided

    monkeypatch.setattr(jobs, "_executor", [approve_at_once])
    start(client)
    run = Run.objects.get()
    with django_capture_on_commit_callbacks() as callbacks:
        assert runs.execute(run.pk) == "waiting"
    # Queued by the worker's own second look after parking: the listener (captured, not run yet) had no run to find.
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED
    for callback in callbacks:  # the listener (finds nothing now), then the wake-up
        callback()
    assert queued == [run.pk] and Run.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_a_run_whose_approval_is_gone_or_whose_lease_was_reset_fails(client, gated, owner_a, account_a, queued):
    from idempotency.services import lease_reset

    gone = waiting_run(client, key="gone")
    Approval.objects.filter(public_id=gone.waiting_for).delete()
    reset = waiting_run(client, key="reset", actions=[{"tool": "stripe.refund", "args": {"charge": "ch_9"}}])
    lease_reset(account=account_a, key="reset", reason="operator", actor=owner_a.user)
    Run.objects.update(enqueued_at=timezone.now() - timedelta(minutes=1))
    assert runs.sweep() == {"timed_out": 0, "woken": 0, "lease_lost": 1, "settled": 1}
    gone.refresh_from_db()
    reset.refresh_from_db()
    assert (gone.error_code, reset.error_code) == ("approval_expired", "lease_lost")
    assert "is gone" in gone.error_message


def test_past_its_approval_with_no_news_the_sweeper_fails_it(client, gated, queued):
    run = waiting_run(client)
    runs.set_approval_reader(lambda account_id, ids: [])  # governance says nothing
    try:
        Run.objects.filter(pk=run.pk).update(waiting_until=timezone.now() - runs.WAIT_GRACE - timedelta(seconds=1))
        assert runs.sweep() == {"timed_out": 0, "woken": 0, "approval_expired": 1}
    finally:
        runs.set_approval_reader(governance_runs.read_approvals)
    assert Run.objects.get(pk=run.pk).error_code == "approval_expired"


def test_two_runs_waiting_for_one_approval_run_the_tool_once(client, gated, queued, django_capture_on_commit_callbacks):
    refund = [ACTIONS[1]]
    first = waiting_run(client, key="a", actions=refund)
    second = waiting_run(client, key="b", actions=refund)
    assert first.waiting_for == second.waiting_for  # one pending approval per exact call
    with django_capture_on_commit_callbacks(execute=True):
        decide(first)
    assert sorted(queued) == sorted([first.pk, second.pk])
    assert runs.execute(first.pk) == "completed" and runs.execute(second.pk) == "completed"
    decisions = [Run.objects.get(pk=pk).result["actions"][0]["decision"] for pk in (first.pk, second.pk)]
    assert decisions == ["executed", "dedup"] and len(gated.calls) == 1


def test_a_dry_run_never_asks_for_approval(client, gated):
    start(client, key="dry", dry_run=True)
    run = Run.objects.get()
    assert runs.execute(run.pk) == "failed"
    run.refresh_from_db()
    assert run.error_code == "policy_blocked" and "approval_required" in run.error_message
    assert not Approval.objects.exists() and gated.calls == []


def test_the_pages_show_a_waiting_run(client, gated, owner_a, queued, django_capture_on_commit_callbacks):
    run = waiting_run(client)
    browser = owner_a.login(Client())
    page = browser.get("/runs/timeline/", {"run_id": "refund:1"})
    html = page.content.decode()
    assert page.status_code == 200 and "waiting_approval" in html and "Waiting for" in html
    assert f'href="/approvals/{run.waiting_for}/"' in html and "waits for a person&#x27;s approval" in html
    assert "waiting for an approval" in html  # the live note: the page keeps updating
    listing = browser.get("/runs/").content.decode()
    assert "waits for <a" in listing and run.waiting_for in listing
    with django_capture_on_commit_callbacks(execute=True):
        decide(run, reason="ok")
    html = browser.get("/runs/timeline/", {"run_id": "refund:1"}).content.decode()
    assert "approved" in html and "was approved by alice@example.com: ok" in html


@pytest.mark.slow
def test_sdk_run_waits_then_completes_after_approval_with_a_real_worker(sdk, key_a, account_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    worker = CeleryWorker("approvals", log_dir=ARTIFACTS / "workers", ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1")
    try:
        tool = {
            "name": "stripe.refund",
            "url": endpoint.base + "/refund",
            "auth": {"type": "hmac_sha256", "secret": "s" * 24},
        }
        assert key_a.client().post("/v1/tools", tool, content_type="application/json").status_code == 200
        sdk.gov.upsert_policy({"agent_id": AGENT, "require_approval": ["stripe.refund"]})
        run = sdk.ai.run(key="sdk:refund", ttl=30, metadata={"agent_id": AGENT, "actions": ACTIONS})
        assert run.status in ("acquired", "waiting_approval")
        deadline = time.monotonic() + 30
        while sdk.ai.status("sdk:refund").status != "waiting_approval":
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        waiting = sdk.ai.result("sdk:refund")
        assert waiting.status == "waiting_approval" and waiting.result["approval_id"].startswith("apr_")
        assert endpoint.calls == []

        approval = Approval.objects.get(public_id=waiting.result["approval_id"])
        approvals.decide(account_id=account_a.pk, public_id=approval.public_id, approve=True, reason="", actor="ops")
        done = sdk.ai.wait("sdk:refund", timeout=30, poll_min=0.2, poll_max=0.5)
        assert done.status == "completed", (done, worker.log())
        assert [a["decision"] for a in done.result["actions"]] == ["allowed", "executed", "allowed"]
        assert len(endpoint.calls) == 1
        seen = [e["type"] for e in sdk.get_run_timeline("sdk:refund", limit=2000)["events"]]
        assert in_order(seen, ["waiting_approval", "approved", "tool_result", "run_finished"]), seen
    finally:
        worker.stop()
        endpoint.stop()
