"""Failed-login lockout for the dashboard: after ONCEONLY_LOGIN_MAX_FAILURES wrong passwords for one email (or ten
times that many from one client address) within ONCEONLY_LOGIN_LOCKOUT_SECONDS, sign-in is refused until the
window has passed — with the same message whether or not the email belongs to an operator (no enumeration).

Counters live in Redis (every web process agrees); if Redis is unreachable the check is skipped with a warning
rather than locking every operator out.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import redis
from django.conf import settings

from onceonly_site.redis_client import get_redis, lua_script

logger = logging.getLogger(__name__)
FAILURE_LUA = Path(__file__).with_name("login_failure.lua")
IP_FACTOR = 10  # a client address may fail this many times more often (shared NAT, several operators)


def _keys(email: str, address: str) -> list[str]:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # no email in Redis or logs
    return [f"oo:login-fail:email:{digest}", f"oo:login-fail:ip:{address}"]


def _limits() -> list[int]:
    limit = settings.ONCEONLY_LOGIN_MAX_FAILURES
    return [limit, limit * IP_FACTOR]


def locked_for(email: str, address: str) -> int:
    """Seconds until sign-in is allowed again for this email from this address; 0 when it is allowed now."""
    keys = _keys(email, address)
    try:
        pipe = get_redis().pipeline(transaction=False)
        for key in keys:
            pipe.get(key).ttl(key)
        replies = pipe.execute()
    except redis.RedisError:
        logger.warning("login lockout not checked: Redis unreachable")
        return 0
    wait = 0
    for index, limit in enumerate(_limits()):
        count, ttl = replies[2 * index], replies[2 * index + 1]
        if count is not None and int(count) >= limit:
            wait = max(wait, ttl if ttl > 0 else settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS)
    return wait


def record_failure(email: str, address: str) -> None:
    window, keys = settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS, _keys(email, address)
    try:
        counts = lua_script(FAILURE_LUA)(keys=keys, args=[window], client=get_redis())
    except redis.RedisError:
        logger.warning("failed login not counted: Redis unreachable")
        return
    if counts[0] == settings.ONCEONLY_LOGIN_MAX_FAILURES:
        email_hash = keys[0].rsplit(":", 1)[1]
        logger.warning("dashboard sign-in locked for %s min after %s failures (email hash %s, address %s)",
                       math.ceil(window / 60), counts[0], email_hash, address)  # fmt: skip


def record_success(email: str, address: str) -> None:
    try:
        get_redis().delete(_keys(email, address)[0])
    except redis.RedisError:
        pass
