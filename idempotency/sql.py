"""The hand-written SQL of the exactly-once core (the statements the ORM cannot say, or says too slowly on the hot
path): built once, at import, with table and column names from the models' ``_meta``.

``UPSERT_LOCK`` and ``UPSERT_LOCK_POSTGRESQL`` are the conditional upsert of a check-lock's first-seen record
(``idempotency.services._record_first_seen``, docs/architecture.md §3.1, §3.4): parameters ``account_id, key,
first_seen_at, expires_at, ttl_seconds, metadata``; one row back when this call took the key, none when a live
lock holds it.

``LEASE_ACQUIRE_POSTGRESQL`` and ``LEASE_COMPLETE_POSTGRESQL`` are a lease's acquisition and its holder's completion,
each one statement with its attempt row (``idempotency.services``; the portable path is the ORM's, in a transaction).
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connection
from django.db.models import Field, Model

from idempotency.choices import LeaseStatus
from idempotency.models import Lease, LeaseAttempt, LockRecord

_quote = connection.ops.quote_name


def _column_of(model: type[Model]) -> Callable[[str], str]:
    """The quoted column of ``model``'s field by name (or attname)."""

    def column(name: str) -> str:
        field = model._meta.get_field(name)
        assert isinstance(field, Field) and field.column is not None, f"{model.__name__}.{name} is not concrete"
        return _quote(field.column)

    return column


_column = _column_of(LockRecord)


_LOCK, _ID = _quote(LockRecord._meta.db_table), _column("id")
_ACCOUNT, _KEY, _FIRST_SEEN, _EXPIRES, _TTL, _METADATA = map(
    _column, ("account", "key", "first_seen_at", "expires_at", "ttl_seconds", "metadata")
)


def _upsert_lock(values: str) -> str:
    """The upsert with ``values`` as its row source; ON CONFLICT targets idempotency_lock_unique_account_key, and
    only a record that has expired is taken over."""
    return f"""
INSERT INTO {_LOCK} ({_ACCOUNT}, {_KEY}, {_FIRST_SEEN}, {_EXPIRES}, {_TTL}, {_METADATA})
{values}
ON CONFLICT ({_ACCOUNT}, {_KEY}) DO UPDATE SET
    {_FIRST_SEEN} = excluded.{_FIRST_SEEN}, {_EXPIRES} = excluded.{_EXPIRES},
    {_TTL} = excluded.{_TTL}, {_METADATA} = excluded.{_METADATA}
WHERE {_LOCK}.{_EXPIRES} <= excluded.{_FIRST_SEEN}
RETURNING {_ID}
"""


# Portable (SQLite).
UPSERT_LOCK = _upsert_lock("VALUES (%s, %s, %s, %s, %s, %s)")
# PostgreSQL: committed asynchronously, the setting riding in the statement itself (set_config(…, true) is local to
# the statement's own transaction, and commit reads it): one round trip in autocommit instead of four.
UPSERT_LOCK_POSTGRESQL = _upsert_lock(
    "SELECT %s, %s, %s, %s, %s, CAST(%s AS jsonb) FROM (SELECT set_config('synchronous_commit', 'off', true)) "
    "AS async_commit"
)


# --- leases (docs/architecture.md §7.5): one statement per acquisition and per completion on PostgreSQL ------------

_lease_column = _column_of(Lease)
_attempt_column = _column_of(LeaseAttempt)
_LEASE, _ATTEMPT = _quote(Lease._meta.db_table), _quote(LeaseAttempt._meta.db_table)
LEASE_FIELDS = tuple(f.attname for f in Lease._meta.concrete_fields)  # the RETURNING order: Lease.from_db's
_RETURNING = ", ".join(_lease_column(name) for name in LEASE_FIELDS)
_L_ID, _L_ACCOUNT, _L_KEY, _L_STATUS, _L_LEASE_ID, _L_VERSION = map(
    _lease_column, ("id", "account_id", "key", "status", "lease_id", "version")
)
_L_ACQUIRED, _L_EXPIRES, _L_DONE = map(_lease_column, ("acquired_at", "expires_at", "done_at"))
_L_RESULT, _L_RESULT_HASH = map(_lease_column, ("result", "result_hash"))
_A_LEASE, _A_VERSION, _A_HOLDER, _A_ACQUIRED, _A_ENDED, _A_OUTCOME, _A_ERROR, _A_NOTE = map(
    _attempt_column, ("lease_id", "version", "holder", "acquired_at", "ended_at", "outcome", "error_code", "note")
)
LEASE_FRESH = (  # what an acquisition writes, besides the key, the version and first_seen_at
    "status",
    "lease_id",
    "ttl_seconds",
    "acquired_at",
    "expires_at",
    "done_at",
    "result",
    "result_hash",
    "error_code",
    "error_hash",
    "metadata",
    "updated_at",
)
_INSERTED = ("account_id", "key", "version", "first_seen_at", *LEASE_FRESH)
_FAILED, _CANCELLED, _IN_PROGRESS, _COMPLETED = (  # the code's own constants, never a caller's value
    f"'{status.value}'"
    for status in (LeaseStatus.FAILED, LeaseStatus.CANCELLED, LeaseStatus.IN_PROGRESS, LeaseStatus.COMPLETED)
)


def _lease_cast(name: str) -> str:
    """A placeholder cast to the column's type without length (the INSERT's own checks still apply)."""
    field = Lease._meta.get_field(name)
    assert isinstance(field, Field)
    db_type = field.cast_db_type(connection)
    assert db_type is not None, f"Lease.{name} has no database type"
    return f"CAST(%s AS {db_type.split('(')[0]})"


