"""Reads of /v1/approvals (docs/api.md §"Approvals"): a page of the account's approvals by status, agent and tool,
one by its public id, and whether the calling API key may decide them.

Statuses are effective ones, as on the Approvals pages (governance/approval_selectors.py): an open approval past
its time is expired before the beat sweeps it.
"""

from __future__ import annotations

from datetime import datetime

from billing.choices import ApiKeyScope
from billing.models import ApiKey
from governance.approval_selectors import account_approvals, effective_status, status_q
from governance.models import Approval

__all__ = ["approval_for_account", "approvals_page", "effective_status", "is_admin_key"]


def approvals_page(
    account_id: int,
    *,
    now: datetime,
    status: str | None = None,
    agent_id: str | None = None,
    tool: str | None = None,
    limit: int,
    offset: int,
) -> tuple[list[Approval], int]:
    """One page of the account's approvals, newest first, and how many match in all (two queries whatever the page
    holds; none for the page when nothing matches)."""
    rows = Approval.objects.filter(account_id=account_id)
    if status is not None:
        rows = rows.filter(status_q(status, now))
    if agent_id is not None:
        rows = rows.filter(agent__agent_id=agent_id)
    if tool is not None:
        rows = rows.filter(tool=tool)
    total = rows.count()
    page = list(rows.select_related("agent").order_by("-created_at", "-id")[offset : offset + limit]) if total else []
    return page, total


def approval_for_account(account_id: int, public_id: str) -> Approval | None:
    """The account's approval of that public id; another account's is None, like a missing one."""
    return account_approvals(account_id).filter(public_id=public_id).first()


def is_admin_key(key_id: int) -> bool:
    """May this API key decide approvals? Read from the key's row at each decision (the authentication cache does
    not carry the scope); a key revoked meanwhile may not."""
    return ApiKey.objects.filter(pk=key_id, scope=ApiKeyScope.ADMIN, revoked_at__isnull=True).exists()
