"""`/v1/check-lock` and the lease endpoints `/v1/ai/*` (docs/api.md §"POST /v1/check-lock", §"Leases: /v1/ai/*").

Input is validated by hand on these hot paths (a serializer costs more than the Redis round trip it guards);
the serializers below document the shapes in the OpenAPI schema. Errors are 422 in the list form of the error
contract; a stale or wrong lease_id is 409 ``lease_mismatch``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import entitlements, ratelimit, usage
from billing.auth import authenticate_header_value
from idempotency import events, jobs, runs, selectors, services
from idempotency.choices import LeaseStatus
from idempotency.models import Lease
from onceonly_site.api import (
    ApiProblem,
    BodyCheck,
    PathValidationError,
    StrictSerializer,
    body,
    page_params,
    parse_json_body,
)
from onceonly_site.identifiers import identifier_problem, tool_name_problem
from onceonly_site.openapi import (
    IDENTIFIER_PATTERN,
    KEY_PATTERN,
    REGISTERED_NAME_PATTERN,
    UNSAFE_FREE_PATTERN,
    errors,
    identifier_field,
    key_field,
    page_parameters,
    pattern,
    text_field,
    tool_name_field,
)
from onceonly_site.params import MAX_SAFE_INTEGER, MAX_USD, json_number

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


class CheckLockInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH, help_text="1–256 characters, not blank, no control character; `:` and any other "
                    "text allowed.")  # fmt: skip
    ttl = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_SAFE_INTEGER,
        help_text="Seconds. Omitted or null: the plan's default. Above the plan max: clamped.",
    )
    metadata = serializers.DictField(required=False, allow_null=True, help_text="A JSON object of at most 2048 bytes.")


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

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The duplicate retry is the API's hottest call. Its usual form — POST, a JSON body, a bearer key — skips
        DRF's request wrapping, content negotiation and rendering (about a fifth of its server time, measured in
        docs/benchmarks.md). Anything else takes DRF's full path before any work is done; an error raised on the
        lean path goes through DRF's exception handling, so every answer keeps the error contract."""
        if (
            request.method != "POST"
            or request.content_type != "application/json"
            or "HTTP_AUTHORIZATION" not in request.META
        ):
            return super().dispatch(request, *args, **kwargs)
        self.args, self.kwargs, self.headers = args, kwargs, self.default_response_headers
        try:
            principal = authenticate_header_value(request.META["HTTP_AUTHORIZATION"])
            data = parse_json_body(request.body)
            data = {} if data is None else data
            answer = self._check_lock(principal, data)
        except Exception as exc:
            self.request = self.initialize_request(request, *args, **kwargs)
            return self.finalize_response(self.request, self.handle_exception(exc), *args, **kwargs)
        response = HttpResponse(
            json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode(), content_type="application/json"
        )
        response["X-OnceOnly-Status"] = answer["status"]
        return response

    @extend_schema(
        operation_id="check_lock",
        request=CheckLockInput,
        responses={200: CheckLockOutput, **errors(402)},
        summary="Lock a key exactly once per TTL window (duplicates answer 200 with status duplicate)",
    )
    def post(self, request: Request) -> Response:
        answer = self._check_lock(request.auth, body(request))
        return Response(answer, headers={"X-OnceOnly-Status": answer["status"]})

    def _check_lock(self, principal: Any, data: Any) -> dict[str, Any]:
        check = BodyCheck(data, {"key", "ttl", "metadata"})
        key, ttl, metadata = check.key(), check.ttl(), check.json_object("metadata", MAX_METADATA_BYTES)
        check.done()
        outcome = services.lock_check(
            account_id=principal.account_id,
            plan=principal.plan,
            key=key,
            ttl=ttl,
            metadata=metadata,
            rate=ratelimit.script_args(principal),
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
        return data


# --- leases ---------------------------------------------------------------------------------------------------


LEASE_STATUSES = ["acquired", "polling", "extended", "in_progress", "completed", "failed", "cancelled", "expired",
                  "not_found"]  # fmt: skip


class LeaseRecordOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.ChoiceField(choices=LEASE_STATUSES)
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


class LeaseStateOutput(serializers.Serializer):
    """`/v1/ai/status`: `ok`, `status` and `key` always; the record's fields when the key exists (not_found has
    only the three)."""

    ok = serializers.BooleanField()
    status = serializers.ChoiceField(choices=LEASE_STATUSES)
    key = serializers.CharField()
    lease_id = serializers.CharField(allow_null=True, required=False, help_text="Always null here (holders only).")
    version = serializers.IntegerField(required=False)
    ttl = serializers.IntegerField(required=False)
    ttl_left = serializers.IntegerField(allow_null=True, required=False)
    first_seen_at = serializers.DateTimeField(required=False)
    done_at = serializers.DateTimeField(allow_null=True, required=False)
    result = serializers.DictField(allow_null=True, required=False)
    result_hash = serializers.CharField(allow_null=True, required=False)
    error_code = serializers.CharField(allow_null=True, required=False)
    retry_after_sec = serializers.IntegerField(allow_null=True, required=False)


class LeaseResultOutput(serializers.Serializer):
    """`/v1/ai/result`: `ok`, `status` and `key` always; the outcome's fields when the key exists."""

    ok = serializers.BooleanField()
    status = serializers.ChoiceField(choices=LEASE_STATUSES)
    key = serializers.CharField()
    result = serializers.DictField(allow_null=True, required=False)
    result_hash = serializers.CharField(allow_null=True, required=False)
    error_code = serializers.CharField(allow_null=True, required=False)
    done_at = serializers.DateTimeField(allow_null=True, required=False)
    version = serializers.IntegerField(required=False)


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


class LeaseInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH)
    ttl = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_SAFE_INTEGER)
    metadata = serializers.DictField(required=False, allow_null=True, help_text="A JSON object of at most 2048 bytes.")


