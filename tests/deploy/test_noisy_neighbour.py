"""No tenant's slow tool can stall anyone else (issue #26), on the production stack with real processes on loopback.

The stack is started as deploy/ documents it, from this checkout: ``deploy/manage.sh migrate`` on a PostgreSQL
database of the test's own, then ``deploy/web.sh`` (gunicorn, gthread workers: WEB_CONCURRENCY 3 × WEB_THREADS 16 by
default) and ``deploy/worker.sh`` (Celery) with an environment file made from deploy/onceonly.env.example
(ONCEONLY_ENV_FILE) and a Redis database of its own; every other setting is the default. The accounts' API keys come
from ``deploy/manage.sh create_api_key``. The tool (tests/support/slow_tool.py, a process of its own) answers every
request after 3.5 s and logs the kernel's receive time, the ``webhook-id`` header and the body's ``args.call``. The
test plays the TLS proxy's part (deploy/nginx/onceonly.conf): every request carries ``X-Forwarded-Proto: https`` and
``X-Request-Start: t=<send time>``, as nginx sets them.

For WARMUP + WINDOW seconds, all at once (every thread and B's process start at one agreed moment):

- **A** (agency plan, the slow tool registered) runs 50 threads of governed calls to that tool. Each thread is the
  SDK built with ``max_retries_429``, written out so that every HTTP request is measured on its own: a call
  answered 200 is followed at once by the next one; a call refused ``429`` is retried after exactly its
  ``Retry-After`` (what the SDK's retry loop sleeps, without jitter). Every request is a new call with a unique
  ``args.call``, so the tool's log says which call each request it received belongs to, and no call is
  deduplicated into another.
- **B** (agency, another account) runs check-locks and permit-only governed calls (a tool it never registered)
  from 4 threads, paced (a short pause after each answer), each one timed — in a process of its own
  (tests/support/paced_client.py), so that A's 50 client threads waking together do not hold the interpreter lock
  B's timer runs under: what is measured is the server.
- **C** (agency) keeps keyed runs in flight with the SDK's ``ai.run_and_wait`` (``demo.sleep`` of 1 s, run by the
  Celery worker), which waits on ``/v1/ai/status`` and ``/v1/ai/result``.

The first WARMUP seconds are not held to the bounds: they are each web process's first requests, which pay for
imports done on first use, the dispatch client's TLS context, a database connection per new thread and the
rebuild of the Redis counters (a cold start, not a neighbour). They are printed apart.

Then: B's p99 ≤ 50 ms and every B request answered 200; every A call answered within the dispatch deadline
(ONCEONLY_DISPATCH_DEADLINE_SECONDS, 4 s by default) + 0.5 s of being sent, executed or refused ``429
dispatch_busy``, with some of each; every request the tool received (warm-up included) belongs to an A call
answered 200, carries that call's dispatch id (the decision log's ``dispatch_id``) as its ``webhook-id``, and was
received before the call's answer was back here (kernel stamp against ``time.time_ns()``, both CLOCK_REALTIME);
no refused call reached the tool; C's keyed runs completed. A summary is printed (``-s`` shows it), with B's p99
apart for the moments A's refused calls come back together (their Retry-After ends at the same second) and the
rest; the raw records are left in test-artifacts/noisy-neighbour/load.json.

The "before" of the issue: the same test with sync workers, ``GUNICORN_ARGS="--worker-class sync --threads 1"``
(gunicorn's last option wins; the test passes GUNICORN_ARGS, WEB_CONCURRENCY and WEB_THREADS through), where a
process waiting on the tool serves nobody else: B's requests then wait seconds.

Needs PostgreSQL and a Redis server (DATABASE_URL=postgresql://…, REDIS_URL=redis://…; CI's PostgreSQL pass): the
stack's database is DATABASE_URL's name + ``_stack`` and its Redis database the tests' (ONCEONLY_TEST_REDIS_DB) + 1,
dropped and flushed at the end. The processes' logs are left in test-artifacts/noisy-neighbour/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from django.conf import settings

from onceonly_site.env import redis_url_with_db
from tests.deploy.test_production import Stack, edited_env_file
from tests.support.governance import TOOL_SECRET
from tests.support.servers import ROOT, free_port

DATABASE_URL = os.environ.get("DATABASE_URL", "")
ON_SERVERS = DATABASE_URL.startswith(("postgres://", "postgresql://")) and os.environ.get("REDIS_URL", "").startswith(
    ("redis://", "rediss://")
)

TOOL_SECONDS = 3.5  # every tool request takes this long
DEADLINE = 4.0  # ONCEONLY_DISPATCH_DEADLINE_SECONDS's default (the stack runs with the defaults)
ANSWERED_WITHIN = DEADLINE + 0.5
B_P99_MS = 50.0
WARMUP = 4.0  # seconds of load first, not measured: every web process's first requests (see the docstring)
WINDOW = 12.0  # seconds of load measured after it
A_THREADS, B_THREADS, C_THREADS = 50, 4, 3
B_PAUSE = 0.05  # after each of B's answers
BURST, CROWD_MS = 5, 150.0  # the summary's "A's calls coming back together": ≥ BURST sent within ± CROWD_MS
AGENT_A, TOOL_A = "report-agent", "reports.generate"
AGENT_B, TOOL_B = "notify-agent", "notify.send"  # never registered: permit-only
ARTIFACTS = ROOT / "test-artifacts" / "noisy-neighbour"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not ON_SERVERS,
        reason="needs PostgreSQL and a Redis server (DATABASE_URL=postgresql://…, REDIS_URL=redis://…): "
        "CI's PostgreSQL pass runs it",
    ),
]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class Services:
    database_url: str
    redis_url: str


@pytest.fixture
def services():
    """The stack's own PostgreSQL database and Redis database: made fresh, dropped and flushed after."""
    base = urlsplit(DATABASE_URL).path.lstrip("/") or "onceonly"
    name = f"{base}_stack"
    redis_url = redis_url_with_db(os.environ["REDIS_URL"], (settings.TEST_REDIS_DB + 1) % 16)
    admin = psycopg.connect(with_database(DATABASE_URL, "postgres"), autocommit=True, connect_timeout=5)
    store = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # an earlier run that was killed
    admin.execute(f'CREATE DATABASE "{name}"')
    store.flushdb()
    try:
        yield Services(with_database(DATABASE_URL, name), redis_url)
    finally:
        store.flushdb()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        store.close()


