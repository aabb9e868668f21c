"""Feature gating from the caller's plan row, in one place (docs/architecture.md §7.1).

Refusal: 403 feature_not_available. A view whose every request needs a feature says so at its edge —
``permission_classes = [IsAuthenticated, RequiresFeature("tools")]`` — where DRF checks it before the view's code,
so before the body is read; a view that checks the body first, or needs the feature only for some requests (the
governed call after its 422s, a keyed run with actions, ``allowed_tools`` in a policy), calls ``require``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from billing.auth import PlanLimits
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


class RequiresFeature(BasePermission):
    """A DRF permission: the caller's plan has ``feature`` (else ``require``'s 403). Listed as an instance,
    ``RequiresFeature("governance")``, which DRF's call of each entry of ``permission_classes`` gives back; put it
    after ``IsAuthenticated``, which makes sure there is a plan to read. DRF checks permissions before throttles:
    a refused request takes no rate-limit token."""

    def __init__(self, feature: str) -> None:
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}")
        self.feature = feature

    def __call__(self) -> RequiresFeature:
        return self

    def has_permission(self, request: Any, view: Any) -> bool:
        require(request.auth.plan, self.feature)
        return True