def _acquirable(row: str, now: str, cutoff: str) -> str:
    """``idempotency.services._acquirable`` in SQL, of the lease row ``row`` at ``now``: failed, cancelled, expired,
    or completed at or before the retention ``cutoff``."""
    status, expires, done = (f"{row}.{column}" for column in (_L_STATUS, _L_EXPIRES, _L_DONE))
    return (
        f"({status} IN ({_FAILED}, {_CANCELLED}) OR ({status} = {_IN_PROGRESS} AND {expires} <= {now})"
        f" OR ({status} = {_COMPLETED} AND {done} <= {cutoff}))"
    )


# The acquisition of (account, key), one statement. ``cur`` reads the row as the statement's snapshot sees it: when
# it is held or final, nothing is written (no row lock, no commit to flush) and it is the answer. Otherwise the row
# is inserted (version 1), or taken over (version + 1) only if the latest version is still acquirable — ON CONFLICT
# locks the row and re-evaluates its WHERE on that version, so of any number of concurrent callers exactly one gets
# it — and the same statement closes the previous holder's attempt, if still open, as expired and opens this one.
# Rows back: (true, the lease in LEASE_FIELDS order) when this call acquired; (false, the lease) when the key is held
# or final; none when a concurrent call changed the row under us (the caller reads it again).
# Parameters: account id, key, now, the completion retention cutoff, then LEASE_FRESH's values in order (status,
# lease_id, ttl_seconds, acquired_at, expires_at, done_at, result, result_hash, error_code, error_hash, metadata as
# JSON text, updated_at), the cutoff again, then the attempt's outcomes: expired and in_progress.
LEASE_ACQUIRE_POSTGRESQL = f"""
WITH given AS (
    SELECT {_lease_cast("account_id")} AS account_ref, {_lease_cast("key")} AS key_ref,
        {_lease_cast("acquired_at")} AS now_at, {_lease_cast("done_at")} AS cutoff_at
), cur AS (
    SELECT {", ".join(f"l.{_lease_column(name)}" for name in LEASE_FIELDS)},
        {_acquirable("l", "given.now_at", "given.cutoff_at")} AS acquirable
    FROM {_LEASE} AS l, given WHERE l.{_L_ACCOUNT} = given.account_ref AND l.{_L_KEY} = given.key_ref
), taken AS (
    INSERT INTO {_LEASE} ({", ".join(_lease_column(name) for name in _INSERTED)})
    SELECT given.account_ref, given.key_ref, 1, given.now_at, {", ".join(_lease_cast(name) for name in LEASE_FRESH)}
    FROM given WHERE NOT EXISTS (SELECT 1 FROM cur WHERE NOT cur.acquirable)
    ON CONFLICT ({_L_ACCOUNT}, {_L_KEY}) DO UPDATE SET
        {_L_VERSION} = {_LEASE}.{_L_VERSION} + 1,
        {", ".join(f"{_lease_column(name)} = excluded.{_lease_column(name)}" for name in LEASE_FRESH)}
    WHERE {_acquirable(_LEASE, f"excluded.{_L_ACQUIRED}", _lease_cast("done_at"))}
    RETURNING {_RETURNING}
), closed AS (
    UPDATE {_ATTEMPT} SET {_A_ENDED} = taken.{_L_ACQUIRED}, {_A_OUTCOME} = %s
    FROM taken WHERE {_ATTEMPT}.{_A_LEASE} = taken.{_L_ID} AND {_ATTEMPT}.{_A_ENDED} IS NULL
), opened AS (
    INSERT INTO {_ATTEMPT} ({_A_LEASE}, {_A_VERSION}, {_A_HOLDER}, {_A_ACQUIRED}, {_A_ENDED}, {_A_OUTCOME}, {_A_ERROR},
        {_A_NOTE})
    SELECT {_L_ID}, {_L_VERSION}, {_L_LEASE_ID}, {_L_ACQUIRED}, NULL, %s, '', '' FROM taken
)
SELECT true, {_RETURNING} FROM taken
UNION ALL
SELECT false, {_RETURNING} FROM cur WHERE NOT cur.acquirable
"""  # noqa: S608 (names from _meta and the code's status constants only)

# The holder's completion: the lease moves from in_progress to completed with its result only if ``lease_id`` still
# holds it, and its attempt is closed in the same statement. One row back (LEASE_FIELDS order) when this call made
# the transition; none otherwise (a repeat, another holder, a final state: the caller decides by re-reading).
# Parameters: completed, done_at, updated_at (the same time), the result as JSON text, result_hash, account id, key,
# lease_id, in_progress, then the attempt's outcome (completed).
LEASE_COMPLETE_POSTGRESQL = f"""
WITH done AS (
    UPDATE {_LEASE} SET {_L_STATUS} = %s, {_L_DONE} = %s, {_lease_column("updated_at")} = %s,
        {_L_RESULT} = CAST(%s AS jsonb), {_L_RESULT_HASH} = %s
    WHERE {_L_ACCOUNT} = %s AND {_L_KEY} = %s AND {_L_LEASE_ID} = %s AND {_L_STATUS} = %s
    RETURNING {_RETURNING}
), ended AS (
    UPDATE {_ATTEMPT} SET {_A_ENDED} = done.{_L_DONE}, {_A_OUTCOME} = %s, {_A_ERROR} = '', {_A_NOTE} = ''
    FROM done WHERE {_ATTEMPT}.{_A_LEASE} = done.{_L_ID} AND {_ATTEMPT}.{_A_VERSION} = done.{_L_VERSION}
)
SELECT {_RETURNING} FROM done
"""  # noqa: S608 (names from _meta only)
