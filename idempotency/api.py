"""`/v1/check-lock`, the lease endpoints `/v1/ai/*`, the key form of `/v1/ai/run` and run events:
docs/api.md §"POST /v1/check-lock", docs/api.md §"Leases: /v1/ai/*",
docs/api.md §"Keyed runs: the key form of `POST /v1/ai/run`" and docs/api.md §"Run events and timelines".

Each body is declared once (onceonly_site/bodies.py): the declaration validates it — by hand, as these hot paths
need (a serializer costs more than the Redis round trip it guards) — and is the OpenAPI schema's component. Errors
are 422 in the list form of the error contract; a stale or wrong lease_id is 409 ``lease_mismatch``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import entitlements, ratelimit, usage
from billing.auth import ApiPrincipal, principal
from billing.lean_api import LeanPostApi
from idempotency import events, runs, selectors, services, waiting
from idempotency.choices import LeaseStatus
from idempotency.models import Lease
from onceonly_site.api import ApiProblem, BodyCheck, PathValidationError, body, page_params
from onceonly_site.bodies import (
    AgentId,
    Body,
    Boolean,
    Integer,
    JsonObject,
    Key,
    ListOf,
    Nested,
    RegisteredName,
    RunId,
    Text,
    ToolName,
    Ttl,
    Usd,
)
from onceonly_site.identifiers import identifier_problem, tool_name_problem
from onceonly_site.openapi import UNSAFE_FREE_PATTERN, errors, page_parameters
from onceonly_site.params import MAX_SAFE_INTEGER

MAX_KEY_LENGTH = 256
MAX_METADATA_BYTES = 2048
MAX_RESULT_BYTES = 256 * 1024


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LeaseKeyQuery(Body):
    """``?key=`` of /v1/ai/status and /v1/ai/result."""

    strict = False  # the other query parameters are ignored
    key = Key(MAX_KEY_LENGTH, description="The lease key: not blank, no control character.")


def _query_key(request: Request) -> str:
    return LeaseKeyQuery.parse({"key": request.query_params.get("key")}, query=True).key


# --- check-lock -----------------------------------------------------------------------------------------------


class CheckLockInput(Body):
    key = Key(
        MAX_KEY_LENGTH,
        description=f"1–{MAX_KEY_LENGTH} characters, not blank, no control character; `:` and any other text allowed.",
    )
    ttl = Ttl(description="Seconds. Omitted or null: the plan's default. Above the plan max: clamped.")
    metadata = JsonObject(MAX_METADATA_BYTES, description=f"A JSON object of at most {MAX_METADATA_BYTES} bytes.")


class CheckLockOutput(serializers.Serializer):
    success = serializers.BooleanField(help_text="true when this call locked the key.")
    status = serializers.ChoiceField(choices=["locked", "duplicate"])
    key = serializers.CharField()
    ttl = serializers.IntegerField(help_text="Effective TTL (of the first call, on a duplicate).")
    ttl_left = serializers.IntegerField(required=False, help_text="Duplicate only: seconds until the key is free.")
    first_seen_at = serializers.DateTimeField(allow_null=True, help_text="Duplicate: when the key was locked.")
    metadata = serializers.DictField(required=False, help_text="Duplicate only, if the first call sent metadata.")


class CheckLockApi(LeanPostApi):
    rate_limit_in_script = True  # the token is taken inside check_lock.lua: one Redis round trip

    @extend_schema(
        operation_id="check_lock",
        request=CheckLockInput.serializer,
        responses={200: CheckLockOutput, **errors(402)},
        summary="Lock a key exactly once per TTL window (duplicates answer 200 with status duplicate)",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        lock = CheckLockInput.parse(data)
        key = lock.key
        outcome = services.lock_check(
            account_id=caller.account_id,
            plan=caller.plan,
            key=key,
            ttl=lock.ttl,
            metadata=lock.metadata,
            rate=ratelimit.script_args(caller),
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
        return data, {"X-OnceOnly-Status": data["status"]}


# --- leases ---------------------------------------------------------------------------------------------------


LEASE_STATUSES = [
    "acquired",
    "polling",
    "extended",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
    "expired",
    "not_found",
    "waiting_approval",
    "paused",
]


RETRY_AFTER_HELP = (
    "Polling hint while the key is held (`polling`, `in_progress`): whole seconds, 1 for a fresh acquisition, "
    "growing with its age to at most 5, never past the lease's expiry; else null."
)
RUN_WAIT_NOTE = (
    "While a keyed run holds the key (queued or running in a worker), the request waits up to "
    "ONCEONLY_RUN_WAIT_SECONDS (default 2 s) for it to finish and answers the moment it does; a key held by a plain "
    "lease, or a process whose waiting slots are all taken, is answered at once. A key whose run waits for a "
    "person's approval is `waiting_approval` (at once), with the approval in `result`; one whose run is paused at a "
    "per-run cap is `paused`, with the cap's numbers in `result`."
)


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
    retry_after_sec = serializers.IntegerField(allow_null=True, help_text=RETRY_AFTER_HELP)
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
    retry_after_sec = serializers.IntegerField(allow_null=True, required=False, help_text=RETRY_AFTER_HELP)


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
        "retry_after_sec": waiting.retry_after(lease, now) if status in ("polling", "in_progress") else None,
    }


def _lease_answer(caller: ApiPrincipal, outcome: services.LeaseOutcome) -> dict[str, Any]:
    assert outcome.lease is not None  # every outcome of a lease call carries the record
    data = _record(outcome.lease, status=outcome.status, holder=outcome.holder, now=timezone.now())
    data.update(
        charged=outcome.charged,
        usage=outcome.usage if outcome.usage is not None else usage.current(caller.account_id, usage.AI),
        limit=caller.plan.ai_limit,
    )
    return data


def _mismatch() -> ApiProblem:
    return ApiProblem(
        409, "lease_mismatch", "This lease_id does not hold the key (it expired and was re-acquired, or is wrong)."
    )


def _holder_call(
    caller: ApiPrincipal, action: Callable[[], services.LeaseOutcome]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A holder's call (extend, complete, fail, cancel): its answer, or 409 for a stale holder or a conflict."""
    try:
        outcome = action()
    except services.LeaseMismatch:
        raise _mismatch() from None
    except services.LeaseConflict as conflict:
        raise ApiProblem(409, "lease_conflict", str(conflict), status=conflict.lease.status) from None
    return _lease_answer(caller, outcome), {}


