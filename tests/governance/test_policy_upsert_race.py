"""Two concurrent policy upserts that change different fields both take effect: the merge happens under the agent
row's lock, on the policy current at that moment, not on a copy read before the lock.

When ``policy_upsert`` merged into the policy it had read before ``policy_publish`` took the row lock, the later of
two concurrent upserts wrote back the earlier one's field as it was. The race is forced, not hoped for: a third
transaction holds the lock until both upserts are observed waiting for it, so both have read the agent by then.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from governance.models import Agent, PolicyVersion
from tests.support.governance import JSON

AGENT = "billing-agent"
WAIT_SECONDS = 20


def upsert(client, **fields):
    return client.post(f"/v1/policies/{AGENT}", fields, content_type=JSON)


# Sessions blocked by this one, or by one that is (the second upsert queues behind the first for the row).
WAITING_FOR_US = """
WITH RECURSIVE waiting (pid) AS (
    SELECT pg_backend_pid()
    UNION
    SELECT l.pid FROM pg_locks l JOIN waiting w ON w.pid = ANY (pg_blocking_pids(l.pid)) WHERE NOT l.granted
)
SELECT count(*) - 1 FROM waiting
"""


class LockWaits:
    """Which of the upserts' threads wait for the lock this test's transaction holds.

    PostgreSQL: a session is waiting when the lock manager says this session blocks it (``pg_blocking_pids``), directly
    or through another waiter.
    SQLite: the lock is the database's write lock, which ``BEGIN IMMEDIATE`` (the transaction mode of
    onceonly_site/env.py) takes first thing; a thread that has issued it while this test holds the lock waits for the
    test's commit. Each thread reports that statement through an execute wrapper (``note``)."""

    def __init__(self) -> None:
        self.begun = threading.Semaphore(0)

    def note(self, execute, sql, params, many, context):
        if sql.startswith("BEGIN"):
            self.begun.release()
        return execute(sql, params, many, context)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        if connection.vendor == "sqlite":
            assert connection.settings_dict["OPTIONS"].get("transaction_mode") == "IMMEDIATE"
            for _ in range(count):
                assert self.begun.acquire(timeout=max(0, deadline - time.monotonic())), "an upsert never began"
            return
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(WAITING_FOR_US)
                if cursor.fetchone()[0] >= count:
                    return
                time.sleep(0.01)
        raise AssertionError(f"{count} upserts never waited for the agent's row lock")


@pytest.mark.django_db(transaction=True)
def test_concurrent_upserts_of_different_fields_keep_both(key_a, settings):
    # The two upserts stand for two web processes: in one process the second would wait for the first's turn to
    # run (onceonly_site/runner.py) before it reads anything, and the race could not be forced.
    settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS = 0
    assert upsert(key_a.client(), max_actions_per_hour=10).status_code == 200  # version 1
    agent = Agent.objects.get(agent_id=AGENT)
    answers = []
    waits = LockWaits()

    def change(**fields) -> None:
        try:
            with connection.execute_wrapper(waits.note):
                answers.append(upsert(key_a.client(), **fields).status_code)
        finally:
            connection.close()  # this thread's own connection

    threads = [
        threading.Thread(target=change, kwargs={"max_spend_usd_per_day": 5}),
        threading.Thread(target=change, kwargs={"blocked_tools": ["delete_*"]}),
    ]
    # A third change holds the agent's row lock (SQLite: the write lock) while both upserts start, so both are in
    # flight at once: each reads the agent, then waits for the lock.
    with transaction.atomic():
        Agent.objects.select_for_update().get(pk=agent.pk)
        for thread in threads:
            thread.start()
        waits.wait_for(2)
    for thread in threads:
        thread.join(30)
    assert answers == [200, 200]
    agent.refresh_from_db()
    assert agent.policy == {"blocked_tools": ["delete_*"], "max_actions_per_hour": 10, "max_spend_usd_per_day": 5.0}
    assert agent.policy_version == 3
    assert list(PolicyVersion.objects.filter(agent=agent).values_list("version", flat=True)) == [3, 2, 1]
