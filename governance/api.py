"""Governance API: the governed call (tool form of /v1/ai/run), policies, kill switch, agent logs and metrics
(docs/architecture.md §4, §7; docs/api.md §"Governance")."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import entitlements, ratelimit
from billing.auth import ApiPrincipal, principal
from billing.entitlements import FeatureGatedView
from billing.lean_api import LeanPostApi
from governance import approval_api_selectors, approvals, detectors, explain, policies, selectors, services, tools
from governance.choices import Outcome, Reason
from governance.models import Agent, Tool
from idempotency import api as idempotency_api
from onceonly_site import clock
from onceonly_site.api import ApiProblem, BodyCheck, PathValidationError, QueryValidationError, body, page_params
from onceonly_site.bodies import AgentId, Body, Boolean, Choice, Day, Ignored, JsonObject, Text, ToolName, Usd
from onceonly_site.identifiers import identifier_problem
from onceonly_site.openapi import UNSAFE_CHAR_PATTERN, errors, page_parameters

MAX_AGENT_ID = AgentId.MAX_LENGTH
MAX_ARGS_BYTES = 64 * 1024


RESERVED_AGENT = (
    f"{services.OPERATOR_AGENT!r} is reserved: the dashboard's test calls of registered tools are decided under it. "
    "Use another agent id."
)


AGENT_ID = AgentId()


def _agent_id(raw: str, *, write: bool = False) -> str:
    """Any id (`:` `.` `-` `_`, percent-decoded by the router) that is an ``AgentId`` (not blank, at most 200
    characters, no control, bidirectional formatting or invisible character; the middleware refuses controls in
    every path already); and, to change an agent (``write``), not the dashboard's test-call agent (readable, never
    writable through the API)."""
    if not AGENT_ID.valid(raw):
        raise PathValidationError(
            {
                "agent_id": [
                    serializers.ErrorDetail(
                        identifier_problem(raw) or f"An agent id is 1–{MAX_AGENT_ID} printable characters.",
                        code="string_pattern_mismatch",
                    )
                ]
            }
        )
    if write and raw == services.OPERATOR_AGENT:
        raise PathValidationError({"agent_id": [serializers.ErrorDetail(RESERVED_AGENT, code="value_error")]})
    return raw


def _actor(request: Request) -> str:
    return f"api key {principal(request).key_preview}"


# --- the governed call ------------------------------------------------------------------------------------------


class ToolArgs(JsonObject):
    """A governed call's ``args``: a JSON object the decision hashes (RFC 8785), never stored; a string ``run_id``
    in it names the run's timeline, an identifier the timeline shows (problems at ``args.run_id``)."""

    def clean(self, check: BodyCheck, loc: str, value: Any) -> dict[str, Any] | None:
        args = super().clean(check, loc, value)
        run_id = (args or {}).get("run_id")
        if isinstance(run_id, str) and (problem := identifier_problem(run_id)):
            check.fail(f"{loc}.run_id", problem, "string_pattern_mismatch")
        return args

    def openapi(self) -> dict[str, Any]:
        return {
            **super().openapi(),
            "properties": {"run_id": {"not": {"type": "string", "pattern": UNSAFE_CHAR_PATTERN}}},
        }


class GovernedCallInput(Body):
    agent_id = AgentId()
    tool = ToolName()
    args = ToolArgs(
        MAX_ARGS_BYTES,
        canonical=True,
        description="The tool's arguments, at most 64 KB, integers within "
        "±(2^53−1). Never stored. A string `run_id` names the run's timeline: no control or bidirectional "
        "formatting character.",
    )
    spend_usd = Usd()

    def clean_agent_id(self, check: BodyCheck, loc: str, agent_id: str) -> str | None:
        if agent_id == services.OPERATOR_AGENT:
            check.fail(loc, RESERVED_AGENT, "value_error")
            return None
        return agent_id


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
    approval_id = serializers.CharField(
        required=False, help_text="approval_required / approval_denied only: the approval (docs/approvals.md)."
    )
    approval_url = serializers.CharField(required=False, help_text="Its dashboard page.")
    expires_at = serializers.DateTimeField(required=False, help_text="When the approval request expires.")


