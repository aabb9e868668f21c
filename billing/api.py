"""`/v1/me` and `/v1/me/notifications` (docs/api.md §"GET /v1/me", §"POST /v1/me/notifications")."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import counters, selectors, services, usage
from billing.auth import principal
from billing.selectors import account_for_api
from onceonly_site.api import QueryValidationError, StrictBooleanField, StrictSerializer, body, validate


class MeOutput(serializers.Serializer):
    plan = serializers.CharField()
    plan_name = serializers.CharField()
    is_active = serializers.BooleanField()
    account = serializers.CharField(help_text="Account name.")
    account_id = serializers.IntegerField()
    key_preview = serializers.CharField(help_text="The calling key, masked.")
    current_period_end = serializers.DateTimeField(help_text="End of the current UTC-month quota period.")
    requests_total_all_time = serializers.IntegerField()
    blocked_total_all_time = serializers.IntegerField()
    email_notifications_enabled = serializers.BooleanField()
    tool_error_notifications_enabled = serializers.BooleanField()
    run_failure_notifications_enabled = serializers.BooleanField()


class MeApi(APIView):
    @extend_schema(operation_id="me", responses=MeOutput, summary="The calling key's account and plan")
    def get(self, request: Request) -> Response:
        caller = principal(request)
        account = account_for_api(caller.account_id)
        return Response(
            MeOutput(
                {
                    "plan": account.plan.code,
                    "plan_name": account.plan.name,
                    "is_active": account.is_active,
                    "account": account.name,
                    "account_id": account.pk,
                    "key_preview": caller.key_preview,
                    "current_period_end": account.current_period_end(),
                    "requests_total_all_time": account.requests_total_all_time + counters.pending(account.pk),
                    "blocked_total_all_time": selectors.blocked_total_all_time(account.pk),
                    **{name: getattr(account, name) for name in services.NOTIFICATION_FIELDS},
                }
            ).data
        )


class NotificationsInput(StrictSerializer):
    openapi_extra = {"minProperties": 1}  # at least one switch (validate below)

    email_notifications_enabled = StrictBooleanField(required=False)
    tool_error_notifications_enabled = StrictBooleanField(required=False)
    run_failure_notifications_enabled = StrictBooleanField(required=False)

    def validate(self, attrs: dict) -> dict:
        if not attrs:
            raise serializers.ValidationError(
                f"Send at least one of: {', '.join(services.NOTIFICATION_FIELDS)}.", code="missing"
            )
        return attrs


NotificationsOutput = inline_serializer(
    "NotificationsOutput",
    {name: serializers.BooleanField() for name in services.NOTIFICATION_FIELDS},
)


class MeNotificationsApi(APIView):
    @extend_schema(
        operation_id="me_notifications_update",
        request=NotificationsInput,
        responses=NotificationsOutput,
        summary="Partially update the notification switches; answers all three",
    )
    def post(self, request: Request) -> Response:
        changes = validate(NotificationsInput, body(request))
        caller = principal(request)
        account = account_for_api(caller.account_id)
        services.notifications_update(account=account, changes=changes, actor_label=f"api key {caller.key_preview}")
        return Response({name: getattr(account, name) for name in services.NOTIFICATION_FIELDS})


def _kind_body(counters: dict[str, int], kind: str, limit: int) -> dict[str, int]:
    return {
        "usage": counters[kind],
        "limit": limit,
        "requests_total_month": counters[f"requests_{kind}"],
        "blocked_total_month": counters[f"blocked_{kind}"],
        "charged_total_month": counters[kind],
        "polling_total_month": counters.get(f"polling_{kind}", 0),
    }


_KIND_FIELDS: dict[str, serializers.Field] = {
    name: serializers.IntegerField()
    for name in (
        "usage",
        "limit",
        "requests_total_month",
        "blocked_total_month",
        "charged_total_month",
        "polling_total_month",
    )
}
UsageOutput = inline_serializer(
    "UsageOutput",
    {
        "plan": serializers.CharField(),
        "kind": serializers.CharField(),
        "month": serializers.CharField(),
        "period_start": serializers.DateTimeField(),
        "period_end": serializers.DateTimeField(),
        **_KIND_FIELDS,
    },
)
UsageAllOutput = inline_serializer(
    "UsageAllOutput",
    {
        "plan": serializers.CharField(),
        "month": serializers.CharField(),
        "period_start": serializers.DateTimeField(),
        "period_end": serializers.DateTimeField(),
        "make": inline_serializer("UsageKind", _KIND_FIELDS),
        "ai": inline_serializer("UsageKindAi", _KIND_FIELDS),
    },
)


class UsageApi(APIView):
    @extend_schema(
        operation_id="usage",
        responses=UsageOutput,
        parameters=[OpenApiParameter("kind", str, enum=list(usage.KINDS), description="make (default) or ai")],
        summary="This month's usage of one kind against the plan's quota",
    )
    def get(self, request: Request) -> Response:
        kind = request.query_params.get("kind", usage.MAKE)
        if kind not in usage.KINDS:
            raise QueryValidationError({"kind": [serializers.ErrorDetail("One of: make, ai.", code="enum")]})
        caller = principal(request)
        plan = caller.plan
        month = usage.month_of()
        start, end = usage.period_of(month)
        body = _kind_body(
            usage.snapshot(caller.account_id, month),
            kind,
            plan.make_limit if kind == usage.MAKE else plan.ai_limit,
        )
        return Response(
            {
                "plan": plan.code,
                "kind": kind,
                "month": month,
                **body,
                "period_start": start.isoformat(),
                "period_end": end.isoformat(),
            }
        )


class UsageAllApi(APIView):
    @extend_schema(operation_id="usage_all", responses=UsageAllOutput, summary="This month's usage of both kinds")
    def get(self, request: Request) -> Response:
        caller = principal(request)
        plan = caller.plan
        month = usage.month_of()
        counters = usage.snapshot(caller.account_id, month)
        start, end = usage.period_of(month)
        return Response(
            {
                "plan": plan.code,
                "month": month,
                "period_start": start.isoformat(),
                "period_end": end.isoformat(),
                "make": _kind_body(counters, usage.MAKE, plan.make_limit),
                "ai": _kind_body(counters, usage.AI, plan.ai_limit),
            },
            headers={"X-OnceOnly-Plan": plan.code, "X-OnceOnly-Month": month},
        )
