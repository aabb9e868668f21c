"""Durable records of the exactly-once core: lock first-seen records and lease state machines."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models import Account
from idempotency.choices import AttemptOutcome, LeaseStatus, RunStatus


class LockRecord(models.Model):
    """The first-seen record of a check-lock key, so that a lock outlives the loss of Redis (docs/architecture.md §3.4).

    One row per (account, key): a new lock after expiry overwrites it (conditional upsert, see
    ``idempotency.services.lock_check``). Redis holds the fast copy; this row decides when Redis has lost it.
    """

    # Covered by the (account, key) unique constraint, which leads with it: one index fewer per new key.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="lock_records", db_index=False)
    key = models.CharField(max_length=256)
    first_seen_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    ttl_seconds = models.PositiveIntegerField()
    metadata = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            # The conditional upsert of a new lock relies on it (ON CONFLICT (account_id, key)).
            models.UniqueConstraint(fields=["account", "key"], name="idempotency_lock_unique_account_key"),
        ]
        indexes = [
            # The retention sweeper: expired records, oldest first.
            models.Index(fields=["expires_at"], name="idempotency_lock_expires"),
            # The Locks & leases page: an account's recent locks.
            models.Index(fields=["account", "-first_seen_at"], name="idempotency_lock_recent"),
        ]

    def __str__(self) -> str:
        return self.key

    def ttl_left(self, now=None) -> int:
        remaining = (self.expires_at - (now or timezone.now())).total_seconds()
        return max(0, int(remaining + 0.999))


class Lease(models.Model):
    """The lease state machine of one (account, key) (docs/architecture.md §7.5), authoritative in the database.

    Every transition is one conditional UPDATE, so at most one holder exists under any concurrency and across
    Redis loss. ``version`` counts acquisitions (the fence); an extend never changes it.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="leases")
    key = models.CharField(max_length=256)
    status = models.CharField(max_length=16, choices=LeaseStatus.choices)
    lease_id = models.CharField(max_length=64, help_text="Opaque id of the current (or last) holder.")
    version = models.PositiveIntegerField(default=1)
    ttl_seconds = models.PositiveIntegerField()
    first_seen_at = models.DateTimeField()
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    result_hash = models.CharField(max_length=128, blank=True)
    error_code = models.CharField(max_length=128, blank=True)
    error_hash = models.CharField(max_length=128, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            # One state machine per key: concurrent first acquisitions race on this insert.
            models.UniqueConstraint(fields=["account", "key"], name="idempotency_lease_unique_account_key"),
            models.CheckConstraint(
                condition=models.Q(status__in=LeaseStatus.values), name="idempotency_lease_status_valid"
            ),
        ]
        indexes = [
            # The Locks & leases page: active leases and recent completions of an account.
            models.Index(fields=["account", "status", "-updated_at"], name="idempotency_lease_by_status"),
            # The retention sweeper.
            models.Index(fields=["updated_at"], name="idempotency_lease_updated"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status} v{self.version})"

    def ttl_left(self, now=None) -> int:
        remaining = (self.expires_at - (now or timezone.now())).total_seconds()
        return max(0, int(remaining + 0.999))

    def visible_status(self, now=None) -> str:
        """What callers and operators see: in_progress while held, expired once the holder stopped extending."""
        if self.status == LeaseStatus.IN_PROGRESS:
            return "in_progress" if self.expires_at > (now or timezone.now()) else "expired"
        return self.status


class LeaseAttempt(models.Model):
    """One acquisition of a lease: who held it (lease_id, version), when, and how it ended."""

    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="attempts")
    version = models.PositiveIntegerField()
    holder = models.CharField(max_length=64, help_text="The lease_id of this acquisition.")
    acquired_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, default=AttemptOutcome.IN_PROGRESS)
    error_code = models.CharField(max_length=128, blank=True)
    note = models.CharField(max_length=500, blank=True, help_text="Cancel reason or operator reset reason.")

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["lease", "version"], name="idempotency_attempt_unique_version"),
        ]

    def __str__(self) -> str:
        return f"v{self.version} {self.outcome}"


