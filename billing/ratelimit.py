"""Per-API-key rate limits: a token bucket in Redis sized by the plan (rate_limit_per_second, rate_limit_burst).

check-lock takes its token inside its own Lua script (one round trip on the hot path); every other /v1 endpoint,
the governed call included, goes through ``ApiKeyRateThrottle``. A rate of 0 on the plan row means unlimited.
Over the limit → 429 with an integer Retry-After
that is honest: after waiting that long a token is there (unless the same key spent it meanwhile).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import redis
from rest_framework.throttling import BaseThrottle

from onceonly_site.redis_client import get_redis, lua_script

logger = logging.getLogger(__name__)
TAKE_TOKEN_LUA = Path(__file__).with_name("take_token.lua")
RATE_LIMIT_LUA = Path(__file__).with_name("rate_limit.lua")


class RateLimited(Exception):
    """429 rate_limited (onceonly_site.api maps it)."""

    def __init__(self, wait_ms: int) -> None:
        super().__init__(f"rate limited for {wait_ms} ms")
        self.wait_seconds = max(1, math.ceil(wait_ms / 1000))


def bucket_key(account_id: int, key_id: int) -> str:
    return f"oo:{{a{account_id}}}:rl:{key_id}"


def script_args(principal: Any) -> tuple[str, list[int]]:
    """The bucket KEY and (rate, burst) ARGV for scripts that take their token themselves."""
    plan = principal.plan
    return bucket_key(principal.account_id, principal.key_id), [plan.rate_per_second, plan.rate_burst]


def take(principal: Any) -> None:
    """Take one token from the caller's bucket, or raise RateLimited. Without Redis, no limit is applied."""
    key, argv = script_args(principal)
    try:
        wait_ms = int(lua_script(RATE_LIMIT_LUA, TAKE_TOKEN_LUA)(keys=[key], args=argv, client=get_redis()))
    except (redis.ConnectionError, redis.TimeoutError):
        logger.warning("rate limit not applied: Redis unreachable")
        return  # a limit we cannot count must not take the API down with Redis
    if wait_ms:
        raise RateLimited(wait_ms)


class ApiKeyRateThrottle(BaseThrottle):
    """DRF throttle for the endpoints whose work is not one Lua script (views set ``rate_limit_in_script`` and
    take the token themselves: in their script, or with ``take`` for a form of the view that has none)."""

    def allow_request(self, request: Any, view: Any) -> bool:
        if request.auth is not None and not getattr(view, "rate_limit_in_script", False):
            take(request.auth)
        return True
