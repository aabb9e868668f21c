"""Durable records of the exactly-once core: lock first-seen records and lease state machines."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models import Account
from idempotency.choices import AttemptOutcome, LeaseStatus


class LockRecord(models.Model):
    """The first-seen record of a check-lock key, so that a lock outlives the loss of Redis (design §3.4).

    One row per (account, key): a new lock after expiry overwrites it (conditional upsert, see
    ``idempotency.services.lock_check``). Redis holds the fast copy; this row decides when Redis has lost it.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="lock_records")
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
    """The lease state machine of one (account, key) (design §7), authoritative in the database.

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
