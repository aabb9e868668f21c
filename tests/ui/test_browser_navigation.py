"""The main navigation (templates/base.html, onceonly_site/navigation.py) on every dashboard page: exactly one link
marked aria-current="page" — the page's section, detail pages included (an agent's policy → Agents) — drawn the same
way everywhere; at phone width it folds behind "Menu" and every section stays reachable; and the favicon is served."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.support.pages import crawl, extra_urls, seed_long_identifiers
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "static"
# The section of each first path segment; a page under a segment not listed fails the test until it is placed.
SECTION = {
    "": "Overview",
    "agents": "Agents",
    "decisions": "Decisions",
    "tools": "Tools",
    "runs": "Runs",
    "locks": "Locks & leases",
    "keys": "API keys",
    "audit": "Audit log",
    "usage": "Usage & plan",
    "billing": "Usage & plan",
    "team": "Team",
    "settings": "Settings",
}
SECTIONS = [
    "Overview",
    "Agents",
    "Decisions",
    "Tools",
    "Runs",
    "Locks & leases",
    "API keys",
    "Audit log",
    "Usage & plan",
    "Team",
    "Settings",
]
MARKED = """() => [...document.querySelectorAll('nav[aria-label="Main"] a[aria-current]')].map(a => {
  const s = getComputedStyle(a);
  return {label: a.textContent.trim(), value: a.getAttribute('aria-current'), weight: s.fontWeight,
          bottom: s.borderBottomColor, left: s.borderLeftWidth + ' ' + s.borderLeftColor};
})"""


@pytest.fixture
def seeded(key_a, owner_a):
    seed_long_identifiers(key_a, owner_a)


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_marks_its_section_and_only_it(page, live_server, owner_a, seeded, width):
    page.set_viewport_size({"width": width, "height": 900})
    login(page, live_server, owner_a)
    wrong, looks, visited = [], set(), []
    for url in crawl(page, live_server.url, extra_urls()):
        visited.append(url)
        segment = urlsplit(url).path.strip("/").split("/")[0]
        assert segment in SECTION, f"{url}: a page of no section (add it to onceonly_site/navigation.py and here)"
        marked = page.evaluate(MARKED)
        if [(m["label"], m["value"]) for m in marked] != [(SECTION[segment], "page")]:
            wrong.append((url, marked))
        looks.update((m["weight"], m["bottom"], m["left"]) for m in marked)
    assert len(visited) >= 15, visited
    assert {SECTION[urlsplit(u).path.strip("/").split("/")[0]] for u in visited} == set(SECTIONS)
    assert not wrong, f"pages whose main navigation does not mark exactly their section: {wrong}"
    assert len(looks) == 1, f"the current section is drawn differently on different pages: {looks}"
    assert next(iter(looks))[0] == "600"


def test_the_phone_menu_opens_reaches_every_section_and_closes(page, live_server, owner_a):
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, live_server, owner_a)
    nav = page.get_by_role("navigation", name="Main")
    toggle = page.locator("summary.nav-toggle")
    expect(toggle).to_be_visible()
    expect(nav).to_be_hidden()
    # By keyboard: the summary takes focus and Enter opens it; every section is there, inside the window.
    toggle.focus()
    page.keyboard.press("Enter")
    for label in SECTIONS:
        link = nav.get_by_role("link", name=label, exact=True)
        expect(link, label).to_be_visible()
        box = link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (label, box)
    # Escape folds it again and gives focus back to the toggle.
    page.keyboard.press("Escape")
    expect(nav).to_be_hidden()
    assert page.evaluate("() => document.activeElement.classList.contains('nav-toggle')")
    # A section reached through the menu: its page loads with the menu folded and that section marked.
    toggle.click()
    nav.get_by_role("link", name="Team", exact=True).click()
    page.wait_for_url(f"{live_server.url}/team/")
    expect(nav).to_be_hidden()
    assert page.evaluate(MARKED)[0]["label"] == "Team"
    page.set_viewport_size({"width": 1280, "height": 900})
    expect(nav).to_be_visible()
    expect(toggle).to_be_hidden()


def test_the_favicon_is_linked_and_served(page, live_server, owner_a):
    login(page, live_server, owner_a)
    href = page.locator('head link[rel="icon"]').get_attribute("href")
    assert href and href.endswith(".svg")
    icon = page.request.get(live_server.url + href)
    assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.body() == (STATIC / "favicon.svg").read_bytes()
    # Browsers that ask for /favicon.ico by themselves are sent to the same file.
    legacy = page.request.get(f"{live_server.url}/favicon.ico", max_redirects=0)
    assert legacy.status == 302 and legacy.headers["location"].endswith(href)
    # And the login page (no session) has it too.
    page.context.clear_cookies()
    page.goto(f"{live_server.url}/login/")
    assert page.locator('head link[rel="icon"]').get_attribute("href") == href
