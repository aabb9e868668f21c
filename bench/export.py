"""The export scenario (docs/benchmarks.md §"Export"; ``make bench BENCH_ARGS="--only export"``): 1,000,000
decisions bulk-inserted in SQL (bench.run.seed, as the growth phase), then ``GET /v1/export/decisions`` as CSV and
as JSON Lines, each in a child process of its own — Django set up, the request through the whole middleware stack
and the DRF view in-process (django.test.Client, no network), the streamed body written to /dev/null as it arrives.

The child's peak RSS is what counts (the target: under 200 MB for the 1M-row export): read by the parent from the
child's own resource usage (``os.wait4``: ru_maxrss), and by the child from ``VmHWM`` in /proc, with its RSS after
Django's setup (before the request) for the growth the export itself costs. The parent is not measured: it seeded
the rows and holds nothing of the export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_MB = 200.0
FORMATS = ("csv", "jsonl")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


def prepare() -> tuple[int, str]:
    """The export account (agency, rate limits raised), its agent ``bench-agent`` (bench.run.seed writes its
    decisions) and an API key."""
    from billing.models import Plan
    from billing.services import account_get_or_create, api_key_create
    from governance.models import Agent

    Plan.objects.filter(code="agency").update(rate_limit_per_second=10**6, rate_limit_burst=10**6)
    account, _ = account_get_or_create(name="bench-export", plan_code="agency")
    Agent.objects.get_or_create(account=account, agent_id="bench-agent")
    return account.pk, api_key_create(account=account, label="bench export").raw


def run(*, reuse: bool = False) -> dict[str, Any]:
    from django.db import connection

    from bench.run import SEED_ROWS, seed
    from governance.models import Decision

    account_id, key = prepare()
    seeded: dict[str, Any] = {}
    if not (reuse and Decision.objects.filter(account_id=account_id).count() >= SEED_ROWS):
        log(f"export: seeding {SEED_ROWS:,} decisions")
        seeded = seed(account_id)
    rows = Decision.objects.filter(account_id=account_id).count()
    connection.close()
    measured: dict[str, Any] = {"decisions": rows, "seed": seeded, "target_mb": TARGET_MB}
    for fmt in FORMATS:
        log(f"export: GET /v1/export/decisions?format={fmt} of {rows:,} decisions, in a child process")
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.export", "--child", fmt],
            cwd=ROOT,
            env={**os.environ, "BENCH_EXPORT_KEY": key},
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        out = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"the export child failed ({child.returncode})")
        result = json.loads(out)
        result["maxrss_mb"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
        result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
        measured[fmt] = result
        log(
            f"  {result['rows']:,} rows, {result['mb']:.0f} MB in {result['seconds']:.1f} s; peak RSS "
            f"{result['maxrss_mb']:.0f} MB (after setup {result['setup_rss_mb']:.0f} MB)"
        )
    return measured


def child(fmt: str) -> None:
    """The measured process: one export request, its body thrown away as it streams."""
    import django

    django.setup()
    from django.test import Client

    setup_rss = _status_kb("VmRSS")
    client = Client(headers={"Authorization": f"Bearer {os.environ['BENCH_EXPORT_KEY']}"})
    started = time.perf_counter()
    first_byte = None
    size = lines = 0
    response = client.get("/v1/export/decisions", {"format": fmt})
    assert response.status_code == 200 and response.streaming, response.status_code
    with open(os.devnull, "wb") as sink:
        for piece in response.streaming_content:
            if first_byte is None:
                first_byte = time.perf_counter() - started
            sink.write(piece)
            size += len(piece)
            lines += piece.count(b"\n")
    response.close()
    seconds = time.perf_counter() - started
    rows = lines - 1 if fmt == "csv" else lines  # the CSV header
    print(
        json.dumps(
            {
                "rows": rows,
                "mb": round(size / 2**20, 1),
                "seconds": round(seconds, 1),
                "rows_per_s": round(rows / seconds),
                "first_byte_s": round(first_byte or 0, 3),
                "setup_rss_mb": round(setup_rss / 1024, 1),
                "vm_hwm_mb": round(_status_kb("VmHWM") / 1024, 1),
            }
        )
    )


def report(measured: dict[str, Any]) -> list[str]:
    lines = [f"export of {measured['decisions']:,} decisions (GET /v1/export/decisions), peak RSS target < 200 MB"]
    for fmt in FORMATS:
        if fmt not in measured:
            continue
        m = measured[fmt]
        verdict = "OK" if m["maxrss_mb"] < TARGET_MB and m["rows"] == measured["decisions"] else "MISS"
        lines.append(
            f"  {fmt:5} {m['rows']:,} rows, {m['mb']:.0f} MB in {m['seconds']:.1f} s ({m['rows_per_s']:,} rows/s, "
            f"first byte {m['first_byte_s'] * 1000:.0f} ms); peak RSS {m['maxrss_mb']:.0f} MB (after setup "
            f"{m['setup_rss_mb']:.0f} MB)  {verdict}"
        )
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        sys.exit('run it through bench.run: make bench BENCH_ARGS="--only export"')
