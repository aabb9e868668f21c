"""The fault suite (`make faults`): mixed traffic against a live multi-process stack while faults are injected,
then every guarantee of docs/architecture.md §3 checked with counts (docs/operations.md, "Fault suite").

One phase per fault, each with its own keys, agents and runs so a phase's verdict is its own:

* traffic — check-locks on a pool of keys, leases acquired and completed on a pool of keys plus three keys held
  for the whole phase, governed calls of one agent with hourly/per-tool/spend caps (new arguments and repeated
  ones, dispatched to a registered tool or permit-only), keyed runs of a job handler (new keys and re-submitted
  ones);
* the fault, a third of the way in;
* afterwards: the phase's runs must end, the long leases are completed, and the checks run against what the
  clients were answered, what the tool receiver and the handler journal saw, and the database.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.faults.stack import TOOL_SECRET, ProcessUsage, Stack, StackError, wait_until

FAULTS = ("none", "redis_flushall", "redis_restart", "postgres_restart", "celery_kill", "web_kill")
# The scale-out topology's faults (Stack("scale_out"), docs/scaling.md): a Redis Cluster primary killed (its replica
# takes over), a whole web node killed (its master and workers; the clients' balancer sends to the other node until
# it is back), a whole worker node killed mid-run (the other node finishes its run).
SCALE_OUT_FAULTS = ("none", "redis_primary_kill", "web_node_kill", "worker_node_kill")
WEB_FAULTS = ("web_kill", "web_node_kill")  # the faults that may leave a request without an answer
GOVERNED_PAUSE = 0.25  # per governed-call thread: about 8 calls/s in all, 5-6 of them charged
TOOL = "faults.tool"  # registered: dispatched to the receiver
PERMIT = "faults.permit"  # unregistered: permit-only decisions
GENERATION_SECONDS = 2  # check-lock and lease keys: a new set every 2 s, so first acquisitions span the phase
LOCK_KEYS, LEASE_KEYS, HELD_KEYS = 10, 6, 3
LEASE_TTL, RUN_TTL = 60, 60
# The held keys' TTL is the phase's length plus this margin, which covers stopping the traffic and the held
# completes' own retries (Phase.complete, up to 30 s): a held lease outlives its phase however long it is.
HELD_TTL_MARGIN = 300
FD_GROWTH_LIMIT = 1000  # open files a process group may gain in one phase before it is called a leak
RUN_SECONDS = 0.6  # how long the job handler works
RUN_SETTLE_SECONDS = 90
RECOVERY_LIMIT_SECONDS = 15
NODE_DOWN_SECONDS = 3  # web_node_kill: how long the killed node stays down before it is started again


@dataclass
class Op:
    kind: str
    key: str
    t0: float
    t1: float
    status: int | None  # None: no HTTP answer (connection refused or reset)
    body: Any = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        if self.status is None:
            return "no_answer"
        if 200 <= self.status < 300 and isinstance(self.body, dict):
            return str(self.body.get("status") or self.body.get("decision") or "ok")
        return str(self.status)


@dataclass
class PhaseResult:
    fault: str
    seconds: float
    ops: list[Op]
    violations: list[str]
    notes: list[str]
    evidence: dict[str, Any]  # that the fault really happened (tests/faults/test_faults.py asserts it)
    # The web and worker processes' memory and open files when the phase started and when it ended (a soak's
    # evidence: a leak shows as growth from phase to phase); a process may appear at one end only (killed, new).
    usage: dict[str, list[ProcessUsage]] = field(default_factory=lambda: {"start": [], "end": []})

    def counts(self) -> dict[str, int]:
        answered = [op for op in self.ops if op.status is not None]
        return {
            "ops": len(self.ops),
            "2xx": sum(1 for op in answered if 200 <= op.status < 300),
            "503": sum(1 for op in answered if op.status == 503),
            "no_answer": sum(1 for op in self.ops if op.status is None),
            "violations": len(self.violations),
        }

    def summary(self) -> dict[str, Any]:
        """What the phase showed, as JSON (``python -m tests.faults.run --json``)."""
        answered = [op for op in self.ops if op.status == 200]
        return {
            "fault": self.fault,
            "seconds": round(self.seconds, 1),
            "counts": self.counts(),
            "violations": self.violations,
            "leaks": self.leaks(),
            "notes": self.notes,
            "evidence": self.evidence,
            "answered_kinds": sorted({op.kind for op in answered}),
            "answered_by_nodes": sorted({str(op.extra.get("node")) for op in answered}),
            "governed_blocked": sum(1 for op in self.ops if op.kind == "governed" and op.answer == "blocked"),
        }

    def usage_totals(self) -> dict[str, dict[str, int]]:
        """Per group ("web", "worker"): RSS (kB) and open files summed over its processes, at start and at end."""
        totals: dict[str, dict[str, int]] = {}
        for when, processes in self.usage.items():
            for process in processes:
                group = totals.setdefault(
                    process.group, {"rss_kb_start": 0, "rss_kb_end": 0, "fds_start": 0, "fds_end": 0}
                )
                group[f"rss_kb_{when}"] += process.rss_kb
                group[f"fds_{when}"] += process.fds
        return totals

    def leaks(self) -> list[str]:
        """What is clearly wrong with the processes' resources (no tight threshold: the machine is shared)."""
        found = []
        for group, total in self.usage_totals().items():
            grown = total["fds_end"] - total["fds_start"]
            if grown > FD_GROWTH_LIMIT:
                found.append(f"{group}: {grown} more open files at the end of the phase than at its start")
        return found