class LeaseInput(Body):
    key = Key(MAX_KEY_LENGTH)
    ttl = Ttl()
    metadata = JsonObject(MAX_METADATA_BYTES, description=f"A JSON object of at most {MAX_METADATA_BYTES} bytes.")


class LeaseApi(LeanPostApi):
    @extend_schema(
        operation_id="ai_lease",
        request=LeaseInput.serializer,
        responses={200: LeaseRecordOutput, **errors(402)},
        summary="Acquire the lease of a key, or learn who has it (polling) or how it ended",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        lease = LeaseInput.parse(data)
        outcome = services.lease_acquire(
            account_id=caller.account_id,
            plan=caller.plan,
            key=lease.key,
            ttl=lease.ttl,
            metadata=lease.metadata,
        )
        return _lease_answer(caller, outcome), {}


def _lease_id() -> Text[str]:
    """The ``lease_id`` a holder sends back (the lease endpoints' bodies)."""
    return Text(64, required=True, description="The lease_id the lease answer gave the holder.")


class LeaseExtendInput(Body):
    key = Key(MAX_KEY_LENGTH)
    lease_id = _lease_id()
    ttl = Ttl()


class LeaseExtendApi(LeanPostApi):
    @extend_schema(
        operation_id="ai_extend",
        request=LeaseExtendInput.serializer,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Heartbeat: reset the holder's expiry to now + ttl",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        extend = LeaseExtendInput.parse(data)
        return _holder_call(
            caller,
            lambda: services.lease_extend(
                account_id=caller.account_id,
                plan=caller.plan,
                key=extend.key,
                lease_id=extend.lease_id,
                ttl=extend.ttl,
            ),
        )


class LeaseCompleteInput(Body):
    key = Key(MAX_KEY_LENGTH)
    lease_id = _lease_id()
    result = JsonObject(
        MAX_RESULT_BYTES,
        canonical=True,
        description="JSON object, at most 256 KB; integers within ±(2^53−1) (it is hashed as RFC 8785 JSON).",
    )
    result_hash = Text(128, description="Default: SHA-256 of RFC 8785 canonical JSON.")


class LeaseCompleteApi(LeanPostApi):
    @extend_schema(
        operation_id="ai_complete",
        request=LeaseCompleteInput.serializer,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Store the result; the key is final for the retention period",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        complete = LeaseCompleteInput.parse(data)
        return _holder_call(
            caller,
            lambda: services.lease_complete(
                account_id=caller.account_id,
                key=complete.key,
                lease_id=complete.lease_id,
                result=complete.result,
                result_hash=complete.result_hash,
            ),
        )


class LeaseFailInput(Body):
    key = Key(MAX_KEY_LENGTH)
    lease_id = _lease_id()
    error_code = Text(128, required=True)
    error_hash = Text(128)


class LeaseFailApi(LeanPostApi):
    @extend_schema(
        operation_id="ai_fail",
        request=LeaseFailInput.serializer,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Record a failed attempt; the next lease acquires again",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        fail = LeaseFailInput.parse(data)
        return _holder_call(
            caller,
            lambda: services.lease_fail(
                account_id=caller.account_id,
                key=fail.key,
                lease_id=fail.lease_id,
                error_code=fail.error_code,
                error_hash=fail.error_hash,
            ),
        )


class LeaseCancelInput(Body):
    key = Key(MAX_KEY_LENGTH)
    lease_id = _lease_id()
    reason = Text(500, non_blank=True, description="Not blank when sent.")


class LeaseCancelApi(LeanPostApi):
    @extend_schema(
        operation_id="ai_cancel",
        request=LeaseCancelInput.serializer,
        responses={200: LeaseRecordOutput, **errors(409)},
        summary="Give the key back without a result (status cancelled)",
    )
    def post(self, request: Request) -> Response:
        return self.answer_drf(request)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        cancel = LeaseCancelInput.parse(data)
        return _holder_call(
            caller,
            lambda: services.lease_cancel(
                account_id=caller.account_id, key=cancel.key, lease_id=cancel.lease_id, reason=cancel.reason or ""
            ),
        )


def _not_found(key: str) -> Response:
    return Response({"ok": False, "status": "not_found", "key": key})


def _key_state(lease: Lease, now: datetime) -> dict[str, Any]:
    """What status and result say of a key: the lease's record, and ``waiting_approval`` with the approval in
    ``result`` while its keyed run waits for one (docs/runs.md §"Runs that wait for an approval"), ``paused`` with
    the cap it met while it is paused (docs/runs.md §"Runs that pause at a cap")."""
    record = _record(lease, status=lease.visible_status(now), holder=False, now=now)
    if record["status"] == "in_progress":
        parked = runs.waiting_run(lease)
        if parked is not None:
            # A person decides (or raises a cap) in minutes, not seconds: poll at the longest interval the SDK honours.
            record.update(
                status="paused" if parked.is_paused else "waiting_approval",
                result=runs.waiting_answer(parked),
                retry_after_sec=waiting.MAX_RETRY_AFTER,
            )
    return record


def _settled_lease(account_id: int, key: str) -> Lease | None:
    """The key's lease record; while a keyed run holds it, once the run finished or the wait's bound passed
    (docs/runs.md §"Waiting for a run")."""
    lease = Lease.objects.filter(account_id=account_id, key=key).first()
    return lease if lease is None else waiting.wait_for_run(account_id, key, lease)


class LeaseStatusApi(APIView):
    @extend_schema(
        operation_id="ai_status",
        parameters=LeaseKeyQuery.parameters(),
        responses=LeaseStateOutput,
        summary="Where a key stands (in_progress while held); free of charge",
        description=RUN_WAIT_NOTE,
    )
    def get(self, request: Request) -> Response:
        key = _query_key(request)
        lease = _settled_lease(principal(request).account_id, key)
        if lease is None:
            return _not_found(key)
        return Response(_key_state(lease, timezone.now()))


class LeaseResultApi(APIView):
    @extend_schema(
        operation_id="ai_result",
        parameters=LeaseKeyQuery.parameters(),
        responses=LeaseResultOutput,
        summary="The stored result (completed) or error_code (failed); repeatable",
        description=RUN_WAIT_NOTE,
    )
    def get(self, request: Request) -> Response:
        key = _query_key(request)
        lease = _settled_lease(principal(request).account_id, key)
        if lease is None:
            return _not_found(key)
        record = _key_state(lease, timezone.now())
        fields = ("ok", "status", "key", "result", "result_hash", "error_code", "done_at", "version")
        return Response({name: record[name] for name in fields})


# --- keyed runs (key form of /v1/ai/run; the combined view is governance.api.AiRunApi) ---------------------------

MAX_RUN_METADATA_BYTES = 64 * 1024
# A keyed run's metadata answers in its own words (one message per key, whatever is wrong with it).
RUN_ID_RULE = (
    f"A non-blank string of at most {RunId.MAX_LENGTH} characters without control or bidirectional "
    "formatting characters.",
    "string_type",
)
AGENT_ID_RULE = (
    f"A non-blank string of at most {AgentId.MAX_LENGTH} characters without control or bidirectional "
    "formatting characters.",
    "string_type",
)
TASK_RULE = ("A job handler name: 1–200 letters, digits or _ . : -", "string_pattern_mismatch")


class RunActionInput(Body):
    """One of ``metadata.actions``: run through the governed call as ``metadata.agent_id``."""

    not_object = ("Must be an object {tool, args, spend_usd}.", "dict_type")
    # The tool name rules of the governed call (governance/api.py), in this body's words for the shape.
    tool = ToolName(
        invalid=("A non-blank tool name of at most 200 characters.", "string_type"), rules=[tool_name_problem]
    )
    args = JsonObject()
    spend_usd = Usd()

    @classmethod
    def refuse_unknown(cls, check: BodyCheck, loc: str, names: list[str]) -> None:
        check.fail(loc, f"Unknown field(s): {', '.join(names)}.", "extra_forbidden")

    def action(self) -> dict[str, Any]:
        """The action as a run keeps it (``runs.RunSpec.actions``)."""
        item: dict[str, Any] = {"tool": self.tool, "args": self.args or {}}
        if self.spend_usd is not None:
            item["spend_usd"] = self.spend_usd
        return item


class RunMetadataInput(Body):
    """The keys of a keyed run's metadata that mean something; any other key is kept in the lease's metadata."""

    strict = False
    not_object = ("Must be a JSON object.", "dict_type")
    schema_description = "The keys of a keyed run's metadata that mean something; any other key is kept as is."
    openapi_extra = {
        "additionalProperties": {},
        # agent_id is required with actions: the agent whose policy governs them.
        "anyOf": [
            {"properties": {"actions": {"maxItems": 0}}},
            {"required": ["agent_id"], "properties": {"agent_id": {"type": "string"}}},
        ],
    }
    run_id = RunId(
        required=False, invalid=RUN_ID_RULE, refused=RUN_ID_RULE, description="The timeline's id (default: the key)."
    )
    agent_id = AgentId(
        required=False, invalid=AGENT_ID_RULE, refused=AGENT_ID_RULE, description="Required with actions."
    )
    task: RegisteredName[str | None] = RegisteredName(
        required=False, invalid=TASK_RULE, refused=TASK_RULE, description="A registered job handler."
    )
    dry_run = Boolean()
    params = JsonObject(
        invalid=("Must be a JSON object (the job handler's input).", "dict_type"),
        description="The job handler's input.",
    )
    actions = ListOf(
        RunActionInput,
        max_items=runs.MAX_ACTIONS,
        not_list=("Must be a list of {tool, args, spend_usd} objects.", "list_type"),
        too_long=lambda got: (f"At most {runs.MAX_ACTIONS} actions per run (got {got}).", "too_long"),
    )

    def clean(self, check: BodyCheck, prefix: str) -> None:
        if self.actions and self.raw.get("agent_id") is None:  # an invalid one is reported already
            check.fail(
                f"{prefix}agent_id", "Required with metadata.actions: the agent whose policy governs them.", "missing"
            )

    def spec(self) -> runs.RunSpec:
        """What the run does (the keys that are not valid are refused before a run exists)."""
        return runs.RunSpec(
            run_id=self.run_id,
            agent_id=self.agent_id or "",
            actions=[action.action() for action in self.actions or ()],
            dry_run=bool(self.dry_run),
            task=self.task or "",
            params=self.params,
        )


class KeyedRunInput(Body):
    key = Key(MAX_KEY_LENGTH, description="The run's idempotency key.")
    ttl = Ttl(description="Lease TTL in seconds.")
    metadata = Nested(
        RunMetadataInput,
        MAX_RUN_METADATA_BYTES,
        canonical=True,
        description="At most 64 KB, integers within ±(2^53−1). Meaningful keys: run_id (timeline id, default the key), "
        "agent_id, actions (≤ 50 {tool, args, spend_usd}, run through the governed call as agent_id), dry_run, task "
        "(a registered job handler), params (the handler's input).",
    )


class KeyedRunApi(APIView):
    """``POST /v1/ai/run`` with ``key``: the lease answer (``/ai/lease`` shape, never ``allowed``/``decision``); on
    ``acquired`` a worker runs the actions and the task and completes or fails the key. The answer waits for the
    key's run up to ONCEONLY_RUN_WAIT_SECONDS (``_after_run_wait``). Not routed itself: the path
    is governance.api.AiRunApi's (one path, two forms), which hands it the requests with a ``key`` — idempotency
    does not import governance."""

    rate_limit_in_script = True  # not the DRF throttle: the token is taken with ratelimit.take below

    def post(self, request: Request) -> Response:
        caller = principal(request)
        ratelimit.take(caller)  # before the fields are checked, like the DRF throttle of other endpoints
        run = KeyedRunInput.parse(body(request))
        spec = run.metadata.spec() if run.metadata is not None else runs.RunSpec()
        if spec.actions:  # after validation: a 422 comes first
            entitlements.require(caller.plan, "governance")
        outcome = runs.run_start(
            account_id=caller.account_id,
            plan=caller.plan,
            key=run.key,
            ttl=run.ttl,
            metadata=run.metadata.raw if run.metadata is not None else None,
            spec=spec,
        )
        return Response(_lease_answer(caller, _after_run_wait(caller.account_id, outcome)))


def _after_run_wait(account_id: int, outcome: services.LeaseOutcome) -> services.LeaseOutcome:
    """The key form's answer once the key's run finished (``completed``, ``failed``, ``cancelled``: what the key
    holds now, still with this call's ``charged``, and the holder's ``lease_id`` if this call acquired), or as it
    was (``acquired``, ``polling``, refreshed) when the wait ended first (docs/runs.md §"Waiting for a run")."""
    lease = outcome.lease
    if lease is None or outcome.status not in ("acquired", "polling"):
        return outcome
    fresh = waiting.wait_for_run(account_id, outcome.key, lease, run_known=outcome.status == "acquired")
    if fresh is None or fresh.version != lease.version:
        return outcome  # deleted, or acquired again by another call meanwhile: this call's answer stands
    same_holder = fresh.lease_id == lease.lease_id
    status = outcome.status if fresh.status == LeaseStatus.IN_PROGRESS else fresh.status
    return services.LeaseOutcome(
        lease=fresh,
        status=status,
        key=outcome.key,
        holder=outcome.holder and same_holder,
        charged=outcome.charged,
        usage=outcome.usage,
    )


# --- run events and timelines ---------------------------------------------------------------------------------

MAX_EVENT_DATA_BYTES = 16 * 1024
MAX_EVENT_EXTRA_BYTES = 8 * 1024
MAX_TS = 253402300799  # 9999-12-31T23:59:59Z
LIMITS = events.FIELD_LIMITS  # the lengths the timeline keeps


class EventInput(Body):
    """One timeline event; unknown top-level keys are kept with it."""

    strict = False
    schema_description = (
        "Not strict: unknown top-level keys are kept with the event (names of at most 64 characters, 8 KB in all)."
    )
    openapi_extra = {"additionalProperties": {}}
    run_id = RunId(description="The timeline the event belongs to (non-blank).")
    type = Key(LIMITS["type"], description="e.g. note, sdk_debug, tool_call (non-blank).")
    status = Text(LIMITS["status"])
    step = Text(LIMITS["step"])
    # Identifiers the timeline shows: no control or bidirectional formatting character.
    tool = Text(LIMITS["tool"], rules=[identifier_problem], pattern=UNSAFE_FREE_PATTERN)
    req_id = Text(LIMITS["req_id"])
    lease_id = Text(LIMITS["lease_id"])
    agent_id = Text(LIMITS["agent_id"], rules=[identifier_problem], pattern=UNSAFE_FREE_PATTERN)
    message = Text(LIMITS["message"])
    ts = Integer(0, MAX_TS, description="Unix seconds; default now.")
    duration_ms = Integer(0, MAX_SAFE_INTEGER)
    data = JsonObject(MAX_EVENT_DATA_BYTES, canonical=True, description="A JSON object, at most 16 KB.")

    def clean(self, check: BodyCheck, prefix: str) -> None:
        if not self.extra:
            return
        if any(len(name) > 64 for name in self.extra):
            check.fail("non_field_errors", "Extra keys are at most 64 characters long.", "string_too_long")
        size = len(json.dumps(self.extra, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_EVENT_EXTRA_BYTES:
            check.fail(
                "non_field_errors",
                f"Extra keys: at most {MAX_EVENT_EXTRA_BYTES} bytes of JSON (got {size}).",
                "too_long",
            )


EVENT_FIELDS = set(EventInput.fields)


class EventCreatedOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    event_id = serializers.IntegerField()
    run_id = serializers.CharField()


def post_event(request: Request) -> Response:
    """``POST /v1/events``: one timeline event; unknown top-level keys are kept
    (docs/api.md §"Run events and timelines")."""
    event = EventInput.parse(body(request))
    fields = {name: value for name, value in event.changes().items() if value is not None}
    record = events.record_client_event(principal(request).account_id, fields, event.extra)
    return Response({"ok": True, "event_id": record.pk, "run_id": record.run_id})


class TimelineOutput(serializers.Serializer):
    run_id = serializers.CharField()
    total = serializers.IntegerField(help_text="All events of the run (0 for an unknown run).")
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    events = serializers.ListField(child=serializers.DictField(), help_text="Chronological.")


RUN_ID = RunId(description="Not blank, no control or bidirectional formatting character.")
RUN_ID_PARAM = OpenApiParameter("run_id", RUN_ID.openapi(), OpenApiParameter.PATH, description=RUN_ID.description or "")


class RunTimelineApi(APIView):
    @extend_schema(
        operation_id="run_timeline",
        parameters=[RUN_ID_PARAM, *page_parameters(default=200, maximum=2000)],
        responses={200: TimelineOutput, **errors(404)},  # an empty run id: no route takes /v1/runs/
        summary="A run's timeline, chronological ({run_id, total, events}); an unknown run has total 0",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run_id = run_id.strip()
        if not RUN_ID.valid(run_id):
            raise PathValidationError(
                {"run_id": [identifier_problem(run_id) or f"A run id of 1–{RunId.MAX_LENGTH} characters."]}
            )
        limit, offset = page_params(request, default=200, maximum=2000)
        rows, total = selectors.run_timeline(principal(request).account_id, run_id, limit=limit, offset=offset)
        return Response(
            {
                "run_id": run_id,
                "total": total,
                "limit": limit,
                "offset": offset,
                "events": [events.as_json(e) for e in rows],
            }
        )
