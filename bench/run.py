"""`make bench`: the production stack on this machine under load, every scenario against the floor (docs/benchmarks.md).

Stack: gunicorn with the workers of deploy/web.sh (3 processes, gthread, 16 threads each; ``--workers``,
``--worker-class``, ``--threads``), PostgreSQL, Redis, a Celery worker, the example tool receiver, an upstream MCP
server (tests/support/mcp_upstream.py, for the MCP scenarios: bench/mcp.py) — each its own process — and wrk as
the load generator (C, one thread, Lua-scripted bodies and open-loop pacing; its own CPU is measured and printed so
it is visibly not the bottleneck). A fresh database (``onceonly_bench``, ``--db-name``) and Redis database (12,
``--redis-db``) are used, and dropped and flushed at the end unless ``--keep-db``.

The CPU-bound wrk scenarios (floor, check-lock, lease, governed calls, MCP calls, agent metrics) run with the
stack's worker model, and the core ones (``COMPARED``) with the other model too, each against its own floor
(measured first and last): first the other model (sync when the stack is gthread, and the reverse;
``--no-compare`` skips it) — a 2 s warm-up and a saturation run of half ``--seconds`` per scenario, no paced runs —
then gunicorn alone is restarted with the stack's model, which gets the full treatment: a warm-up, a saturation run
(requests/s at peak) and three paced runs at 70 % of that peak (p50/p95/p99 of the median-p99 run, errors) — but
for the detector scenarios (``UNPACED``: saturation only, the detectors A/B measures them three times more).
The report puts both models' req/s and ×floor side by side, with gthread/sync. With the
stack's model, after them, ``mcp_direct``: the MCP call sent straight to the upstream (saturation, then paced at
``mcp_call``'s rate), and the gateway's overhead over it.

With each model too, right after its CPU scenarios, the noisy neighbour (bench/contention.py): account A fires 50
concurrent governed calls at a registered tool that answers after 3.5 s (threads that call again at once, or after
the Retry-After of a 429) while account B's check-locks and permit-only governed calls are paced by wrk at 50
req/s — B's p50/p99/max and errors alone and beside A, and A's answers (executed, 429 dispatch_busy by scope,
other). Then, with the stack's model, the keyed run round trip: the official SDK's ``ai.run_and_wait`` 20 times in
sequence (p50/p99 end to end). Then the growth phase: the governed call and check-lock each saturated, then paced
at half that rate at 0, then 10,000,000 decisions and 10,000,000 lock records (``--growth``, e.g. 1M) bulk-inserted
and the same paced again at the same rates, and the overview, agent detail and decision timeline pages are timed
in-process with their query counts. Then the dashboard scenario (bench/dashboard.py):
another account with 1,000,000 decisions over 30 days and the other tables filled, and every dashboard table page
and the overview timed through gunicorn (server time from a bench-only Server-Timing header). Last, the replay
scenario (bench/replay.py): a draft policy's impact preview over 100,000 decisions of one agent, in-process. Then
the export scenario (bench/export.py): 1,000,000 decisions exported as CSV and JSON Lines, each by a child process
whose peak RSS is measured. Last, the retention scenario (bench/partitions.py): two days of 1,000,000 decisions
dropped, a day at a time, while a writer inserts.

    make bench                       # about 25 minutes (the growth phase seeds 10,000,000 rows)
    make bench BENCH_ARGS="--growth 1M"   # the same with a growth phase of 1,000,000 rows, about 14 minutes
    python -m bench.run --quick      # 3 s runs, short noisy neighbour, 5 round trips, no growth or dashboard phase
    make bench BENCH_ARGS="--only noisy_neighbour"         # one scenario (the floor runs with any CPU scenario)
    make bench BENCH_ARGS="--only keyed_run_round_trip --worker-class sync"
    make bench BENCH_ARGS="--only gov_permit --no-compare" # the stack's worker model only
    make bench BENCH_ARGS="--only mcp_call --quick"        # the MCP call, its direct twin and the overhead
    make bench BENCH_ARGS="--only dashboard"               # the dashboard scenario alone (no wrk), ~5 minutes
    make bench BENCH_ARGS="--only dashboard --keep-db"     # … and keep the seeded database for reruns:
    make bench BENCH_ARGS="--only dashboard --reuse-db"    # … which skip the reset and the seeding
    make bench BENCH_ARGS="--only replay"                  # the impact preview alone (no stack started), ~1 minute
    make bench BENCH_ARGS="--only export"                  # 1M decisions exported, peak RSS (no stack), ~3 minutes
    make bench BENCH_ARGS="--only growth"                  # the growth phase alone, at 10,000,000 rows
    make bench BENCH_ARGS="--only verify --growth 10M"     # the log's verification at 10M decisions (no stack)
    make bench BENCH_ARGS="--only retention"               # dropping days of 1M decisions (no stack), ~1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import contention, mcp

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "scenario.lua"
RESULTS = ROOT / "bench" / "results"
DB_NAME = "onceonly_bench"
REDIS_DB = 12
GUNICORN_WORKERS = 3  # as deploy/web.sh (WEB_CONCURRENCY); docs/benchmarks.md has sync runs with 2, 3, 4 and 6
WORKER_CLASSES = ("gthread", "sync")  # deploy/web.sh's model first: the default
WEB_THREADS = 16  # gthread threads per process, as deploy/web.sh (WEB_THREADS; the settings size the slots by it)
CONNECTIONS = 16
PACED_RUNS = 3  # paced runs per scenario at 70 % (median p99 reported)
SEED_ROWS = 1_000_000  # the export scenario's decisions; the verify and retention scenarios' default (--growth)
GROWTH_ROWS = 10_000_000  # the growth phase's default (--growth): issue #24's size
GROWTH = "growth"
GROWTH_SCENARIOS = ("gov_permit", "lock_new", "lock_dup")  # paced at 0 and after the seeding
SCENARIOS = {
    "floor": "Floor: one Redis SET NX, no auth (bench only)",
    "lock_dup": "check-lock, duplicates",
    "lock_new": "check-lock, new keys",
    "lease": "lease acquire + complete",
    "gov_permit": "governed call, permit-only",
    "gov_shadow": "governed call, permit-only, with a shadow candidate",
    "gov_det_off": "governed call, permit-only, detectors off",
    "gov_det_on": "governed call, permit-only, all detectors on",
    "gov_dispatch": "governed call, dispatched to a local tool",
    "mcp_call": "MCP tools/call, governed, forwarded upstream",
    "mcp_dedup": "MCP tools/call, a repeat (dedup hit)",
    "agent_metrics": "GET /v1/agents/{id}/metrics",
}
DASHBOARD = "dashboard"  # not a wrk scenario: bench/dashboard.py
REPLAY = "replay"  # not a wrk scenario: bench/replay.py, in-process (no stack)
EXPORT = "export"  # not a wrk scenario: bench/export.py, 1M decisions exported in a child process (no stack)
RETENTION = "retention"  # not a wrk scenario: bench/partitions.py, days of the decision log dropped (no stack)
VERIFY = "verify"  # not a wrk scenario: bench/verify.py, the log's verification at --growth rows (no stack); named only
NOISY = "noisy_neighbour"  # bench/contention.py, with both worker models
ROUND_TRIP = "keyed_run_round_trip"  # bench/contention.py, with the stack's worker model
OTHER_WARMUP = 2  # the comparison model's warm-up (s); its saturation runs are half --seconds, not paced
COMPARED = ("floor", "lock_dup", "lock_new", "lease", "gov_permit", "gov_dispatch")  # the comparison model's scenarios
UNPACED = ("gov_det_off", "gov_det_on")  # saturation only: the detectors A/B measures them again, three times each
TARGETS = {"lock_dup": 0.8, "lock_new": 0.6, "gov_permit": 0.5}  # × floor requests/s
P99_TARGET_MS = 25.0
GROWTH_TARGET = 1.2
GROWTH_LOAD = 0.5  # the growth phase paces at this share of its own saturation run: headroom for the machine's drift
PAGE_TARGET_MS = 150.0
ROUND_TRIP_TARGET_MS = 200.0  # keyed run round trip p50, once /v1/ai/status and /v1/ai/result long-poll


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_urls() -> tuple[str, str, str]:
    base = (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    if not base.startswith("postgres"):
        sys.exit("make bench needs PostgreSQL: set BENCH_DATABASE_URL=postgresql://user@host:5432/any_db")
    server = base.rsplit("/", 1)[0]
    redis_base = os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if not redis_base.startswith("redis://"):
        sys.exit("make bench needs a Redis server: set BENCH_REDIS_URL=redis://host:6379/0")
    return f"{server}/postgres", f"{server}/{DB_NAME}", f"{redis_base.rsplit('/', 1)[0]}/{REDIS_DB}"


def reset_services(admin_url: str, redis_url: str, *, create: bool = True) -> None:
    """A fresh database and Redis database (``create=False``: only drop and flush, at the end of a run)."""
    import psycopg
    import redis

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        if create:
            conn.execute(f"CREATE DATABASE {DB_NAME}")
    redis.Redis.from_url(redis_url).flushdb()


class Stack:
    """The processes under test, each in its own process group (stopped together at the end). gunicorn alone can be
    restarted with another worker model (``start_web``/``stop_web``), on the same port."""

    def __init__(self, env: dict[str, str], log_dir: Path, workers: int, threads: int) -> None:
        self.env, self.log_dir, self.processes, self.workers, self.threads = env, log_dir, [], workers, threads
        self.worker_class = ""
        self.port, self.receiver_port, self.mcp_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.receiver_url = f"http://127.0.0.1:{self.receiver_port}"
        self.mcp_url = f"http://127.0.0.1:{self.mcp_port}{mcp.PATH}"

    def _start(self, name: str, command: list[str], env: dict[str, str], log_name: str = "") -> subprocess.Popen:
        out = open(self.log_dir / f"{log_name or name}.log", "w")  # noqa: SIM115  (kept open for the process's life)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append((name, process))
        return process

    def start(self, worker_class: str) -> None:
        self._start(
            "receiver",
            [sys.executable, "examples/tool_receiver.py", str(self.receiver_port)],
            # /slow answers after SLOW_SECONDS: the noisy neighbour's tool.
            {**self.env, "TOOL_SECRET": "bench-secret-0123456789", "SLOW_SECONDS": str(contention.SLOW_SECONDS)},
        )
        journal = self.log_dir / "mcp-upstream-journal.jsonl"
        journal.write_text("")  # the upstream's calls of this run (one line each)
        self._start("mcp_upstream", mcp.command(self.mcp_port, journal), self.env)
        self._start(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "worker",
                "--loglevel",
                "WARNING",
                "--concurrency",
                "1",
            ],
            self.env,
        )
        wait_http(f"{self.receiver_url}/_stats")
        wait_http(f"http://127.0.0.1:{self.mcp_port}/")  # any answer: the upstream is up
        self.start_web(worker_class)

    def start_web(self, worker_class: str) -> None:
        """gunicorn with ``worker_class``: gthread with ``threads`` threads per process (deploy/web.sh), or sync (one
        request per process at a time; gunicorn would turn sync with --threads > 1 into gthread)."""
        threads = self.threads if worker_class == "gthread" else 1
        self._start(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "onceonly_site.wsgi:application",
                "--workers",
                str(self.workers),
                "--worker-class",
                worker_class,
                "--threads",
                str(threads),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--backlog",
                "2048",
                "--graceful-timeout",
                "10",
                "--log-level",
                "warning",
            ],
            {**self.env, "WEB_THREADS": str(threads)},  # the settings size the dispatch slots by it
            log_name=f"gunicorn-{worker_class}",
        )
        self.worker_class = worker_class
        wait_http(f"{self.url}/healthz")

    def stop_web(self) -> None:
        web = [(name, process) for name, process in self.processes if name == "gunicorn"]
        self._stop(web)
        self.processes = [entry for entry in self.processes if entry[0] != "gunicorn"]

    def restart_web(self, worker_class: str) -> None:
        log(f"restarting gunicorn: {self.workers} {worker_class} workers")
        self.stop_web()
        self.start_web(worker_class)

    def stop(self) -> None:
        self._stop(self.processes)

    @staticmethod
    def _stop(processes: list[tuple[str, subprocess.Popen]]) -> None:
        for _, process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop; killing it")
                os.killpg(process.pid, signal.SIGKILL)


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def connections_for(scenario: str) -> int:
    """wrk's connections: CONNECTIONS, but no more dispatched calls at once than the per-tool bulkhead admits
    (ONCEONLY_DISPATCH_SLOTS_PER_TOOL, 4): one more concurrent call to the one tool is a cheap 429 dispatch_busy,
    and the scenario's req/s would count refusals instead of dispatches (gthread workers would serve 16 at once).
    The MCP call sent straight to the upstream gets as many as the governed one: the same concurrency at the
    upstream. (A dedup hit is not dispatched and takes no slot: ``mcp_dedup`` has all of them.)"""
    if scenario not in ("gov_dispatch", "mcp_call", mcp.DIRECT):
        return CONNECTIONS
    from django.conf import settings

    return min(CONNECTIONS, settings.ONCEONLY_DISPATCH_SLOTS_PER_TOOL)


def wrk(
    url: str,
    scenario: str,
    *,
    seconds: int,
    api_key: str,
    rate: float = 0,
    tag: str = "",
    timeout: int = 5,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run; returns its counts, latencies (ms) and the CPU wrk itself used (fraction of one core). A request
    unanswered after ``timeout`` seconds is a timeout error (and has no latency); one still unanswered when the run
    ends is not counted at all. An MCP answer that is an error (JSON-RPC, or a tool error: a refused call) is
    answered 200 but counted as an error (``mcp`` in ``error_detail``)."""
    env = {
        **os.environ,
        **(extra_env or {}),
        "SCENARIO": scenario,
        "API_KEY": api_key,
        "RATE": str(int(rate)),
        "THREAD_COUNT": "1",
        "RUN_TAG": tag or f"{scenario}-{time.monotonic_ns()}",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections_for(scenario)),
            "-d",
            f"{seconds}s",
            "--timeout",
            f"{timeout}s",
            "-s",
            str(SCRIPT),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(line for line in result.stdout.splitlines() if line.startswith("WRK_RESULT "))
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    seconds_run = raw["duration_us"] / 1e6
    said = {"mcp_error": raw["mcp_error"]} if raw.get("mcp_error") else {}  # the first MCP error's text
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_run, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": sum(raw["errors"].values()),
        "error_detail": raw["errors"],
        "loadgen_cpu": round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall, 2),
        "connections": connections_for(scenario),
        **said,
    }


