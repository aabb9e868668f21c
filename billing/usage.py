"""Metering: monthly usage counters per account (UTC calendar months), in Redis.

``make`` counts locked check-locks, ``ai`` counts acquired leases/runs (design §7). Counting happens atomically
with the decision that consumes it: check-lock increments inside its Lua script (``usage_key`` is passed to it
as a key), leases call ``record``. Quota enforcement (402) and the database mirror of these counters arrive with
the Plans issue; until then they are reported (``charged``/``usage``/``limit``) but not enforced.
"""

from __future__ import annotations

from datetime import datetime

import redis
from django.utils import timezone

from onceonly_site.redis_client import get_redis

MAKE = "make"
AI = "ai"
KINDS = (MAKE, AI)
# Counters outlive their month long enough to be read back and mirrored, then expire on their own.
KEEP_SECONDS = 62 * 86400


def month_of(now: datetime | None = None) -> str:
    return (now or timezone.now()).strftime("%Y-%m")


def usage_key(account_id: int, now: datetime | None = None) -> str:
    # The {a<id>} hash tag keeps an account's keys in one Redis Cluster slot, so one Lua script may touch them all.
    return f"oo:{{a{account_id}}}:usage:{month_of(now)}"


def record(account_id: int, kind: str) -> int | None:
    """Count one unit of ``kind``; returns the month's usage after it, or None if Redis is unreachable."""
    key = usage_key(account_id)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(key, kind, 1)
        pipe.expire(key, KEEP_SECONDS)
        return int(pipe.execute()[0])
    except redis.RedisError:
        return None


def current(account_id: int, kind: str) -> int:
    try:
        value = get_redis().hget(usage_key(account_id), kind)
    except redis.RedisError:
        return 0
    return int(value or 0)
