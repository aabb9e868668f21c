"""``GET /v1/alerts``: the alerts feed for operator tooling (docs/governance.md §"Budget alerts") — budget thresholds
crossed, detectors that fired, keyed runs paused at a cap — newest first, any key of the account."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import alert_selectors as selectors
from governance.approvals import iso
from governance.choices import AlertKind, AlertMode
from governance.models import Alert
from onceonly_site.api import BodyCheck
from onceonly_site.bodies import AgentId, Body, Choice
from onceonly_site.openapi import page_parameters

PAGE = {"default": 50, "maximum": 500, "max_offset": 1_000_000}


def _item(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.pk,
        "kind": alert.kind,
        "code": alert.code,
        "mode": alert.mode,
        "agent_id": alert.agent.agent_id if alert.agent is not None else None,
        "message": alert.message,
        "data": alert.data,
        "created_at": iso(alert.created_at),
        "released_at": iso(alert.released_at),
        "released_by": alert.released_by or None,
    }


_ITEM_FIELDS: dict[str, serializers.Field] = {
    "alert_id": serializers.IntegerField(),
    "kind": serializers.ChoiceField(choices=AlertKind.values),
    "code": serializers.CharField(
        help_text="The metric (daily_spend, hourly_actions, tool_calls, ai_quota, make_quota) or the detector "
        "(call_loop …)."
    ),
    "mode": serializers.ChoiceField(choices=AlertMode.values, help_text="contain: the agent was stopped."),
    "agent_id": serializers.CharField(allow_null=True, help_text="null: the account's (a monthly quota)."),
    "message": serializers.CharField(help_text="What happened, with its numbers."),
    "data": serializers.DictField(
        help_text="The numbers: metric, threshold, value, cap, unit, period, "
        "projected_seconds, … (detectors: their window and counts)."
    ),
    "created_at": serializers.DateTimeField(),
    "released_at": serializers.DateTimeField(allow_null=True, help_text="A containment's release."),
    "released_by": serializers.CharField(allow_null=True),
}
AlertListOutput = inline_serializer(
    "AlertList",
    {
        "items": serializers.ListField(child=inline_serializer("AlertItem", _ITEM_FIELDS)),
        "total": serializers.IntegerField(),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
    },
)


class AlertsQuery(Body):
    """``?kind=&agent_id=`` of the list (``limit``/``offset`` are read with them; others are ignored)."""

    strict = False
    kind = Choice(AlertKind.values, description="Only alerts of this kind (default: all).")
    agent_id = AgentId(required=False, description="Only this agent's alerts.")


class AlertListApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="alerts_list",
        parameters=[*AlertsQuery.parameters(), *page_parameters(**PAGE)],
        responses=AlertListOutput,
        summary="The account's alerts, newest first ({items, total, limit, offset})",
    )
    def get(self, request: Request) -> Response:
        data = dict(request.query_params.items())
        check = BodyCheck(data, data.keys(), query=True)
        query = AlertsQuery.fill(check, data, "")
        limit, offset = check.page(**PAGE)
        check.done()
        rows, total = selectors.alerts_page(
            principal(request).account_id, kind=query.kind, agent_id=query.agent_id, limit=limit, offset=offset
        )
        return Response({"items": [_item(a) for a in rows], "total": total, "limit": limit, "offset": offset})
