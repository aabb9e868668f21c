"""The `verify` scenario of `make bench`: the decision log's verification at a size (``--growth``, 1M by default;
the committed run 10M), in-process (no stack, no Celery transport): what *Verify now* and the hourly beat run cost.

One account ("verify") is seeded with ``rows`` decisions of one agent carrying their real row hashes (computed here
with ``ledger.row_hash``, ~23 µs each, streamed to PostgreSQL with COPY) and chained into checkpoints of 5,000 as
beat writes them. Then:

- ``full``: ``ledger.verify`` — the walk *Verify now* and ``verify_decision_log`` run: every row re-hashed, every
  checkpoint re-chained, from the first; its time, rows/s, and the process's peak RSS before and after;
- ``job``: ``verify_jobs.run_job`` — the same as the Celery task runs it, progress in Redis, plus the audit log;
- ``hourly``: ``ledger.verify_recent`` with the anchor on the seeded log's last checkpoint (as after an earlier
  run), after an hour's worth of new decisions (``HOURLY_NEW``, chained): the new checkpoints and one slice of the
  re-verification (``ONCEONLY_VERIFY_SWEEP_DAYS`` = 7: 1/168 of the log) — its time and rows read, which do not grow
  with the log beyond the slice; ``ROUNDS`` runs.
"""

from __future__ import annotations

import io
import resource
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

