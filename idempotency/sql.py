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
_FRESH_VALUES = ", ".join("CAST(%s AS jsonb)" if name in ("result", "metadata") else "%s" for name in LEASE_FRESH)

# The acquisition of (account, key): the row is inserted (version 1), or taken over (version + 1) only from a state
# ``idempotency.services._acquirable`` allows — ON CONFLICT locks the row, so of any number of concurrent callers
# exactly one gets a row back. The same statement closes the previous holder's attempt, if still open, as expired
# and opens this one. One row back (the lease, in LEASE_FIELDS order) when this call acquired; none when the key is
# held or final. Parameters: account id, key, first_seen_at, then LEASE_FRESH's values in order (status, lease_id,
# ttl_seconds, acquired_at, expires_at, done_at, result, result_hash, error_code, error_hash, metadata as JSON text,
# updated_at), the statuses acquirable outright (failed, cancelled), in_progress, completed, the completion
# retention cutoff, then the attempt's outcomes: expired and in_progress.
LEASE_ACQUIRE_POSTGRESQL = f"""
WITH taken AS (
    INSERT INTO {_LEASE} ({", ".join(_lease_column(name) for name in _INSERTED)})
    VALUES (%s, %s, 1, %s, {_FRESH_VALUES})
    ON CONFLICT ({_L_ACCOUNT}, {_L_KEY}) DO UPDATE SET
        {_L_VERSION} = {_LEASE}.{_L_VERSION} + 1,
        {", ".join(f"{_lease_column(name)} = excluded.{_lease_column(name)}" for name in LEASE_FRESH)}
    WHERE {_LEASE}.{_L_STATUS} IN (%s, %s)
        OR ({_LEASE}.{_L_STATUS} = %s AND {_LEASE}.{_L_EXPIRES} <= excluded.{_L_ACQUIRED})
        OR ({_LEASE}.{_L_STATUS} = %s AND {_LEASE}.{_L_DONE} <= %s)
    RETURNING {_RETURNING}
), closed AS (
    UPDATE {_ATTEMPT} SET {_A_ENDED} = taken.{_L_ACQUIRED}, {_A_OUTCOME} = %s
    FROM taken WHERE {_ATTEMPT}.{_A_LEASE} = taken.{_L_ID} AND {_ATTEMPT}.{_A_ENDED} IS NULL
), opened AS (
    INSERT INTO {_ATTEMPT} ({_A_LEASE}, {_A_VERSION}, {_A_HOLDER}, {_A_ACQUIRED}, {_A_ENDED}, {_A_OUTCOME}, {_A_ERROR},
        {_A_NOTE})
    SELECT {_L_ID}, {_L_VERSION}, {_L_LEASE_ID}, {_L_ACQUIRED}, NULL, %s, '', '' FROM taken
)
SELECT {_RETURNING} FROM taken
"""  # noqa: S608 (names from _meta only)

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