def held_ttl_for(seconds: float) -> int:
    """The TTL of a phase's held keys: longer than the phase of ``seconds`` with its wind-down."""
    return int(seconds) + HELD_TTL_MARGIN


class Client:
    """One HTTP client per load thread; every call is recorded as an Op (``extra["node"]``: the web node that
    answered).

    With several web nodes it balances as a load balancer with passive health checks does (nginx's
    ``proxy_next_upstream error``): each call goes to the next node in turn, and a call whose connection is refused
    goes to the next node at once (nothing reached the refused one). A call cut off after it was sent is not
    retried: the node may have acted on it, and the client sees no answer."""

    def __init__(self, urls: dict[str, str], api_key: str, ops: list[Op]) -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        self.nodes = [(node, httpx.Client(base_url=url, headers=headers, timeout=15)) for node, url in urls.items()]
        self.turn = random.randrange(len(self.nodes))
        self.ops = ops

    def call(self, kind: str, key: str, method: str, path: str, body: dict | None = None, **extra: Any) -> Op:
        t0 = time.time()
        self.turn += 1
        for attempt in range(len(self.nodes)):
            node, http = self.nodes[(self.turn + attempt) % len(self.nodes)]
            try:
                response = http.request(method, path, json=body)
            except httpx.ConnectError as exc:
                if attempt + 1 < len(self.nodes):
                    continue
                op = Op(kind, key, t0, time.time(), None, error=type(exc).__name__, extra={**extra, "node": node})
            except httpx.HTTPError as exc:
                op = Op(kind, key, t0, time.time(), None, error=type(exc).__name__, extra={**extra, "node": node})
            else:
                try:
                    parsed = response.json()
                except ValueError:
                    parsed = response.text[:200]
                op = Op(kind, key, t0, time.time(), response.status_code, parsed, extra={**extra, "node": node})
            break
        self.ops.append(op)
        return op

    def close(self) -> None:
        for _, http in self.nodes:
            http.close()


