"""The decision drawer in headless Chromium: a click anywhere on a decision row opens the decision in the drawer, its
explanation inside the viewport at desktop (1440×900) and phone (390×844) sizes; Escape closes it and gives focus
back; the decision's own URL is a full page with the navigation."""

from __future__ import annotations

import pytest

from governance.models import Agent
from tests.support.governance import JSON, set_policy
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

SENTENCE = "stripe.refund: per-tool cap reached — 3 of 3 today (policy v1)"


def blocked_among_many(key, newer: int = 30) -> int:
    """A blocked decision (per-tool cap 3, 4th call) below `newer` newer ones: the row is far down the timeline."""
    client = key.client()
    set_policy(client, "billing-agent", max_calls_per_tool={"stripe.refund": 3})
    for n in range(4):
        body = client.post(
            "/v1/ai/run", {"agent_id": "billing-agent", "tool": "stripe.refund", "args": {"n": n}}, content_type=JSON
        ).json()
    assert body["explanation"] == SENTENCE
    for n in range(newer):
        client.post(
            "/v1/ai/run", {"agent_id": "billing-agent", "tool": "send_email", "args": {"n": n}}, content_type=JSON
        )
    return body["decision_id"]


def in_viewport(locator) -> bool:
    box = locator.evaluate(
        "el => { const r = el.getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom, window.innerWidth, window.innerHeight, r.width, r.height]; }"
    )
    left, top, right, bottom, width, height, w, h = box
    return w > 0 and h > 0 and left >= 0 and top >= 0 and right <= width and bottom <= height


@pytest.mark.parametrize(("width", "height"), [(1440, 900), (390, 844)])
def test_a_row_click_opens_the_decision_in_view_and_escape_closes_it(page, live_server, owner_a, key_a, width, height):
    decision_id = blocked_among_many(key_a)
    page.set_viewport_size({"width": width, "height": height})
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/decisions/")
    drawer = page.locator("#drawer")
    assert drawer.is_hidden()
    row = page.locator(f'#timeline-rows tr[data-id="{decision_id}"]')
    row.locator("td .badge").click()  # not a link: the row itself is the target
    text = drawer.locator(".explanation-text")
    text.wait_for()
    assert text.inner_text() == SENTENCE
    assert in_viewport(text), f"the explanation is outside the {width}×{height} viewport"
    assert drawer.locator("#drawer-title").inner_text() == f"Decision #{decision_id}"
    assert page.evaluate("document.getElementById('drawer').contains(document.activeElement)")
    assert page.url == f"{live_server.url}/decisions/"  # opened in place, the list stays

    page.keyboard.press("Escape")
    drawer.wait_for(state="hidden")
    opener = row.locator("a[data-drawer]")
    assert page.evaluate("el => document.activeElement === el", opener.element_handle())

    opener.click()  # the time link opens it too; the close button closes it
    text.wait_for()
    drawer.get_by_role("button", name="Close the details panel").click()
    drawer.wait_for(state="hidden")

    page.goto(f"{live_server.url}/decisions/{decision_id}/")  # the direct URL: a full page with the navigation
    assert page.locator('nav[aria-label="Main"]').count() == 1
    assert page.title().startswith(f"Decision #{decision_id}")
    explanation = page.locator("main .explanation-text")
    assert explanation.inner_text() == SENTENCE and in_viewport(explanation)
    agent = Agent.objects.get()
    page.get_by_role("link", name="billing-agent").first.click()
    page.wait_for_url(f"{live_server.url}/agents/{agent.pk}/")


def test_agent_page_rows_open_the_drawer(page, live_server, viewer_a, key_a):
    decision_id = blocked_among_many(key_a, newer=5)  # the agent page shows its 20 latest
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/agents/{Agent.objects.get().pk}/")
    page.locator(f'tr[data-id="{decision_id}"] td .badge').click()
    page.locator("#drawer .explanation-text").wait_for()
    assert page.locator("#drawer .explanation-text").inner_text() == SENTENCE
