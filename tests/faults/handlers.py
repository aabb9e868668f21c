"""The fault suite's job handler, loaded by its workers through ONCEONLY_JOB_HANDLER_MODULES.

Every start and finish is appended to a file (``ONCEONLY_FAULTS_JOURNAL``) rather than counted in Redis or
PostgreSQL: the suite flushes and restarts both, and its verdict must not depend on what it is testing.
"""

from __future__ import annotations

import os
import time

from idempotency.jobs import JobContext, handler


def journal(entry: str) -> None:
    """One line per event; a single O_APPEND write, so lines from concurrent workers never interleave."""
    line = f"{time.time():.6f} {entry} {os.getpid()}\n".encode()
    fd = os.open(os.environ["ONCEONLY_FAULTS_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@handler("faults.work")
def work(ctx: JobContext) -> dict:
    """Journals its start, works ``params.seconds``, journals its finish."""
    journal(f"start {ctx.key} {ctx.attempt}")
    time.sleep(float(ctx.params.get("seconds", 0.5)))
    journal(f"finish {ctx.key} {ctx.attempt}")
    return {"attempt": ctx.attempt}
