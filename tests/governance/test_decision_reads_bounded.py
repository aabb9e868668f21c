"""Every read of the decision log on a governed call's paths names the account and a time range, and PostgreSQL
answers it from a range of the (account, agent, ts) index: its cost is bounded by the rows of that range, not by
the table's history (docs/benchmarks.md, *Growth*). Checked on the plans PostgreSQL makes for the queries the code
really sends (captured, then EXPLAINed), with sequential scans disabled so the plan shows which index *can* answer
the query, whatever a small test table would make cheapest.

The table is partitioned by day (governance/partitions.py): each plan reads exactly the partitions its time range
needs — the days it overlaps (with the default partition when the range goes past the last day) — and none of the
40 days of history the tests lay out before it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from governance import mcp_gateway, partitions
from governance.models import Decision
from onceonly_site.redis_client import get_redis
from tests.support.governance import governed_call, set_policy
from tests.support.partitions import lay_out_days

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="index plans are PostgreSQL's"),
]

AGENT = "bounded-agent"


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


def decision_scans(sql: str) -> list[dict[str, Any]]:
    """The plan's nodes that read governance_decision or one of its partitions, with sequential scans off."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
            (plan,) = cursor.fetchone()
        finally:
            cursor.execute("RESET enable_seqscan")
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return [
        node for node in plan_nodes(plan[0]["Plan"]) if str(node.get("Relation Name", "")).startswith(partitions.TABLE)
    ]


HISTORY_DAYS = 40
_TS = re.compile(r""""governance_decision"\."ts" (>=|>|<=|<) '([^']+)'::timestamptz""")


@pytest.fixture(autouse=True)
def day_partitions():
    """The decision table some weeks after its conversion: a partition per day for HISTORY_DAYS days back and a week
    ahead (each of the past days gets a history row of the test's agent: seed_history)."""
    return lay_out_days(HISTORY_DAYS)


def seed_history(account_id: int, agent_pk: int, today: datetime) -> None:
    """One decision on each of the HISTORY_DAYS days before today (the same account, the same agent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {partitions.TABLE} (account_id, agent_id, ts, tool, outcome, allowed, policy_reason, "
            "risk_level, spend_usd, args_hash, run_id, latency_ms, row_hash, dispatch_id) "
            "SELECT %s, %s, %s - make_interval(days => g) + interval '12 hours', 'history.tool', 'allowed', true, "
            "'within_budget', 'low', 1, md5(g::text), 'run-1', 1, '', '' FROM generate_series(1, %s) AS g",
            [account_id, agent_pk, today, HISTORY_DAYS],
        )
        cursor.execute(f"ANALYZE {partitions.TABLE}")


def needed_partitions(sql: str) -> set[str]:
    """The partitions whose days overlap the query's time range (its literal bounds on ts), with the default
    partition when the range reaches past the last day partition."""
    low, high = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    for operator, value in _TS.findall(sql):
        moment = datetime.fromisoformat(value)
        if operator in (">=", ">"):
            low = max(low, moment)
        else:
            high = min(high, moment)
    days = [p for p in partitions.partitions() if not p.default]
    needed = {p.name for p in days if p.start < high and p.end > low}
    if high > max(p.end for p in days) or low < min(p.start for p in days):
        needed |= {p.name for p in partitions.partitions() if p.default}
    return needed


def assert_bounded(queries: list[dict[str, Any]]) -> int:
    """Each captured SELECT of the decision log scans an index range on the account and the time (or reads one row
    by its primary key within a time range), in exactly the partitions its time range needs; returns how many such
    queries there were."""
    reads = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and '"governance_decision"' in q["sql"]]
    for sql in reads:
        scans = decision_scans(sql)
        assert scans, f"no scan of governance_decision in the plan of {sql}"
        for scan in scans:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), (scan, sql)
            condition = scan.get("Index Cond") or scan.get("Recheck Cond") or ""
            # A range of the account's time index, or one row by its primary key (id, ts) within the time range.
            assert ("account_id" in condition or condition.startswith("((id = ")) and "ts" in condition, (
                condition,
                sql,
            )
        scanned = {scan["Relation Name"] for scan in scans}
        assert scanned == needed_partitions(sql), sql
        # The hot path looks back two days at most (the run counters' span): never the rest of the 40 days.
        oldest = datetime.now(UTC) - timedelta(days=3)
        old = {p.name for p in partitions.partitions() if not p.default and p.end < oldest}
        assert not scanned & old, (sorted(scanned & old), sql)
    return len(reads)


def test_the_rebuild_after_a_redis_loss_reads_ranges_of_the_log(key_a, day_partitions):
    client = key_a.client()
    set_policy(client, AGENT, max_actions_per_hour=100, max_actions_per_run=50, max_spend_usd_per_day=100)
    for n in range(3):
        answer = governed_call(client, AGENT, "bounded.tool", args={"n": n, "run_id": "run-1"}, spend_usd=1)
        assert answer.status_code == 200 and answer.json()["decision"] == "allowed", answer.content
    agent = Decision.objects.get(pk=answer.json()["decision_id"]).agent
    seed_history(agent.account_id, agent.pk, day_partitions)
    get_redis().flushdb()  # every counter and dedup entry gone: the next call rebuilds them from the log
    with CaptureQueriesContext(connection) as captured:
        again = governed_call(client, AGENT, "bounded.tool", args={"n": 0, "run_id": "run-1"}, spend_usd=1)
    assert again.json()["decision"] == "dedup", again.content  # the rebuild restored the dedup entry from the log
    # The day's spend, the per-tool counts, the last hour, the dedup window and the runs: all ranges of the index.
    assert assert_bounded(captured.captured_queries) >= 4


def test_an_mcp_twin_waits_for_its_original_in_a_range_of_the_log(key_a, day_partitions):
    client = key_a.client()
    first = governed_call(client, AGENT, "bounded.tool", args={"n": 1})
    original = Decision.objects.get(pk=first.json()["decision_id"])
    seed_history(original.account_id, original.agent_id, day_partitions)
    original.dispatch_id = "dispatch-bounded-1"
    original.save(update_fields=["dispatch_id"])
    twin = Decision(
        account_id=original.account_id,
        agent_id=original.agent_id,
        ts=original.ts,
        explain={"original_dispatch_id": "dispatch-bounded-1"},
    )
    with CaptureQueriesContext(connection) as captured:
        found = mcp_gateway._await_original(twin, time.monotonic())
    assert found is not None and found.pk == original.pk
    assert assert_bounded(captured.captured_queries) == 1


def test_a_repeat_finds_its_original_in_the_days_of_the_dedup_window(key_a, day_partitions):
    """The dedup entry names the original decision by id; the lookup also names the account and the window's time
    range, so it reads a few days' partitions, not every day's primary key."""
    client = key_a.client()
    first = governed_call(client, AGENT, "bounded.tool", args={"n": 7})
    assert first.json()["decision"] == "allowed", first.content
    original = Decision.objects.get(pk=first.json()["decision_id"])
    seed_history(original.account_id, original.agent_id, day_partitions)
    with CaptureQueriesContext(connection) as captured:
        again = governed_call(client, AGENT, "bounded.tool", args={"n": 7})
    assert again.json()["decision"] == "dedup", again.content
    assert Decision.objects.get(pk=again.json()["decision_id"]).original_id == original.pk
    assert assert_bounded(captured.captured_queries) >= 1
