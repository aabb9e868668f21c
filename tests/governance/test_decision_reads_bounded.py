"""Every read of the decision log on a governed call's paths names the account and a time range, and PostgreSQL
answers it from a range of the (account, agent, ts) index: its cost is bounded by the rows of that range, not by
the table's history (docs/benchmarks.md, *Growth*). Checked on the plans PostgreSQL makes for the queries the code
really sends (captured, then EXPLAINed), with sequential scans disabled so the plan shows which index *can* answer
the query, whatever a small test table would make cheapest."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from governance import mcp_gateway
from governance.models import Decision
from onceonly_site.redis_client import get_redis
from tests.support.governance import governed_call, set_policy

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
    """The plan's nodes that read governance_decision, with sequential scans off."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
            (plan,) = cursor.fetchone()
        finally:
            cursor.execute("RESET enable_seqscan")
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return [node for node in plan_nodes(plan[0]["Plan"]) if node.get("Relation Name") == "governance_decision"]


def assert_bounded(queries: list[dict[str, Any]]) -> int:
    """Each captured SELECT of the decision log scans an index range on the account and the time (or reads one row
    by its primary key); returns how many such queries there were."""
    reads = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and '"governance_decision"' in q["sql"]]
    for sql in reads:
        scans = decision_scans(sql)
        assert scans, f"no scan of governance_decision in the plan of {sql}"
        for scan in scans:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), (scan, sql)
            condition = scan.get("Index Cond") or scan.get("Recheck Cond") or ""
            if condition.startswith("(id = "):
                continue  # one row by its primary key (the dedup entry names its original decision)
            assert "account_id" in condition and "ts" in condition, (condition, sql)
    return len(reads)


def test_the_rebuild_after_a_redis_loss_reads_ranges_of_the_log(key_a):
    client = key_a.client()
    set_policy(client, AGENT, max_actions_per_hour=100, max_actions_per_run=50, max_spend_usd_per_day=100)
    for n in range(3):
        answer = governed_call(client, AGENT, "bounded.tool", args={"n": n, "run_id": "run-1"}, spend_usd=1)
        assert answer.status_code == 200 and answer.json()["decision"] == "allowed", answer.content
    get_redis().flushdb()  # every counter and dedup entry gone: the next call rebuilds them from the log
    with CaptureQueriesContext(connection) as captured:
        again = governed_call(client, AGENT, "bounded.tool", args={"n": 0, "run_id": "run-1"}, spend_usd=1)
    assert again.json()["decision"] == "dedup", again.content  # the rebuild restored the dedup entry from the log
    # The day's spend, the per-tool counts, the last hour, the dedup window and the runs: all ranges of the index.
    assert assert_bounded(captured.captured_queries) >= 4


def test_an_mcp_twin_waits_for_its_original_in_a_range_of_the_log(key_a):
    client = key_a.client()
    first = governed_call(client, AGENT, "bounded.tool", args={"n": 1})
    original = Decision.objects.get(pk=first.json()["decision_id"])
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
