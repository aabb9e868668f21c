"""/v1/approvals: the approval queue for operator tooling (docs/approvals.md; docs/api.md §"Approvals").

Any key of the account reads the queue and an approval (an agent may poll its own); approving or denying needs an
admin-scoped key (billing.choices.ApiKeyScope), checked on the key's row at each decision.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import approval_api_selectors as selectors
from governance import approvals
from governance.choices import RiskLevel
from governance.models import Approval
from onceonly_site.api import ApiProblem, BodyCheck, PathValidationError, body
from onceonly_site.bodies import AgentId, Body, Choice, Identifier, Key, Text
from onceonly_site.identifiers import control_problem, identifier_problem
from onceonly_site.openapi import IDENTIFIER_PATTERN, UNSAFE_FREE_PATTERN, AutoSchema, errors, page_parameters

Status = Approval.Status
MAX_PUBLIC_ID: int = Approval._meta.get_field("public_id").max_length or 40
MAX_REASON = 1000
PAGE = {"default": 50, "maximum": 500, "max_offset": 1_000_000}
PUBLIC_ID = Identifier(MAX_PUBLIC_ID)


# --- the answers -------------------------------------------------------------------------------------------------


def _item(approval: Approval, now: Any) -> dict[str, Any]:
    return {
        "approval_id": approval.public_id,
        "status": selectors.effective_status(approval, now),
        "agent_id": approval.agent.agent_id,
        "tool": approval.tool,
        "args_hash": approval.args_hash,
        "policy_version": approval.policy_version,
        "rule": approval.rule,
        "risk_level": approval.risk_level,
        "spend_usd": float(approval.spend_usd),
        "run_id": approval.run_id or None,
        "created_at": approvals.iso(approval.created_at),
        "expires_at": approvals.iso(approval.expires_at),
        "decided_at": approvals.iso(approval.decided_at),
        "decided_by": approval.decided_by or None,
        "reason": approval.reason or None,
        "consumed_at": approvals.iso(approval.consumed_at),
        "approval_url": approvals.approval_url(approval),
        "requested_decision_id": approval.requested_by_id,
        "consumed_decision_id": approval.consumed_by_id,
    }


def _detail(approval: Approval) -> dict[str, Any]:
    now = timezone.now()
    item = _item(approval, now)
    # The call's args while it waits for a person only (emptied once decided; past its time it no longer waits).
    item["args"] = approvals.args_preview(approval) if item["status"] == Status.PENDING else None
    return item


_ITEM_FIELDS: dict[str, serializers.Field] = {
    "approval_id": serializers.CharField(help_text="`apr_…`"),
    "status": serializers.ChoiceField(
        choices=Status.values,
        help_text="An open approval (pending, approved) past `expires_at` is `expired`, swept or not.",
    ),
    "agent_id": serializers.CharField(),
    "tool": serializers.CharField(help_text="As the agent called it."),
    "args_hash": serializers.CharField(help_text="The call's args digest (as in the decision log)."),
    "policy_version": serializers.IntegerField(allow_null=True),
    "rule": serializers.DictField(help_text='The require_approval entry that matched: {"tool", "over_usd"}.'),
    "risk_level": serializers.ChoiceField(choices=RiskLevel.values),
    "spend_usd": serializers.FloatField(help_text="The call's cost when it asked."),
    "run_id": serializers.CharField(allow_null=True),
    "created_at": serializers.DateTimeField(),
    "expires_at": serializers.DateTimeField(),
    "decided_at": serializers.DateTimeField(allow_null=True),
    "decided_by": serializers.CharField(allow_null=True, help_text="Who approved or denied it."),
    "reason": serializers.CharField(allow_null=True, help_text="The approver's reason."),
    "consumed_at": serializers.DateTimeField(allow_null=True, help_text="When the identical retry used it."),
    "approval_url": serializers.CharField(help_text="The approval's page in the dashboard."),
    "requested_decision_id": serializers.IntegerField(allow_null=True, help_text="The call that asked for it."),
    "consumed_decision_id": serializers.IntegerField(allow_null=True, help_text="The retry that used it."),
}
ApprovalItem = inline_serializer("ApprovalItem", _ITEM_FIELDS)
ApprovalOutput = inline_serializer(
    "ApprovalOutput",
    {
        **_ITEM_FIELDS,
        "args": serializers.DictField(
            allow_null=True, help_text="The call's args while the approval is pending; null once decided or expired."
        ),
    },
)
ApprovalListOutput = inline_serializer(
    "ApprovalList",
    {
        "items": serializers.ListField(child=ApprovalItem),
        "total": serializers.IntegerField(),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
    },
)


# --- requests ----------------------------------------------------------------------------------------------------


class ApprovalsQuery(Body):
    """``?status=&agent_id=&tool=`` of the list (``limit``/``offset`` are read with them; others are ignored)."""

    strict = False
    status = Choice(Status.values, description="Only approvals in this status (default: all).")
    agent_id = AgentId(required=False, description="Only this agent's approvals.")
    # A filter, not a call: a name no call could have used finds nothing (the tool-name rules are the call's).
    tool = Key(200, required=False, description="Only approvals of calls to this tool, named exactly as called.")


# A reason reaches the agent, Slack, webhooks and the audit log: one line, no control, bidirectional formatting or
# invisible character (identifier_problem), as an identifier shown to operators.
REASON_RULES = (control_problem, identifier_problem)


class ApproveInput(Body):
    reason = Text(
        MAX_REASON,
        rules=REASON_RULES,
        pattern=UNSAFE_FREE_PATTERN,
        description="Optional; kept with the approval and in the audit log. One line: no control, bidirectional "
        "formatting or invisible character.",
    )


class DenyInput(Body):
    reason = Text(
        MAX_REASON,
        required=True,
        rules=REASON_RULES,
        pattern=IDENTIFIER_PATTERN,
        description="Required, not blank: the agent's blocked call carries it (`result.reason`). One line: no "
        "control, bidirectional formatting or invisible character.",
    )


def _public_id(raw: str) -> str:
    """An approval id of the path: what no approval id can be (longer than any, blank, or with a character no
    identifier holds) is a 422 at ``["path", "approval_id"]``; a well-formed unknown one is a 404 later."""
    if not PUBLIC_ID.valid(raw):
        if len(raw) > MAX_PUBLIC_ID:
            problem, code = f"At most {MAX_PUBLIC_ID} characters.", "string_too_long"
        else:
            problem, code = identifier_problem(raw) or "An approval id is not blank.", "string_pattern_mismatch"
        raise PathValidationError({"approval_id": [serializers.ErrorDetail(problem, code=code)]})
    return raw


def _not_found(public_id: str) -> ApiProblem:
    return ApiProblem(404, "approval_not_found", f"No approval {public_id!r} in this account.")


def _actor(request: Request) -> str:
    return f"api key {principal(request).key_preview}"  # as the other API writes (governance/api.py)


PUBLIC_ID_PARAM = OpenApiParameter(
    "approval_id",
    PUBLIC_ID.openapi(),
    OpenApiParameter.PATH,
    description="The approval id (`apr_…`), as `approval_id` in the answers and in a blocked call's `result`.",
)


# --- views -------------------------------------------------------------------------------------------------------


class ApprovalListApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="approvals_list",
        parameters=[*ApprovalsQuery.parameters(), *page_parameters(**PAGE)],
        responses=ApprovalListOutput,
        summary="The account's approvals, newest first ({items, total, limit, offset}); args are not listed",
    )
    def get(self, request: Request) -> Response:
        data = dict(request.query_params.items())
        check = BodyCheck(data, data.keys(), query=True)
        query = ApprovalsQuery.fill(check, data, "")
        limit, offset = check.page(**PAGE)
        check.done()
        now = timezone.now()
        rows, total = selectors.approvals_page(
            principal(request).account_id,
            now=now,
            status=query.status,
            agent_id=query.agent_id,
            tool=query.tool,
            limit=limit,
            offset=offset,
        )
        return Response({"items": [_item(a, now) for a in rows], "total": total, "limit": limit, "offset": offset})


class ApprovalApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="approval_get",
        parameters=[PUBLIC_ID_PARAM],
        responses={200: ApprovalOutput, **errors(404)},
        summary="One approval, with the call's args while it is pending (any key of the account)",
    )
    def get(self, request: Request, approval_id: str) -> Response:
        public_id = _public_id(approval_id)
        approval = selectors.approval_for_account(principal(request).account_id, public_id)
        if approval is None:
            raise _not_found(public_id)
        return Response(_detail(approval))


class _DecideSchema(AutoSchema):
    """Approve and deny are one view class routed twice (``action``): each route's operation from its action."""

    @property
    def action(self) -> str:
        return getattr(self.view, "action", "")

    def get_operation_id(self) -> str:
        return f"approval_{self.action}"

    def get_request_serializer(self) -> Any:
        return (ApproveInput if self.action == "approve" else DenyInput).serializer

    def get_summary(self) -> str:
        if self.action == "approve":
            return "Approve a pending approval (admin key): the agent's identical retry then goes through, once"
        return "Deny a pending approval with a reason (admin key): the identical call stays blocked until it expires"


