"""Keyed runs: the key form of ``/v1/ai/run``, executed exactly once by workers (docs/architecture.md §3.3, §7.6).

The lifecycle of one run (one acquisition of a key's lease):

1. ``run_start`` acquires the lease exactly like ``/v1/ai/lease``; in the acquiring transaction it creates the
   ``Run`` row (queued) and, on commit, wakes a worker through Celery.
2. A worker ``claim``s the row with one conditional UPDATE (queued, or running with a lapsed claim → running,
   ``fence`` + 1, ``claimed_until`` = now + claim). Only one worker can win it; Celery's duplicate deliveries are
   no-ops. While it works, a heartbeat thread renews the claim (and keeps the key's lease alive).
3. The worker runs the actions (through governance) and the job handler, then ``finish`` writes the result with
   a conditional UPDATE on its own fence — a worker that lost its claim cannot write — and completes or fails the
   lease in the same transaction, so ``/v1/ai/status`` flips exactly when the run's result is stored; after the
   commit a Redis wake-up answers the requests waiting for it (``waiting``).
4. ``sweep`` (beat) wakes a worker for runs whose claim lapsed (the worker died) or whose wake-up was lost, and
   fails runs that passed their deadline with ``timeout``.

An action that meets a per-run cap pauses the run (``pause``: ``paused``, no worker holds it, the key's lease held past
the pause's end) until an operator raises the cap and resumes it (``resume_paused``: queued again, going on from that
action with the run's own caps), or fails it ``run_cap_exceeded`` when the pause ends
(docs/runs.md §"Runs that pause at a cap").

An action that needs a person's approval parks the run (``park``: ``waiting_approval``, no worker holds it, the key's
lease held past the approval's expiry); governance tells ``approval_settled`` what became of the approval, and the
run is queued again (approved: it goes on from that action) or fails (``approval_denied``, ``approval_expired``)
(docs/runs.md §"Runs that wait for an approval").
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import rfc8785
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from billing.auth import PlanLimits
from billing.models import Account
from idempotency import events, jobs, services, waiting
from idempotency.choices import LeaseStatus, RunError, RunStatus
from idempotency.models import Lease, Run

logger = logging.getLogger(__name__)
MAX_ACTIONS = 50
MAX_OUTPUT_BYTES = 256 * 1024
SWEEP_BATCH = 500
# A run waiting for an approval holds its key this long past the approval's expiry (the beat that expires approvals
# and tells the run runs every 30 s); past its expiry by WAIT_GRACE with no news, the sweeper fails it itself.
WAIT_GRACE = timedelta(minutes=5)
# The policy reasons of the governed call's approval gate (governance.choices.Reason: not imported here).
APPROVAL_REQUIRED = "approval_required"
APPROVAL_DENIED = "approval_denied"
# The per-run caps' reasons (governance.choices.RUN_CAP_REASONS): the run pauses instead of failing.
RUN_CAP_REASONS = (
    "run_action_limit_exceeded",
    "run_spend_exceeded",
    "run_tool_call_limit_exceeded",
    "run_time_exceeded",
)


@dataclass(frozen=True)
class RunSpec:
    """What a key-form run does, from its (validated) metadata."""

    run_id: str | None = None
    agent_id: str = ""
    actions: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    task: str = ""
    params: dict[str, Any] | None = None


def claim_seconds() -> timedelta:
    return timedelta(seconds=settings.ONCEONLY_RUN_CLAIM_SECONDS)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- start ----------------------------------------------------------------------------------------------------


def run_start(
    *, account_id: int, plan: PlanLimits, key: str, ttl: int | None, metadata: dict | None, spec: RunSpec
) -> services.LeaseOutcome:
    """Acquire the key's lease; on ``acquired`` queue a run (same transaction) and wake a worker on commit."""

    def create_run(lease: Lease) -> None:
        now = timezone.now()
        run = Run.objects.create(
            account_id=account_id,
            lease=lease,
            key=key,
            lease_version=lease.version,
            holder=lease.lease_id,
            run_id=spec.run_id or key,
            agent_id=spec.agent_id,
            task=spec.task,
            actions=spec.actions,
            params=spec.params,
            dry_run=spec.dry_run,
            created_at=now,
            enqueued_at=now,
            deadline_at=now + timedelta(seconds=settings.ONCEONLY_RUN_TIMEOUT_SECONDS),
        )
        events.emit(
            account_id,
            run.run_id,
            "run_queued",
            ts=now,
            status="queued",
            agent_id=spec.agent_id,
            data={
                "key": key,
                "attempt": lease.version,
                "task": spec.task or None,
                "actions": len(spec.actions),
                "dry_run": spec.dry_run,
            },
        )
        # robust: a broker that is down must not undo an acquisition that committed; the sweeper wakes a worker.
        transaction.on_commit(partial(enqueue, run.pk), robust=True)

    return services.lease_acquire(
        account_id=account_id, plan=plan, key=key, ttl=ttl, metadata=metadata, on_acquired=create_run
    )


def enqueue(run_pk: int) -> None:
    from idempotency.tasks import execute_run

    execute_run.delay(run_pk)


# --- claim, heartbeat, finish ---------------------------------------------------------------------------------


