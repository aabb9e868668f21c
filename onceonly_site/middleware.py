"""Request ids (every response carries ``X-Request-Id``: the caller's, if sane, else a generated one) and the
security headers Django's own middleware does not set (Content-Security-Policy, Permissions-Policy)."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The id is echoed into a header and into logs: accept only short, printable, header-safe values.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def current_request_id() -> str:
    return _request_id.get()


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        inbound = request.headers.get("X-Request-Id", "").strip()
        request_id = inbound if _SAFE_ID.match(inbound) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        # Not reset after the response: Django logs 4xx/5xx responses after the middleware chain returned, and
        # those lines should carry the id too. The next request on this thread sets its own.
        _request_id.set(request_id)
        response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        return True


# Scripts and styles only from this origin, nothing inline (no inline <script>, no on*= attributes, no style=
# attributes: static/js/app.js does what they would); json_script data blocks are not scripts. 'unsafe-eval' is
# absent too (htmx runs with allowEval off). No framing, no plugins, forms post only here.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
    "font-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
])  # fmt: skip
# Swagger UI (/api/docs/) and Django's admin set inline styles of their own; they get 'unsafe-inline' for styles
# only — their scripts are still files from this origin.
THIRD_PARTY_UI_PREFIXES = ("/api/docs/", "/admin/")
THIRD_PARTY_UI_POLICY = CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        third_party = request.path.startswith(THIRD_PARTY_UI_PREFIXES)
        policy = THIRD_PARTY_UI_POLICY if third_party else CONTENT_SECURITY_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response
