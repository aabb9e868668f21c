"""Request ids (every response carries ``X-Request-Id``: the caller's, if sane, else a generated one), the
security headers Django's own middleware does not set (Content-Security-Policy, Permissions-Policy), and the
refusal of control characters in paths and query strings."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve

from onceonly_site.identifiers import CONTROL, UNSAFE, control_problem, identifier_problem

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
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Swagger UI (/api/docs/) and Django's admin set inline styles of their own; they get 'unsafe-inline' for styles
# only — their scripts are still files from this origin.
THIRD_PARTY_UI_PREFIXES = ("/api/docs/", "/admin/")
THIRD_PARTY_UI_POLICY = CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Paid plans (docs/billing.md): *Subscribe to …* and *Manage billing* post to this origin, which answers 303 to a
# Checkout or Customer Portal session. Chromium applies form-action to every redirect of a form submission, so
# with Stripe configured (and only then) the dashboard's pages also allow the two origins Stripe serves those
# sessions from (Stripe's own CSP guidance); a posted form still reaches nothing else. A session on a custom domain
# is not listed: billing/views.py sees that its origin is not here and hands the owner a link instead.
STRIPE_FORM_ACTION_ORIGINS = ("https://checkout.stripe.com", "https://billing.stripe.com")
STRIPE_POLICY = CONTENT_SECURITY_POLICY.replace(
    "form-action 'self'", " ".join(("form-action 'self'", *STRIPE_FORM_ACTION_ORIGINS))
)
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


class SecurityHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        third_party = request.path.startswith(THIRD_PARTY_UI_PREFIXES)
        if third_party:
            policy = THIRD_PARTY_UI_POLICY
        else:  # STRIPE_ENABLED is read per request: tests turn Stripe on and off
            policy = STRIPE_POLICY if settings.STRIPE_ENABLED else CONTENT_SECURITY_POLICY
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response


class ControlCharactersMiddleware:
    """Refuses control characters (C0, DEL, C1: ``onceonly_site.identifiers.CONTROL``) in the path and in every
    query parameter, before any view runs: no identifier may hold one, PostgreSQL cannot store U+0000 (it was a 500
    wherever a view queried with it), and one place covers every route, present and future. A path carries only
    identifiers (agent ids, run ids, tool names, numbers), so it refuses bidirectional formatting characters too
    (``identifiers.UNSAFE``); a query value may be an opaque idempotency key, which may hold them.

    ``/v1``: a 422 in the error contract's list form (``loc`` ``["path", <parameter>]`` or ``["query", <name>]``),
    or the JSON 404 when no route takes the path. Dashboard pages: the HTML 404 page for a path, the HTML 400 page for
    a query. The body of a request is the view's business (``onceonly_site.api.parse_json_body``, the forms)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path_bad = UNSAFE.search(request.path_info) is not None
        query_bad: list[str] = []
        if request.META.get("QUERY_STRING"):
            query_bad = [
                name
                for name, values in request.GET.lists()
                if CONTROL.search(name) or any(CONTROL.search(v) for v in values)
            ]
        if not path_bad and not query_bad:
            return self.get_response(request)
        api = request.path_info == "/v1" or request.path_info.startswith("/v1/")
        if api:
            return self._api_refusal(request, path_bad, query_bad)
        if path_bad:
            return render(request, "404.html", status=404)
        return render(request, "400.html", status=400)

    @staticmethod
    def _api_refusal(request: HttpRequest, path_bad: bool, query_bad: list[str]) -> HttpResponse:
        items = []
        if path_bad:
            try:
                match = resolve(request.path_info)
            except Resolver404:
                match = None
            if match is None or match.url_name is None:  # only the catch-all JSON 404 takes it
                return JsonResponse({"detail": "Not Found"}, status=404)
            names: list[str | None] = [
                name for name, value in match.kwargs.items() if isinstance(value, str) and UNSAFE.search(value)
            ]
            for name in names or [None]:
                value = match.kwargs[name] if name else request.path_info
                loc = ["path", name] if name else ["path"]
                items.append({"type": "string_pattern_mismatch", "loc": loc, "msg": identifier_problem(value)})
        for name in query_bad:
            value = name + "".join(request.GET.getlist(name))
            items.append({"type": "string_pattern_mismatch", "loc": ["query", name], "msg": control_problem(value)})
        return JsonResponse({"detail": items}, status=422)