def claim(run_pk: int, worker: str) -> Run | None:
    """Take the run if nobody holds it (queued, or running with a lapsed claim). None: someone else has it, it is
    finished, or its deadline passed (the sweeper fails it)."""
    now = timezone.now()
    claimable = Q(status=RunStatus.QUEUED) | Q(status=RunStatus.RUNNING, claimed_until__lt=now)
    taken = Run.objects.filter(claimable, pk=run_pk, deadline_at__gt=now).update(
        status=RunStatus.RUNNING,
        fence=F("fence") + 1,
        claimed_by=worker[:200],
        claimed_until=now + claim_seconds(),
        started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
    )
    if not taken:
        return None
    run = Run.objects.get(pk=run_pk)
    if not keep_lease(run):
        fail_unfinished(run, RunError.LEASE_LOST, "The key's lease was reset, cancelled or taken over.")
        return None
    return run


def keep_lease(run: Run) -> bool:
    """Keep the key's lease held by this run while it works (a client need not heartbeat it). False when the lease
    no longer belongs to the run (reset or cancelled by an operator or the client, or re-acquired after expiry)."""
    now = timezone.now()
    lease = Lease.objects.filter(
        account_id=run.account_id, key=run.key, lease_id=run.holder, status=LeaseStatus.IN_PROGRESS
    ).first()
    if lease is None:
        return False
    until = now + max(timedelta(seconds=lease.ttl_seconds), 2 * claim_seconds())
    if lease.expires_at < until - claim_seconds():
        held = Lease.objects.filter(pk=lease.pk, lease_id=run.holder, status=LeaseStatus.IN_PROGRESS).update(
            expires_at=until, updated_at=now
        )
        return bool(held)
    return True


def renew(run: Run) -> bool:
    """The heartbeat: extend this worker's claim (only while it still holds the fence)."""
    now = timezone.now()
    renewed = Run.objects.filter(pk=run.pk, fence=run.fence, status=RunStatus.RUNNING).update(
        claimed_until=now + claim_seconds()
    )
    return bool(renewed) and keep_lease(run)


