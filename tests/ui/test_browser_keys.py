"""The operator UI in headless Chromium: log in, create a key (shown once, copyable), revoke it, log out."""

import pytest
from playwright.sync_api import expect

from billing.models import ApiKey
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.browser


def login(page, live_server, persona):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill(persona.email)
    page.get_by_label("Password").fill(persona.password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/")


def test_wrong_password_shows_an_error(page, live_server, owner_a):
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill(owner_a.email)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert "correct email" in page.get_by_role("alert").inner_text().lower()


def test_empty_login_fields_show_their_errors(page, live_server, db):
    page.goto(f"{live_server.url}/login/")
    page.get_by_role("button", name="Log in").click()
    error = page.locator("#id_username_error")
    expect(error).to_be_visible()
    assert "required" in error.inner_text()
    assert page.get_by_label("Email").get_attribute("aria-describedby") == "id_username_error"


def test_owner_creates_copies_and_revokes_a_key(page, live_server, owner_a):
    login(page, live_server, owner_a)
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page.get_by_text("No API keys yet.")).to_be_visible()

    page.get_by_label("Label (optional)").fill("support-bot staging")
    page.get_by_role("button", name="Create key").click()
    value = page.get_by_role("textbox", name="New API key").input_value()
    assert value.startswith("once_live_")
    page.get_by_role("button", name="Copy").click()
    page.get_by_text("Copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == value
    page.screenshot(path=str(ARTIFACTS / "api-key-created.png"), full_page=True)

    key = ApiKey.objects.get()
    assert key.label == "support-bot staging"
    page.reload()
    assert page.get_by_role("textbox", name="New API key").count() == 0  # shown once

    page.get_by_role("link", name=f"Revoke {key.preview}").click()
    page.get_by_role("button", name="Revoke key").click()
    page.get_by_text(f"Key {key.preview} revoked").wait_for()
    assert ApiKey.objects.get().revoked_at is not None

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{live_server.url}/login/")


def test_viewer_sees_keys_read_only(page, live_server, viewer_a, key_a):
    login(page, live_server, viewer_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    expect(page.get_by_text(key_a.api_key.preview)).to_be_visible()
    assert page.get_by_role("button", name="Create key").count() == 0
    assert page.get_by_role("link", name="Revoke").count() == 0


def test_form_fields_have_labels_and_keyboard_focus(page, live_server, owner_a):
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/keys/")
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
              .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
              .map(el => el.name)"""
    )
    assert unlabeled == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
