"""Policies as code over the API: GET /v1/policies/export and POST /v1/policies/apply (docs/policies-as-code.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import policy_code
from governance.api import require_gate_kept
from onceonly_site.api import ApiProblem, QueryValidationError, body
from onceonly_site.bodies import Body, Boolean, Identifier, SchemaField, Text

APPLY_ATTEMPTS = 3  # a plan made stale by a concurrent policy change is made again, this many times at most


class YamlRenderer(BaseRenderer):
    """``application/yaml`` (RFC 9512): a text as it is (the export), anything else as block YAML."""

    media_type = "application/yaml"
    format = "yaml"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if isinstance(data, str):
            return data.encode()
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


class _ErrorsInJson:
    """Errors are JSON whatever the ``Accept`` header chose for the answer (docs/api.md §"The error contract")."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and response.status_code >= 400:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class _FormatOrAccept(DefaultContentNegotiation):
    """``?format=yaml|json`` chooses the answer's type (else the ``Accept`` header); another format is a 422 at
    ``["query", "format"]`` (DRF's own answer would be a 404)."""

    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: Any = None) -> Any:
        renderers = list(renderers)
        formats = [renderer.format for renderer in renderers]
        wanted = request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        if wanted is not None and wanted not in formats:
            problem = serializers.ErrorDetail(f"One of: {', '.join(formats)}.", code="enum")
            raise QueryValidationError({self.settings.URL_FORMAT_OVERRIDE: [problem]})
        return super().select_renderer(request, renderers, format_suffix)


def _actor(request: Request) -> str:
    return f"api key {principal(request).key_preview}"


PolicyFileDocument = inline_serializer(
    "PolicyFileDocument",
    {
        "agents": SchemaField(
            openapi={
                "type": "object",
                "additionalProperties": {"type": "object", "additionalProperties": {}},
                "description": "{agent id: policy}: every agent with a policy, by agent id; each policy's fields "
                'in the order of docs/api.md §"Policies". YAML comments give each one\'s version, source, author '
                "and time.",
            }
        )
    },
)
ExportJson = inline_serializer(
    "PolicyFileExport", {"yaml": serializers.CharField(help_text="The policies file (what application/yaml answers).")}
)


class PolicyExportApi(_ErrorsInJson, FeatureGatedView):
    """Every agent of the account that has a policy, by agent id, as a policies file: `application/yaml` (the
    default), or `{"yaml": …}` with `Accept: application/json` or `?format=json`. Applying it back changes nothing
    (docs/policies-as-code.md). Errors are JSON, as everywhere."""

    required_feature = "governance"
    renderer_classes = [YamlRenderer, JSONRenderer]
    content_negotiation_class = _FormatOrAccept

    @extend_schema(
        operation_id="policies_export",
        request=None,
        responses={(200, "application/yaml"): PolicyFileDocument, (200, "application/json"): ExportJson},
        summary="Every agent's policy as a YAML policies file (application/yaml; {yaml} with Accept: application/json)",
    )
    def get(self, request: Request) -> Response:
        text = policy_code.export(principal(request).account_id)
        if request.accepted_renderer.format == "json":
            return Response({"yaml": text})
        return Response(text)


class PolicyApplyInput(Body):
    yaml = Text(
        policy_code.MAX_BYTES,
        required=True,
        blank=True,
        description="The policies file (YAML, at most 1 MiB of UTF-8): {agents: {agent id: policy}}. Each agent's "
        "entry is its whole policy; agents not in it are left as they are. An empty file names no agent.",
    )
    filename = Identifier(
        200,
        required=False,
        default=policy_code.DEFAULT_FILENAME,
        description="Named in the messages and in each new version's source (`file <name>`).",
    )
    dry_run = Boolean(default=False, description="true: answer the plan and change nothing.")


