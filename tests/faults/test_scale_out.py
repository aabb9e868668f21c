"""The fault suite on the scale-out topology (docs/scaling.md), bounded like tests/faults/test_faults.py: two web
nodes (a gunicorn master and its workers each), two Celery worker nodes, a private Redis Cluster of three primaries
with a replica each, a private PostgreSQL and a single Redis as the broker — and per-node faults under mixed traffic
that goes to both web nodes: the account's Redis primary killed, a whole web node killed, a whole worker node killed
mid-run. Zero violations of the fault suite's counters, and proof that each fault happened.

It needs PostgreSQL's server binaries, redis-server and redis-cli; like the fault suite it ignores
DATABASE_URL/REDIS_URL and runs in one of `.ci/run`'s two passes (ONCEONLY_FAULTS=0 in the other).
`python -m tests.faults.run --scale-out` runs it longer and prints its table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster.stack import missing_tools as cluster_missing_tools
from tests.faults import suite
from tests.faults.stack import ROOT, missing_tools

SECONDS = float(os.environ.get("ONCEONLY_FAULTS_SECONDS", "15"))
MISSING = missing_tools() + cluster_missing_tools()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

if os.environ.get("ONCEONLY_FAULTS") == "0":
    pytestmark.append(pytest.mark.skip(reason="ONCEONLY_FAULTS=0: the fault suites run in the other CI pass"))
elif MISSING and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason="the scale-out fault suite needs " + "; ".join(MISSING)))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """The documented command, `python -m tests.faults.run --scale-out`, at this module's length: its exit status
    says whether anything was violated, its --json file what each phase showed."""
    assert not MISSING, "CI=true and the scale-out fault suite cannot run: " + "; ".join(MISSING)
    out = tmp_path_factory.mktemp("scale-out") / "phases.json"
    command = [sys.executable, "-m", "tests.faults.run", "--scale-out", "--seconds", str(SECONDS), "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=840)
    print(done.stdout[-20000:], done.stderr[-5000:])
    assert out.exists(), f"exit {done.returncode}, no results:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    phases = {phase["fault"]: phase for phase in json.loads(out.read_text())}
    assert list(phases) == list(suite.SCALE_OUT_FAULTS)
    violated = any(phase["violations"] or phase["leaks"] for phase in phases.values())
    assert done.returncode == (1 if violated else 0), done.stderr[-3000:]
    return phases


@pytest.mark.parametrize("fault", suite.SCALE_OUT_FAULTS)
def test_no_guarantee_is_broken(results, fault):
    phase = results[fault]
    assert phase["violations"] == [], "\n".join(phase["violations"][:50])
    assert phase["leaks"] == []
    assert phase["counts"]["2xx"] > 300, "too little traffic to mean anything"
    assert {"check_lock", "lease", "complete", "governed", "run"} <= set(phase["answered_kinds"])
    assert phase["governed_blocked"] > 0, "no governed call was refused by a cap: 'no cap exceeded' would be vacuous"


def test_both_web_nodes_served_the_traffic(results):
    for phase in results.values():
        assert phase["answered_by_nodes"] == ["web-a", "web-b"], phase["fault"]


def test_the_control_phase_sees_no_errors(results):
    counts = results["none"]["counts"]
    assert counts["503"] == 0 and counts["no_answer"] == 0


def test_a_redis_primary_was_replaced(results):
    evidence = results["redis_primary_kill"]["evidence"]
    assert evidence["successor"] != evidence["killed_primary"]
    assert evidence["keys_on_killed"] > 100  # it held the account's keys
    assert evidence["rejoined_as"] == "replica"


def test_a_web_node_was_killed_and_the_other_carried_on(results):
    evidence = results["web_node_kill"]["evidence"]
    assert len(evidence["killed"]) == 3  # the master and its two workers
    assert evidence["answered_while_down"] > 10
    assert evidence["answered_by_it_after"] > 0


def test_a_worker_node_was_killed_mid_run_and_the_other_finished_it(results):
    evidence = results["worker_node_kill"]["evidence"]
    assert evidence["taken_over_by"] not in ("?", evidence["killed_node"])
    assert evidence["killed_run"] == {"starts": 2, "status": "completed"}
