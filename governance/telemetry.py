"""The span of a governed call (docs/operations.md §"OpenTelemetry export"), exported when its decision is committed.

Named and attributed after the OpenTelemetry GenAI semantic conventions where they fit (``execute_tool <tool>``,
``gen_ai.*``), with the decision's own fields under ``onceonly.*``. Never the call's args: only their hash. A call
with a run id is a child of its run's span (``onceonly_site.telemetry.run_context``), in the run's trace.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from django.db import transaction

from governance.choices import Outcome
from governance.models import Decision
from onceonly_site import telemetry


def export_call(*, agent_id: str, started_at: datetime, decision: Decision) -> None:
    """After the decision's commit (now, outside a transaction): one span, queued for the export thread. Nothing at
    all when export is off."""
    if not telemetry.enabled():
        return
    try:
        span = _call_span(agent_id, started_at, decision)
    except Exception:  # a field that does not read as expected: the call goes on, the span is lost
        telemetry.logger.warning("OpenTelemetry: decision %s not exported", decision.pk, exc_info=True)
        return
    transaction.on_commit(partial(_export, **span), robust=True)


def _call_span(agent_id: str, started_at: datetime, decision: Decision) -> dict[str, Any]:
    """What the span needs, read now (the decision object may change after this call)."""
    failed = decision.outcome == Outcome.FAILED
    return {
        "name": f"execute_tool {decision.tool}",
        "account_id": decision.account_id,
        "run_id": decision.run_id,
        "start": started_at,
        "end": decision.ts,
        "error": decision.policy_reason if failed else None,
        "attributes": telemetry.attributes(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": decision.tool,
                "gen_ai.agent.id": agent_id,
                "onceonly.account_id": decision.account_id,
                "onceonly.decision_id": decision.pk,
                "onceonly.policy_version": decision.policy_version,
                "onceonly.outcome": decision.outcome,
                "onceonly.reason": decision.policy_reason,
                "onceonly.allowed": decision.allowed,
                "onceonly.row_hash": decision.row_hash,
                "onceonly.args_hash": decision.args_hash,
                "onceonly.spend_usd": float(decision.spend_usd or 0),
                "onceonly.risk_level": decision.risk_level,
                "onceonly.latency_ms": decision.latency_ms,
                "onceonly.run_id": decision.run_id,
                "onceonly.dispatch_id": decision.dispatch_id,
                "http.response.status_code": decision.http_status,
            }
        ),
    }


@telemetry.guarded
def _export(
    *,
    name: str,
    account_id: int,
    run_id: str,
    start: datetime,
    end: datetime,
    error: str | None,
    attributes: dict[str, Any],
) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = telemetry.tracer()
    if tracer is None:
        return
    context = telemetry.run_context(account_id, run_id) if run_id else telemetry.root_context()
    span = tracer.start_span(
        name, context=context, kind=SpanKind.INTERNAL, attributes=attributes, start_time=telemetry.nanos(start)
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=telemetry.nanos(end))
