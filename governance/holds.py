"""Retention per account and plan, and legal holds (docs/operations.md §"Retention").

The retention of an account's history is its own override (``Account.retention_days``), else its plan's
(``Plan.retention_days``), else the server's ``ONCEONLY_RETENTION_DAYS``. A legal hold on the account keeps all of
its history past retention; a hold on an agent keeps the keyed runs and run events that name it. Setting or clearing
a hold is an owner's action (dashboard) or an admin-scoped key's (API), always with a reason, always audited. The
retention sweep itself is ``idempotency.services.retention_sweep``, which reads the holds through ``held_agents``
(registered in governance/apps.py: the idempotency app does not import governance).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import Account
from billing.services import audit_record
from governance.models import Agent

MAX_REASON = 1000


class HoldError(Exception):
    """A hold that cannot be set or cleared as asked (no reason, nothing to clear, an unknown agent)."""


def effective_retention_days(account: Account) -> int:
    """The number of days the account's history is kept (its own override, its plan's, the server's)."""
    for days in (account.retention_days, account.plan.retention_days):
        if days:
            return days
    return settings.ONCEONLY_RETENTION_DAYS


def held_agents() -> dict[int, list[str]]:
    """{account id: agent ids on legal hold} (the retention sweep's exceptions; holds are few)."""
    held: dict[int, list[str]] = {}
    for account_id, agent_id in Agent.objects.filter(legal_hold_since__isnull=False).values_list(
        "account_id", "agent_id"
    ):
        held.setdefault(account_id, []).append(agent_id)
    return held


@dataclass(frozen=True)
class HoldState:
    held: bool
    since: datetime | None
    reason: str


def _clean_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise HoldError("A reason is required to set or clear a legal hold.")
    if len(reason) > MAX_REASON:
        raise HoldError(f"A reason is at most {MAX_REASON} characters.")
    return reason


def set_account_hold(*, account: Account, held: bool, reason: str, actor: str) -> bool:
    """Put the account on legal hold, or release it; audited as ``governance.legal_hold.set`` / ``.cleared`` with
    the reason. Returns False when it was already so (nothing changed, nothing audited)."""
    reason = _clean_reason(reason)
    with transaction.atomic():
        current = Account.objects.select_for_update().get(pk=account.pk)
        if (current.legal_hold_since is not None) == held:
            return False
        before = {"held": current.legal_hold_since is not None, "reason": current.legal_hold_reason}
        current.legal_hold_since = timezone.now() if held else None
        current.legal_hold_reason = reason if held else ""
        current.save(update_fields=["legal_hold_since", "legal_hold_reason"])
        audit_record(
            account=current,
            actor_label=actor,
            action="governance.legal_hold.set" if held else "governance.legal_hold.cleared",
            object_type="account",
            object_id=current.pk,
            data={"reason": reason, "before": before, "after": {"held": held}},
        )
    account.legal_hold_since, account.legal_hold_reason = current.legal_hold_since, current.legal_hold_reason
    return True


def set_agent_hold(*, account: Account, agent: Agent, held: bool, reason: str, actor: str) -> bool:
    """The same for one agent of the account (its runs and run events are kept)."""
    reason = _clean_reason(reason)
    if agent.account_id != account.pk:
        raise HoldError("No such agent in this account.")
    with transaction.atomic():
        current = Agent.objects.select_for_update().get(pk=agent.pk)
        if (current.legal_hold_since is not None) == held:
            return False
        before = {"held": current.legal_hold_since is not None, "reason": current.legal_hold_reason}
        current.legal_hold_since = timezone.now() if held else None
        current.legal_hold_reason = reason if held else ""
        current.save(update_fields=["legal_hold_since", "legal_hold_reason"])
        audit_record(
            account=account,
            actor_label=actor,
            action="governance.legal_hold.set" if held else "governance.legal_hold.cleared",
            object_type="agent",
            object_id=current.agent_id,
            data={"reason": reason, "before": before, "after": {"held": held}},
        )
    agent.legal_hold_since, agent.legal_hold_reason = current.legal_hold_since, current.legal_hold_reason
    return True


def state(obj: Account | Agent) -> HoldState:
    return HoldState(obj.legal_hold_since is not None, obj.legal_hold_since, obj.legal_hold_reason)
