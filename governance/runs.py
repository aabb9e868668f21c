"""The action executor of keyed runs: ``metadata.actions`` run through the governed call as ``metadata.agent_id``.

Registered with ``idempotency.jobs`` in ``GovernanceConfig.ready()`` (idempotency never imports governance).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billing import usage
from billing.auth import plan_limits_for
from governance import services
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
        )
    except usage.QuotaExceeded:
        return ActionOutcome("blocked", False, None, None, error="usage_limit")
    except services.ToolNotFound:
        return ActionOutcome("blocked", False, None, None, error="tool_not_found")
    d = outcome.decision
    return ActionOutcome(d.outcome, d.allowed, d.policy_reason, d.pk, d.result)
