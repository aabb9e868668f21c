"""Feature gating from the caller's plan row, in one place (docs/architecture.md §7.1).

Refusal: 403 feature_not_available.
"""

from __future__ import annotations

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
        403, "feature_not_available",
        f"{what} {'is' if not what.endswith('s') else 'are'} not on the {plan.code} plan"
        + (f"; available on: {with_it}." if with_it else "."),
        feature=feature, plan=plan.code,
    )  # fmt: skip
