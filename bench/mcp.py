"""The MCP scenarios of `make bench` (docs/benchmarks.md §"Method"): a governed MCP ``tools/call`` to the gateway
(``mcp_call``), the same call repeated (``mcp_dedup``: every call after the first a dedup hit that never reaches
the upstream), and the same ``tools/call`` sent straight to the upstream (``mcp_direct``) — what the gateway adds.

The upstream is the tests' MCP server (tests/support/mcp_upstream.py: the official SDK under uvicorn, one process,
in its default stateful mode, answering JSON), started as a process of the stack and registered through the
service the API uses, so the gateway sets up its own session with it as it does in production. ``mcp_direct``
opens one session here (``initialize``, ``notifications/initialized``) and wrk sends every call in it, as a client
of the upstream would; a stateless upstream would set up a server per request and make the direct call slower
than the one the gateway gets.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SERVER = "upstream"  # the registered server: its tools are `upstream.<tool>`
TOOL = "echo"  # the cheapest tool: answers its text (and journals the call, flushed)
PATH = "/mcp"
PROTOCOL_VERSION = "2025-11-25"
DIRECT = "mcp_direct"  # not a gunicorn scenario: measured once, with the stack's worker model


def command(port: int, journal: Path) -> list[str]:
    return [sys.executable, "-m", "tests.support.mcp_upstream", "--port", str(port), "--journal", str(journal)]


def register(account: Any, url: str) -> None:
    """Register the upstream in the bench account and discover its tools (as ``POST /v1/mcp/servers`` does)."""
    from governance import mcp_servers

    _, discovery, _ = mcp_servers.server_register(account, name=SERVER, url=url, actor="bench")
    if f"{SERVER}.{TOOL}" not in discovery.added:
        raise SystemExit(f"the bench's MCP upstream at {url} was not discovered: {discovery.error or discovery}")


def open_session(url: str) -> str:
    """A session with the upstream for ``mcp_direct`` (what any client of the handshake era does first)."""
    import httpx

    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    hello = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "bench"}},
    }
    with httpx.Client(timeout=10) as client:
        answer = client.post(url, json=hello, headers=headers)
        answer.raise_for_status()
        session = answer.headers["mcp-session-id"]
        headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": PROTOCOL_VERSION}
        client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return session


def _sigma(cpu: dict[str, float]) -> float:
    """CPU ms per request of the stack's processes, PostgreSQL, Redis and wrk: not "other" (whatever else the
    machine runs), which is noise in a difference of two runs."""
    return round(sum(ms for name, ms in cpu.items() if name != "other"), 3)


def overhead(call: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """What the gateway adds to a call: peak throughput as a share of the direct call's, latency at the same paced
    rate, and CPU per call."""
    at_rate, own = call["at_70"], direct["at_call_rate"]
    return {
        "rps_share": round(call["peak"]["rps"] / max(direct["peak"]["rps"], 0.1), 3),
        "p50_ms": round(at_rate["p50_ms"] - own["p50_ms"], 2),
        "p99_ms": round(at_rate["p99_ms"] - own["p99_ms"], 2),
        "cpu_ms_per_call": round(
            _sigma(call["peak"]["cpu_ms_per_request"]) - _sigma(direct["peak"]["cpu_ms_per_request"]), 3
        ),
    }


def report(direct: dict[str, Any], call: dict[str, Any]) -> list[str]:
    peak, same, extra = direct["peak"], direct["at_call_rate"], direct["overhead"]
    cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in peak["cpu_ms_per_request"].items())
    return [
        f"MCP tools/call straight to the upstream ({PATH}, one session, {peak['connections']} connections): peak "
        f"{peak['rps']:.0f} req/s (CPU ms per call: {cpu}); at mcp_call's paced rate {direct['rate']:g} req/s: "
        f"p50 {same['p50_ms']:.1f} ms p99 {same['p99_ms']:.1f} ms; errors {peak['errors'] + same['errors']}",
        f"  gateway overhead: mcp_call peak {call['peak']['rps']:.0f} req/s = {extra['rps_share']:.2f}× direct; "
        f"at {direct['rate']:g} req/s p50 +{extra['p50_ms']:.1f} ms, p99 +{extra['p99_ms']:.1f} ms; "
        f"CPU +{extra['cpu_ms_per_call']:.2f} ms per call (Σ without other: "
        f"{_sigma(call['peak']['cpu_ms_per_request'])} vs {_sigma(peak['cpu_ms_per_request'])})",
    ]
