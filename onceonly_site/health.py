"""Liveness of the stack's parts, for `/healthz` and the dashboard: database, Redis, Celery workers."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

from onceonly_site.redis_client import get_redis

HEARTBEAT_KEY = "oo:worker:heartbeat"
# Beat schedules a heartbeat every HEARTBEAT_INTERVAL seconds; a worker is "seen" if one ran within this window.
HEARTBEAT_INTERVAL = 30
HEARTBEAT_STALE_AFTER = 3 * HEARTBEAT_INTERVAL


def record_worker_heartbeat() -> None:
    get_redis().set(HEARTBEAT_KEY, repr(time.time()), ex=HEARTBEAT_STALE_AFTER * 10)


def worker_last_seen_seconds() -> float | None:
    """Seconds since a Celery worker last ran the heartbeat task, or None if none ever did (or Redis is down)."""
    try:
        raw = get_redis().get(HEARTBEAT_KEY)
    except redis.RedisError:
        return None
    return None if raw is None else max(0.0, time.time() - float(raw))


def service_checks() -> dict[str, str]:
    """``"ok"`` or ``"error: <exception class>"`` for the database and for Redis (/healthz and /metrics)."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
    return checks


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis answer (what a load balancer needs), else 503 naming the broken part.

    The worker's heartbeat is reported but does not fail the check: web processes serve without workers.
    """
    checks: dict[str, Any] = service_checks()
    seen = worker_last_seen_seconds()
    checks["worker_last_seen_seconds"] = None if seen is None else round(seen, 1)
    healthy = checks["database"] == "ok" and checks["redis"] == "ok"
    return JsonResponse({"status": "ok" if healthy else "unavailable", **checks}, status=200 if healthy else 503)
