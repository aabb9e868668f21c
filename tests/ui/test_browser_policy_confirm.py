"""Safe policy changes in headless Chromium (issue 20's acceptance): every change path — save, apply a template, roll
back — shows a diff and needs a confirm; an empty allow-list cannot be saved without the explicit choice; lowering a
cap below today's spend is a warning with the numbers. And the editor's chips, drawn as the operator types."""

import pytest
from playwright.sync_api import expect

from governance.models import Agent, PolicyVersion
from tests.support.pages import axe_violations
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

JSON = "application/json"


def set_policy(key, agent="bot", **fields):
    assert key.client().post(f"/v1/policies/{agent}", fields, content_type=JSON).status_code == 200
    return Agent.objects.get(agent_id=agent)


def review(page):
    return page.locator("section.policy-review")


def test_every_change_path_shows_a_diff_and_needs_a_confirm(page, live_server, owner_a, key_a):
    bot = set_policy(key_a, max_actions_per_hour=20, blocked_tools=["delete_*"])
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")

    # Save: the review first, with the change in words and the coloured diff; nothing published yet.
    page.get_by_label("Max actions per hour").fill("1000")
    page.get_by_role("button", name="Review changes").click()
    expect(review(page).get_by_text("max_actions_per_hour: 20 → 1,000")).to_be_visible()
    expect(review(page).locator("pre.diff .del").filter(has_text='"max_actions_per_hour": 20')).to_be_visible()
    expect(review(page).locator("pre.diff .add").filter(has_text='"max_actions_per_hour": 1000')).to_be_visible()
    assert PolicyVersion.objects.count() == 1
    review(page).get_by_role("button", name="Confirm: publish version 2").click()
    page.get_by_text("Policy saved as version 2.").wait_for()
    assert PolicyVersion.objects.count() == 2

    # A template: its own review page; Cancel publishes nothing, Confirm publishes it.
    page.locator("summary", has_text="permissive").click()
    page.get_by_role("button", name="Apply permissive").click()
    expect(page.get_by_role("heading", name="Apply the permissive template")).to_be_visible()
    expect(review(page).get_by_text("require_approval: set to * over $100.00")).to_be_visible()
    expect(review(page).locator("pre.diff .add").filter(has_text='"drop_*"')).to_be_visible()
    assert axe_violations(page) == []  # the review page of a template
    review(page).get_by_role("link", name="Cancel").click()
    page.get_by_role("heading", name="Policy of bot").wait_for()
    assert PolicyVersion.objects.count() == 2
    page.locator("summary", has_text="permissive").click()
    page.get_by_role("button", name="Apply permissive").click()
    review(page).get_by_role("button", name="Confirm: publish version 3").click()
    page.get_by_text("Template permissive applied as version 3.").wait_for()
    assert PolicyVersion.objects.get(version=3).source == "template:permissive"

    # A rollback: reviewed, then confirmed.
    page.get_by_role("button", name="Roll back to v1").click()
    expect(review(page).get_by_text("max_actions_per_hour: 1,000 → 20")).to_be_visible()
    expect(review(page).locator("pre.diff .add").filter(has_text='"delete_*"')).to_be_visible()
    assert PolicyVersion.objects.count() == 3
    review(page).get_by_role("button", name="Confirm: publish version 4").click()
    page.get_by_text("Rolled back to version 1: now version 4.").wait_for()
    assert Agent.objects.get().policy == {"blocked_tools": ["delete_*"], "max_actions_per_hour": 20}


def test_a_stale_confirm_shows_the_new_diff_and_publishes_nothing(page, live_server, owner_a, key_a):
    bot = set_policy(key_a, max_actions_per_hour=20)
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")
    page.get_by_label("Max actions per hour").fill("50")
    page.get_by_role("button", name="Review changes").click()
    set_policy(key_a, max_spend_usd_per_day=3)  # someone else's change, meanwhile
    review(page).get_by_role("button", name="Confirm: publish version 2").click()
    expect(
        page.get_by_text("The policy changed meanwhile: it is now version 2. Nothing was published.")
    ).to_be_visible()
    expect(review(page).get_by_text("max_spend_usd_per_day: cleared (was $3.00)")).to_be_visible()
    assert PolicyVersion.objects.count() == 2
    review(page).get_by_role("button", name="Confirm: publish version 3").click()
    page.get_by_text("Policy saved as version 3.").wait_for()
    assert Agent.objects.get().policy == {"max_actions_per_hour": 50}