def stack_env(tmp_path: Path, services: Services, port: int) -> dict[str, str]:
    """An operator's shell (nothing of this test run's configuration) with ONCEONLY_ENV_FILE pointing at the example
    file as an operator edits it."""
    env_file = tmp_path / "onceonly.env"
    env_file.write_text(
        edited_env_file(
            ROOT / "deploy" / "onceonly.env.example",
            {
                "SECRET_KEY": secrets.token_urlsafe(50),
                "DATABASE_URL": services.database_url,
                "REDIS_URL": services.redis_url,
                "ALLOWED_HOSTS": "127.0.0.1",
                "CSRF_TRUSTED_ORIGINS": "https://127.0.0.1",
                "ONCEONLY_FIELD_ENCRYPTION_KEY": secrets.token_urlsafe(40),
                "ONCEONLY_VAR_DIR": str(tmp_path / "var"),
                "ONCEONLY_ALLOW_PRIVATE_TOOL_URLS": "1",  # the tool listens on loopback
            },
        )
    )
    env_file.chmod(0o600)
    ours = {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "VIRTUAL_ENV", "ALLOWED_HOSTS"}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "ONCEONLY_", "CELERY_")) and key not in ours
    }
    env.update(
        ONCEONLY_ENV_FILE=str(env_file),
        ONCEONLY_BIND=f"127.0.0.1:{port}",
        ONCEONLY_VENV=sys.prefix,  # the virtualenv running this test (deploy/_common.sh defaults to .venv)
    )
    return env


def proxied(request: httpx.Request) -> None:
    """What nginx adds (deploy/nginx/onceonly.conf): the scheme, and when it received the request."""
    request.headers["X-Forwarded-Proto"] = "https"
    request.headers["X-Request-Start"] = f"t={time.time():.3f}"


def client(base: str, key: str, timeout: float, connections: int = 20) -> httpx.Client:
    return httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        event_hooks={"request": [proxied]},
    )


