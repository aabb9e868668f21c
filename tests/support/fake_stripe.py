"""A local stand-in for api.stripe.com (STRIPE_API_BASE points at it): real HTTP, canned Stripe-shaped answers, and a
record of what was asked — so the tests exercise the stripe package and our client module end to end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ANSWERS = {
    "/v1/customers": {"id": "cus_Fake0001", "object": "customer"},
    "/v1/checkout/sessions": {
        "id": "cs_test_Fake0001",
        "object": "checkout.session",
        "url": "https://checkout.stripe.com/c/pay/cs_test_Fake0001",
    },
    "/v1/billing_portal/sessions": {
        "id": "bps_Fake0001",
        "object": "billing_portal.session",
        "url": "https://billing.stripe.com/p/session/test_Fake0001",
    },
}


class FakeStripe:
    """``urls`` replaces the ``url`` a path answers with (``{"/v1/checkout/sessions": "https://pay.example.test/…"}``:
    a Checkout on a custom domain); the browser tests answer Stripe's hosted pages with Playwright routes.

    Checkout Sessions are numbered (``cs_test_Fake0001``, ``cs_test_Fake0002``…) and keep a status, as Stripe's do:
    ``open`` when created, ``complete`` once a test calls ``complete(id)`` (the owner paid), ``expired`` after
    ``POST /v1/checkout/sessions/<id>/expire`` (which, like Stripe, refuses a session that is not open);
    ``GET /v1/checkout/sessions/<id>`` answers it, and an unknown id is Stripe's 404 ``resource_missing``.
    ``fail_with`` answers every call (or only those under ``fail_on``) with that status: Stripe down."""

    def __init__(self, *, fail_with: int | None = None, urls: dict[str, str] | None = None) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []
        self.sessions: dict[str, str] = {}  # Checkout Session id → status
        self.fail_with = fail_with
        self.fail_on = "/v1/"  # fail_with answers the paths starting with this
        self.answers = {
            path: {**answer, "url": (urls or {}).get(path, answer["url"])} if "url" in answer else answer
            for path, answer in ANSWERS.items()
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fake.requests.append((self.path, parse_qs(body), self.headers.get("Authorization", "")))
                path = self.path.split("?")[0]
                if fake.fail_with and path.startswith(fake.fail_on):
                    status, answer = fake.fail_with, {"error": {"type": "api_error", "message": "Stripe is down"}}
                elif path.startswith("/v1/checkout/sessions/"):
                    status, answer = fake.session(self.command, path.removeprefix("/v1/checkout/sessions/"))
                else:
                    status, answer = 200, fake.answers.get(path, {"error": {"message": "unknown"}})
                    if path == "/v1/checkout/sessions" and status == 200:
                        answer = fake.new_session(answer)
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

    def new_session(self, answer: dict) -> dict:
        session_id = f"cs_test_Fake{len(self.sessions) + 1:04d}"
        self.sessions[session_id] = "open"
        return {
            **answer,
            "id": session_id,
            "status": "open",
            "url": answer["url"].replace("cs_test_Fake0001", session_id),
        }

    def session(self, method: str, rest: str) -> tuple[int, dict]:
        session_id, _, action = rest.partition("/")
        if session_id not in self.sessions:
            return 404, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "session",
                    "message": f"No such checkout.session: '{session_id}'",
                }
            }
        if method == "POST" and action == "expire":
            if self.sessions[session_id] != "open":
                message = f'Only Checkout Sessions with a status in ["open"] can be expired ({session_id}).'
                return 400, {"error": {"type": "invalid_request_error", "message": message}}
            self.sessions[session_id] = "expired"
        return 200, {"id": session_id, "object": "checkout.session", "status": self.sessions[session_id]}

    def complete(self, session_id: str) -> None:
        """The owner paid on Stripe's page: the session is ``complete`` (its webhook is the test's to deliver)."""
        self.sessions[session_id] = "complete"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
