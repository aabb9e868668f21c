"""The decision log becomes a table partitioned by day on PostgreSQL (docs/operations.md §"Decision-log partitions"):
new decisions land in the partition of their day, whose indexes stay small and in memory whatever the history, and
old days can be dropped whole. SQLite keeps the plain table.

The conversion never holds a lock that grows with the table. Before the swap, with the table in use:

1. a unique index on ``(id, ts)`` (a partitioned table's primary key must contain its partition key) is built
   concurrently and made a constraint of the table;
2. a ``CHECK (ts < boundary)`` constraint (``boundary``: the start of the day after tomorrow, UTC; today's on a new
   install, whose table is empty) is added ``NOT VALID`` and validated (a scan that blocks no writer).

Then one short transaction (``lock_timeout`` 5 s: it gives up rather than queue writers behind a long reader; run
the migration again then): the table is renamed ``governance_decision_p_legacy``, its indexes and primary key are
renamed or dropped, a partitioned ``governance_decision`` with the same columns, checks, foreign keys and indexes is
created, and the old table is attached as its partition ``FROM (MINVALUE) TO (boundary)`` — no scan (the validated
check proves the bound), no index build (each index of the old table is attached to its counterpart). A default
partition catches any row no day partition takes, and the days from the boundary for a week are created; beat keeps
creating them ahead (governance.partitions).

Foreign keys *to* decisions (an approval's requesting and consuming decision, a dedup's original) are kept by the
application, not the database: PostgreSQL refers to a partitioned table only through a unique key with the
partition key in it.
"""

import time
from datetime import UTC, datetime, timedelta

import django.db.models.deletion
from django.db import OperationalError, migrations, models, transaction

TABLE = "governance_decision"
LEGACY = "governance_decision_p_legacy"
BOUND = f"{LEGACY}_bound"
DAYS_AHEAD = 7
LOCK_TIMEOUT = "1s"  # the swap's wait for running queries: below the API's deadlines (writers queue behind it)
ATTEMPTS = 30  # swaps tried, a little apart, before the migration gives up (and takes its check away again)


