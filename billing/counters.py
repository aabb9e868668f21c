"""Per-process request counters, added to the database in batches.

``requests_total_all_time`` is a statistic shown by ``/v1/me``, not something enforced, so it is not worth a
Redis or database round trip per request: each process accumulates counts in memory and adds them with one
``UPDATE … SET n = n + k`` per account when a request arrives ``ONCEONLY_COUNTER_FLUSH_SECONDS`` or more after the
last flush, and at exit. A process killed with SIGKILL loses the requests it counted since its last flush (an
idle process holds them until its next request or its exit). (Monthly quota counters, which are enforced, are atomic
Redis operations with a database mirror — see the Plans issue.)
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import Counter

from django.conf import settings
from django.db import DatabaseError
from django.db.models import F

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_requests: Counter[int] = Counter()
_last_flush = time.monotonic()


def count_request(account_id: int) -> None:
    with _lock:
        _requests[account_id] += 1
        due = time.monotonic() - _last_flush >= settings.ONCEONLY_COUNTER_FLUSH_SECONDS
    if due:
        flush()


def pending(account_id: int) -> int:
    """Requests of this process not yet added to the database."""
    with _lock:
        return _requests.get(account_id, 0)


def flush() -> None:
    global _last_flush
    from billing.models import Account

    with _lock:
        requests = dict(_requests)
        _requests.clear()
        _last_flush = time.monotonic()
    for account_id, count in requests.items():
        try:
            Account.objects.filter(pk=account_id).update(requests_total_all_time=F("requests_total_all_time") + count)
        except DatabaseError:
            # Put them back: the next flush tries again (a statistic must not fail a request).
            logger.warning("could not flush request counters for account %s", account_id, exc_info=True)
            with _lock:
                _requests[account_id] += count


def _flush_at_exit() -> None:
    try:
        flush()
    except Exception:
        logger.debug("counter flush at exit failed", exc_info=True)


atexit.register(_flush_at_exit)
