"""Reads for the Locks & leases pages, always scoped to one account."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import Account
from idempotency.choices import LeaseStatus
from idempotency.models import Lease, LockRecord, RunEvent


def lock_for_account(account: Account, key: str) -> LockRecord | None:
    return LockRecord.objects.filter(account=account, key=key).first()


def lease_for_account(account: Account, key: str) -> Lease | None:
    return Lease.objects.filter(account=account, key=key).prefetch_related("attempts").first()


def active_leases(account: Account) -> QuerySet[Lease]:
    return Lease.objects.filter(
        account=account, status=LeaseStatus.IN_PROGRESS, expires_at__gt=timezone.now()
    ).order_by("-updated_at", "-id")


def finished_leases(account: Account) -> QuerySet[Lease]:
    return Lease.objects.filter(
        account=account, status__in=[LeaseStatus.COMPLETED, LeaseStatus.FAILED, LeaseStatus.CANCELLED]
    ).order_by("-updated_at", "-id")


def recent_locks(account: Account) -> QuerySet[LockRecord]:
    return LockRecord.objects.filter(account=account).order_by("-first_seen_at", "-id")


def run_timeline(account_id: int, run_id: str, *, limit: int, offset: int) -> tuple[list[RunEvent], int]:
    """A run's events in chronological order (ts, then insertion), and how many there are in all."""
    events = RunEvent.objects.filter(account_id=account_id, run_id=run_id)
    rows = list(events.order_by("ts", "id")[offset : offset + limit])
    total = len(rows) + offset if len(rows) < limit and (rows or offset == 0) else events.count()
    return rows, total