class LeaseApi(APIView):
    @extend_schema(
        operation_id="ai_lease",
        request=LeaseInput,
        responses={200: LeaseRecordOutput, **errors(402)},
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


def lease_id_field() -> serializers.CharField:
    return text_field(64, non_blank=True, required=True, help_text="The lease_id the lease answer gave the holder.")


class LeaseExtendInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH)
    lease_id = lease_id_field()
    ttl = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_SAFE_INTEGER)


class LeaseExtendApi(APIView):
    @extend_schema(
        operation_id="ai_extend",
        request=LeaseExtendInput,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Heartbeat: reset the holder's expiry to now + ttl",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "ttl"})
        key, lease_id, ttl = check.key(), check.text("lease_id", required=True, max_length=64), check.ttl()
        check.done()
        return _holder_call(request, lambda: services.lease_extend(
            account_id=request.auth.account_id, plan=request.auth.plan, key=key, lease_id=lease_id, ttl=ttl
        ))  # fmt: skip


class LeaseCompleteInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH)
    lease_id = lease_id_field()
    result = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="JSON object, at most 256 KB; integers within ±(2^53−1) (it is hashed as RFC 8785 JSON).",
    )
    result_hash = text_field(128, help_text="Default: SHA-256 of RFC 8785 canonical JSON.")


class LeaseCompleteApi(APIView):
    @extend_schema(
        operation_id="ai_complete",
        request=LeaseCompleteInput,
        responses={200: LeaseRecordOutput, **errors(409)},
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


class LeaseFailInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH)
    lease_id = lease_id_field()
    error_code = text_field(128, non_blank=True, required=True)
    error_hash = text_field(128)


class LeaseFailApi(APIView):
    @extend_schema(
        operation_id="ai_fail",
        request=LeaseFailInput,
        responses={200: LeaseRecordOutput, **errors(409)},
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


class LeaseCancelInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH)
    lease_id = lease_id_field()
    reason = text_field(500, non_blank=True, help_text="Not blank when sent.")


class LeaseCancelApi(APIView):
    @extend_schema(
        operation_id="ai_cancel",
        request=LeaseCancelInput,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Give the key back without a result (status cancelled)",
    )
    def post(self, request: Request) -> Response:
        check = BodyCheck(body(request), {"key", "lease_id", "reason"})
        key, lease_id = check.key(), check.text("lease_id", required=True, max_length=64)
        reason = check.text("reason", required=False, max_length=500, non_blank=True) or ""
        check.done()
        return _holder_call(request, lambda: services.lease_cancel(
            account_id=request.auth.account_id, key=key, lease_id=lease_id, reason=reason
        ))  # fmt: skip


