"""The views of single sign-on (billing/sso.py): start, callback, and a sign-out that ends the provider's session.

/oidc/authenticate/ and /oidc/callback/ answer 404 while single sign-on is off.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render, resolve_url
from django.utils.cache import add_never_cache_headers
from django.views import View
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from billing import sso

UNREACHABLE = "The sign-in provider cannot be reached; try again later."
FAILED = "Single sign-on did not complete. Start again from the sign-in page."


def refused(request: HttpRequest, reason: str, status: int = 403) -> HttpResponse:
    return render(request, "registration/sso_refused.html", {"reason": reason}, status=status)


class SsoStartView(OIDCAuthenticationRequestView):
    """Redirect to the provider's authorization endpoint (state, nonce and PKCE kept in the session)."""

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # not the library's: its endpoint comes from discovery, when asked
        self.OIDC_RP_CLIENT_ID = sso.oidc_setting("OIDC_RP_CLIENT_ID") if sso.config().enabled else ""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso.config().enabled:
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = sso.provider_metadata()["authorization_endpoint"]
        except sso.ProviderUnavailable:
            return refused(request, UNREACHABLE, status=503)
        response: HttpResponse = super().get(request)
        return response


class SsoCallbackView(OIDCAuthenticationCallbackView):
    """The provider's redirect back: the code is exchanged and the operator signed in (billing.sso.sign_in), or the
    refusal is shown with its reason."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso.config().enabled:
            raise Http404("Single sign-on is not configured.")
        response: HttpResponse = super().get(request)
        return response

    def login_failure(self) -> HttpResponse:
        return refused(self.request, getattr(self.request, "sso_refusal", None) or FAILED)

    def login_success(self) -> HttpResponse:
        # Always a new session key, even when the browser was signed in as the same operator (session fixation:
        # docs/security.md), then the ID token for the provider's logout.
        next_url = self.success_url  # kept in the session, which the sign-in may flush
        auth.login(self.request, self.user)
        id_token = getattr(self.request, "sso_id_token", None)
        if id_token:
            self.request.session["oidc_id_token"] = id_token
        return HttpResponseRedirect(next_url)


class LogoutView(auth_views.LogoutView):
    """Django's sign-out (POST only); after a single sign-on, it continues at the provider's end_session_endpoint
    with id_token_hint, which returns the browser to the sign-in page (post_logout_redirect_uri).

    Not by a redirect: Chromium applies the page's CSP ``form-action 'self'`` to every redirect of the sign-out form,
    so the answer is a page of ours that moves on by itself (a Refresh header, which CSP does not govern; a link too).
    """

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        id_token = request.session.get("oidc_id_token")
        response = super().post(request, *args, **kwargs)
        if id_token and sso.config().enabled:
            back = request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL))
            url = sso.end_session_url(id_token, back)
            if url:
                page = render(request, "registration/sso_logout.html", {"end_session_url": url})
                page["Refresh"] = f"0;url={url}"
                add_never_cache_headers(page)  # it carries the ID token
                return page
        return response
