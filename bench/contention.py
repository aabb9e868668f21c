"""The contention scenarios of `make bench` (bench/run.py; docs/benchmarks.md): what one account's slow tool does
to everyone else, and how long a keyed run takes through the official SDK.

``noisy_neighbour`` — account A ("noisy-a") has a registered tool that answers after ``SLOW_SECONDS`` (the example
receiver's ``/slow``, started with ``SLOW_SECONDS=3.5``) and fires ``A_THREADS`` governed calls to it at once: each
thread calls again as soon as it has an answer, and sleeps the ``Retry-After`` of a 429 first. Every call carries
``X-Request-Start`` with the moment it was sent, as the nginx of deploy/nginx/ adds it, so a call that waited in the
web server's queue has that much less of its dispatch deadline. Meanwhile account B (the bench account) runs
check-locks with new keys and permit-only governed calls, alternately, paced by wrk (``noisy_b`` in
bench/scenario.lua) — first alone (the baseline), then beside A. Reported: B's p50/p99/max and errors in both, and
A's answers (executed, 429 dispatch_busy by scope, anything else) with their times.

``keyed_run_round_trip`` — the official SDK, unmodified (the ``onceonly`` package): ``client.ai.run_and_wait(key=
<unique>, metadata={"task": "demo.echo"})`` in sequence; each round trip is the run's lease, the Celery worker
running ``demo.echo`` and completing it, and the SDK's status polls until it sees the result.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import httpx

SLOW_SECONDS = 3.5  # the slow tool's answer time (the receiver's SLOW_SECONDS)
SLOW_TOOL = "bench.slow"
A_ACCOUNT = "noisy-a"
A_AGENT = "noisy-agent"
A_THREADS = 50
B_RATE = 50  # B's requests per second (half check-locks with new keys, half permit-only governed calls)
CLIENT_TIMEOUT = 30.0  # A's client timeout; B's wrk timeout too (a starved request is measured, not cut at 5 s)
ROUND_TRIPS = 20


def prepare(receiver_url: str) -> dict[str, str]:
    """Account A: its key, its agent's policy (limits out of the way) and the slow registered tool."""
    from billing.auth import plan_limits_for
    from billing.services import account_get_or_create, api_key_create
    from governance import services as governance
    from governance import tools

    account, _ = account_get_or_create(name=A_ACCOUNT, plan_code="agency")
    key = api_key_create(account=account, label="noisy-a").raw
    governance.policy_upsert(
        account_id=account.pk,
        agent_id=A_AGENT,
        actor="bench",
        changes={"max_actions_per_hour": 10**9, "max_spend_usd_per_day": 10**6},
    )
    fields, _ = tools.clean(
        {
            "name": SLOW_TOOL,
            "url": f"{receiver_url}/slow",
            "scope_id": "global",
            "auth": {"type": "hmac_sha256", "secret": "bench-secret-0123456789"},
            "timeout_ms": 4000,
            "max_retries": 0,
        }
    )
    tools.tool_upsert(account_id=account.pk, plan=plan_limits_for(account.pk), fields=fields, actor="bench")
    return {"key": key, "account_id": str(account.pk)}


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank (of 20 values, p99 is the largest)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class Neighbour:
    """Account A: ``threads`` threads calling the slow tool again and again until ``stop``."""

    def __init__(self, base_url: str, api_key: str, threads: int = A_THREADS) -> None:
        self.base_url, self.api_key, self.threads = base_url, api_key, threads
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[str, float]] = []  # (kind, seconds)
        self.workers: list[threading.Thread] = []
        self.tag = uuid.uuid4().hex[:8]
        self.started = self.ended = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True, name=f"noisy-a-{n}")
            thread.start()
            self.workers.append(thread)

    def stop(self) -> dict[str, Any]:
        """Stop calling; wait for the calls in flight (each ends within its client timeout); the summary."""
        self.stopping.set()
        for thread in self.workers:
            thread.join(CLIENT_TIMEOUT + 5)
        self.ended = time.monotonic()
        return self.summary()

    def _loop(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=CLIENT_TIMEOUT) as client:
            i = 0
            while not self.stopping.is_set():
                i += 1
                body = {"agent_id": A_AGENT, "tool": SLOW_TOOL, "args": {"n": f"{self.tag}:{n}:{i}"}}
                sent = time.monotonic()
                pause = 0.0
                try:
                    # What nginx adds (deploy/nginx/): the dispatch deadline counts from here.
                    response = client.post("/v1/ai/run", json=body, headers={"X-Request-Start": f"t={time.time():.3f}"})
                    kind, pause = self._classify(response)
                except httpx.HTTPError as exc:
                    kind, pause = f"transport {type(exc).__name__}", 1.0
                with self.lock:
                    self.answers.append((kind, time.monotonic() - sent))
                if pause:
                    self.stopping.wait(pause)

    @staticmethod
    def _classify(response: httpx.Response) -> tuple[str, float]:
        """(kind of answer, seconds to wait before the next call)."""
        try:
            data = response.json()
        except ValueError:
            data = {}
        retry = response.headers.get("Retry-After", "")
        pause = float(retry) if retry.isdigit() else 0.0
        if response.status_code == 200 and isinstance(data, dict):
            return str(data.get("decision")), 0.0
        detail = data.get("detail") if isinstance(data, dict) else None
        error = detail.get("error") if isinstance(detail, dict) else None
        if response.status_code == 429 and error == "dispatch_busy":
            return f"dispatch_busy:{detail.get('scope')}", pause or 1.0
        # Anything else is reported as it came; a fast error must not become a busy loop of 50 threads.
        return f"{response.status_code} {error or ''}".strip(), pause or 0.2

    def summary(self) -> dict[str, Any]:
        with self.lock:
            answers = list(self.answers)
        executed = [s for kind, s in answers if kind == "executed"]
        busy = [s for kind, s in answers if kind.startswith("dispatch_busy")]
        by_scope: dict[str, int] = {}
        other: dict[str, int] = {}
        for kind, _ in answers:
            if kind.startswith("dispatch_busy:"):
                scope = kind.split(":", 1)[1]
                by_scope[scope] = by_scope.get(scope, 0) + 1
            elif kind != "executed":
                other[kind] = other.get(kind, 0) + 1
        return {
            "threads": self.threads,
            "seconds": round(self.ended - self.started, 1),
            "answers": len(answers),
            "executed": len(executed),
            "dispatch_busy": len(busy),
            "dispatch_busy_by_scope": by_scope,
            "other": other,
            "max_ms": round(max((s for _, s in answers), default=0.0) * 1000, 1),
            "executed_p50_ms": round(percentile(executed, 50) * 1000, 1),
            "executed_max_ms": round(max(executed, default=0.0) * 1000, 1),
            "busy_p50_ms": round(percentile(busy, 50) * 1000, 1),
            "busy_max_ms": round(max(busy, default=0.0) * 1000, 1),
        }