KEY_PARAM = OpenApiParameter(
    "key", {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN}, required=True,
    description="The lease key: not blank, no control character.",
)  # fmt: skip


def _not_found(key: str) -> Response:
    return Response({"ok": False, "status": "not_found", "key": key})


class LeaseStatusApi(APIView):
    @extend_schema(
        operation_id="ai_status",
        parameters=[KEY_PARAM],
        responses=LeaseStateOutput,
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
        responses=LeaseResultOutput,
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


# --- keyed runs (key form of /v1/ai/run; the combined view is governance.api.AiRunApi) ---------------------------

MAX_RUN_METADATA_BYTES = 64 * 1024
RUN_METADATA_KEYS = {"run_id", "agent_id", "actions", "dry_run", "task", "params"}


def _run_spec(check: BodyCheck, metadata: dict[str, Any] | None) -> runs.RunSpec:
    """The meaningful keys of a run's metadata, validated (other keys are kept in the lease's metadata only)."""
    meta = metadata or {}
    spec: dict[str, Any] = {}
    run_id = meta.get("run_id")
    if run_id is not None:
        if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 256 or identifier_problem(run_id):
            check.fail("metadata.run_id", "A non-blank string of at most 256 characters without control or "
                       "bidirectional formatting characters.", "string_type")  # fmt: skip
        else:
            spec["run_id"] = run_id
    agent_id = meta.get("agent_id")
    if agent_id is not None:
        if not isinstance(agent_id, str) or not agent_id.strip() or len(agent_id) > 200 or identifier_problem(agent_id):
            check.fail("metadata.agent_id", "A non-blank string of at most 200 characters without control or "
                       "bidirectional formatting characters.", "string_type")  # fmt: skip
        else:
            spec["agent_id"] = agent_id
    task = meta.get("task")
    if task is not None:
        if not isinstance(task, str) or not jobs.NAME.match(task):
            check.fail(
                "metadata.task", "A job handler name: 1–200 letters, digits or _ . : -", "string_pattern_mismatch"
            )
        else:
            spec["task"] = task
    for name in ("dry_run",):
        if meta.get(name) is not None and not isinstance(meta[name], bool):
            check.fail(f"metadata.{name}", "Must be true or false.", "bool_type")
        elif meta.get(name):
            spec[name] = True
    params = meta.get("params")
    if params is not None:
        if not isinstance(params, dict):
            check.fail("metadata.params", "Must be a JSON object (the job handler's input).", "dict_type")
        else:
            spec["params"] = params
    actions = meta.get("actions")
    if actions is not None:
        spec["actions"] = _actions(check, actions)
        if spec["actions"] and "agent_id" not in spec and agent_id is None:
            check.fail("metadata.agent_id", "Required with metadata.actions: the agent whose policy governs them.",
                       "missing")  # fmt: skip
    return runs.RunSpec(**spec)


def _actions(check: BodyCheck, actions: Any) -> list[dict[str, Any]]:
    if not isinstance(actions, list):
        check.fail("metadata.actions", "Must be a list of {tool, args, spend_usd} objects.", "list_type")
        return []
    if len(actions) > runs.MAX_ACTIONS:
        check.fail("metadata.actions", f"At most {runs.MAX_ACTIONS} actions per run (got {len(actions)}).",
                   "too_long")  # fmt: skip
        return []
    cleaned = []
    for index, action in enumerate(actions):
        where = f"metadata.actions.{index}"
        if not isinstance(action, dict):
            check.fail(where, "Must be an object {tool, args, spend_usd}.", "dict_type")
            continue
        unknown = sorted(set(action) - {"tool", "args", "spend_usd"})
        if unknown:
            check.fail(where, f"Unknown field(s): {', '.join(unknown)}.", "extra_forbidden")
        tool, args, spend = action.get("tool"), action.get("args"), action.get("spend_usd")
        if not isinstance(tool, str) or not tool.strip() or len(tool) > 200:
            check.fail(f"{where}.tool", "A non-blank tool name of at most 200 characters.", "string_type")
        elif problem := tool_name_problem(tool):  # as the governed call refuses it (governance/api.py)
            check.fail(f"{where}.tool", problem, "string_pattern_mismatch")
        if args is not None and not isinstance(args, dict):
            check.fail(f"{where}.args", "Must be a JSON object.", "dict_type")
        if spend is not None and json_number(spend, 0, MAX_USD) is None:
            check.fail(f"{where}.spend_usd", f"Must be a number from 0 to {MAX_USD:,}.", "float_type")
        item: dict[str, Any] = {"tool": tool, "args": args or {}}
        if spend is not None:
            item["spend_usd"] = spend
        cleaned.append(item)
    return cleaned


class RunActionInput(StrictSerializer):
    tool = tool_name_field()
    args = serializers.DictField(required=False, allow_null=True)
    spend_usd = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=MAX_USD)


