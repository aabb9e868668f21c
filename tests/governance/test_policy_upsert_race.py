"""Two concurrent policy upserts that change different fields both take effect: the merge happens under the agent
row's lock, on the policy current at that moment, not on a copy read before the lock.

Found by a code read: ``policy_upsert`` merged into the policy it had read before ``policy_publish`` took the row
lock, so of two concurrent upserts the later one wrote back the earlier one's field as it was.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from governance.models import Agent, PolicyVersion

AGENT = "billing-agent"


def upsert(client, **fields):
    return client.post(f"/v1/policies/{AGENT}", fields, content_type="application/json")


def wait_until_blocked_on_locks(count: int) -> None:
    """Until ``count`` other sessions wait for a lock (PostgreSQL); SQLite's busy wait cannot be seen: a pause."""
    if connection.vendor != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else the view is frozen for this transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.02)
    raise AssertionError(f"{count} upserts never waited for the agent's row lock")


@pytest.mark.django_db(transaction=True)
def test_concurrent_upserts_of_different_fields_keep_both(key_a):
    assert upsert(key_a.client(), max_actions_per_hour=10).status_code == 200  # version 1
    agent = Agent.objects.get(agent_id=AGENT)
    answers = []

    def change(**fields) -> None:
        try:
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
        wait_until_blocked_on_locks(2)
    for thread in threads:
        thread.join(30)
    assert answers == [200, 200]
    agent.refresh_from_db()
    assert agent.policy == {"blocked_tools": ["delete_*"], "max_actions_per_hour": 10, "max_spend_usd_per_day": 5.0}
    assert agent.policy_version == 3
    assert list(PolicyVersion.objects.filter(agent=agent).values_list("version", flat=True)) == [3, 2, 1]
