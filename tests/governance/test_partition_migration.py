"""The upgrade that partitions the decision log (governance/0022) on a database in use, as an operator runs it:
`manage.py migrate` on a database at governance 0021 that holds decisions and a dedup decision naming its original,
while a writer inserts decisions without pause and a long reader holds the table when the swap first tries.
Afterwards every row is there under the same id, new ids continue the old sequence, the partitioned table has the
old indexes, checks and foreign keys by their names, the old rows are one partition (attached without a scan), the
days ahead exist, nothing of the conversion is left behind — and no insert of the writer failed. PostgreSQL only."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support.servers import ROOT

DATABASE_URL = os.environ.get("DATABASE_URL", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATABASE_URL.startswith(("postgres://", "postgresql://")), reason="PostgreSQL's partitions"),
]

ROWS = 20_000


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def database():
    base = urlsplit(DATABASE_URL).path.lstrip("/") or "onceonly"
    name = f"{base}_convert"
    admin = psycopg.connect(with_database(DATABASE_URL, "postgres"), autocommit=True, connect_timeout=5)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(DATABASE_URL, name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def manage(url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    env.update(
        DATABASE_URL=url, DEBUG="1", SECRET_KEY="convert-" + "x" * 40, DJANGO_SETTINGS_MODULE="onceonly_site.settings"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


INSERT = (
    "INSERT INTO governance_decision (account_id, agent_id, ts, tool, outcome, allowed, policy_reason, risk_level, "
    "spend_usd, args_hash, run_id, latency_ms, row_hash, dispatch_id) "
    "SELECT %s, %s, now() - make_interval(days => %s) + g * interval '1 ms', 't', 'allowed', true, 'within_budget', "
    "'low', 1, md5(g::text), '', 1, '', '' FROM generate_series(1, %s) AS g RETURNING id"
)


class Writer(threading.Thread):
    """Inserts one decision at a time until stopped; keeps the ids it got and any error."""

    def __init__(self, url: str, account: int, agent: int) -> None:
        super().__init__(daemon=True)
        self.url, self.account, self.agent = url, account, agent
        self.stopping = threading.Event()
        self.ids: list[int] = []
        self.errors: list[str] = []
        self.slowest = 0.0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    self.ids.append(conn.execute(INSERT, [self.account, self.agent, 0, 1]).fetchone()[0])
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)
                time.sleep(0.002)


def hold_the_table(url: str, seconds: float) -> None:
    with psycopg.connect(url) as conn:  # a transaction until the block ends
        conn.execute("SELECT count(*) FROM governance_decision")
        time.sleep(seconds)


SEED = """
from billing.models import Account
from governance.models import Agent
account = Account.objects.get(name="convert")
agent = Agent.objects.create(account=account, agent_id="convert-bot")
print(account.pk, agent.pk)
"""


def test_migrate_partitions_a_decision_log_in_use(database):
    manage(database, "migrate", "governance", "0021", "-v", "0")
    manage(database, "create_api_key", "--account", "convert", "--plan", "agency")
    account, agent = map(int, manage(database, "shell", "-c", SEED).splitlines()[-1].split())
    with psycopg.connect(database, autocommit=True) as conn:
        old = [row[0] for row in conn.execute(INSERT, [account, agent, 3, ROWS]).fetchall()]
        conn.execute("UPDATE governance_decision SET original_id = %s WHERE id = %s", [old[0], old[-1]])
        conn.execute("ANALYZE governance_decision")
    writer = Writer(database, account, agent)
    writer.start()
    # A long reader holds the table for the first seconds of the migration: the swap waits at most 1 s for its
    # lock each time (the writer queued behind it meanwhile), and tries again until it gets it.
    reader = threading.Thread(target=hold_the_table, args=(database, 4.0), daemon=True)
    reader.start()
    time.sleep(0.5)
    try:
        out = manage(database, "migrate", "-v", "1")
    finally:
        reader.join(timeout=30)
        time.sleep(0.5)
        writer.stopping.set()
        writer.join(timeout=30)
    assert "Applying governance.0022_partition_decisions... OK" in out
    assert writer.errors == [] and len(writer.ids) > 50, writer.errors[:3]
    assert writer.slowest < 5, writer.slowest  # queued behind the swap's attempts, each at most 1 s
    with psycopg.connect(database, autocommit=True) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'governance_decision'").fetchone()[0]
        assert kind == "p"
        ids = {row[0] for row in conn.execute("SELECT id FROM governance_decision")}
        assert set(old) | set(writer.ids) == ids  # every row, under its id
        assert (
            conn.execute("SELECT original_id FROM governance_decision WHERE id = %s", [old[-1]]).fetchone()[0] == old[0]
        )
        fresh = conn.execute(INSERT, [account, agent, 0, 1]).fetchone()[0]
        assert fresh > max(ids)  # the new table's ids continue the old sequence
        parts = dict(
            conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c "
                "ON c.oid = i.inhrelid WHERE i.inhparent = 'governance_decision'::regclass"
            ).fetchall()
        )
        assert parts["governance_decision_p_legacy"].startswith("FOR VALUES FROM (MINVALUE) TO (")
        assert parts["governance_decision_p_default"] == "DEFAULT"
        assert len(parts) == 2 + 7  # the legacy and default partitions, a week of days from the boundary
        assert conn.execute("SELECT count(*) FROM governance_decision_p_legacy").fetchone()[0] >= ROWS
        indexes = {
            row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'governance_decision'")
        }
        assert {
            "governance_decision_pkey",
            "governance_decision_agent_ts",
            "governance_decision_account_ts",
            "governance_decision_reason_ts",
        } <= indexes
        constraints = {
            row[0]
            for row in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'governance_decision'::regclass"
            )
        }
        assert "PRIMARY KEY (id, ts)" in constraints
        for target in ("billing_account(id)", "governance_agent(id)", "billing_apikey(id)"):
            assert any(c.startswith("FOREIGN KEY") and target in c for c in constraints), (target, constraints)
        # A partition's own indexes are those of the table (attached), none built twice.
        legacy = {
            row[0]
            for row in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'governance_decision_p_legacy'")
        }
        assert len(legacy) == len(indexes)
    with psycopg.connect(database, autocommit=True) as conn:
        assert (
            conn.execute(  # no check of the conversion left behind, and no foreign key to the decisions
                "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%%bound%%' OR (confrelid = "
                "'governance_decision'::regclass AND contype = 'f')"
            ).fetchone()[0]
            == 0
        )
    assert "No migrations to apply" in manage(database, "migrate", "-v", "1")
    manage(database, "makemigrations", "--check", "--dry-run")
