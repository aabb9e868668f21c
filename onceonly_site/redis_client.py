"""One Redis client per process for the fast path (auth cache, Lua scripts, counters).

The same code path serves the embedded server (unix socket) and a real Redis (tcp): only REDIS_URL differs.
redis-py's pool notices a fork and reconnects, so gunicorn/Celery prefork children get their own connections.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import redis
from django.conf import settings
from redis.commands.core import Script


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=5,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


@cache
def lua_script(path: Path, *preludes: Path) -> Script:
    """A Lua script file (one per atomic operation, next to the module that uses it), registered once per process.

    ``preludes`` are Lua files defining local functions the script calls (e.g. billing/take_token.lua), prepended
    so one script stays one atomic step. Call it with ``client=get_redis()``: EVALSHA, falling back to EVAL after a
    Redis restart or flush.
    """
    return get_redis().register_script("\n".join(p.read_text() for p in (*preludes, path)))
