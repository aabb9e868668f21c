"""`/v1/me` and `/v1/me/notifications` (protocol §2)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import counters, services
from billing.selectors import account_for_api
from onceonly_site.api import StrictBooleanField, StrictSerializer, body, validate


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
        account = account_for_api(request.auth.account_id)
        return Response(
            MeOutput(
                {
                    "plan": account.plan.code,
                    "plan_name": account.plan.name,
                    "is_active": account.is_active,
                    "account": account.name,
                    "account_id": account.pk,
                    "key_preview": request.auth.key_preview,
                    "current_period_end": account.current_period_end(),
                    "requests_total_all_time": account.requests_total_all_time + counters.pending(account.pk),
                    "blocked_total_all_time": account.blocked_total_all_time,
                    **{name: getattr(account, name) for name in services.NOTIFICATION_FIELDS},
                }
            ).data
        )


class NotificationsInput(StrictSerializer):
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
        account = account_for_api(request.auth.account_id)
        services.notifications_update(
            account=account, changes=changes, actor_label=f"api key {request.auth.key_preview}"
        )
        return Response({name: getattr(account, name) for name in services.NOTIFICATION_FIELDS})
