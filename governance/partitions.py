"""The decision log's day partitions on PostgreSQL (docs/operations.md §"Decision-log partitions").

``governance_decision`` is partitioned by ``ts`` into one partition per UTC day (``governance_decision_pYYYYMMDD``),
the rows from before the conversion (``governance/0022``) in ``governance_decision_p_legacy``, and a default partition
for a row no day takes (a clock far off). Beat creates the days ahead (``ensure_ahead``, hourly); ``drop_before``
drops whole days — a detach (a moment's lock of the table) and a ``DROP TABLE``: what it costs does not depend on how
many rows the day had. SQLite keeps the plain table: everything here is a no-op there.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

logger = logging.getLogger(__name__)

TABLE = "governance_decision"
DAYS_AHEAD = 7  # days the partitions exist ahead of today, so a row always finds its day
LOCK_TIMEOUT = "5s"  # creating a partition locks the table briefly: give up (next hour) rather than queue writers
DETACH_LOCK_TIMEOUT = "200ms"  # the longest a detach makes the API's statements wait behind it
DETACH_ATTEMPTS = 20
_BOUND = re.compile(r"FOR VALUES FROM \((?:'([^']+)'|MINVALUE)\) TO \((?:'([^']+)'|MAXVALUE)\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None: from MINVALUE (the legacy partition); the default partition has neither bound
    end: datetime | None
    default: bool = False


def enabled() -> bool:
    """Whether the decision table is partitioned (PostgreSQL after governance/0022)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


def partitions() -> list[Partition]:
    """The decision table's partitions, in time order (the default partition last); [] when it has none."""
    if not enabled():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, default=True))
            continue
        match = _BOUND.search(bound)
        if match is None:
            raise ValueError(f"{name}: a partition bound this code does not know: {bound}")
        found.append(Partition(name, _when(match.group(1)), _when(match.group(2))))
    found.sort(key=lambda p: (p.default, p.start or datetime.min.replace(tzinfo=UTC)))
    return found


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def create_day(cursor: CursorWrapper, start: datetime) -> str:
    """The partition of the UTC day that starts at ``start``; returns its name."""
    name = f"{TABLE}_p{start:%Y%m%d}"
    cursor.execute(
        f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, start + timedelta(days=1)]
    )
    return name


def ensure_ahead(now: datetime | None = None, days: int = DAYS_AHEAD) -> list[str]:
    """Creates the day partitions from today to ``days`` ahead that do not exist yet; returns their names. A day
    some existing partition covers (the legacy one) is skipped; so is a day the default partition already holds rows
    of (PostgreSQL refuses it: the rows stay there, read as usual, and the day is logged)."""
    existing = partitions()
    if not existing:
        return []
    today = _day(now or timezone.now())
    created = []
    for n in range(days + 1):
        start = today + timedelta(days=n)
        end = start + timedelta(days=1)
        covered = any(
            not p.default and (p.start is None or p.start < end) and (p.end is None or p.end > start) for p in existing
        )
        if covered:
            continue
        name = f"{TABLE}_p{start:%Y%m%d}"
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                create_day(cursor, start)
        except DatabaseError as exc:
            logger.warning("decision partition %s not created: %s", name, exc)
            continue
        created.append(name)
    return created


@dataclass(frozen=True)
class Dropped:
    name: str
    rows: int  # estimated (pg_class.reltuples): counting would read the whole day
    seconds: float
    held: int = 0  # decisions of accounts and agents on legal hold, kept (attached again in the day's place)


def _held() -> tuple[list[int], list[tuple[int, int]]]:
    """The accounts on legal hold, and the agents on legal hold (account id, agent pk) of the other accounts."""
    from billing.models import Account
    from governance.models import Agent

    accounts = list(Account.objects.filter(legal_hold_since__isnull=False).values_list("pk", flat=True))
    agents = list(
        Agent.objects.filter(legal_hold_since__isnull=False)
        .exclude(account_id__in=accounts)
        .values_list("account_id", "pk")
    )
    return accounts, agents


