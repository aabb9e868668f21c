"""The two other change paths of issue 20 in headless Chromium — a policies file uploaded (import) and a shadow
candidate promoted: each shows the diff and publishes nothing until its confirm."""

import pytest
from playwright.sync_api import expect

from governance.models import Agent, PolicyVersion
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

JSON = "application/json"


def test_an_uploaded_file_shows_its_diff_and_applies_only_on_confirm(page, live_server, owner_a, key_a, tmp_path):
    key_a.client().post("/v1/policies/bot", {"max_actions_per_hour": 20}, content_type=JSON)
    upload = tmp_path / "policies.yaml"
    upload.write_text("agents:\n  bot:\n    max_actions_per_hour: 35\n  helper:\n    blocked_tools: [delete_*]\n")
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/")
    page.get_by_role("link", name="Policies as code").click()
    page.get_by_label("Policies file").set_input_files(str(upload))
    page.get_by_role("button", name="Preview the changes").click()
    expect(page.get_by_text("max_actions_per_hour: 20 → 35")).to_be_visible()
    expect(page.locator("pre.diff .add").filter(has_text='"max_actions_per_hour": 35').first).to_be_visible()
    assert PolicyVersion.objects.count() == 1 and not Agent.objects.filter(agent_id="helper").exists()
    page.get_by_role("button", name="Confirm: apply policies.yaml").click()
    expect(page.get_by_text("policies.yaml").first).to_be_visible()
    assert Agent.objects.get(agent_id="bot").policy == {"max_actions_per_hour": 35}
    assert Agent.objects.get(agent_id="helper").policy == {"blocked_tools": ["delete_*"]}
    assert PolicyVersion.objects.filter(source="file policies.yaml").count() == 2


def test_a_shadow_candidate_is_promoted_through_its_diff(page, live_server, owner_a, key_a):
    key_a.client().post("/v1/policies/bot", {"max_actions_per_hour": 20}, content_type=JSON)
    bot = Agent.objects.get(agent_id="bot")
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/agents/{bot.pk}/policy/")
    page.get_by_label("Max actions per hour").fill("3")
    page.get_by_role("button", name="Try as shadow").click()
    expect(page.get_by_role("heading", name="Shadow candidate")).to_be_visible()
    for n in range(5):
        body = {"agent_id": "bot", "tool": "search", "args": {"n": n}}
        assert key_a.client().post("/v1/ai/run", body, content_type=JSON).json()["decision"] == "allowed"
    page.reload()
    expect(page.locator("#shadow")).to_contain_text("it would have blocked 2 that went through")
    page.get_by_role("button", name="Promote…").click()
    expect(page.get_by_text("max_actions_per_hour: 20 → 3")).to_be_visible()
    assert PolicyVersion.objects.count() == 1
    page.get_by_role("button", name="Confirm: publish version 2").click()
    page.get_by_text("Shadow candidate promoted: now version 2.").wait_for()
    assert PolicyVersion.objects.count() == 2 and Agent.objects.get(pk=bot.pk).policy == {"max_actions_per_hour": 3}
