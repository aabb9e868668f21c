"""Shadow mode (docs/policy-changes.md §"Shadow mode"): an agent carries a candidate policy beside the enforced one.
Every governed call is also decided against it — its tool lists, registry and approval rules in Python, its caps on
counters of its own in the same Lua step as the enforced policy's (``services.call_shadow``) — and the decision
records what it would have decided (``explain.shadow``: the candidate's id and reason). Nothing of it is enforced
until it is promoted: published as the agent's next version, like any change.

Writes here (start, stop, promote), reads (the divergence since the candidate started) in ``divergence``.
"""

from __future__ import annotations

import secrets as random
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.db.models.fields.json import KT
from django.utils import timezone

from billing.services import audit_record
from governance import display, policies
from governance.choices import CHARGED_OUTCOMES, Outcome, Reason
from governance.models import Agent, Decision
from governance.services import PolicyOutcome, agent_get_or_create, policy_publish

EXAMPLES = 5
# The candidate's reasons that let a call through (and that its counters counted).
PASSES = (Reason.WITHIN_BUDGET, Reason.IDEMPOTENCY_KEY_HIT)


class NoShadow(Exception):
    """The agent has no candidate (or another one than the caller saw)."""


def shadow_start(*, account_id: int, agent_id: str, policy: dict[str, Any], actor: str) -> Agent:
    """Make ``policy`` (validated fields, as policies.clean_fields gives them; None values are dropped) the agent's
    candidate, replacing any: a new id, so its counters start from zero. Audited."""
    candidate = policies.merge({}, policy)
    agent = agent_get_or_create(account_id=account_id, agent_id=agent_id)
    with transaction.atomic():
        agent = Agent.objects.select_for_update().select_related("account").get(pk=agent.pk)
        before = agent.shadow_policy
        agent.shadow_policy = candidate
        agent.shadow_id = random.token_hex(8)
        agent.shadow_started_at = timezone.now()
        agent.shadow_by = actor[:200]
        agent.shadow_base_version = agent.policy_version
        agent.save(
            update_fields=["shadow_policy", "shadow_id", "shadow_started_at", "shadow_by", "shadow_base_version"]
        )
        audit_record(
            account=agent.account,
            actor_label=actor,
            action="governance.policy.shadow_started",
            object_type="agent",
            object_id=agent_id,
            data={
                "shadow_id": agent.shadow_id,
                "enforced_version": agent.policy_version,
                "replaced": before,
                "candidate": candidate,
                "changes": [c["text"] for c in display.policy_changes(agent.policy, candidate)],
            },
        )
    return agent


def shadow_stop(*, account_id: int, agent_id: str, actor: str) -> Agent:
    """Drop the agent's candidate (its recorded outcomes stay in the decision log). Audited; NoShadow without one."""
    with transaction.atomic():
        agent = (
            Agent.objects.select_for_update()
            .select_related("account")
            .filter(account_id=account_id, agent_id=agent_id)
            .first()
        )
        if agent is None or agent.shadow_policy is None:
            raise NoShadow(agent_id)
        dropped, shadow_id = agent.shadow_policy, agent.shadow_id
        _clear(agent)
        audit_record(
            account=agent.account,
            actor_label=actor,
            action="governance.policy.shadow_stopped",
            object_type="agent",
            object_id=agent_id,
            data={"shadow_id": shadow_id, "candidate": dropped},
        )
    return agent


def shadow_promote(
    *, account_id: int, agent_id: str, actor: str, shadow_id: str, expected_version: int | None
) -> PolicyOutcome:
    """Publish the candidate as the agent's next version (source ``shadow:<id>``) and drop it, in one transaction:
    exactly one version. ``shadow_id`` and ``expected_version`` are what the operator confirmed (the diff was of this
    candidate against this version): another candidate is NoShadow, another enforced version StalePolicyEdit."""
    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(account_id=account_id, agent_id=agent_id).first()
        if agent is None or agent.shadow_policy is None or agent.shadow_id != shadow_id:
            raise NoShadow(agent_id)
        candidate = agent.shadow_policy
        outcome = policy_publish(
            account_id=account_id,
            agent_id=agent_id,
            policy=candidate,
            source=f"shadow:{shadow_id}",
            actor=actor,
            expected_version=expected_version,
        )
        _clear(Agent.objects.select_for_update().get(pk=agent.pk))
    outcome.agent.refresh_from_db()
    return outcome


