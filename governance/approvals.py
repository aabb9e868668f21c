"""Human approval of risky tool calls (docs/approvals.md): an approval binds {account, agent, tool, args digest,
policy version, expiry} and is used once.

A governed call that the agent's policy names in ``require_approval`` (``policies.approval_rule``) passes the
approval gate (``gate``) before anything is reserved:

- no open approval for this exact call: a pending one is created (one per agent, tool and args digest, a partial
  unique constraint) and the call is blocked, ``approval_required``, nothing reserved or charged;
- pending: the same approval is answered again;
- denied: blocked, ``approval_denied``, with the approver's reason, until it expires;
- approved (or already used, so that a repeat within the dedup window is answered ``dedup`` as any repeat): the call
  goes on through the normal pipeline — the caps are checked now, not when it was approved — and, once its
  reservation stands, ``claim`` uses the approval (approved → consumed, one conditional UPDATE: among concurrent
  identical retries exactly one wins). A call that then fails at the tool, or is stopped before its first attempt,
  gives the approval back (``unclaim``): a retry may still use it.

A new policy version supersedes the agent's open approvals (``supersede``, from ``policy_publish``); a beat task
expires the ones past their time (``expire_due``); the gate never matches an expired one either way.
"""

from __future__ import annotations

import json
import logging
import secrets as random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from billing.services import audit_record
from governance import policies
from governance import secrets as sealed
from governance.models import Agent, Approval, Decision
from onceonly_site.identifiers import normalise_tool

logger = logging.getLogger(__name__)

Status = Approval.Status
OPEN = (Status.PENDING, Status.APPROVED)
PUBLIC_PREFIX = "apr_"

# Who is told, after the commit: a request was created (notification channels), or an approval left "pending" —
# approved, denied, expired or superseded (keyed runs waiting for it). Each gets the Approval; an error is logged.
REQUESTED: list[Callable[[Approval], None]] = []
SETTLED: list[Callable[[Approval], None]] = []


def _tell(listeners: list[Callable[[Approval], None]], approval_ids: list[int]) -> None:
    """Call each listener with each approval after the current transaction commits (at once outside one)."""
    if not listeners or not approval_ids:
        return

    def run() -> None:
        for approval in Approval.objects.filter(pk__in=approval_ids).select_related("agent"):
            for listener in listeners:
                try:
                    listener(approval)
                except Exception:
                    logger.exception("approval listener %s failed for %s", listener, approval.public_id)

    transaction.on_commit(run)


def new_public_id() -> str:
    return PUBLIC_PREFIX + random.token_urlsafe(16)


def approval_path(approval: Approval) -> str:
    return reverse("governance:approval", args=[approval.public_id])


def approval_url(approval: Approval) -> str:
    """The approval's page: absolute when ONCEONLY_PUBLIC_URL is set (notifications, API answers), else the path."""
    return settings.ONCEONLY_PUBLIC_URL.rstrip("/") + approval_path(approval)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


@dataclass(frozen=True, slots=True)
class Gate:
    """What the gate found for a call that needs approval: ``state`` is "proceed" (an approved or used approval:
    the call goes on, ``claim`` once reserved), "pending", "denied" or "required" (a dry run: nothing created)."""

    state: str
    rule: dict[str, Any]
    approval: Approval | None


def gate(
    *,
    agent: Agent,
    tool: str,
    digest: str,
    policy: dict[str, Any],
    cost: Decimal,
    args: dict[str, Any],
    run_id: str,
    risk_level: str,
    dry_run: bool = False,
    fresh: bool = False,
) -> Gate | None:
    """None when the policy does not ask for approval of this call; else what the call's approvals say (creating
    the pending one when there is none). ``fresh``: an approved or used approval does not count (the call's own was
    used by another call)."""
    rule = policies.approval_rule(policy, tool, cost)
    if rule is None:
        return None
    now = timezone.now()
    found = list(
        Approval.objects.filter(
            agent=agent,
            args_hash=digest,
            tool=tool,
            policy_version=agent.policy_version,
            expires_at__gt=now,
            status__in=(Status.APPROVED, Status.CONSUMED, Status.PENDING, Status.DENIED),
        ).order_by("-created_at", "-id")[:8]
    )
    for state, statuses in (("proceed", (Status.APPROVED, Status.CONSUMED)), ("pending", (Status.PENDING,))):
        if fresh and state == "proceed":
            continue
        # An approval covers the cost it was asked for: a retry that would cost more (a higher declared spend) is
        # another call to a person, and asks again.
        match = next((a for a in found if a.status in statuses and (state != "proceed" or cost <= a.spend_usd)), None)
        if match is not None:
            return Gate(state, rule, match)
    denied = next((a for a in found if a.status == Status.DENIED), None)
    if denied is not None:
        return Gate("denied", rule, denied)
    if dry_run:
        return Gate("required", rule, None)
    requested = _request(agent, tool, digest, policy, cost, args, run_id, risk_level, rule, now)
    return Gate("pending", rule, requested) if requested is not None else Gate("full", rule, None)