class Heartbeat(threading.Thread):
    """Renews the claim every third of its length; ``lost`` once the claim or the lease is gone."""

    def __init__(self, job: Run) -> None:
        super().__init__(name=f"run-heartbeat-{job.pk}", daemon=True)
        self.job = job
        self.lost = False
        self._halt = threading.Event()

    def run(self) -> None:
        interval = settings.ONCEONLY_RUN_CLAIM_SECONDS / 3
        try:
            while not self._halt.wait(interval):
                try:
                    if not renew(self.job):
                        self.lost = True
                        return
                except Exception:  # a database hiccup: try again next beat; the claim lasts three beats
                    logger.warning("run %s: heartbeat failed", self.job.pk, exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def finish(run: Run, *, status: str, result: dict | None, error_code: str = "", message: str = "") -> bool:
    """Write the run's outcome — only if this worker still holds its fence — and complete/fail the key's lease in
    the same transaction. False: the claim was lost (another worker owns the run now, or it timed out)."""
    now = timezone.now()
    with transaction.atomic():
        done = Run.objects.filter(pk=run.pk, fence=run.fence, status=RunStatus.RUNNING).update(
            status=status,
            result=result,
            error_code=error_code,
            error_message=message[:1000],
            finished_at=now,
            claimed_until=None,
        )
        if not done:
            return False
        if not _settle_lease(run, status=status, result=result, error_code=error_code):
            waiting.wake(run.account_id, run.key)  # settling the lease wakes its waiters itself
        events.emit(
            run.account_id,
            run.run_id,
            "run_finished",
            ts=now,
            status=status,
            agent_id=run.agent_id,
            message=message or None,
            duration_ms=int((now - (run.started_at or now)).total_seconds() * 1000),
            data={"key": run.key, "attempt": run.fence, "error_code": error_code or None},
        )
    return True


def _settle_lease(run: Run, *, status: str, result: dict | None, error_code: str) -> bool:
    """Complete or fail the key's lease with the run's outcome; False when the lease no longer belongs to the run."""
    try:
        with transaction.atomic():
            if status == RunStatus.COMPLETED:
                services.lease_complete(
                    account_id=run.account_id, key=run.key, lease_id=run.holder, result=result, result_hash=None
                )
            else:
                services.lease_fail(
                    account_id=run.account_id,
                    key=run.key,
                    lease_id=run.holder,
                    error_code=error_code,
                    error_hash=None,
                )
    except (services.LeaseMismatch, services.LeaseConflict):
        # The lease was reset or cancelled meanwhile: the run's own row keeps its outcome.
        logger.info("run %s finished after its lease was released", run.pk)
        return False
    return True


def fail_unfinished(
    run: Run,
    error_code: str,
    message: str,
    *,
    waiting_for: str | None = None,
    paused: bool = False,
    event: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Fail a queued, running or waiting run from outside its worker (deadline, lost lease, its approval); raising
    the fence makes a live worker's late result be refused. ``waiting_for``: only while the run still waits for that
    approval (news of it must not fail a run that went on meanwhile). ``event`` is written before ``run_finished``;
    ``result`` replaces the run's (a waiting run's: what it did so far)."""
    now = timezone.now()
    unfinished = Q(status__in=[RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL, RunStatus.PAUSED])
    if waiting_for is not None:
        unfinished = Q(status=RunStatus.WAITING_APPROVAL, waiting_for=waiting_for)
    elif paused:  # only while it is still paused: a resume that won the race must not be failed by a stale sweep
        unfinished = Q(status=RunStatus.PAUSED)
    changes: dict[str, Any] = {} if result is None else {"result": result}
    with transaction.atomic():
        done = Run.objects.filter(unfinished, pk=run.pk, fence=run.fence).update(
            status=RunStatus.FAILED,
            fence=F("fence") + 1,
            error_code=error_code,
            error_message=message[:1000],
            finished_at=now,
            claimed_until=None,
            waiting_for="",
            **changes,
        )
        if not done:
            return False
        if event is not None:
            events.emit(run.account_id, run.run_id, ts=now, agent_id=run.agent_id, **event)
        settled = error_code != RunError.LEASE_LOST and _settle_lease(
            run, status=RunStatus.FAILED, result=None, error_code=error_code
        )
        if not settled:
            waiting.wake(run.account_id, run.key)
        events.emit(
            run.account_id,
            run.run_id,
            "run_finished",
            ts=now,
            status="failed",
            agent_id=run.agent_id,
            message=message,
            data={"key": run.key, "error_code": error_code},
        )
    return True


# --- execute --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """An action that needs a person's approval: the run waits for it (``park``)."""

    approval_id: str
    approval_url: str | None
    expires_at: datetime
    step: int  # 1, 2, … (the action's place in metadata.actions)
    tool: str
    decision_id: int | None

    def answer(self, status: str = "pending") -> dict[str, Any]:
        """The approval as the run's result and /v1/ai/status and /v1/ai/result show it while the run waits."""
        return {
            "approval_id": self.approval_id,
            "approval_url": self.approval_url,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
            "status": status,
            "step": self.step,
            "tool": self.tool,
        }


@dataclass(frozen=True)
class Pause:
    """An action that met a per-run cap: the run pauses (``pause``) until it is resumed or the pause ends."""

    step: int
    tool: str
    reason: str  # one of RUN_CAP_REASONS
    explain: dict[str, Any]  # the cap's numbers, as the blocked decision records them
    decision_id: int | None
    until: datetime

    def answer(self) -> dict[str, Any]:
        """The pause as the run's result (``paused``) and /v1/ai/status show it."""
        numbers = {k: v for k, v in self.explain.items() if k not in ("policy_version", "run_id", "shadow")}
        return {
            "status": "paused",
            "reason": self.reason,
            "step": self.step,
            "tool": self.tool,
            "decision_id": self.decision_id,
            "paused_until": self.until.isoformat().replace("+00:00", "Z"),
            **numbers,
        }


@dataclass
class Outcome:
    status: str
    result: dict[str, Any]
    error_code: str = ""
    message: str = ""
    waiting: Waiting | None = None
    pause: Pause | None = None


def execute(run_pk: int) -> str:
    """The worker's entry point (Celery task ``idempotency.execute_run``). Returns what happened, for logs."""
    run = claim(run_pk, worker_name())
    if run is None:
        return "not_claimed"
    beat = Heartbeat(run)
    beat.start()
    try:
        outcome = _storable(_perform(run, beat))
    except Exception as exc:  # a bug outside the handler: the run still ends, as failed
        logger.exception("run %s crashed", run.pk)
        outcome = Outcome(RunStatus.FAILED, {"actions": []}, RunError.HANDLER_ERROR, f"{type(exc).__name__}: {exc}")
    finally:
        beat.stop()
    if beat.lost:
        # The lease was released (reset, cancelled) or another worker took the claim: fail the run if it is still
        # ours (the fence decides), else leave it to its new owner.
        fail_unfinished(run, RunError.LEASE_LOST, "The key's lease or the run's claim was lost while it ran.")
        return "claim_lost"
    if outcome.pause is not None:
        paused = pause(run, outcome.result, outcome.pause)
        if paused == "lease_lost":
            fail_unfinished(run, RunError.LEASE_LOST, "The key's lease was lost before the run could pause.")
        return paused
    if outcome.waiting is not None:
        parked = park(run, outcome.result, outcome.waiting)
        if parked == "lease_lost":
            fail_unfinished(
                run, RunError.LEASE_LOST, "The key's lease was lost before the run could wait for approval."
            )
        elif parked == "waiting":
            # Decided between the action and the park (the news found no run waiting then): ask again now.
            recheck([(run.account_id, outcome.waiting.approval_id)])
        return parked
    if not finish(
        run, status=outcome.status, result=outcome.result, error_code=outcome.error_code, message=outcome.message
    ):
        logger.warning("run %s: claim lost before the result was written; another worker owns it", run.pk)
        return "claim_lost"
    return outcome.status


def _perform(run: Run, beat: Heartbeat) -> Outcome:
    emit = partial(events.emit, run.account_id, run.run_id, agent_id=run.agent_id)
    emit(
        "run_started",
        status="started",
        step=f"attempt {run.fence}",
        data={
            "key": run.key,
            "attempt": run.fence,
            "worker": run.claimed_by,
            "task": run.task or None,
            "actions": len(run.actions),
            "dry_run": run.dry_run,
            **({"from_step": run.actions_done + 1} if run.actions_done else {}),
        },
    )
    # A run that waited for an approval goes on from the action that needed it: the ones before were decided
    # (and are in its result), whatever the dedup window says by now.
    done = run.actions_done
    summaries: list[dict[str, Any]] = list((run.result or {}).get("actions") or [])[:done] if done else []
    result: dict[str, Any] = {"actions": summaries}
    if run.dry_run:
        result["dry_run"] = True
    if run.actions[done:]:
        executor = jobs.action_executor()
        if executor is None:
            return Outcome(RunStatus.FAILED, result, RunError.FEATURE_NOT_AVAILABLE, "Governance is not installed.")
        for index, action in enumerate(run.actions[done:], start=done):
            if beat.lost:
                return Outcome(RunStatus.FAILED, result, RunError.LEASE_LOST, "The claim was lost.")
            tool = action["tool"]
            decided = executor(
                account_id=run.account_id,
                agent_id=run.agent_id,
                tool=tool,
                args=action.get("args") or {},
                spend_usd=action.get("spend_usd"),
                run_id=run.run_id,
                dry_run=run.dry_run,
                run_caps=run.cap_overrides or None,
            )
            summaries.append(
                {
                    "step": index + 1,
                    "tool": tool,
                    "decision": decided.decision,
                    "allowed": decided.allowed,
                    "policy_reason": decided.policy_reason,
                    "decision_id": decided.decision_id,
                    "result": decided.result,
                }
            )
            if decided.error:
                return Outcome(RunStatus.FAILED, result, decided.error, f"Action {index + 1} ({tool}): {decided.error}")
            if decided.decision == "blocked" and decided.policy_reason == APPROVAL_REQUIRED and not run.dry_run:
                wait = _waiting_of(decided, index + 1, tool)
                if wait is not None:
                    summaries.pop()  # decided again when the run goes on
                    return Outcome(RunStatus.WAITING_APPROVAL, {**result, "approval": wait.answer()}, waiting=wait)
            if decided.decision == "blocked" and decided.policy_reason in RUN_CAP_REASONS and not run.dry_run:
                summaries.pop()  # decided again when the run is resumed
                until = timezone.now() + timedelta(seconds=settings.ONCEONLY_RUN_PAUSE_SECONDS)
                paused = Pause(
                    index + 1, tool, decided.policy_reason or "", decided.explain or {}, decided.decision_id, until
                )
                return Outcome(RunStatus.PAUSED, {**result, "paused": paused.answer()}, pause=paused)
            if decided.decision == "blocked" and decided.policy_reason == APPROVAL_DENIED:
                return Outcome(
                    RunStatus.FAILED,
                    result,
                    RunError.APPROVAL_DENIED,
                    f"Action {index + 1} ({tool}) was denied: {_denial(decided.result)}",
                )
            if decided.decision == "blocked":
                return Outcome(
                    RunStatus.FAILED,
                    result,
                    RunError.POLICY_BLOCKED,
                    f"Action {index + 1} ({tool}) was blocked: {decided.policy_reason}",
                )
            if decided.decision == "failed":
                return Outcome(
                    RunStatus.FAILED,
                    result,
                    RunError.TOOL_ERROR,
                    f"Action {index + 1} ({tool}) failed: {decided.policy_reason}",
                )
    if not run.task:
        return Outcome(RunStatus.COMPLETED, result)
    result["task"] = run.task
    fn = jobs.get_handler(run.task)
    if fn is None:
        result["handler"] = None
        if Account.objects.filter(pk=run.account_id, strict_mode=True).exists():
            return Outcome(
                RunStatus.FAILED,
                result,
                RunError.HANDLER_NOT_FOUND,
                f"No job handler named {run.task!r} is registered (strict mode).",
            )
        emit(
            "warning",
            status="handler_not_found",
            message=f"No job handler named {run.task!r} is registered; the task is a label, nothing ran for it.",
            data={"registered": jobs.handler_names()},
        )
        return Outcome(RunStatus.COMPLETED, result)
    result["handler"] = run.task
    context = jobs.JobContext(
        account_id=run.account_id,
        key=run.key,
        run_id=run.run_id,
        params=dict(run.params or {}),
        attempt=run.fence,
        emit=emit,
        still_holding=lambda: not beat.lost,
    )
    try:
        output = fn(context)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:1000]
        logger.warning("run %s: handler %s raised %s", run.pk, run.task, message)
        emit("handler_error", status="error", message=message)
        return Outcome(RunStatus.FAILED, result, RunError.HANDLER_ERROR, message)
    output = output if isinstance(output, dict) else ({} if output is None else {"value": str(output)})
    try:
        size = len(json.dumps(output))
    except (TypeError, ValueError) as exc:
        return Outcome(RunStatus.FAILED, result, RunError.HANDLER_ERROR, f"The handler's result is not JSON: {exc}")
    if size > MAX_OUTPUT_BYTES:
        return Outcome(
            RunStatus.FAILED,
            result,
            RunError.HANDLER_ERROR,
            f"The handler's result is {size} bytes; at most {MAX_OUTPUT_BYTES} are stored.",
        )
    result["output"] = output
    return Outcome(RunStatus.COMPLETED, result)


