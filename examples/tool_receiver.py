"""A complete receiver for OnceOnly tool calls — copy it into your tool.

It verifies every request the way a tool author should:
  1. the Standard Webhooks signature (webhook-id / webhook-timestamp / webhook-signature) with the tool's secret,
     which also rejects a timestamp more than 5 minutes away (replays);
  2. dedupes by webhook-id: OnceOnly's retries of one decision carry the same id, so the side effect runs once;
then runs the tool with the body's "args" and answers a JSON object (it becomes the governed call's `result`).

Run it:  TOOL_SECRET=example_secret_123 python examples/tool_receiver.py 8099
The test suite runs this file as a real process (tests/governance/test_dispatch.py). Paths it knows, for demos and
tests: /ok (echoes the args), /slow (sleeps SLOW_SECONDS, default 2), /error500, /error400, /text; GET /_stats
reports what it received.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Verifier:
    """Signature + timestamp window + dedupe by webhook-id. Keep `seen` in your database in production."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret.encode())  # the tool secret's bytes are the HMAC key
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def verify(self, body: bytes, headers: dict[str, str]) -> tuple[dict, bool]:
        """Returns (payload, first_time). Raises WebhookVerificationError for a bad signature or a stale timestamp."""
        payload = self.webhook.verify(body, headers)
        with self.lock:
            first = headers["webhook-id"] not in self.seen
            self.seen.add(headers["webhook-id"])
        return payload, first


STATS: dict = {"requests": 0, "by_path": {}, "executed": 0, "rejected": 0, "last_headers": {}}


class Handler(BaseHTTPRequestHandler):
    verifier: Verifier

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._answer(200, STATS)
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        STATS["requests"] += 1
        STATS["by_path"][self.path] = STATS["by_path"].get(self.path, 0) + 1
        STATS["last_headers"] = headers
        try:
            payload, first = self.verifier.verify(body, headers)
        except (WebhookVerificationError, KeyError):
            STATS["rejected"] += 1
            self._answer(401, {"error": "bad signature"})
            return
        if self.path == "/slow":
            time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
        if self.path == "/error500":
            self._answer(500, {"error": "boom"})
            return
        if self.path == "/error400":
            self._answer(400, {"error": "bad args"})
            return
        if self.path == "/text":
            self._answer(200, b"plain text", "text/plain")
            return
        if first:
            STATS["executed"] += 1  # the side effect runs here, once per webhook-id
        self._answer(200, {"received": payload["args"], "tool": payload["tool"], "first_time": first})


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
    Handler.verifier = Verifier(os.environ["TOOL_SECRET"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"tool receiver on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