class ApprovalDecideApi(FeatureGatedView):
    required_feature = "governance"
    action = ""  # "approve" or "deny": governance/urls.py routes the class twice
    schema = _DecideSchema()

    @extend_schema(
        parameters=[PUBLIC_ID_PARAM],
        responses={200: ApprovalOutput, **errors(404, 409)},
        description="Needs an admin-scoped API key: any other is refused with 403 `admin_key_required`. An approval "
        "that is no longer pending (approved, denied, used, expired or superseded) is a 409 `approval_not_pending` "
        "with its `status`. The decision is audited with the key's preview as the actor.",
    )
    def post(self, request: Request, approval_id: str) -> Response:
        public_id = _public_id(approval_id)
        approve = self.action == "approve"
        sent = (ApproveInput if approve else DenyInput).parse(body(request))
        caller = principal(request)
        if not selectors.is_admin_key(caller.key_id):
            raise ApiProblem(
                403,
                "admin_key_required",
                "Approving or denying needs an admin-scoped API key (created as admin on the dashboard's API keys "
                "page or with `manage.py create_api_key --scope admin`); this key may read approvals only.",
            )
        try:
            approval = approvals.decide(
                account_id=caller.account_id,
                public_id=public_id,
                approve=approve,
                reason=(sent.reason or "").strip(),
                actor=_actor(request),
            )
        except approvals.NotFound:
            raise _not_found(public_id) from None
        except approvals.NotPending as taken:
            status = taken.approval.status
            raise ApiProblem(
                409,
                "approval_not_pending",
                f"Approval {public_id!r} is {status}: only a pending approval can be approved or denied.",
                status=status,
            ) from None
        return Response(_detail(approval))
