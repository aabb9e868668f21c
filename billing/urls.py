from django.urls import path

from billing import api, sso_views, views
from billing.forms import EmailAuthenticationForm

app_name = "billing"

urlpatterns = [
    path("", views.overview, name="overview"),
    # A GET while signed in redirects to the overview; a POST always signs in anew (billing.views.LoginView).
    path("login/", views.LoginView.as_view(authentication_form=EmailAuthenticationForm), name="login"),
    # After a single sign-on, sign-out continues at the provider's end_session_endpoint (billing/sso_views.py).
    path("logout/", sso_views.LogoutView.as_view(), name="logout"),
    # Single sign-on with OpenID Connect: 404 unless ONCEONLY_OIDC_ISSUER is set (billing/sso.py).
    path("oidc/authenticate/", sso_views.SsoStartView.as_view(), name="oidc-authenticate"),
    path("oidc/callback/", sso_views.SsoCallbackView.as_view(), name="oidc-callback"),
    path("keys/", views.api_keys, name="api-keys"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("account/switch/", views.account_switch, name="account-switch"),
    path("usage/", views.usage_page, name="usage"),
    path("settings/", views.settings_page, name="settings"),
    path("team/", views.team, name="team"),
    path("team/<int:membership_id>/", views.member_change, name="member-change"),
    # Paid plans through Stripe: 404 unless STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are set.
    path("billing/stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
    path("billing/checkout/", views.billing_checkout, name="billing-checkout"),
    path("billing/portal/", views.billing_portal, name="billing-portal"),
    path("billing/done/", views.billing_done, name="billing-done"),
    path("billing/events/", views.provider_events, name="provider-events"),
    path("billing/events/<int:event_pk>/retry/", views.provider_event_retry, name="provider-event-retry"),
]

# Mounted under /v1/ by onceonly_site/urls.py.
api_urlpatterns = [
    path("me", api.MeApi.as_view(), name="me"),
    path("me/notifications", api.MeNotificationsApi.as_view(), name="me-notifications"),
    path("usage", api.UsageApi.as_view(), name="usage"),
    path("usage/all", api.UsageAllApi.as_view(), name="usage-all"),
]
