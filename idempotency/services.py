"""Writes of the exactly-once core: check-lock and the lease state machine (docs/architecture.md §3, §7.4, §7.5)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import redis
import rfc8785
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, IntegerField, JSONField, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import usage
from billing.auth import PlanLimits
from billing.models import Account
from billing.notifications import notify
from billing.ratelimit import TAKE_TOKEN_LUA, RateLimited
from billing.services import audit_record
from idempotency import sql, waiting
from idempotency.choices import AttemptOutcome, LeaseStatus
from idempotency.models import Lease, LeaseAttempt, LockRecord, Run, RunEvent
from onceonly_site.redis_client import LuaScript, get_redis

if TYPE_CHECKING:
    from django.contrib.auth.models import User

CHECK_LOCK_LUA = Path(__file__).with_name("check_lock.lua")
logger = logging.getLogger(__name__)


class CheckLockKeys(NamedTuple):
    lock: str
    usage: str
    bucket: str


class CheckLockArgs(NamedTuple):
    ttl_ms: int
    value: str
    usage_keep_seconds: int
    make_limit: int
    rate: int
    burst: int
    day: str


CHECK_LOCK = LuaScript(CHECK_LOCK_LUA, CheckLockKeys, CheckLockArgs, preludes=(TAKE_TOKEN_LUA,))


def effective_ttl(requested: int | None, plan: PlanLimits) -> int:
    """The plan's default when none is asked for; never above the plan's maximum (clamped, not refused)."""
    return plan.default_ttl if requested is None else min(requested, plan.max_ttl)


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON: the input of result_hash (and of the governance args hash)."""
    return rfc8785.dumps(value)


def result_hash_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


# --- check-lock ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockOutcome:
    locked: bool
    key: str
    ttl: int
    first_seen_at: datetime | None = None  # of the first call, on a duplicate
    ttl_left: int | None = None
    metadata: dict[str, Any] | None = None  # of the first call, on a duplicate
    has_metadata: bool = False


def lock_redis_key(account_id: int, key: str) -> str:
    return f"oo:{{a{account_id}}}:lock:{key}"


def _encode_lock(first_seen_ms: int, ttl: int, metadata_json: str) -> str:
    return f"{first_seen_ms}|{ttl}|{metadata_json}"