def test_an_empty_allow_list_cannot_be_saved_without_the_explicit_choice(page, live_server, owner_a, key_a):
    bot = set_policy(key_a, max_actions_per_hour=20)
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")
    page.get_by_label("Only allow the tools listed below").check()
    expect(page.get_by_text("The allow-list is empty: tick “Block every tool (deny all)”")).to_be_visible()  # live
    page.get_by_role("button", name="Review changes").click()
    expect(page.locator(".field-error", has_text="The allow-list is empty: with “Only allow")).to_be_visible()
    assert page.locator("section.policy-review").count() == 0 and PolicyVersion.objects.count() == 1

    page.get_by_label("Block every tool (deny all)").check()
    page.get_by_role("button", name="Review changes").click()
    expect(review(page).get_by_text("This policy blocks every tool.")).to_be_visible()
    expect(review(page).get_by_text("allowed_tools: set to [] — no tool is allowed")).to_be_visible()
    assert axe_violations(page) == []
    # Unticked on the review page, the confirm is refused.
    review(page).get_by_label("Block every tool (deny all)").uncheck()
    review(page).get_by_role("button", name="Confirm: publish version 2").click()
    expect(page.locator(".field-error", has_text="The allow-list is empty")).to_be_visible()
    assert PolicyVersion.objects.count() == 1
    page.get_by_label("Block every tool (deny all)").check()
    page.get_by_role("button", name="Review changes").click()
    review(page).get_by_role("button", name="Confirm: publish version 2").click()
    page.get_by_text("Policy saved as version 2.").wait_for()
    assert Agent.objects.get().policy == {"allowed_tools": [], "max_actions_per_hour": 20}


def test_lowering_the_spend_cap_below_todays_spend_warns_with_the_numbers(page, live_server, owner_a, key_a):
    bot = set_policy(key_a, max_spend_usd_per_day=50)
    for n in range(2):
        body = {"agent_id": "bot", "tool": "send_email", "args": {"n": n}, "spend_usd": 6.20}
        assert key_a.client().post("/v1/ai/run", body, content_type=JSON).json()["allowed"]
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")
    page.get_by_label("Max spend per day (USD)").fill("10")
    page.get_by_role("button", name="Review changes").click()
    warning = review(page).locator("[data-warning=over_spend_cap]")
    expect(warning).to_have_text(
        "over a cap This agent already spent $12.40 today; the new cap $10.00 blocks every further call today."
    )
    assert PolicyVersion.objects.count() == 1


def test_the_tool_lists_are_checked_as_they_are_typed(page, live_server, owner_a, key_a):
    tool = {"name": "stripe.charge", "url": "https://tools.example.com/c", "auth": {"secret": "s" * 16}}
    assert key_a.client().post("/v1/tools", tool, content_type=JSON).status_code == 200
    bot = set_policy(key_a, max_actions_per_hour=20)
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")
    page.get_by_label("Blocked tools").fill("stripe.*\nstrpe.refund\nSTRIPE.CHARGE\nnothing.*")
    chips = page.locator('[data-chips-for="id_blocked_tools"] li')
    expect(chips).to_have_count(4)
    expect(chips.nth(0)).to_have_text("stripe.* matches stripe.charge")
    expect(chips.nth(1)).to_have_text("strpe.refund unknown tool: not registered, never called")
    expect(chips.nth(1).locator(".badge-warn")).to_be_visible()  # amber
    expect(chips.nth(2)).to_have_text("STRIPE.CHARGE known tool")
    expect(chips.nth(3)).to_have_text("nothing.* matches no known tool")
    # The review says the same, drawn by the server, with the unknown name in the warnings.
    page.get_by_role("button", name="Review changes").click()
    expect(review(page).locator("[data-warning=unknown_tool]")).to_contain_text("“strpe.refund” is not a registered")
    assert axe_violations(page) == []  # the editor's review: warnings, chips, diff, both forms
    review(page).get_by_role("button", name="Confirm: publish version 2").click()
    expect(page.locator(".msg-success")).to_have_text("Policy saved as version 2.")
    expect(page.locator(".msg-warning")).to_contain_text("strpe.refund")
