"""Feature gating from the caller's plan row, in one place (docs/architecture.md §7.1).

Refusal: 403 feature_not_available. A view whose every request needs a feature says so at its edge —
``class ToolsApi(FeatureGatedView): required_feature = "tools"`` — and it is checked before the view's code, so
before the body is read; a view that checks the body first, or needs the feature only for some requests (the
governed call after its 422s, a keyed run with actions, ``allowed_tools`` in a policy), calls ``require``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework.request import Request
from rest_framework.views import APIView

from billing.auth import PlanLimits, principal
from billing.models import Plan
from onceonly_site.api import ApiProblem

FEATURES = {
    # feature: (PlanLimits attribute = Plan column, what it is)
    "governance": ("has_governance", "Policies, governed tool calls, agent logs and metrics"),
    "allowed_tools": ("has_allowed_tools", "allowed_tools in policies"),
    "kill_switch": ("has_kill_switch", "The kill switch (disable/enable agents)"),
    "tools": ("tools_limit", "The tools registry (registered tools and signed dispatch)"),
}


def require(plan: PlanLimits, feature: str) -> None:
    flag, what = FEATURES[feature]
    if getattr(plan, flag):
        return
    lookup = {flag: True} if flag.startswith("has_") else {f"{flag}__gt": 0}
    with_it = ", ".join(Plan.objects.filter(**lookup).order_by("sort_order").values_list("name", flat=True))
    raise ApiProblem(
        403,
        "feature_not_available",
        f"{what} {'is' if not what.endswith('s') else 'are'} not on the {plan.code} plan"
        + (f"; available on: {with_it}." if with_it else "."),
        feature=feature,
        plan=plan.code,
    )


class FeatureGatedView(APIView):
    """An API view whose every request needs the plan's ``required_feature`` (else ``require``'s 403).

    Checked where DRF's ``initial`` ends — after the API key, the permissions and the rate-limit token, before the
    handler reads anything of the request — which is where a ``require`` in the handler's first line stood: a plan
    without the feature still spends a token per request (its refusals cost a query, so they stay rate limited), and
    an over-limit caller gets its 429 first. Requests no handler serves (OPTIONS, a 405) are not gated.
    """

    required_feature: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        feature = getattr(cls, "required_feature", None)
        if feature not in FEATURES:
            raise ValueError(f"{cls.__name__}: required_feature {feature!r} is not one of {', '.join(FEATURES)}")

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        method = (request.method or "").lower()
        if method != "options" and hasattr(self, method):
            require(principal(request).plan, self.required_feature)