def paced_runs(
    url: str, scenario: str, *, seconds: int, api_key: str, rate: float, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """PACED_RUNS paced runs; the one with the median p99 is reported, with every run's p99 beside it.

    One 12-second run's p99 rests on its slowest ~100 requests, and on two shared cores a checkpoint, an autovacuum
    or a Celery beat task landing in that run moves it by 3-5× (seen: 11 ms and 50 ms for the same code). The
    median of three is the run-to-run typical tail; ``p99_runs_ms`` keeps the spread visible."""
    runs = [
        wrk(url, scenario, seconds=seconds, api_key=api_key, rate=rate, extra_env=extra_env) for _ in range(PACED_RUNS)
    ]
    chosen = sorted(runs, key=lambda run: run["p99_ms"])[len(runs) // 2]
    said = next(({"mcp_error": run["mcp_error"]} for run in runs if "mcp_error" in run), {})  # of any run
    return {
        **chosen,
        **said,
        "p99_runs_ms": [run["p99_ms"] for run in runs],
        "errors": sum(run["errors"] for run in runs),
    }


def server_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_by_component(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by each part of the machine: the stack's processes (by process group), PostgreSQL
    and Redis (by command name), wrk, and everything else."""
    groups = {process.pid: name for name, process in stack.processes}
    totals: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, rest = stat.read_text().rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        comm, fields = head.split("(", 1)[1], rest.split()
        group = int(fields[2])
        if group in groups:
            name = groups[group]
        elif comm.startswith("postgres"):
            name = "postgresql"
        elif comm.startswith("redis-server"):
            name = "redis"
        elif comm == "wrk":
            name = "wrk"
        else:
            name = "other"
        # Own time plus reaped children's: a PostgreSQL backend that exits mid-run (CONN_MAX_AGE) moves its CPU
        # into the postmaster's cutime/cstime instead of vanishing from the sum.
        totals[name] = totals.get(name, 0.0) + sum(int(v) for v in fields[11:15]) / tick
    return totals


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request, by component (2 cores = 2,000 ms of CPU per second to share)."""
    return {
        name: round((after[name] - before.get(name, 0.0)) * 1000 / max(requests, 1), 3)
        for name in sorted(after)
        if name != "other" or after[name] > before.get(name, 0.0)
    }


def profile_start(stack: Stack, scenario: str) -> subprocess.Popen | None:
    """py-spy sampling every gunicorn worker during a saturation run (``--profile``); None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log("py-spy is missing (pip install py-spy): no profile")
        return None
    master = next(process.pid for name, process in stack.processes if name == "gunicorn")
    out = stack.log_dir / f"profile-{scenario}.collapsed"
    # --gil: only samples holding the GIL, i.e. Python at work (not waiting on PostgreSQL or Redis).
    command = [
        spy,
        "record",
        "--pid",
        str(master),
        "--subprocesses",
        "--rate",
        "250",
        "--gil",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(stack: Stack, scenario: str, spy: subprocess.Popen, top: int = 25) -> list[str]:
    """The functions holding the most samples (inclusive), from py-spy's collapsed stacks."""
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=30)
    path = stack.log_dir / f"profile-{scenario}.collapsed"
    if not path.exists():
        return []
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        seen = set()
        for frame in stack_text.split(";"):
            name = frame.split(" (", 1)[0] + " (" + frame.split(" (", 1)[-1].split(":")[0].rsplit("/", 1)[-1]
            if name not in seen:
                seen.add(name)
                inclusive[name] = inclusive.get(name, 0) + count
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])
    return [f"{100 * count / max(total, 1):5.1f}%  {name}" for name, count in ranked[:top]]


