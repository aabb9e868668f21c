"""Governance API: the governed call (tool form of /v1/ai/run), policies, kill switch, agent logs and metrics
(docs/architecture.md §4, §7; docs/api.md §"Governance")."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import entitlements, ratelimit
from governance import explain, policies, selectors, services, tools
from governance.choices import Outcome
from governance.models import Agent, Tool
from idempotency import api as idempotency_api
from onceonly_site.api import (
    ApiProblem,
    BodyCheck,
    PathValidationError,
    QueryValidationError,
    StrictSerializer,
    body,
    page_params,
)
from onceonly_site.identifiers import identifier_problem, tool_name_problem
from onceonly_site.openapi import (
    DAY_PATTERN,
    IDENTIFIER_PATTERN,
    POLICY_TOOL_PATTERN,
    REGISTERED_NAME_PATTERN,
    SCOPE_PATTERN,
    TOOL_NAME_RULES,
    UNSAFE_CHAR_PATTERN,
    URL_PATTERN,
    errors,
    identifier_field,
    page_parameters,
    pattern,
    text_field,
    tool_name_field,
)
from onceonly_site.params import MAX_USD, json_number

MAX_AGENT_ID = 200
MAX_ARGS_BYTES = 64 * 1024


RESERVED_AGENT = (
    f"{services.OPERATOR_AGENT!r} is reserved: the dashboard's test calls of registered tools are decided under it. "
    "Use another agent id."
)


def _agent_id(raw: str, *, write: bool = False) -> str:
    """Any id (`:` `.` `-` `_`, percent-decoded by the router) except blank, > 200 chars, or control and bidi
    formatting characters (onceonly_site/identifiers.py; the middleware refuses them in every path already); and, to
    change an agent (``write``), not the dashboard's test-call agent (readable, never writable through the API)."""
    if not raw.strip() or len(raw) > MAX_AGENT_ID or identifier_problem(raw):
        raise PathValidationError(
            {"agent_id": [serializers.ErrorDetail(
                identifier_problem(raw) or f"An agent id is 1–{MAX_AGENT_ID} printable characters.",
                code="string_pattern_mismatch")]}
        )  # fmt: skip
    if write and raw == services.OPERATOR_AGENT:
        raise PathValidationError({"agent_id": [serializers.ErrorDetail(RESERVED_AGENT, code="value_error")]})
    return raw


def _actor(request: Request) -> str:
    return f"api key {request.auth.key_preview}"


# --- the governed call ------------------------------------------------------------------------------------------


@extend_schema_field({
    "type": "object", "nullable": True, "additionalProperties": {},
    "description": "The tool's arguments, at most 64 KB, integers within ±(2^53−1). Never stored. A string `run_id` "
    "names the run's timeline: no control or bidirectional formatting character.",
    "properties": {"run_id": {"not": {"type": "string", "pattern": UNSAFE_CHAR_PATTERN}}},
})  # fmt: skip
class ArgsField(serializers.DictField):
    pass


class GovernedCallInput(StrictSerializer):
    agent_id = identifier_field(MAX_AGENT_ID)
    tool = tool_name_field()
    args = ArgsField(required=False, allow_null=True)
    spend_usd = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=MAX_USD)


class GovernedCallOutput(serializers.Serializer):
    ok = serializers.BooleanField()
    allowed = serializers.BooleanField()
    decision = serializers.ChoiceField(choices=Outcome.values)
    policy_reason = serializers.CharField()
    risk_level = serializers.ChoiceField(choices=["low", "medium", "high"])
    result = serializers.DictField(allow_null=True)
    decision_id = serializers.IntegerField()
    policy_version = serializers.IntegerField(allow_null=True)
    remaining = serializers.DictField(help_text="spend_usd_today, actions_this_hour, calls_today after this call.")
    explain = serializers.DictField(
        allow_null=True,
        help_text="What the rule saw when it decided: policy_version always, then the reason's numbers (limit, count "
        'before the call, spent, cost, pattern, left…; docs/api.md §"Explained decisions").',
    )
    explanation = serializers.CharField(help_text="The decision in one sentence, with its numbers.")