def _waiting_of(decided: jobs.ActionOutcome, step: int, tool: str) -> Waiting | None:
    """The approval a blocked ``approval_required`` action waits for (from the decision's ``result``); None when the
    answer does not name one."""
    answer = decided.result if isinstance(decided.result, dict) else {}
    approval_id, expires_at = answer.get("approval_id"), answer.get("expires_at")
    if not isinstance(approval_id, str) or not approval_id or not isinstance(expires_at, str):
        return None
    try:
        expiry = datetime.fromisoformat(expires_at)
    except ValueError:
        return None
    url = answer.get("approval_url")
    return Waiting(approval_id, url if isinstance(url, str) else None, expiry, step, tool, decided.decision_id)


def _denial(answer: Any) -> str:
    """Who denied an action's approval and why, from the blocked decision's ``result``."""
    answer = answer if isinstance(answer, dict) else {}
    by, reason = answer.get("decided_by") or "an approver", answer.get("reason") or ""
    return f"by {by}: {reason}" if reason else f"by {by}"


def _storable(outcome: Outcome) -> Outcome:
    """The result is stored with its RFC 8785 hash: refuse what cannot be hashed (integers beyond ±2^53, NaN) as a
    handler error now, rather than fail while writing it and leave the run to time out."""
    try:
        services.result_hash_of(outcome.result)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        message = f"The run's result cannot be stored as canonical JSON ({exc}); send big numbers as strings."
        return Outcome(RunStatus.FAILED, {"actions": []}, RunError.HANDLER_ERROR, message)
    return outcome


