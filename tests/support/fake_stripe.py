"""A local stand-in for api.stripe.com (STRIPE_API_BASE points at it): real HTTP, canned Stripe-shaped answers, and a
record of what was asked — so the tests exercise the stripe package and our client module end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ANSWERS = {
    "/v1/customers": {"id": "cus_Fake0001", "object": "customer"},
    "/v1/checkout/sessions": {"id": "cs_test_Fake0001", "object": "checkout.session",
                              "url": "https://checkout.stripe.com/c/pay/cs_test_Fake0001"},
    "/v1/billing_portal/sessions": {"id": "bps_Fake0001", "object": "billing_portal.session",
                                    "url": "https://billing.stripe.com/p/session/test_Fake0001"},
}  # fmt: skip


class FakeStripe:
    """``urls`` replaces the ``url`` a path answers with (``{"/v1/checkout/sessions": "https://pay.example.test/…"}``:
    a Checkout on a custom domain); the browser tests answer Stripe's hosted pages with Playwright routes."""

    def __init__(self, *, fail_with: int | None = None, urls: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []
        self.fail_with = fail_with
        self.answers = {path: {**answer, "url": (urls or {}).get(path, answer["url"])} if "url" in answer else answer
                        for path, answer in ANSWERS.items()}  # fmt: skip
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fake.requests.append((self.path, parse_qs(body), self.headers.get("Authorization", "")))
                if fake.fail_with:
                    status, answer = fake.fail_with, {"error": {"type": "api_error", "message": "Stripe is down"}}
                else:
                    status, answer = 200, fake.answers.get(self.path.split("?")[0], {"error": {"message": "unknown"}})
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
