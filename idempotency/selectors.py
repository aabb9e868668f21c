"""Reads for the Locks & leases pages, always scoped to one account."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import Account
from idempotency.choices import LeaseStatus
from idempotency.models import Lease, LockRecord


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