# --- waiting for an approval ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalNews:
    """What became of an approval, as governance tells it (idempotency does not import governance): ``status`` is
    the approval's — pending, approved, consumed, denied, expired, superseded — or "gone" (no such approval)."""

    account_id: int
    approval_id: str
    status: str
    decided_by: str = ""
    reason: str = ""


GOES_ON = ("approved", "consumed")
ApprovalReader = Callable[[int, list[str]], list[ApprovalNews]]
# Governance registers how to read approvals (governance.runs.connect_approvals, from GovernanceConfig.ready()).
_approval_reader: list[ApprovalReader] = []


def set_approval_reader(reader: ApprovalReader) -> None:
    _approval_reader[:] = [reader]


def park(run: Run, result: dict[str, Any], wait: Waiting) -> str:
    """The worker's run waits for an approval: ``waiting_approval``, unclaimed, its result what it did so far, and
    the key's lease held past the approval's expiry (``_hold_lease``: neither swept as crashed nor acquired by
    another caller meanwhile). "waiting"; "claim_lost" (another worker owns the run: nothing written) or
    "lease_lost" (the lease is no longer the run's: nothing written, the caller fails the run)."""
    event = {
        "type": "waiting_approval",
        "status": "pending",
        "step": f"action {wait.step}",
        "tool": wait.tool,
        "message": f"Action {wait.step} ({wait.tool}) waits for a person's approval until "
        f"{wait.answer()['expires_at']}.",
        "decision_id": wait.decision_id,
        "data": wait.answer(),
    }
    stopped = _stop_for_a_person(
        run, result, RunStatus.WAITING_APPROVAL, wait.step, wait.approval_id, wait.expires_at, event
    )
    return stopped or "waiting"


def _stop_for_a_person(
    run: Run,
    result: dict[str, Any],
    status: str,
    step: int,
    waiting_for: str,
    until: datetime,
    event: dict[str, Any],
) -> str | None:
    """The worker's run stops until a person acts (an approval, a raised cap): ``status``, unclaimed, its result
    what it did so far, the actions before ``step`` done, the key's lease held past ``until``, ``event`` on its
    timeline and the key's waiters woken — one transaction. None when done; "claim_lost" (another worker owns the
    run: nothing written) or "lease_lost" (the lease is no longer the run's: nothing written)."""
    now = timezone.now()
    with transaction.atomic():
        if not _hold_lease(run, until, now):
            return "lease_lost"
        stopped = Run.objects.filter(pk=run.pk, fence=run.fence, status=RunStatus.RUNNING).update(
            status=status,
            result=result,
            actions_done=step - 1,
            waiting_for=waiting_for,
            waiting_until=until,
            claimed_until=None,
            enqueued_at=now,
        )
        if not stopped:
            transaction.set_rollback(True)  # the lease's hold too: the run's new owner keeps it
            return "claim_lost"
        events.emit(run.account_id, run.run_id, ts=now, agent_id=run.agent_id, **event)
        waiting.wake(run.account_id, run.key)
    return None


def _hold_lease(run: Run, until: datetime, now: datetime) -> bool:
    """Keep the key's lease held by the waiting run past ``until`` (its approval's expiry) + 2 × WAIT_GRACE, never
    shortening it. False when the lease is no longer the run's."""
    held = Lease.objects.filter(
        account_id=run.account_id, key=run.key, lease_id=run.holder, status=LeaseStatus.IN_PROGRESS
    ).update(expires_at=Greatest(F("expires_at"), Value(until + 2 * WAIT_GRACE)), updated_at=now)
    return bool(held)