ChangeItem = inline_serializer(
    "PolicyFileChange",
    {
        "field": serializers.CharField(),
        "change": serializers.ChoiceField(choices=["set", "cleared", "changed"]),
        "before": SchemaField(openapi={"nullable": True, "description": "The field's value before (null: unset)."}),
        "after": SchemaField(openapi={"nullable": True, "description": "…and after (null: cleared)."}),
        "added": serializers.ListField(child=SchemaField(openapi={}), help_text="List entries or tool caps added."),
        "removed": serializers.ListField(child=SchemaField(openapi={}), help_text="…and removed."),
        "text": serializers.CharField(help_text="The change in words (`blocked_tools: + drop_*`)."),
    },
)
AgentItem = inline_serializer(
    "PolicyFileAgent",
    {
        "agent_id": serializers.CharField(),
        "line": serializers.IntegerField(help_text="The agent's line in the file."),
        "action": serializers.ChoiceField(choices=[policy_code.CREATE, policy_code.CHANGE, policy_code.UNCHANGED]),
        "version": serializers.IntegerField(allow_null=True, help_text="Its version before (null: no policy)."),
        "new_version": serializers.IntegerField(
            allow_null=True, help_text="The version it gets (applied) or would get (dry run); null when unchanged."
        ),
        "policy": serializers.DictField(help_text="Its whole policy as the file gives it."),
        "changes": serializers.ListField(child=ChangeItem, help_text="The semantic diff, field by field."),
        "diff": serializers.ListField(
            child=serializers.CharField(), help_text="The line diff of the policy as JSON (the policy page's)."
        ),
        "warnings": serializers.ListField(child=serializers.CharField(), help_text="Unknown tools it names."),
    },
)
PlanOutput = inline_serializer(
    "PolicyFilePlan",
    {
        "filename": serializers.CharField(),
        "sha256": serializers.CharField(help_text="SHA-256 of the file's text (UTF-8)."),
        "dry_run": serializers.BooleanField(),
        "applied": serializers.BooleanField(help_text="true: every change below was made, in one transaction."),
        "summary": serializers.CharField(),
        "counts": inline_serializer(
            "PolicyFileCounts",
            {
                "create": serializers.IntegerField(),
                "change": serializers.IntegerField(),
                "unchanged": serializers.IntegerField(),
                "not_in_file": serializers.IntegerField(help_text="Agents with a policy the file does not name."),
            },
        ),
        "agents": serializers.ListField(child=AgentItem, help_text="Every agent the file names, in its order."),
    },
)


def plan_body(plan: policy_code.Plan, applied: policy_code.Applied | None) -> dict[str, Any]:
    """A plan (and what its apply made) as the API answers it."""
    return {
        "filename": plan.filename,
        "sha256": plan.sha256,
        "dry_run": applied is None,
        "applied": applied is not None,
        "summary": plan.summary(),
        "counts": {
            "create": plan.count(policy_code.CREATE),
            "change": plan.count(policy_code.CHANGE),
            "unchanged": plan.count(policy_code.UNCHANGED),
            "not_in_file": plan.untouched,
        },
        "agents": [
            {
                "agent_id": agent.agent_id,
                "line": agent.line,
                "action": agent.action,
                "version": agent.version,
                "new_version": (
                    applied.versions.get(agent.agent_id)
                    if applied is not None and agent.action != policy_code.UNCHANGED
                    else agent.new_version
                ),
                "policy": agent.policy,
                "changes": agent.changes,
                "diff": agent.diff,
                "warnings": agent.warnings,
            }
            for agent in plan.agents
        ],
    }


class PolicyApplyApi(FeatureGatedView):
    """A policies file checked whole, then applied in one transaction: each agent it creates or changes gets a new
    version whose source is `file <filename>`; agents it does not name are left as they are. Any problem — YAML,
    an agent id, a policy field — is a 422 whose items name the line, the agent and the field (`loc` ["body",
    "yaml", "agents", <agent>, <field>]), and nothing is written. `dry_run`: the plan only
    (docs/policies-as-code.md)."""

    required_feature = "governance"

    @extend_schema(
        operation_id="policies_apply",
        request=PolicyApplyInput.serializer,
        responses={200: PlanOutput},
        summary="Apply a policies file atomically, or with dry_run its plan; a file with any problem is a 422 "
        "naming each one's line, agent and field, and changes nothing",
    )
    def post(self, request: Request) -> Response:
        sent = PolicyApplyInput.parse(body(request))
        account_id = principal(request).account_id
        for _ in range(APPLY_ATTEMPTS):
            plan = policy_code.plan(account_id, sent.yaml, sent.filename)
            if plan.errors:
                return Response({"detail": [problem.item(plan.filename) for problem in plan.errors]}, status=422)
            if sent.dry_run:
                return Response(plan_body(plan, None))
            for agent in plan.agents:  # an agent's key may tighten an approval gate, never loosen it
                require_gate_kept(request, agent.before, agent.policy)
            try:
                applied = policy_code.apply(account_id, plan, _actor(request))
            except policy_code.PlanStale:
                continue  # a policy of the file's agents changed meanwhile: plan again against it
            return Response(plan_body(plan, applied))
        raise ApiProblem(
            503,
            "service_unavailable",
            "The file's agents' policies kept changing while it was applied; nothing was applied. Retry.",
            headers={"Retry-After": "1"},
        )
