"""The span of a run (docs/operations.md §"OpenTelemetry export"), exported when its ``run_finished`` event is
committed: a keyed run's end (completed, failed, timed out) and a one-step run's (a governed call with a run id).

Its ids are derived from the account and the run id (``onceonly_site.telemetry.run_ids``), so the governed calls of
the run are its children in the same trace; its timeline's events are the span's events — those since the run id's
previous ``run_finished`` (a key run again, several one-step runs under one id), at most ``MAX_EVENTS`` of them.
Event ``data`` is left out: a client writes what it likes there.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from django.db import transaction

from idempotency.models import RunEvent
from onceonly_site import telemetry

MAX_EVENTS = 128
RUN_FINISHED = "run_finished"


def runs_finished(events: list[RunEvent]) -> None:
    """Called with events just written (inside their transaction or not): each server ``run_finished`` among them
    exports its run after the commit. Nothing at all when export is off."""
    if not telemetry.enabled():
        return
    for event in events:
        if event.type == RUN_FINISHED and event.source == "server":
            transaction.on_commit(
                partial(_export, account_id=event.account_id, run_id=event.run_id, finished_at=event.ts), robust=True
            )


def _timeline(account_id: int, run_id: str, finished_at: datetime) -> list[RunEvent]:
    """The run's events up to its end, oldest first, from just after the run id's previous ``run_finished``."""
    latest = RunEvent.objects.filter(account_id=account_id, run_id=run_id, ts__lte=finished_at).order_by("-ts", "-id")
    picked: list[RunEvent] = []
    for event in latest[: MAX_EVENTS + 1]:
        if event.type == RUN_FINISHED and any(e.type == RUN_FINISHED for e in picked):
            break
        picked.append(event)
    return picked[:MAX_EVENTS][::-1]


@telemetry.guarded
def _export(*, account_id: int, run_id: str, finished_at: datetime) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = telemetry.tracer()
    if tracer is None:
        return
    events = _timeline(account_id, run_id, finished_at)
    finished = next((e for e in reversed(events) if e.type == RUN_FINISHED), None)
    if finished is None:
        return
    agent_id = finished.agent_id or next((e.agent_id for e in events if e.agent_id), "")
    data = finished.data if isinstance(finished.data, dict) else {}
    attributes = telemetry.attributes(
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.id": agent_id,
            "onceonly.account_id": account_id,
            "onceonly.run_id": run_id,
            "onceonly.run.status": finished.status,
            "onceonly.run.attempt": data.get("attempt"),
            "onceonly.run.error_code": data.get("error_code"),
            "onceonly.run.events": len(events),
        }
    )
    trace_id, span_id = telemetry.run_ids(account_id, run_id)
    with telemetry.forced_ids(trace_id, span_id):
        span = tracer.start_span(
            f"invoke_agent {agent_id}" if agent_id else "invoke_agent",
            context=telemetry.root_context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=telemetry.nanos(events[0].ts),
        )
    for event in events:
        span.add_event(
            event.type,
            telemetry.attributes(
                {
                    "onceonly.event_id": event.pk,
                    "onceonly.source": event.source,
                    "onceonly.status": event.status,
                    "onceonly.step": event.step,
                    "gen_ai.tool.name": event.tool,
                    "gen_ai.agent.id": event.agent_id,
                    "onceonly.decision_id": event.decision_id,
                    "onceonly.duration_ms": event.duration_ms,
                    "onceonly.message": event.message,
                }
            ),
            timestamp=telemetry.nanos(event.ts),
        )
    if finished.status == "failed":
        span.set_status(Status(StatusCode.ERROR, finished.message or data.get("error_code") or "failed"))
    span.end(end_time=telemetry.nanos(finished.ts))
