"""The dashboard's login always signs in the submitted credentials and rotates the session (billing/views.py,
LoginView): a session planted in a victim's browser (session fixation) does not survive the victim's own login.
A GET of /login/ while signed in still redirects to the overview; the failed-login lockout still applies."""

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.test import Client
from playwright.sync_api import expect

from tests.conftest import PASSWORD

COOKIE = settings.SESSION_COOKIE_NAME


def session_key(client: Client) -> str:
    return client.cookies[COOKIE].value


def signed_in_as(cookie: str) -> str | None:
    """Who a request carrying only this session cookie is signed in as (the overview shows the login)."""
    client = Client()
    client.cookies[COOKIE] = cookie
    response = client.get("/")
    if response.status_code != 200:
        assert response.status_code == 302 and response["Location"].startswith("/login/"), response.status_code
        return None
    return response.wsgi_request.user.get_username()


def test_a_planted_session_does_not_survive_the_victims_login(owner_a, owner_b):
    attacker = owner_b.login(Client())
    planted = session_key(attacker)
    victim = Client()
    victim.cookies[COOKIE] = planted  # e.g. tossed from a sibling subdomain, or set on a shared machine
    assert signed_in_as(planted) == owner_b.email

    response = victim.post("/login/", {"username": owner_a.email, "password": PASSWORD})

    assert response.status_code == 302 and response["Location"] == "/"
    assert session_key(victim) != planted  # rotated
    assert victim.session[SESSION_KEY] == str(owner_a.user.pk)  # the victim's own credentials were checked
    overview = victim.get("/").content.decode()
    assert owner_a.account.name in overview and owner_b.account.name not in overview
    assert signed_in_as(session_key(victim)) == owner_a.email  # the victim's cookie is not the attacker's account
    assert signed_in_as(planted) is None  # the attacker's cookie is dead: no access to the victim's account
    assert attacker.get("/")["Location"].startswith("/login/")  # the session was ended, not handed over


def test_signing_in_again_as_the_same_operator_rotates_the_session(owner_a):
    client = owner_a.login(Client())
    before = session_key(client)
    assert client.post("/login/", {"username": owner_a.email, "password": PASSWORD}).status_code == 302
    assert session_key(client) != before
    assert signed_in_as(before) is None and signed_in_as(session_key(client)) == owner_a.email


def test_a_wrong_password_posted_with_a_session_is_checked_and_counted(owner_a, owner_b, settings):
    """A POST is always a sign-in attempt: wrong credentials get the form's error (and count towards the lockout)
    rather than a redirect into whatever session the browser carries."""
    settings.ONCEONLY_LOGIN_MAX_FAILURES = 2
    attacker = owner_b.login(Client())
    planted = session_key(attacker)
    victim = Client()
    victim.cookies[COOKIE] = planted
    for _ in range(2):
        response = victim.post("/login/", {"username": owner_a.email, "password": "not-the-password"})
        assert response.status_code == 200 and "correct email" in response.content.decode()
    locked = victim.post("/login/", {"username": owner_a.email, "password": PASSWORD})
    assert locked.status_code == 429 and "Too many failed sign-in attempts" in locked.content.decode()
    assert signed_in_as(session_key(victim)) != owner_a.email  # the lockout held: not signed in as the victim


def test_a_get_of_the_login_page_while_signed_in_still_redirects(owner_a):
    client = owner_a.login(Client())
    response = client.get("/login/")
    assert response.status_code == 302 and response["Location"] == "/"
    assert Client().get("/login/").status_code == 200


@pytest.mark.browser
def test_a_planted_session_does_not_survive_the_login_in_chromium(page, live_server, owner_a, owner_b):
    """The same attack in a real browser: the victim opens the login page, the attacker's session cookie is set in
    the victim's browser, the victim submits their own email and password."""
    planted = session_key(owner_b.login(Client()))
    page.goto(f"{live_server.url}/login/")
    host = live_server.url.split("//", 1)[1].split(":")[0]
    page.context.add_cookies([{"name": COOKIE, "value": planted, "domain": host, "path": "/"}])
    page.get_by_label("Email").fill(owner_a.email)
    page.get_by_label("Password").fill(owner_a.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/")
    assert page.locator(".user").inner_text() == owner_a.email
    expect(page.get_by_role("heading", name=owner_a.account.name)).to_be_visible()
    [cookie] = [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert cookie["value"] != planted
    assert signed_in_as(planted) is None and signed_in_as(cookie["value"]) == owner_a.email