ACCOUNT = "verify"
AGENT = "verify-bench-agent"
HOURLY_NEW = 18_000  # new decisions between two hourly runs (5 a second)
ROUNDS = 3
COPY_CHUNK = 100_000
TOOLS = [f"seed.tool_{n}" for n in range(20)]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_decisions(account_id: int, agent_pk: int, agent_id: str, n: int, start: datetime) -> float:
    """``n`` decisions a second apart from ``start``, with their row hashes, by COPY; then chained into checkpoints
    (``ledger.checkpoint_all``'s work, without its 30 s settling wait). Returns the seconds it took."""
    from django.db import connection

    from governance import ledger

    started = time.monotonic()
    columns = (
        "account_id, agent_id, ts, tool, outcome, allowed, policy_reason, risk_level, spend_usd, args_hash, run_id, "
        "policy_version, latency_ms, dispatch_id, row_hash"
    )
    spend = Decimal("0.010000")
    with connection.cursor() as cursor:
        for first in range(0, n, COPY_CHUNK):
            buffer = io.StringIO()
            for g in range(first, min(n, first + COPY_CHUNK)):
                ts = start + timedelta(seconds=g)
                tool = TOOLS[g % len(TOOLS)]
                blocked = g % 10 == 0
                fields = {
                    "ts": ts,
                    "agent_id": agent_id,
                    "tool": tool,
                    "outcome": "blocked" if blocked else "allowed",
                    "allowed": not blocked,
                    "policy_reason": "tool_blocked" if blocked else "within_budget",
                    "risk_level": "low",
                    "spend_usd": spend,
                    "args_hash": f"{g:064x}",
                    "run_id": "",
                    "policy_version": 1,
                    "latency_ms": 1,
                    "result": None,
                }
                digest = ledger.row_hash(account_id, fields)
                buffer.write(
                    f"{account_id}\t{agent_pk}\t{ts.isoformat()}\t{tool}\t{fields['outcome']}\t"
                    f"{'f' if blocked else 't'}\t{fields['policy_reason']}\tlow\t{spend}\t{fields['args_hash']}\t\t"
                    f"1\t1\t\t{digest}\n"
                )
            buffer.seek(0)
            with cursor.cursor.copy(f"COPY governance_decision ({columns}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
        if n >= COPY_CHUNK:
            cursor.execute("ANALYZE governance_decision")  # the statistics autovacuum would have by now
    settle, ledger.SETTLE = ledger.SETTLE, timedelta(0)
    try:
        while ledger.checkpoint_account(account_id):
            pass
    finally:
        ledger.SETTLE = settle
    return time.monotonic() - started


def run(rows: int, rounds: int = ROUNDS) -> dict[str, Any]:
    from unittest import mock

    from django.db import connection

    from billing.services import account_get_or_create
    from governance import ledger, verify_jobs
    from governance.models import Agent, DecisionCheckpoint, LogVerification

    account, _ = account_get_or_create(name=ACCOUNT, plan_code="agency")
    agent = Agent.objects.create(account=account, agent_id=AGENT)
    log(f"verify: seeding {rows:,} decisions with their row hashes, chained into checkpoints")
    start = datetime.now(UTC) - timedelta(seconds=rows + (rounds + 1) * HOURLY_NEW)  # every row in the past
    seed_s = write_decisions(account.pk, agent.pk, AGENT, rows, start)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) governance_decision, governance_decisioncheckpoint")
        cursor.execute("CHECKPOINT")
    checkpoints = DecisionCheckpoint.objects.filter(account=account).count()
    log(f"  seeded in {seed_s:.0f} s: {checkpoints:,} checkpoints")

    rss_before = _maxrss_mb()
    started = time.perf_counter()
    full = ledger.verify(account.pk)
    full_s = time.perf_counter() - started
    assert full.ok and full.rows_checked == rows, full
    log(f"  full walk: {full_s:.1f} s ({rows / full_s:,.0f} decisions/s)")

    with mock.patch("governance.tasks.verify_logs_now.delay"):  # queued, run here: no Celery transport
        job_id = verify_jobs.verify_start(account.pk)
    started = time.perf_counter()
    verify_jobs.run_job(account.pk, job_id)
    job_s = time.perf_counter() - started
    job = verify_jobs.verify_job(account.pk, job_id)
    assert job is not None and job.state == "done" and job.result is not None and job.result["decisions"]["ok"], job
    log(f"  job (run_job, progress in Redis, audit log too): {job_s:.1f} s")

    newest = DecisionCheckpoint.objects.filter(account=account).order_by("-seq").first()
    assert newest is not None
    LogVerification.objects.update_or_create(
        account=account,
        log=LogVerification.Log.DECISIONS,
        defaults={
            "anchor_seq": newest.seq,
            "anchor_id": newest.last_decision_id,
            "anchor_hash": newest.chain_hash,
            "sweep_seq": 0,
        },
    )
    hourly: list[dict[str, float]] = []
    for n in range(rounds):
        write_decisions(account.pk, agent.pk, AGENT, HOURLY_NEW, start + timedelta(seconds=rows + n * HOURLY_NEW))
        started = time.perf_counter()
        decisions, _audit = ledger.verify_recent(account, days=7)
        elapsed = time.perf_counter() - started
        assert decisions.ok, decisions
        hourly.append({"s": elapsed, "rows": decisions.rows})
        log(f"  hourly run {n + 1}: {elapsed:.2f} s, {decisions.rows:,} decisions read")
    return {
        "rows": rows,
        "checkpoints": checkpoints,
        "seed_s": round(seed_s, 1),
        "full_s": round(full_s, 1),
        "full_rows_per_s": round(rows / full_s),
        "job_s": round(job_s, 1),
        "maxrss_mb": {"before": round(rss_before, 1), "after": round(_maxrss_mb(), 1)},
        "hourly_new": HOURLY_NEW,
        "hourly_s": [round(run["s"], 2) for run in hourly],
        "hourly_median_s": round(statistics.median(run["s"] for run in hourly), 2),
        "hourly_rows": [int(run["rows"]) for run in hourly],
        "sweep_days": 7,
    }


def report(measured: dict[str, Any]) -> list[str]:
    return [
        f"verify: {measured['rows']:,} decisions in {measured['checkpoints']:,} checkpoints "
        f"(seeded with their hashes in {measured['seed_s']:.0f} s)",
        f"  full walk (Verify now, verify_decision_log) {measured['full_s']:.1f} s "
        f"({measured['full_rows_per_s']:,} decisions/s); as the task with the audit log {measured['job_s']:.1f} s; "
        f"peak RSS {measured['maxrss_mb']['before']:.0f} → {measured['maxrss_mb']['after']:.0f} MB",
        f"  hourly run ({measured['hourly_new']:,} new decisions + 1/{24 * measured['sweep_days']} of the log): "
        f"median {measured['hourly_median_s']:.2f} s, decisions read {measured['hourly_rows']}",
    ]
