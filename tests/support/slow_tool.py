"""A slow tool, run as a process of its own: every POST is answered ``200 {}`` after DELAY_MS, and logged.

Usage: ``python -m tests.support.slow_tool PORT DELAY_MS`` from the checkout's root (standard library and
tests/support/timestamping_receiver.py only). ``GET /_log`` answers ``[[received_ns, webhook_id, call], …]`` in
the order the requests were read: ``received_ns`` is the kernel's receive time of the request's first byte
(CLOCK_REALTIME, compare with ``time.time_ns()``; how it is taken: tests/support/timestamping_receiver.py),
``webhook_id`` the request's ``webhook-id`` header (the decision's dispatch id) and ``call`` the ``args.call``
value of the signed body (what the test put there to tell its calls apart; None without one).
HTTP/1.1 with keep-alive, one thread per connection: a slow answer holds that connection only.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

from tests.support.timestamping_receiver import SO_TIMESTAMPNS, read_request


class SlowTool:
    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.log: list[list] = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # inherited by every accepted socket
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(512)

    def serve_forever(self) -> None:
        while True:
            connection, _ = self.listener.accept()
            threading.Thread(target=self.serve, args=(connection,), daemon=True).start()

    def serve(self, connection: socket.socket) -> None:
        with connection:
            connection.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            pending = b""
            while True:
                request = read_request(connection, pending)
                if request is None:
                    return
                received_ns, method, headers, body, pending = request
                if method == "GET":
                    with self.lock:
                        answer = json.dumps(self.log).encode()
                else:
                    try:
                        args = json.loads(body).get("args") or {}
                        call = args.get("call") if isinstance(args, dict) else None
                    except (ValueError, AttributeError):
                        call = None
                    with self.lock:
                        self.log.append([received_ns, headers.get("webhook-id", ""), call])
                    answer = b"{}"
                    time.sleep(self.delay)
                close = headers.get("connection", "").lower() == "close"
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n"
                head += ("Connection: close\r\n" if close else "") + "\r\n"
                try:
                    connection.sendall(head.encode() + answer)
                except OSError:
                    return
                if close:
                    return


if __name__ == "__main__":
    SlowTool(int(sys.argv[1]), int(sys.argv[2]) / 1000).serve_forever()