class Run(models.Model):
    """A keyed run: the job behind one acquisition of a lease by the key form of ``/v1/ai/run``
    (docs/architecture.md §3.3).

    Celery only wakes a worker; the worker *claims* this row with a conditional UPDATE that raises ``fence`` and
    sets ``claimed_until``, heart-beats while it works, and writes the result only while it still holds that fence.
    A claim that stops heart-beating (the worker died) is taken over by the next worker the sweeper wakes.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="runs")
    # Deleted with its lease (retention): a key whose record is gone starts counting acquisitions from 1 again.
    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="runs")
    key = models.CharField(max_length=256, help_text="The lease key.")
    lease_version = models.PositiveIntegerField(help_text="The lease acquisition this run belongs to.")
    holder = models.CharField(max_length=64, help_text="The lease_id the run holds the key with (and completes it).")
    run_id = models.CharField(max_length=256, help_text="The timeline id (metadata.run_id, default the key).")
    agent_id = models.CharField(max_length=200, blank=True)
    task = models.CharField(max_length=200, blank=True)
    actions = models.JSONField(default=list, blank=True)
    params = models.JSONField(null=True, blank=True, help_text="metadata.params: the job handler's input.")
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    fence = models.PositiveIntegerField(default=0, help_text="Claims so far; a worker writes only with its own.")
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField()
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(help_text="Not finished by then: failed with timeout.")
    # Waiting for an approval (docs/runs.md §"Runs that wait for an approval"): the approval's public id (a plain
    # string: idempotency does not import governance) and its expiry; emptied when the run goes on.
    waiting_for = models.CharField(max_length=64, blank=True)
    waiting_until = models.DateTimeField(null=True, blank=True)
    actions_done = models.PositiveIntegerField(
        default=0, help_text="Actions decided before the run last waited: it goes on from the next (result.actions)."
    )
    # Raise & resume (docs/runs.md §"Runs that pause at a cap"): the per-run caps this run has instead of its agent's
    # policy's ({"max_actions_per_run": 10, …}); None: the policy's.
    cap_overrides = models.JSONField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["lease", "lease_version"], name="idempotency_run_unique_acquisition"),
            models.CheckConstraint(
                condition=models.Q(status__in=RunStatus.values), name="idempotency_run_status_valid"
            ),
        ]
        indexes = [
            # The Runs page and the overview panels: an account's recent runs, by status.
            models.Index(fields=["account", "-created_at"], name="idempotency_run_recent"),
            models.Index(fields=["account", "status", "-created_at"], name="idempotency_run_by_status"),
            # The sweeper: unfinished runs whose claim or deadline passed.
            models.Index(fields=["status", "claimed_until"], name="idempotency_run_sweep"),
            models.Index(fields=["account", "run_id"], name="idempotency_run_by_run_id"),
            # The runs waiting for an approval that was just decided, expired or superseded (few rows: partial).
            models.Index(
                fields=["waiting_for"],
                condition=models.Q(status="waiting_approval"),
                name="idempotency_run_waiting_for",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(0, int((end - self.started_at).total_seconds() * 1000))

    @property
    def is_waiting(self) -> bool:
        return self.status == RunStatus.WAITING_APPROVAL

    @property
    def is_paused(self) -> bool:
        return self.status == RunStatus.PAUSED

    @property
    def is_finished(self) -> bool:
        return self.status in (RunStatus.COMPLETED, RunStatus.FAILED)


class RunEvent(models.Model):
    """One entry of a run timeline (docs/api.md §"Run events and timelines"): posted by clients or emitted by the
    server.

    ``decision_id`` links an event to the governance decision it reports (a plain integer: ``idempotency`` does
    not import ``governance``, docs/architecture.md §2.2). Unknown top-level keys a client sent are kept in ``extra``.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="run_events")
    run_id = models.CharField(max_length=256)
    ts = models.DateTimeField()
    type = models.CharField(max_length=64)
    status = models.CharField(max_length=64, blank=True)
    step = models.CharField(max_length=256, blank=True)
    tool = models.CharField(max_length=256, blank=True)
    message = models.CharField(max_length=4000, blank=True)
    duration_ms = models.BigIntegerField(null=True, blank=True)
    req_id = models.CharField(max_length=256, blank=True)
    lease_id = models.CharField(max_length=256, blank=True)
    agent_id = models.CharField(max_length=256, blank=True)
    data = models.JSONField(null=True, blank=True)
    extra = models.JSONField(null=True, blank=True)
    decision_id = models.BigIntegerField(null=True, blank=True)
    source = models.CharField(max_length=16, default="client", help_text="client (POST /v1/events) or server.")

    class Meta:
        indexes = [
            # A run's timeline, chronological.
            models.Index(fields=["account", "run_id", "ts", "id"], name="idempotency_event_timeline"),
            # The account's recent events feed.
            models.Index(fields=["account", "-ts"], name="idempotency_event_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}: {self.type}"
