"""Single sign-on end to end (docs/operations.md §"Single sign-on (OpenID Connect)"): headless Chromium signs in at a
real OpenID Connect provider (oidc-provider from npm, tests/support/oidc.py) and lands on the dashboard with the role
its group maps to; a disallowed domain and an unknown operator are refused with their reason and nothing created;
with password sign-in off the form is gone and a posted password is refused; sign-out ends the provider's session."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

from billing import sso
from billing.choices import Role
from billing.models import AuditEntry, Membership
from billing.services import operator_create
from onceonly_site.sso_settings import oidc_settings
from tests.conftest import PASSWORD
from tests.support.oidc import CLIENT_ID, CLIENT_SECRET, OidcProvider

pytestmark = [pytest.mark.browser, pytest.mark.slow]

USERS = {
    "ada": {"email": "ada@acme.test", "email_verified": True, "groups": ["staff", "onceonly-admins"]},
    "vic": {"email": "vic@acme.test", "email_verified": True, "groups": ["onceonly-viewers"]},
    "eve": {"email": "eve@evil.test", "email_verified": True, "groups": ["onceonly-admins"]},
    "una": {"email": "una@acme.test", "email_verified": False, "groups": ["onceonly-admins"]},
}


@pytest.fixture(scope="module")
def provider(live_server):
    running = OidcProvider(live_server.url, USERS)
    yield running
    running.stop()


@pytest.fixture
def sso_on(settings, provider, account_a):
    """Single sign-on for the live server (in this process): Acme's members, roles from the groups claim."""

    def configure(**overrides):
        options = {
            "issuer": provider.url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "allowed_domains": ["acme.test"],
            "role_claim": "groups",
            "role_map": {"onceonly-admins": Role.ADMIN, "onceonly-viewers": Role.VIEWER},
            "account": account_a.name,
            "scopes": "openid email profile groups",
            **overrides,
        }
        for name, value in oidc_settings(**options).items():
            setattr(settings, name, value)

    sso.forget_metadata()
    configure()
    yield configure
    sso.forget_metadata()


def sign_in_at_provider(page, live_server, login):
    page.goto(f"{live_server.url}/login/")
    page.get_by_role("link", name="Sign in with SSO").click()
    page.locator("input[name=login]").fill(login)  # the provider's own (development) sign-in form
    page.locator("input[name=password]").fill("any")
    page.get_by_role("button", name="Sign-in").click()


def test_an_operator_lands_with_the_mapped_role_and_signs_out_at_the_provider(page, live_server, sso_on, account_a):
    ada = operator_create(account=account_a, email="ada@acme.test", password=PASSWORD, role=Role.VIEWER)
    sign_in_at_provider(page, live_server, "ada")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator(".account-name")).to_have_text("Acme · Admin")  # the group's role replaced viewer
    page.goto(f"{live_server.url}/tools/")
    expect(page.get_by_role("link", name="Register a tool")).to_be_visible()
    assert Membership.objects.get(user=ada, account=account_a).role == Role.ADMIN
    actions = list(AuditEntry.objects.filter(account=account_a).values_list("action", "actor_label"))
    assert ("billing.member.role_changed", "sso") in actions
    assert ("billing.operator.sso_signed_in", "ada@acme.test") in actions

    page.get_by_role("button", name="Log out").click()
    page.get_by_role("button", name="Yes, sign me out").click()  # the provider's end_session_endpoint
    page.wait_for_url(f"{live_server.url}/login/")
    page.get_by_role("link", name="Sign in with SSO").click()
    expect(page.locator("input[name=login]")).to_be_visible()  # the provider's session ended too


def test_a_new_operator_joins_as_viewer_when_just_in_time_creation_is_on(page, live_server, sso_on, account_a):
    sso_on(create_users=True)
    sign_in_at_provider(page, live_server, "vic")
    page.wait_for_url(f"{live_server.url}/")
    expect(page.locator(".account-name")).to_have_text("Acme · Viewer")
    page.goto(f"{live_server.url}/tools/")
    expect(page.get_by_role("heading", name="Tools")).to_be_visible()
    expect(page.get_by_role("link", name="Register a tool")).to_have_count(0)
    vic = get_user_model().objects.get(username="vic@acme.test")
    assert not vic.has_usable_password()
    entry = AuditEntry.objects.get(account=account_a, action="billing.member.added")
    assert entry.data == {"email": "vic@acme.test", "role": "viewer", "source": "sso"}


@pytest.mark.parametrize(
    ("login", "reason"),
    [
        ("eve", "Addresses at evil.test may not sign in to this server."),
        ("una", "The sign-in provider has not verified una@acme.test"),
    ],
)
def test_a_disallowed_domain_or_unverified_email_is_refused_and_nothing_created(
    page, live_server, sso_on, login, reason
):
    sso_on(create_users=True)
    sign_in_at_provider(page, live_server, login)
    expect(page.get_by_role("heading", name="Sign-in refused")).to_be_visible()
    expect(page.locator("#sso-refused")).to_contain_text(reason)
    assert not get_user_model().objects.filter(email=USERS[login]["email"]).exists()
    assert not Membership.objects.filter(user__username=USERS[login]["email"]).exists()
    page.goto(f"{live_server.url}/")
    assert page.url.startswith(f"{live_server.url}/login/")  # not signed in


def test_without_just_in_time_creation_only_existing_operators_get_in(page, live_server, sso_on):
    sign_in_at_provider(page, live_server, "vic")
    expect(page.locator("#sso-refused")).to_contain_text("vic@acme.test is not an operator of this server")
    assert not get_user_model().objects.filter(username="vic@acme.test").exists()


def test_password_login_off_hides_the_form_and_refuses_a_posted_password(page, live_server, sso_on, owner_a):
    sso_on(password_login=False)
    page.goto(f"{live_server.url}/login/")
    expect(page.get_by_role("link", name="Sign in with SSO")).to_be_visible()
    expect(page.get_by_label("Password")).to_have_count(0)
    expect(page.locator("form[method=post]")).to_have_count(0)

    client = Client()
    response = client.post("/login/", {"username": owner_a.email, "password": owner_a.password})
    assert response.status_code == 403
    assert b"Password sign-in is turned off" in response.content
    assert "_auth_user_id" not in client.session
    admin = client.post("/admin/login/", {"username": owner_a.email, "password": owner_a.password})
    assert admin.status_code == 200 and b"Password sign-in is turned off" in admin.content
    assert "_auth_user_id" not in client.session
