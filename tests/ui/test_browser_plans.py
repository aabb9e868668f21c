"""Usage & plan, Team and the overview in headless Chromium."""

import re

import pytest
from django.test import Client
from playwright.sync_api import expect

from billing.models import Account, AuditEntry, BillingSubscription, Membership
from tests.support.fake_stripe import FakeStripe
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


def test_usage_bars_match_the_api_and_owner_switches_plan(page, live_server, owner_a, key_a):
    for n in range(7):
        key_a.client().post("/v1/check-lock", {"key": f"k{n}"}, content_type="application/json")
    login(page, live_server, owner_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage & plan").click()
    api = key_a.client().get("/v1/usage", {"kind": "make"}).json()
    bar = page.locator('.quota[data-kind="make"]')
    assert bar.locator(".quota-used").inner_text() == str(api["usage"]) == "7"
    expect(page.locator("#daily-usage")).to_be_visible()
    page.get_by_role("button", name="Switch to Pro").click()
    page.get_by_text("now on the Pro plan").wait_for()
    expect(page.get_by_role("row", name=re.compile("Pro \\(current\\)"))).to_be_visible()


def test_viewer_cannot_switch_plans(page, live_server, viewer_a):
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/usage/")
    assert page.get_by_role("button", name=re.compile("Switch to")).count() == 0
    expect(page.get_by_text("Only an owner of the account can switch plans.")).to_be_visible()


def test_a_role_change_takes_effect_on_the_next_request(page, live_server, owner_a, viewer_a):
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/keys/")
    assert page.get_by_role("button", name="Create key").count() == 0
    member = Membership.objects.get(user=viewer_a.user)
    owner = owner_a.login(Client())
    owner.post(f"/team/{member.pk}/", {"role": "admin"})
    page.reload()
    expect(page.get_by_role("button", name="Create key")).to_be_visible()


def test_overview_flags_agents_near_their_caps(page, live_server, owner_a, key_a):
    client = key_a.client()
    client.post("/v1/policies/spender", {"max_spend_usd_per_day": 10}, content_type="application/json")
    client.post("/v1/ai/run", {"agent_id": "spender", "tool": "t", "spend_usd": 9}, content_type="application/json")
    client.post("/v1/policies/calm", {"max_spend_usd_per_day": 10}, content_type="application/json")
    login(page, live_server, owner_a)
    panel = page.locator("section", has=page.get_by_role("heading", name="Agents needing attention"))
    assert "spender" in panel.inner_text() and "$9.00 of $10.00" in panel.inner_text()
    assert "calm" not in panel.inner_text()


# --- paid plans: the way to Stripe's hosted pages ---------------------------------------------------------------

CHECKOUT_URL = "https://checkout.stripe.com/c/pay/cs_test_Fake0001"  # what tests/support/fake_stripe.py answers
PORTAL_URL = "https://billing.stripe.com/p/session/test_Fake0001"


@pytest.fixture
def stripe_on(settings, account_a, plans):
    """Stripe configured against the local fake API, and account A back on Free (nothing bought yet)."""
    Account.objects.filter(pk=account_a.pk).update(plan=plans["free"])
    settings.STRIPE_ENABLED, settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = True, "sk_test_x", "whsec_x"
    settings.STRIPE_PRICE_IDS = {"pro": "price_pro_monthly", "agency": "price_agency_monthly"}
    settings.STRIPE_API_BASE = ""
    fakes = []

    def start(**kwargs) -> FakeStripe:
        fakes.append(FakeStripe(**kwargs))
        settings.STRIPE_API_BASE = fakes[-1].url
        return fakes[-1]

    yield start
    for fake in fakes:
        fake.stop()


def hosted_pages(page, pattern: str) -> tuple[list[str], list[str]]:
    """Answer the hosted pages matching ``pattern`` in the browser (this machine reaches no Stripe) and record each
    navigation to them, next to every Content-Security-Policy refusal Chromium reports. Chromium checks the policy
    before a request leaves, so a navigation that reaches the route was allowed; one the policy refuses never does.
    """
    reached, refused = [], []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)

    def answer(route) -> None:
        reached.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>Stripe</title><h1>Stripe</h1>")

    page.route(re.compile(pattern), answer)
    return reached, refused


def test_owner_reaches_stripe_checkout_and_the_portal_under_the_csp(page, live_server, owner_a, account_a, stripe_on):
    fake = stripe_on()
    reached, refused = hosted_pages(page, r"^https://(checkout|billing)\.stripe\.com/")
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/usage/")
    page.get_by_role("button", name="Subscribe to Pro").click()
    page.wait_for_url(CHECKOUT_URL, timeout=5_000)
    assert reached == [CHECKOUT_URL] and refused == []
    assert fake.paths() == ["/v1/customers", "/v1/checkout/sessions"]  # exactly one Checkout Session
    assert AuditEntry.objects.filter(account=account_a, action="billing.checkout.started").count() == 1

    page.goto(f"{live_server.url}/usage/")  # the owner comes back; the account has its Stripe customer now
    page.get_by_role("button", name="Manage billing").click()
    page.wait_for_url(PORTAL_URL, timeout=5_000)
    assert reached == [CHECKOUT_URL, PORTAL_URL] and refused == []
    assert fake.paths()[2:] == ["/v1/billing_portal/sessions"]
    assert BillingSubscription.objects.get(account=account_a).customer_id == "cus_Fake0001"


def test_checkout_on_a_custom_domain_is_a_link_the_owner_follows(page, live_server, owner_a, account_a, stripe_on):
    custom = "https://pay.example.test/c/pay/cs_test_Fake0001"  # Stripe's custom domains: not in the CSP
    fake = stripe_on(urls={"/v1/checkout/sessions": custom})
    reached, refused = hosted_pages(page, r"^https://pay\.example\.test/")
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/usage/")
    page.get_by_role("button", name="Subscribe to Pro").click()
    page.get_by_role("link", name="Continue to Stripe").click()
    page.wait_for_url(custom, timeout=5_000)
    assert reached == [custom] and refused == []
    assert fake.paths() == ["/v1/customers", "/v1/checkout/sessions"]
