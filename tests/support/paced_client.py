"""A tenant's paced API traffic, timed in a process of its own (so that other client threads of the test process do
not add their interpreter lock to its measurements).

Usage: ``python -m tests.support.paced_client CONFIG``, CONFIG a JSON object:
``{"base": "http://127.0.0.1:PORT", "key": "<API key>", "threads": 4, "pause": 0.05, "start": <epoch seconds>,
"measure_from": <epoch seconds>, "end": <epoch seconds>, "agent_id": "…", "tool": "…", "headers": {…}}``.
Each thread waits until ``start``, then until ``end`` alternates ``POST /v1/check-lock`` (a new key each time) and
a permit-only ``POST /v1/ai/run`` (``agent_id``/``tool``, a unique ``args.call``), pausing ``pause`` seconds after
each answer. Every request carries ``headers`` and ``X-Request-Start: t=<send time>`` (what the TLS proxy adds).
Prints one JSON array: ``[{"kind", "token", "sent_ns", "ms", "status", "body", "measured"}, …]`` where ``ms`` is
the time from sending to the whole answer read, and ``measured`` says it was sent at or after ``measure_from``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import httpx


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def stamp(request: httpx.Request) -> None:
        request.headers["X-Request-Start"] = f"t={time.time():.3f}"

    threads = int(config["threads"])
    http = httpx.Client(
        base_url=config["base"],
        headers={"Authorization": f"Bearer {config['key']}", **config.get("headers", {})},
        timeout=10,
        limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads),
        event_hooks={"request": [stamp]},
    )

    def loop(index: int) -> None:
        time.sleep(max(0.0, config["start"] - time.time()))
        n = 0
        while time.time() < config["end"]:
            n += 1
            token = f"b{index}-{n}"
            if n % 2:
                kind, path, body = "check-lock", "/v1/check-lock", {"key": f"lock-{token}", "ttl": 60}
            else:
                kind, path = "permit", "/v1/ai/run"
                body = {"agent_id": config["agent_id"], "tool": config["tool"], "args": {"call": token}}
            sent_ns, began = time.time_ns(), time.perf_counter()
            try:
                response = http.post(path, json=body)
                status = response.status_code
                try:
                    answer = response.json()
                except ValueError:
                    answer = {"text": response.text[:300]}
            except httpx.HTTPError as exc:
                status, answer = 0, {"error": repr(exc)}
            ms = (time.perf_counter() - began) * 1000
            record = {
                "kind": kind,
                "token": token,
                "sent_ns": sent_ns,
                "ms": ms,
                "status": status,
                "body": answer if isinstance(answer, dict) else {"json": answer},
                "measured": sent_ns >= config["measure_from"] * 1e9,
            }
            with lock:
                records.append(record)
            time.sleep(config["pause"])

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    http.close()
    return records


if __name__ == "__main__":
    json.dump(run(json.loads(sys.argv[1])), sys.stdout)
