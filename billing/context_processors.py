from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from billing.choices import EDITOR_ROLES
from billing.selectors import current_membership


def current_account(request: HttpRequest) -> dict[str, Any]:
    """The account switcher and role flags for the layout (no query on pages that already resolved them)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    try:
        membership = current_membership(request)
    except PermissionDenied:
        return {}
    return {
        "current_membership": membership,
        "current_account": membership.account,
        "memberships": request._memberships,  # type: ignore[attr-defined]
        "can_edit": membership.role in EDITOR_ROLES,
    }
