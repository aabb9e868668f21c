"""OpenTelemetry export (docs/operations.md §"OpenTelemetry export"): the tracer that governed calls and runs are
exported through, over OTLP/HTTP, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set — and nothing at all when it is not
(no provider, no thread, not even the SDK imported).

Export must never slow or fail a call. A span's end only appends it to a bounded in-memory queue (the SDK's
``BatchSpanProcessor``); a thread of the process sends the queue in batches. When the queue is full, or the receiver
is down or refuses a batch, spans are dropped and counted: the counts are added to a Redis hash by that thread, so
``/metrics`` (onceonly_site/metrics.py) shows the same totals from every process, web and worker alike.

The provider is built on first use in each process, and again after a fork (gunicorn workers, Celery's prefork
pool): the batching thread of a parent does not survive a fork. The apps build their spans (governance/telemetry.py,
idempotency/telemetry.py) with ``tracer()``; everything they do with it runs inside ``guarded()``, so an error of
the export is logged, never raised into a request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec

import redis
from django.conf import settings

from onceonly_site.redis_client import get_redis

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)
P = ParamSpec("P")

COUNTERS_KEY = "otel:counters"  # Redis hash: exported, dropped, export_failures (server-wide totals)
COUNTERS = ("exported", "dropped", "export_failures")
SCOPE = "onceonly"


def enabled() -> bool:
    return bool(settings.OTEL_EXPORTER_OTLP_ENDPOINT)


# --- counters ---------------------------------------------------------------------------------------------------

_pending: dict[str, int] = {}
_pending_lock = threading.Lock()


def _count(**amounts: int) -> None:
    with _pending_lock:
        for name, amount in amounts.items():
            _pending[name] = _pending.get(name, 0) + amount


def flush_counters() -> None:
    """Add this process's counts to the server-wide hash (from the export thread, off any request). A Redis error
    keeps them for the next flush."""
    with _pending_lock:
        taken = {name: amount for name, amount in _pending.items() if amount}
        _pending.clear()
    if not taken:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for name, amount in taken.items():
            pipe.hincrby(COUNTERS_KEY, name, amount)
        pipe.execute()
    except redis.RedisError:
        _count(**taken)


def counters() -> dict[str, int]:
    """The server-wide totals (every counter, 0 when none was counted); raises redis.RedisError."""
    stored = get_redis().hgetall(COUNTERS_KEY)
    values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in stored.items()}
    return {name: values.get(name, 0) for name in COUNTERS}


# --- the provider -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exporting:
    pid: int
    endpoint: str
    provider: TracerProvider
    tracer: Tracer


_state: _Exporting | None = None
_build_lock = threading.Lock()
_forced = threading.local()  # (trace_id, span_id) the next root span takes (``forced_ids``)


def tracer() -> Tracer | None:
    """This process's tracer; None when export is off."""
    endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT
    if not endpoint:
        return None
    state = _state
    if state is None or state.pid != os.getpid() or state.endpoint != endpoint:
        state = _build(endpoint)
    return state.tracer


def _build(endpoint: str) -> _Exporting:
    global _state
    with _build_lock:
        state = _state
        if state is not None and state.pid == os.getpid() and state.endpoint == endpoint:
            return state
        if state is not None and state.pid == os.getpid():
            _shutdown(state)  # the endpoint changed (tests): the old provider's thread ends
        _state = state = _provider(endpoint)
        return state


def _provider(endpoint: str) -> _Exporting:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ForcedIds(RandomIdGenerator):
        """Random ids, except for the root span started inside ``forced_ids`` (a run's: ids derived from it)."""

        def generate_trace_id(self) -> int:
            forced = getattr(_forced, "ids", None)
            return forced[0] if forced else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = getattr(_forced, "ids", None)
            return forced[1] if forced else super().generate_span_id()

    class CountingExporter(SpanExporter):
        """The OTLP exporter, counting what it sent and what it lost (the batch of a failed export is dropped: the
        SDK does not keep it)."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result = self.inner.export(spans)
            except Exception:
                logger.warning("OpenTelemetry export failed", exc_info=True)
                result = SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                _count(exported=len(spans))
            else:
                _count(export_failures=1, dropped=len(spans))
            flush_counters()
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    class CountingProcessor(BatchSpanProcessor):
        """Counts the spans the full queue pushes out (the SDK drops the oldest and only logs it)."""

        def on_end(self, span: ReadableSpan) -> None:
            queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)
            if queue is not None and queue.maxlen is not None and len(queue) >= queue.maxlen:
                _count(dropped=1)
            super().on_end(span)

    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or endpoint.rstrip("/") + "/v1/traces"
    # Headers, timeout, compression and the batch sizes come from the standard OTEL_* variables (the SDK reads them).
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}),
        id_generator=ForcedIds(),  # the sampler: OTEL_TRACES_SAMPLER, by default every span (parent-based)
    )
    provider.add_span_processor(CountingProcessor(CountingExporter(OTLPSpanExporter(endpoint=traces))))
    return _Exporting(os.getpid(), endpoint, provider, provider.get_tracer(SCOPE))


def _shutdown(state: _Exporting) -> None:
    try:
        state.provider.shutdown()
    except Exception:
        logger.warning("OpenTelemetry provider shutdown failed", exc_info=True)


def force_flush(timeout_millis: int = 30000) -> bool:
    """Send what this process queued, now (tests, and a process about to stop); False when export is off."""
    state = _state
    if state is None or state.pid != os.getpid():
        return False
    flushed = state.provider.force_flush(timeout_millis)
    flush_counters()
    return flushed


def reset() -> None:
    """Shut this process's provider down (its thread ends after a last export); the next span builds a new one."""
    global _state
    with _build_lock:
        state, _state = _state, None
    if state is not None and state.pid == os.getpid():
        _shutdown(state)


# --- what the apps build spans with -------------------------------------------------------------------------------


def guarded(function: Callable[P, None]) -> Callable[P, None]:
    """``function`` with every error logged, never raised: telemetry must not fail the call it describes."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            logger.warning("OpenTelemetry: %s failed; the span is lost", function.__name__, exc_info=True)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper


def run_ids(account_id: int, run_id: str) -> tuple[int, int]:
    """The trace id and span id of a run's span, derived from the run: the governed calls of the run, exported
    before the run ends (keyed runs) or by another process, are parented on it without knowing anything else."""
    digest = hashlib.sha256(f"{account_id}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def run_context(account_id: int, run_id: str) -> Context:
    """A context whose (remote) parent is the run's span."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    trace_id, span_id = run_ids(account_id, run_id)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


@contextmanager
def forced_ids(trace_id: int, span_id: int) -> Iterator[None]:
    """The root span started in the block takes these ids."""
    _forced.ids = (trace_id, span_id)
    try:
        yield
    finally:
        _forced.ids = None


def root_context() -> Context:
    from opentelemetry.context import Context

    return Context()


def nanos(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


def attributes(values: dict[str, Any]) -> dict[str, Any]:
    """Span attributes without the empty ones (None and "": OTLP has no null)."""
    return {name: value for name, value in values.items() if value is not None and value != ""}