def wait_for(predicate, what: str, stack: Stack, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.alive()
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def api_keys(stack: Stack, names: list[str]) -> list[str]:
    """``deploy/manage.sh create_api_key`` for each account (agency plan), side by side; the raw keys, in order."""
    runs = [
        subprocess.Popen(
            ["deploy/manage.sh", "create_api_key", "--account", name, "--plan", "agency", "--label", name],
            cwd=ROOT,
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    keys = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-3000:]
        keys.append(out.strip().splitlines()[-1])
    return keys


@dataclass
class Call:
    """One HTTP request of A, timed here."""

    token: str
    sent_ns: int
    answered_ns: int
    seconds: float
    status: int
    body: dict[str, Any]
    retry_after: str | None
    measured: bool  # sent after the warm-up


@dataclass
class Load:
    a: list[Call] = field(default_factory=list)
    b: list[dict[str, Any]] = field(default_factory=list)  # tests/support/paced_client.py's records
    c: list[tuple[str, str, bool]] = field(default_factory=list)  # key, status (or the exception), measured
    errors: list[str] = field(default_factory=list)


def json_or_text(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"text": response.text[:300]}
    return body if isinstance(body, dict) else {"json": body}


def run_load(base: str, keys: list[str]) -> Load:
    """A's and C's threads here, B's in a process of its own; all start at one moment (epoch seconds)."""
    from onceonly import OnceOnly

    key_a, key_b, key_c = keys
    load = Load()
    lock = threading.Lock()
    start = time.time() + 1.0  # every thread and B's process ready by then
    measure_from, end = start + WARMUP, start + WARMUP + WINDOW
    b_config = {
        "base": base,
        "key": key_b,
        "threads": B_THREADS,
        "pause": B_PAUSE,
        "start": start,
        "measure_from": measure_from,
        "end": end,
        "agent_id": AGENT_B,
        "tool": TOOL_B,
        "headers": {"X-Forwarded-Proto": "https"},
    }
    tenant_b = subprocess.Popen(
        [sys.executable, "-m", "tests.support.paced_client", json.dumps(b_config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    http_a = client(base, key_a, timeout=10, connections=A_THREADS)

    def tenant_a(index: int) -> None:
        time.sleep(max(0.0, start - time.time()))
        n = 0
        while time.time() < end:
            n += 1
            token = f"a{index}-{n}"
            sent_ns, began = time.time_ns(), time.monotonic()
            try:
                response = http_a.post(
                    "/v1/ai/run", json={"agent_id": AGENT_A, "tool": TOOL_A, "args": {"call": token}}
                )
                status, body, retry = response.status_code, json_or_text(response), response.headers.get("Retry-After")
            except httpx.HTTPError as exc:
                status, body, retry = 0, {"error": repr(exc)}, None
            seconds = time.monotonic() - began
            call = Call(token, sent_ns, time.time_ns(), seconds, status, body, retry, sent_ns >= measure_from * 1e9)
            with lock:
                load.a.append(call)
            if status == 429:  # the SDK with max_retries_429: sleep Retry-After, then the call again
                time.sleep(max(0.0, min(float(retry or 1), end - time.time())))
            elif status != 200:
                return

    def tenant_c(index: int) -> None:
        sdk_http = client(f"{base}/v1", key_c, timeout=5)
        sdk = OnceOnly(api_key=key_c, base_url=f"{base}/v1", fail_open=False, sync_client=sdk_http)
        time.sleep(max(0.0, start - time.time()))
        n = 0
        try:
            while time.time() < end:
                n += 1
                key, measured = f"c{index}-{n}", time.time() >= measure_from
                try:
                    result = sdk.ai.run_and_wait(
                        key=key, ttl=60, metadata={"task": "demo.sleep", "params": {"seconds": 1}}, timeout=30
                    )
                    outcome = result.status
                    if getattr(result, "error_code", None):
                        outcome += f" ({result.error_code})"
                except Exception as exc:  # reported by the assertion on C's runs
                    outcome = repr(exc)
                with lock:
                    load.c.append((key, outcome, measured))
        finally:
            sdk_http.close()

    threads = [threading.Thread(target=tenant_a, args=(i,)) for i in range(A_THREADS)]
    threads += [threading.Thread(target=tenant_c, args=(i,)) for i in range(C_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        if thread.is_alive():
            load.errors.append(f"{thread.name} still running 60 s after the window")
    http_a.close()
    out, err = tenant_b.communicate(timeout=60)
    if tenant_b.returncode != 0:
        load.errors.append(f"B's client exited with {tenant_b.returncode}: {err[-2000:]}")
    else:
        load.b = json.loads(out)
    return load


def a_crowd(calls: list[Call], sent_ns: int) -> int:
    """How many of A's calls were sent within CROWD_MS of ``sent_ns``."""
    window = CROWD_MS * 1e6
    return sum(1 for c in calls if abs(c.sent_ns - sent_ns) <= window)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (NaN of nothing)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@pytest.fixture
def quiet_httpx():
    """httpx logs every request at INFO: thousands of records for the log capture, on this process's CPU."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("quiet_httpx")
def test_a_tenant_with_a_slow_tool_stalls_nobody_else(tmp_path, services):
    port, tool_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(ROOT, stack_env(tmp_path, services, port), logs)
    began = time.monotonic()
    try:
        # The processes boot (web.sh collects the static files first) while the release step migrates: nothing
        # asks them for anything before it is done.
        tool_ms = str(int(TOOL_SECONDS * 1000))
        stack.start("slow_tool", [sys.executable, "-m", "tests.support.slow_tool", str(tool_port), tool_ms])
        stack.start("web", ["deploy/web.sh"])
        stack.start("worker", ["deploy/worker.sh"])
        stack.run("deploy/manage.sh migrate --noinput")
        keys = api_keys(stack, ["noisy-a", "noisy-b", "noisy-c"])
        wait_for(
            lambda: httpx.get(f"{base}/healthz", headers={"X-Forwarded-Proto": "https"}).status_code == 200,
            "deploy/web.sh to answer /healthz",
            stack,
        )
        wait_for(lambda: " ready." in (logs / "worker.log").read_text(errors="replace"), "the worker", stack)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{tool_port}/_log").status_code == 200, "the tool", stack)
        with client(base, keys[0], timeout=10) as http:
            registered = http.post(
                "/v1/tools",
                json={
                    "name": TOOL_A,
                    "url": f"http://127.0.0.1:{tool_port}/generate",
                    "auth": {"type": "hmac_sha256", "secret": TOOL_SECRET},
                },
            )
            assert registered.status_code in (200, 201), registered.text
        ready = time.monotonic()
        load = run_load(base, keys)
        loaded = time.monotonic()
        received = httpx.get(f"http://127.0.0.1:{tool_port}/_log", timeout=10).json()
        stack.alive()
    finally:
        stack.stop()
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
        shutil.copytree(logs, ARTIFACTS)
    with psycopg.connect(services.database_url) as conn:
        dispatch_ids: dict[int, str] = dict(
            conn.execute(
                "SELECT d.id, d.dispatch_id FROM governance_decision d JOIN governance_agent g ON g.id = d.agent_id "
                "WHERE g.agent_id = %s",
                [AGENT_A],
            ).fetchall()
        )

    (ARTIFACTS / "load.json").write_text(
        json.dumps({"a": [asdict(c) for c in load.a], "b": load.b, "c": load.c, "tool": received})
    )

    # --- the summary ---------------------------------------------------------------------------------------------
    measured_b = [r for r in load.b if r["measured"]]
    b_ms = [r["ms"] for r in measured_b]
    warmup_b_ms = [r["ms"] for r in load.b if not r["measured"]]
    measured_a = [c for c in load.a if c.measured]
    executed = [c for c in load.a if c.status == 200]
    refused = [c for c in load.a if c.status == 429]
    scopes = Counter(str((c.body.get("detail") or {}).get("scope")) for c in refused)
    decisions = Counter(str(c.body.get("decision")) for c in executed)
    slowest_a = max((c.seconds for c in measured_a), default=math.nan)
    in_burst = [r["ms"] for r in measured_b if a_crowd(load.a, r["sent_ns"]) >= BURST]
    apart = [r["ms"] for r in measured_b if a_crowd(load.a, r["sent_ns"]) < BURST]
    print(
        f"\nnoisy neighbour ({stack.env.get('GUNICORN_ARGS') or 'deploy/web.sh as it is'}): setup "
        f"{ready - began:.1f} s, load {loaded - ready:.1f} s (warm-up {WARMUP:g} s, then {WINDOW:g} s measured)\n"
        f"  A: {len(load.a)} calls, {len(executed)} answered 200 {dict(decisions)}, {len(refused)} refused 429 "
        f"{dict(scopes)}, {len(load.a) - len(executed) - len(refused)} other; slowest answer {slowest_a:.3f} s "
        f"(warm-up: {max((c.seconds for c in load.a if not c.measured), default=math.nan):.3f} s)\n"
        f"  B: {len(b_ms)} requests, p50 {percentile(b_ms, 50):.1f} ms, p99 {percentile(b_ms, 99):.1f} ms, "
        f"max {max(b_ms, default=math.nan):.1f} ms, {sum(1 for r in load.b if r['status'] != 200)} not 200 "
        f"(warm-up: {len(warmup_b_ms)}, p99 {percentile(warmup_b_ms, 99):.1f} ms, "
        f"max {max(warmup_b_ms, default=math.nan):.1f} ms)\n"
        f"     sent with ≥ {BURST} A calls within ±{CROWD_MS:g} ms: {len(in_burst)}, "
        f"p99 {percentile(in_burst, 99):.1f} ms; the rest: {len(apart)}, p99 {percentile(apart, 99):.1f} ms\n"
        f"  C: {len(load.c)} keyed runs, {Counter(status for _, status, _ in load.c)}\n"
        f"  tool: {len(received)} requests received"
    )

    # --- B: never stalled ----------------------------------------------------------------------------------------
    assert load.errors == []
    failed_b = [r for r in load.b if r["status"] != 200]
    assert failed_b == [], failed_b[:5]
    assert all(r["body"].get("status") == "locked" for r in load.b if r["kind"] == "check-lock")
    assert all(r["body"].get("decision") == "allowed" for r in load.b if r["kind"] == "permit")
    assert percentile(b_ms, 99) <= B_P99_MS, f"B's p99 {percentile(b_ms, 99):.1f} ms > {B_P99_MS} ms"
    assert len(b_ms) > 100, f"B made only {len(b_ms)} requests in {WINDOW:g} s"

    # --- A: answered within the deadline, executed or refused at once --------------------------------------------
    late = sorted((round(c.seconds, 3), c.status, c.token) for c in measured_a if c.seconds > ANSWERED_WITHIN)
    assert late == [], f"A calls answered later than {ANSWERED_WITHIN} s after being sent: {late[:10]}"
    others = [(c.token, c.status, c.body) for c in load.a if c.status not in (200, 429)]
    assert others == [], others[:5]
    assert all(c.body["detail"]["error"] == "dispatch_busy" and c.retry_after for c in refused), refused[:3]
    # A 200 is the tool's answer, or the deadline's: an attempt that started too late to finish is cut off at it.
    unexplained = [
        (c.token, c.body.get("decision"), c.body.get("explain"))
        for c in executed
        if c.body.get("decision") != "executed" and "timed out" not in str((c.body.get("explain") or {}).get("error"))
    ]
    assert unexplained == [], unexplained[:5]
    assert any(c.body.get("decision") == "executed" for c in measured_a), "no A call executed"
    assert any(c.status == 429 for c in measured_a), "no A call was refused: the bulkheads were not exercised"

    # --- the tool: no request after its call was answered, and none of a refused call (warm-up included) ---------
    by_token = {c.token: c for c in load.a}
    assert [entry for entry in received if entry[0] is None] == [], "tool requests without a kernel receive time"
    problems = []
    for received_ns, webhook_id, token in received:
        call = by_token.get(token)
        if call is None or call.status != 200:
            problems.append(f"{token}: received, but its call was answered {call.status if call else 'never'}")
            continue
        if webhook_id != dispatch_ids.get(call.body.get("decision_id")):
            problems.append(f"{token}: webhook-id {webhook_id} is not its decision's dispatch id")
        if received_ns > call.answered_ns:
            problems.append(f"{token}: received {(received_ns - call.answered_ns) / 1e6:.1f} ms after its answer")
    assert problems == [], problems[:10]
    reached = {token for _, _, token in received}
    assert [c.token for c in executed if c.body.get("decision") == "executed" and c.token not in reached] == []

    # --- C: keyed runs went on ------------------------------------------------------------------------------------
    measured_c = [status for _, status, measured in load.c if measured]
    assert measured_c and all(status == "completed" for status in measured_c), load.c
