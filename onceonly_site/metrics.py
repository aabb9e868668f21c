"""``GET /metrics``: Prometheus text exposition for monitoring (docs/operations.md, *Monitoring*).

Everything is read at scrape time from the shared sources — the database, Redis and the Celery broker — so every
web process answers the same numbers, without a multiprocess registry. Off (404) unless ONCEONLY_METRICS_TOKEN is
set; then the scraper sends ``Authorization: Bearer <token>``. The aggregates are cached for
ONCEONLY_METRICS_CACHE_SECONDS so that several scrapers (or a short interval) cost one set of queries.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError
from django.db.models import Count, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from django_redis.exceptions import ConnectionInterrupted

from onceonly_site import telemetry
from onceonly_site.health import service_checks, worker_last_seen_seconds
from onceonly_site.redis_client import get_broker_redis

CACHE_KEY = "metrics:v1"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Samples = list[tuple[dict[str, str], float]]  # (labels, value) of one metric
Family = tuple[str, str, str, Samples]  # (name, type, help, samples)


def _families() -> list[Family]:
    """(name, type, help, samples) for every metric; each source fails on its own (its *_up gauge says so)."""
    from billing.models import Account
    from governance.models import DecisionRollup, Tool
    from idempotency.models import Lease, LeaseStatus
    from onceonly_site.celery import app

    checks = service_checks()
    database_up, redis_up = checks["database"] == "ok", checks["redis"] == "ok"
    families: list[Family] = []
    if database_up:
        try:
            requests = Account.objects.aggregate(total=Sum("requests_total_all_time"))["total"] or 0
            decisions = DecisionRollup.objects.values("outcome").annotate(n=Sum("count")).order_by("outcome")
            leases = Lease.objects.filter(status=LeaseStatus.IN_PROGRESS).count()
            tools = Tool.objects.values("enabled").annotate(n=Count("id")).order_by("enabled")
            families += [
                (
                    "onceonly_api_requests_total",
                    "counter",
                    "Authenticated /v1 requests (flushed by each process every ONCEONLY_COUNTER_FLUSH_SECONDS).",
                    [({}, requests)],
                ),
                (
                    "onceonly_decisions_total",
                    "counter",
                    "Governed-call decisions by outcome (executed and failed are dispatches to registered tools).",
                    [({"outcome": r["outcome"]}, r["n"]) for r in decisions],
                ),
                (
                    "onceonly_leases_in_progress",
                    "gauge",
                    "Leases held right now (keyed runs included).",
                    [({}, leases)],
                ),
                (
                    "onceonly_tools",
                    "gauge",
                    "Registered tools by state.",
                    [({"enabled": "true" if r["enabled"] else "false"}, r["n"]) for r in tools],
                ),
            ]
            families += _detector_families()
        except DatabaseError:
            database_up = False
    queues: Samples = []
    if redis_up:
        # The broker is REDIS_URL's database, or the single Redis CELERY_BROKER_URL names (always with a cluster);
        # Celery's Redis transport keeps a queue's waiting tasks in a list named after the queue.
        names = sorted({"celery", app.conf.task_default_queue})
        try:
            pipe = get_broker_redis().pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            queues = [({"queue": name}, length) for name, length in zip(names, pipe.execute(), strict=True)]
        except redis.RedisError:
            redis_up = False
    if redis_up:
        try:
            families += _dispatch_families() + _otel_families() + _alert_families()
        except redis.RedisError:
            redis_up = False
    families += [
        ("onceonly_database_up", "gauge", "1 when the database answered this scrape.", [({}, int(database_up))]),
        ("onceonly_redis_up", "gauge", "1 when Redis answered this scrape.", [({}, int(redis_up))]),
        ("onceonly_celery_queue_length", "gauge", "Tasks waiting in the broker, by queue.", queues),
    ]
    seen = worker_last_seen_seconds()
    if seen is not None:
        families.append(
            (
                "onceonly_worker_heartbeat_age_seconds",
                "gauge",
                "Seconds since a Celery worker last ran the heartbeat task.",
                [({}, round(seen, 1))],
            )
        )
    return families


def _detector_families() -> list[Family]:
    """The containment detectors (docs/governance.md §"Metrics"), server-wide: from the alert rows, by detector."""
    from governance import detectors

    fired, contained = detectors.totals()
    return [
        (
            "onceonly_detector_alerts_total",
            "counter",
            "Containment detectors that fired (alert or contain mode), by detector.",
            [({"detector": name}, n) for name, n in fired.items()],
        ),
        (
            "onceonly_containments_total",
            "counter",
            "Agents a detector contained (its kill switch turned on, disabled_by auto), by detector.",
            [({"detector": name}, n) for name, n in contained.items()],
        ),
    ]


def _dispatch_families() -> list[Family]:
    """The bulkheads (docs/operations.md §"Slow tools and bulkheads"): dispatches in flight by account and tool, and
    the calls refused (by scope) or cut short by the deadline, server-wide."""
    from governance import slots

    totals = slots.totals()
    scopes = ("process", "account", "tool", "deadline")
    return [
        (
            "onceonly_dispatch_in_flight",
            "gauge",
            "Governed calls waiting on a registered tool right now, by account id and tool.",
            [({"account": str(a), "tool": t}, n) for a, t, n in slots.in_flight_everywhere()],
        ),
        (
            "onceonly_dispatch_refused_total",
            "counter",
            "Governed calls refused with 429 dispatch_busy, by the limit that was full (deadline: queued too long).",
            [({"scope": scope}, totals.get(f"refused:{scope}", 0)) for scope in scopes],
        ),
        (
            "onceonly_dispatch_deadline_total",
            "counter",
            "Dispatches the deadline cut short (an attempt timed out on it, or no retry could start).",
            [({}, totals.get("deadline", 0))],
        ),
    ]


def _otel_families() -> list[Family]:
    """The OpenTelemetry export (docs/operations.md §"OpenTelemetry export"), server-wide: what every process sent,
    and lost (a full queue, a receiver down or refusing)."""
    counts = telemetry.counters()
    return [
        (
            "onceonly_otel_spans_exported_total",
            "counter",
            "Spans the OTLP receiver accepted.",
            [({}, counts["exported"])],
        ),
        (
            "onceonly_otel_spans_dropped_total",
            "counter",
            "Spans dropped: the export queue was full, or their batch failed to export.",
            [({}, counts["dropped"])],
        ),
        (
            "onceonly_otel_export_failures_total",
            "counter",
            "Batches the OTLP receiver did not accept (down, timed out, or an error answer); their spans are dropped.",
            [({}, counts["export_failures"])],
        ),
    ]


def _alert_families() -> list[Family]:
    """Budget alerts fired (docs/governance.md §"Budget alerts"), server-wide, by the metric whose threshold was
    crossed (counted from the alert rows)."""
    from governance import alerts

    return [
        (
            "onceonly_budget_alerts_fired_total",
            "counter",
            "Budget alerts fired (each threshold of a cap once per period), by metric.",
            [({"metric": metric}, n) for metric, n in alerts.fired_counts().items()],
        )
    ]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{json.dumps(v)[1:-1]}"' for k, v in labels.items())  # backslash, quote, newline escaped
    return "{" + ",".join(escaped) + "}"


def render() -> str:
    lines = []
    for name, kind, help_text, samples in _families():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{_labels(labels)} {value:g}" for labels, value in samples]
    lines.append(f"onceonly_scrape_timestamp_seconds {time.time():.3f}")
    return "\n".join(lines) + "\n"


@require_GET
def prometheus(request: HttpRequest) -> HttpResponse:
    token = settings.ONCEONLY_METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: set ONCEONLY_METRICS_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = HttpResponse(
            "metrics need Authorization: Bearer <ONCEONLY_METRICS_TOKEN>\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    seconds = settings.ONCEONLY_METRICS_CACHE_SECONDS
    body = _cached(lambda: cache.get(CACHE_KEY)) if seconds else None
    if body is None:
        body = render()
        if seconds:
            _cached(lambda: cache.set(CACHE_KEY, body, seconds))
    return HttpResponse(body, content_type=CONTENT_TYPE)


def _cached(operation: Callable[[], Any]) -> Any:
    """A cache read or write that a Redis outage turns into a miss: the scrape must still report redis_up 0."""
    try:
        return operation()
    except (ConnectionInterrupted, redis.RedisError):
        return None
