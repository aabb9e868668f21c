"""Run events (timelines, docs/api.md §"Run events and timelines"): written by clients through ``POST /v1/events``
and by the server for keyed runs and governed calls that carry a run id. Governance emits its events through
``emit_many``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from idempotency import telemetry
from idempotency.models import RunEvent

STRING_FIELDS = ("status", "step", "tool", "req_id", "lease_id", "agent_id")
FIELD_LIMITS = {
    "type": 64,
    "status": 64,
    "step": 256,
    "tool": 256,
    "req_id": 256,
    "lease_id": 256,
    "agent_id": 256,
    "message": 4000,
}


def _clip(fields: dict[str, Any]) -> dict[str, Any]:
    for name, limit in FIELD_LIMITS.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            fields[name] = value[: limit - 1] + "…"
    return fields


def build(account_id: int, run_id: str, type: str, **fields: Any) -> RunEvent:
    """An unsaved server event (the caller saves it, alone or with others)."""
    fields.setdefault("ts", timezone.now())
    fields = {name: value for name, value in fields.items() if value is not None}
    return RunEvent(account_id=account_id, run_id=run_id[:256], type=type, source="server", **_clip(fields))


def emit(account_id: int, run_id: str, type: str, **fields: Any) -> RunEvent:
    event = build(account_id, run_id, type, **fields)
    event.save()
    telemetry.runs_finished([event])
    return event


def emit_many(events: list[RunEvent]) -> None:
    if events:
        RunEvent.objects.bulk_create(events)
        telemetry.runs_finished(events)


def record_client_event(account_id: int, fields: dict[str, Any], extra: dict[str, Any]) -> RunEvent:
    """``POST /v1/events`` (input already validated): stored as sent, unknown top-level keys in ``extra``."""
    ts = fields.pop("ts", None)
    when = datetime.fromtimestamp(ts, tz=UTC) if ts is not None else timezone.now()
    return RunEvent.objects.create(account_id=account_id, ts=when, source="client", extra=extra or None, **fields)


def as_json(event: RunEvent) -> dict[str, Any]:
    """The wire shape of an event: known fields first, then the client's extra keys (never overriding them)."""
    body: dict[str, Any] = {
        "event_id": event.pk,
        "run_id": event.run_id,
        "ts": int(event.ts.timestamp()),
        "at": event.ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "type": event.type,
        "status": event.status or None,
        "step": event.step or None,
        "tool": event.tool or None,
        "message": event.message or None,
        "duration_ms": event.duration_ms,
        "req_id": event.req_id or None,
        "lease_id": event.lease_id or None,
        "agent_id": event.agent_id or None,
        "data": event.data,
        "decision_id": event.decision_id,
        "source": event.source,
    }
    for name, value in (event.extra or {}).items():
        body.setdefault(name, value)
    return body
