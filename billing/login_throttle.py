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
from typing import NamedTuple

import redis
from django.conf import settings

from onceonly_site.redis_client import LuaScript, get_redis

logger = logging.getLogger(__name__)
ATTEMPT_LUA = Path(__file__).with_name("login_attempt.lua")
IP_FACTOR = 10  # a client address may fail this many times more often (shared NAT, several operators)


class AttemptKeys(NamedTuple):
    email: str
    address: str


class AttemptArgs(NamedTuple):
    window: int
    email_limit: int
    address_limit: int


ATTEMPT = LuaScript(ATTEMPT_LUA, AttemptKeys, AttemptArgs)


def _keys(email: str, address: str) -> AttemptKeys:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]  # no email in Redis or logs
    # One hash tag for both: login_attempt.lua touches the two in one step, which a Redis Cluster runs only on keys
    # of one slot (sign-ins are few; every email and address sharing one slot costs nothing).
    return AttemptKeys(email=f"oo:{{login}}:fail:email:{digest}", address=f"oo:{{login}}:fail:ip:{address}")


def begin_attempt(email: str, address: str) -> int:
    """Count a sign-in attempt for this email from this address, as a failure until ``record_success`` says
    otherwise, and return 0; or, when either is locked out, count nothing and return the seconds until sign-in is
    allowed again. Checked and counted in one Redis step (login_attempt.lua): concurrent guesses cannot all pass the
    check before one of them is counted."""
    window, limit = settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS, settings.ONCEONLY_LOGIN_MAX_FAILURES
    keys, args = _keys(email, address), AttemptArgs(window=window, email_limit=limit, address_limit=limit * IP_FACTOR)
    try:
        reply = ATTEMPT(get_redis(), keys, args)
    except redis.RedisError:
        logger.warning("login lockout not checked: Redis unreachable")
        return 0
    if reply[0] == b"locked_out":
        return int(reply[1])
    if reply[1] == settings.ONCEONLY_LOGIN_MAX_FAILURES:
        email_hash = keys.email.rsplit(":", 1)[1]
        logger.warning(
            "dashboard sign-in locked for %s min after %s failed attempts (email hash %s, address %s)",
            math.ceil(window / 60),
            reply[1],
            email_hash,
            address,
        )
    return 0


def record_success(email: str, address: str) -> None:
    """The attempt begun with ``begin_attempt`` succeeded: the email's count starts again, and the attempt is taken
    back from the address's count (which counts failures only)."""
    keys = _keys(email, address)
    try:
        client = get_redis()
        pipe = client.pipeline(transaction=False)
        pipe.delete(keys.email)
        pipe.decr(keys.address)
        _, left = pipe.execute()
        if left <= 0:  # nothing left to count (or the window ended meanwhile and DECR made a key without expiry)
            client.delete(keys.address)
    except redis.RedisError:
        pass