class Phase:
    """The traffic of one phase; ``stop`` ends it."""

    def __init__(
        self,
        stack: Stack,
        api_key: str,
        name: str,
        seconds: float,
        held_ttl: int | None = None,
        account_id: int = 0,
    ) -> None:
        self.stack, self.api_key, self.name, self.account_id = stack, api_key, name, account_id
        self.held_ttl = held_ttl if held_ttl is not None else held_ttl_for(seconds)
        # Caps the traffic reaches about halfway through the phase (the fault comes at a third): both the
        # reservations made around the fault and the refusals after the cap are tested.
        actions = max(10, int(2.5 * seconds))
        self.caps = {
            "max_actions_per_hour": actions,
            "tool_calls": int(actions * 0.6),
            "max_spend_usd_per_day": round(actions * 0.85, 2),
        }
        self.started = time.monotonic()
        self.ops: list[Op] = []
        self.agent = f"agent-{name}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.run_keys: list[str] = []
        self.held: dict[str, str] = {}
        self.counter = itertools.count()
        self.pg_window: tuple[float, float] | None = None
        self.node_window: tuple[str, float, float] | None = None  # web_node_kill: (node, killed at, back at)

    def client(self) -> Client:
        return Client(self.stack.urls, self.api_key, self.ops)

    def start(self) -> None:
        setup = self.client()
        policy = {
            "max_actions_per_hour": self.caps["max_actions_per_hour"],
            "max_spend_usd_per_day": self.caps["max_spend_usd_per_day"],
            "max_calls_per_tool": {TOOL: self.caps["tool_calls"]},
        }
        answer = setup.call("setup", self.agent, "POST", f"/v1/policies/{self.agent}", policy)
        if answer.status != 200:
            raise StackError(f"policy upsert failed: {answer.status} {answer.body}")
        for index in range(HELD_KEYS):
            key = f"held:{self.name}:{index}"
            op = self.acquire(setup, key, self.held_ttl)
            if op.answer != "acquired":
                raise StackError(f"could not take {key}: {op.status} {op.body}")
            self.held[key] = op.body["lease_id"]
        setup.close()
        for target, count in ((self.locks, 2), (self.leases, 2), (self.governed, 2), (self.runs, 1)):
            for _ in range(count):
                thread = threading.Thread(target=self._loop, args=(target,), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _loop(self, target) -> None:
        client = self.client()
        rng = random.Random()
        try:
            while not self.stopping.is_set():
                target(client, rng)
        finally:
            client.close()

    def refused(self) -> bool:
        """Whether a governed call of this phase was refused by a cap so far."""
        return any(op.kind == "governed" and op.answer == "blocked" for op in list(self.ops))

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    # --- traffic ----------------------------------------------------------------------------------------------

    def key(self, prefix: str, pool: int, rng: random.Random) -> str:
        """Half from the current set of keys (new ones), half from any earlier set (seen before)."""
        current = int(time.monotonic() - self.started) // GENERATION_SECONDS
        generation = current if rng.random() < 0.5 else rng.randrange(current + 1)
        return f"{prefix}:{self.name}:{generation}:{rng.randrange(pool)}"

    def locks(self, client: Client, rng: random.Random) -> None:
        key = self.key("lock", LOCK_KEYS, rng)
        op = client.call("check_lock", key, "POST", "/v1/check-lock", {"key": key, "ttl": 3600})
        if op.answer == "locked":
            op.extra["ttl"] = int(op.body["ttl"])  # the TTL granted: the window the check judges this lock by

    def leases(self, client: Client, rng: random.Random) -> None:
        # One in five on a key held all phase by another holder: never acquirable.
        key = rng.choice(list(self.held)) if rng.random() < 0.2 else self.key("lease", LEASE_KEYS, rng)
        op = self.acquire(client, key, LEASE_TTL)
        if op.answer != "acquired":
            return
        time.sleep(rng.uniform(0.0, 0.05))
        self.complete(client, key, op.body["lease_id"])

    def acquire(self, client: Client, key: str, ttl: int) -> Op:
        """A lease call; an acquisition records the TTL the server granted (its answer's ``ttl``), which the checks
        judge this lease by."""
        op = client.call("lease", key, "POST", "/v1/ai/lease", {"key": key, "ttl": ttl})
        if op.answer == "acquired":
            op.extra["ttl"] = int(op.body["ttl"])
        return op

    def complete(self, client: Client, key: str, lease_id: str, deadline: float = 30.0) -> Op:
        """Complete as a careful holder does: retry while the server cannot answer, until the lease would end."""
        until = time.monotonic() + deadline
        while True:
            body = {"key": key, "lease_id": lease_id, "result": {"holder": lease_id}}
            op = client.call("complete", key, "POST", "/v1/ai/complete", body, lease_id=lease_id)
            if (op.status is not None and op.status != 503) or time.monotonic() > until:
                return op
            time.sleep(0.2)

    def governed(self, client: Client, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.25:
            tool, args = TOOL, {"repeat": rng.randrange(4)}  # the same arguments again: dedup after the first
        elif roll < 0.7:
            tool, args = TOOL, {"n": next(self.counter)}
        else:
            tool, args = PERMIT, {"n": next(self.counter)}
        spend = 1.0 if tool == TOOL else 0.5
        body = {"agent_id": self.agent, "tool": tool, "args": args, "spend_usd": spend}
        client.call("governed", f"{tool}:{json.dumps(args, sort_keys=True)}", "POST", "/v1/ai/run", body)
        time.sleep(GOVERNED_PAUSE)

    def runs(self, client: Client, rng: random.Random) -> None:
        if self.run_keys and rng.random() < 0.3:
            key = rng.choice(self.run_keys)  # re-submitted: never acquired again
        else:
            key = f"run:{self.name}:{next(self.counter)}"
            self.run_keys.append(key)
        body = {"key": key, "ttl": RUN_TTL, "metadata": {"task": "faults.work", "params": {"seconds": RUN_SECONDS}}}
        client.call("run", key, "POST", "/v1/ai/run", body)
        time.sleep(0.4)

    # --- after the traffic --------------------------------------------------------------------------------

    def release_held(self) -> None:
        client = self.client()
        for key, lease_id in self.held.items():
            self.complete(client, key, lease_id)
        client.close()


# --- faults --------------------------------------------------------------------------------------------------


def inject(stack: Stack, fault: str, phase: Phase, notes: list[str]) -> dict[str, Any]:
    """Injects ``fault``; returns what shows it happened."""
    if fault == "none":
        return {}
    if fault == "redis_flushall":
        keys = stack.redis.client().dbsize()
        stack.redis.client().flushall()
        notes.append(f"FLUSHALL of {keys} keys")
        return {"keys_flushed": keys}
    elif fault == "redis_restart":
        keys = stack.redis.client().dbsize()
        stack.redis.kill()
        time.sleep(2)
        stack.redis.start()
        notes.append(f"redis-server killed (-9) holding {keys} keys, down 2 s, started empty")
        return {"keys_lost": keys}
    elif fault == "postgres_restart":
        down = 3.0
        stack.postgres.crash()
        went_down = time.time()
        time.sleep(down)
        stack.postgres.start()
        came_back = time.time()
        phase.pg_window = (went_down, came_back)
        notes.append(f"PostgreSQL stopped -m immediate (crash recovery on start), down {came_back - went_down:.1f} s")
        return {"down_seconds": came_back - went_down}
    elif fault == "celery_kill":
        victim, key = running_handler_worker(stack)
        stack.kill(victim)
        replacement = stack.start_worker()
        notes.append(f"kill -9 of {victim} while its handler ran {key}; {replacement} started")
        return {"killed_mid_run": key}
    elif fault == "web_kill":
        before = set(stack.web_workers())
        killed = []
        for _ in range(3):
            victim = random.choice(stack.web_workers())
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            time.sleep(0.7)
        wait_until(lambda: len(stack.web_workers()) == stack.WEB_WORKERS, 30, "gunicorn did not replace its workers")
        replaced = set(stack.web_workers()) - before
        notes.append(
            f"kill -9 of {len(killed)} gunicorn workers under load, 0.7 s apart; the master is back to "
            f"{stack.WEB_WORKERS} workers"
        )
        return {"killed": killed, "replaced": sorted(replaced)}
    elif fault == "redis_primary_kill":
        return kill_redis_primary(stack, phase, notes)
    elif fault == "web_node_kill":
        node = stack.web_nodes[-1]
        killed = stack.kill_web_node(node)
        went_down = time.time()
        time.sleep(NODE_DOWN_SECONDS)
        stack.restart_web_node(node)
        came_back = time.time()
        phase.node_window = (node, went_down, came_back)
        notes.append(
            f"kill -9 of web node {node} (its master and {len(killed) - 1} workers) under load, restarted after "
            f"{came_back - went_down:.1f} s"
        )
        return {"node": node, "killed": killed, "down_seconds": came_back - went_down}
    elif fault == "worker_node_kill":
        victim, key = running_handler_worker(stack)
        victim_pid = stack.processes[victim].pid
        stack.kill(victim)
        # The surviving node takes the run over once its claim lapses (ONCEONLY_RUN_CLAIM_SECONDS): no replacement
        # is started until it has, so the run is the other node's to finish.
        taken_over: list[int] = []

        def restarted() -> bool:
            taken_over[:] = [
                int(pid)
                for _, what, run_key, _, pid in (line.split() for line in stack.journal.read_text().splitlines())
                if what == "start" and run_key == key and int(pid) != victim_pid
            ]
            return bool(taken_over)

        wait_until(restarted, 30, f"no other worker node took {key} over")
        survivor = {process.pid: name for name, process in stack.workers().items()}.get(taken_over[0], "?")
        replacement = stack.start_worker()
        notes.append(
            f"kill -9 of worker node {victim} while its handler ran {key}; {survivor} took the run over; "
            f"{replacement} started afterwards"
        )
        return {"killed_mid_run": key, "killed_node": victim, "taken_over_by": survivor}
    raise ValueError(f"unknown fault {fault!r}")


def kill_redis_primary(stack: Stack, phase: Phase, notes: list[str]) -> dict[str, Any]:
    """kill -9 of the Redis Cluster primary that holds the phase's account (every key of an account carries its
    hash tag, so one primary holds them all); its replica is promoted, and the killed node, started again, rejoins
    as a replica of it."""
    cluster = stack.cluster
    account_key = f"oo:{{a{phase.account_id}}}:faults"
    victim = cluster.port_of_key(account_key)
    keys = int(cluster.cli(victim, "dbsize") or 0)
    cluster.kill(victim)
    killed_at = time.monotonic()
    wait_until(
        lambda: cluster.port_of_key(account_key) not in (None, victim), 30, "no replica took over the killed primary"
    )
    successor = cluster.port_of_key(account_key)
    failover = time.monotonic() - killed_at
    time.sleep(2)  # the traffic runs on the promoted replica alone a while
    cluster.start_node(victim)
    wait_until(cluster.healthy, 60, "the killed primary did not rejoin the cluster")
    rejoined = "replica" if "role:slave" in cluster.cli(victim, "info", "replication") else "primary"
    notes.append(
        f"kill -9 of the Redis primary :{victim} holding the account ({keys} keys); its replica :{successor} was "
        f"promoted after {failover:.1f} s; :{victim} started again and rejoined as a {rejoined}"
    )
    return {
        "killed_primary": victim,
        "successor": successor,
        "failover_seconds": failover,
        "keys_on_killed": keys,
        "rejoined_as": rejoined,
    }


def running_handler_worker(stack: Stack) -> tuple[str, str]:
    """The worker whose handler is running right now (started, not finished, per the journal), and its run key."""
    pids = {process.pid: name for name, process in stack.workers().items()}
    found: list[tuple[str, str]] = []

    def look() -> bool:
        open_runs: dict[str, int] = {}
        for line in stack.journal.read_text().splitlines():
            _, what, key, _, pid = line.split()
            if what == "start":
                open_runs[key] = int(pid)
            else:
                open_runs.pop(key, None)
        busy = [(pids[pid], key) for key, pid in open_runs.items() if pid in pids]
        if busy:
            found.append(busy[-1])
        return bool(busy)

    wait_until(look, 20, "no worker was running a handler")
    return found[0]


# --- checks --------------------------------------------------------------------------------------------------


def check(
    stack: Stack, phase: Phase, fault: str, account_id: int, evidence: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """Every guarantee, counted. Returns (violations, notes); adds to ``evidence`` what shows the fault's effect."""
    violations: list[str] = []
    notes: list[str] = []
    by_kind: dict[str, list[Op]] = defaultdict(list)
    for op in phase.ops:
        by_kind[op.kind].append(op)

    # Every answer is a 2xx, an expected refusal, or a 503 that says what is unavailable — never a 500.
    for op in phase.ops:
        if op.status is not None and op.status >= 500:
            detail = op.body.get("detail") if isinstance(op.body, dict) else None
            if op.status != 503 or not isinstance(detail, dict) or detail.get("error") != "service_unavailable":
                violations.append(f"{op.kind} {op.key}: HTTP {op.status} {str(op.body)[:200]}")
        if op.status is None and fault not in WEB_FAULTS:
            violations.append(f"{op.kind} {op.key}: no answer ({op.error}) without a web-process fault")

    # 1. check-lock: one `locked` per key per TTL window.
    violations += lock_violations(phase.ops)

    # 2. leases: one holder at a time, a completed key never acquired again, held keys never taken.
    violations += lease_violations(phase.ops, phase.held)
    retaken = sorted(
        {
            op.key
            for op in by_kind["lease"]
            if op.key in phase.held and op.answer == "acquired" and op.body["lease_id"] not in phase.held.values()
        }
    )
    if retaken:  # only when the phase outlived the held TTL (run.py --held-ttl); else a violation above
        notes.append(f"held keys acquired by another holder (held with a {phase.held_ttl} s TTL): {', '.join(retaken)}")

    # 3. keyed runs: one acquisition per key, every run ends, no handler starts after its run completed.
    runs_acquired = Counter(op.key for op in by_kind["run"] if op.answer == "acquired")
    violations += [f"run {key}: acquired {n} times" for key, n in runs_acquired.items() if n > 1]
    rows = wait_for_runs(stack, account_id, phase.name)
    journal = [line.split() for line in stack.journal.read_text().splitlines()]
    starts: dict[str, list[float]] = defaultdict(list)
    for ts, what, key, _, _ in journal:
        if what == "start":
            starts[key].append(float(ts))
    ended = Counter()
    for key, status, finished_at in rows:
        ended[status] += 1
        if status not in ("completed", "failed"):
            violations.append(f"run {key}: still {status} {RUN_SETTLE_SECONDS} s after the traffic stopped")
        elif status == "completed":
            late = [ts for ts in starts[key] if ts > finished_at.timestamp()]
            if late:
                violations.append(f"run {key}: its handler started {len(late)} time(s) after the run completed")
    missing = set(runs_acquired) - {key for key, _, _ in rows}
    violations += [f"run {key}: acquired but no run row" for key in sorted(missing)]
    if "killed_mid_run" in evidence:
        key = evidence["killed_mid_run"]
        evidence["killed_run"] = {"starts": len(starts[key]), "status": dict((k, s) for k, s, _ in rows).get(key)}
    reruns = sum(max(0, len(v) - 1) for k, v in starts.items() if k.startswith(f"run:{phase.name}:"))
    notes.append(f"runs {dict(ended)}, handler restarts after a lost worker: {reruns}")

    # 4. governed calls: caps never exceeded (database, answers, real dispatches), no decision lost, dedup holds.
    decisions = governance_rows(stack, account_id, phase.agent)
    charged = [d for d in decisions if d["outcome"] in ("executed", "allowed", "failed")]
    tool_calls = [d for d in charged if d["tool"] == TOOL]
    spend = sum(d["spend_usd"] for d in charged)
    if spend > phase.caps["max_spend_usd_per_day"] + 1e-9:
        violations.append(f"governed: spend {spend} > {phase.caps['max_spend_usd_per_day']}")
    # A dispatch whose decision could not be written (the database went away after the tool was called) is kept
    # as an intent row until the sweeper records it: counted by the caps meanwhile (governance.models).
    unrecorded = open_intents(stack, account_id, phase.agent)
    dispatched = stack.receiver.executions(phase.agent)
    if dispatched > phase.caps["tool_calls"]:
        violations.append(f"governed: the tool ran {dispatched} times > cap {phase.caps['tool_calls']}")
    if len(tool_calls) + unrecorded > phase.caps["tool_calls"]:
        violations.append(f"governed: {len(tool_calls)} decisions + {unrecorded} unrecorded dispatches of {TOOL} > cap")
    if len(charged) + unrecorded > phase.caps["max_actions_per_hour"]:
        violations.append(f"governed: {len(charged)} decisions + {unrecorded} unrecorded dispatches > hourly cap")
    if dispatched > len(tool_calls) + unrecorded:
        violations.append(
            f"governed: the tool ran {dispatched} times; {len(tool_calls)} charged decisions and "
            f"{unrecorded} unrecorded dispatches"
        )
    by_id = {d["id"]: d for d in decisions}
    answered = Counter()
    for op in by_kind["governed"]:
        if op.status == 200 and isinstance(op.body, dict):
            answered[op.body.get("decision")] += 1
            row = by_id.get(op.body.get("decision_id"))
            if row is None or row["outcome"] != op.body.get("decision"):
                violations.append(
                    f"governed {op.key}: answered {op.body.get('decision')} "
                    f"#{op.body.get('decision_id')}, no such decision row"
                )
    answered_charged = answered["executed"] + answered["allowed"]
    if answered_charged > phase.caps["max_actions_per_hour"]:
        violations.append(f"governed: {answered_charged} calls answered executed/allowed > hourly cap")
    doubles = Counter(d["args_hash"] for d in decisions if d["outcome"] in ("executed", "allowed"))
    violations += [f"governed: arguments {h[:12]}… executed {n} times" for h, n in doubles.items() if n > 1]
    notes.append(
        f"governed answers {dict(answered)}; charged {len(charged)}, spend {spend:g}, "
        f"tool runs {dispatched}, dispatches awaiting their decision row {unrecorded}"
    )

    # A web node down: the other node answered meanwhile, and the node answers again once it is back.
    if phase.node_window is not None:
        node, went_down, came_back = phase.node_window
        others = sum(1 for op in phase.ops if went_down < op.t0 < came_back and op.status == 200)
        again = sum(1 for op in phase.ops if op.t0 > came_back and op.status == 200 and op.extra.get("node") == node)
        lost = sum(1 for op in phase.ops if op.status is None)
        evidence.update(answered_while_down=others, answered_by_it_after=again, cut_off=lost)
        notes.append(
            f"while {node} was down: {others} calls answered 200 by the other node; {node} answered {again} "
            f"after its restart; {lost} calls cut off by the kill (no answer)"
        )
        if not others:
            violations.append(f"no call was answered while {node} was down")

    # 5. PostgreSQL down: clear 503s while it was down, 2xx again without restarting anything.
    window = phase.pg_window
    if window is not None:
        went_down, came_back = window
        during = [op for op in phase.ops if went_down + 0.5 < op.t0 and op.t1 < came_back]
        unavailable = [op for op in during if op.status == 503]
        notes.append(
            f"while PostgreSQL was down: {len(during)} requests, {len(unavailable)} answered 503, "
            f"{sum(1 for op in during if op.status == 200)} answered 200 (Redis alone)"
        )
        if not unavailable:
            violations.append("no request was answered 503 while PostgreSQL was down")
        recovered = min(
            (op.t1 for op in phase.ops if op.t0 > came_back and op.status == 200 and op.kind in ("governed", "lease")),
            default=None,
        )
        if recovered is None or recovered - came_back > RECOVERY_LIMIT_SECONDS:
            violations.append("database-backed calls did not recover after PostgreSQL came back")
        else:
            notes.append(f"database-backed calls answered 200 again {recovered - came_back:.1f} s after the restart")
    return violations, notes


def lock_violations(ops: list[Op]) -> list[str]:
    """One `locked` answer per check-lock key per TTL window — the TTL that lock was granted (``extra["ttl"]``):
    a key locked again after it can have expired (no earlier than ``t0 + ttl`` of the locking call) is not one."""
    locked: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "check_lock" and op.answer == "locked":
            locked[op.key].append(op)
    violations = []
    for key, answers in locked.items():
        for first, second in itertools.pairwise(sorted(answers, key=lambda op: op.t1)):
            if second.t1 < first.t0 + first.extra["ttl"]:
                violations.append(f"check-lock {key}: locked again within its {first.extra['ttl']} s TTL")
    return violations


def lease_violations(ops: list[Op], held: Collection[str]) -> list[str]:
    """The lease checks, on the recorded operations alone: one holder at a time, a completed key never acquired
    again, a key of ``held`` (held all phase) never taken, a holder's complete never refused within its TTL.

    Each lease is judged by the TTL it was taken with (``extra["ttl"]`` of its acquisition). The server set its
    expiry to its own clock at the acquisition plus that TTL, so no earlier than ``t0 + ttl`` of the acquiring
    call; whatever the server did by ``t1`` of a later call happened before the lease could have lapsed when that
    ``t1`` is earlier. A takeover or a refused complete after that moment is what an expired lease allows."""
    violations: list[str] = []
    by_kind: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_kind[op.kind].append(op)
    acquisitions: dict[str, list[Op]] = defaultdict(list)
    taken_as: dict[str, Op] = {}  # lease_id → its acquisition
    for op in by_kind["lease"]:
        if op.answer == "acquired":
            acquisitions[op.key].append(op)
            taken_as[op.body["lease_id"]] = op

    def lapses_at(lease_id: str) -> float:
        """The earliest moment the lease of ``lease_id`` can have expired (never, for an unknown lease_id)."""
        acquisition = taken_as.get(lease_id)
        return float("inf") if acquisition is None else acquisition.t0 + acquisition.extra["ttl"]

    completes: dict[str, list[Op]] = defaultdict(list)
    for op in by_kind["complete"]:
        if op.status == 200:
            completes[op.key].append(op)
        elif op.status == 409:
            if op.t1 < lapses_at(op.extra["lease_id"]):
                violations.append(f"lease {op.key}: the holder's complete was refused ({op.body}) within its TTL")
        elif op.status != 503 and op.status is not None:
            violations.append(f"lease {op.key}: complete answered {op.status} {op.body}")
    released_at = {}  # lease_id → when its holder first asked to complete it
    for op in sorted(by_kind["complete"], key=lambda op: op.t0):
        released_at.setdefault(op.extra["lease_id"], op.t0)
    for key, taken in acquisitions.items():
        finished_at = min((op.t1 for op in completes[key]), default=None)
        for op in taken:
            if finished_at is not None and op.t0 > finished_at:
                violations.append(f"lease {key}: acquired again after it was completed")
        ordered = sorted(taken, key=lambda op: op.t1)
        for first, second in itertools.pairwise(ordered):
            lease_id = first.body["lease_id"]
            if second.t1 < min(released_at.get(lease_id, float("inf")), lapses_at(lease_id)):
                held_note = " (a key held all phase)" if key in held else ""
                violations.append(f"lease {key}: acquired by two holders at once{held_note}")
        winners = {op.extra["lease_id"] for op in completes[key]}
        if len(winners) > 1:
            violations.append(f"lease {key}: completed by {len(winners)} different holders")
    return violations


def wait_for_runs(stack: Stack, account_id: int, phase: str) -> list[tuple[str, str, Any]]:
    import psycopg

    deadline = time.monotonic() + RUN_SETTLE_SECONDS
    while True:
        with psycopg.connect(stack.postgres.url("onceonly")) as conn:
            rows = conn.execute(
                "SELECT key, status, finished_at FROM idempotency_run WHERE account_id = %s AND key LIKE %s",
                [account_id, f"run:{phase}:%"],
            ).fetchall()
        if all(status in ("completed", "failed") for _, status, _ in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def open_intents(stack: Stack, account_id: int, agent_id: str) -> int:
    import psycopg

    with psycopg.connect(stack.postgres.url("onceonly")) as conn:
        return conn.execute(
            "SELECT count(*) FROM governance_dispatchintent i JOIN governance_agent a ON a.id = i.agent_id "
            "WHERE a.account_id = %s AND a.agent_id = %s",
            [account_id, agent_id],
        ).fetchone()[0]


def governance_rows(stack: Stack, account_id: int, agent_id: str) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(stack.postgres.url("onceonly"), row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT d.id, d.outcome, d.tool, d.args_hash, d.spend_usd::float AS spend_usd FROM governance_decision d "
            "JOIN governance_agent a ON a.id = d.agent_id WHERE a.account_id = %s AND a.agent_id = %s",
            [account_id, agent_id],
        ).fetchall()


# --- the whole suite ----------------------------------------------------------------------------------------


SETUP = """
from billing.models import Account, Plan
Plan.objects.filter(code="agency").update(make_monthly_limit=10**12, ai_monthly_limit=10**12,
                                          rate_limit_per_second=10**6, rate_limit_burst=10**6)
print(Account.objects.get(name="faults").pk)
"""


def prepare(stack: Stack) -> tuple[str, int]:
    """The suite's account (agency plan, quotas and rate limits out of the way), its key and the registered tool."""
    api_key = stack.manage("create_api_key", "--account", "faults", "--plan", "agency").strip()
    account_id = int(stack.manage("shell", "-c", SETUP).strip().splitlines()[-1])
    tool = {
        "name": TOOL,
        "url": f"{stack.receiver.url}/tool",
        "auth": {"type": "hmac_sha256", "secret": TOOL_SECRET},
        "timeout_ms": 2000,
        "max_retries": 0,
    }
    answer = httpx.post(f"{stack.url}/v1/tools", json=tool, headers={"Authorization": f"Bearer {api_key}"})
    if answer.status_code not in (200, 201):
        raise StackError(f"tool registration failed: {answer.status_code} {answer.text}")
    return api_key, account_id


def run_phase(
    stack: Stack,
    api_key: str,
    account_id: int,
    fault: str,
    seconds: float,
    log,
    n: int = 0,
    held_ttl: int | None = None,
) -> PhaseResult:
    # Its own keys and agent, also when a fault repeats.
    phase = Phase(stack, api_key, f"{fault}-{n}", seconds, held_ttl=held_ttl, account_id=account_id)
    notes: list[str] = []
    usage_at_start = stack.process_usage()
    started = time.monotonic()
    phase.start()
    time.sleep(seconds / 3)
    log(f"{fault}: injecting")
    evidence = inject(stack, fault, phase, notes)
    remaining = seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    # The caps must bind in every phase (else "no cap exceeded" is vacuous). A machine busy with other work may
    # answer too slowly to reach them in time: the traffic goes on until a governed call was refused by a cap, for
    # at most another phase length (test_caps_were_reached_in_every_phase fails if even that was not enough).
    until = time.monotonic() + seconds
    while not phase.refused() and time.monotonic() < until:
        time.sleep(0.25)
    phase.stop()
    phase.release_held()
    log(f"{fault}: traffic stopped after {time.monotonic() - started:.0f} s; checking")
    violations, more = check(stack, phase, fault, account_id, evidence)
    usage = {"start": usage_at_start, "end": stack.process_usage()}  # the end: the phase's runs have ended too
    return PhaseResult(fault, time.monotonic() - started, phase.ops, violations, notes + more, evidence, usage)


def run(
    faults: tuple[str, ...] = FAULTS,
    seconds: float = 15.0,
    log=print,
    held_ttl: int | None = None,
    topology: str = "single",
) -> list[PhaseResult]:
    """Every phase of ``faults``, ``seconds`` of traffic each, on a stack of ``topology`` (tests/faults/stack.py);
    ``held_ttl`` overrides the held keys' TTL (by default longer than the phase: held_ttl_for), to see how the
    checks judge leases a phase outlives."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with Stack(topology) as stack:
        redis = f"Redis :{stack.redis.port}"
        if stack.cluster is not None:
            redis = f"Redis Cluster :{','.join(map(str, stack.cluster.ports))}, broker {redis}"
        log(
            f"stack up: {', '.join(stack.urls.values())} (PostgreSQL :{stack.postgres.port}, {redis}, "
            f"{len(stack.web_nodes)} web node(s) of {stack.WEB_WORKERS} workers, {len(stack.workers())} Celery "
            "workers, beat)"
        )
        api_key, account_id = prepare(stack)
        return [
            run_phase(stack, api_key, account_id, fault, seconds, log, n, held_ttl) for n, fault in enumerate(faults)
        ]


def table(results: list[PhaseResult]) -> str:
    """One row per phase: its answers, its violations, and the RSS (MB) and open files of the web processes
    (gunicorn master + workers) and of the Celery workers, each summed, at the phase's start → at its end."""
    head = (
        "fault",
        "seconds",
        "ops",
        "2xx",
        "503",
        "no answer",
        "violations",
        "web MB",
        "web fds",
        "worker MB",
        "worker fds",
    )
    rows = [head]
    for result in results:
        c = result.counts()
        totals = result.usage_totals()
        resources = []
        for group in ("web", "worker"):
            t = totals.get(group, {"rss_kb_start": 0, "rss_kb_end": 0, "fds_start": 0, "fds_end": 0})
            resources += [
                f"{t['rss_kb_start'] / 1024:.0f}→{t['rss_kb_end'] / 1024:.0f}",
                f"{t['fds_start']}→{t['fds_end']}",
            ]
        rows.append(
            (
                result.fault,
                f"{result.seconds:.0f}",
                str(c["ops"]),
                str(c["2xx"]),
                str(c["503"]),
                str(c["no_answer"]),
                str(c["violations"]),
                *resources,
            )
        )
    total = [sum(r.counts()[k] for r in results) for k in ("ops", "2xx", "503", "no_answer", "violations")]
    rows.append(("total", f"{sum(r.seconds for r in results):.0f}", *map(str, total), "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results: list[PhaseResult]) -> str:
    out = [table(results), ""]
    for result in results:
        kinds = Counter(op.kind for op in result.ops if op.kind != "setup")
        answers = Counter(f"{op.kind}:{op.answer}" for op in result.ops if op.kind != "setup")
        out.append(f"[{result.fault}] operations {dict(kinds)}")
        out.append(f"  answers {dict(sorted(answers.items()))}")
        out += [f"  {note}" for note in result.notes]
        out += usage_lines(result)
        out += [f"  VIOLATION {v}" for v in result.violations[:50]]
        out += [f"  LEAK {leak}" for leak in result.leaks()]
    return "\n".join(out)


def usage_lines(result: PhaseResult) -> list[str]:
    """Each web and worker process: RSS and open files at the phase's start → at its end ("-": not running)."""
    start = {u.pid: u for u in result.usage["start"]}
    end = {u.pid: u for u in result.usage["end"]}
    lines = ["  processes at the start → at the end of the phase:"]
    # Web processes first, then workers; a process that is only in one snapshot (killed, or new) in its group.
    for pid in sorted(dict.fromkeys([*start, *end]), key=lambda pid: (start.get(pid) or end[pid]).group != "web"):
        first, last = start.get(pid), end.get(pid)
        known = first or last
        rss = " → ".join(f"{u.rss_kb / 1024:.1f}" if u else "-" for u in (first, last))
        fds = " → ".join(str(u.fds) if u else "-" for u in (first, last))
        lines.append(f"    {known.group:<6} {known.name:<15} pid {pid:<7}  RSS {rss} MB  open files {fds}")
    return lines
