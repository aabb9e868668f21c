"""Bench only (bench/settings.py): a ``Server-Timing`` header on every dashboard page, so the harness reads the
server's own time of each request — middleware, view, queries, template — instead of the client's.

    Server-Timing: app;dur=41.3, db;dur=12.8;desc="9 queries"

``app`` is the time from this middleware (the first) to the response; ``db`` is the time spent in SQL statements
on the default connection and their count. The API and the floor (``/v1/``, ``/bench/``) pass straight through, so
the API scenarios pay nothing for it. Never part of a deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import connection
from django.http import HttpRequest, HttpResponse

SKIPPED = ("/v1/", "/bench/", "/static/", "/healthz")


class ServerTimingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(SKIPPED):
            return self.get_response(request)
        sql = [0, 0.0]

        def timed(execute, statement, params, many, context):
            started = time.perf_counter()
            try:
                return execute(statement, params, many, context)
            finally:
                sql[0] += 1
                sql[1] += time.perf_counter() - started

        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            response = self.get_response(request)
        app_ms = (time.perf_counter() - started) * 1000
        response["Server-Timing"] = f'app;dur={app_ms:.2f}, db;dur={sql[1] * 1000:.2f};desc="{sql[0]} queries"'
        return response
