"""Reads of the Approvals pages (docs/approvals.md): the queue's tabs as conditions on an approval's effective
status, one approval of an account, and the pending count the main navigation shows as a badge.

An approval past its time that the beat has not swept yet (``approvals.expire_due``) is shown as expired: the gate
never matches it, and a decision on it is refused (``approvals.decide``).

The navigation badge costs no database query: the pending count of each account is kept in Redis, counted again
(one indexed COUNT) after each change of an approval's pending state (``approvals.REQUESTED``/``SETTLED``, which
``register`` subscribes to) and each time the queue is shown; a page reads it with one GET, and shows no badge when
Redis has none or is unreachable."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest
from django.utils import timezone
from redis.exceptions import RedisError

from billing.selectors import current_membership
from governance import approvals, policies
from governance.models import Approval
from onceonly_site import navigation
from onceonly_site.formatting import usd
from onceonly_site.redis_client import get_redis

logger = logging.getLogger(__name__)

Status = Approval.Status
OPEN = (Status.PENDING, Status.APPROVED)


def pending_q(now: datetime) -> Q:
    return Q(status=Status.PENDING, expires_at__gt=now)


def approved_q(now: datetime) -> Q:
    return Q(status=Status.APPROVED, expires_at__gt=now)


def expired_q(now: datetime) -> Q:
    """Expired, or open past its time and not yet swept."""
    return Q(status=Status.EXPIRED) | Q(status__in=OPEN, expires_at__lte=now)


def status_q(status: str, now: datetime) -> Q:
    """An effective status as a condition: "pending" and "approved" only while in time, "expired" also the open ones
    past their time."""
    if status == Status.PENDING:
        return pending_q(now)
    if status == Status.APPROVED:
        return approved_q(now)
    if status == Status.EXPIRED:
        return expired_q(now)
    return Q(status=status)


@dataclass(frozen=True)
class Tab:
    key: str
    label: str
    statuses: tuple[str, ...]  # the effective statuses it lists

    def condition(self, now: datetime) -> Q:
        condition = Q()
        for status in self.statuses:
            condition |= status_q(status, now)
        return condition


TABS = {
    "pending": Tab("pending", "Pending", (Status.PENDING,)),
    "decided": Tab("decided", "Decided", (Status.APPROVED, Status.DENIED, Status.CONSUMED)),
    "closed": Tab("closed", "Expired or superseded", (Status.EXPIRED, Status.SUPERSEDED)),
}


def account_approvals(account_id: int) -> QuerySet[Approval]:
    return Approval.objects.filter(account_id=account_id).select_related("agent")


def tab_counts(account_id: int, now: datetime) -> dict[str, int]:
    """How many approvals each tab lists (one query)."""
    return Approval.objects.filter(account_id=account_id).aggregate(
        **{key: Count("pk", filter=tab.condition(now)) for key, tab in TABS.items()}
    )


def suggestions(account_id: int) -> dict[str, list[str]]:
    """The agents and tools of the account's approvals, for the queue's facets (two queries)."""
    rows = Approval.objects.filter(account_id=account_id)
    return {
        "agent": list(rows.order_by("agent__agent_id").values_list("agent__agent_id", flat=True).distinct()[:100]),
        "tool": list(rows.order_by("tool").values_list("tool", flat=True).distinct()[:100]),
    }


def approval_for_account(account_id: int, public_id: str) -> Approval:
    """The account's approval of that id; another account's is a 404, like a missing one."""
    approval = account_approvals(account_id).filter(public_id=public_id[:40]).first()
    if approval is None:
        raise Http404("No such approval in this account.")
    return approval


def effective_status(approval: Approval, now: datetime) -> str:
    if approval.status in OPEN and approval.expires_at <= now:
        return Status.EXPIRED
    return approval.status


def rule_text(rule: Any) -> str:
    """The require_approval entry that asked for it, in words: "stripe.* over $50.00", "stripe.refund"."""
    if not isinstance(rule, dict):
        return str(rule or "")
    over = rule.get("over_usd")
    return str(rule.get("tool", "")) + (f" over {usd(over)}" if over is not None else "")


# --- the navigation badge --------------------------------------------------------------------------------------

BADGE_KEY = "oo:approvals:pending:{account_id}"
# A count is kept no longer than an approval can stay pending: any it counted has expired by then (and the sweep
# that expired it counted again).
BADGE_SECONDS = policies.APPROVAL_TTL_MAX


def pending_count(account_id: int, now: datetime | None = None) -> int:
    return Approval.objects.filter(pending_q(now or timezone.now()), account_id=account_id).count()


def remember_pending(account_id: int, count: int) -> None:
    try:
        get_redis().set(BADGE_KEY.format(account_id=account_id), count, ex=BADGE_SECONDS)
    except RedisError:
        logger.warning("could not store the pending approvals count of account %s", account_id, exc_info=True)


def remembered_pending(account_id: int) -> int | None:
    """The account's pending count as last counted, or None (never counted, or Redis unreachable)."""
    try:
        value = get_redis().get(BADGE_KEY.format(account_id=account_id))
    except RedisError:
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _recount(approval: Approval) -> None:
    """An approval was requested or left "pending": count the account's pending ones again."""
    remember_pending(approval.account_id, pending_count(approval.account_id))


def nav_badge(request: HttpRequest) -> str | None:
    """The main navigation's badge on Approvals: the number pending, or None (none, or not known)."""
    try:
        account_id = current_membership(request).account_id
    except PermissionDenied:  # no membership: no badge (the page says why)
        return None
    count = remembered_pending(account_id)
    return f"{count:,}" if count else None


def register() -> None:
    """Subscribe the badge's count to the approvals' changes and show it in the navigation (idempotent)."""
    for listeners in (approvals.REQUESTED, approvals.SETTLED):
        if _recount not in listeners:
            listeners.append(_recount)
    navigation.BADGES["governance:approvals"] = nav_badge
