"""One Redis client per process for the fast path (auth cache, Lua scripts, counters).

The same code path serves the embedded server (unix socket) and a real Redis (tcp): only REDIS_URL differs.
redis-py's pool notices a fork and reconnects, so gunicorn/Celery prefork children get their own connections.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
