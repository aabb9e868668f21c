"""A tool receiver that stamps each request with the kernel's receive time, run as a process of its own.

Usage: ``python tests/support/timestamping_receiver.py PORT DELAY_MS`` (standard library only). Every POST is
answered after DELAY_MS: 503 the first time its ``webhook-id`` is seen (so the server retries), 200 ``{}`` after
that. ``GET /_log`` answers ``[[received_ns, webhook_id, status], …]`` in the order the requests were read.
HTTP/1.1 with keep-alive (the server's pooled client reuses connections), one thread per connection.

``received_ns`` is when the kernel received the request's first segment, not when a thread of this process got
round to reading it: the socket has SO_TIMESTAMPNS on, and the first byte of each request is read alone with
``recvmsg``, whose SCM_TIMESTAMPNS control message then carries the timestamp of the segment holding that byte (a
read spanning several segments would report the last one's). The clock is CLOCK_REALTIME: compare with
``time.time_ns()``. On loopback the stamp is taken while the sender's write is still in the kernel. A segment that
the kernel merged into an earlier unread one of the same request passes its own, later, stamp on: a stamp is never
earlier than the request's first segment arrived. A request with no kernel stamp is logged with ``None``.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

# Linux's generic value (SCM_TIMESTAMPNS is the same number); Python's socket module does not name it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@ll")  # struct timespec {time_t tv_sec; long tv_nsec;} of the _OLD option
ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)


class Receiver:
    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.log: list[list] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Before any connection exists: accepted sockets inherit it, and from now on the kernel stamps every packet.
        self.listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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
                received_ns, method, headers, _, pending = request
                if method == "GET":
                    with self.lock:
                        body = json.dumps(self.log).encode()
                    status = 200
                else:
                    webhook_id = headers.get("webhook-id", "")
                    with self.lock:
                        status = 200 if webhook_id in self.seen else 503
                        self.seen.add(webhook_id)
                        self.log.append([received_ns, webhook_id, status])
                    body = b"{}"
                    time.sleep(self.delay)
                close = headers.get("connection", "").lower() == "close"
                reason = "OK" if status == 200 else "Service Unavailable"
                extra = "Connection: close\r\n" if close else ""
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                )
                head += extra + "\r\n"
                try:
                    connection.sendall(head.encode() + body)
                except OSError:
                    return
                if close:
                    return


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack(data[: TIMESPEC.size])
            return seconds * 1_000_000_000 + nanoseconds
    return None


def read_request(
    connection: socket.socket, pending: bytes
) -> tuple[int | None, str, dict[str, str], bytes, bytes] | None:
    """The next request on the connection: (kernel receive time of its first byte, method, headers, body, bytes
    left over), or None when the client closed the connection (or sent what is not HTTP)."""
    try:
        if pending:  # pipelined after the previous request: no segment of its own to stamp (HTTP clients wait)
            received_ns, buffer = None, pending
        else:
            first, ancillary, _, _ = connection.recvmsg(1, ANCILLARY)
            if not first:
                return None
            received_ns, buffer = kernel_stamp(ancillary), first
        while b"\r\n\r\n" not in buffer:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            rest += chunk
    except (ConnectionError, OSError, ValueError):
        return None
    return received_ns, lines[0].split(" ", 1)[0], headers, rest[:length], rest[length:]


if __name__ == "__main__":
    Receiver(int(sys.argv[1]), int(sys.argv[2]) / 1000).serve_forever()
