"""Built-in job handlers, for demos and tests: ``demo.echo`` and ``demo.sleep``.

client.ai.run_and_wait(key="demo:1", metadata={"task": "demo.echo", "params": {"hello": "world"}})
→ result {"actions": [], "task": "demo.echo", "handler": "demo.echo", "output": {"echo": {"hello": "world"}}}
"""

from __future__ import annotations

import time
from typing import Any

from idempotency.jobs import JobContext, handler

MAX_SLEEP_SECONDS = 120.0


@handler("demo.echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    """Returns its params unchanged (and the run key it was given, to show what handlers receive)."""
    return {"echo": ctx.params, "key": ctx.key}


@handler("demo.sleep")
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleeps ``params.seconds`` (default 1, at most 120) in one-second steps with a progress event per step."""
    seconds = ctx.params.get("seconds", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError("params.seconds must be a number")
    seconds = max(0.0, min(float(seconds), MAX_SLEEP_SECONDS))
    deadline = time.monotonic() + seconds
    step = 0
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        step += 1
        ctx.event("progress", status="sleeping", step=str(step), message=f"{step} s of {seconds:g} s")
        if not ctx.still_holding():
            break  # another worker took the run over: stop early, our result would be refused anyway
    return {"slept_seconds": seconds}
