"""The Celery app: `celery -A onceonly_site worker` / `celery -A onceonly_site beat`.

Celery only wakes workers; the state of every job lives in a database row (docs/architecture.md §1.2). The beat
schedule is defined here, in one place, each entry commented.
"""

import os

from celery import Celery

from onceonly_site.health import HEARTBEAT_INTERVAL

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onceonly_site.settings")

app = Celery("onceonly_site", include=["onceonly_site.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The one beat schedule. Each entry names the guarantee it serves; the lease/run sweepers and the governance
# rollups join it with their issues.
app.conf.beat_schedule = {
    # Lets the dashboard and /healthz tell operators whether any worker consumes the queue (keyed runs and
    # tool-dispatch retries silently wait without one).
    "worker-heartbeat": {"task": "onceonly.worker_heartbeat", "schedule": float(HEARTBEAT_INTERVAL)},
    # Completed/failed leases are final only for the retention period (docs/architecture.md §7.5); their rows and
    # expired lock records are deleted after it, in batches.
    "idempotency-retention-sweep": {"task": "idempotency.retention_sweep", "schedule": 600.0},
    # The durable mirror of the monthly usage counters: what Redis loses is rebuilt from it (≤ 1 minute behind).
    "billing-mirror-usage": {"task": "billing.mirror_usage", "schedule": 60.0},
    # Notification digests: a failure storm becomes one email per account and minute.
    "billing-notification-digests": {"task": "billing.send_notification_digests", "schedule": 60.0},
    # Paid plans (docs/billing.md): a cancelled Stripe subscription drops to Free when its paid period ends.
    "billing-scheduled-downgrades": {"task": "billing.apply_scheduled_downgrades", "schedule": 60.0},
    # Tamper evidence (docs/architecture.md §3.9): chain new decisions into hash checkpoints per account.
    "governance-checkpoint-decisions": {"task": "governance.checkpoint_decisions", "schedule": 300.0},
    # …and verify what each account's decision and audit logs gained since the last run, plus a slice of a rolling
    # re-verification of the rest (the whole log every ONCEONLY_VERIFY_SWEEP_DAYS), so tampering is reported without
    # anyone opening the verify page, at a cost that does not grow with history (governance/ledger.py).
    "governance-verify-decision-logs": {"task": "governance.verify_decision_logs", "schedule": 3600.0},
    # The decision log's day partitions on PostgreSQL: a week ahead, and the days past retention dropped whole
    # (governance/partitions.py; a no-op on SQLite).
    "governance-maintain-decision-partitions": {"task": "governance.maintain_decision_partitions", "schedule": 3600.0},
    # Durability of dispatches (docs/architecture.md §3.4, §4.11): a tool called by a server that stopped before
    # recording the answer gets its decision from the intent row written before the call (failed, outcome_unknown).
    "governance-record-unfinished-dispatches": {"task": "governance.record_unfinished_dispatches", "schedule": 60.0},
    # Approval requests past their time expire and lose their args preview (docs/approvals.md).
    "governance-expire-approvals": {"task": "governance.expire_approvals", "schedule": 30.0},
    # Channel deliveries due (a retry, a lost wake-up); old ones pruned (docs/notifications.md).
    "governance-deliver-due-channel-messages": {"task": "governance.deliver_due_channel_messages", "schedule": 30.0},
}


@app.on_after_configure.connect
def _settings_dependent_schedule(sender: Celery, **kwargs: object) -> None:
    """Entries whose interval is a setting (read once the Django settings are loaded, not at import)."""
    from django.conf import settings

    # Crash safety of keyed runs (docs/architecture.md §3.3): a run whose worker died is handed to another worker
    # once its claim lapses; a run past its deadline fails with timeout.
    sender.conf.beat_schedule["idempotency-sweep-runs"] = {
        "task": "idempotency.sweep_runs",
        "schedule": settings.ONCEONLY_RUN_SWEEP_SECONDS,
    }
