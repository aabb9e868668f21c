import logging

from celery import shared_task

from governance import approvals, channels, ledger, partitions, services

logger = logging.getLogger(__name__)


@shared_task(name="governance.checkpoint_decisions", ignore_result=True)
def checkpoint_decisions() -> None:
    """Beat: extend every account's decision-log hash chain with the decisions written since the last run, and
    checkpoint its audit log's head; both signed when a key is configured (docs/operations.md §"Signed checkpoints")."""
    written = ledger.checkpoint_all()
    if written:
        logger.info("wrote %s decision-log and audit-log checkpoints", written)


@shared_task(name="governance.maintain_decision_partitions", ignore_result=True)
def maintain_decision_partitions() -> None:
    """Beat (hourly): the decision log's day partitions exist a week ahead, and the days past
    ONCEONLY_DECISION_RETENTION_DAYS are dropped whole (PostgreSQL; a no-op on SQLite)."""
    created, dropped = partitions.maintain()
    if created:
        logger.info("created decision partitions %s", ", ".join(created))
    for gone in dropped:
        logger.info("dropped decision partition %s (about %d decisions) in %.3f s", gone.name, gone.rows, gone.seconds)


@shared_task(name="governance.record_unfinished_dispatches", ignore_result=True)
def record_unfinished_dispatches() -> None:
    """Beat: dispatches whose decision was never written become failed decisions (reason outcome_unknown)."""
    recorded = services.dispatch_intents_record()
    if recorded:
        logger.warning("recorded %s unfinished dispatches (outcome unknown)", recorded)


@shared_task(name="governance.verify_decision_logs", ignore_result=True)
def verify_decision_logs() -> None:
    """Beat (hourly): verify what every account's decision log and audit log gained since the last run, and the next
    slice of their rolling re-verification (governance/ledger.py ``verify_recent``); failures notify the owners."""
    failed = ledger.verify_all()
    if failed:
        logger.error("%s decision or audit logs failed verification", len(failed))


@shared_task(name="governance.verify_logs_now", ignore_result=True)
def verify_logs_now(account_id: int, job_id: str) -> None:
    """The Verification page's check of an account's whole decision and audit logs (governance/verify_jobs.py), with
    progress and the result in the job's Redis state. Reads the database, writes nothing to it."""
    from governance import verify_jobs

    verify_jobs.run_job(account_id, job_id)


@shared_task(name="governance.expire_approvals", ignore_result=True)
def expire_approvals() -> None:
    """Beat: open approvals past their time become expired (their args preview deleted)."""
    expired, batch = 0, 1000
    for _ in range(100):  # up to 100,000 a run: a backlog is worked off, not left for the next run
        done = approvals.expire_due(batch=batch)
        expired += done
        if done < batch:
            break
    if expired:
        logger.info("expired %s approval requests", expired)


@shared_task(name="governance.deliver_channel_message", ignore_result=True)
def deliver_channel_message(delivery_id: int) -> None:
    """Send one notification-channel delivery (governance/channels.py): a no-op unless it is pending and due."""
    channels.deliver(delivery_id)


@shared_task(name="governance.deliver_due_channel_messages", ignore_result=True)
def deliver_due_channel_messages() -> None:
    """Beat: wake channel deliveries whose wake-up was lost; delete finished ones past the retention period."""
    woken = channels.deliver_due()
    if woken:
        logger.info("woke %s channel deliveries that were due", woken)


@shared_task(name="governance.replay_policy_impact", ignore_result=True)
def replay_policy_impact(account_id: int, job_id: str) -> None:
    """A policy's impact preview (governance/replay.py): replay the agent's recorded decisions through the draft,
    with progress and the result in the job's Redis state. Reads the database, writes nothing to it."""
    from governance import replay

    replay.run_job(account_id, job_id)