def round_trips(base_url: str, api_key: str, runs: int = ROUND_TRIPS) -> dict[str, Any]:
    """``runs`` keyed runs through the SDK's run_and_wait, one after the other; end-to-end times in ms."""
    from onceonly import OnceOnly, __version__

    tag = uuid.uuid4().hex[:8]
    times: list[float] = []
    failures: dict[str, int] = {}
    client = OnceOnly(api_key=api_key, base_url=f"{base_url}/v1")  # the SDK's defaults: 5 s timeout, fail-open
    try:
        for n in range(runs):
            started = time.perf_counter()
            try:
                result = client.ai.run_and_wait(key=f"bench-rt:{tag}:{n}", metadata={"task": "demo.echo"})
                outcome = result.status if result.status == "completed" else f"{result.status} {result.error_code}"
            except Exception as exc:  # the SDK's errors are all reported, none stops the bench
                outcome = f"raised {type(exc).__name__}"
            elapsed = (time.perf_counter() - started) * 1000
            times.append(elapsed)
            if outcome != "completed":
                failures[outcome] = failures.get(outcome, 0) + 1
    finally:
        client.close()
    return {
        "sdk": f"onceonly {__version__}",
        "runs": runs,
        "completed": runs - sum(failures.values()),
        "failures": failures,
        "p50_ms": round(percentile(times, 50), 1),
        "p99_ms": round(percentile(times, 99), 1),
        "min_ms": round(min(times, default=0.0), 1),
        "max_ms": round(max(times, default=0.0), 1),
        "ms": [round(t, 1) for t in times],
    }
