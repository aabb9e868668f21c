"""What OpenTelemetry export costs a governed call (docs/operations.md §"OpenTelemetry export"), in-process:

    DATABASE_URL=postgresql://… REDIS_URL=redis://…/N .venv/bin/python -m bench.otel [--calls 3000]

The same permit-only governed call (``POST /v1/ai/run``, the ``gov_permit`` scenario's call, through Django's test
client: the whole middleware stack and view, no HTTP server) is timed ``--calls`` times in each of three modes, one
after another in this process: export off (``OTEL_EXPORTER_OTLP_ENDPOINT`` unset), on with a receiver that accepts
every batch (a process of its own, reading the body and answering 200), and on with the receiver down (nothing
listens: every batch fails after the exporter's timeout, 1 s here). Half the calls carry a run id, so run spans are
exported too. The export thread shares this process's interpreter with the calls, as it does in a gthread web
process. It migrates the database it is given and writes a "bench-otel" account into it: give it a scratch one.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ROUNDS = 4
SINK = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(client: Any, calls: int, label: str) -> list[float]:
    body = {"agent_id": "bench-agent", "tool": "search", "spend_usd": 0.0001}
    took = []
    for n in range(calls):
        args = {"n": n, "label": label, **({"run_id": f"{label}-{n}"} if n % 2 else {})}
        started = time.perf_counter()
        response = client.post("/v1/ai/run", {**body, "args": args}, content_type="application/json")
        took.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{label}: call {n} answered {response.status_code}: {response.content[:200]!r}")
    return took


def summary(took: list[float]) -> dict[str, float]:
    ordered = sorted(took)
    return {
        "mean_ms": round(statistics.fmean(ordered), 3),
        "p50_ms": round(ordered[len(ordered) // 2], 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per mode")
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    os.environ.setdefault("SECRET_KEY", "bench-otel-secret-key-0123456789-0123456789")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    os.environ["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    from billing.models import Plan
    from billing.services import account_get_or_create, api_key_create
    from governance import services as governance
    from onceonly_site import telemetry

    call_command("migrate", verbosity=0)
    Plan.objects.filter(code="agency").update(
        make_monthly_limit=10**12, ai_monthly_limit=10**12, rate_limit_per_second=10**6, rate_limit_burst=10**6
    )
    account, _ = account_get_or_create(name="bench-otel", plan_code="agency")
    changes = {"max_actions_per_hour": 10**9, "max_spend_usd_per_day": 10**6}
    governance.policy_upsert(account_id=account.pk, agent_id="bench-agent", actor="bench", changes=changes)
    client = Client(headers={"Authorization": f"Bearer {api_key_create(account=account, label='bench').raw}"})

    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    modes = {"off": "", "on": f"http://127.0.0.1:{port}", "receiver_down": f"http://127.0.0.1:{free_port()}"}
    took: dict[str, list[float]] = {mode: [] for mode in modes}
    counted: dict[str, dict[str, int]] = {mode: dict.fromkeys(telemetry.COUNTERS, 0) for mode in modes}
    drain: dict[str, float] = dict.fromkeys(modes, 0.0)
    try:
        time.sleep(0.5)
        timed(client, 300, "warm-up")
        # The modes take turns, ROUNDS times: a machine whose speed drifts (other work, caches) drifts for all three.
        for round_ in range(ROUNDS):
            for mode, endpoint in modes.items():
                settings.OTEL_EXPORTER_OTLP_ENDPOINT = endpoint
                before = telemetry.counters()
                took[mode] += timed(client, options.calls // ROUNDS, f"{mode}-{round_}")
                started = time.perf_counter()
                telemetry.reset()  # the last batch is sent (or fails) before the next mode
                telemetry.flush_counters()
                drain[mode] += time.perf_counter() - started
                after = telemetry.counters()
                for name in telemetry.COUNTERS:
                    counted[mode][name] += after[name] - before[name]
    finally:
        sink.terminate()
    off = summary(took["off"])
    print(f"{len(took['off'])} governed calls per mode, in {ROUNDS} rounds (half with a run id: a call span and a run")
    print("span each; on: every span accepted, receiver_down: every batch fails after the 1 s timeout)")
    for mode in modes:
        numbers = summary(took[mode])
        deltas = ", ".join(f"{k} {numbers[k] - off[k]:+.3f}" for k in ("mean_ms", "p50_ms"))
        print(f"  {mode:14} {numbers} vs off: {deltas}  {counted[mode]}  drain {drain[mode]:.2f} s")


if __name__ == "__main__":
    main()
