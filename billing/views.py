"""Operator dashboard pages of the billing app: overview, API keys, account switcher."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import panels, selectors, services, sso, stripe_client, stripe_webhooks, usage
from billing.choices import Role
from billing.forms import (
    AccountSwitchForm,
    ApiKeyCreateForm,
    MemberAddForm,
    MemberRoleForm,
    PlanSwitchForm,
    SettingsForm,
)
from billing.models import BillingSubscription, Plan, ProviderEvent
from onceonly_site.health import HEARTBEAT_STALE_AFTER, worker_last_seen_seconds
from onceonly_site.middleware import STRIPE_FORM_ACTION_ORIGINS
from onceonly_site.redis_client import get_redis

KEYS_PER_PAGE = 25
# A new raw key waits in the cache (never the database) for the one page view that shows it.
NEW_KEY_CACHE_SECONDS = 120


class LoginView(auth_views.LoginView):
    """Django's login view; a sign-in refused by the failed-login lockout answers 429 (billing/login_throttle.py).

    Only a GET (or HEAD) of /login/ while signed in redirects to the overview. A POST always checks the submitted
    credentials and starts a new session: a session planted in the browser (session fixation) must not turn the
    victim's own sign-in into a redirect into the planter's account, nor survive it (docs/security.md).
    """

    redirect_authenticated_user = True

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method not in ("GET", "HEAD"):
            self.redirect_authenticated_user = False  # this request's instance only
        return super().dispatch(request, *args, **kwargs)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        if self.request.user.is_authenticated:
            # Django's login() keeps the session key when the session already belongs to the same operator: end
            # whatever session the browser brought, so that the sign-in always gets a new key (and the old is dead).
            self.request.session.flush()
        return super().form_valid(form)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "locked_out", False):
            response.status_code = 429
        return response

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not sso.password_login_enabled():
            # ONCEONLY_PASSWORD_LOGIN=0: nothing submitted is looked at (nor counted by the lockout).
            context = self.get_context_data(password_refused=True)
            return self.render_to_response(context, status=403)
        return super().post(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        # The page offers "Sign in with SSO" when it is configured, and the password form unless it is turned off.
        return super().get_context_data(
            sso_enabled=sso.config().enabled, password_login=sso.password_login_enabled(), **kwargs
        )


def _new_key_slot(request: HttpRequest, token: str) -> str:
    return f"oo:newkey:{request.user.pk}:{token}"


def _api_base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/v1")


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    membership = selectors.current_membership(request)
    account = membership.account
    active_keys = selectors.api_keys_for_account(account).filter(revoked_at__isnull=True).count()
    return render(
        request,
        "billing/overview.html",
        {
            "plan": account.plan,
            "active_keys": active_keys,
            "api_base_url": _api_base_url(request),
            "worker_seen": worker_last_seen_seconds(),
            "bars": _quota_bars(account),
            "panels": panels.render_all(account, request),
            "worker_stale_after": HEARTBEAT_STALE_AFTER,
        },
    )


@never_cache  # the page may carry a raw key: no browser or proxy may keep a copy
@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    membership = selectors.current_membership(request)
    form = ApiKeyCreateForm()
    if request.method == "POST":
        membership = selectors.editor_membership(request)
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            new = services.api_key_create(
                account=membership.account,
                label=form.cleaned_data["label"],
                scope=form.cleaned_data["scope"],
                actor=selectors.operator(request),
            )
            token = secrets.token_urlsafe(16)
            get_redis().set(_new_key_slot(request, token), new.raw, ex=NEW_KEY_CACHE_SECONDS)
            return redirect(f"{reverse('billing:api-keys')}?created={token}")

    new_key = None
    token = request.GET.get("created", "")
    if token:
        # GETDEL: read and delete in one step, so the key is shown exactly once even to two racing requests.
        raw = get_redis().getdel(_new_key_slot(request, token))
        new_key = raw.decode() if isinstance(raw, bytes) and raw else None  # the client does not decode responses

    page = Paginator(selectors.api_keys_for_account(membership.account), KEYS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "billing/api_keys.html",
        {
            "page": page,
            "form": form,
            "new_key": new_key,
            "created_token": token,
            "api_base_url": _api_base_url(request),
        },
        status=422 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    membership = selectors.editor_membership(request)
    api_key = selectors.get_api_key_for_account(membership.account, key_id)
    if request.method == "POST":
        if services.api_key_revoke(api_key=api_key, actor=selectors.operator(request)):
            messages.success(request, f"Key {api_key.preview} revoked. Clients using it now get 403.")
        else:
            messages.info(request, f"Key {api_key.preview} was already revoked.")
        return redirect("billing:api-keys")
    return render(request, "billing/api_key_revoke.html", {"api_key": api_key})


@login_required
@require_POST
def account_switch(request: HttpRequest) -> HttpResponse:
    form = AccountSwitchForm(request.POST)
    target = reverse("billing:overview")
    if form.is_valid():
        wanted = form.cleaned_data["account_id"]
        if any(m.account_id == wanted for m in selectors.memberships_for_user(request.user)):
            request.session[selectors.SESSION_ACCOUNT_KEY] = wanted
        else:
            messages.error(request, "You are not a member of that account.")
        nxt = form.cleaned_data["next"]
        if nxt and url_has_allowed_host_and_scheme(
            nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            target = nxt
    return redirect(target)


def _quota_bars(account) -> list[dict]:
    counters = usage.snapshot(account.pk)
    bars = []
    for kind, limit, label in (
        (usage.MAKE, account.plan.make_monthly_limit, "Check-locks"),
        (usage.AI, account.plan.ai_monthly_limit, "AI runs and governed calls"),
    ):
        used = counters[kind]
        pct = min(100, round(used * 100 / limit)) if limit else 0
        level = "danger" if pct >= 90 else "warn" if pct >= 75 else "ok"
        bars.append(
            {
                "kind": kind,
                "label": label,
                "used": used,
                "limit": limit,
                "pct": pct,
                "level": level,
                "blocked": counters[f"blocked_{kind}"],
                "requests": counters[f"requests_{kind}"],
            }
        )
    return bars


@login_required
@require_http_methods(["GET", "POST"])
def usage_page(request: HttpRequest) -> HttpResponse:
    membership = selectors.current_membership(request)
    account = membership.account
    if request.method == "POST":
        if membership.role != Role.OWNER:
            raise PermissionDenied("Only an owner can switch the account's plan.")
        if settings.STRIPE_ENABLED:
            raise PermissionDenied("Plans follow payments on this server: choose a plan through Stripe checkout.")
        form = PlanSwitchForm(request.POST)
        plan = Plan.objects.filter(code=form.data.get("plan", "")).first() if form.is_valid() else None
        if plan is None:
            messages.error(request, "Choose one of the listed plans.")
        elif plan.pk != account.plan_id:
            services.account_set_plan(account=account, plan=plan, actor=selectors.operator(request))
            messages.success(request, f"The account is now on the {plan.name} plan; API keys see it within a second.")
        return redirect("billing:usage")
    month = usage.month_of()
    _, end = usage.period_of(month)
    plans = list(Plan.objects.all())
    context = {
        "bars": _quota_bars(account),
        "month": month,
        "period_end": end,
        "plans": plans,
        "daily": usage.daily(account.pk, month),
        "plan": account.plan,
        "is_owner": membership.role == Role.OWNER,
        "stripe": settings.STRIPE_ENABLED,
    }
    if settings.STRIPE_ENABLED:
        context["billing"] = BillingSubscription.objects.filter(account=account).first()
        context["for_sale"] = {p.code for p in plans if stripe_client.price_for(p)}
    return render(request, "billing/usage.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    membership = selectors.current_membership(request)
    account = membership.account
    initial = {
        "name": account.name,
        "strict_mode": account.strict_mode,
        **{f: getattr(account, f) for f in services.NOTIFICATION_FIELDS},
    }
    form = SettingsForm(initial=initial)
    status = 200
    if request.method == "POST":
        membership = selectors.editor_membership(request)
        form = SettingsForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                changed = services.account_update_settings(
                    account=account,
                    name=data["name"],
                    strict_mode=data["strict_mode"],
                    notifications={f: data[f] for f in services.NOTIFICATION_FIELDS},
                    actor=selectors.operator(request),
                )
            except ValidationError as exc:
                form.add_error("name", exc.messages[0])
            else:
                messages.success(request, "Settings saved." if changed else "Nothing changed.")
                return redirect("billing:settings")
        status = 422
    return render(request, "billing/settings.html", {"form": form}, status=status)


@never_cache  # the page may show a new member's one-time password
@login_required
@require_http_methods(["GET", "POST"])
def team(request: HttpRequest) -> HttpResponse:
    membership = selectors.current_membership(request)
    form = MemberAddForm()
    new_password = None
    status = 200
    if request.method == "POST":
        membership = selectors.owner_membership(request)
        form = MemberAddForm(request.POST)
        if form.is_valid():
            try:
                added, password = services.membership_add(
                    account=membership.account,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                    actor=selectors.operator(request),
                )
            except ValidationError as exc:
                form.add_error("email", exc.messages[0])
            else:
                if not password:
                    messages.success(
                        request, f"{added.user.get_username()} (an existing login) joined as {added.role}."
                    )
                    return redirect("billing:team")
                new_password = {"email": added.user.get_username(), "password": password}
                form = MemberAddForm()
        if form.errors:
            status = 422
    page = Paginator(selectors.members_of(membership.account), KEYS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "billing/team.html",
        {
            "page": page,
            "form": form,
            "new_password": new_password,
            "roles": Role.choices,
            "is_owner": membership.role == Role.OWNER,
        },
        status=status,
    )


@login_required
@require_POST
def member_change(request: HttpRequest, membership_id: int) -> HttpResponse:
    owner = selectors.owner_membership(request)
    member = selectors.get_membership_for_account(owner.account, membership_id)
    try:
        if request.POST.get("action") == "remove":
            services.membership_remove(membership=member, actor=selectors.operator(request))
            messages.success(request, f"{member.user.get_username()} was removed from the account.")
        else:
            form = MemberRoleForm(request.POST)
            if not form.is_valid():
                raise ValidationError("Choose a role.")
            services.membership_set_role(
                membership=member, role=form.cleaned_data["role"], actor=selectors.operator(request)
            )
            messages.success(request, f"{member.user.get_username()} is now {member.role}.")
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    return redirect("billing:team")


# --- paid plans through Stripe (only when STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are set) ------------------

EVENTS_PER_PAGE = 50


def _stripe_or_404() -> None:
    if not settings.STRIPE_ENABLED:
        raise Http404("Stripe is not configured on this server.")


def _owner_account(request: HttpRequest):
    membership = selectors.current_membership(request)
    if membership.role != Role.OWNER:
        raise PermissionDenied("Only an owner can manage the account's billing.")
    return membership.account


@csrf_exempt
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """``POST /billing/stripe/webhook``: verified (Stripe-Signature, 300 s), stored once, processed once."""
    if not settings.STRIPE_ENABLED:
        return JsonResponse({"detail": {"error": "not_found", "message": "Stripe is not configured."}}, status=404)
    if request.method != "POST":
        return JsonResponse({"detail": {"error": "method_not_allowed", "message": "POST only."}}, status=405)
    try:
        row, new = stripe_webhooks.receive(request.body, request.headers.get("Stripe-Signature"))
    except stripe_webhooks.BadWebhook as exc:
        return JsonResponse({"detail": {"error": "invalid_webhook", "message": str(exc)}}, status=400)
    status = stripe_webhooks.process(row.pk)
    if status == ProviderEvent.Status.PROCESSING:
        return JsonResponse(
            {
                "detail": {
                    "error": "in_progress",
                    "event_id": row.event_id,
                    "message": "Another delivery of this event is being processed; retry later.",
                }
            },
            status=503,
            headers={"Retry-After": "60"},
        )
    if status == ProviderEvent.Status.FAILED:
        # Not the sender's fault: 503 makes Stripe deliver it again later (and the superuser page can retry it).
        return JsonResponse(
            {
                "detail": {
                    "error": "processing_failed",
                    "event_id": row.event_id,
                    "message": "The event was stored but could not be processed; it is retried.",
                }
            },
            status=503,
        )
    return JsonResponse({"ok": True, "event_id": row.event_id, "status": status, "duplicate": not new})


@login_required
@require_POST
def billing_checkout(request: HttpRequest) -> HttpResponse:
    _stripe_or_404()
    account = _owner_account(request)
    plan = Plan.objects.filter(code=request.POST.get("plan", "")).first()
    if plan is None or not stripe_client.price_for(plan):
        messages.error(request, "Choose one of the plans offered for purchase.")
        return redirect("billing:usage")
    billing, _ = BillingSubscription.objects.get_or_create(account=account)
    if billing.has_live_subscription:
        messages.error(request, "This account already has a subscription: change its plan with Manage billing.")
        return redirect("billing:usage")
    done = request.build_absolute_uri(reverse("billing:billing-done"))
    pending = stripe_webhooks.checkout_pending(account)  # a session started here that may still be paid
    try:
        # Only one session at a time may be payable: two paid ones would be two subscriptions, both billed.
        if pending and stripe_client.close_checkout_session(pending) == "complete":
            messages.error(
                request,
                "A checkout of this account was paid already: its plan applies as soon as Stripe "
                "confirms the payment to this server; then change plans with Manage billing.",
            )
            return redirect("billing:usage")
        customer = billing.customer_id
        if not customer:
            created = stripe_client.create_customer(account, selectors.operator(request).email)
            BillingSubscription.objects.filter(pk=billing.pk, customer_id="").update(customer_id=created)
            customer = BillingSubscription.objects.values_list("customer_id", flat=True).get(pk=billing.pk)
        session = stripe_client.create_checkout_session(
            account=account,
            customer_id=customer,
            plan=plan,
            success_url=f"{done}?result=paid",
            cancel_url=f"{done}?result=cancelled",
        )
    except stripe_client.StripeUnavailable as exc:
        messages.error(request, f"Stripe could not start the checkout: {exc}")
        return redirect("billing:usage")
    # The record the webhook checks: only sessions started here are applied (billing/stripe_webhooks.py).
    stripe_webhooks.checkout_session_record(
        account=account, actor=selectors.operator(request), plan=plan, session_id=session.id
    )
    return _to_stripe(request, session.url, portal=False)


@login_required
@require_POST
def billing_portal(request: HttpRequest) -> HttpResponse:
    _stripe_or_404()
    account = _owner_account(request)
    billing = BillingSubscription.objects.filter(account=account).exclude(customer_id="").first()
    if billing is None:
        messages.error(request, "This account has no Stripe customer yet: choose a plan first.")
        return redirect("billing:usage")
    try:
        session = stripe_client.create_portal_session(
            customer_id=billing.customer_id, return_url=request.build_absolute_uri(reverse("billing:usage"))
        )
    except stripe_client.StripeUnavailable as exc:
        messages.error(request, f"Stripe could not open the billing portal: {exc}")
        return redirect("billing:usage")
    return _to_stripe(request, session.url, portal=True)


def _to_stripe(request: HttpRequest, url: str, *, portal: bool) -> HttpResponse:
    """Send the owner to a Stripe-hosted session. Chromium applies the page's CSP form-action to every redirect of a
    form post, so a 303 works only to the Stripe origins the policy lists (onceonly_site/middleware.py); a session
    on any other https origin (a Stripe custom domain) gets a page with a link, which form-action does not govern."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}".lower() in STRIPE_FORM_ACTION_ORIGINS:
        return HttpResponseRedirect(url, status=303)
    if parts.scheme != "https" or not parts.hostname:
        messages.error(request, "Stripe answered with an address this server does not send owners to.")
        return redirect("billing:usage")
    response = render(request, "billing/stripe_handoff.html", {"url": url, "host": parts.hostname, "portal": portal})
    add_never_cache_headers(response)  # the link opens the session: no copy in a cache
    return response


