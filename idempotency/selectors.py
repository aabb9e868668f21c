"""Reads for the Locks & leases pages, always scoped to one account."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import Account
from idempotency.choices import LeaseStatus, RunStatus
from idempotency.models import Lease, LockRecord, Run, RunEvent


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


def runs_for_account(account: Account) -> QuerySet[Run]:
    """The Runs page: an account's runs, newest first (the page's table filters and sorts them)."""
    return Run.objects.filter(account=account).order_by("-created_at", "-id")


def recent_run_agents(account: Account, limit: int = 100) -> list[str]:
    """Agent ids of the account's latest runs (the Runs page's suggestions): one read of the (account, -created_at)
    index, at most 1,000 rows, whatever the number of runs."""
    ids = (
        Run.objects.filter(account=account)
        .exclude(agent_id="")
        .order_by("-created_at")
        .values_list("agent_id", flat=True)[:1000]
    )
    return sorted(set(ids))[:limit]


def runs_with_run_id(account: Account, run_id: str) -> list[Run]:
    """The runs (acquisitions) that wrote to a timeline, newest first (a failed key retried is several)."""
    return list(Run.objects.filter(account=account, run_id=run_id).order_by("-created_at", "-id")[:10])


def timeline_page(account: Account, run_id: str, *, after: int = 0, limit: int) -> list[RunEvent]:
    """Events of a timeline in the order they were written, after event id ``after`` (live updates)."""
    return list(RunEvent.objects.filter(account=account, run_id=run_id, pk__gt=after).order_by("id")[:limit])


def timeline_events(account: Account, run_id: str) -> QuerySet[RunEvent]:
    """Every event of a timeline (its export orders and pages them)."""
    return RunEvent.objects.filter(account=account, run_id=run_id)


def runs_in_progress(account: Account, limit: int) -> list[Run]:
    return list(
        Run.objects.filter(account=account, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).order_by(
            "-created_at", "-id"
        )[:limit]
    )


def recent_failed_runs(account: Account, since: datetime, limit: int) -> list[Run]:
    return list(
        Run.objects.filter(account=account, status=RunStatus.FAILED, created_at__gte=since).order_by(
            "-created_at", "-id"
        )[:limit]
    )