def waiting_run(lease: Lease) -> Run | None:
    """The keyed run holding this acquisition of the key while it waits for an approval or is paused at a cap (for
    /v1/ai/status)."""
    return Run.objects.filter(
        lease_id=lease.pk,
        lease_version=lease.version,
        holder=lease.lease_id,
        status__in=[RunStatus.WAITING_APPROVAL, RunStatus.PAUSED],
    ).first()


def waiting_answer(run: Run) -> dict[str, Any] | None:
    """What a waiting run waits for — its approval, or (paused) the cap it met — as /v1/ai/status and /v1/ai/result
    show it in ``result``."""
    approval = (run.result or {}).get("paused" if run.status == RunStatus.PAUSED else "approval")
    return approval if isinstance(approval, dict) else None


def approval_settled(news: ApprovalNews) -> int:
    """The runs waiting for this approval go on (approved, or already used) or fail (denied → ``approval_denied``;
    expired, superseded or gone → ``approval_expired``). Idempotent: each run moves once, by a conditional UPDATE on
    what it waits for. Returns how many runs moved."""
    if news.status == "pending":
        return 0
    moved = 0
    runs = Run.objects.filter(
        account_id=news.account_id, status=RunStatus.WAITING_APPROVAL, waiting_for=news.approval_id
    )
    for run in list(runs[:SWEEP_BATCH]):
        try:
            moved += _resume(run, news) if news.status in GOES_ON else _refuse(run, news)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("run %s: could not act on approval %s (%s)", run.pk, news.approval_id, news.status)
    return moved


def _waited(run: Run) -> tuple[int, str, dict[str, Any]]:
    """The step, the tool and the approval answer of what a waiting run waits for."""
    step = run.actions_done + 1
    action = run.actions[run.actions_done] if run.actions_done < len(run.actions) else {}
    return step, str(action.get("tool") or ""), dict(waiting_answer(run) or {"approval_id": run.waiting_for})


def _news_data(news: ApprovalNews) -> dict[str, Any]:
    return {
        "approval_id": news.approval_id,
        "status": news.status,
        "decided_by": news.decided_by or None,
        "reason": news.reason or None,
    }


def _resume(run: Run, news: ApprovalNews) -> bool:
    """Approved: the run is queued again (a fresh deadline) and a worker woken after the commit; it goes on from the
    action that waited, whose identical call now uses the approval. The key's lease stays held (its hold runs past
    the approval's expiry; the worker's claim keeps it from then on)."""
    step, tool, answer = _waited(run)
    now = timezone.now()
    with transaction.atomic():
        moved = Run.objects.filter(pk=run.pk, status=RunStatus.WAITING_APPROVAL, waiting_for=news.approval_id).update(
            status=RunStatus.QUEUED,
            waiting_for="",
            waiting_until=None,
            result={**(run.result or {}), "approval": {**answer, "status": news.status}},
            enqueued_at=now,
            deadline_at=now + timedelta(seconds=settings.ONCEONLY_RUN_TIMEOUT_SECONDS),
        )
        if not moved:
            return False
        by = f" by {news.decided_by}" if news.decided_by else ""
        events.emit(
            run.account_id,
            run.run_id,
            "approved",
            ts=now,
            status="approved",
            step=f"action {step}",
            tool=tool,
            agent_id=run.agent_id,
            message=f"Action {step} ({tool}) was approved{by}" + (f": {news.reason}" if news.reason else "."),
            data=_news_data(news),
        )
        transaction.on_commit(partial(enqueue, run.pk), robust=True)  # the sweeper re-sends a lost wake-up
    return True


def _refuse(run: Run, news: ApprovalNews) -> bool:
    """Denied, expired, superseded or gone: the run fails and its key's lease with it."""
    step, tool, answer = _waited(run)
    action = f"Action {step} ({tool})"
    if news.status == "denied":
        code, kind = RunError.APPROVAL_DENIED, "approval_denied"
        by = news.decided_by or "an approver"
        message = f"{action} was denied by {by}" + (f": {news.reason}" if news.reason else ".")
    else:
        code, kind = RunError.APPROVAL_EXPIRED, "approval_expired"
        of = f"The approval of action {step} ({tool})"
        message = {
            "expired": f"{of} expired before it was approved.",
            "superseded": f"{of} was superseded: the agent's policy changed before it was decided.",
        }.get(news.status, f"{of} is gone (its agent was deleted).")
    event = {"type": kind, "status": news.status, "step": f"action {step}", "tool": tool, "message": message}
    result = {**(run.result or {}), "approval": {**answer, "status": news.status}}
    return fail_unfinished(
        run, code, message, waiting_for=news.approval_id, event={**event, "data": _news_data(news)}, result=result
    )


