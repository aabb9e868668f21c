"""The decision table laid out as it is some weeks after its conversion (governance/partitions.py), inside a test's
transaction (PostgreSQL's DDL is transactional: rolled back with the test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import connection

from governance import partitions


def lay_out_days(back: int, ahead: int = partitions.DAYS_AHEAD) -> datetime:
    """A partition per day from ``back`` days before today to ``ahead`` days after it, the default partition, and
    no legacy partition (the test database's is dropped with what it holds). Returns today (UTC midnight)."""
    assert partitions.enabled()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        for part in partitions.partitions():
            if not part.default:
                cursor.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {part.name}")
                cursor.execute(f"DROP TABLE {part.name}")
        for n in range(-back, ahead + 1):
            partitions.create_day(cursor, today + timedelta(days=n))
    return today
