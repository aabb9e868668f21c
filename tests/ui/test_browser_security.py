"""The dashboard under its Content-Security-Policy in headless Chromium: no inline script, handler or style is
refused on any page (the ``page`` fixture fails a test on any violation), and what inline code used to do
(confirm dialogs, bar widths) still happens."""

import pytest
from playwright.sync_api import expect

from governance.models import Agent
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

PAGES = [
    "/",
    "/keys/",
    "/usage/",
    "/team/",
    "/settings/",
    "/agents/",
    "/agents/{bot}/",
    "/agents/{bot}/policy/",
    "/decisions/",
    "/audit/",
    "/tools/",
    "/locks/",
    "/runs/",
    "/runs/timeline/?run_id=r1",
    "/api/docs/",
]


def test_every_page_renders_under_the_policy(page, live_server, owner_a, key_a):
    client = key_a.client()
    client.post("/v1/check-lock", {"key": "k1"}, content_type="application/json")
    decided = client.post(
        "/v1/ai/run",
        {"agent_id": "bot", "tool": "search", "args": {"run_id": "r1"}, "spend_usd": 1},
        content_type="application/json",
    ).json()
    login(page, live_server, owner_a)
    header = None
    bot = Agent.objects.get(agent_id="bot").pk  # dashboard URLs name agents by their row (governance/urls.py)
    for path in [*(pattern.format(bot=bot) for pattern in PAGES), f"/decisions/{decided['decision_id']}/"]:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        if not path.startswith("/api/"):
            header = response.headers["content-security-policy"]
    assert "script-src 'self'" in header and "'unsafe-inline'" not in header
    bar = page.goto(f"{live_server.url}/usage/") and page.locator('.quota[data-kind="make"] .bar span')
    assert bar.evaluate("el => el.style.width") != ""  # sized by app.js, not by a style attribute


def test_removing_a_member_still_asks_first(page, live_server, owner_a, viewer_a):
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/team/")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name=f"Remove {viewer_a.email}").click()
    assert asked == [f"Remove {viewer_a.email} from the account?"]
    expect(page.get_by_role("button", name=f"Remove {viewer_a.email}")).to_be_visible()  # dismissed: still a member