class AiRunApi(APIView):
    """`/v1/ai/run`: with `agent_id` + `tool` the governed call; with `key` the keyed run (Keyed runs issue)."""

    rate_limit_in_script = True  # the governed call takes its token in governed_call.lua; the key form calls take()

    @extend_schema(
        operation_id="ai_run",
        request=PolymorphicProxySerializer(
            component_name="AiRunInput",
            serializers=[GovernedCallInput, idempotency_api.KeyedRunInput],
            resource_type_field_name=None,
        ),
        responses={
            200: PolymorphicProxySerializer(
                component_name="AiRunOutput",
                serializers=[GovernedCallOutput, idempotency_api.LeaseRecordOutput],
                resource_type_field_name=None,
            ),
            **errors(402, 404),  # 402: the month's ai quota; 404: an unregistered tool in strict mode
        },
        summary="Governed tool call (agent_id + tool), or keyed run executed once by a worker (key)",
        description="With `agent_id` and `tool`: the governed call — decided before the tool runs, answered with "
        "`allowed` and `decision`. With `key`: the keyed run — the `/v1/ai/lease` answer (never `allowed` or "
        "`decision`); on `acquired` a worker runs `metadata.actions` and `metadata.task` and completes or fails "
        "the key (`/v1/ai/status`, `/v1/ai/result`, the run's timeline at `/v1/runs/{run_id}`).",
    )
    def post(self, request: Request) -> Response:
        data = body(request)
        if isinstance(data, dict) and "key" in data:
            mixed = sorted({"agent_id", "tool", "args", "spend_usd"} & set(data))
            if mixed:
                check = BodyCheck(data, {"key", "ttl", "metadata"})  # reports the mixed fields as unknown
                check.fail("key", f"The key form of /v1/ai/run cannot be combined with {', '.join(mixed)}.",
                           "value_error")  # fmt: skip
                check.done()
            ratelimit.take(request.auth)
            return idempotency_api.keyed_run(request, data)
        check = BodyCheck(data, {"agent_id", "tool", "args", "spend_usd"})
        agent_id = check.identifier("agent_id", max_length=MAX_AGENT_ID)
        if agent_id == services.OPERATOR_AGENT:
            check.fail("agent_id", RESERVED_AGENT, "value_error")
        tool = check.key("tool", max_length=200)
        if tool and (problem := tool_name_problem(tool)):  # whitespace, invisible characters, mixed scripts
            check.fail("tool", problem, "string_pattern_mismatch")
        args = check.json_object("args", MAX_ARGS_BYTES, canonical=True) or {}
        run_id = args.get("run_id")
        if isinstance(run_id, str) and (problem := identifier_problem(run_id)):
            check.fail("args.run_id", problem, "string_pattern_mismatch")
        spend = check.data.get("spend_usd")
        if spend is not None and json_number(spend, 0, policies.MAX_USD) is None:
            check.fail("spend_usd", f"Must be a number from 0 to {policies.MAX_USD:,}.", "float_type")
        check.done()
        entitlements.require(request.auth.plan, "governance")
        try:
            outcome = services.governed_call(
                account_id=request.auth.account_id,
                plan=request.auth.plan,
                agent_id=agent_id,
                tool=tool,
                args=args,
                spend_usd=Decimal(str(spend)) if spend is not None else None,
                rate_limit=ratelimit.script_args(request.auth),
                api_key_id=request.auth.key_id,
            )
        except services.ToolNotFound:
            raise ApiProblem(
                404,
                "tool_not_found",
                f"No registered tool {tool!r}, and this account is in strict mode (unregistered tools are refused).",
                tool=tool,
            ) from None
        d = outcome.decision
        return Response({
            "ok": d.allowed, "allowed": d.allowed, "decision": d.outcome, "policy_reason": d.policy_reason,
            "risk_level": d.risk_level, "result": d.result, "decision_id": d.pk, "policy_version": d.policy_version,
            "remaining": outcome.remaining, "explain": d.explain, "explanation": explain.explain_text(d),
        })  # fmt: skip


# --- policies ---------------------------------------------------------------------------------------------------


