"""A tool receiver for the kill-switch test (test_kill_switch_in_flight.py), run as its own process.

Usage: ``python tests/governance/timestamping_receiver.py PORT DELAY_MS``. Every POST is stamped with
``time.monotonic_ns()`` when its first byte arrives (CLOCK_MONOTONIC: the same clock as the test process's), and
answered after DELAY_MS: 503 the first time a ``webhook-id`` is seen (so the server retries), 200 ``{}`` after that.
``GET /_log`` answers the list of ``[arrived_ns, webhook_id, status]``. One asyncio loop in a process of its own, so
the stamp is not delayed by the test's client threads.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

log: list[list] = []
seen: set[str] = set()


class Receiver(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.arrived: int | None = None

    def data_received(self, data: bytes) -> None:
        if self.arrived is None:
            self.arrived = time.monotonic_ns()
        self.buffer += data
        head, separator, rest = self.buffer.partition(b"\r\n\r\n")
        if not separator:
            return
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        if len(rest) < int(headers.get("content-length", "0")):
            return
        if method == "GET":
            self.answer(200, json.dumps(log).encode())
            return
        webhook_id = headers.get("webhook-id", "")
        status = 200 if webhook_id in seen else 503
        seen.add(webhook_id)
        log.append([self.arrived, webhook_id, status])
        asyncio.get_running_loop().call_later(DELAY, self.answer, status, b"{}")

    def answer(self, status: int, body: bytes) -> None:
        reason = "OK" if status == 200 else "Service Unavailable"
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")  # fmt: skip
        self.transport.write(head.encode() + body)
        self.transport.close()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    DELAY = int(sys.argv[2]) / 1000
    asyncio.run(main(int(sys.argv[1])))
