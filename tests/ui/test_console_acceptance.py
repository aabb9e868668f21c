"""Acceptance of the operator console (issue #19) in headless Chromium: from the overview an operator reaches "why was
agent X's last call blocked", with its numbers, in at most two clicks and inside the viewport, at desktop (1440×900)
and phone (390×844) sizes; the overview's charts draw and its live refresh swaps fresh data in; and screenshots of
the overview, the decision drawer, the Agents table and a policy page at both widths are written to test-artifacts/
(git-ignored) for a human to look at."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from governance.models import Agent
from tests.conftest import ARTIFACTS
from tests.support.decisions import decide
from tests.support.governance import JSON, governed_call, set_policy
from tests.ui.test_browser_decision_drawer import in_viewport
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

SIZES = [(1440, 900), (390, 844)]
BLOCKED = "stripe.refund: per-tool cap reached — 3 of 3 today (policy v1)"


def seed_console(key) -> Agent:
    """A small fleet, through the API as agents make it: billing-agent's last call blocked by its per-tool cap
    (3 refunds a day, the fourth refused) after a morning of other calls; support-bot near its daily spend cap;
    a research agent without a policy; newer calls of other agents after the block; and, straight into the log, a
    tool that failed most of its calls in the last hour. Returns billing-agent."""
    api = key.client()
    set_policy(
        api,
        "billing-agent",
        max_calls_per_tool={"stripe.refund": 3},
        max_spend_usd_per_day=50,
        max_actions_per_hour=200,
    )
    set_policy(api, "support-bot", max_spend_usd_per_day=10, max_actions_per_hour=100)
    for n in range(6):
        assert governed_call(api, "billing-agent", "stripe.charge", args={"n": n}, spend_usd=1.25).status_code == 200
    for n in range(12):
        assert governed_call(api, "support-bot", "llm.answer", args={"n": n}, spend_usd=0.7).status_code == 200
    for n in range(5):
        governed_call(api, "research-agent", "web.search", args={"n": n}, spend_usd=0.001)
    for n in range(4):
        body = governed_call(api, "billing-agent", "stripe.refund", args={"n": n}).json()
    assert body["decision"] == "blocked" and body["explanation"] == BLOCKED
    for n in range(8):  # other agents keep calling after the block: it is not simply the newest decision
        governed_call(api, "research-agent", "web.fetch", args={"m": n}, spend_usd=0.002)
    billing = Agent.objects.get(agent_id="billing-agent")
    crm = Agent.objects.create(account_id=billing.account_id, agent_id="crm-sync")
    decide(crm, tool="crm.update", outcome="failed", n=5, ts=timezone.now() - timedelta(minutes=4))
    decide(crm, tool="crm.update", n=2, ts=timezone.now() - timedelta(minutes=3))
    return billing


def charts_drawn(page, timeout: float = 10.0) -> None:
    """Wait for the overview's decisions chart (polled with evaluate: the CSP refuses wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate("!!(window.Chart && Chart.getChart(document.querySelector('canvas[data-ops-outcomes]')))"):
        assert time.monotonic() < deadline, "the overview's chart was not drawn"
        time.sleep(0.05)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_why_was_the_last_call_blocked_in_two_clicks_from_the_overview(
    page, live_server, owner_a, key_a, width, height
):
    billing = seed_console(key_a)
    page.set_viewport_size({"width": width, "height": height})
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/")
    clicks = 0

    # Click 1: billing-agent's row among the recently blocked decisions (the latest per agent) opens the drawer.
    blocked = page.locator("#operations section", has=page.get_by_role("heading", name="Recently blocked"))
    row = blocked.locator("tr", has=page.locator(f'a[href="/agents/{billing.pk}/"]'))
    assert row.count() == 1
    row.locator("a[data-drawer]").click()
    clicks += 1

    explanation = page.locator("#drawer .explanation-text")
    explanation.wait_for()
    assert clicks <= 2
    assert explanation.inner_text() == BLOCKED and "3 of 3" in explanation.inner_text()
    assert in_viewport(explanation), f"the explanation is outside the {width}×{height} viewport"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page is wider than it"


def test_overview_charts_draw_and_the_live_refresh_brings_new_data(page, live_server, owner_a, key_a):
    seed_console(key_a)
    page.set_viewport_size({"width": 1440, "height": 900})
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/?range=1h")
    ops = page.locator("#operations")
    assert ops.locator('a[href="?range=1h"][aria-current="page"]').count() == 1
    charts_drawn(page)
    mode = "Chart.getChart(document.querySelector('canvas[data-ops-outcomes]')).options.interaction.mode"
    assert page.evaluate(mode) == "index"  # the tooltip lists every outcome of a bucket
    assert page.evaluate("document.querySelectorAll('canvas[data-spend-chart]').length") == 2  # billing, support
    assert (
        "support-bot"
        in ops.locator("section", has=page.get_by_role("heading", name="Agents needing attention")).inner_text()
    )
    failing = ops.locator("section", has=page.get_by_role("heading", name="Failing tools")).inner_text()
    assert "crm.update" in failing and "5 of 7 calls failed (71%)" in failing
    assert "onceonly-operator" not in ops.inner_text()

    # A new blocked decision; the tab comes back into view (one refresh without waiting for the 15 s poll).
    key_a.client().post("/v1/policies/support-bot", {"blocked_tools": ["llm.answer"]}, content_type=JSON)
    governed_call(key_a.client(), "support-bot", "llm.answer", args={"late": True})
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.locator("#operations .ops-blocked", has_text="support-bot").wait_for()
    charts_drawn(page)
    assert page.evaluate("Object.keys(Chart.instances).length") == 3  # the swapped-out panel's charts were destroyed


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_console_screenshots(page, live_server, owner_a, key_a, width, height):
    """test-artifacts/console-<overview|decision-drawer|agents|policy>-<width>.png, for review."""
    billing = seed_console(key_a)
    page.set_viewport_size({"width": width, "height": height})
    login(page, live_server, owner_a)
    ARTIFACTS.mkdir(exist_ok=True)

    def shot(name: str, *, full_page: bool = True) -> None:
        path = ARTIFACTS / f"console-{name}-{width}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 10_000, f"{path.name} is blank"

    page.goto(f"{live_server.url}/")
    charts_drawn(page)
    shot("overview")
    page.locator("#operations .ops-blocked a[data-drawer]").first.click()
    page.locator("#drawer .explanation-text").wait_for()
    shot("decision-drawer", full_page=False)  # what the operator sees: the drawer over the overview
    page.goto(f"{live_server.url}/agents/")
    page.get_by_role("link", name="billing-agent").first.wait_for()
    shot("agents")
    page.goto(f"{live_server.url}/agents/{billing.pk}/policy/")
    shot("policy")
