"""The hand-written SQL of the exactly-once core (the one statement the ORM cannot say): built once, at import,
with table and column names from the models' ``_meta``.

``UPSERT_LOCK`` and ``UPSERT_LOCK_POSTGRESQL`` are the conditional upsert of a check-lock's first-seen record
(``idempotency.services._record_first_seen``, docs/architecture.md §3.1, §3.4): parameters ``account_id, key,
first_seen_at, expires_at, ttl_seconds, metadata``; one row back when this call took the key, none when a live
lock holds it.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import Field

from idempotency.models import LockRecord

_quote = connection.ops.quote_name


def _column(name: str) -> str:
    field = LockRecord._meta.get_field(name)
    assert isinstance(field, Field) and field.column is not None, f"LockRecord.{name} is not a concrete field"
    return _quote(field.column)


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