def run_scenarios(
    stack: Stack, key: str, *, seconds: int, warmup: int, names: list[str], profile: list[str], paced: bool = True
) -> dict[str, dict[str, Any]]:
    """The wrk scenarios ``names`` with the stack's current worker model; ``paced=False``: saturation only (and
    for the UNPACED scenarios always)."""
    results = {}
    for scenario in names:
        title = SCENARIOS[scenario]
        log(f"[{stack.worker_class}] {title}: warm-up {warmup} s, saturation {seconds} s")
        wrk(stack.url, scenario, seconds=warmup, api_key=key, tag=f"warm-{scenario}")
        spy = profile_start(stack, scenario) if scenario in profile else None
        cpu_before = cpu_by_component(stack)
        peak = wrk(stack.url, scenario, seconds=seconds, api_key=key)
        peak["cpu_ms_per_request"] = cpu_per_request(cpu_before, cpu_by_component(stack), peak["requests"])
        if spy is not None:
            peak["profile"] = profile_summary(stack, scenario, spy)
            log("  profile (inclusive share of gunicorn samples):\n    " + "\n    ".join(peak["profile"]))
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in peak["cpu_ms_per_request"].items())
        if not paced or scenario in UNPACED:
            results[scenario] = {"title": title, "peak": peak}
            log(f"  peak {peak['rps']:.0f} req/s (CPU ms per request: {cpu}), errors {peak['errors']}")
            continue
        at_70 = paced_runs(stack.url, scenario, seconds=seconds, api_key=key, rate=0.7 * peak["rps"])
        results[scenario] = {"title": title, "peak": peak, "at_70": at_70, "rate_70": round(0.7 * peak["rps"], 1)}
        log(
            f"  peak {peak['rps']:.0f} req/s (CPU ms per request: {cpu}), at 70 %: "
            f"p50 {at_70['p50_ms']:.1f} ms p99 {at_70['p99_ms']:.1f} ms, errors {peak['errors'] + at_70['errors']}"
        )
    return results


def measure_model(
    stack: Stack, key: str, *, names: list[str], seconds: int, warmup: int, paced: bool, profile: list[str]
) -> dict[str, Any]:
    """The CPU scenarios with the stack's worker model, the floor measured again last (the machine's speed drifts:
    2 shared cores, so each model's ratios use the mean of its first and last floor)."""
    pids = [p.pid for _, p in stack.processes]
    cpu_before = server_cpu(pids)
    scenarios = run_scenarios(stack, key, seconds=seconds, warmup=warmup, names=names, profile=profile, paced=paced)
    floor_end = wrk(stack.url, "floor", seconds=seconds, api_key=key)["rps"]
    floor_runs = [scenarios["floor"]["peak"]["rps"], floor_end]
    return {
        "worker_class": stack.worker_class,
        "threads": stack.threads if stack.worker_class == "gthread" else 1,
        "seconds": seconds,
        "warmup": warmup,
        "paced": paced,
        "scenarios": scenarios,
        "floor_runs": floor_runs,
        "floor_rps": round(statistics.mean(floor_runs), 1),
        "server_cpu_s": round(server_cpu(pids) - cpu_before, 1),
    }