def _clear(agent: Agent) -> None:
    agent.shadow_policy, agent.shadow_id, agent.shadow_started_at = None, "", None
    agent.shadow_by, agent.shadow_base_version = "", None
    agent.save(update_fields=["shadow_policy", "shadow_id", "shadow_started_at", "shadow_by", "shadow_base_version"])


# --- the divergence since the candidate started ----------------------------------------------------------------


@dataclass
class Divergence:
    """How the candidate's decisions differ from the enforced policy's since it started: ``would_block`` (the
    enforced policy let the call through, the candidate would not) by the candidate's reason, ``would_allow`` (the
    other way round) by the enforced reason, the calls both agreed on, and examples (decision ids, newest first)."""

    total: int = 0
    agree: int = 0
    would_block: dict[str, int] = field(default_factory=dict)
    would_allow: dict[str, int] = field(default_factory=dict)
    block_examples: list[int] = field(default_factory=list)
    allow_examples: list[int] = field(default_factory=list)

    @property
    def would_block_total(self) -> int:
        return sum(self.would_block.values())

    @property
    def would_allow_total(self) -> int:
        return sum(self.would_allow.values())


def _live_passes(outcome: str) -> bool:
    return outcome in (*CHARGED_OUTCOMES, Outcome.DEDUP)


def divergence(agent: Agent) -> Divergence:
    """The candidate's outcomes recorded since it started, against the enforced ones (three queries: the counts by
    pair of outcomes, and up to EXAMPLES examples each way)."""
    result = Divergence()
    if agent.shadow_policy is None or not agent.shadow_started_at:
        return result
    mine = Decision.objects.filter(
        account_id=agent.account_id, agent=agent, ts__gte=agent.shadow_started_at, explain__shadow__id=agent.shadow_id
    ).annotate(shadow_reason=KT("explain__shadow__reason"))
    blocked_ids: list[int] = []
    for row in mine.values("outcome", "policy_reason", "shadow_reason").annotate(n=Count("id")).order_by():
        live, candidate = _live_passes(row["outcome"]), row["shadow_reason"] in PASSES
        result.total += row["n"]
        if live and not candidate:
            result.would_block[row["shadow_reason"]] = result.would_block.get(row["shadow_reason"], 0) + row["n"]
        elif candidate and not live:
            result.would_allow[row["policy_reason"]] = result.would_allow.get(row["policy_reason"], 0) + row["n"]
        else:
            result.agree += row["n"]
    if result.would_block:
        blocked_ids = list(
            mine.exclude(explain__shadow__reason__in=PASSES)
            .filter(outcome__in=(*CHARGED_OUTCOMES, Outcome.DEDUP))
            .order_by("-ts", "-id")
            .values_list("id", flat=True)[:EXAMPLES]
        )
    result.block_examples = blocked_ids
    if result.would_allow:
        result.allow_examples = list(
            mine.filter(explain__shadow__reason__in=PASSES)
            .exclude(outcome__in=(*CHARGED_OUTCOMES, Outcome.DEDUP))
            .order_by("-ts", "-id")
            .values_list("id", flat=True)[:EXAMPLES]
        )
    return result


def panel(agent: Agent) -> dict[str, Any] | None:
    """What the policy page shows of the agent's candidate: None without one."""
    if agent.shadow_policy is None:
        return None
    seen = divergence(agent)
    return {
        "id": agent.shadow_id,
        "started_at": agent.shadow_started_at,
        "started_by": agent.shadow_by,
        "base_version": agent.shadow_base_version,
        "changes": display.policy_changes(agent.policy, agent.shadow_policy),
        "policy": agent.shadow_policy,
        "seen": seen,
        "would_block": sorted(seen.would_block.items(), key=lambda item: -item[1]),
        "would_allow": sorted(seen.would_allow.items(), key=lambda item: -item[1]),
    }
