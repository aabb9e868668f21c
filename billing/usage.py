"""Metering and monthly quotas (UTC calendar months; docs/architecture.md §7.10).

``make`` counts locked check-locks, ``ai`` counts acquired leases and executed/allowed governed calls. The live
counters are one Redis hash per account and month; every quota decision is an atomic check-and-increment in Lua
(check_lock.lua, governed_call.lua, quota.lua), so concurrent callers can never push usage past the limit.

The hash is mirrored to ``UsageMonth`` rows by a beat task (every minute). When Redis has lost a month's hash
(restart, flush), it is rebuilt from that row before any decision — counts made since the last mirror run (at most
about a minute) are the only thing such a loss can forget.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import redis
from django.db import DatabaseError, transaction
from django.utils import timezone

from onceonly_site.api import ApiProblem
from onceonly_site.redis_client import LuaScript, get_redis, hash_of

logger = logging.getLogger(__name__)

MAKE = "make"
AI = "ai"
KINDS = (MAKE, AI)
FIELDS = ("make", "ai", "requests_make", "requests_ai", "blocked_make", "blocked_ai", "polling_ai")
# Counters outlive their month long enough to be mirrored after it ends, then expire on their own.
KEEP_SECONDS = 62 * 86400
QUOTA_LUA = Path(__file__).with_name("quota.lua")


class QuotaKeys(NamedTuple):
    usage: str


class QuotaArgs(NamedTuple):
    kind: str
    limit: int
    usage_keep_seconds: int
    also: str
    day: str
    counted_too: str
    read: str
    publish: str


QUOTA = LuaScript(QUOTA_LUA, QuotaKeys, QuotaArgs)


class ReleaseArgs(NamedTuple):
    """ARGV of billing/release.lua, before its field/delta ``changes``."""

    day: str


RELEASE = LuaScript(Path(__file__).with_name("release.lua"), QuotaKeys, ReleaseArgs, rest="changes")


def month_of(now: datetime | None = None) -> str:
    return (now or timezone.now()).astimezone(UTC).strftime("%Y-%m")


def period_of(month: str) -> tuple[datetime, datetime]:
    year, number = map(int, month.split("-"))
    start = datetime(year, number, 1, tzinfo=UTC)
    return start, start + timedelta(days=calendar.monthrange(year, number)[1])


def usage_key(account_id: int, now: datetime | None = None) -> str:
    # The {a<id>} hash tag keeps an account's keys in one Redis Cluster slot, so one Lua script may touch them all.
    return f"oo:{{a{account_id}}}:usage:{month_of(now)}"


def rebuild(account_id: int, now: datetime | None = None) -> None:
    """Recreate a lost month hash from its database mirror (HSETNX: never overwrites live counts)."""
    from billing.models import UsageMonth

    row = UsageMonth.objects.filter(account_id=account_id, month=month_of(now)).first()
    key = usage_key(account_id, now)
    pipe = get_redis().pipeline(transaction=False)
    for name in FIELDS:
        pipe.hsetnx(key, name, getattr(row, name) if row else 0)
    for name, value in (row.daily if row else {}).items():
        pipe.hsetnx(key, name, value)
    pipe.expire(key, KEEP_SECONDS)
    pipe.execute()


class QuotaExceeded(ApiProblem):
    """The month's quota of ``kind`` is used up: 402 usage_limit."""

    def __init__(self, *, kind: str, plan: str, usage: int, limit: int) -> None:
        self.kind, self.plan, self.usage, self.limit = kind, plan, usage, limit
        message = (
            f"The {plan} plan's monthly {kind} quota is used up ({usage}/{limit}); it resets at the start of "
            "the next UTC month."
        )
        super().__init__(402, "usage_limit", message, kind=kind, plan=plan, usage=usage, limit=limit)


QuotaListener = Callable[[int, str, int, int], Any]
# Told of each monthly quota unit counted outside a governed call — (account id, kind, the month's usage after it, the
# plan's limit) — by check-lock and leases: governance's budget alerts register here from their AppConfig.ready()
# (billing imports no app; docs/governance.md §"Budget alerts").
QUOTA_LISTENERS: list[QuotaListener] = []


def counted(account_id: int, kind: str, used: int, limit: int) -> None:
    """A quota unit was counted: tell the listeners (a listener's error is logged, never the caller's)."""
    for listener in QUOTA_LISTENERS:
        try:
            listener(account_id, kind, used, limit)
        except Exception:
            logger.exception("a quota listener failed for account %s", account_id)


def _quota(
    account_id: int,
    kind: str,
    limit: int,
    *,
    also: str = "",
    daily: bool = False,
    counted_too: str = "",
    read: str = "",
    publish: str = "",
) -> list[Any]:
    """quota.lua's reply for the account's month (rebuilt from the mirror first if Redis lost it)."""
    for _ in range(2):
        day = timezone.now().astimezone(UTC).strftime("%d") if kind in KINDS or daily else ""
        keys = QuotaKeys(usage=usage_key(account_id))
        args = QuotaArgs(
            kind=kind,
            limit=limit,
            usage_keep_seconds=KEEP_SECONDS,
            also=also,
            day=day,
            counted_too=counted_too,
            read=read,
            publish=publish,
        )
        reply = QUOTA(get_redis(), keys, args)
        if reply[0] != b"rebuild_usage":
            return reply
        rebuild(account_id)
    raise RuntimeError("usage counters could not be rebuilt")