def _request(
    agent: Agent,
    tool: str,
    digest: str,
    policy: dict[str, Any],
    cost: Decimal,
    args: dict[str, Any],
    run_id: str,
    risk_level: str,
    rule: dict[str, Any],
    now: datetime,
) -> Approval | None:
    """The pending approval of this exact call: created, or the one a concurrent first call created. None when the
    agent already has ONCEONLY_APPROVALS_OPEN_PER_AGENT requests open: no row, nobody told (an agent looping over
    distinct args must not flood the approvers' channels or the database)."""
    open_now = Approval.objects.filter(agent=agent, status=Status.PENDING, expires_at__gt=now)
    if open_now.count() >= settings.ONCEONLY_APPROVALS_OPEN_PER_AGENT:
        return None
    try:
        with transaction.atomic():
            created = Approval.objects.create(
                public_id=new_public_id(),
                account_id=agent.account_id,
                agent=agent,
                tool=tool,
                args_hash=digest,
                policy_version=agent.policy_version,
                rule=rule,
                risk_level=risk_level,
                spend_usd=cost,
                run_id=run_id[:256],
                created_at=now,
                expires_at=now + timedelta(seconds=policies.approval_ttl(policy)),
                args_encrypted=sealed.encrypt(json.dumps(args, sort_keys=True, ensure_ascii=False)),
            )
        _tell(REQUESTED, [created.pk])
        return created
    except IntegrityError:  # governance_approval_one_pending: a concurrent identical call asked first
        pending = Approval.objects.filter(agent=agent, tool=tool, args_hash=digest, status=Status.PENDING).first()
        if pending is not None and pending.expires_at > now:
            return pending
        if pending is not None:
            _expire([pending.pk])  # past its time, not yet swept: it no longer blocks a new request
        # (else decided in between): ask again, once more
        return _request(agent, tool, digest, policy, cost, args, run_id, risk_level, rule, now)


def claim(approval: Approval) -> bool:
    """Use an approved approval for the call now going through (approved → consumed). False: another call used it
    first, or it expired."""
    if approval.status == Status.CONSUMED:
        return False
    now = timezone.now()
    used = Approval.objects.filter(pk=approval.pk, status=Status.APPROVED, expires_at__gt=now).update(
        status=Status.CONSUMED, consumed_at=now
    )
    return used == 1


def unclaim(approval: Approval) -> None:
    """Give a used approval back (its call failed at the tool or was stopped before the first attempt)."""
    Approval.objects.filter(pk=approval.pk, status=Status.CONSUMED).update(
        status=Status.APPROVED, consumed_at=None, consumed_by=None
    )


def link(approval: Approval, decision: Decision, *, consumed: bool) -> None:
    """Remember the decision that asked for the approval (the first one), or the one that used it."""
    if consumed:
        Approval.objects.filter(pk=approval.pk, status=Status.CONSUMED).update(consumed_by=decision)
    elif approval.requested_by_id is None and decision.pk is not None:
        Approval.objects.filter(pk=approval.pk, requested_by__isnull=True).update(requested_by=decision)


def answer(approval: Approval | None, state: str) -> dict[str, Any]:
    """What a blocked call's ``result`` says of its approval (the SDK keeps ``result``)."""
    if approval is None:  # a dry run ("required"), or the agent's open requests are at their limit ("queue_full")
        status = "queue_full" if state == "full" else "required"
        return {"approval_id": None, "approval_url": None, "expires_at": None, "status": status}
    body: dict[str, Any] = {
        "approval_id": approval.public_id,
        "approval_url": approval_url(approval),
        "expires_at": iso(approval.expires_at),
        "status": approval.status,
    }
    if state == "denied":
        body["reason"] = approval.reason
        body["decided_by"] = approval.decided_by
    return body


def explain_of(gate_: Gate, cost: Decimal) -> dict[str, Any]:
    """What the gate saw, for the decision's explanation."""
    seen: dict[str, Any] = {"rule": gate_.rule, "cost": float(cost)}
    if gate_.state == "full":
        seen["queue_full"] = settings.ONCEONLY_APPROVALS_OPEN_PER_AGENT
    approval = gate_.approval
    if approval is not None:
        seen.update(approval_id=approval.public_id, expires_at=iso(approval.expires_at), status=approval.status)
        if approval.status == Status.DENIED:
            seen.update(decided_by=approval.decided_by, reason=approval.reason)
    return seen


