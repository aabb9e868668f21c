"""The Verification page's check of both logs (docs/operations.md §"Decision-log tamper evidence"), run by a Celery
task while the page polls its progress (onceonly_site/jobs.py): the whole decision log — every row hash, every
checkpoint re-chained from the first — and the whole audit log. One at a time per account; its result is kept for
an hour. Reads the logs, writes nothing to the database."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from billing import audit
from billing.models import AuditEntry
from governance import ledger
from onceonly_site import jobs

logger = logging.getLogger(__name__)

JOBS = jobs.Jobs("verify", max_running=1, stale_ms=60 * 60_000)


def verify_start(account_id: int) -> str:
    """Service: queue the verification of the account's logs, or name the one already queued or running. Raises
    jobs.JobUnavailable when the task cannot be queued."""
    from governance.tasks import verify_logs_now

    running = JOBS.running(account_id)
    if running:
        return running[0]
    try:
        return JOBS.start(account_id, {}, lambda job_id: verify_logs_now.delay(account_id, job_id))
    except jobs.JobBusy:  # another request started one between the two steps: show that one
        running = JOBS.running(account_id)
        if running:
            return running[0]
        raise


def verify_job(account_id: int, job_id: str) -> jobs.Job | None:
    """Selector: the verification ``job_id`` of that account, or None (unknown, another account's, or past its hour)."""
    return JOBS.get(account_id, job_id)


def run_job(account_id: int, job_id: str) -> None:
    """What the task runs: both walks, with their progress (rows and entries checked of about how many), then the
    result. An error marks the job failed (logged), never raised to the worker."""
    if JOBS.take(account_id, job_id) is None:
        return
    started = time.monotonic()
    try:
        decisions_total = ledger.rows_to_verify(account_id)
        total = decisions_total + AuditEntry.objects.filter(account_id=account_id).count()
        JOBS.progress(account_id, job_id, 0, total)
        decisions = ledger.verify(account_id, progress=lambda done: JOBS.progress(account_id, job_id, done))
        checked = decisions.rows_checked
        entries = audit.verify(
            account_id, progress=lambda done: JOBS.progress(account_id, job_id, checked + done), every=2000
        )
    except Exception:
        logger.exception("verification %s of account %s failed", job_id, account_id)
        JOBS.fail(account_id, job_id, "The verification could not run to the end: try again.")
        return
    result = {
        "decisions": asdict(decisions),
        "audit": asdict(entries),
        "elapsed_ms": int((time.monotonic() - started) * 1000),
    }
    JOBS.done(account_id, job_id, result, processed=decisions.rows_checked + entries.entries_checked)
