"""Tools in headless Chromium: register a tool pointing at the example receiver, send a test call, see the
signed request's headers and the receiver's response."""

import pytest
from playwright.sync_api import expect

from tests.governance.test_dispatch import SECRET, receiver  # noqa: F401 - the receiver fixture
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


def test_create_a_tool_and_send_a_test_call(page, live_server, owner_a, receiver):  # noqa: F811
    login(page, live_server, owner_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tools").click()
    page.get_by_role("link", name="Register a tool").click()
    page.get_by_label("Name").fill("send_email")
    page.get_by_label("URL").fill(f"{receiver}/ok")
    page.get_by_label("Signing secret").fill(SECRET)
    page.get_by_role("button", name="Save tool").click()
    page.get_by_text("Tool send_email saved.").wait_for()
    page.get_by_role("link", name="Send test call to send_email").click()
    page.get_by_label("Sample args (JSON object)").fill('{"to": "ops@acme.test"}')
    page.get_by_role("button", name="Send test call").click()
    page.get_by_role("heading", name="Executed — HTTP 200").wait_for()
    expect(page.locator("#request-headers").get_by_text("webhook-signature")).to_be_visible()
    assert "ops@acme.test" in page.locator("#response-body").inner_text()