# --- operators' side -------------------------------------------------------------------------------------------


class NotFound(Exception):
    pass


class NotPending(Exception):
    def __init__(self, approval: Approval) -> None:
        super().__init__(approval.status)
        self.approval = approval


def decide(*, account_id: int, public_id: str, approve: bool, reason: str, actor: str) -> Approval:
    """Approve or deny a pending approval (audited). Raises NotFound, or NotPending when it was decided, used,
    superseded or expired meanwhile (one conditional UPDATE: two approvers racing, one wins). The args preview is
    deleted with the decision."""
    now = timezone.now()
    approval = Approval.objects.filter(account_id=account_id, public_id=public_id).select_related("agent").first()
    if approval is None:
        raise NotFound(public_id)
    status = Status.APPROVED if approve else Status.DENIED
    with transaction.atomic():
        changed = Approval.objects.filter(pk=approval.pk, status=Status.PENDING, expires_at__gt=now).update(
            status=status, decided_at=now, decided_by=actor[:200], reason=reason[:1000], args_encrypted=""
        )
        if changed:
            approval.refresh_from_db()
            _tell(SETTLED, [approval.pk])
            audit_record(
                account=approval.agent.account,
                actor_label=actor,
                action=f"governance.approval.{'approved' if approve else 'denied'}",
                object_type="approval",
                object_id=approval.public_id,
                data={
                    "agent_id": approval.agent.agent_id,
                    "tool": approval.tool,
                    "args_hash": approval.args_hash,
                    "policy_version": approval.policy_version,
                    "reason": approval.reason,
                },
            )
    if not changed:
        approval.refresh_from_db()
        if approval.status == Status.PENDING:  # past its time, not yet swept: expire it now (committed)
            _expire([approval.pk])
            approval.refresh_from_db()
        raise NotPending(approval)
    return approval


def args_preview(approval: Approval) -> dict[str, Any] | None:
    """The call's args while the approval is pending (None once decided, used or expired, or undecryptable)."""
    if not approval.args_encrypted:
        return None
    try:
        return json.loads(sealed.decrypt(approval.args_encrypted))
    except ValueError:
        return None


def supersede(agent: Agent) -> int:
    """A new policy version: the agent's open approvals no longer match (called inside policy_publish's
    transaction)."""
    ids = list(Approval.objects.filter(agent=agent, status__in=OPEN).values_list("pk", flat=True))
    if not ids:
        return 0
    changed = Approval.objects.filter(pk__in=ids, status__in=OPEN).update(
        status=Status.SUPERSEDED, decided_at=timezone.now(), args_encrypted=""
    )
    _tell(SETTLED, ids)
    return changed


def expire_due(*, batch: int = 1000) -> int:
    """Beat: open approvals past their time become expired and lose their args preview. Returns how many."""
    now = timezone.now()
    ids = list(
        Approval.objects.filter(status__in=OPEN, expires_at__lte=now)
        .values_list("pk", flat=True)
        .order_by("pk")[:batch]
    )
    if not ids:
        return 0
    return _expire(ids)


def _expire(ids: list[int]) -> int:
    """These approvals, if still open and past their time, become expired (args preview deleted; listeners told)."""
    now = timezone.now()
    with transaction.atomic():
        expired = list(
            Approval.objects.select_for_update(skip_locked=True)
            .filter(pk__in=ids, status__in=OPEN, expires_at__lte=now)
            .values_list("pk", flat=True)
        )
        Approval.objects.filter(pk__in=expired).update(status=Status.EXPIRED, args_encrypted="")
        _tell(SETTLED, expired)
    return len(expired)


def loosening(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """What changing ``before`` into ``after`` takes away from its approval gate, in words (empty: nothing): an entry
    of require_approval dropped, its over_usd raised or removed, a longer approval_ttl_seconds. An agent's own key
    may tighten its gate but not loosen it (docs/approvals.md §"Who may change the gate")."""
    before, after = before or {}, after or {}
    kept = {normalise_tool(pattern): over for pattern, over in policies.approval_entries(after)}
    found: list[str] = []
    for pattern, over in policies.approval_entries(before):
        key = normalise_tool(pattern)
        if key not in kept:
            found.append(f"require_approval entry {pattern!r} removed")
            continue
        now_over = kept[key]
        if now_over is not None and (over is None or now_over > over):
            found.append(f"require_approval entry {pattern!r}: its over_usd raised")
    if before.get("require_approval") and policies.approval_ttl(after) > policies.approval_ttl(before):
        found.append("approval_ttl_seconds lengthened")
    return found