class RunMetadataInput(serializers.Serializer):
    """The keys of a keyed run's metadata that mean something (``_run_spec``); any other key is kept as is."""

    openapi_extra = {
        "additionalProperties": {},
        # agent_id is required with actions: the agent whose policy governs them.
        "anyOf": [{"properties": {"actions": {"maxItems": 0}}}, {"required": ["agent_id"],
                                                               "properties": {"agent_id": {"type": "string"}}}],
    }  # fmt: skip
    run_id = identifier_field(256, required=False, allow_null=True, help_text="The timeline's id (default: the key).")
    agent_id = identifier_field(200, required=False, allow_null=True, help_text="Required with actions.")
    actions = serializers.ListField(
        child=RunActionInput(), required=False, allow_null=True, max_length=runs.MAX_ACTIONS
    )
    dry_run = serializers.BooleanField(required=False, allow_null=True)
    task = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=200,
        validators=[pattern(REGISTERED_NAME_PATTERN)],
        help_text="A registered job handler.",
    )
    params = serializers.DictField(required=False, allow_null=True, help_text="The job handler's input.")


class KeyedRunInput(StrictSerializer):
    key = key_field(MAX_KEY_LENGTH, help_text="The run's idempotency key.")
    ttl = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_SAFE_INTEGER,
                                   help_text="Lease TTL in seconds.")  # fmt: skip
    metadata = RunMetadataInput(
        required=False,
        allow_null=True,
        help_text="At most 64 KB, integers within ±(2^53−1). Meaningful keys: run_id (timeline id, default the key), "
        "agent_id, actions (≤ 50 {tool, args, spend_usd}, run through the governed call as agent_id), dry_run, task "
        "(a registered job handler), params (the handler's input).",
    )


def keyed_run(request: Request, data: Any) -> Response:
    """``POST /v1/ai/run`` with ``key``: the lease answer (``/ai/lease`` shape, never ``allowed``/``decision``); on
    ``acquired`` a worker runs the actions and the task and completes or fails the key."""
    check = BodyCheck(data, {"key", "ttl", "metadata"})
    key, ttl = check.key(), check.ttl()
    metadata = check.json_object("metadata", MAX_RUN_METADATA_BYTES, canonical=True)
    spec = _run_spec(check, metadata)
    check.done()
    if spec.actions:
        entitlements.require(request.auth.plan, "governance")
    outcome = runs.run_start(
        account_id=request.auth.account_id, plan=request.auth.plan, key=key, ttl=ttl, metadata=metadata, spec=spec
    )
    return _lease_response(request, outcome)


# --- run events and timelines ---------------------------------------------------------------------------------

EVENT_FIELDS = {"run_id", "type", "ts", "status", "duration_ms", "step", "tool", "req_id", "lease_id", "agent_id",
                "message", "data"}  # fmt: skip
MAX_EVENT_DATA_BYTES = 16 * 1024
MAX_EVENT_EXTRA_BYTES = 8 * 1024
MAX_TS = 253402300799  # 9999-12-31T23:59:59Z


