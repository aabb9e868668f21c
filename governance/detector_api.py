"""``POST /v1/agents/{agent_id}/release`` (docs/governance.md §"Containment detectors"): release an agent a detector
contained, with an admin-scoped key — an agent's own key may not let itself go (as with Raise & resume)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.auth import principal
from governance import approval_api_selectors, detectors
from governance.api import AGENT_ID_PARAM, ReasonInput, _agent_id, _agent_status
from onceonly_site.api import ApiProblem, body
from onceonly_site.openapi import errors

ReleaseOutput = inline_serializer(
    "AgentReleaseOutput",
    {
        "agent_id": serializers.CharField(),
        "is_enabled": serializers.BooleanField(),
        "disabled_reason": serializers.CharField(allow_null=True),
        "disabled_at": serializers.DateTimeField(allow_null=True),
    },
)


class AgentReleaseApi(APIView):
    @extend_schema(
        operation_id="agent_release",
        parameters=[AGENT_ID_PARAM],
        request=ReasonInput.serializer,
        responses={200: ReleaseOutput, **errors(404, 409)},
        summary="Release an agent a containment detector stopped (admin key)",
        description="Enables the agent, marks its containment alerts released and resets its detector counters "
        "(audited `governance.agent.released`, with the `reason` sent). Needs an admin-scoped API key (403 "
        "`admin_key_required`). An agent "
        "that is enabled, or disabled by a person (the kill switch: `/enable`), is not contained: 409 "
        "`agent_not_contained`.",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        reason = ReasonInput.parse(body(request)).reason or ""
        caller = principal(request)
        if not approval_api_selectors.is_admin_key(caller.key_id):
            raise ApiProblem(
                403,
                "admin_key_required",
                "Releasing a contained agent needs an admin-scoped API key (an agent's key may not release itself). "
                "Nothing was changed.",
            )
        try:
            agent = detectors.release(
                account_id=caller.account_id, agent_id=agent_id, actor=f"api key {caller.key_preview}", reason=reason
            )
        except detectors.NotContained:
            raise ApiProblem(
                409, "agent_not_contained", f"Agent {agent_id!r} is not contained by a detector: nothing to release."
            ) from None
        return Response(_agent_status(agent))