def _decode_lock(key: str, raw: bytes, pttl: int) -> LockOutcome:
    first_ms, ttl, meta = raw.decode().split("|", 2)
    return LockOutcome(
        locked=False,
        key=key,
        ttl=int(ttl),
        first_seen_at=datetime.fromtimestamp(int(first_ms) / 1000, tz=UTC),
        ttl_left=max(0, (pttl + 999) // 1000),
        metadata=json.loads(meta) if meta else None,
        has_metadata=bool(meta),
    )


def _record_first_seen(account_id: int, key: str, now: datetime, ttl: int, metadata_json: str) -> bool:
    """Insert (or take over an expired) first-seen record. False when the database holds a live lock.

    One conditional upsert, atomic in PostgreSQL and SQLite. On PostgreSQL it commits asynchronously
    (``synchronous_commit = off``, docs/architecture.md §3.4): it survives any loss of Redis; only a PostgreSQL
    crash within about 0.6 s of the write can lose it. The setting rides in the statement itself
    (``set_config(…, true)`` is local to the statement's own transaction, and commit reads it), so the write is one
    round trip in autocommit instead of four (BEGIN, SET LOCAL, INSERT, COMMIT) — measured in docs/benchmarks.md.
    """
    ops = connection.ops
    statement = sql.UPSERT_LOCK_POSTGRESQL if connection.vendor == "postgresql" else sql.UPSERT_LOCK
    params: list[Any] = [
        account_id,
        key,
        ops.adapt_datetimefield_value(now),
        ops.adapt_datetimefield_value(now + timedelta(seconds=ttl)),
        ttl,
        metadata_json or None,
    ]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone() is not None


def lock_check(
    *,
    account_id: int,
    plan: PlanLimits,
    key: str,
    ttl: int | None,
    metadata: dict[str, Any] | None,
    rate: tuple[str, list[int]],
) -> LockOutcome:
    """Atomic set-if-absent of (account, key) for ``ttl`` seconds (docs/architecture.md §3.1, §3.4).

    Duplicate (the common retry): one Redis round trip, no database query. New lock: one Redis round trip and one
    database insert, answered only after the first-seen record is written. If Redis had lost a live lock
    (restart, flush), the insert finds the live record, the call answers ``duplicate`` and Redis is repaired.
    """
    ttl = effective_ttl(ttl, plan)
    now = timezone.now()
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Redis keeps milliseconds
    metadata_json = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False) if metadata is not None else ""
    redis_key = lock_redis_key(account_id, key)
    client = get_redis()
    bucket, (rate_per_second, burst) = rate
    keys = CheckLockKeys(lock=redis_key, usage=usage.usage_key(account_id, now), bucket=bucket)
    args = CheckLockArgs(
        ttl_ms=ttl * 1000,
        value=_encode_lock(int(now.timestamp() * 1000), ttl, metadata_json),
        usage_keep_seconds=usage.KEEP_SECONDS,
        make_limit=plan.make_limit,
        rate=rate_per_second,
        burst=burst,
        day=now.strftime("%d"),
    )
    try:
        reply = CHECK_LOCK(client, keys, args)
        if reply[0] == b"rebuild_usage":  # the month's usage hash was lost with Redis: rebuild it, decide again
            usage.rebuild(account_id, now)
            reply = CHECK_LOCK(client, keys, args)
    except (redis.ConnectionError, redis.TimeoutError):
        # Redis unreachable (or not answering): the database decides alone (slower, still one winner) rather than
        # a 5xx, which the SDK's fail-open would turn into "go ahead" for every caller
        # (docs/api.md §"POST /v1/check-lock").
        logger.warning("Redis unreachable: check-lock decided by the database alone")
        if _record_first_seen(account_id, key, now, ttl, metadata_json):
            return LockOutcome(locked=True, key=key, ttl=ttl)
        return _duplicate_from_record(LockRecord.objects.get(account_id=account_id, key=key), key, now)
    status = reply[0]
    if status == b"duplicate":
        return _decode_lock(key, reply[1], int(reply[2]))
    if status == b"rate_limited":
        raise RateLimited(int(reply[1]))
    if status == b"quota":
        # Over quota — unless Redis merely forgot a live lock: then this is a (free) duplicate.
        record = LockRecord.objects.filter(account_id=account_id, key=key, expires_at__gt=now).first()
        if record is not None:
            return _duplicate_from_record(record, key, now)
        raise usage.QuotaExceeded(kind=usage.MAKE, plan=plan.code, usage=int(reply[1]), limit=plan.make_limit)
    try:
        fresh = _record_first_seen(account_id, key, now, ttl, metadata_json)
    except Exception:
        # Without the durable record the lock must not stand: undo it, so a retry decides again.
        client.delete(redis_key)
        usage.release(account_id, usage.MAKE, now)
        raise
    if fresh:
        usage.counted(account_id, usage.MAKE, int(reply[1]), plan.make_limit)  # budget alerts (docs/governance.md)
        return LockOutcome(locked=True, key=key, ttl=ttl)
    # Redis had forgotten a live lock: the database decides, and Redis gets the original back.
    record = LockRecord.objects.get(account_id=account_id, key=key)
    stored_json = json.dumps(record.metadata, separators=(",", ":")) if record.metadata is not None else ""
    remaining_ms = max(1, int((record.expires_at - now).total_seconds() * 1000))
    first_ms = int(record.first_seen_at.timestamp() * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.set(redis_key, _encode_lock(first_ms, record.ttl_seconds, stored_json), px=remaining_ms)
    pipe.execute()
    usage.release(account_id, usage.MAKE, now)
    return _duplicate_from_record(record, key, now)


def _duplicate_from_record(record: LockRecord, key: str, now: datetime) -> LockOutcome:
    remaining_ms = max(1, int((record.expires_at - now).total_seconds() * 1000))
    return LockOutcome(
        locked=False,
        key=key,
        ttl=record.ttl_seconds,
        first_seen_at=record.first_seen_at,
        ttl_left=max(0, (remaining_ms + 999) // 1000),
        metadata=record.metadata,
        has_metadata=record.metadata is not None,
    )


def _forget_lock(redis_key: str) -> None:
    try:
        get_redis().delete(redis_key)
    except redis.RedisError:
        # The record already says released; a stale Redis copy is only a duplicate answer until its TTL ends.
        logger.error("could not delete a released lock from Redis", exc_info=True)


def lock_release(*, account: Account, key: str, reason: str, actor: User) -> bool:
    """Operator action: free a check-lock key now (Redis and the first-seen record). Audited."""
    now = timezone.now()
    with transaction.atomic():
        changed = LockRecord.objects.filter(account=account, key=key, expires_at__gt=now).update(expires_at=now)
        audit_record(
            account=account,
            actor=actor,
            action="idempotency.lock.released",
            object_type="lock",
            object_id=key,
            data={"reason": reason, "was_live": bool(changed)},
        )
        transaction.on_commit(lambda: _forget_lock(lock_redis_key(account.pk, key)))
    return bool(changed)


# --- leases ----------------------------------------------------------------------------------------------------


class LeaseMismatch(Exception):
    """The caller is not the current holder (stale or wrong lease_id): 409 lease_mismatch."""


class LeaseConflict(Exception):
    """The holder asks for a transition its lease's state does not allow (e.g. complete after fail)."""

    def __init__(self, lease: Lease, message: str) -> None:
        super().__init__(message)
        self.lease = lease


@dataclass
class LeaseOutcome:
    """A lease call's answer: the record, what this call did, and (on acquire) the usage it charged."""

    lease: Lease | None
    status: str
    key: str
    holder: bool = False  # the caller holds this lease: it may see lease_id
    charged: int = 0
    usage: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


LEASE_ACQUIRED, POLLING_AI, LEASE_COMPLETED = "lease_acquired", "polling_ai", "lease_completed"  # statistics


def retention() -> timedelta:
    return timedelta(days=settings.ONCEONLY_RETENTION_DAYS)


def _acquirable(now: datetime) -> Q:
    """States from which a new acquisition may start (docs/architecture.md §7.5)."""
    return (
        Q(status__in=[LeaseStatus.FAILED, LeaseStatus.CANCELLED])
        | Q(status=LeaseStatus.IN_PROGRESS, expires_at__lte=now)
        | Q(status=LeaseStatus.COMPLETED, done_at__lte=now - retention())
    )


def _new_lease_id() -> str:
    return "lease_" + secrets.token_urlsafe(18)


def lease_acquire(
    *,
    account_id: int,
    plan: PlanLimits,
    key: str,
    ttl: int | None,
    metadata: dict[str, Any] | None,
    on_acquired: Callable[[Lease], None] | None = None,
) -> LeaseOutcome:
    """Acquire the lease of (account, key), or report who has it (docs/architecture.md §3.1, §3.2, §3.3, §7.5).

    Each path is one conditional statement on the row, so at most one caller acquires under any concurrency:
    UPDATE of an acquirable row (version+1), or INSERT of a new row guarded by the unique constraint.
    ``on_acquired`` runs inside the acquiring transaction (keyed runs create their run row there).
    """
    ttl = effective_ttl(ttl, plan)
    # The quota unit is reserved before the acquisition (atomic check-and-increment) and given back if the call
    # does not acquire; a key that is held or completed is answered even when the quota is used up.
    # lease_acquired is counted with the unit, and taken back with it (the call did not acquire: polling_ai counted
    # instead), so the usual acquisition is one round trip to Redis.
    reserved, used = usage.reserve(account_id, usage.AI, plan.ai_limit, also="requests_ai", counted_too=LEASE_ACQUIRED)
    if not reserved:
        existing = Lease.objects.filter(account_id=account_id, key=key).first()
        if existing is None or _acquirable_now(existing):
            usage.count(account_id, "blocked_ai")
            raise usage.QuotaExceeded(kind=usage.AI, plan=plan.code, usage=used, limit=plan.ai_limit)
        outcome = _report(existing)
        if outcome.status == "polling":
            usage.count(account_id, POLLING_AI, daily=True)
    else:
        try:
            outcome = _lease_acquire(
                account_id=account_id, key=key, ttl=ttl, metadata=metadata, on_acquired=on_acquired
            )
        except Exception:
            usage.release(account_id, usage.AI, counted_too=LEASE_ACQUIRED)  # the database failed: not used
            raise
        if not outcome.charged:
            instead = POLLING_AI if outcome.status == "polling" else ""
            usage.release(account_id, usage.AI, counted_too=LEASE_ACQUIRED, instead=instead)
            used -= 1
    outcome.usage = used
    if outcome.charged:
        usage.counted(account_id, usage.AI, used, plan.ai_limit)  # budget alerts (docs/governance.md)
    return outcome


def _report(lease: Lease) -> LeaseOutcome:
    """What a caller that does not acquire learns: polling while held, else the final state."""
    held = lease.status == LeaseStatus.IN_PROGRESS and lease.expires_at > timezone.now()
    return LeaseOutcome(lease=lease, status="polling" if held else lease.status, key=lease.key)


def _lease_acquire(
    *, account_id: int, key: str, ttl: int, metadata: dict[str, Any] | None, on_acquired: Callable[[Lease], None] | None
) -> LeaseOutcome:
    one_statement = on_acquired is None and connection.vendor == "postgresql"
    for _ in range(3):  # the row may change state between our statements; re-decide a bounded number of times
        now = timezone.now()
        lease_id = _new_lease_id()
        fields = dict(
            status=LeaseStatus.IN_PROGRESS,
            lease_id=lease_id,
            ttl_seconds=ttl,
            acquired_at=now,
            expires_at=now + timedelta(seconds=ttl),
            done_at=None,
            result=None,
            result_hash="",
            error_code="",
            error_hash="",
            metadata=metadata,
            updated_at=now,
        )
        if one_statement:
            decided = _acquire_in_one_statement(account_id, key, now, fields)
            if decided is not None:
                return decided
            continue  # a concurrent call changed the row under the statement: decide again
        lease, acquired = _acquire_in_a_transaction(account_id, key, now, fields, on_acquired)
        if acquired:
            return LeaseOutcome(lease=lease, status="acquired", key=key, holder=True, charged=1)
        if lease is None:
            continue  # another caller inserted it first, or the sweeper removed it: re-decide
        if lease.status == LeaseStatus.IN_PROGRESS and lease.expires_at > timezone.now():
            return LeaseOutcome(lease=lease, status="polling", key=key)
        if lease.status in (LeaseStatus.COMPLETED, LeaseStatus.FAILED) and not _acquirable_now(lease):
            return LeaseOutcome(lease=lease, status=lease.status, key=key)
    # Still changing under us after three rounds: report it as held (the caller polls again).
    lease = Lease.objects.get(account_id=account_id, key=key)
    return LeaseOutcome(lease=lease, status="polling", key=key)


def _acquire_in_one_statement(account_id: int, key: str, now: datetime, fields: dict[str, Any]) -> LeaseOutcome | None:
    """PostgreSQL: the acquisition as one statement (sql.LEASE_ACQUIRE_POSTGRESQL) — insert or take over, close the
    previous attempt, open this one; or, when the key is held or final, the row that says so, written to nothing
    (its statement judged it at ``now``: no second read). None when a concurrent call changed the row under it."""
    values = [
        json.dumps(value) if name in ("result", "metadata") and value is not None else value
        for name, value in ((name, fields[name]) for name in sql.LEASE_FRESH)
    ]
    cutoff = now - retention()
    params = [account_id, key, now, cutoff, *values, cutoff, AttemptOutcome.EXPIRED, AttemptOutcome.IN_PROGRESS]
    with connection.cursor() as cursor:
        cursor.execute(sql.LEASE_ACQUIRE_POSTGRESQL, params)
        row = cursor.fetchone()
    if row is None:
        return None
    lease = _lease_of(row[1:])
    if row[0]:
        return LeaseOutcome(lease=lease, status="acquired", key=key, holder=True, charged=1)
    # Not acquirable at ``now``: held (in progress, not expired) or completed within the retention
    return LeaseOutcome(
        lease=lease, status="polling" if lease.status == LeaseStatus.IN_PROGRESS else lease.status, key=key
    )


def _acquire_in_a_transaction(
    account_id: int,
    key: str,
    now: datetime,
    fields: dict[str, Any],
    on_acquired: Callable[[Lease], None] | None,
) -> tuple[Lease | None, bool]:
    """The portable acquisition (and every one with ``on_acquired``): a conditional UPDATE of an acquirable row, else
    an INSERT guarded by the unique constraint, with the attempts, in one transaction. (lease, acquired?); the lease
    is None when another caller's insert won the race."""
    with transaction.atomic():
        taken = Lease.objects.filter(_acquirable(now), account_id=account_id, key=key).update(
            version=F("version") + 1, **fields
        )
        if taken:
            lease = Lease.objects.get(account_id=account_id, key=key)
            # The previous holder's attempt, still open, ended by expiry (failed/cancelled ones were closed).
            LeaseAttempt.objects.filter(lease=lease, ended_at__isnull=True).update(
                ended_at=now, outcome=AttemptOutcome.EXPIRED
            )
            LeaseAttempt.objects.create(lease=lease, version=lease.version, holder=fields["lease_id"], acquired_at=now)
            if on_acquired is not None:
                on_acquired(lease)
            return lease, True
        existing = Lease.objects.filter(account_id=account_id, key=key).first()
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                lease = Lease.objects.create(account_id=account_id, key=key, version=1, first_seen_at=now, **fields)
                LeaseAttempt.objects.create(lease=lease, version=1, holder=fields["lease_id"], acquired_at=now)
                if on_acquired is not None:
                    on_acquired(lease)
        except IntegrityError:
            return None, False
    return lease, True


_JSON_COLUMNS = [i for i, f in enumerate(Lease._meta.concrete_fields) if isinstance(f, JSONField)]  # result, metadata


def _lease_of(row: tuple[Any, ...]) -> Lease:
    """A Lease from a row in sql.LEASE_FIELDS order (the JSON columns arrive as text, as the ORM's would)."""
    values = list(row)
    for i in _JSON_COLUMNS:
        if isinstance(values[i], str):  # Django's PostgreSQL backend loads jsonb as text, for JSONField to decode
            values[i] = json.loads(values[i])
    return Lease.from_db(connection.alias, sql.LEASE_FIELDS, values)


def _acquirable_now(lease: Lease) -> bool:
    return Lease.objects.filter(_acquirable(timezone.now()), pk=lease.pk).exists()


def _holder_lease(account_id: int, key: str, lease_id: str) -> Lease:
    """The lease row if ``lease_id`` is its current (or last) holder, else LeaseMismatch."""
    lease = Lease.objects.filter(account_id=account_id, key=key).first()
    if lease is None or not secrets.compare_digest(lease.lease_id.encode(), lease_id.encode()):
        raise LeaseMismatch()
    return lease


def lease_extend(*, account_id: int, plan: PlanLimits, key: str, lease_id: str, ttl: int | None) -> LeaseOutcome:
    """Reset the holder's expiry to now + ttl (default: the lease's ttl; capped at the plan max).

    After completion/failure/cancel the holder's late heartbeat gets 200 with the terminal status (harmless).
    """
    lease = _holder_lease(account_id, key, lease_id)
    ttl = min(ttl if ttl is not None else lease.ttl_seconds, plan.max_ttl)
    now = timezone.now()
    if lease.status != LeaseStatus.IN_PROGRESS:
        return LeaseOutcome(lease=lease, status=lease.status, key=key, holder=True)
    extended = Lease.objects.filter(pk=lease.pk, lease_id=lease_id, status=LeaseStatus.IN_PROGRESS).update(
        expires_at=now + timedelta(seconds=ttl), ttl_seconds=ttl, updated_at=now
    )
    if not extended:  # completed or taken over between our read and our write: re-read and answer that
        return lease_extend(account_id=account_id, plan=plan, key=key, lease_id=lease_id, ttl=ttl)
    lease.refresh_from_db()
    return LeaseOutcome(lease=lease, status="extended", key=key, holder=True)


def _finish(
    *,
    account_id: int,
    key: str,
    lease_id: str,
    status: str,
    outcome: str,
    changes: dict[str, Any],
    note: str = "",
    on_done: Callable[[], None] | None = None,
) -> Lease:
    """The holder moves its lease from in_progress to a final state (one conditional UPDATE). ``on_done`` runs in
    the same transaction, only for the call that made the transition (not for idempotent repeats)."""
    lease = _holder_lease(account_id, key, lease_id)
    now = timezone.now()
    with transaction.atomic():
        done = Lease.objects.filter(pk=lease.pk, lease_id=lease_id, status=LeaseStatus.IN_PROGRESS).update(
            status=status, done_at=now, updated_at=now, **changes
        )
        if done:
            LeaseAttempt.objects.filter(lease=lease, version=lease.version).update(
                ended_at=now, outcome=outcome, error_code=changes.get("error_code", ""), note=note[:500]
            )
            waiting.wake(account_id, key)  # requests waiting for the key's keyed run (after the commit)
            if on_done is not None:
                on_done()
    lease.refresh_from_db()
    if not done and lease.lease_id != lease_id:
        raise LeaseMismatch()  # taken over between our read and our write
    if done and status in (LeaseStatus.COMPLETED, LeaseStatus.FAILED):
        usage.count(account_id, f"lease_{status}", daily=True)  # /v1/metrics
    return lease


def _complete_in_one_statement(
    account_id: int, key: str, lease_id: str, result: dict[str, Any] | None, result_hash: str
) -> tuple[Lease | None, int | None]:
    """PostgreSQL: the holder's completion and its attempt's end as one statement (sql.LEASE_COMPLETE_POSTGRESQL),
    committed on its own outside a transaction, then what _finish does after a transition. (lease, the month's ai
    usage if read): the lease is None when it made no transition."""
    now = timezone.now()
    params: list[Any] = [LeaseStatus.COMPLETED, now, now, None if result is None else json.dumps(result), result_hash]
    params += [account_id, key, lease_id, LeaseStatus.IN_PROGRESS, AttemptOutcome.COMPLETED]
    with connection.cursor() as cursor:
        cursor.execute(sql.LEASE_COMPLETE_POSTGRESQL, params)
        row = cursor.fetchone()
    if row is None:
        return None, None
    if connection.in_atomic_block or not connection.get_autocommit():  # the wake-up waits for the caller's commit
        waiting.wake(account_id, key)
        usage.count(account_id, LEASE_COMPLETED, daily=True)
        return _lease_of(row), None
    # Committed: the statistics, the wake-up and the answer's usage in one round trip
    used = usage.count_reading(account_id, LEASE_COMPLETED, usage.AI, publish=waiting.lease_channel(account_id, key))
    if used is None:  # that round trip failed: the wake-up alone (a PUBLISH passes where a script may not, e.g. OOM)
        waiting.wake(account_id, key)
    return _lease_of(row), used


def lease_complete(
    *, account_id: int, key: str, lease_id: str, result: dict[str, Any] | None, result_hash: str | None
) -> LeaseOutcome:
    """Store the result and make the key final for the retention period. A repeat with the same result by the
    same holder is answered idempotently; a different result, or completing a failed/cancelled lease, is 409."""
    computed = result_hash or (result_hash_of(result) if result is not None else "")
    if connection.vendor == "postgresql":
        done, used = _complete_in_one_statement(account_id, key, lease_id, result, computed)
        if done is not None:
            return LeaseOutcome(lease=done, status=done.status, key=key, holder=True, usage=used)
    # The portable path, and on PostgreSQL every call that made no transition (a repeat, a stale holder, a lease
    # that is no longer in progress): _finish answers it.
    lease = _finish(
        account_id=account_id,
        key=key,
        lease_id=lease_id,
        status=LeaseStatus.COMPLETED,
        outcome=AttemptOutcome.COMPLETED,
        changes={"result": result, "result_hash": computed},
    )
    if lease.status != LeaseStatus.COMPLETED:
        raise LeaseConflict(lease, f"the lease is {lease.status}; it cannot be completed")
    if lease.result_hash != computed:
        raise LeaseConflict(lease, "the lease was already completed with a different result")
    return LeaseOutcome(lease=lease, status=lease.status, key=key, holder=True)


def lease_fail(*, account_id: int, key: str, lease_id: str, error_code: str, error_hash: str | None) -> LeaseOutcome:
    """Record a failed attempt; the next lease on the key acquires again (version+1)."""
    error_code = str(error_code)  # a RunError member reads as its value in the notice, never as RunError.X
    lease = _finish(
        account_id=account_id,
        key=key,
        lease_id=lease_id,
        status=LeaseStatus.FAILED,
        outcome=AttemptOutcome.FAILED,
        changes={"error_code": error_code, "error_hash": error_hash or ""},
        on_done=lambda: notify(
            account_id=account_id,
            kind="run_failure",
            subject=f"Run {key!r} failed: {error_code}",
            body=f"Key {key!r} failed with error_code {error_code!r}; the next lease on it acquires again.",
        ),
    )
    if lease.status != LeaseStatus.FAILED:
        raise LeaseConflict(lease, f"the lease is {lease.status}; it cannot be failed")
    return LeaseOutcome(lease=lease, status=lease.status, key=key, holder=True)


def lease_cancel(*, account_id: int, key: str, lease_id: str, reason: str) -> LeaseOutcome:
    """The holder gives the key back without a result: status cancelled, the next lease acquires."""
    lease = _finish(
        account_id=account_id,
        key=key,
        lease_id=lease_id,
        status=LeaseStatus.CANCELLED,
        outcome=AttemptOutcome.CANCELLED,
        changes={},
        note=reason,
    )
    if lease.status != LeaseStatus.CANCELLED:
        raise LeaseConflict(lease, f"the lease is {lease.status}; it cannot be cancelled")
    return LeaseOutcome(lease=lease, status=lease.status, key=key, holder=True)


def lease_reset(*, account: Account, key: str, reason: str, actor: User) -> bool:
    """Operator action: release a held lease or forget a completed/failed key, so the next lease acquires.

    The current holder's calls then get 409 lease_mismatch (its lease_id is replaced). Audited with the reason.
    """
    now = timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().filter(account=account, key=key).first()
        if lease is None:
            return False
        previous = {"status": lease.status, "version": lease.version}
        Lease.objects.filter(pk=lease.pk).update(
            status=LeaseStatus.CANCELLED,
            lease_id=_new_lease_id(),
            done_at=now,
            updated_at=now,
            expires_at=min(lease.expires_at, now),
        )
        LeaseAttempt.objects.filter(lease=lease, ended_at__isnull=True).update(
            ended_at=now, outcome=AttemptOutcome.RESET, note=reason[:500]
        )
        waiting.wake(account.pk, key)
        audit_record(
            account=account,
            actor=actor,
            action="idempotency.lease.reset",
            object_type="lease",
            object_id=key,
            data={"reason": reason, **previous},
        )
    return True


# --- retention -------------------------------------------------------------------------------------------------


# The legal holds on agents, {account id: agent ids}: governance's (governance/holds.py), registered at start-up by
# governance/apps.py — this app does not import governance. None registered: no agent is held.
HeldAgents = Callable[[], dict[int, list[str]]]
_held_agents: list[HeldAgents] = []


def set_held_agents_reader(reader: HeldAgents) -> None:
    _held_agents[:] = [reader]


def accounts_by_retention() -> QuerySet[Any]:  # Account rows, annotated (django-stubs types them as Any)
    """Accounts annotated with ``retention``: the days their history is kept — the account's override, else its
    plan's, else ONCEONLY_RETENTION_DAYS (docs/operations.md §"Retention"), computed in the database."""
    return Account.objects.annotate(
        retention=Coalesce(
            F("retention_days"),
            F("plan__retention_days"),
            Value(settings.ONCEONLY_RETENTION_DAYS),
            output_field=IntegerField(),
        )
    )


def retention_sweep(*, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Delete, per account and its retention (accounts_by_retention), lease records final for longer than it (with
    their keyed runs), lock records expired as long, and run events older than it. Accounts on legal hold are
    skipped; so are the runs (with their leases) and run events of agents on legal hold.

    A lease record is kept at least ONCEONLY_RETENTION_DAYS whatever the account's retention: a completed lease is
    final that long (its result is replayed), everywhere the same. Accounts are taken in groups of one retention
    (the distinct values of their overrides and plans: a handful), each a subquery, never a list of ids.

    In batches of primary keys; each delete re-checks the condition, so a row that changed state since it was
    selected (a key re-acquired meanwhile) is left alone. Returns the number of rows deleted.
    """
    now = timezone.now()
    unheld = accounts_by_retention().filter(legal_hold_since__isnull=True)
    held = _held_agents[0]() if _held_agents else {}
    kept = Q()  # no exception: everything of the group's accounts past its retention
    kept_leases = Q()
    if held:
        held_q = Q()
        for account_id, agent_ids in held.items():
            held_q |= Q(account_id=account_id, agent_id__in=agent_ids)
        kept, kept_leases = ~held_q, ~Q(pk__in=Run.objects.filter(held_q).values("lease_id"))
    deleted = 0
    for days in sorted(unheld.order_by().values_list("retention", flat=True).distinct()):
        accounts = Q(account_id__in=unheld.filter(retention=days).values("pk"))
        cutoff = now - timedelta(days=days)
        final_until = now - max(timedelta(days=days), retention())
        # updated_at bounds both branches (every write of a held lease sets expires_at ≥ updated_at): the statement is
        # a range of the updated_at index, the rows past retention, never a walk over the leases by status.
        stale_leases = Q(updated_at__lt=final_until) & (
            Q(status__in=[LeaseStatus.COMPLETED, LeaseStatus.FAILED, LeaseStatus.CANCELLED])
            | Q(status=LeaseStatus.IN_PROGRESS, expires_at__lt=final_until)
        )
        # A lease takes its keyed runs with it (cascade); timelines are kept as long as the records they describe.
        for model, condition in (
            (Lease, accounts & stale_leases & kept_leases),
            (LockRecord, accounts & Q(expires_at__lt=cutoff)),
            (RunEvent, accounts & Q(ts__lt=cutoff) & kept),
        ):
            for _ in range(max_batches):
                ids = list(model.objects.filter(condition).values_list("pk", flat=True)[:batch_size])
                if not ids:
                    break
                count, _ = model.objects.filter(condition, pk__in=ids).delete()
                deleted += count
    return deleted
