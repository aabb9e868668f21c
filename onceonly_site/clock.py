"""One clock per request: when it arrived, so that a deadline counts the time it waited to be served.

The earliest the application sees a request is when its first middleware runs; time spent before that — in the
proxy, in the listen backlog, in the web server's queue for a free thread — is invisible to it. A reverse proxy can
say when it received the request: nginx's ``proxy_set_header X-Request-Start "t=${msec}";`` (deploy/nginx/ sets it;
the same header Heroku's router and New Relic use). Its forms: ``t=<seconds>`` with a fraction, or whole
milliseconds or microseconds since the epoch.

The header only ever moves the arrival *earlier*, and never by more than ``MAX_QUEUE_SECONDS``: a caller who forges
it can only shorten its own call's deadline; a value in the future (or clocks out of step) counts as "now".
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

# No request waits in a queue longer than this; an older X-Request-Start is a wrong clock, not a queue.
MAX_QUEUE_SECONDS = 60.0


def _epoch_seconds(raw: str) -> float | None:
    value = raw.strip().removeprefix("t=")
    try:
        number = float(value)
    except ValueError:
        return None
    if number != number or number <= 0:  # NaN, or not a time
        return None
    # Seconds (nginx's $msec, 10 digits before the point), else milliseconds (13) or microseconds (16).
    for scale in (1.0, 1e3, 1e6):
        if number / scale < 1e10:
            return number / scale
    return None


def queued_seconds(header: str | None, now: float) -> float:
    """How long before ``now`` (epoch seconds) the proxy received the request, per its X-Request-Start (0 without
    one, or with one that cannot be right)."""
    if not header:
        return 0.0
    started = _epoch_seconds(header)
    if started is None:
        return 0.0
    queued = now - started
    return queued if 0 < queued <= MAX_QUEUE_SECONDS else 0.0


class RequestClockMiddleware:
    """First in MIDDLEWARE: stamps ``request.arrived`` (time.monotonic() of the arrival)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        mono = time.monotonic()
        request.arrived = mono - queued_seconds(request.META.get("HTTP_X_REQUEST_START"), time.time())  # type: ignore[attr-defined]
        return self.get_response(request)


def arrived(request: HttpRequest) -> float:
    """time.monotonic() when ``request`` arrived (now, for a request the middleware did not see)."""
    return getattr(request, "arrived", None) or time.monotonic()
