"""A tool endpoint on loopback inside the test process: records every call, answers what the test tells it to."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ToolEndpoint:
    """``answer`` yields the body in chunks (each one written and flushed: a tool that trickles its answer), after
    ``on_call`` (a fault to inject while the server waits for the tool) has run."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.on_call: Callable[[], None] | None = None
        self.answer: Callable[[], Iterator[bytes]] = lambda: iter([b'{"refunded": true}'])
        self.headers: dict[str, str] = {}
        self.status = 200  # the HTTP status every call is answered with
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.calls.append({"webhook_id": self.headers["webhook-id"], **body})
                if endpoint.on_call is not None:
                    endpoint.on_call()
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                for name, value in endpoint.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    for chunk in endpoint.answer():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server stopped reading: what a cut-off answer looks like from here
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