def recheck(pairs: list[tuple[int, str]]) -> int:
    """Ask governance what became of these approvals (account id, approval id) and act on the news: a decision
    taken while the run was being parked, or news lost with the process that should have told it."""
    if not pairs or not _approval_reader:
        return 0
    reader = _approval_reader[0]
    by_account: dict[int, set[str]] = {}
    for account_id, approval_id in pairs:
        by_account.setdefault(account_id, set()).add(approval_id)
    moved = 0
    for account_id, ids in by_account.items():
        found = {news.approval_id: news for news in reader(account_id, sorted(ids))}
        for approval_id in sorted(ids):
            moved += approval_settled(found.get(approval_id) or ApprovalNews(account_id, approval_id, "gone"))
    return moved


def sweep_waiting(now: datetime) -> dict[str, int]:
    """The sweeper's part for runs waiting for an approval (never timed out nor woken as crashed):

    - a run whose lease is no longer its own (reset, cancelled, completed or failed by its holder) fails with
      ``lease_lost``; one whose lease was shortened (the holder's extend) is held again past the approval's expiry;
    - every claim length, each run's approval is read again (``recheck``): news lost between a decision's commit and
      its listener is acted on;
    - a run WAIT_GRACE past its approval's expiry with no news (governance not told, the approval gone) fails with
      ``approval_expired``.
    """
    parked = Run.objects.filter(status=RunStatus.WAITING_APPROVAL)
    lost = _fail_unheld(parked, "waited for an approval", lambda run: {"waiting_for": run.waiting_for})
    held = 0
    short = parked.filter(
        lease__lease_id=F("holder"),
        lease__status=LeaseStatus.IN_PROGRESS,
        lease__expires_at__lt=F("waiting_until") + WAIT_GRACE,
    )
    for run in list(short[:SWEEP_BATCH]):
        held += _swept(run, lambda run: _hold_lease(run, run.waiting_until or now, now))
    quiet = parked.filter(enqueued_at__lt=now - claim_seconds())
    pairs = []
    for pk, account_id, approval_id in list(quiet.values_list("pk", "account_id", "waiting_for")[:SWEEP_BATCH]):
        if quiet.filter(pk=pk).update(enqueued_at=now):
            pairs.append((account_id, approval_id))
    settled = 0
    try:
        settled = recheck(pairs)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.exception("could not read the approvals of waiting runs; going on")
    expired = 0
    for run in list(parked.filter(waiting_until__lte=now - WAIT_GRACE)[:SWEEP_BATCH]):
        expired += _swept(run, lambda run: _refuse(run, ApprovalNews(run.account_id, run.waiting_for, "expired")))
    return {"lease_lost": lost, "held": held, "settled": settled, "approval_expired": expired}


def _fail_unheld(waiting_runs: Any, what: str, guard: Callable[[Run], dict[str, Any]]) -> int:
    """Fail with ``lease_lost`` the runs of ``waiting_runs`` (waiting for a person: no worker holds them) whose key's
    lease is no longer theirs; ``guard``: fail_unfinished's condition that the run is still waiting as it was."""
    lost = 0
    not_held = waiting_runs.exclude(lease__lease_id=F("holder"), lease__status=LeaseStatus.IN_PROGRESS)
    message = f"The key's lease was reset, cancelled or finished while the run {what}."
    for run in list(not_held[:SWEEP_BATCH]):
        lost += _swept(run, lambda run: fail_unfinished(run, RunError.LEASE_LOST, message, **guard(run)))
    return lost


def _swept(run: Run, act: Callable[[Run], bool]) -> int:
    """One run's step of the sweep, in its own transaction: one that fails must not stop the others."""
    try:
        with transaction.atomic():
            return int(bool(act(run)))
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.exception("could not sweep waiting run %s; going on with the next", run.pk)
        return 0


# --- paused at a per-run cap ----------------------------------------------------------------------------------

PauseListener = Callable[[Run, Pause], None]
# Governance registers what a pause tells (an alert, the notification channels): run_caps.connect_pauses.
PAUSED_LISTENERS: list[PauseListener] = []


def pause(run: Run, result: dict[str, Any], paused: Pause) -> str:
    """The worker's run pauses at a per-run cap: ``paused``, unclaimed, its result what it did so far, the key's lease
    held past the pause's end; the pause listeners are told after the commit. "paused"; "claim_lost" or
    "lease_lost" as ``park`` answers them."""
    event = {
        "type": "paused",
        "status": "paused",
        "step": f"action {paused.step}",
        "tool": paused.tool,
        "message": f"Action {paused.step} ({paused.tool}) met {paused.reason}: the run is paused until "
        f"{paused.answer()['paused_until']} — raise the cap and resume it, or it fails run_cap_exceeded.",
        "decision_id": paused.decision_id,
        "data": paused.answer(),
    }
    stopped = _stop_for_a_person(run, result, RunStatus.PAUSED, paused.step, paused.reason, paused.until, event)
    if stopped is not None:
        return stopped
    transaction.on_commit(partial(_tell_paused, run, paused), robust=True)  # the alert and the channels
    return "paused"


def _tell_paused(run: Run, paused: Pause) -> None:
    for listener in PAUSED_LISTENERS:
        try:
            listener(run, paused)
        except Exception:
            logger.exception("run %s: a pause listener failed", run.pk)


class NotPaused(Exception):
    """No paused keyed run of that run id (it went on, finished, or never paused)."""


