"""Job handlers for the tests, loaded by worker processes through ONCEONLY_JOB_HANDLER_MODULES.

Each counts its executions in the tests' Redis database, so a test can tell "ran once" from "ran twice" across
processes (the worker writes, the test reads).
"""

from __future__ import annotations

import time

from idempotency.jobs import JobContext, handler
from onceonly_site.redis_client import get_redis


def executions_key(key: str, what: str = "started") -> str:
    return f"oo:test:executions:{what}:{key}"


def executions(key: str, what: str = "started") -> int:
    return int(get_redis().get(executions_key(key, what)) or 0)


@handler("test.count")
def count(ctx: JobContext) -> dict:
    """Counts its starts and finishes; sleeps ``params.seconds`` in between (default 0)."""
    started = get_redis().incr(executions_key(ctx.key))
    ctx.event("note", status="working", message=f"execution {started}")
    time.sleep(float(ctx.params.get("seconds", 0)))
    get_redis().incr(executions_key(ctx.key, "finished"))
    return {"execution": started, "params": ctx.params, "attempt": ctx.attempt}


@handler("test.fail")
def fail(ctx: JobContext) -> dict:
    raise RuntimeError("the handler failed on purpose")


@handler("test.big_number")
def big_number(ctx: JobContext) -> dict:
    return {"id": 2**60}  # beyond JSON's safe integers: cannot be stored with an RFC 8785 hash