def reserve(
    account_id: int, kind: str, limit: int, also: str = "", daily: bool = False, counted_too: str = ""
) -> tuple[bool, int]:
    """Count one unit of ``kind`` if the month's usage is below ``limit`` (-1: no limit). (counted?, usage).

    ``also`` names a statistics field counted in the same round trip (requests_ai); ``counted_too`` one counted
    (per day too) only when the unit is — ``release`` takes both back. The quota kinds, and any field with
    ``daily``, are counted per day as well (``<field>:DD``, the source of ``/v1/metrics``)."""
    reply = _quota(account_id, kind, limit, also=also, daily=daily, counted_too=counted_too)
    return reply[0] == b"ok", int(reply[1])


def release(account_id: int, kind: str, now: datetime | None = None, counted_too: str = "", instead: str = "") -> None:
    """Give back a unit reserved for a decision that did not happen (e.g. the lease turned out to be held), with
    the ``counted_too`` field counted with it, and count the statistics field ``instead`` (per day too): one round
    trip, which writes nothing when Redis lost the month's hash meanwhile (release.lua)."""
    now = now or timezone.now()
    changes: list[Any] = []
    for name, by in ((kind, -1), (counted_too, -1), (instead, 1)):
        if name:
            changes += [name, by]
    RELEASE(get_redis(), QuotaKeys(usage=usage_key(account_id, now)), ReleaseArgs(day=f"{now:%d}"), changes)


def count_reading(account_id: int, field: str, read: str, publish: str = "") -> int | None:
    """``count(field, daily=True)``, the value of the field ``read`` and a PUBLISH on the wake-up channel
    ``publish`` (sent as is: the caller's transaction has committed), in one round trip. The value read, or None
    when that failed (nothing counted or published: the caller may publish alone; statistics are best effort)."""
    try:
        reply = _quota(account_id, field, -1, daily=True, read=read, publish=publish)
    except (redis.RedisError, RuntimeError, DatabaseError):  # DatabaseError: the rebuild from the mirror
        logger.warning("could not count %s or publish its wake-up: Redis unreachable", field)
        return None
    return int(reply[2])


def count(account_id: int, field: str, daily: bool = False) -> None:
    """Statistics (requests, polling): counted like a quota without a limit; never fails the request."""
    try:
        reserve(account_id, field, -1, daily=daily)
    except (redis.RedisError, RuntimeError):
        pass


def snapshot(account_id: int, month: str | None = None) -> dict[str, int]:
    """All counters of a month: live from Redis, else from the mirror."""
    from billing.models import UsageMonth

    month = month or month_of()
    try:
        raw = hash_of(get_redis(), f"oo:{{a{account_id}}}:usage:{month}")
    except redis.RedisError:
        raw = {}
    if raw:
        return {name: int(raw.get(name.encode(), 0)) for name in FIELDS}
    row = UsageMonth.objects.filter(account_id=account_id, month=month).first()
    return {name: getattr(row, name) if row else 0 for name in FIELDS}


def daily(account_id: int, month: str | None = None) -> dict[str, list[int]]:
    """Per-day usage of both kinds for a month: {"make": [day 1, day 2, …], "ai": [...]}."""
    month = month or month_of()
    start, end = period_of(month)
    raw = day_fields(account_id, month)
    return {kind: [raw.get(f"{kind}:{day:02d}", 0) for day in range(1, (end - start).days + 1)] for kind in KINDS}


def day_fields(account_id: int, month: str) -> dict[str, int]:
    """Every per-day counter of a month (``make:07``, ``dup:07``, ``lease_acquired:07``…): live, else the mirror."""
    from billing.models import UsageMonth

    try:
        raw = {k.decode(): int(v) for k, v in hash_of(get_redis(), f"oo:{{a{account_id}}}:usage:{month}").items()}
    except redis.RedisError:
        raw = {}
    if not raw:
        row = UsageMonth.objects.filter(account_id=account_id, month=month).first()
        return dict(row.daily) if row else {}
    return {name: value for name, value in raw.items() if ":" in name}


def current(account_id: int, kind: str) -> int:
    return snapshot(account_id)[kind]


def mirror_all() -> int:
    """Beat: copy every live month hash into its UsageMonth row (written only when it changed). Returns the number of
    hashes mirrored. Its cost is one probe per live hash (an account's months that counted in the last KEEP_SECONDS)
    plus a SCAN of the Redis keyspace, never the UsageMonth history."""
    from billing.models import UsageMonth

    client = get_redis()
    written = 0
    for key in client.scan_iter(match="oo:{a*}:usage:*", count=500):
        tag, _, month = key.decode().rpartition(":usage:")
        account_id = int(tag.split("{a", 1)[1].rstrip("}"))
        raw = hash_of(client, key)
        values: dict[str, Any] = {name: max(0, int(raw.get(name.encode(), 0))) for name in FIELDS}
        values["daily"] = {k.decode(): int(v) for k, v in raw.items() if b":" in k}
        row = UsageMonth.objects.filter(account_id=account_id, month=month)
        with transaction.atomic():
            # Written only when it changed: a month with no new counts costs a probe of the unique index, no write.
            updated = row.exclude(**values).update(updated_at=timezone.now(), **values)
            if not updated and not row.exists():
                from billing.models import Account

                if Account.objects.filter(pk=account_id).exists():
                    UsageMonth.objects.get_or_create(account_id=account_id, month=month, defaults=values)
        written += 1
    return written
