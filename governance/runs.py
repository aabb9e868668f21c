"""The action executor of keyed runs: ``metadata.actions`` run through the governed call as ``metadata.agent_id``;
and what keyed runs waiting for an approval learn of it (docs/runs.md §"Runs that wait for an approval").

Registered with ``idempotency`` in ``GovernanceConfig.ready()`` (idempotency never imports governance):
``jobs.set_action_executor(execute_action)`` and ``connect_approvals()``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing import usage
from billing.auth import plan_limits_for
from governance import approvals, services
from governance.models import Approval
from idempotency import runs
from idempotency.jobs import ActionOutcome


def execute_action(
    *,
    account_id: int,
    agent_id: str,
    tool: str,
    args: dict[str, Any],
    spend_usd: float | None,
    run_id: str,
    dry_run: bool,
    run_caps: dict[str, Any] | None = None,
) -> ActionOutcome:
    plan = plan_limits_for(account_id)  # read per action: a plan change applies to the next action of a run
    if not plan.has_governance:
        return ActionOutcome("blocked", False, None, None, error="feature_not_available")
    try:
        outcome = services.governed_call(
            account_id=account_id,
            plan=plan,
            agent_id=agent_id,
            tool=tool,
            args=args,
            spend_usd=Decimal(str(spend_usd)) if spend_usd is not None else None,
            run_id=run_id,
            dry_run=dry_run,
            finishes_run=False,
            run_caps=run_caps,
        )
    except usage.QuotaExceeded:
        return ActionOutcome("blocked", False, None, None, error="usage_limit")
    except services.ToolNotFound:
        return ActionOutcome("blocked", False, None, None, error="tool_not_found")
    d = outcome.decision
    return ActionOutcome(d.outcome, d.allowed, d.policy_reason, d.pk, d.result, explain=d.explain)


def news_of(approval: Approval) -> runs.ApprovalNews:
    return runs.ApprovalNews(
        account_id=approval.account_id,
        approval_id=approval.public_id,
        status=approval.status,
        decided_by=approval.decided_by,
        reason=approval.reason,
    )


def approval_settled(approval: Approval) -> None:
    """``approvals.SETTLED`` listener (after the commit): the keyed runs waiting for this approval go on or fail."""
    runs.approval_settled(news_of(approval))


def read_approvals(account_id: int, public_ids: list[str]) -> list[runs.ApprovalNews]:
    """What became of these approvals of the account (the run sweeper's second look); unknown ids are left out."""
    return [news_of(a) for a in Approval.objects.filter(account_id=account_id, public_id__in=public_ids)]


def connect_approvals() -> None:
    """Tell keyed runs of approvals: the listener and the sweeper's reader (idempotent)."""
    if approval_settled not in approvals.SETTLED:
        approvals.SETTLED.append(approval_settled)
    runs.set_approval_reader(read_approvals)