def paused_run(account_id: int, run_id: str) -> Run | None:
    """The account's newest keyed run of this run id that is paused at a cap."""
    return (
        Run.objects.filter(account_id=account_id, run_id=run_id, status=RunStatus.PAUSED)
        .order_by("-created_at", "-pk")
        .first()
    )


def resume_paused(run: Run, caps: dict[str, Any], actor: str) -> Run:
    """Raise & resume: the paused run is queued again with ``caps`` over its earlier ones (its own per-run caps,
    ``cap_overrides``), a fresh deadline, and a worker woken after the commit; it goes on from the action that paused,
    exactly once (the actions before it are in its result; the one that paused was blocked, so nothing of it ran).
    Raises NotPaused when the run is no longer paused (resumed by someone else, failed)."""
    now = timezone.now()
    overrides = {**(run.cap_overrides or {}), **caps}
    paused = (run.result or {}).get("paused") or {}
    with transaction.atomic():
        moved = Run.objects.filter(pk=run.pk, fence=run.fence, status=RunStatus.PAUSED).update(
            status=RunStatus.QUEUED,
            cap_overrides=overrides or None,
            waiting_for="",
            waiting_until=None,
            result={**(run.result or {}), "paused": {**paused, "status": "resumed", "resumed_by": actor}},
            enqueued_at=now,
            deadline_at=now + timedelta(seconds=settings.ONCEONLY_RUN_TIMEOUT_SECONDS),
        )
        if not moved:
            raise NotPaused(run.run_id)
        raised = ", ".join(f"{name} {value}" for name, value in caps.items()) or "the caps as they are now"
        events.emit(
            run.account_id,
            run.run_id,
            "resumed",
            ts=now,
            status="resumed",
            step=f"action {run.actions_done + 1}",
            tool=str(paused.get("tool") or ""),
            agent_id=run.agent_id,
            message=f"Resumed by {actor} with {raised}: the run goes on from action {run.actions_done + 1}.",
            data={"caps": overrides, "resumed_by": actor},
        )
        transaction.on_commit(partial(enqueue, run.pk), robust=True)  # the sweeper re-sends a lost wake-up
    run.refresh_from_db()
    return run


def _end_pause(run: Run, *, message: str, event: dict[str, Any]) -> bool:
    return fail_unfinished(run, RunError.RUN_CAP_EXCEEDED, message, paused=True, event=event)


def sweep_paused(now: datetime) -> dict[str, int]:
    """The sweeper's part for paused runs: one whose lease is no longer its own fails ``lease_lost``; one whose pause
    ended fails ``run_cap_exceeded``."""
    paused = Run.objects.filter(status=RunStatus.PAUSED)
    lost = _fail_unheld(paused, "was paused", lambda run: {"paused": True})
    ended = 0
    for run in list(paused.filter(waiting_until__lte=now)[:SWEEP_BATCH]):
        step, reason = run.actions_done + 1, run.waiting_for
        message = f"Action {step} met {reason} and the run was not resumed before its pause ended."
        event = {"type": "run_cap_exceeded", "status": "failed", "step": f"action {step}", "message": message}
        ended += _swept(run, partial(_end_pause, message=message, event=event))
    return {"paused_lease_lost": lost, "run_cap_exceeded": ended}


# --- sweep ----------------------------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Beat: fail runs past their deadline; wake a worker for runs whose claim lapsed or whose wake-up was lost;
    look after the runs waiting for an approval (``sweep_waiting``: its counts are added when any is not 0).

    Re-enqueueing is harmless when a worker does hold the run (its claim decides), and rate-limited per run by
    ``enqueued_at`` so a long queue is not flooded.
    """
    now = timezone.now()
    timed_out = 0
    for run in Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING], deadline_at__lte=now)[:SWEEP_BATCH]:
        seconds = settings.ONCEONLY_RUN_TIMEOUT_SECONDS
        try:  # fail_unfinished is one transaction per run: one that fails must not stop the others, every beat
            timed_out += fail_unfinished(run, RunError.TIMEOUT, f"The run did not finish within {seconds} s.")
        except (OperationalError, InterfaceError):
            raise  # the database is down, not this run
        except Exception:
            logger.exception("could not time out run %s; going on with the next", run.pk)
    quiet = now - claim_seconds()
    stale = (Q(status=RunStatus.RUNNING, claimed_until__lt=now) | Q(status=RunStatus.QUEUED)) & Q(
        enqueued_at__lt=quiet, deadline_at__gt=now
    )
    woken = 0
    for pk in list(Run.objects.filter(stale).values_list("pk", flat=True)[:SWEEP_BATCH]):
        try:
            with transaction.atomic():  # a savepoint when the sweep runs inside a transaction (tests, callers)
                marked = Run.objects.filter(stale, pk=pk).update(enqueued_at=now)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("could not wake run %s; going on with the next", pk)
            continue
        if marked:
            enqueue(pk)
            woken += 1
    swept = {"timed_out": timed_out, "woken": woken}
    swept.update((name, count) for name, count in sweep_waiting(now).items() if count)
    swept.update((name, count) for name, count in sweep_paused(now).items() if count)
    return swept
