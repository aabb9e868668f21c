"""Governance in headless Chromium: edit a policy (invalid, valid — each save reviewed, then confirmed —, diff,
rollback), kill an agent from its page and see the next SDK call blocked, watch the timeline update live, and a viewer
who cannot edit."""

import pytest
from onceonly import OnceOnly
from playwright.sync_api import expect

from governance.models import Agent, PolicyVersion
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


def run_tool(key, live_server, **kwargs):
    with OnceOnly(api_key=key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as client:
        return client.ai.run_tool(**kwargs)


def test_policy_editor_invalid_then_valid_then_diff_and_rollback(page, live_server, owner_a, key_a):
    run_tool(key_a, live_server, agent_id="billing-agent", tool="stripe.charge", args={"n": 1})
    login(page, live_server, owner_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
    page.get_by_role("link", name="billing-agent").click()
    page.get_by_role("link", name="Set a policy").click()
    assert page.url == f"{live_server.url}/agents/{Agent.objects.get(agent_id='billing-agent').pk}/policy/"
    page.get_by_label("Max actions per hour").fill("-5")
    page.get_by_role("button", name="Review changes").click()
    expect(page.get_by_text("Must be a whole number from 0 to 1,000,000,000.")).to_be_visible()
    assert not PolicyVersion.objects.exists()

    page.get_by_label("Max actions per hour").fill("100")
    page.get_by_label("Max spend per day (USD)").fill("50")
    page.get_by_role("button", name="Review changes").click()
    page.get_by_role("button", name="Confirm: publish version 1").click()
    page.get_by_text("Policy saved as version 1").wait_for()
    page.get_by_label("Max actions per hour").fill("20")
    page.get_by_role("button", name="Review changes").click()
    page.get_by_role("button", name="Confirm: publish version 2").click()
    page.get_by_text("Policy saved as version 2").wait_for()

    page.get_by_label("Compare version").select_option("1")
    page.get_by_label("with").select_option("2")
    page.get_by_role("button", name="Show diff").click()
    assert page.locator("pre.diff .del").first.inner_text().strip() == '-  "max_actions_per_hour": 100,'
    assert page.locator("pre.diff .add").first.inner_text().strip() == '+  "max_actions_per_hour": 20,'
    page.get_by_role("button", name="Roll back to v1").click()
    page.get_by_role("button", name="Confirm: publish version 3").click()
    page.get_by_text("now version 3").wait_for()
    assert Agent.objects.get().policy == {"max_actions_per_hour": 100, "max_spend_usd_per_day": 50.0}


def test_kill_switch_from_the_agent_page_blocks_the_next_sdk_call(page, live_server, admin_a, key_a):
    assert run_tool(key_a, live_server, agent_id="rogue", tool="send_email", args={"n": 1}).allowed
    login(page, live_server, admin_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
    page.get_by_role("link", name="rogue").click()
    page.locator("#decisions-chart").wait_for()
    page.get_by_label("Reason (recorded in the audit log)").fill("sending spam")
    page.get_by_label("I understand this takes effect on the agent's very next call").check()
    page.get_by_role("button", name="Disable agent (kill switch)").click()
    page.get_by_text("disabled: its next call is blocked").wait_for()
    result = run_tool(key_a, live_server, agent_id="rogue", tool="send_email", args={"n": 2})
    assert (result.allowed, result.policy_reason) == (False, "agent_disabled")


def test_timeline_shows_a_new_decision_without_a_reload(page, live_server, viewer_a, key_a):
    run_tool(key_a, live_server, agent_id="bot", tool="first_tool", args={})
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/decisions/")
    expect(page.get_by_text("first_tool")).to_be_visible()
    run_tool(key_a, live_server, agent_id="bot", tool="second_tool", args={})
    page.get_by_text("second_tool").wait_for(timeout=10_000)  # arrives through the 3 s htmx poll
    assert page.locator("#timeline-rows tr").count() == 2
    page.get_by_role("link").filter(has_text=":").first.click()
    page.locator("#drawer").get_by_text("args_hash", exact=True).wait_for()  # the decision opens in the drawer


def test_viewer_cannot_edit_a_policy(page, live_server, viewer_a, key_a):
    run_tool(key_a, live_server, agent_id="bot", tool="t", args={})
    login(page, live_server, viewer_a)
    bot = Agent.objects.get(agent_id="bot").pk
    page.goto(f"{live_server.url}/agents/{bot}/policy/")
    assert page.get_by_role("button", name="Review changes").count() == 0
    page.goto(f"{live_server.url}/agents/{bot}/")
    assert page.get_by_role("button", name="Disable agent (kill switch)").count() == 0
