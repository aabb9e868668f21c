"""Reads of the billing app. Dashboard helpers raise 404/403 so that tenant scoping cannot be forgotten."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from billing.choices import EDITOR_ROLES, Role
from billing.models import Account, ApiKey, Membership

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

SESSION_ACCOUNT_KEY = "account_id"


def account_for_api(account_id: int) -> Account:
    """The caller's account; gone or deactivated since its key was cached → the key is invalid (403)."""
    from onceonly_site.api import InvalidApiKey

    account = Account.objects.select_related("plan").filter(pk=account_id, is_active=True).first()
    if account is None:
        raise InvalidApiKey()
    return account


def blocked_total_all_time(account_id: int) -> int:
    """Calls refused over quota, all months: past months from the mirror, this month live."""
    from django.db.models import Sum

    from billing import usage
    from billing.models import UsageMonth

    month = usage.month_of()
    past = (
        UsageMonth.objects.filter(account_id=account_id)
        .exclude(month=month)
        .aggregate(make=Sum("blocked_make"), ai=Sum("blocked_ai"))
    )
    now = usage.snapshot(account_id, month)
    return (past["make"] or 0) + (past["ai"] or 0) + now["blocked_make"] + now["blocked_ai"]


def memberships_for_user(user: User | AnonymousUser) -> list[Membership]:
    if not user.is_authenticated:
        return []
    return list(Membership.objects.filter(user=user).select_related("account", "account__plan"))


def current_membership(request: HttpRequest) -> Membership:
    """The membership of the account the operator is looking at (the switcher stores it in the session).

    Cached on the request, so the layout and the view share one query.
    """
    cached: Membership | None = getattr(request, "_current_membership", None)
    if cached is not None:
        return cached
    memberships = memberships_for_user(request.user)
    if not memberships:
        raise PermissionDenied("This login is not a member of any account.")
    wanted = request.session.get(SESSION_ACCOUNT_KEY)
    membership = next((m for m in memberships if m.account_id == wanted), memberships[0])
    request._current_membership = membership  # type: ignore[attr-defined]
    request._memberships = memberships  # type: ignore[attr-defined]
    return membership


def operator(request: HttpRequest) -> User:
    """The signed-in operator of a dashboard request, typed as the user model (the actor services record).

    Views behind login_required only; an anonymous request is refused like one without a membership.
    """
    user = request.user
    if not user.is_authenticated:
        raise PermissionDenied("This login is not a member of any account.")
    return user


def editor_membership(request: HttpRequest) -> Membership:
    """Like current_membership, but only for roles that may change things (viewers get 403)."""
    membership = current_membership(request)
    if membership.role not in EDITOR_ROLES:
        raise PermissionDenied("Viewers can look but not change anything.")
    return membership


def owner_membership(request: HttpRequest) -> Membership:
    """Only owners manage the team and the plan."""
    membership = current_membership(request)
    if membership.role != Role.OWNER:
        raise PermissionDenied("Only an owner of the account can do this.")
    return membership


def members_of(account: Account) -> QuerySet[Membership]:
    return Membership.objects.filter(account=account).select_related("user").order_by("user__username", "id")


def get_membership_for_account(account: Account, membership_id: int) -> Membership:
    try:
        return Membership.objects.select_related("user", "account").get(pk=membership_id, account=account)
    except Membership.DoesNotExist:
        raise Http404("No such member in this account.") from None


def api_keys_for_account(account: Account) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(account=account).select_related("created_by").order_by("-created_at", "-id")


def get_api_key_for_account(account: Account, key_id: int) -> ApiKey:
    try:
        return ApiKey.objects.select_related("account").get(pk=key_id, account=account)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key in this account.") from None