@login_required
@require_GET
def billing_done(request: HttpRequest) -> HttpResponse:
    """Where Checkout sends the owner back: the plan itself changes when Stripe's webhook confirms the payment."""
    _stripe_or_404()
    account = selectors.current_membership(request).account
    return render(
        request, "billing/checkout_done.html", {"paid": request.GET.get("result") == "paid", "plan": account.plan}
    )


@login_required
@require_GET
def provider_events(request: HttpRequest) -> HttpResponse:
    """Superusers: every stored Stripe event with its status; failed ones can be processed again."""
    _stripe_or_404()
    if not request.user.is_superuser:
        raise Http404("Not found.")
    status = request.GET.get("status", "")
    rows = ProviderEvent.objects.select_related("account").order_by("-received_at", "-id")
    stale_before = timezone.now() - stripe_webhooks.STALE_PROCESSING
    if status in ProviderEvent.Status.values:
        rows = rows.filter(status=status)
    page = Paginator(rows, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "billing/provider_events.html",
        {
            "page": page,
            "status": status,
            "statuses": ProviderEvent.Status.choices,
            "extra": f"&status={status}" if status else "",
            "stale_before": stale_before,
        },
    )


@login_required
@require_POST
def provider_event_retry(request: HttpRequest, event_pk: int) -> HttpResponse:
    _stripe_or_404()
    if not request.user.is_superuser:
        raise Http404("Not found.")
    row = ProviderEvent.objects.filter(pk=event_pk).first()
    if row is None:
        raise Http404("No such event.")
    status = stripe_webhooks.process(row.pk)
    if status == ProviderEvent.Status.SUCCEEDED:
        messages.success(request, f"{row.event_id} processed.")
    elif status == ProviderEvent.Status.PROCESSING:
        messages.info(request, f"{row.event_id} is being processed right now.")
    else:
        error = ProviderEvent.objects.values_list("error", flat=True).get(pk=row.pk)
        messages.error(request, f"{row.event_id}: {status}. {error}")
    return redirect("billing:provider-events")