class EventInput(serializers.Serializer):
    """Not strict: unknown top-level keys are kept with the event (names of at most 64 characters, 8 KB in all)."""

    openapi_extra = {"additionalProperties": {}}
    run_id = identifier_field(256, help_text="The timeline the event belongs to (non-blank).")
    type = key_field(64, help_text="e.g. note, sdk_debug, tool_call (non-blank).")
    ts = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_TS,
                                  help_text="Unix seconds; default now.")  # fmt: skip
    status = text_field(64)
    duration_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_SAFE_INTEGER)
    step = text_field(256)
    tool = text_field(256, validators=[pattern(UNSAFE_FREE_PATTERN)])
    req_id = text_field(256)
    lease_id = text_field(256)
    agent_id = text_field(256, validators=[pattern(UNSAFE_FREE_PATTERN)])
    message = text_field(4000)
    data = serializers.DictField(required=False, allow_null=True, help_text="A JSON object, at most 16 KB.")


class EventCreatedOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    event_id = serializers.IntegerField()
    run_id = serializers.CharField()


def post_event(request: Request) -> Response:
    """``POST /v1/events``: one timeline event; unknown top-level keys are kept
    (docs/api.md §"Run events and timelines")."""
    data = body(request)
    check = BodyCheck(data, set(data) if isinstance(data, dict) else set())
    fields: dict[str, Any] = {"run_id": check.identifier("run_id"), "type": check.key("type", max_length=64)}
    for name, limit in events.FIELD_LIMITS.items():
        if name != "type" and check.text(name, required=False, max_length=limit) is not None:
            if name in ("agent_id", "tool") and (problem := identifier_problem(data[name])):
                check.fail(name, problem, "string_pattern_mismatch")  # identifiers the timeline shows
            fields[name] = data[name]
    for name, maximum in (("ts", MAX_TS), ("duration_ms", MAX_SAFE_INTEGER)):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            check.fail(name, f"A whole number from 0 to {maximum}.", "int_type")
        else:
            fields[name] = value
    event_data = check.json_object("data", MAX_EVENT_DATA_BYTES, canonical=True)
    if event_data is not None:
        fields["data"] = event_data
    extra = {name: value for name, value in data.items() if name not in EVENT_FIELDS}
    if extra:
        if any(len(name) > 64 for name in extra):
            check.fail("non_field_errors", "Extra keys are at most 64 characters long.", "string_too_long")
        size = len(json.dumps(extra, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_EVENT_EXTRA_BYTES:
            check.fail("non_field_errors", f"Extra keys: at most {MAX_EVENT_EXTRA_BYTES} bytes of JSON (got {size}).",
                       "too_long")  # fmt: skip
    check.done()
    event = events.record_client_event(request.auth.account_id, fields, extra)
    return Response({"ok": True, "event_id": event.pk, "run_id": event.run_id})


class TimelineOutput(serializers.Serializer):
    run_id = serializers.CharField()
    total = serializers.IntegerField(help_text="All events of the run (0 for an unknown run).")
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    events = serializers.ListField(child=serializers.DictField(), help_text="Chronological.")


RUN_ID_PARAM = OpenApiParameter(
    "run_id", {"type": "string", "maxLength": 256, "pattern": IDENTIFIER_PATTERN}, OpenApiParameter.PATH,
    description="Not blank, no control or bidirectional formatting character.",
)  # fmt: skip


class RunTimelineApi(APIView):
    @extend_schema(
        operation_id="run_timeline",
        parameters=[RUN_ID_PARAM, *page_parameters(default=200, maximum=2000)],
        responses={200: TimelineOutput, **errors(404)},  # an empty run id: no route takes /v1/runs/
        summary="A run's timeline, chronological ({run_id, total, events}); an unknown run has total 0",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run_id = run_id.strip()
        if not run_id or len(run_id) > 256 or identifier_problem(run_id):
            raise PathValidationError({"run_id": [identifier_problem(run_id) or "A run id of 1–256 characters."]})
        limit, offset = page_params(request, default=200, maximum=2000)
        rows, total = selectors.run_timeline(request.auth.account_id, run_id, limit=limit, offset=offset)
        return Response({"run_id": run_id, "total": total, "limit": limit, "offset": offset,
                         "events": [events.as_json(e) for e in rows]})  # fmt: skip