def _stage_held(part: Partition, staged: str) -> int:
    """The day's decisions of accounts and agents on legal hold, copied into ``staged``, a table ready to be attached
    in the day's place: the table's primary key and indexes built, and a check of the day's bounds (the attach then
    neither scans nor builds). Read through the day's indexes (account, time; account, agent, time): its cost is
    the held rows', none without holds. Returns the rows copied."""
    accounts, agents = _held()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staged}")  # an earlier run that stopped here
        cursor.execute(f"CREATE TABLE {staged} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        copied = 0
        if accounts:
            cursor.execute(
                f"INSERT INTO {staged} SELECT * FROM {part.name} WHERE account_id = ANY(%s)",  # noqa: S608
                [accounts],
            )
            copied += cursor.rowcount
        for account_id, agent_pk in agents:
            cursor.execute(
                f"INSERT INTO {staged} SELECT * FROM {part.name} WHERE account_id = %s AND agent_id = %s",  # noqa: S608
                [account_id, agent_pk],
            )
            copied += cursor.rowcount
        if copied:
            cursor.execute(f"ALTER TABLE {staged} ADD PRIMARY KEY (id, ts)")
            cursor.execute(
                "SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x WHERE x.indrelid = %s::regclass "
                "AND NOT x.indisprimary",
                [TABLE],
            )
            for (definition,) in cursor.fetchall():
                on_staged = re.sub(r"INDEX (\S+) ON ONLY (\S+)", f"INDEX ON {staged}", definition, count=1)
                cursor.execute(on_staged)
            low = "ts >= %s AND " if part.start is not None else ""
            cursor.execute(
                f"ALTER TABLE {staged} ADD CONSTRAINT {staged}_bound CHECK ({low}ts < %s)",
                [part.start, part.end] if part.start is not None else [part.end],
            )
    return copied


def _swap_day(part: Partition, staged: str, held: int) -> None:
    """In one transaction (it waits at most DETACH_LOCK_TIMEOUT for running queries, and is tried again): the day
    detached and dropped, and its held decisions, if any, attached in its place under its name."""
    assert part.end is not None  # drop_before takes days with an end only (not the default partition)
    bounds = "FROM (%s) TO (%s)" if part.start is not None else "FROM (MINVALUE) TO (%s)"
    params = [part.start, part.end] if part.start is not None else [part.end]
    for attempt in range(1, DETACH_ATTEMPTS + 1):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
                cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {part.name}")
                cursor.execute(f"DROP TABLE {part.name}")
                if held:
                    cursor.execute(f"ALTER TABLE {staged} RENAME TO {part.name}")
                    cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {part.name} FOR VALUES {bounds}", params)
                else:
                    cursor.execute(f"DROP TABLE {staged}")
                _advance_horizon(part.end)
            return
        except OperationalError as exc:
            if attempt == DETACH_ATTEMPTS:
                raise
            logger.info("decision partition %s: the swap waited too long (%s), again", part.name, exc)
            time.sleep(0.2 * attempt)


def _advance_horizon(end: datetime) -> None:
    from governance.models import DecisionLogHorizon

    now = timezone.now()
    horizon, created = DecisionLogHorizon.objects.get_or_create(
        pk=1, defaults={"dropped_before": end, "updated_at": now}
    )
    if not created and horizon.dropped_before < end:
        horizon.dropped_before, horizon.updated_at = end, now
        horizon.save(update_fields=["dropped_before", "updated_at"])


def drop_before(cutoff: datetime) -> list[Dropped]:
    """Drops every partition whose days all end by ``cutoff`` (the legacy one too, once its bound is past); the
    default partition stays. The decisions of accounts and agents on legal hold are kept: copied aside first, then,
    in the transaction that detaches and drops the day, attached in its place (a day of held decisions only, which
    the next run looks at again: once its holds are released, it goes). That transaction needs the table to itself
    for a moment (a change of the catalog): it waits at most ``DETACH_LOCK_TIMEOUT`` for the queries running on the
    table (writers queue behind it no longer than that) and is tried again, up to ``DETACH_ATTEMPTS`` times."""
    done = []
    for part in partitions():
        if part.default or part.end is None or part.end > cutoff:
            continue
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE relname = %s", [part.name])
            rows = int(cursor.fetchone()[0])
        staged = f"{part.name[:50]}_held"
        held = _stage_held(part, staged)
        if held:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {part.name}")  # noqa: S608  (a day with held decisions)
                if cursor.fetchone()[0] == held:  # nothing but held decisions left of the day: as it is
                    cursor.execute(f"DROP TABLE {staged}")
                    continue
        _swap_day(part, staged, held)
        done.append(Dropped(part.name, rows, time.perf_counter() - started, held))
        logger.info("decision partition %s dropped (about %d rows, %d kept for legal holds)", part.name, rows, held)
    return done


def horizon() -> datetime | None:
    """Where retention has dropped the decision log up to: every day before it was dropped (legal holds excepted);
    None while nothing was dropped (and on SQLite)."""
    from governance.models import DecisionLogHorizon

    return DecisionLogHorizon.objects.filter(pk=1).values_list("dropped_before", flat=True).first()


def retention_cutoff(now: datetime | None = None) -> datetime | None:
    """The start of the first day retention keeps (``ONCEONLY_DECISION_RETENTION_DAYS`` days back from today, UTC);
    None when the setting is 0 (keep every decision)."""
    days = settings.ONCEONLY_DECISION_RETENTION_DAYS
    return _day(now or timezone.now()) - timedelta(days=days) if days else None


def maintain(now: datetime | None = None) -> tuple[list[str], list[Dropped]]:
    """Beat: the day partitions a week ahead, and the days past retention dropped."""
    created = ensure_ahead(now)
    cutoff = retention_cutoff(now)
    return created, (drop_before(cutoff) if cutoff is not None else [])
