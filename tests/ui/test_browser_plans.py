"""Usage & plan, Team and the overview in headless Chromium."""

import re

import pytest
from django.test import Client

from billing.models import Membership
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
    assert page.locator("#daily-usage").is_visible()
    page.get_by_role("button", name="Switch to Pro").click()
    page.get_by_text("now on the Pro plan").wait_for()
    assert page.get_by_role("row", name=re.compile("Pro \\(current\\)")).is_visible()


def test_viewer_cannot_switch_plans(page, live_server, viewer_a):
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/usage/")
    assert page.get_by_role("button", name=re.compile("Switch to")).count() == 0
    assert page.get_by_text("Only an owner of the account can switch plans.").is_visible()


def test_a_role_change_takes_effect_on_the_next_request(page, live_server, owner_a, viewer_a):
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/keys/")
    assert page.get_by_role("button", name="Create key").count() == 0
    member = Membership.objects.get(user=viewer_a.user)
    owner = owner_a.login(Client())
    owner.post(f"/team/{member.pk}/", {"role": "admin"})
    page.reload()
    assert page.get_by_role("button", name="Create key").is_visible()


def test_overview_flags_agents_near_their_caps(page, live_server, owner_a, key_a):
    client = key_a.client()
    client.post("/v1/policies/spender", {"max_spend_usd_per_day": 10}, content_type="application/json")
    client.post("/v1/ai/run", {"agent_id": "spender", "tool": "t", "spend_usd": 9}, content_type="application/json")
    client.post("/v1/policies/calm", {"max_spend_usd_per_day": 10}, content_type="application/json")
    login(page, live_server, owner_a)
    panel = page.locator("section", has=page.get_by_role("heading", name="Agents needing attention"))
    assert "spender" in panel.inner_text() and "$9.00 of $10.00" in panel.inner_text()
    assert "calm" not in panel.inner_text()