def _policy_body(agent: Agent, warnings: list | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"agent_id": agent.agent_id, "policy": agent.policy or {}, "version": agent.policy_version}
    if warnings is not None:
        data["warnings"] = warnings
    return data


def _clean_policy(request: Request, data: Any, agent_id: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        BodyCheck(data, set())  # raises the "must be a JSON object" 422
    fields = {k: v for k, v in data.items() if k != "agent_id"}  # the SDK sends agent_id in the body too
    changes = policies.clean_fields(fields)
    if changes.get("allowed_tools") is not None:
        entitlements.require(request.auth.plan, "allowed_tools")
    return changes


def _policy_tool() -> serializers.CharField:
    """A tool name or glob of a policy (trimmed): governance.policies._tool_list."""
    return serializers.CharField(max_length=policies.MAX_TOOL_NAME, trim_whitespace=False,
                                 validators=[pattern(POLICY_TOOL_PATTERN)], help_text=TOOL_NAME_RULES)  # fmt: skip


@extend_schema_field({
    "type": "object", "nullable": True, "maxProperties": policies.MAX_LIST,
    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": policies.MAX_NUMBER},
    "description": "{tool: calls per day}. Each key a tool name as in allowed_tools, and no two naming the same tool "
    "(matching ignores case and Unicode compatibility forms).",
})  # fmt: skip
class CallCapsField(serializers.DictField):
    pass


@extend_schema_field({"description": "Ignored (the SDK sends the path's agent id in the body too)."})
class IgnoredField(serializers.Field):
    pass


AMOUNT_RULE = "Kept to 6 decimals: a non-zero amount that rounds to 0 (1e-9) is refused."


class PricingRuleInput(StrictSerializer):
    tool = _policy_tool()
    price_usd = serializers.FloatField(min_value=0, max_value=MAX_USD, help_text=AMOUNT_RULE)


class PolicyInput(StrictSerializer):
    agent_id = IgnoredField(required=False)
    allowed_tools = serializers.ListField(
        child=_policy_tool(),
        required=False,
        allow_null=True,
        max_length=policies.MAX_LIST,
        help_text="Glob patterns; set (even empty) = only these. Agency plan.",
    )
    blocked_tools = serializers.ListField(
        child=_policy_tool(), required=False, allow_null=True, max_length=policies.MAX_LIST
    )
    max_actions_per_hour = serializers.IntegerField(
        min_value=0, max_value=policies.MAX_NUMBER, required=False, allow_null=True
    )
    max_spend_usd_per_day = serializers.FloatField(min_value=0, max_value=MAX_USD, required=False, allow_null=True,
                                                   help_text=AMOUNT_RULE)  # fmt: skip
    max_calls_per_tool = CallCapsField(required=False, allow_null=True)
    pricing_rules = serializers.ListField(
        child=PricingRuleInput(), required=False, allow_null=True, max_length=policies.MAX_LIST
    )


class TemplateInput(StrictSerializer):
    agent_id = IgnoredField(required=False)
    template = serializers.ChoiceField(choices=list(policies.TEMPLATES))
    overrides = PolicyInput(required=False, allow_null=True, help_text="Policy fields applied over the template.")


class ReasonInput(StrictSerializer):
    agent_id = IgnoredField(required=False)
    reason = text_field(500, non_blank=True, help_text="Not blank when sent; stored with the change.")


AGENT_ID_PARAM = OpenApiParameter(
    "agent_id", {"type": "string", "maxLength": MAX_AGENT_ID, "pattern": IDENTIFIER_PATTERN}, OpenApiParameter.PATH,
    description="Not blank, no control or bidirectional formatting character (percent-encode `/`).",
)  # fmt: skip


LogItem = inline_serializer("AgentLogItem", {
    "ts": serializers.IntegerField(), "agent_id": serializers.CharField(), "tool": serializers.CharField(),
    "allowed": serializers.BooleanField(), "decision": serializers.ChoiceField(choices=Outcome.values),
    "policy_reason": serializers.CharField(), "reason": serializers.CharField(), "args_hash": serializers.CharField(),
    "risk_level": serializers.CharField(), "spend_usd": serializers.FloatField(),
    "declared_spend_usd": serializers.FloatField(allow_null=True),
    "operator_price_usd": serializers.FloatField(allow_null=True), "run_id": serializers.CharField(allow_null=True),
    "decision_id": serializers.IntegerField(), "policy_version": serializers.IntegerField(allow_null=True),
    "latency_ms": serializers.IntegerField(),
    "explain": serializers.DictField(allow_null=True, help_text="What the rule saw (null for decisions recorded "
                                     "before it was kept)."),
    "explanation": serializers.CharField(help_text="The decision in one sentence, with its numbers."),
})  # fmt: skip
LogsOutput = inline_serializer(
    "AgentLogsOutput",
    {
        "items": serializers.ListField(child=LogItem),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
    },
)
AgentMetricsOutput = inline_serializer("AgentMetricsOutput", {
    "agent_id": serializers.CharField(), "period": serializers.CharField(),
    "total_actions": serializers.IntegerField(), "blocked_actions": serializers.IntegerField(),
    "total_spend_usd": serializers.FloatField(), "top_tools": serializers.ListField(child=serializers.DictField()),
})  # fmt: skip
PolicyOutput = inline_serializer("PolicyOutput", {
    "agent_id": serializers.CharField(), "policy": serializers.DictField(),
    "version": serializers.IntegerField(allow_null=True), "warnings": serializers.ListField(required=False),
})  # fmt: skip


class PolicyListApi(APIView):
    @extend_schema(
        operation_id="policies_list",
        responses=inline_serializer(
            "PolicyList",
            {
                "items": PolicyOutput.__class__(many=True),
                "total": serializers.IntegerField(),
                "limit": serializers.IntegerField(),
                "offset": serializers.IntegerField(),
            },
        ),
        parameters=page_parameters(default=100),
        summary="Agents with a policy, by agent id ({items, total, limit, offset})",
    )
    def get(self, request: Request) -> Response:
        entitlements.require(request.auth.plan, "governance")
        limit, offset = page_params(request, default=100)
        agents = selectors.governed_agents(request.auth.account_id)
        return Response(
            {
                "items": [_policy_body(a) for a in agents[offset : offset + limit]],
                "total": agents.count(),
                "limit": limit,
                "offset": offset,
            }
        )


class PolicyApi(APIView):
    @extend_schema(operation_id="policy_get", parameters=[AGENT_ID_PARAM], request=None,
                   responses={200: PolicyOutput, **errors(404)}, summary="An agent's current policy")  # fmt: skip
    def get(self, request: Request, agent_id: str) -> Response:
        entitlements.require(request.auth.plan, "governance")
        agent = selectors.agent_for_account(request.auth.account_id, _agent_id(agent_id))
        if agent is None or agent.policy_version is None:
            raise ApiProblem(404, "policy_not_found", f"Agent {agent_id!r} has no policy (it is ungoverned).")
        return Response(_policy_body(agent))

    @extend_schema(
        operation_id="policy_upsert",
        parameters=[AGENT_ID_PARAM],
        request=PolicyInput,
        responses={200: PolicyOutput, **errors(404)},  # an empty agent id: no route takes /v1/policies/
        summary="Merge upsert: fields sent replace, explicit null clears; a new version per change",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        entitlements.require(request.auth.plan, "governance")
        agent_id = _agent_id(agent_id, write=True)
        changes = _clean_policy(request, body(request), agent_id)
        result = services.policy_upsert(
            account_id=request.auth.account_id, agent_id=agent_id, changes=changes, actor=_actor(request)
        )
        return Response(_policy_body(result.agent, result.warnings))


class PolicyTemplateApi(APIView):
    @extend_schema(
        operation_id="policy_from_template",
        parameters=[AGENT_ID_PARAM],
        request=TemplateInput,
        responses=PolicyOutput,
        summary=f"Apply a template ({', '.join(policies.TEMPLATES)}) with overrides",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        entitlements.require(request.auth.plan, "governance")
        agent_id = _agent_id(agent_id, write=True)
        check = BodyCheck(body(request), {"agent_id", "template", "overrides"})
        template = check.text("template", required=True, max_length=64)
        overrides = check.data.get("overrides")
        if overrides is None:  # absent or null; false, 0, "" and [] are not "no overrides"
            overrides = {}
        if template is not None and template not in policies.TEMPLATES:
            check.fail("template", f"Unknown template {template!r}; valid: {', '.join(policies.TEMPLATES)}.", "enum")
        if not isinstance(overrides, dict):
            check.fail("overrides", "Must be a JSON object of policy fields.", "dict_type")
            overrides = {}
        check.done()
        changes = _clean_policy(request, overrides, agent_id)
        if policies.TEMPLATES[template].get("allowed_tools") is not None and "allowed_tools" not in changes:
            entitlements.require(request.auth.plan, "allowed_tools")
        result = services.policy_from_template(
            account_id=request.auth.account_id,
            agent_id=agent_id,
            template=template,
            overrides=changes,
            actor=_actor(request),
        )
        return Response(_policy_body(result.agent, result.warnings))


# --- agents: kill switch, logs, metrics ---------------------------------------------------------------------------


def _agent_status(agent: Agent) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "is_enabled": agent.is_enabled,
        "disabled_reason": agent.disabled_reason or None,
        "disabled_at": agent.disabled_at.isoformat() if agent.disabled_at else None,
    }


class _KillSwitchApi(APIView):
    enabled: bool

    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        check = BodyCheck(body(request), {"reason", "agent_id"})
        reason = check.text("reason", required=False, max_length=500, non_blank=True) or ""
        check.done()
        if not self.enabled:  # re-enabling stays possible after a downgrade: no agent is left stuck
            entitlements.require(request.auth.plan, "kill_switch")
        agent = services.agent_set_enabled(
            account_id=request.auth.account_id,
            agent_id=agent_id,
            enabled=self.enabled,
            reason=reason,
            actor=_actor(request),
        )
        return Response(_agent_status(agent))


AgentStatusOutput = inline_serializer("AgentStatusOutput", {
    "agent_id": serializers.CharField(), "is_enabled": serializers.BooleanField(),
    "disabled_reason": serializers.CharField(allow_null=True),
    "disabled_at": serializers.DateTimeField(allow_null=True),
})  # fmt: skip


class AgentDisableApi(_KillSwitchApi):
    enabled = False

    @extend_schema(
        operation_id="agent_disable",
        parameters=[AGENT_ID_PARAM],
        request=ReasonInput,
        responses={200: AgentStatusOutput, **errors(404)},  # an empty agent id: no route takes it
        summary="Kill switch: block the agent's governed calls from the next call on",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        return super().post(request, agent_id)


class AgentEnableApi(_KillSwitchApi):
    enabled = True

    @extend_schema(
        operation_id="agent_enable",
        parameters=[AGENT_ID_PARAM],
        request=ReasonInput,
        responses={200: AgentStatusOutput, **errors(404)},
        summary="Release the kill switch",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        return super().post(request, agent_id)


def _amount(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class AgentLogsApi(APIView):
    @extend_schema(
        operation_id="agent_logs",
        responses={200: LogsOutput, **errors(404)},
        summary="An agent's decisions, newest first ({items, limit, offset})",
        parameters=[AGENT_ID_PARAM, *page_parameters(default=100)],
    )
    def get(self, request: Request, agent_id: str) -> Response:
        entitlements.require(request.auth.plan, "governance")
        agent_id = _agent_id(agent_id)
        limit, offset = page_params(request, default=100)
        rows = selectors.agent_logs(request.auth.account_id, agent_id, limit=limit, offset=offset)
        return Response({"items": [{
            "ts": int(d.ts.timestamp()), "agent_id": agent_id, "tool": d.tool, "allowed": d.allowed,
            "decision": d.outcome, "policy_reason": d.policy_reason, "reason": d.policy_reason,
            "args_hash": d.args_hash, "risk_level": d.risk_level, "spend_usd": float(d.spend_usd),
            "declared_spend_usd": _amount(d.declared_spend_usd), "operator_price_usd": _amount(d.operator_price_usd),
            "run_id": d.run_id or None, "decision_id": d.pk, "policy_version": d.policy_version,
            "latency_ms": d.latency_ms, "explain": d.explain, "explanation": explain.explain_text(d),
        } for d in rows], "limit": limit, "offset": offset})  # fmt: skip


class AgentMetricsApi(APIView):
    @extend_schema(
        operation_id="agent_metrics",
        responses={200: AgentMetricsOutput, **errors(404)},
        summary="Totals over the last hour, 24 hours or 7 days",
        parameters=[AGENT_ID_PARAM, OpenApiParameter("period", str, enum=list(selectors.PERIODS), default="day")],
    )
    def get(self, request: Request, agent_id: str) -> Response:
        entitlements.require(request.auth.plan, "governance")
        agent_id = _agent_id(agent_id)
        period = request.query_params.get("period", "day")
        if period not in selectors.PERIODS:
            raise QueryValidationError({"period": [serializers.ErrorDetail(
                f"One of: {', '.join(selectors.PERIODS)}.", code="enum")]})  # fmt: skip
        return Response(selectors.agent_metrics(request.auth.account_id, agent_id, period, timezone.now()))


# --- tools registry ----------------------------------------------------------------------------------------------


def _tool_body(tool, warnings: list[str] | None = None) -> dict[str, Any]:
    data = {
        "name": tool.name, "scope_id": tool.scope_id, "url": tool.url, "timeout_ms": tool.timeout_ms,
        "max_retries": tool.max_retries, "enabled": tool.enabled, "description": tool.description,
        "risk_level": tool.risk_level or None,
        "price_usd": float(tool.price_usd) if tool.price_usd is not None else None,
        "has_secret": bool(tool.secret_encrypted), "secret_mask": tool.secret_mask or None,
        "last_status": tool.last_status, "last_latency_ms": tool.last_latency_ms,
        "created_at": tool.created_at.isoformat(), "updated_at": tool.updated_at.isoformat(),
    }  # fmt: skip
    if warnings is not None:
        data["warnings"] = warnings
    return data


def _scope(request: Request) -> str:
    scope_id = request.query_params.get("scope_id", "global")
    if not tools.valid_scope(scope_id):
        raise QueryValidationError({"scope_id": [serializers.ErrorDetail(
            'Either "global" or "agent:<agent id>".', code="string_pattern_mismatch")]})  # fmt: skip
    return scope_id


def _tool_or_404(request: Request, name: str) -> Tool:
    tool = selectors.tool_for_account(request.auth.account_id, _scope(request), name)  # `SEND_EMAIL` too
    if tool is None:
        raise ApiProblem(404, "tool_not_found", f"No tool {name!r} in scope {_scope(request)!r}.")
    return tool


ToolOutput = inline_serializer("ToolOutput", {
    "name": serializers.CharField(), "scope_id": serializers.CharField(), "url": serializers.CharField(),
    "timeout_ms": serializers.IntegerField(), "max_retries": serializers.IntegerField(),
    "enabled": serializers.BooleanField(), "description": serializers.CharField(),
    "has_secret": serializers.BooleanField(), "secret_mask": serializers.CharField(allow_null=True),
})  # fmt: skip
SCOPE_SCHEMA = {"type": "string", "maxLength": 206, "pattern": SCOPE_PATTERN, "default": "global"}
SCOPE_PARAM = OpenApiParameter("scope_id", SCOPE_SCHEMA, description='"global" (default) or "agent:<agent id>"')
TOOL_NAME_PARAM = OpenApiParameter(
    "name", {"type": "string", "maxLength": 200, "pattern": REGISTERED_NAME_PATTERN}, OpenApiParameter.PATH
)


class ToolAuthInput(StrictSerializer):
    type = serializers.ChoiceField(choices=["hmac_sha256"], required=False)
    secret = serializers.CharField(min_length=8, max_length=256, trim_whitespace=False)


class ToolInput(StrictSerializer):
    name = serializers.RegexField(REGISTERED_NAME_PATTERN, max_length=200)
    url = serializers.CharField(
        max_length=2000,
        validators=[pattern(URL_PATTERN)],
        help_text="http(s), no credentials. It must not point at a private, loopback or link-local address (by "
        "name or literal) unless the operator allows them, and http:// needs ONCEONLY_ALLOW_HTTP_TOOL_URLS or a "
        "private address (docs/security.md).",
    )
    scope_id = serializers.CharField(required=False, max_length=206, validators=[pattern(SCOPE_PATTERN)],
                                     help_text='"global" (default) or "agent:<agent id>"')  # fmt: skip
    auth = ToolAuthInput(required=False, allow_null=True)
    timeout_ms = serializers.IntegerField(required=False, min_value=250, max_value=120000)
    max_retries = serializers.IntegerField(required=False, min_value=0, max_value=10)
    enabled = serializers.BooleanField(required=False)
    description = serializers.CharField(required=False, max_length=512, allow_blank=True, trim_whitespace=False)
    risk_level = serializers.ChoiceField(required=False, allow_null=True, choices=["low", "medium", "high"])
    price_usd = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=MAX_USD)


class ToolsApi(APIView):
    @extend_schema(
        operation_id="tools_list",
        parameters=[SCOPE_PARAM],
        responses=ToolOutput.__class__(many=True),
        summary="Registered tools of a scope (a bare array)",
    )
    def get(self, request: Request) -> Response:
        entitlements.require(request.auth.plan, "tools")
        rows = Tool.objects.filter(account_id=request.auth.account_id, scope_id=_scope(request)).order_by("name")
        return Response([_tool_body(t) for t in rows[:1000]])

    @extend_schema(
        operation_id="tools_upsert",
        request=ToolInput,
        responses={200: ToolOutput, **errors(402)},
        summary="Register or update a tool (upsert on scope + name); the secret is never returned",
    )
    def post(self, request: Request) -> Response:
        entitlements.require(request.auth.plan, "tools")
        fields, warnings = tools.clean(body(request))
        try:
            tool, _ = tools.tool_upsert(
                account_id=request.auth.account_id, plan=request.auth.plan, fields=fields, actor=_actor(request)
            )
        except tools.PlanLimitReached as reached:
            raise ApiProblem(
                402,
                "plan_limit",
                f"{reached.plan} plan limit: at most {reached.limit} tools.",
                limit=reached.limit,
                plan=reached.plan,
            ) from None
        return Response(_tool_body(tool, warnings))


class ToolApi(APIView):
    @extend_schema(operation_id="tool_get", parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
                   responses={200: ToolOutput, **errors(404)}, summary="One tool")  # fmt: skip
    def get(self, request: Request, name: str) -> Response:
        entitlements.require(request.auth.plan, "tools")
        return Response(_tool_body(_tool_or_404(request, name)))

    @extend_schema(operation_id="tool_delete", parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
                   responses={200: inline_serializer("ToolDeleted", {"ok": serializers.BooleanField(),
                                                                     "deleted": serializers.CharField()}),
                              **errors(404)},
                   summary="Delete a tool")  # fmt: skip
    def delete(self, request: Request, name: str) -> Response:
        entitlements.require(request.auth.plan, "tools")
        tool = _tool_or_404(request, name)
        tools.tool_delete(tool=tool, actor=_actor(request))
        return Response({"ok": True, "deleted": tool.name})


class ToolToggleInput(StrictSerializer):
    enabled = serializers.BooleanField()


class ToolToggleApi(APIView):
    @extend_schema(
        operation_id="tool_toggle",
        parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
        responses={200: ToolOutput, **errors(404)},
        request=ToolToggleInput,
        summary="Enable or disable a tool (a disabled tool blocks calls with tool_disabled)",
    )
    def post(self, request: Request, name: str) -> Response:
        entitlements.require(request.auth.plan, "tools")
        check = BodyCheck(body(request), {"enabled"})
        enabled = check.data.get("enabled")
        if not isinstance(enabled, bool):
            check.fail("enabled", "Required: true or false.", "bool_type")
        check.done()
        tool = tools.tool_toggle(tool=_tool_or_404(request, name), enabled=enabled, actor=_actor(request))
        return Response(_tool_body(tool))


# --- the account's events feed and daily metrics (they read idempotency and governance data) --------------------


class FeedOutput(serializers.Serializer):
    data = serializers.ListField(
        child=serializers.DictField(),
        help_text="Newest first. `kind`: run_event, decision or audit (kill switch, policy and tool changes).",
    )
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class EventsApi(APIView):
    @extend_schema(
        operation_id="events_list",
        parameters=page_parameters(default=50, maximum=200, max_offset=selectors.FEED_MAX_WINDOW - 200),
        responses=FeedOutput,
        summary="The account's recent events: run events, decisions, kill-switch and policy changes",
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        limit, offset = page_params(request, default=50, maximum=200, max_offset=selectors.FEED_MAX_WINDOW - 200)
        data, total = selectors.account_feed(request.auth.account_id, limit=limit, offset=offset)
        return Response({"data": data, "total": total, "limit": limit, "offset": offset})

    @extend_schema(
        operation_id="events_post",
        request=idempotency_api.EventInput,
        responses=idempotency_api.EventCreatedOutput,
        summary="Add an event to a run's timeline (unknown top-level keys are kept)",
    )
    def post(self, request: Request) -> Response:
        return idempotency_api.post_event(request)


MAX_METRICS_DAYS = 366
DAY_SCHEMA = {"type": "string", "format": "date", "pattern": DAY_PATTERN}


class MetricsOutput(serializers.Serializer):
    from_day = serializers.DateField()
    to_day = serializers.DateField()
    days = serializers.ListField(
        child=serializers.DictField(),
        help_text="Per UTC day: check_locks {locked, duplicate}, leases {acquired, polling, completed, failed}, "
        "decisions {executed, allowed, blocked, dedup, failed, total}, ai_usage, spend_usd.",
    )
    totals = serializers.DictField()


def _day(check: BodyCheck, name: str) -> date | None:
    raw = check.data.get(name)
    if raw is None or raw == "":
        check.fail(name, "Required: a day as YYYY-MM-DD (UTC).", "missing")
        return None
    try:
        # fullmatch first: Python 3.11's fromisoformat also reads ISO week dates ("2026-W01-1").
        return date.fromisoformat(raw) if re.fullmatch(DAY_PATTERN, raw) else date.fromisoformat("invalid")
    except ValueError:
        check.fail(name, f"Not a day: {raw[:40]!r}; expected YYYY-MM-DD.", "date_from_datetime_parsing")
        return None


class MetricsApi(APIView):
    @extend_schema(
        operation_id="metrics",
        parameters=[OpenApiParameter("from_day", DAY_SCHEMA, required=True, description="YYYY-MM-DD (UTC), inclusive"),
                    OpenApiParameter("to_day", DAY_SCHEMA, required=True,
                                     description=f"YYYY-MM-DD (UTC), inclusive; not before from_day, at most "
                                     f"{MAX_METRICS_DAYS} days in all")],
        responses=MetricsOutput,
        summary=f"Daily counts (check-locks, leases, decisions by outcome) and spend; at most {MAX_METRICS_DAYS} days",
    )  # fmt: skip
    def get(self, request: Request) -> Response:
        check = BodyCheck(dict(request.query_params.items()), set(request.query_params), query=True)
        first, last = _day(check, "from_day"), _day(check, "to_day")
        if first and last and last < first:
            check.fail("to_day", "to_day is before from_day.", "value_error")
        elif first and last and (last - first).days + 1 > MAX_METRICS_DAYS:
            check.fail("to_day", f"At most {MAX_METRICS_DAYS} days per request.", "value_error")
        check.done()
        days = selectors.daily_metrics(request.auth.account_id, first, last)
        totals: dict[str, Any] = {}
        for day in days:
            for name, value in day.items():
                if isinstance(value, dict):
                    group = totals.setdefault(name, {})
                    for sub, n in value.items():
                        group[sub] = group.get(sub, 0) + n
                elif name != "day":
                    totals[name] = round(totals.get(name, 0) + value, 6)
        return Response({"from_day": first.isoformat(), "to_day": last.isoformat(), "days": days, "totals": totals})
