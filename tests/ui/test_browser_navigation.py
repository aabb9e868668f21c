"""The main navigation (templates/base.html, onceonly_site/navigation.py) on every dashboard page: exactly one link
marked aria-current="page" — the page's section, detail pages included (an agent's policy → Agents) — drawn the same
way everywhere (`CurrentSection`, run in the one crawl per persona and width of tests/ui/test_browser_every_page.py;
this module proves it can fail); at phone width it folds behind "Menu" and every section stays reachable; and the
favicon is served."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from tests.support.pages import PageCheck
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "static"
# The section of each first path segment; a page under a segment not listed fails the test until it is placed.
SECTION = {
    "": "Overview",
    "agents": "Agents",
    "decisions": "Decisions",
    "approvals": "Approvals",
    "alerts": "Alerts",
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
    "Approvals",
    "Alerts",
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


class CurrentSection(PageCheck):
    """Every page marks exactly one link of the main navigation aria-current="page": its section (SECTION, by the
    first path segment; detail pages included); the current section is drawn the same way (bold 600) on every page of
    a crawl; and the crawl reached every section."""

    title = "the main navigation does not mark exactly the page's section, the same way everywhere"

    def __init__(self) -> None:
        self.found: list[str] = []
        self.looks: dict[tuple[str, str, str], str] = {}  # how the current link is drawn → the first page drawn so

    def visit(self, page, url: str) -> None:
        segment = urlsplit(url).path.strip("/").split("/")[0]
        marked = page.evaluate(MARKED)
        if segment not in SECTION:
            self.found.append(f"{url}: a page of no section (add it to onceonly_site/navigation.py and here)")
        elif [(m["label"], m["value"]) for m in marked] != [(SECTION[segment], "page")]:
            shown = [(m["label"], m["value"]) for m in marked]
            self.found.append(f"{url}: marks {shown} instead of only {SECTION[segment]!r} (aria-current=page)")
        for m in marked:
            self.looks.setdefault((m["weight"], m["bottom"], m["left"]), url)

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        found = list(self.found)
        reached = {SECTION.get(urlsplit(u).path.strip("/").split("/")[0]) for u in visited}
        if set(SECTIONS) - reached:
            found.append(f"no page of these sections was reached: {sorted(set(SECTIONS) - reached)}")
        if not self.looks:
            found.append(f"no page of the {len(visited)} visited marks a section as current")
        if len(self.looks) > 1:
            drawn = [f"{look} (first on {url})" for look, url in self.looks.items()]
            found.append(f"the current section is drawn differently on different pages: {drawn}")
        found += [
            f"{url}: the current section is drawn with font weight {look[0]}, not 600"
            for look, url in self.looks.items()
            if look[0] != "600"
        ]
        return found


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


def test_the_section_check_finds_a_wrong_mark(page, live_server, owner_a):
    """The check can fail: a page that marks another section, one that marks two, a page of no section, sections the
    crawl never reached, and a current section drawn another way are found."""
    login(page, live_server, owner_a)
    check = CurrentSection()
    check.visit(page, "/")  # the overview, marked as it is served
    check.visit(page, "/agents/")  # …seen as the agents page: it marks Overview
    page.evaluate("""() => document.querySelector('nav[aria-label="Main"] a[href="/team/"]')
                             .setAttribute('aria-current', 'page')""")
    check.visit(page, "/team/x/")
    check.visit(page, "/nowhere/")
    page.evaluate("""() => { document.querySelector('nav[aria-label="Main"] a[href="/team/"]')
                               .style.fontWeight = '400'; }""")  # CSSOM: allowed by the page's CSP
    check.visit(page, "/team/y/")
    found = check.problems(page, live_server.url, ["/", "/agents/", "/team/x/", "/nowhere/", "/team/y/"])
    assert not any(line.startswith("/: ") for line in found), found
    assert "/agents/: marks [('Overview', 'page')] instead of only 'Agents' (aria-current=page)" in found, found
    assert "/team/x/: marks [('Overview', 'page'), ('Team', 'page')] instead of only 'Team' (aria-current=page)" in (
        found
    )
    assert any(line.startswith("/nowhere/: a page of no section") for line in found), found
    assert any(line.startswith("no page of these sections was reached: ['API keys'") for line in found), found
    assert any(line.startswith("the current section is drawn differently on different pages") for line in found)
    assert "/team/y/: the current section is drawn with font weight 400, not 600" in found, found
