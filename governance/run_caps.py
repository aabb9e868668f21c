"""Raise & resume (docs/runs.md §"Runs that pause at a cap"): a keyed run paused at a per-run cap goes on with caps of
its own, after a check that they let the paused action through; and what a pause tells (an alert in the feed, the
notification channels).

The run's own caps (``Run.cap_overrides``) replace its agent's policy's per-run caps for that run only: raising them
for one run loosens nothing for the agent's other runs. The check uses the numbers the blocked action recorded, so a
resume that would pause again at once is refused (422) instead of waking a worker for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from billing.services import audit_record
from governance import channels, policies
from governance.choices import AlertKind, Reason
from governance.models import Agent, Alert, NotificationChannel
from governance.services import Caps
from idempotency import runs
from idempotency.models import Run
from onceonly_site.api import BodyCheck
from onceonly_site.bodies import Body, Integer, Usd
from onceonly_site.formatting import usd


class ResumeInput(Body):
    """The run's new per-run caps: each sent replaces the one it has (its own, else its policy's); none sent resumes
    with the caps as they stand (the policy may have been raised meanwhile)."""

    partial = True
    max_actions_per_run = Integer(0, policies.MAX_NUMBER, whole_floats=True, description="Actions in this run.")
    max_spend_usd_per_run = Usd(rounded=True, description="Spend in this run (USD).")
    max_calls_per_tool_per_run = Integer(
        0, policies.MAX_NUMBER, whole_floats=True, description="Calls of any one tool in this run."
    )
    max_run_seconds = Integer(
        1, policies.RUN_SECONDS_MAX, whole_floats=True, description="Seconds from the run's first action."
    )

    def clean(self, check: BodyCheck, prefix: str) -> None:  # nothing across fields
        return None


class NotPaused(Exception):
    """No keyed run of that run id is paused (``found``: whether the run id has keyed runs at all)."""

    def __init__(self, run_id: str, found: bool) -> None:
        super().__init__(run_id)
        self.found = found


@dataclass(frozen=True)
class StillCapped(Exception):
    """The caps sent (with the rest as they stand) would pause the run again at the same action."""

    field: str
    message: str


def _still_capped(run: Run, caps: Caps) -> StillCapped | None:
    """Whether the paused action would meet a per-run cap again under ``caps``: every cap, in the order the atomic
    step decides them, against the run's counts its blocked decision recorded (``run``: actions, calls of the
    action's tool, spend and seconds since the first action — the seconds grown by the pause since)."""
    paused = (run.result or {}).get("paused") or {}
    counts = paused.get("run") if isinstance(paused.get("run"), dict) else {}
    if not counts:  # a pause recorded before the counts were: the cap that paused it, from its own numbers
        reason = paused.get("reason") or run.waiting_for
        counts = {
            "actions": paused.get("count") if reason == Reason.RUN_ACTION_LIMIT_EXCEEDED else 0,
            "tool_calls": paused.get("count") if reason == Reason.RUN_TOOL_CALL_LIMIT_EXCEEDED else 0,
            "spent": paused.get("spent") or 0,
            "elapsed_seconds": paused.get("elapsed_seconds") or 0,
        }
    since = max(0.0, (timezone.now() - run.enqueued_at).total_seconds())  # the pause started at enqueued_at
    elapsed = float(counts.get("elapsed_seconds") or 0) + since
    if caps.run_seconds is not None and caps.run_seconds <= elapsed:
        return StillCapped(
            "max_run_seconds", f"The run's first action was {elapsed:,.0f} s ago: max_run_seconds must exceed it."
        )
    actions = int(counts.get("actions") or 0)
    if caps.run_actions is not None and caps.run_actions <= actions:
        return StillCapped(
            "max_actions_per_run", f"The run made {actions} actions: max_actions_per_run must be more than {actions}."
        )
    tool_calls = int(counts.get("tool_calls") or 0)
    if caps.run_calls is not None and caps.run_calls <= tool_calls:
        return StillCapped(
            "max_calls_per_tool_per_run",
            f"The run made {tool_calls} calls of the paused action's tool: max_calls_per_tool_per_run must be more "
            f"than {tool_calls}.",
        )
    spent, cost = float(counts.get("spent") or 0), float(counts.get("cost") or paused.get("cost") or 0)
    if caps.run_spend is not None and caps.run_spend < spent + cost:
        return StillCapped(
            "max_spend_usd_per_run",
            f"The run spent {usd(spent)} and the paused action costs {usd(cost)}: max_spend_usd_per_run must be at "
            f"least {usd(spent + cost)}.",
        )
    return None


def resume(*, account_id: int, run_id: str, caps: dict[str, Any], actor: str) -> Run:
    """Raise & resume the account's paused keyed run of ``run_id`` (the newest, if several): audited; the run is
    queued again with ``caps`` as its own per-run caps. Raises NotPaused, StillCapped."""
    run = runs.paused_run(account_id, run_id)
    if run is None:
        raise NotPaused(run_id, Run.objects.filter(account_id=account_id, run_id=run_id).exists())
    policy = Agent.objects.filter(account_id=account_id, agent_id=run.agent_id).values_list("policy", flat=True).first()
    tool = str(((run.result or {}).get("paused") or {}).get("tool") or "")
    problem = _still_capped(run, Caps.of(policy or {}, tool, {**(run.cap_overrides or {}), **caps}))
    if problem is not None:
        raise problem
    with transaction.atomic():
        resumed = runs.resume_paused(run, caps, actor)
        audit_record(
            account=run.account,
            actor_label=actor,
            action="governance.run.resumed",
            object_type="run",
            object_id=run_id,
            data={"key": run.key, "caps": caps, "from_step": run.actions_done + 1},
        )
    return resumed


def on_run_paused(run: Run, paused: runs.Pause) -> None:
    """A keyed run paused at a cap (after the commit): an alert in the feed, once per run and action, and the
    notification channels subscribed to ``run_paused``."""
    agent = Agent.objects.filter(account_id=run.account_id, agent_id=run.agent_id).first()
    numbers = paused.answer()
    message = (
        f"Run {run.run_id} of {run.agent_id or 'an agent'} paused at action {paused.step} ({paused.tool}): "
        f"{paused.reason}. Raise & resume it before {numbers['paused_until']}, or it fails run_cap_exceeded."
    )
    timeline = settings.ONCEONLY_PUBLIC_URL.rstrip("/") + reverse("idempotency:run-timeline")
    timeline += "?" + urlencode({"run_id": run.run_id})
    try:
        with transaction.atomic():  # the alert and its deliveries together: both, or neither
            alert = Alert.objects.create(
                account_id=run.account_id,
                agent=agent,
                kind=AlertKind.RUN_PAUSED,
                code=paused.reason,
                once=f"run_paused:{run.pk}:{run.fence}:{paused.step}",
                message=message[:1000],
                data={"run_id": run.run_id, "key": run.key, **numbers},
            )
            payload = {
                "alert_id": alert.pk,
                "message": alert.message,
                "run_id": run.run_id,
                "key": run.key,
                "agent_id": run.agent_id,
                **numbers,
                "run_url": timeline,  # its timeline page, where Raise & resume is
                "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
            }
            channels.publish(run.account_id, NotificationChannel.Event.RUN_PAUSED, payload, message)
    except IntegrityError:
        return  # told already (the same pause seen twice)


def connect_pauses() -> None:
    """Tell governance of keyed runs that pause (idempotent; from GovernanceConfig.ready())."""
    if on_run_paused not in runs.PAUSED_LISTENERS:
        runs.PAUSED_LISTENERS.append(on_run_paused)