def mcp_direct(stack: Stack, call: dict[str, Any], *, seconds: int, warmup: int) -> dict[str, Any]:
    """The MCP call sent straight to the upstream, in one session (bench/mcp.py): a warm-up, a saturation run, then
    paced runs at ``mcp_call``'s paced rate — the latencies at the same load — and the gateway's overhead."""
    session = {"MCP_SESSION": mcp.open_session(stack.mcp_url)}
    base = stack.mcp_url.removesuffix(mcp.PATH)
    rate = call["rate_70"]
    log(f"[upstream] MCP tools/call straight to the upstream: warm-up {warmup} s, saturation {seconds} s")
    wrk(base, mcp.DIRECT, seconds=warmup, api_key="", tag="warm-mcp-direct", extra_env=session)
    cpu_before = cpu_by_component(stack)
    peak = wrk(base, mcp.DIRECT, seconds=seconds, api_key="", extra_env=session)
    peak["cpu_ms_per_request"] = cpu_per_request(cpu_before, cpu_by_component(stack), peak["requests"])
    same = paced_runs(base, mcp.DIRECT, seconds=seconds, api_key="", rate=rate, extra_env=session)
    direct = {"title": "MCP tools/call straight to the upstream", "peak": peak, "rate": rate, "at_call_rate": same}
    direct["overhead"] = mcp.overhead(call, direct)
    for line in mcp.report(direct, call):
        log(line)
    return direct


def noisy_neighbour(stack: Stack, *, b_key: str, a_key: str, baseline: int, seconds: int, warm: int) -> dict[str, Any]:
    """Account B paced by wrk alone, then beside account A's calls to its slow tool (bench/contention.py)."""
    rate, timeout = contention.B_RATE, int(contention.CLIENT_TIMEOUT)
    log(f"[{stack.worker_class}] noisy neighbour: B alone {baseline} s at {rate} req/s")
    wrk(stack.url, "noisy_b", seconds=1, api_key=b_key, rate=rate, tag="warm-noisy-b")
    alone = wrk(stack.url, "noisy_b", seconds=baseline, api_key=b_key, rate=rate, timeout=timeout)
    log(f"  B alone: p50 {alone['p50_ms']:.1f} ms p99 {alone['p99_ms']:.1f} ms max {alone['max_ms']:.1f} ms")
    log(f"  A: {contention.A_THREADS} threads calling a {contention.SLOW_SECONDS:g} s tool; B beside it {seconds} s")
    neighbour = contention.Neighbour(stack.url, a_key)
    neighbour.start()
    try:
        time.sleep(warm)  # A's calls fill the slots (or the workers) first
        beside = wrk(stack.url, "noisy_b", seconds=seconds, api_key=b_key, rate=rate, timeout=timeout)
    finally:
        a = neighbour.stop()
    log(
        f"  B beside A: p50 {beside['p50_ms']:.1f} ms p99 {beside['p99_ms']:.1f} ms max {beside['max_ms']:.1f} ms, "
        f"errors {beside['errors']}; A: {a['executed']} executed, {a['dispatch_busy']} dispatch_busy "
        f"{a['dispatch_busy_by_scope']}, other {a['other']}, max {a['max_ms']:.0f} ms"
    )
    return {
        "worker_class": stack.worker_class,
        "b_rate": rate,
        "b_scheduled": {"alone": rate * baseline, "beside_a": rate * seconds},
        "b_alone": alone,
        "b_beside_a": beside,
        "a": a,
    }