def _try(connection, statement: str, params=()) -> None:
    """``statement`` in a transaction of its own that waits at most LOCK_TIMEOUT for its lock, tried ATTEMPTS
    times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                cursor.execute(statement, params)
            return
        except OperationalError:
            if attempt == ATTEMPTS:
                raise
            time.sleep(min(2.0, 0.1 * attempt))


def _bound(cursor) -> datetime | None:
    """The bound of the check constraint of step 2 (None: there is none)."""
    cursor.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
        [TABLE, BOUND],
    )
    row = cursor.fetchone()
    if row is None:
        return None
    cursor.execute("SELECT (regexp_match(%s, '''([^'']+)'''))[1]::timestamptz", [row[0]])
    return cursor.fetchone()[0]


def partition(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relkind, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = %s::regclass",
            [TABLE],
        )
        kind, schema = cursor.fetchone()
        if kind == "p":
            return  # already partitioned
        # 1. The unique index (id, ts), concurrently. A build that was interrupted leaves an invalid index: rebuilt.
        cursor.execute(
            "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE i.relname = %s",
            [f"{LEGACY}_id_ts"],
        )
        found = cursor.fetchone()
        if found is not None and not found[0]:
            cursor.execute(f"DROP INDEX CONCURRENTLY {LEGACY}_id_ts")
        cursor.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {LEGACY}_id_ts ON {TABLE} (id, ts)")
        # 2. The check that proves the old rows' bound, from now on: the start of the day after tomorrow (a table in
        # use: a write between the check and the swap needs the room), today's on a new install (empty). A check
        # left by an earlier attempt is renewed when its bound is less than a day away.
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")  # noqa: S608  (the table's own name)
        boundary = today + timedelta(days=2 if cursor.fetchone()[0] else 0)
        existing = _bound(cursor)
    if existing is not None and existing < datetime.now(UTC) + timedelta(days=1):
        _try(connection, f"ALTER TABLE {TABLE} DROP CONSTRAINT {BOUND}")
        existing = None
    if existing is None:
        _try(connection, f"ALTER TABLE {TABLE} ADD CONSTRAINT {BOUND} CHECK (ts < %s) NOT VALID", [boundary])
    else:
        boundary = existing
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {BOUND}")  # a scan that blocks no writer
        # 3. The swap, in one short transaction, tried again while it cannot get its locks within LOCK_TIMEOUT.
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _swap(connection, schema, boundary)
                return
            except OperationalError:
                if attempt == ATTEMPTS:
                    raise
                time.sleep(min(2.0, 0.1 * attempt))
    except BaseException:
        # Never leave the check behind: once its bound passed, it would refuse every new decision.
        _try(connection, f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {BOUND}")
        raise


def _swap(connection, schema: str, boundary: datetime) -> None:
    qualified = f"{schema}.{TABLE}"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        # What the new table must have: the old table's indexes (but the primary key), checks and foreign keys.
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary AND i.relname <> %s",
            [TABLE, f"{LEGACY}_id_ts"],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
            "AND contype IN ('c', 'f') AND conname <> %s AND confrelid <> conrelid",
            [TABLE, BOUND],
        )
        constraints = cursor.fetchall()
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", [TABLE])
        primary = cursor.fetchone()[0]
        # Foreign keys *to* decisions (an approval's requesting and consuming decision, a dedup's original) go: the
        # application keeps them (PostgreSQL refers to a partitioned table only by its whole primary key).
        cursor.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE confrelid = %s::regclass "
            "AND contype = 'f'",
            [TABLE],
        )
        for table, name in cursor.fetchall():
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        cursor.execute(f"SELECT pg_get_serial_sequence('{TABLE}', 'id')")
        sequence = cursor.fetchone()[0]
        cursor.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608  (PostgreSQL's own name)
        last_value, is_called = cursor.fetchone()
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {LEGACY}")
        cursor.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {primary}")
        cursor.execute(f"ALTER TABLE {LEGACY} ADD CONSTRAINT {LEGACY}_pkey UNIQUE USING INDEX {LEGACY}_id_ts")
        cursor.execute(f"ALTER TABLE {LEGACY} ALTER COLUMN id DROP IDENTITY")
        for name, _ in indexes:
            cursor.execute(f"ALTER INDEX {name} RENAME TO {name[:50]}_legacy")
        cursor.execute(f"CREATE TABLE {TABLE} (LIKE {LEGACY} INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
        restart = last_value + 1 if is_called else last_value
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id RESTART WITH {restart}")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {primary} PRIMARY KEY (id, ts)")
        for name, kind, definition in constraints:
            if kind == "c":
                cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")
        for _name, definition in indexes:
            # pg_get_indexdef was read before the rename: "CREATE INDEX name ON schema.table USING …".
            on_parent = definition.replace(f" ON {qualified} ", f" ON ONLY {qualified} ", 1)
            if on_parent == definition:
                raise RuntimeError(f"an index definition this migration does not know: {definition}")
            cursor.execute(on_parent)
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {LEGACY} FOR VALUES FROM (MINVALUE) TO (%s)", [boundary])
        for name, _ in indexes:
            cursor.execute(f"ALTER INDEX {name} ATTACH PARTITION {name[:50]}_legacy")
        # Foreign keys after the attach: each one the old table has is taken over as the partition's, not checked
        # again.
        for name, kind, definition in constraints:
            if kind == "f":
                cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")
        cursor.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND}")
        cursor.execute(f"CREATE TABLE {TABLE}_p_default PARTITION OF {TABLE} DEFAULT")
        for n in range(DAYS_AHEAD):
            start = boundary + timedelta(days=n)
            cursor.execute(
                f"CREATE TABLE {TABLE}_p{start:%Y%m%d} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)",
                [start, start + timedelta(days=1)],
            )


def unpartition(apps, schema_editor) -> None:
    """Back to one plain table, by copying every row (for the tests that migrate back past this migration). Going
    back on a server is not supported: restore the backup taken before the upgrade,
    docs/operations.md §"Upgrading"."""
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    old = f"{TABLE}_partitioned"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [TABLE])
        if cursor.fetchone()[0] != "p":
            return
        cursor.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary",
            [TABLE],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f'",
            [TABLE],
        )
        foreign = cursor.fetchall()
        cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
        cursor.execute(f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {old}")  # noqa: S608  (the table's own names)
        cursor.execute(f"SELECT COALESCE(max(id), 0) + 1 FROM {TABLE}")  # noqa: S608
        (restart,) = cursor.fetchone()
        cursor.execute(f"DROP TABLE {old} CASCADE")
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id)")
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
        cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id RESTART WITH {restart}")
        for _name, definition in indexes:
            cursor.execute(definition.replace(f" ON ONLY public.{TABLE} ", f" ON public.{TABLE} ", 1))
        for name, definition in foreign:
            cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("governance", "0021_log_verification"),
    ]

    operations = [
        # The foreign keys to decisions become the application's: dropped on PostgreSQL in the swap's transaction
        # (with its lock timeout), kept by SQLite (one plain table there: no copy of it for this).
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="approval",
                    name="requested_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="governance.decision",
                    ),
                ),
                migrations.AlterField(
                    model_name="approval",
                    name="consumed_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="governance.decision",
                    ),
                ),
                migrations.AlterField(
                    model_name="decision",
                    name="original",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        help_text="For dedup: the decision whose result was replayed.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="governance.decision",
                    ),
                ),
            ],
        ),
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