def call_answer(outcome: services.CallOutcome) -> dict[str, Any]:
    """A governed call's answer (``GovernedCallOutput``), as /v1/ai/run sends it and the MCP gateway's results carry
    it (docs/mcp.md)."""
    d = outcome.decision
    waiting: dict[str, Any] = {}
    if d.policy_reason in (Reason.APPROVAL_REQUIRED, Reason.APPROVAL_DENIED) and isinstance(d.result, dict):
        # Also at the top level for clients that read the whole answer (docs/approvals.md).
        waiting = {name: d.result.get(name) for name in ("approval_id", "approval_url", "expires_at")}
    return {
        **waiting,
        "ok": d.allowed,
        "allowed": d.allowed,
        "decision": d.outcome,
        "policy_reason": d.policy_reason,
        "risk_level": d.risk_level,
        "result": d.result,
        "decision_id": d.pk,
        "policy_version": d.policy_version,
        "remaining": outcome.remaining,
        "explain": d.explain,
        "explanation": explain.explain_text(d),
    }


class AiRunApi(LeanPostApi):
    """`/v1/ai/run`: with `agent_id` + `tool` the governed call (on the lean path: billing/lean_api.py); with `key`
    the keyed run, which ``idempotency.api.KeyedRunApi`` answers through DRF's."""

    # The governed call takes its token in governed_call.lua; the key form with ratelimit.take (KeyedRunApi).
    rate_limit_in_script = True

    @extend_schema(
        operation_id="ai_run",
        request=PolymorphicProxySerializer(
            component_name="AiRunInput",
            serializers=[GovernedCallInput.serializer, idempotency_api.KeyedRunInput.serializer],
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
        "`allowed` and `decision`; a call to a registered tool whose dispatch slots are full is refused at once "
        "with 429 `dispatch_busy` and `Retry-After`, nothing reserved. With `key`: the keyed run — the "
        "`/v1/ai/lease` answer (never `allowed` or `decision`); on `acquired` a worker runs `metadata.actions` and "
        "`metadata.task` and completes or fails the key (`/v1/ai/status`, `/v1/ai/result`, the run's timeline at "
        "`/v1/runs/{run_id}`). The answer waits up to ONCEONLY_RUN_WAIT_SECONDS (2 s) for the run: a run that "
        "finishes in time is answered `completed` (or `failed`) with `charged: 1`.",
    )
    def post(self, request: Request) -> Response:
        data = body(request)
        if not self.lean_form(data):
            self._refuse_both_forms(data)
            return idempotency_api.KeyedRunApi().post(request)
        return self.answer_drf(request)

    def lean_form(self, data: Any) -> bool:
        return not (isinstance(data, dict) and "key" in data)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        call = GovernedCallInput.parse(data)
        # Not a permission class: a 422 comes before the plan's 403 here (and the key form needs no governance).
        entitlements.require(caller.plan, "governance")
        agent_id, tool, spend = call.agent_id, call.tool, call.spend_usd
        try:
            outcome = services.governed_call(
                account_id=caller.account_id,
                plan=caller.plan,
                agent_id=agent_id,
                tool=tool,
                args=call.args or {},
                spend_usd=Decimal(str(spend)) if spend is not None else None,
                rate_limit=ratelimit.script_args(caller),
                api_key_id=caller.key_id,
                arrived=clock.arrived(self.request),
            )
        except services.ToolNotFound:
            raise ApiProblem(
                404,
                "tool_not_found",
                f"No registered tool {tool!r}, and this account is in strict mode (unregistered tools are refused).",
                tool=tool,
            ) from None
        return call_answer(outcome), {}

    @staticmethod
    def _refuse_both_forms(data: dict[str, Any]) -> None:
        """A key-form body with a governed call's fields: a 422 naming them (as unknown to the key form) and why."""
        mixed = sorted(set(GovernedCallInput.fields) & set(data))
        if mixed:
            check = BodyCheck(data, set(idempotency_api.KeyedRunInput.fields))  # reports the mixed fields as unknown
            check.fail("key", f"The key form of /v1/ai/run cannot be combined with {', '.join(mixed)}.", "value_error")
            check.done()


# --- policies ---------------------------------------------------------------------------------------------------


def _policy_body(agent: Agent, warnings: list | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"agent_id": agent.agent_id, "policy": agent.policy or {}, "version": agent.policy_version}
    if warnings is not None:
        data["warnings"] = warnings
    return data


def require_gate_kept(request: Request, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    """An agent's key may tighten its approval gate, never loosen it: a change that drops a require_approval entry,
    raises its over_usd or lengthens approval_ttl_seconds needs an admin-scoped key (403 ``admin_key_required``;
    docs/approvals.md §"Who may change the gate")."""
    gate = approvals.loosening(before, after)
    guards = policies.guard_loosening(before, after)
    if (gate or guards) and not approval_api_selectors.is_admin_key(principal(request).key_id):
        what = "approval gate" if not guards else "runaway guards" if not gate else "approval gate and runaway guards"
        raise ApiProblem(
            403,
            "admin_key_required",
            f"This change loosens the agent's {what} ({'; '.join(gate + guards)}): it needs an admin-scoped API key "
            "(an agent's key may tighten them, never loosen them). Nothing was changed.",
        )


def _clean_policy(request: Request, data: Any) -> dict[str, Any]:
    """Policy fields (policies.PolicyInput; the SDK's agent_id in the body is ignored); allowed_tools is a feature."""
    changes = policies.clean_fields(data)
    if changes.get("allowed_tools") is not None:
        entitlements.require(principal(request).plan, "allowed_tools")
    return changes


IGNORED_AGENT_ID = "Ignored (the SDK sends the path's agent id in the body too)."


class TemplateInput(Body):
    agent_id = Ignored(description=IGNORED_AGENT_ID)
    template = Choice(
        policies.TEMPLATES,
        required=True,
        max_length=64,
        unknown=lambda name: f"Unknown template {name!r}; valid: {', '.join(policies.TEMPLATES)}.",
    )
    # Checked as policy fields after the body (their problems are reported at the fields' own names).
    overrides = JsonObject(
        shape=policies.PolicyInput,
        invalid=("Must be a JSON object of policy fields.", "dict_type"),
        description="Policy fields applied over the template.",
    )


class ReasonInput(Body):
    agent_id = Ignored(description=IGNORED_AGENT_ID)
    reason = Text(500, non_blank=True, description="Not blank when sent; stored with the change.")


AGENT_ID_PARAM = OpenApiParameter(
    "agent_id",
    AGENT_ID.openapi(),
    OpenApiParameter.PATH,
    description="Not blank, no control or bidirectional formatting character (percent-encode `/`).",
)


LogItem = inline_serializer(
    "AgentLogItem",
    {
        "ts": serializers.IntegerField(),
        "agent_id": serializers.CharField(),
        "tool": serializers.CharField(),
        "allowed": serializers.BooleanField(),
        "decision": serializers.ChoiceField(choices=Outcome.values),
        "policy_reason": serializers.CharField(),
        "reason": serializers.CharField(),
        "args_hash": serializers.CharField(),
        "risk_level": serializers.CharField(),
        "spend_usd": serializers.FloatField(),
        "declared_spend_usd": serializers.FloatField(allow_null=True),
        "operator_price_usd": serializers.FloatField(allow_null=True),
        "run_id": serializers.CharField(allow_null=True),
        "decision_id": serializers.IntegerField(),
        "policy_version": serializers.IntegerField(allow_null=True),
        "latency_ms": serializers.IntegerField(),
        "explain": serializers.DictField(
            allow_null=True, help_text="What the rule saw (null for decisions recorded before it was kept)."
        ),
        "explanation": serializers.CharField(help_text="The decision in one sentence, with its numbers."),
    },
)
LogsOutput = inline_serializer(
    "AgentLogsOutput",
    {
        "items": serializers.ListField(child=LogItem),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
    },
)
AgentMetricsOutput = inline_serializer(
    "AgentMetricsOutput",
    {
        "agent_id": serializers.CharField(),
        "period": serializers.CharField(),
        "total_actions": serializers.IntegerField(),
        "blocked_actions": serializers.IntegerField(),
        "total_spend_usd": serializers.FloatField(),
        "top_tools": serializers.ListField(child=serializers.DictField()),
    },
)
PolicyOutput = inline_serializer(
    "PolicyOutput",
    {
        "agent_id": serializers.CharField(),
        "policy": serializers.DictField(),
        "version": serializers.IntegerField(allow_null=True),
        "warnings": serializers.ListField(required=False),
    },
)


class PolicyListApi(FeatureGatedView):
    required_feature = "governance"

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
        limit, offset = page_params(request, default=100)
        agents = selectors.governed_agents(principal(request).account_id)
        return Response(
            {
                "items": [_policy_body(a) for a in agents[offset : offset + limit]],
                "total": agents.count(),
                "limit": limit,
                "offset": offset,
            }
        )


class PolicyApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="policy_get",
        parameters=[AGENT_ID_PARAM],
        request=None,
        responses={200: PolicyOutput, **errors(404)},
        summary="An agent's current policy",
    )
    def get(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_for_account(principal(request).account_id, _agent_id(agent_id))
        if agent is None or agent.policy_version is None:
            raise ApiProblem(404, "policy_not_found", f"Agent {agent_id!r} has no policy (it is ungoverned).")
        return Response(_policy_body(agent))

    @extend_schema(
        operation_id="policy_upsert",
        parameters=[AGENT_ID_PARAM],
        request=policies.PolicyInput.serializer,
        responses={200: PolicyOutput, **errors(404)},  # an empty agent id: no route takes /v1/policies/
        summary="Merge upsert: fields sent replace, explicit null clears; a new version per change",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        changes = _clean_policy(request, body(request))
        current = selectors.agent_for_account(principal(request).account_id, agent_id)
        if current is not None:
            require_gate_kept(request, current.policy, policies.merge(current.policy, changes))
        result = services.policy_upsert(
            account_id=principal(request).account_id, agent_id=agent_id, changes=changes, actor=_actor(request)
        )
        return Response(_policy_body(result.agent, result.warnings))


class PolicyTemplateApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="policy_from_template",
        parameters=[AGENT_ID_PARAM],
        request=TemplateInput.serializer,
        responses=PolicyOutput,
        summary=f"Apply a template ({', '.join(policies.TEMPLATES)}) with overrides",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id, write=True)
        applied = TemplateInput.parse(body(request))
        template = applied.template
        # Absent or null: no overrides (false, 0, "" and [] are refused, not read as none).
        changes = _clean_policy(request, applied.overrides or {})
        caller = principal(request)
        if policies.TEMPLATES[template].get("allowed_tools") is not None and "allowed_tools" not in changes:
            entitlements.require(caller.plan, "allowed_tools")
        current = selectors.agent_for_account(caller.account_id, agent_id)
        if current is not None:
            require_gate_kept(request, current.policy, policies.merge(policies.TEMPLATES[template], changes))
        result = services.policy_from_template(
            account_id=caller.account_id,
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
        reason = ReasonInput.parse(body(request)).reason or ""
        # Not a permission class: the path and the body are checked first (a 422 before the plan's 403), and
        # re-enabling stays possible after a downgrade (no agent is left stuck).
        caller = principal(request)
        if not self.enabled:
            entitlements.require(caller.plan, "kill_switch")
        try:
            agent = services.agent_set_enabled(
                account_id=caller.account_id,
                agent_id=agent_id,
                enabled=self.enabled,
                reason=reason,
                actor=_actor(request),
            )
        except services.AgentContained:
            # Contained by a detector: enabling it releases it (docs/governance.md §"Containment detectors"), which
            # an agent's own key may not do — else a runaway agent could undo its containment.
            if not approval_api_selectors.is_admin_key(caller.key_id):
                raise ApiProblem(
                    403,
                    "admin_key_required",
                    "The agent was contained by a detector: enabling it releases it, which needs an admin-scoped API "
                    "key (an agent's key may not release itself). Nothing was changed.",
                ) from None
            try:
                agent = detectors.release(
                    account_id=caller.account_id, agent_id=agent_id, actor=_actor(request), reason=reason
                )
            except detectors.NotContained:  # released meanwhile by someone else: it is enabled
                agent = Agent.objects.get(account_id=caller.account_id, agent_id=agent_id)
        return Response(_agent_status(agent))


AgentStatusOutput = inline_serializer(
    "AgentStatusOutput",
    {
        "agent_id": serializers.CharField(),
        "is_enabled": serializers.BooleanField(),
        "disabled_reason": serializers.CharField(allow_null=True),
        "disabled_at": serializers.DateTimeField(allow_null=True),
    },
)


class AgentDisableApi(_KillSwitchApi):
    enabled = False

    @extend_schema(
        operation_id="agent_disable",
        parameters=[AGENT_ID_PARAM],
        request=ReasonInput.serializer,
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
        request=ReasonInput.serializer,
        responses={200: AgentStatusOutput, **errors(404)},
        summary="Release the kill switch",
    )
    def post(self, request: Request, agent_id: str) -> Response:
        return super().post(request, agent_id)


def _amount(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


class AgentLogsApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="agent_logs",
        responses={200: LogsOutput, **errors(404)},
        summary="An agent's decisions, newest first ({items, limit, offset})",
        parameters=[AGENT_ID_PARAM, *page_parameters(default=100)],
    )
    def get(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id)
        limit, offset = page_params(request, default=100)
        rows = selectors.agent_logs(principal(request).account_id, agent_id, limit=limit, offset=offset)
        return Response(
            {
                "items": [
                    {
                        "ts": int(d.ts.timestamp()),
                        "agent_id": agent_id,
                        "tool": d.tool,
                        "allowed": d.allowed,
                        "decision": d.outcome,
                        "policy_reason": d.policy_reason,
                        "reason": d.policy_reason,
                        "args_hash": d.args_hash,
                        "risk_level": d.risk_level,
                        "spend_usd": float(d.spend_usd),
                        "declared_spend_usd": _amount(d.declared_spend_usd),
                        "operator_price_usd": _amount(d.operator_price_usd),
                        "run_id": d.run_id or None,
                        "decision_id": d.pk,
                        "policy_version": d.policy_version,
                        "latency_ms": d.latency_ms,
                        "explain": d.explain,
                        "explanation": explain.explain_text(d),
                    }
                    for d in rows
                ],
                "limit": limit,
                "offset": offset,
            }
        )


class AgentMetricsApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="agent_metrics",
        responses={200: AgentMetricsOutput, **errors(404)},
        summary="Totals over the last hour, 24 hours or 7 days",
        parameters=[AGENT_ID_PARAM, OpenApiParameter("period", str, enum=list(selectors.PERIODS), default="day")],
    )
    def get(self, request: Request, agent_id: str) -> Response:
        agent_id = _agent_id(agent_id)
        period = request.query_params.get("period", "day")
        if period not in selectors.PERIODS:
            raise QueryValidationError(
                {"period": [serializers.ErrorDetail(f"One of: {', '.join(selectors.PERIODS)}.", code="enum")]}
            )
        return Response(selectors.agent_metrics(principal(request).account_id, agent_id, period, timezone.now()))


# --- tools registry ----------------------------------------------------------------------------------------------


def _tool_body(tool: Tool, warnings: list[str] | None = None) -> dict[str, Any]:
    data = {
        "name": tool.name,
        "scope_id": tool.scope_id,
        "url": tool.url,
        "timeout_ms": tool.timeout_ms,
        "max_retries": tool.max_retries,
        "enabled": tool.enabled,
        "description": tool.description,
        "risk_level": tool.risk_level or None,
        "price_usd": float(tool.price_usd) if tool.price_usd is not None else None,
        "has_secret": bool(tool.secret_encrypted),
        "secret_mask": tool.secret_mask or None,
        "last_status": tool.last_status,
        "last_latency_ms": tool.last_latency_ms,
        "created_at": tool.created_at.isoformat(),
        "updated_at": tool.updated_at.isoformat(),
    }
    if warnings is not None:
        data["warnings"] = warnings
    return data


def _scope(request: Request) -> str:
    query = request.query_params
    return tools.ScopeQuery.parse({"scope_id": query["scope_id"]} if "scope_id" in query else {}, query=True).scope_id


def _tool_or_404(request: Request, name: str) -> Tool:
    tool = selectors.tool_for_account(principal(request).account_id, _scope(request), name)  # `SEND_EMAIL` too
    if tool is None:
        raise ApiProblem(404, "tool_not_found", f"No tool {name!r} in scope {_scope(request)!r}.")
    return tool


ToolOutput = inline_serializer(
    "ToolOutput",
    {
        "name": serializers.CharField(),
        "scope_id": serializers.CharField(),
        "url": serializers.CharField(),
        "timeout_ms": serializers.IntegerField(),
        "max_retries": serializers.IntegerField(),
        "enabled": serializers.BooleanField(),
        "description": serializers.CharField(),
        "has_secret": serializers.BooleanField(),
        "secret_mask": serializers.CharField(allow_null=True),
    },
)
SCOPE_PARAM = tools.ScopeQuery.parameters()[0]
TOOL_NAME_PARAM = OpenApiParameter("name", tools.ToolInput.name.openapi(), OpenApiParameter.PATH)


class ToolsApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="tools_list",
        parameters=[SCOPE_PARAM],
        responses=ToolOutput.__class__(many=True),
        summary="Registered tools of a scope (a bare array)",
    )
    def get(self, request: Request) -> Response:
        rows = Tool.objects.filter(account_id=principal(request).account_id, scope_id=_scope(request)).order_by("name")
        return Response([_tool_body(t) for t in rows[:1000]])

    @extend_schema(
        operation_id="tools_upsert",
        request=tools.ToolInput.serializer,
        responses={200: ToolOutput, **errors(402)},
        summary="Register or update a tool (upsert on scope + name); the secret is never returned",
    )
    def post(self, request: Request) -> Response:
        fields, warnings = tools.clean(body(request))
        caller = principal(request)
        try:
            tool, _ = tools.tool_upsert(
                account_id=caller.account_id, plan=caller.plan, fields=fields, actor=_actor(request)
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


class ToolApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="tool_get",
        parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
        responses={200: ToolOutput, **errors(404)},
        summary="One tool",
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(_tool_body(_tool_or_404(request, name)))

    @extend_schema(
        operation_id="tool_delete",
        parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
        responses={
            200: inline_serializer(
                "ToolDeleted", {"ok": serializers.BooleanField(), "deleted": serializers.CharField()}
            ),
            **errors(404),
        },
        summary="Delete a tool",
    )
    def delete(self, request: Request, name: str) -> Response:
        tool = _tool_or_404(request, name)
        if tool.kind == "mcp":  # its server's next discovery would register it again (docs/api.md §"Tools registry")
            detail = serializers.ErrorDetail(tools.mcp_tool_refused(tool, deleting=True), code="mcp_tool")
            raise PathValidationError({"name": [detail]})
        tools.tool_delete(tool=tool, actor=_actor(request))
        return Response({"ok": True, "deleted": tool.name})


class ToolToggleInput(Body):
    enabled = Boolean(required=True, invalid=("Required: true or false.", "bool_type"))


class ToolToggleApi(FeatureGatedView):
    required_feature = "tools"

    @extend_schema(
        operation_id="tool_toggle",
        parameters=[TOOL_NAME_PARAM, SCOPE_PARAM],
        responses={200: ToolOutput, **errors(404)},
        request=ToolToggleInput.serializer,
        summary="Enable or disable a tool (a disabled tool blocks calls with tool_disabled)",
    )
    def post(self, request: Request, name: str) -> Response:
        enabled = bool(ToolToggleInput.parse(body(request)).enabled)
        tool = tools.tool_toggle(tool=_tool_or_404(request, name), enabled=enabled, actor=_actor(request))
        return Response(_tool_body(tool))


# --- the account's events feed and daily metrics (they read idempotency and governance data) --------------------


# Inline: a field named ``data`` in a class body would stand in for Serializer.data (the property).
FeedOutput = inline_serializer(
    "FeedOutput",
    {
        "data": serializers.ListField(
            child=serializers.DictField(),
            help_text="Newest first. `kind`: run_event, decision or audit (kill switch, policy and tool changes).",
        ),
        "total": serializers.IntegerField(),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
    },
)


class EventsApi(APIView):
    @extend_schema(
        operation_id="events_list",
        parameters=page_parameters(default=50, maximum=200, max_offset=selectors.FEED_MAX_WINDOW - 200),
        responses=FeedOutput,
        summary="The account's recent events: run events, decisions, kill-switch and policy changes",
    )
    def get(self, request: Request) -> Response:
        limit, offset = page_params(request, default=50, maximum=200, max_offset=selectors.FEED_MAX_WINDOW - 200)
        data, total = selectors.account_feed(principal(request).account_id, limit=limit, offset=offset)
        return Response({"data": data, "total": total, "limit": limit, "offset": offset})

    @extend_schema(
        operation_id="events_post",
        request=idempotency_api.EventInput.serializer,
        responses=idempotency_api.EventCreatedOutput,
        summary="Add an event to a run's timeline (unknown top-level keys are kept)",
    )
    def post(self, request: Request) -> Response:
        return idempotency_api.post_event(request)


MAX_METRICS_DAYS = 366
DAY_REQUIRED = ("Required: a day as YYYY-MM-DD (UTC).", "missing")


class MetricsQuery(Body):
    """``?from_day=&to_day=`` of /v1/metrics (other query parameters are ignored)."""

    strict = False
    from_day = Day(required=True, missing=DAY_REQUIRED, description="YYYY-MM-DD (UTC), inclusive")
    to_day = Day(
        required=True,
        missing=DAY_REQUIRED,
        description=f"YYYY-MM-DD (UTC), inclusive; not before from_day, at most {MAX_METRICS_DAYS} days in all",
    )

    def clean(self, check: BodyCheck, prefix: str) -> None:
        first, last = self.from_day, self.to_day
        if first and last and last < first:
            check.fail("to_day", "to_day is before from_day.", "value_error")
        elif first and last and (last - first).days + 1 > MAX_METRICS_DAYS:
            check.fail("to_day", f"At most {MAX_METRICS_DAYS} days per request.", "value_error")


class MetricsOutput(serializers.Serializer):
    from_day = serializers.DateField()
    to_day = serializers.DateField()
    days = serializers.ListField(
        child=serializers.DictField(),
        help_text="Per UTC day: check_locks {locked, duplicate}, leases {acquired, polling, completed, failed}, "
        "decisions {executed, allowed, blocked, dedup, failed, total}, ai_usage, spend_usd.",
    )
    totals = serializers.DictField()


class MetricsApi(APIView):
    @extend_schema(
        operation_id="metrics",
        parameters=MetricsQuery.parameters(),
        responses=MetricsOutput,
        summary=f"Daily counts (check-locks, leases, decisions by outcome) and spend; at most {MAX_METRICS_DAYS} days",
    )
    def get(self, request: Request) -> Response:
        query = MetricsQuery.parse(dict(request.query_params.items()), query=True)
        first, last = query.from_day, query.to_day
        assert first is not None and last is not None  # required: parse has refused a query without them
        days = selectors.daily_metrics(principal(request).account_id, first, last)
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