def django_setup(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()


def prepare(receiver_url: str, mcp_url: str) -> dict[str, str]:
    """The bench account (agency, limits raised so quotas and rate limits never interfere), its key, an operator
    login, the bench agent's policy, the registered local tool and the registered upstream MCP server."""
    from billing.auth import plan_limits_for
    from billing.models import Plan
    from billing.services import account_get_or_create, api_key_create, operator_create
    from governance import services as governance
    from governance import shadow, tools

    Plan.objects.filter(code="agency").update(
        make_monthly_limit=10**12, ai_monthly_limit=10**12, rate_limit_per_second=10**6, rate_limit_burst=10**6
    )
    account, _ = account_get_or_create(name="bench", plan_code="agency")
    key = api_key_create(account=account, label="bench").raw
    operator_create(account=account, email="bench@example.com", password="bench-password-0123", role="owner")
    governance.policy_upsert(
        account_id=account.pk,
        agent_id="bench-agent",
        actor="bench",
        changes={
            "max_actions_per_hour": 10**9,
            "max_spend_usd_per_day": 10**6,
            "blocked_tools": ["delete_*"],
            # The default detectors stay on (their cost is measured), the loop detector's threshold out of reach:
            # mcp_dedup repeats one call thousands of times, which would contain the agent for the rest of the run.
            "detectors": {"call_loop": {"count": 100_000}},
        },
    )
    # gov_shadow's agent: the same policy, and a shadow candidate whose caps are decided on every call (its own
    # counters, in the same Lua step): what shadow mode costs the governed call (docs/policy-changes.md).
    governance.policy_upsert(
        account_id=account.pk,
        agent_id="bench-shadow",
        actor="bench",
        changes={"max_actions_per_hour": 10**9, "max_spend_usd_per_day": 10**6, "blocked_tools": ["delete_*"]},
    )
    shadow.shadow_start(
        account_id=account.pk,
        agent_id="bench-shadow",
        actor="bench",
        policy={
            "max_actions_per_hour": 10**9,
            "max_spend_usd_per_day": 10**6,
            "max_calls_per_tool": {"search.web": 10**9},
            "blocked_tools": ["delete_*", "drop_*"],
        },
    )
    # gov_det_off / gov_det_on (docs/governance.md §"Containment detectors"): the same policy with every detector off,
    # and with every one on in alert mode, thresholds out of reach — what observing each decision costs the call.
    every = ("call_loop", "deny_spike", "spend_velocity", "first_high_risk_tool")
    watched = {
        "call_loop": {"mode": "alert", "count": 100_000},
        "deny_spike": {"mode": "alert", "min_calls": 100_000},
        "spend_velocity": {"mode": "alert", "min_spend_usd": 1_000_000},
        "first_high_risk_tool": {"mode": "alert"},
    }
    for agent_id, detectors in (
        ("bench-det-off", {name: {"mode": "off"} for name in every}),
        ("bench-det-on", watched),
    ):
        governance.policy_upsert(
            account_id=account.pk,
            agent_id=agent_id,
            actor="bench",
            changes={
                "max_actions_per_hour": 10**9,
                "max_spend_usd_per_day": 10**6,
                "blocked_tools": ["delete_*"],
                "detectors": detectors,
            },
        )
    fields, _ = tools.clean(
        {
            "name": "bench.receiver",
            "url": f"{receiver_url}/ok",
            "scope_id": "global",
            "auth": {"type": "hmac_sha256", "secret": "bench-secret-0123456789"},
            "timeout_ms": 2000,
            "max_retries": 0,
        }
    )
    tools.tool_upsert(account_id=account.pk, plan=plan_limits_for(account.pk), fields=fields, actor="bench")
    mcp.register(account, mcp_url)
    return {"key": key, "account_id": str(account.pk)}


def seed(account_id: int, rows: int = SEED_ROWS) -> dict[str, float]:
    """``rows`` decisions (with their hourly rollups) and ``rows`` lock records, bulk-inserted in SQL."""
    from django.db import connection

    from governance.models import Agent

    agent_id = Agent.objects.get(account_id=account_id, agent_id="bench-agent").pk
    timings = {}
    with connection.cursor() as cursor:
        started = time.monotonic()
        cursor.execute(
            """
            INSERT INTO governance_decision (account_id, agent_id, ts, tool, outcome, allowed, policy_reason,
                risk_level, spend_usd, args_hash, run_id, policy_version, latency_ms, dispatch_id, row_hash)
            SELECT %s, %s, now() - interval '2 hours' - (g * interval '2 seconds'), 'seed.tool_' || (g %% 20),
                CASE WHEN g %% 10 = 0 THEN 'blocked' ELSE 'allowed' END, g %% 10 <> 0,
                CASE WHEN g %% 10 = 0 THEN 'tool_blocked' ELSE 'within_budget' END, 'low', 0.01,
                md5(g::text) || md5((g + 1)::text), '', 1, 1, '', ''
            FROM generate_series(1, %s) AS g""",
            [account_id, agent_id, rows],
        )
        cursor.execute(
            """
            INSERT INTO governance_decisionrollup (account_id, agent_id, hour, tool, outcome, count, spend_usd)
            SELECT account_id, agent_id, date_trunc('hour', ts), tool, outcome, count(*), sum(spend_usd)
            FROM governance_decision WHERE account_id = %s AND tool LIKE 'seed.%%' GROUP BY 1, 2, 3, 4, 5
            ON CONFLICT (agent_id, hour, tool, outcome) DO UPDATE SET
                count = governance_decisionrollup.count + excluded.count,
                spend_usd = governance_decisionrollup.spend_usd + excluded.spend_usd""",
            [account_id],
        )
        timings["decisions_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        cursor.execute(
            """
            INSERT INTO idempotency_lockrecord (account_id, key, first_seen_at, expires_at, ttl_seconds, metadata)
            SELECT %s, 'seed:' || g, now() - interval '1 hour', now() + interval '1 day', 86400, NULL
            FROM generate_series(1, %s) AS g""",
            [account_id, rows],
        )
        timings["locks_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        # What a table that grew over months looks like: vacuumed and analysed, its pages flushed — not an
        # autovacuum and a checkpoint of 2M fresh rows running during the measurement.
        cursor.execute("VACUUM (ANALYZE) governance_decision, governance_decisionrollup, idempotency_lockrecord")
        cursor.execute("CHECKPOINT")
        timings["vacuum_s"] = round(time.monotonic() - started, 1)
    connection.close()
    return timings


def time_pages(rounds: int = 15) -> dict[str, dict[str, float]]:
    """Server time (in-process: middleware, views, templates, queries) and query count of the heavy pages."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from governance.models import Agent

    client = Client()
    assert client.login(username="bench@example.com", password="bench-password-0123")
    agent = Agent.objects.get(agent_id="bench-agent").pk  # dashboard URLs name agents by their row
    pages = {"overview": "/", "agent_detail": f"/agents/{agent}/", "decision_timeline": "/decisions/"}
    out = {}
    for name, url in pages.items():
        client.get(url)  # warm caches (templates, connections)
        durations = []
        for _ in range(rounds):
            with CaptureQueriesContext(connection) as queries:
                started = time.perf_counter()
                response = client.get(url)
                durations.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        out[name] = {
            "median_ms": round(statistics.median(durations), 1),
            "max_ms": round(max(durations), 1),
            "queries": len(queries),
        }
    connection.close()
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def report(results: dict[str, Any]) -> str:
    scen, floor, stack = results["scenarios"], results["floor_rps"], results["stack"]
    threads = f", {stack['threads']} threads each" if stack["worker_class"] == "gthread" else ""
    lines = [
        f"CPU scenarios: {stack['gunicorn_workers']} {stack['worker_class']} workers{threads}",
        f"{'scenario':44} {'req/s':>8} {'×floor':>7} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':>6} {'wrk CPU':>7}",
    ]
    for name, row in scen.items():
        ratio = row["peak"]["rps"] / floor
        target = TARGETS.get(name)
        at_70 = row.get("at_70")  # none for a scenario measured at saturation only (UNPACED)
        latencies = (
            f"{at_70['p50_ms']:7.1f} {at_70['p95_ms']:7.1f} {at_70['p99_ms']:7.1f}"
            if at_70
            else f"{'—':>7} " * 2 + f"{'—':>7}"
        )
        lines.append(
            f"{row['title'][:44]:44} {row['peak']['rps']:8.0f} {ratio:7.2f} {latencies} "
            f"{row['peak']['errors'] + (at_70['errors'] if at_70 else 0):6d} {row['peak']['loadgen_cpu']:7.2f}"
            + (f"   target ≥ {target}× {'OK' if ratio >= target else 'MISS'}" if target else "")
        )
    lines.append(
        f"(×floor against the mean of the floor measured first and last: {results['floor_runs']} req/s; "
        f"latencies in ms at 70 % of each scenario's peak, the median-p99 run of {PACED_RUNS}; "
        f"p99 target ≤ {P99_TARGET_MS:g} ms for the API)"
    )
    for name, row in scen.items():
        if name != "floor" and "at_70" in row:
            ok = row["at_70"]["p99_ms"] <= P99_TARGET_MS
            runs = "/".join(f"{v:.1f}" for v in row["at_70"].get("p99_runs_ms", []))
            lines.append(f"  p99 {name:14} {row['at_70']['p99_ms']:6.1f} ms  {'OK' if ok else 'MISS'}   (runs: {runs})")
    return "\n".join(lines)


STACK_CPU = ("gunicorn", "postgresql", "redis", "celery")  # what serves a governed call (not wrk, not "other")
DETECTORS_AB = "detectors_ab"
DETECTOR_TARGET = 0.10  # issue #22: all detectors on cost the governed call ≤ 10 % more than all off


def detectors_ab(stack: Stack, key: str, *, seconds: int, rounds: int = 3) -> dict[str, Any]:
    """The detectors' same-run A/B: saturation runs of ``gov_det_off`` and ``gov_det_on`` in turn (off, on, off, on…
    — the machine's drift lands on both sides), each with the stack's CPU per call (gunicorn, PostgreSQL, Redis,
    Celery: not the load generator, not other processes); the medians and the cost of "on" over "off"."""
    runs: dict[str, list[dict[str, float]]] = {"gov_det_off": [], "gov_det_on": []}
    log(f"[{stack.worker_class}] detectors A/B: {rounds} × (off, on), {seconds} s saturation each")
    for _ in range(rounds):
        for name in runs:
            before = cpu_by_component(stack)
            peak = wrk(stack.url, name, seconds=seconds, api_key=key)
            cpu = cpu_per_request(before, cpu_by_component(stack), peak["requests"])
            stack_ms = round(sum(cpu.get(part, 0.0) for part in STACK_CPU), 3)
            runs[name].append({"rps": peak["rps"], "stack_cpu_ms": stack_ms, "errors": peak["errors"]})
            log(f"  {name}: {peak['rps']:.0f} req/s, {stack_ms:.2f} ms of stack CPU per call")
    medians = {
        name: {field: statistics.median(run[field] for run in done) for field in ("rps", "stack_cpu_ms")}
        for name, done in runs.items()
    }
    off, on = medians["gov_det_off"], medians["gov_det_on"]
    return {
        "runs": runs,
        "median": medians,
        "throughput_cost": round(off["rps"] / max(on["rps"], 0.1) - 1, 4),
        "cpu_cost": round(on["stack_cpu_ms"] / max(off["stack_cpu_ms"], 0.001) - 1, 4),
    }


def rows_label(rows: int) -> str:
    """1000000 → "1M", 250000 → "250k" (the --growth notation)."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % size == 0:
            return f"{rows // size:,}{unit}"
    return f"{rows:,}"


def parse_rows(text: str) -> int:
    """``--growth``: "10M", "250k" or a plain number of rows."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        rows = int(digits.replace("_", "").replace(",", "")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows (e.g. 1M, 250k, 10000000)") from None
    if rows < 1_000:
        raise argparse.ArgumentTypeError("the growth phase seeds at least 1k rows")
    return rows


def report_growth(growth: dict[str, Any]) -> list[str]:
    at = rows_label(growth["rows"])
    lines = [
        f"growth: {growth['rows']:,} decisions and {growth['rows']:,} lock records (seeded in "
        f"{growth['seed']['decisions_s']} s + {growth['seed']['locks_s']} s); at 0 measured in the same phase, "
        "just before the seeding"
    ]
    for name, row in growth["latency"].items():
        for pct in ("p50_ms", "p99_ms"):
            ratio = row["at_n"][pct] / max(row["at_0"][pct], 0.001)
            lines.append(
                f"  {name:14} {pct[:3]} at 0: {row['at_0'][pct]:6.1f} ms  at {at}: {row['at_n'][pct]:6.1f}"
                f" ms  ratio {ratio:4.2f}  target ≤ {GROWTH_TARGET}  {'OK' if ratio <= GROWTH_TARGET else 'MISS'}"
            )
    for name, page in growth["pages_n"].items():
        before = growth["pages_0"][name]
        ok = page["median_ms"] <= PAGE_TARGET_MS and page["queries"] == before["queries"]
        lines.append(
            f"  page {name:18} {page['median_ms']:6.1f} ms at {at} ({before['median_ms']:.1f} ms at 0), "
            f"queries {page['queries']} ({before['queries']} at 0)  {'OK' if ok else 'MISS'}"
        )
    return lines


def growth_phase(stack: Stack, data: dict[str, str], *, rows: int, seconds: int, warmup: int) -> dict[str, Any]:
    """The governed call and both check-lock scenarios paced at 0 and again after ``rows`` decisions and lock records
    were seeded, at the same rates: GROWTH_LOAD of a saturation run made here, just before (not the CPU scenarios'
    peak, measured a quarter of an hour earlier in a full run: on a machine whose speed drifts, 70 % of that peak
    saturated the paced runs at both points — p50 52.7 ms at 0 for a call of 5 ms —, and the ratio measured the
    drift), with the heavy pages timed at both points. Both points are measured in this phase, minutes apart: a
    ratio of runs measured phases apart would carry the machine's drift (seen: check-lock duplicates 2.66× slower
    with the decision table untouched)."""
    key = data["key"]
    rates = {}
    for name in GROWTH_SCENARIOS:
        log(f"[{stack.worker_class}] growth: {name} saturation {seconds} s for its rate")
        wrk(stack.url, name, seconds=warmup, api_key=key, tag=f"warm-growth-{name}")
        rates[name] = round(GROWTH_LOAD * wrk(stack.url, name, seconds=seconds, api_key=key)["rps"], 1)

    def paced(point: str) -> dict[str, Any]:
        out = {}
        for name in GROWTH_SCENARIOS:
            wrk(stack.url, name, seconds=warmup, api_key=key, rate=rates[name], tag=f"warm-{point}-{name}")
            out[name] = paced_runs(stack.url, name, seconds=seconds, api_key=key, rate=rates[name])
            log(f"  {name} at {point}: p50 {out[name]['p50_ms']:.1f} ms p99 {out[name]['p99_ms']:.1f} ms")
        return out

    pages_0 = time_pages()
    at_0 = paced("0")
    log(f"seeding {rows:,} decisions and {rows:,} lock records")
    seeded = seed(int(data["account_id"]), rows)
    log(f"  seeded in {seeded['decisions_s']} s + {seeded['locks_s']} s (+ vacuum {seeded['vacuum_s']} s)")
    pages_n = time_pages()
    at_n = paced(rows_label(rows))
    latency = {name: {"rate": rates[name], "at_0": at_0[name], "at_n": at_n[name]} for name in GROWTH_SCENARIOS}
    return {"rows": rows, "seed": seeded, "latency": latency, "pages_0": pages_0, "pages_n": pages_n}


def report_detectors(results: dict[str, Any]) -> list[str]:
    """The detectors' A/B: median req/s and stack CPU per call with every detector off and on."""
    ab = results.get(DETECTORS_AB)
    if not ab:
        return []
    off, on = ab["median"]["gov_det_off"], ab["median"]["gov_det_on"]
    ok = ab["cpu_cost"] <= DETECTOR_TARGET
    return [
        f"detectors A/B ({len(ab['runs']['gov_det_off'])} × off/on in turn, medians): off {off['rps']:.0f} req/s, "
        f"{off['stack_cpu_ms']:.2f} ms of stack CPU per call; on {on['rps']:.0f} req/s, {on['stack_cpu_ms']:.2f} ms: "
        f"CPU {ab['cpu_cost']:+.1%}, throughput {ab['throughput_cost']:+.1%} "
        f"(target ≤ +{DETECTOR_TARGET:.0%} CPU: {'OK' if ok else 'MISS'})"
    ]


def report_models(results: dict[str, Any]) -> list[str]:
    """The CPU scenarios side by side: each worker model's peak and ×(its own floor), and gthread/sync."""
    other = results["comparison"]
    lines = [
        f"worker models: peak req/s and × each model's own floor (floors: {results['stack']['worker_class']} "
        f"{results['floor_runs']}, {other['worker_class']} {other['floor_runs']} req/s first and last; "
        f"{other['worker_class']}: {other['seconds']} s saturation after {other['warmup']} s warm-up, not paced)",
        f"{'scenario':44} {'gthread':>8} {'×floor':>7} {'sync':>8} {'×floor':>7} {'gthread/sync':>12} {'(×floor)':>8}",
    ]
    for name, row in results["worker_models"].items():
        if "gthread_over_sync" not in row:
            continue
        g, s, r = row["gthread"], row["sync"], row["gthread_over_sync"]
        lines.append(
            f"{SCENARIOS[name][:44]:44} {g['rps']:8.0f} {g['x_floor']:7.2f} {s['rps']:8.0f} {s['x_floor']:7.2f} "
            f"{r['rps']:12.2f} {r['x_floor']:8.2f}"
        )
    return lines


def report_noisy(noisy: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(noisy.values()))
    lines = [
        f"noisy neighbour: account A, {contention.A_THREADS} threads calling a {contention.SLOW_SECONDS:g} s tool "
        f"(429 → sleep Retry-After); account B, check-lock + permit-only call paced at {first['b_rate']} req/s "
        "(latencies in ms)",
        f"{'model':8} {'B alone p50/p99/max':>22} {'B beside A p50/p99/max':>26} {'B errors':>8} {'B answered':>10} "
        f"{'A executed':>10} {'A 429 busy':>10} {'A other':>8} {'A max ms':>8}",
    ]
    for model, row in noisy.items():
        alone, beside, a = row["b_alone"], row["b_beside_a"], row["a"]
        answered = f"{beside['requests']}/{row['b_scheduled']['beside_a']}"
        lines.append(
            f"{model:8} {alone['p50_ms']:7.1f}/{alone['p99_ms']:6.1f}/{alone['max_ms']:7.1f} "
            f"{beside['p50_ms']:9.1f}/{beside['p99_ms']:7.1f}/{beside['max_ms']:8.1f} "
            f"{beside['errors']:8d} {answered:>10} {a['executed']:10d} {a['dispatch_busy']:10d} "
            f"{sum(a['other'].values()):8d} {a['max_ms']:8.0f}"
        )
    for model, row in noisy.items():
        a = row["a"]
        other = ", ".join(f"{kind} {count}" for kind, count in a["other"].items()) or "none"
        lines.append(
            f"  {model}: A's 429 by scope {a['dispatch_busy_by_scope'] or '{}'} (p50 {a['busy_p50_ms']:.0f} ms); "
            f"executed p50 {a['executed_p50_ms']:.0f} ms max {a['executed_max_ms']:.0f} ms; other: {other}; "
            f"B's errors beside A {row['b_beside_a']['error_detail']}, alone {row['b_alone']['errors']}"
        )
    return lines


def report_round_trip(trip: dict[str, Any]) -> list[str]:
    failures = ", ".join(f"{kind} {count}" for kind, count in trip["failures"].items())
    return [
        f"keyed run round trip ({trip['sdk']}, ai.run_and_wait × {trip['runs']} in sequence, "
        f"{trip['worker_class']} workers): p50 {trip['p50_ms']:.0f} ms, p99 {trip['p99_ms']:.0f} ms "
        f"(min {trip['min_ms']:.0f}, max {trip['max_ms']:.0f}); completed {trip['completed']}/{trip['runs']}"
        + (f" ({failures})" if failures else "")
        + f"; target p50 ≤ {ROUND_TRIP_TARGET_MS:g} ms {'OK' if trip['p50_ms'] <= ROUND_TRIP_TARGET_MS else 'MISS'}"
    ]


def report_all(results: dict[str, Any]) -> str:
    lines = [report(results)] if "scenarios" in results else []
    lines += report_detectors(results)
    if "worker_models" in results:
        lines += report_models(results)
    if mcp.DIRECT in results:
        lines += mcp.report(results[mcp.DIRECT], results["scenarios"]["mcp_call"])
    if NOISY in results:
        lines += report_noisy(results[NOISY])
    if ROUND_TRIP in results:
        lines += report_round_trip(results[ROUND_TRIP])
    if GROWTH in results:
        lines += report_growth(results[GROWTH])
    if "dashboard" in results:
        from bench import dashboard

        lines += dashboard.report(results["dashboard"])
    if REPLAY in results:
        from bench import replay

        lines += replay.report(results[REPLAY])
    if EXPORT in results:
        from bench import export

        lines += export.report(results[EXPORT])
    if RETENTION in results:
        from bench import partitions

        lines += partitions.report(results[RETENTION])
    if VERIFY in results:
        from bench import verify

        lines += verify.report(results[VERIFY])
    return "\n".join(lines)


@dataclass(frozen=True)
class Phases:
    """What a run measures, from ``--only``, ``--quick`` and ``--no-compare``."""

    cpu: list[str]  # wrk CPU scenarios, the floor first (empty: none)
    noisy: bool
    round_trip: bool
    growth: bool
    dashboard: bool
    replay: bool
    export: bool
    verify: bool
    retention: bool
    models: list[str]  # worker models in the order measured; the stack's own (``--worker-class``) last

    @classmethod
    def of(cls, options: argparse.Namespace, only: list[str]) -> Phases:
        picked = [name for name in SCENARIOS if name != "floor" and (not only or name in only)]
        cpu = ["floor", *picked] if not only or set(only) & set(SCENARIOS) else []
        noisy = not only or NOISY in only
        other = next(model for model in WORKER_CLASSES if model != options.worker_class)
        compare = not options.no_compare and bool(cpu or noisy)
        return cls(
            cpu=cpu,
            noisy=noisy,
            round_trip=not only or ROUND_TRIP in only,
            growth=GROWTH in only or (not options.quick and not only),
            dashboard=not options.quick and (not only or DASHBOARD in only),
            replay=REPLAY in only or (not only and not options.quick),
            export=EXPORT in only or (not only and not options.quick),
            verify=VERIFY in only,
            retention=RETENTION in only or (not only and not options.quick),
            models=[other, options.worker_class] if compare else [options.worker_class],
        )

    @property
    def api(self) -> bool:
        return bool(self.cpu) or self.noisy or self.round_trip or self.growth


def side_by_side(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per CPU scenario, each worker model's peak req/s and its ratio to that model's own floor, and gthread/sync."""
    rows: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        row: dict[str, Any] = {}
        for model, measured in models.items():
            if scenario in measured["scenarios"]:
                rps = measured["scenarios"][scenario]["peak"]["rps"]
                row[model] = {"rps": rps, "x_floor": round(rps / measured["floor_rps"], 3)}
        if len(row) == len(WORKER_CLASSES):
            gthread, sync = row["gthread"], row["sync"]
            row["gthread_over_sync"] = {
                "rps": round(gthread["rps"] / max(sync["rps"], 0.1), 2),
                "x_floor": round(gthread["x_floor"] / max(sync["x_floor"], 0.001), 2),
            }
        if row:
            rows[scenario] = row
    return rows


def api_phase(
    stack: Stack,
    results: dict[str, Any],
    *,
    options: argparse.Namespace,
    phases: Phases,
    seconds: int,
    warmup: int,
) -> None:
    """The wrk scenarios with each worker model (the stack's own last, at full length, then nothing restarts it),
    the noisy neighbour with each, the keyed run round trip, and (full runs) the growth phase; into ``results``."""
    data = prepare(stack.receiver_url, stack.mcp_url)
    neighbour = contention.prepare(stack.receiver_url) if phases.noisy else None
    from django.db import connection

    connection.close()
    primary = options.worker_class
    noisy_lengths = (3, 6, 2) if options.quick else (8, 20, 3)  # B alone, B beside A, A's head start (s)
    measured: dict[str, dict[str, Any]] = {}
    for model in phases.models:
        if stack.worker_class != model:
            stack.restart_web(model)
        own = model == primary
        if phases.cpu:
            measured[model] = measure_model(
                stack,
                data["key"],
                names=phases.cpu if own else [name for name in phases.cpu if name in COMPARED],
                seconds=seconds if own else max(3, seconds // 2),
                warmup=warmup if own else min(warmup, OTHER_WARMUP),
                paced=own,
                profile=options.profile.split(",") if own else [],
            )
            if own and "mcp_call" in phases.cpu:
                call = measured[model]["scenarios"]["mcp_call"]
                results[mcp.DIRECT] = mcp_direct(stack, call, seconds=seconds, warmup=warmup)
            if own and {"gov_det_off", "gov_det_on"} <= set(phases.cpu):
                results[DETECTORS_AB] = detectors_ab(stack, data["key"], seconds=seconds)
        if neighbour is not None:
            baseline, beside, warm = noisy_lengths
            results.setdefault(NOISY, {})[model] = noisy_neighbour(
                stack, b_key=data["key"], a_key=neighbour["key"], baseline=baseline, seconds=beside, warm=warm
            )
    if phases.cpu:
        mine = measured[primary]
        results["scenarios"] = mine["scenarios"]
        results["floor_runs"], results["floor_rps"] = mine["floor_runs"], mine["floor_rps"]
        results["server_cpu_s"] = mine["server_cpu_s"]
        if len(measured) > 1:
            other = next(model for model in measured if model != primary)
            results["comparison"] = measured[other]  # saturation only, shorter: see its seconds and warmup
            results["worker_models"] = side_by_side(measured)
    if phases.round_trip:
        runs = options.round_trips or (5 if options.quick else contention.ROUND_TRIPS)
        log(f"[{stack.worker_class}] keyed run round trip: SDK run_and_wait × {runs}, in sequence")
        trips = contention.round_trips(stack.url, data["key"], runs)
        results[ROUND_TRIP] = {"worker_class": stack.worker_class, **trips}
        log(f"  p50 {trips['p50_ms']:.0f} ms p99 {trips['p99_ms']:.0f} ms, {trips['completed']}/{runs} completed")
    if phases.growth:
        results[GROWTH] = growth_phase(stack, data, rows=options.growth or GROWTH_ROWS, seconds=seconds, warmup=warmup)


def main() -> None:
    global DB_NAME, REDIS_DB  # --db-name, --redis-db
    known = [*SCENARIOS, NOISY, ROUND_TRIP, GROWTH, DASHBOARD, REPLAY, EXPORT, VERIFY, RETENTION]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s runs, a shorter noisy neighbour, 5 round trips, no growth phase"
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each saturation and paced run")
    parser.add_argument("--workers", type=int, default=GUNICORN_WORKERS, help="gunicorn worker processes")
    parser.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=WORKER_CLASSES[0],
        help="the stack's worker model (default gthread, as deploy/web.sh); the other one is measured first for "
        "comparison",
    )
    parser.add_argument("--threads", type=int, default=WEB_THREADS, help="threads per gthread worker (WEB_THREADS)")
    parser.add_argument(
        "--no-compare", action="store_true", help="measure with --worker-class only (no second worker model)"
    )
    parser.add_argument(
        "--round-trips",
        type=int,
        default=0,
        help=f"keyed run round trips (default {contention.ROUND_TRIPS}; 5 --quick)",
    )
    parser.add_argument("--profile", default="", help="comma-separated scenarios to sample with py-spy")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios of {', '.join(known)} (the floor runs with any CPU scenario)",
    )
    parser.add_argument(
        "--growth",
        type=parse_rows,
        default=None,
        help=f"rows the growth phase seeds (decisions and lock records; default {rows_label(GROWTH_ROWS)}), the "
        f"verify scenario's decisions and, with --only retention, the retention scenario's decisions per day "
        f"(default {rows_label(SEED_ROWS)}); e.g. 1M",
    )
    parser.add_argument("--db-name", default=os.environ.get("BENCH_DB_NAME", DB_NAME), help="PostgreSQL database")
    parser.add_argument(
        "--redis-db", type=int, default=int(os.environ.get("BENCH_REDIS_DB", REDIS_DB)), help="Redis database number"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the database and Redis keys at the end")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="no reset; the dashboard scenario reuses the seeded account of a database kept with --keep-db",
    )
    parser.add_argument("--rounds", type=int, default=30, help="sequential requests per dashboard page")
    options = parser.parse_args()
    DB_NAME, REDIS_DB = options.db_name, options.redis_db
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack (finally below) when terminated
    only = [name for name in options.only.split(",") if name]
    unknown = set(only) - set(known)
    if unknown:
        sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    phases = Phases.of(options, only)
    if shutil.which("wrk") is None and (phases.cpu or phases.noisy):
        sys.exit("wrk is missing: apt-get install -y wrk")
    seconds, warmup = (3, 1) if options.quick else (options.seconds, 3)
    admin_url, db_url, redis_url = service_urls()
    if options.reuse_db:
        log(f"reusing database {DB_NAME} and Redis db {REDIS_DB}")
    else:
        log(f"fresh database {DB_NAME} and Redis db {REDIS_DB}")
        reset_services(admin_url, redis_url)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench-secret-key-0123456789-not-for-production",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "ONCEONLY_ALLOW_PRIVATE_TOOL_URLS": "1",
        "LOG_LEVEL": "WARNING",
        "ONCEONLY_EMBEDDED_REDIS_AUTOSTART": "0",
        "ONCEONLY_STATIC_FROM_FINDERS": "1",
    }  # (no collectstatic: static files are never requested, pages name them through the finders)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    log_dir = ROOT / "var" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(env, log_dir, options.workers, options.threads)
    django_setup(env)
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "stack": {
            "gunicorn_workers": options.workers,
            "worker_class": options.worker_class,
            "threads": options.threads if options.worker_class == "gthread" else 1,
            "models": phases.models,
            "connections": CONNECTIONS,
            "wrk_threads": 1,
            "seconds": seconds,
        },
    }
    try:
        if phases.api or phases.dashboard:  # the replay scenario runs in this process and needs no stack
            stack.start(phases.models[0])
        if phases.api:
            api_phase(stack, results, options=options, phases=phases, seconds=seconds, warmup=warmup)
        if phases.dashboard:
            from bench import dashboard

            results["dashboard"] = dashboard.run(stack.url, rounds=options.rounds, reuse=options.reuse_db)
        if phases.replay:
            from bench import replay

            results[REPLAY] = replay.run()
        if phases.export:
            from bench import export

            results[EXPORT] = export.run(reuse=options.reuse_db)
        if phases.verify:
            from bench import verify

            results[VERIFY] = verify.run(options.growth or SEED_ROWS)
        if phases.retention:
            from bench import partitions

            rows_per_day = options.growth if RETENTION in only and options.growth else SEED_ROWS
            results[RETENTION] = partitions.run(rows_per_day)
    finally:
        stack.stop()
        if not options.keep_db:
            log(f"dropping database {DB_NAME} and flushing Redis db {REDIS_DB} (--keep-db keeps them)")
            reset_services(admin_url, redis_url, create=False)
    results["wall_s"] = round(time.monotonic() - started, 1)
    table = report_all(results)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    partial = (
        options.quick
        or only
        or options.no_compare
        or (options.workers, options.worker_class, options.threads)
        != (GUNICORN_WORKERS, WORKER_CLASSES[0], WEB_THREADS)
    )
    alone = {DASHBOARD: "-dashboard", EXPORT: "-export", GROWTH: "-growth", VERIFY: "-verify", RETENTION: "-retention"}
    named = alone.get(only[0]) if len(only) == 1 and (only == [DASHBOARD] or not options.quick) else None
    suffix = named or ("-partial" if partial else "")
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}{suffix}.json"
    out.write_text(json.dumps({**results, "table": table.splitlines()}, indent=2) + "\n")
    log(f"wrote {out.relative_to(ROOT)} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
