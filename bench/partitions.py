"""The `retention` scenario of `make bench`: dropping a day of the decision log (no stack; PostgreSQL only).

Day partitions are laid out for the days before today (the bench database is new: its legacy partition is empty and
goes first), ``DAYS`` of them filled with ``--growth`` rows each (1M by default: INSERT … SELECT generate_series,
about 10 s a million), then ``governance.partitions.drop_before`` drops them one day at a time — ``DETACH PARTITION``
(a moment's lock) and ``DROP TABLE``, what the retention run does — while a writer thread inserts decisions into
today's partition without pause. Reported: each day's drop time, and the writer's slowest insert during the drops
next to its median before them (a drop that blocked writers would show as a stall).
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

DAYS = 2
ACCOUNT = "retention"
AGENT = "retention-bench-agent"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


_COLUMNS = (
    "INSERT INTO governance_decision (account_id, agent_id, ts, tool, outcome, allowed, policy_reason, risk_level, "
    "spend_usd, args_hash, run_id, latency_ms, row_hash, dispatch_id) SELECT %s, %s, "
)
_VALUES = ", 'seed.tool', 'allowed', true, 'within_budget', 'low', 0.01, md5(g::text), '', 1, '', '' "
WRITE_ONE = _COLUMNS + "now()" + _VALUES + "FROM generate_series(1, 1) AS g"
SEED_DAY = _COLUMNS + "%s + (g * (86399.0 / %s)) * interval '1 second'" + _VALUES + "FROM generate_series(1, %s) AS g"


class Writer(threading.Thread):
    """Inserts one decision at a time into today's partition, timing each, until stopped."""

    def __init__(self, account_id: int, agent_pk: int) -> None:
        super().__init__(daemon=True)
        self.account_id, self.agent_pk = account_id, agent_pk
        self.stopping = threading.Event()
        self.timings: list[tuple[float, float]] = []  # (when, seconds)

    def run(self) -> None:
        from django.db import connection

        try:
            with connection.cursor() as cursor:
                while not self.stopping.is_set():
                    started = time.perf_counter()
                    cursor.execute(WRITE_ONE, [self.account_id, self.agent_pk])
                    self.timings.append((time.monotonic(), time.perf_counter() - started))
                    time.sleep(0.005)
        finally:
            connection.close()


def run(rows: int) -> dict[str, Any]:
    from django.db import connection

    from billing.services import account_get_or_create
    from governance import partitions
    from governance.models import Agent

    if not partitions.enabled():
        raise SystemExit("the retention scenario needs PostgreSQL (the decision table partitioned by day)")
    account, _ = account_get_or_create(name=ACCOUNT, plan_code="agency")
    agent = Agent.objects.create(account=account, agent_id=AGENT)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        for part in partitions.partitions():
            if part.start is None and not part.default:  # the new database's (empty) legacy partition
                cursor.execute(f"ALTER TABLE {partitions.TABLE} DETACH PARTITION {part.name}")
                cursor.execute(f"DROP TABLE {part.name}")
        days = [today - timedelta(days=n) for n in range(DAYS, 0, -1)]
        for day in days:
            partitions.create_day(cursor, day)
    partitions.ensure_ahead()
    seed_s = []
    for day in days:
        log(f"retention: seeding {rows:,} decisions on {day:%Y-%m-%d}")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(SEED_DAY, [account.pk, agent.pk, day, rows, rows])
            cursor.execute(f"VACUUM (ANALYZE) {partitions.TABLE}_p{day:%Y%m%d}")
        seed_s.append(time.perf_counter() - started)
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")

    writer = Writer(account.pk, agent.pk)
    writer.start()
    time.sleep(3)
    before = [seconds for _, seconds in writer.timings]
    drops = []
    dropping_from = time.monotonic()
    for day in days:
        dropped = partitions.drop_before(day + timedelta(days=1))
        drops += [{"partition": d.name, "rows": d.rows, "seconds": round(d.seconds, 3)} for d in dropped]
        log(f"  dropped {', '.join(f'{d.name} (~{d.rows:,} rows) in {d.seconds:.3f} s' for d in dropped)}")
    dropping_to = time.monotonic()
    time.sleep(1)
    writer.stopping.set()
    writer.join(timeout=10)
    during = [seconds for when, seconds in writer.timings if dropping_from <= when <= dropping_to + 0.5]
    return {
        "rows_per_day": rows,
        "days": DAYS,
        "seed_s": [round(s, 1) for s in seed_s],
        "drops": drops,
        "writer_median_ms_before": round(statistics.median(before) * 1000, 2),
        "writer_max_ms_during": round(max(during, default=0) * 1000, 2),
        "writer_inserts_during": len(during),
    }


def report(measured: dict[str, Any]) -> list[str]:
    drops = ", ".join(f"{d['seconds']:.3f} s" for d in measured["drops"])
    return [
        f"retention: {measured['days']} days of {measured['rows_per_day']:,} decisions each "
        f"(seeded in {', '.join(f'{s:.0f} s' for s in measured['seed_s'])})",
        f"  dropping each day (DETACH PARTITION + DROP TABLE): {drops}",
        f"  a writer inserting meanwhile: median {measured['writer_median_ms_before']} ms before, slowest "
        f"{measured['writer_max_ms_during']} ms during the drops ({measured['writer_inserts_during']} inserts)",
    ]
