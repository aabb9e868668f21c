"""Waiting for keyed runs (docs/runs.md §"Waiting for a run"): ``GET /v1/ai/status``, ``GET /v1/ai/result`` and the
key form of ``POST /v1/ai/run`` wait up to ``ONCEONLY_RUN_WAIT_SECONDS`` for an unfinished keyed run to finish, and
answer the moment it does.

- **What is waited for.** Only a key whose lease is held by a keyed run that a worker has queued or is running:
  the run's end is a server event (``runs.finish``, the sweeper, a cancel) that publishes a wake-up. A key held by
  a plain lease (``/v1/ai/lease``, the SDK's ``run_fn``) is answered at once: its holder is a client whose progress
  the server cannot see, and a status request must not tie up a web thread for what may be the lease's whole TTL.
  The holder's own calls (extend, complete, fail, cancel) never wait.
- **Woken, not polling.** Whoever finishes, fails or cancels a lease or a run publishes a wake-up on the key's
  channel after its commit (``wake``); the waiting request then re-reads the lease with its own account's scope.
  The channel is scoped by account and carries no data (onceonly_site/wakeups.py).
- **Bounded.** At most ``ONCEONLY_RUN_WAITERS_PER_PROCESS`` requests of a process wait at once (a quarter of its
  threads by default); a request over that answers at once, as it would without waiting. A request never waits
  inside a database transaction (the acquisition would not be visible to the worker before it ends, and a held
  transaction is not a cheap thing to sleep on), nor past the lease's expiry, nor while Redis is unreachable.
"""

from __future__ import annotations

import time
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from idempotency.choices import LeaseStatus, RunStatus
from idempotency.models import Lease, Run
from onceonly_site import runner, wakeups

UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
# retry_after_sec grows by one second for every RETRY_AFTER_STEP seconds of the run's (the acquisition's) age, from
# 1 to MAX_RETRY_AFTER. A client learns of a finish that falls into its sleep at most retry_after_sec late, so the
# step bounds that delay to about a quarter of the time the run has taken so far: a run that just started (most
# finish within a second or two, and the next status call waits for them) is asked about again after 1 s, a long
# one at most every 5 s (the SDK's own cap, poll_max), one request per 5 s + the wait instead of one per second.
RETRY_AFTER_STEP = 4
MAX_RETRY_AFTER = 5

_slots = wakeups.Slots(lambda: settings.ONCEONLY_RUN_WAITERS_PER_PROCESS)


def lease_channel(account_id: int, key: str) -> str:
    """The wake-up channel of one key of one account."""
    return wakeups.channel(f"a{account_id}", key)


def wake(account_id: int, key: str) -> None:
    """Wake the requests waiting on ``key`` once the current transaction commits (best effort)."""
    wakeups.notify_on_commit(lease_channel(account_id, key))


def retry_after(lease: Lease, now: datetime) -> int:
    """The polling hint of a held key, a whole number of seconds (the SDK ignores any other): 1 for a fresh
    acquisition, growing with its age (``RETRY_AFTER_STEP``), at most ``MAX_RETRY_AFTER``, and never past the
    lease's expiry (poll again when it may be free)."""
    age = max(0.0, (now - lease.acquired_at).total_seconds())
    hint = min(MAX_RETRY_AFTER, 1 + int(age // RETRY_AFTER_STEP))
    return max(1, min(hint, lease.ttl_left(now)))


def waiters() -> int:
    """How many requests of this process wait now."""
    return _slots.taken


def _held(lease: Lease, now: datetime) -> bool:
    return lease.status == LeaseStatus.IN_PROGRESS and lease.expires_at > now


def _run_unfinished(lease: Lease) -> bool:
    """A keyed run holds this acquisition of the key and has not finished (one lookup on the unique index)."""
    return Run.objects.filter(lease_id=lease.pk, lease_version=lease.version, status__in=UNFINISHED).exists()


def wait_for_run(account_id: int, key: str, lease: Lease, *, run_known: bool = False) -> Lease | None:
    """The key's lease once its keyed run finished, or as it stands when the wait ends (the bound, the lease's
    expiry, no slot free). ``lease`` is the record as the caller read it; ``run_known``: the caller just queued its
    run. None: the record was deleted meanwhile (retention)."""
    seconds = settings.ONCEONLY_RUN_WAIT_SECONDS
    if seconds <= 0 or connection.in_atomic_block:
        return lease
    now = timezone.now()
    if not _held(lease, now) or not (run_known or _run_unfinished(lease)):
        return lease
    deadline = time.monotonic() + seconds
    with _slots.slot() as got:
        if not got:
            return lease
        with wakeups.listen(lease_channel(account_id, key)) as event:
            if event is None:
                return lease
            seen = (lease.version, lease.lease_id)
            woken = False
            while True:
                # Registered before this read: a finish committed after it wakes the event.
                fresh = Lease.objects.filter(account_id=account_id, key=key).first()
                if fresh is None:
                    return None
                lease, now = fresh, timezone.now()
                if not _held(lease, now):
                    return lease
                if (lease.version, lease.lease_id) != seen:  # acquired again meanwhile: by a run, or a plain lease?
                    if not _run_unfinished(lease):
                        return lease
                    seen = (lease.version, lease.lease_id)
                elif woken and not _run_unfinished(lease):
                    # Woken, the key still held: its run parked or paused (the key stays held while it waits for a
                    # person), which answers now rather than at the wait's bound.
                    return lease
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return lease
                with runner.stepped_aside():  # another request of this process may run meanwhile
                    event.wait(min(remaining, (lease.expires_at - now).total_seconds()))
                woken = event.is_set()
                event.clear()  # before the re-read: a wake-up after it is seen by the next wait
