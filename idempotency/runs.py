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
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import rfc8785
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce
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


def fail_unfinished(run: Run, error_code: str, message: str) -> bool:
    """Fail a queued or running run from outside its worker (deadline, lost lease); raising the fence makes a live
    worker's late result be refused."""
    now = timezone.now()
    with transaction.atomic():
        done = Run.objects.filter(pk=run.pk, fence=run.fence, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
            status=RunStatus.FAILED,
            fence=F("fence") + 1,
            error_code=error_code,
            error_message=message[:1000],
            finished_at=now,
            claimed_until=None,
        )
        if not done:
            return False
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


@dataclass
class Outcome:
    status: str
    result: dict[str, Any]
    error_code: str = ""
    message: str = ""


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
        },
    )
    summaries: list[dict[str, Any]] = []
    result: dict[str, Any] = {"actions": summaries}
    if run.dry_run:
        result["dry_run"] = True
    if run.actions:
        executor = jobs.action_executor()
        if executor is None:
            return Outcome(RunStatus.FAILED, result, RunError.FEATURE_NOT_AVAILABLE, "Governance is not installed.")
        for index, action in enumerate(run.actions):
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


def _storable(outcome: Outcome) -> Outcome:
    """The result is stored with its RFC 8785 hash: refuse what cannot be hashed (integers beyond ±2^53, NaN) as a
    handler error now, rather than fail while writing it and leave the run to time out."""
    try:
        services.result_hash_of(outcome.result)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        message = f"The run's result cannot be stored as canonical JSON ({exc}); send big numbers as strings."
        return Outcome(RunStatus.FAILED, {"actions": []}, RunError.HANDLER_ERROR, message)
    return outcome


# --- sweep ----------------------------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Beat: fail runs past their deadline; wake a worker for runs whose claim lapsed or whose wake-up was lost.

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
    return {"timed_out": timed_out, "woken": woken}
