"""`/v1/check-lock` and the lease endpoints `/v1/ai/*` (protocol §3–4).

Input is validated by hand on these hot paths (a serializer costs more than the Redis round trip it guards);
the serializers below document the shapes in the OpenAPI schema. Errors are 422 in the list form of the error
contract; a stale or wrong lease_id is 409 ``lease_mismatch``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import ratelimit, usage
from idempotency import services
from idempotency.choices import LeaseStatus
from idempotency.models import Lease
from onceonly_site.api import ApiProblem, BodyCheck, body

MAX_KEY_LENGTH = 256  # also enforced by BodyCheck.key
MAX_METADATA_BYTES = 2048
MAX_RESULT_BYTES = 256 * 1024


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _query_key(request: Request) -> str:
    check = BodyCheck({"key": request.query_params.get("key")}, {"key"}, query=True)
    key = check.key()
    check.done()
    return key


# --- check-lock -----------------------------------------------------------------------------------------------


class CheckLockInput(serializers.Serializer):
    key = serializers.CharField(max_length=MAX_KEY_LENGTH, help_text="1–256 characters; `:` and any text allowed.")
    ttl = serializers.IntegerField(
        required=False, min_value=1, help_text="Seconds. Omitted: the plan's default. Above the plan max: clamped."
    )
    metadata = serializers.DictField(required=False, help_text="A JSON object of at most 2048 bytes.")


class CheckLockOutput(serializers.Serializer):
    success = serializers.BooleanField(help_text="true when this call locked the key.")
    status = serializers.ChoiceField(choices=["locked", "duplicate"])
    key = serializers.CharField()
    ttl = serializers.IntegerField(help_text="Effective TTL (of the first call, on a duplicate).")
    ttl_left = serializers.IntegerField(required=False, help_text="Duplicate only: seconds until the key is free.")
    first_seen_at = serializers.DateTimeField(allow_null=True, help_text="Duplicate: when the key was locked.")
    metadata = serializers.DictField(required=False, help_text="Duplicate only, if the first call sent metadata.")


class CheckLockApi(APIView):
    rate_limit_in_script = True  # the token is taken inside check_lock.lua: one Redis round trip

    @extend_schema(
        operation_id="check_lock",
        request=CheckLockInput,
        responses=CheckLockOutput,
        summary="Lock a key exactly once per TTL window (duplicates answer 200 with status duplicate)",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "ttl", "metadata"})
        key, ttl, metadata = check.key(), check.ttl(), check.json_object("metadata", MAX_METADATA_BYTES)
        check.done()
        outcome = services.lock_check(
            account_id=request.auth.account_id,
            plan=request.auth.plan,
            key=key,
            ttl=ttl,
            metadata=metadata,
            rate=ratelimit.script_args(request.auth),
        )
        if outcome.locked:
            data = {"success": True, "status": "locked", "key": key, "ttl": outcome.ttl, "first_seen_at": None}
        else:
            data = {
                "success": False,
                "status": "duplicate",
                "key": key,
                "ttl": outcome.ttl,
                "ttl_left": outcome.ttl_left,
                "first_seen_at": _iso(outcome.first_seen_at),
            }
            if outcome.has_metadata:  # never "metadata": null — the SDK would show it instead of what was sent
                data["metadata"] = outcome.metadata
        return Response(data, headers={"X-OnceOnly-Status": data["status"]})


# --- leases ---------------------------------------------------------------------------------------------------


class LeaseRecordOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.ChoiceField(
        choices=["acquired", "polling", "extended", "in_progress", "completed", "failed", "cancelled", "expired",
                 "not_found"]
    )  # fmt: skip
    key = serializers.CharField()
    lease_id = serializers.CharField(allow_null=True, help_text="Only ever given to the holder.")
    version = serializers.IntegerField(help_text="Acquisition number (the fence); +1 on every acquisition.")
    ttl = serializers.IntegerField()
    ttl_left = serializers.IntegerField(allow_null=True)
    first_seen_at = serializers.DateTimeField()
    done_at = serializers.DateTimeField(allow_null=True)
    result = serializers.DictField(allow_null=True)
    result_hash = serializers.CharField(allow_null=True)
    error_code = serializers.CharField(allow_null=True)
    retry_after_sec = serializers.IntegerField(allow_null=True, help_text="Polling hint for waiters.")
    charged = serializers.IntegerField(help_text="1 when this call acquired (counted as `ai` usage).")
    usage = serializers.IntegerField(help_text="`ai` usage this month after this call.")
    limit = serializers.IntegerField(help_text="The plan's monthly `ai` limit.")


def _record(lease: Lease, *, status: str, holder: bool, now: datetime) -> dict[str, Any]:
    held = lease.status == LeaseStatus.IN_PROGRESS and lease.expires_at > now
    completed = lease.status == LeaseStatus.COMPLETED
    return {
        "ok": status not in ("polling", "failed", "expired"),
        "status": status,
        "key": lease.key,
        # Waiters never see the holder's lease_id: with it they could extend or complete someone else's lease.
        "lease_id": lease.lease_id if holder else None,
        "version": lease.version,
        "ttl": lease.ttl_seconds,
        "ttl_left": lease.ttl_left(now) if held and status != "acquired" else None,
        "first_seen_at": _iso(lease.first_seen_at),
        "done_at": _iso(lease.done_at),
        "result": lease.result if completed else None,
        "result_hash": (lease.result_hash or None) if completed else None,
        "error_code": (lease.error_code or None) if lease.status == LeaseStatus.FAILED else None,
        "retry_after_sec": max(1, min(5, lease.ttl_left(now))) if status == "polling" else None,
    }


def _lease_response(request: Request, outcome: services.LeaseOutcome) -> Response:
    data = _record(outcome.lease, status=outcome.status, holder=outcome.holder, now=timezone.now())
    data.update(
        charged=outcome.charged,
        usage=outcome.usage if outcome.usage is not None else usage.current(request.auth.account_id, usage.AI),
        limit=request.auth.plan.ai_limit,
    )
    return Response(data)


def _mismatch() -> ApiProblem:
    return ApiProblem(
        409, "lease_mismatch", "This lease_id does not hold the key (it expired and was re-acquired, or is wrong)."
    )


def _holder_call(request: Request, action) -> Response:
    try:
        outcome = action()
    except services.LeaseMismatch:
        raise _mismatch() from None
    except services.LeaseConflict as conflict:
        raise ApiProblem(409, "lease_conflict", str(conflict), status=conflict.lease.status) from None
    return _lease_response(request, outcome)


class LeaseInput(serializers.Serializer):
    key = serializers.CharField(max_length=MAX_KEY_LENGTH)
    ttl = serializers.IntegerField(required=False, min_value=1)
    metadata = serializers.DictField(required=False)


class LeaseApi(APIView):
    @extend_schema(
        operation_id="ai_lease",
        request=LeaseInput,
        responses=LeaseRecordOutput,
        summary="Acquire the lease of a key, or learn who has it (polling) or how it ended",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "ttl", "metadata"})
        key, ttl, metadata = check.key(), check.ttl(), check.json_object("metadata", MAX_METADATA_BYTES)
        check.done()
        outcome = services.lease_acquire(
            account_id=request.auth.account_id, plan=request.auth.plan, key=key, ttl=ttl, metadata=metadata
        )
        return _lease_response(request, outcome)


class LeaseExtendInput(serializers.Serializer):
    key = serializers.CharField()
    lease_id = serializers.CharField()
    ttl = serializers.IntegerField(required=False, min_value=1)


class LeaseExtendApi(APIView):
    @extend_schema(
        operation_id="ai_extend",
        request=LeaseExtendInput,
        responses=LeaseRecordOutput,
        summary="Heartbeat: reset the holder's expiry to now + ttl",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "ttl"})
        key, lease_id, ttl = check.key(), check.text("lease_id", required=True, max_length=64), check.ttl()
        check.done()
        return _holder_call(request, lambda: services.lease_extend(
            account_id=request.auth.account_id, plan=request.auth.plan, key=key, lease_id=lease_id, ttl=ttl
        ))  # fmt: skip


class LeaseCompleteInput(serializers.Serializer):
    key = serializers.CharField()
    lease_id = serializers.CharField()
    result = serializers.DictField(required=False, help_text="JSON object, at most 256 KB.")
    result_hash = serializers.CharField(required=False, help_text="Default: SHA-256 of RFC 8785 canonical JSON.")


class LeaseCompleteApi(APIView):
    @extend_schema(
        operation_id="ai_complete",
        request=LeaseCompleteInput,
        responses=LeaseRecordOutput,
        summary="Store the result; the key is final for the retention period",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "result", "result_hash"})
        key, lease_id = check.key(), check.text("lease_id", required=True, max_length=64)
        result = check.json_object("result", MAX_RESULT_BYTES, canonical=True)
        result_hash = check.text("result_hash", required=False, max_length=128)
        check.done()
        return _holder_call(request, lambda: services.lease_complete(
            account_id=request.auth.account_id, key=key, lease_id=lease_id, result=result, result_hash=result_hash
        ))  # fmt: skip


class LeaseFailInput(serializers.Serializer):
    key = serializers.CharField()
    lease_id = serializers.CharField()
    error_code = serializers.CharField(max_length=128)
    error_hash = serializers.CharField(required=False)


class LeaseFailApi(APIView):
    @extend_schema(
        operation_id="ai_fail",
        request=LeaseFailInput,
        responses=LeaseRecordOutput,
        summary="Record a failed attempt; the next lease acquires again",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "error_code", "error_hash"})
        key, lease_id = check.key(), check.text("lease_id", required=True, max_length=64)
        error_code = check.text("error_code", required=True, max_length=128)
        error_hash = check.text("error_hash", required=False, max_length=128)
        check.done()
        return _holder_call(request, lambda: services.lease_fail(
            account_id=request.auth.account_id, key=key, lease_id=lease_id, error_code=error_code,
            error_hash=error_hash,
        ))  # fmt: skip


class LeaseCancelInput(serializers.Serializer):
    key = serializers.CharField()
    lease_id = serializers.CharField()
    reason = serializers.CharField(required=False, max_length=500)


class LeaseCancelApi(APIView):
    @extend_schema(
        operation_id="ai_cancel",
        request=LeaseCancelInput,
        responses=LeaseRecordOutput,
        summary="Give the key back without a result (status cancelled)",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "reason"})
        key, lease_id = check.key(), check.text("lease_id", required=True, max_length=64)
        reason = check.text("reason", required=False, max_length=500) or ""
        check.done()
        return _holder_call(request, lambda: services.lease_cancel(
            account_id=request.auth.account_id, key=key, lease_id=lease_id, reason=reason
        ))  # fmt: skip


KEY_PARAM = OpenApiParameter("key", str, required=True, description="The lease key.")


def _not_found(key: str) -> Response:
    return Response({"ok": False, "status": "not_found", "key": key})


class LeaseStatusApi(APIView):
    @extend_schema(
        operation_id="ai_status",
        parameters=[KEY_PARAM],
        responses=LeaseRecordOutput,
        summary="Where a key stands (in_progress while held); free of charge",
    )
    def get(self, request: Request) -> Response:
        key = _query_key(request)
        lease = Lease.objects.filter(account_id=request.auth.account_id, key=key).first()
        if lease is None:
            return _not_found(key)
        now = timezone.now()
        status = lease.visible_status(now)
        data = _record(lease, status=status, holder=False, now=now)
        if status == "in_progress":
            data["retry_after_sec"] = max(1, min(5, lease.ttl_left(now)))
        return Response(data)


class LeaseResultApi(APIView):
    @extend_schema(
        operation_id="ai_result",
        parameters=[KEY_PARAM],
        responses=LeaseRecordOutput,
        summary="The stored result (completed) or error_code (failed); repeatable",
    )
    def get(self, request: Request) -> Response:
        key = _query_key(request)
        lease = Lease.objects.filter(account_id=request.auth.account_id, key=key).first()
        if lease is None:
            return _not_found(key)
        now = timezone.now()
        record = _record(lease, status=lease.visible_status(now), holder=False, now=now)
        fields = ("ok", "status", "key", "result", "result_hash", "error_code", "done_at", "version")
        return Response({name: record[name] for name in fields})
