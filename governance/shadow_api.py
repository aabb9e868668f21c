"""/v1/policies/{agent_id}/shadow: an agent's shadow candidate over the API (docs/policy-changes.md §"Shadow mode")."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import display, policies, selectors, services, shadow
from governance.api import (
    AGENT_ID_PARAM,
    IGNORED_AGENT_ID,
    PolicyOutput,
    _actor,
    _agent_id,
    _clean_policy,
    _policy_body,
    require_gate_kept,
)
from governance.models import Agent
from onceonly_site.api import ApiProblem, body
from onceonly_site.bodies import Body, Identifier, Ignored, Integer
from onceonly_site.openapi import errors


def _iso(moment: Any) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _shadow_body(agent: Agent) -> dict[str, Any]:
    seen = shadow.divergence(agent)
    return {
        "agent_id": agent.agent_id,
        "candidate": agent.shadow_policy,
        "shadow_id": agent.shadow_id or None,
        "started_at": _iso(agent.shadow_started_at),
        "started_by": agent.shadow_by or None,
        "enforced_version": agent.policy_version,
        "changes": [c["text"] for c in display.policy_changes(agent.policy, agent.shadow_policy)]
        if agent.shadow_policy is not None
        else [],
        "divergence": {
            "calls": seen.total,
            "agree": seen.agree,
            "would_block": seen.would_block,
            "would_allow": seen.would_allow,
            "block_examples": seen.block_examples,
            "allow_examples": seen.allow_examples,
        },
    }


ShadowOutput = inline_serializer(
    "ShadowOutput",
    {
        "agent_id": serializers.CharField(),
        "candidate": serializers.DictField(allow_null=True, help_text="The candidate policy; null: none."),
        "shadow_id": serializers.CharField(allow_null=True),
        "started_at": serializers.DateTimeField(allow_null=True),
        "started_by": serializers.CharField(allow_null=True),
        "enforced_version": serializers.IntegerField(allow_null=True),
        "changes": serializers.ListField(child=serializers.CharField(), help_text="The candidate against the policy."),
        "divergence": serializers.DictField(
            help_text="Since the candidate started: calls, agree, would_block {reason: n}, would_allow {reason: n}, "
            "block_examples and allow_examples (decision ids)."
        ),
    },
)


class PromoteInput(Body):
    agent_id = Ignored(description=IGNORED_AGENT_ID)
    shadow_id = Identifier(40, required=True, description="The candidate confirmed (GET …/shadow's shadow_id).")
    expected_version = Integer(
        0, 1_000_000_000, nullable=True, description="The enforced version the diff was read against (null: none)."
    )


def _agent_or_404(request: Request, agent_id: str) -> Agent:
    agent = selectors.agent_for_account(principal(request).account_id, _agent_id(agent_id))
    if agent is None:
        raise ApiProblem(404, "agent_not_found", f"No agent {agent_id!r} in this account.")
    return agent


class ShadowApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="policy_shadow_get",
        parameters=[AGENT_ID_PARAM],
        responses={200: ShadowOutput, **errors(404)},
        summary="The agent's shadow candidate and how its decisions differ since it started",
    )
    def get(self, request: Request, agent_id: str) -> Response:
        return Response(_shadow_body(_agent_or_404(request, agent_id)))

    @extend_schema(
        operation_id="policy_shadow_start",
        parameters=[AGENT_ID_PARAM],
        request=policies.PolicyInput.serializer,
        responses={200: ShadowOutput, **errors()},
        summary="Start (or replace) the agent's shadow candidate: the whole policy, decided beside the enforced one",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        candidate = _clean_policy(request, body(request))
        agent = shadow.shadow_start(
            account_id=principal(request).account_id, agent_id=agent_id, policy=candidate, actor=_actor(request)
        )
        return Response(_shadow_body(agent))

    @extend_schema(
        operation_id="policy_shadow_stop",
        parameters=[AGENT_ID_PARAM],
        request=None,
        responses={200: ShadowOutput, **errors(404)},
        summary="Stop the shadow candidate (its recorded outcomes stay in the decision log)",
    )
    def delete(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id)
        try:
            agent = shadow.shadow_stop(
                account_id=principal(request).account_id, agent_id=agent_id, actor=_actor(request)
            )
        except shadow.NoShadow:
            raise ApiProblem(404, "shadow_not_found", f"Agent {agent_id!r} has no shadow candidate.") from None
        return Response(_shadow_body(agent))


class ShadowPromoteApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="policy_shadow_promote",
        parameters=[AGENT_ID_PARAM],
        request=PromoteInput.serializer,
        responses={200: PolicyOutput, **errors(404, 409)},
        summary="Publish the candidate as the agent's next version (exactly one) and stop the shadow",
        description="`shadow_id` and `expected_version` are what the caller confirmed: another candidate is a 404 "
        "`shadow_not_found`, another enforced version a 409 `policy_changed` (nothing published either way).",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        sent = PromoteInput.parse(body(request))
        current = _agent_or_404(request, agent_id)
        require_gate_kept(request, current.policy, current.shadow_policy)
        try:
            outcome = shadow.shadow_promote(
                account_id=principal(request).account_id,
                agent_id=agent_id,
                actor=_actor(request),
                shadow_id=sent.shadow_id,
                expected_version=sent.expected_version,
            )
        except shadow.NoShadow:
            raise ApiProblem(
                404, "shadow_not_found", f"Agent {agent_id!r} has no shadow candidate {sent.shadow_id!r}."
            ) from None
        except services.StalePolicyEdit as stale:
            raise ApiProblem(
                409,
                "policy_changed",
                f"The enforced policy is now version {stale.current}, not {sent.expected_version}: read the "
                "candidate's diff again before promoting it.",
                version=stale.current,
            ) from None
        return Response(_policy_body(outcome.agent, outcome.warnings))
