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
