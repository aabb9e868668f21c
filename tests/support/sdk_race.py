"""Real concurrency through the official SDK: ``n`` threads, each with its own ``OnceOnly`` client (its own
connection), released together by a barrier, against a live server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from onceonly import OnceOnly


def race(url: str, raw_key: str, n: int, call: Callable[[OnceOnly, int], Any], *, timeout: float = 60) -> list[Any]:
    """``call(client, i)`` from ``n`` threads at once; their answers, in thread order."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Any:
        with OnceOnly(api_key=raw_key, base_url=url, fail_open=False, timeout=timeout) as client:
            barrier.wait(30)
            return call(client, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def assert_caps_hold(
    url: str, raw_key: str, policy: dict[str, Any], n: int, spend: float | None, tool: str, allowed: int, reason: str
) -> list[Any]:
    """``n`` concurrent governed calls of one agent (each with new args; one run id when the cap is per run) under
    ``policy``: exactly ``allowed`` pass, the others are refused for ``reason``, and as many allowed decisions are
    recorded (the caps never overshoot). Returns the answers."""
    from governance.models import Decision

    with OnceOnly(api_key=raw_key, base_url=url, fail_open=False) as admin:
        admin.gov.upsert_policy({"agent_id": "racer", **policy})
    run = {"run_id": "race-run"} if reason.startswith("run_") else {}
    results = race(
        url,
        raw_key,
        n,
        lambda c, i: c.ai.run_tool(agent_id="racer", tool=tool, args={"call": i, **run}, spend_usd=spend),
    )
    assert sum(r.allowed for r in results) == allowed
    assert [r.policy_reason for r in results if not r.allowed] == [reason] * (n - allowed)
    assert Decision.objects.filter(outcome="allowed").count() == allowed
    return results
