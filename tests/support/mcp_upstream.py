"""An upstream MCP server for the gateway's tests, built with the official SDK (``mcp``) and run as a process of its
own over Streamable HTTP: what a real upstream is, sessions and all (docs/mcp.md).

Usage: ``python -m tests.support.mcp_upstream --port N --journal PATH [--require-auth TOKEN] [--sse]`` from the
checkout's root. Tools: ``echo(text)``, ``charge(amount, customer)`` (a structured result), ``fail()`` (a tool
error) and ``slow(seconds)``. Every call is appended to the journal (one JSON line: tool, arguments, the request's
``_meta``), flushed before the tool answers: the journal is the upstream's side effects, what exactly-once is about.
``--require-auth TOKEN``: requests without ``Authorization: Bearer TOKEN`` are answered 401. ``--sse``: answers are
``text/event-stream`` (the SDK's default) instead of ``application/json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tests.support.servers import ROOT, free_port, wait_http

PATH = "/mcp"


def build(journal: Path) -> MCPServer:
    server = MCPServer("test-upstream", log_level="WARNING")
    lock = threading.Lock()

    def record(ctx: Context, tool: str, arguments: dict[str, Any]) -> None:
        meta = ctx.request_context.meta
        if meta is not None and not isinstance(meta, dict):
            meta = meta.model_dump(mode="json", by_alias=True, exclude_none=True)
        line = json.dumps({"tool": tool, "arguments": arguments, "meta": meta or {}, "at": time.time()})
        with lock, journal.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()

    @server.tool(description="Answer the text it is given.")
    def echo(text: str, ctx: Context) -> str:
        record(ctx, "echo", {"text": text})
        return text

    @server.tool(description="Charge a customer (a side effect: journaled).")
    def charge(amount: int, customer: str, ctx: Context) -> dict[str, Any]:
        record(ctx, "charge", {"amount": amount, "customer": customer})
        return {"charged": amount, "customer": customer, "status": "succeeded"}

    @server.tool(description="Always fails.")
    def fail(ctx: Context) -> str:
        record(ctx, "fail", {})
        raise ToolError("the card was declined")

    @server.tool(description="Sleep, then answer.")
    async def slow(seconds: float, ctx: Context) -> str:
        record(ctx, "slow", {"seconds": seconds})
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    return server


class BearerAuth:
    """401 for any request without the expected bearer token (what a protected upstream answers)."""

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--require-auth", default="")
    parser.add_argument("--sse", action="store_true", help="answer with text/event-stream")
    options = parser.parse_args()

    import uvicorn

    app = build(options.journal).streamable_http_app(streamable_http_path=PATH, json_response=not options.sse)
    if options.require_auth:
        app = BearerAuth(app, options.require_auth)
    uvicorn.run(app, host="127.0.0.1", port=options.port, log_level="warning")


class McpUpstream:
    """The upstream as a subprocess on a free loopback port; ``restart`` drops every session (as a redeploy does)."""

    def __init__(self, journal: Path, *, require_auth: str = "", sse: bool = False) -> None:
        self.journal = Path(journal)
        self.journal.touch()
        self.require_auth, self.sse = require_auth, sse
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{PATH}"
        self.process: subprocess.Popen | None = None

    def start(self) -> McpUpstream:
        command = [sys.executable, "-m", "tests.support.mcp_upstream", "--port", str(self.port)]
        command += ["--journal", str(self.journal)]
        if self.require_auth:
            command += ["--require-auth", self.require_auth]
        if self.sse:
            command.append("--sse")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        # Any answer will do (a GET without a session is refused): the port is open and the app is up.
        wait_http(f"http://127.0.0.1:{self.port}/", process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def journal_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]

    def __enter__(self) -> McpUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
