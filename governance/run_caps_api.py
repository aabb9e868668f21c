"""``POST /v1/runs/{run_id}/resume`` (docs/runs.md §"Runs that pause at a cap"): Raise & resume a keyed run paused at
a per-run cap, with an admin-scoped key (raising a cap loosens governance, as approving does)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing.auth import principal
from billing.entitlements import FeatureGatedView
from governance import approval_api_selectors, run_caps
from idempotency.api import RUN_ID, RUN_ID_PARAM
from onceonly_site.api import ApiProblem, PathValidationError, body
from onceonly_site.identifiers import identifier_problem
from onceonly_site.openapi import errors

ResumeOutput = inline_serializer(
    "RunResumeOutput",
    {
        "ok": serializers.BooleanField(),
        "run_id": serializers.CharField(),
        "key": serializers.CharField(),
        "status": serializers.CharField(help_text="`queued`: a worker goes on with it."),
        "from_step": serializers.IntegerField(help_text="The action it goes on from (the one that paused)."),
        "caps": serializers.DictField(help_text="The run's own per-run caps from now on."),
    },
)


class RunResumeApi(FeatureGatedView):
    required_feature = "governance"

    @extend_schema(
        operation_id="run_resume",
        parameters=[RUN_ID_PARAM],
        request=run_caps.ResumeInput.serializer,
        responses={200: ResumeOutput, **errors(404, 409, 422)},
        summary="Raise & resume a keyed run paused at a per-run cap (admin key)",
        description="The run goes on from the action that paused, exactly once, with the caps sent as its own per-run "
        "caps (the others as they stand). Needs an admin-scoped API key (403 `admin_key_required`). No keyed run "
        "of this run id: 404 `run_not_found`; none paused: 409 `run_not_paused`; caps that would pause it again "
        "at the same action: 422 with the field.",
    )
    def post(self, request: Request, run_id: str) -> Response:
        run_id = run_id.strip()
        if not RUN_ID.valid(run_id):
            raise PathValidationError({"run_id": [identifier_problem(run_id) or "Not a run id."]})
        sent = run_caps.ResumeInput.parse(body(request)).changes()
        caps = {name: value for name, value in sent.items() if value is not None}
        caller = principal(request)
        if not approval_api_selectors.is_admin_key(caller.key_id):
            raise ApiProblem(
                403,
                "admin_key_required",
                "Resuming a paused run raises its caps: it needs an admin-scoped API key (an agent's key may not "
                "loosen its own limits). Nothing was changed.",
            )
        try:
            run = run_caps.resume(
                account_id=caller.account_id, run_id=run_id, caps=caps, actor=f"api key {caller.key_preview}"
            )
        except run_caps.NotPaused as missing:
            if missing.found:
                raise ApiProblem(
                    409, "run_not_paused", f"No keyed run of {run_id!r} is paused: it went on, finished or failed."
                ) from None
            raise ApiProblem(404, "run_not_found", f"No keyed run of {run_id!r} in this account.") from None
        except run_caps.StillCapped as capped:
            raise exceptions.ValidationError({capped.field: [capped.message]}) from None
        answer: dict[str, Any] = {
            "ok": True,
            "run_id": run.run_id,
            "key": run.key,
            "status": run.status,
            "from_step": run.actions_done + 1,
            "caps": run.cap_overrides or {},
        }
        return Response(answer)
