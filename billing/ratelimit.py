"""Per-API-key rate limits: a token bucket in Redis sized by the plan (rate_limit_per_second, rate_limit_burst).

Check-lock and the governed call take their token inside their own Lua script (``script_args``: one round trip on
the hot path; their views say ``rate_limit_in_script``); the key form of ``/v1/ai/run`` calls ``take``; every other
/v1 endpoint goes through ``ApiKeyRateThrottle``. A rate of 0 on the plan row means unlimited. Over the limit → 429
with an integer Retry-After that is honest: after waiting that long a token is there (unless the same key spent it
meanwhile).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import redis
from rest_framework.throttling import BaseThrottle

from billing.auth import ApiPrincipal
from onceonly_site.api import ApiProblem
from onceonly_site.redis_client import LuaScript, get_redis

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)
TAKE_TOKEN_LUA = Path(__file__).with_name("take_token.lua")
RATE_LIMIT_LUA = Path(__file__).with_name("rate_limit.lua")


class RateLimited(ApiProblem):
    """429 rate_limited, with Retry-After: the caller's bucket is empty for ``wait_ms`` more milliseconds."""

    def __init__(self, wait_ms: int) -> None:
        self.wait_seconds = wait = max(1, math.ceil(wait_ms / 1000))
        message = f"Too many requests for this API key; retry in {wait} s."
        super().__init__(429, "rate_limited", message, headers={"Retry-After": str(wait)}, retry_after=wait)


def bucket_key(account_id: int, key_id: int) -> str:
    return f"oo:{{a{account_id}}}:rl:{key_id}"


def script_args(principal: ApiPrincipal) -> tuple[str, list[int]]:
    """The bucket KEY and (rate, burst) ARGV for scripts that take their token themselves."""
    plan = principal.plan
    return bucket_key(principal.account_id, principal.key_id), [plan.rate_per_second, plan.rate_burst]


class RateLimitKeys(NamedTuple):
    bucket: str


class RateLimitArgs(NamedTuple):
    rate: int
    burst: int


RATE_LIMIT = LuaScript(RATE_LIMIT_LUA, RateLimitKeys, RateLimitArgs, preludes=(TAKE_TOKEN_LUA,))


def take(principal: ApiPrincipal) -> None:
    """Take one token from the caller's bucket, or raise RateLimited. Without Redis, no limit is applied."""
    take_bucket(*script_args(principal))


def take_bucket(key: str, limits: list[int]) -> None:
    """``take`` on a bucket named as ``script_args`` names it (for a script-taking path that ended before its
    script)."""
    rate, burst = limits
    try:
        reply = RATE_LIMIT(get_redis(), RateLimitKeys(bucket=key), RateLimitArgs(rate=rate, burst=burst))
    except (redis.ConnectionError, redis.TimeoutError):
        logger.warning("rate limit not applied: Redis unreachable")
        return  # a limit we cannot count must not take the API down with Redis
    if reply[0] == b"rate_limited":
        raise RateLimited(int(reply[1]))


class ApiKeyRateThrottle(BaseThrottle):
    """DRF throttle for the endpoints whose work is not one Lua script (views set ``rate_limit_in_script`` and
    take the token themselves: in their script, or with ``take`` for a form of the view that has none)."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        auth = request.auth  # an ApiPrincipal, or None without a key (ApiKeyAuthentication is the only one)
        if isinstance(auth, ApiPrincipal) and not getattr(view, "rate_limit_in_script", False):
            take(auth)
        return True
