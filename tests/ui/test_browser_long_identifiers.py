"""Long unbroken identifiers do not widen the page: a 200-character agent id, tool name or run id, a 120-character
account name (the longest allowed) and a 256-character lock key pushed most dashboard pages wider than the window.
And no page shows a Python repr (str() of a dict, a list, a Decimal…) where JSON, a table or words belong.

The checks (`PageFit`, `NoPythonRepr`) run in the one crawl per persona and width of
tests/ui/test_browser_every_page.py: every dashboard page reachable by links from the overview (so new pages are
covered), plus the lock lookup, a run timeline and a policy diff, measured in headless Chromium at 1280 px (owner,
admin, viewer) and 390 px (owner and viewer, who sees other pages: read-only ones). This module proves they can
fail, and that the menu folds."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.support.pages import ACCOUNT, AGENT, KEY, RUN, TOOL, PageCheck, page_width, python_reprs
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

# Elements whose own text holds one of the long identifiers, and their rendered widths (not inside a <pre> or a
# .table-wrap, which scroll within their own box).
HOLDERS = """markers => [...document.querySelectorAll('body *')].filter(el => !el.closest('pre, .table-wrap') &&
    [...el.childNodes].some(n => n.nodeType === 3 && markers.some(m => n.textContent.includes(m))))
  .map(el => [el.tagName, Math.round(el.getBoundingClientRect().width)])"""
MARKERS = [AGENT[:40], TOOL[:40], RUN[:40], KEY[:40], ACCOUNT[:40], "L" * 40, "e" * 40]
MIN_SHOWN = 20  # elements holding a long identifier over a crawl: fewer, and the seed did not reach the pages


class PageFit(PageCheck):
    """No page is wider than the window — not the navigation (it folds behind "Menu" below 960 px), not a table (it
    scrolls sideways inside its card) — and no element holding a long identifier is (it wraps); and the identifiers
    were on the pages measured."""

    title = "pages or long identifiers wider than the window"

    def __init__(self) -> None:
        self.found: list[str] = []
        self.shown = 0

    def visit(self, page, url: str) -> None:
        doc, win = page_width(page)
        if doc > win:
            self.found.append(f"{url}: the page is {doc} px wide in a {win} px window")
        holders = page.evaluate(HOLDERS, MARKERS)
        self.shown += len(holders)
        self.found += [
            f"{url}: a long identifier's <{tag}> is {width} px wide in a {win} px window"
            for tag, width in holders
            if width > win
        ]

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        missing = []
        if self.shown < MIN_SHOWN:
            missing = [
                f"only {self.shown} elements held a long identifier on {len(visited)} pages (at least "
                f"{MIN_SHOWN} expected): the seeded identifiers did not reach the pages measured"
            ]
        return missing + self.found


class NoPythonRepr(PageCheck):
    """Policies, audit before/after, results and metadata show as tables, diffs and JSON, never a Python repr (the
    <main> text, hidden parts included)."""

    title = "Python reprs on the pages"

    def __init__(self) -> None:
        self.found: list[str] = []

    def visit(self, page, url: str) -> None:
        self.found += [f"{url}: …{' '.join(found.split())}…" for found in python_reprs(page)]

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        return self.found


def test_the_repr_check_finds_a_repr(page, live_server, owner_a):
    """The check can fail: a dict, a list or a Decimal printed with str() is found, JSON and code samples are not."""
    login(page, live_server, owner_a)
    page.set_content('<main><pre>{"a": null, "b": [1]}</pre><code>run(metadata={"task": "x"})</code></main>')
    assert python_reprs(page) == []
    check, texts = NoPythonRepr(), ("{'blocked_tools': ['x']}", "['a', 'b']", "{'a': None}", "Decimal('1.50')")
    for i, text in enumerate(texts):
        page.set_content(f"<main><details><summary>data</summary><dd>{text}</dd></details></main>")
        assert python_reprs(page), text
        check.visit(page, f"/{i}/")
    # The check the crawl runs names each page and what it found there.
    found = check.problems(page, live_server.url, [])
    for i, text in enumerate(texts):
        assert any(line.startswith(f"/{i}/: …") and text in line for line in found), (text, found)


def test_the_width_check_finds_a_wide_page_and_a_wide_identifier(page, live_server, owner_a):
    """The check can fail: a page wider than the window, and a long identifier that does not wrap, are found."""
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, live_server, owner_a)
    page.set_content(f'<main><a href="/x/">{AGENT}</a></main>')  # no stylesheet: the identifier does not wrap
    check = PageFit()
    check.visit(page, "/x/")
    found = check.problems(page, live_server.url, ["/x/"])
    assert found[0].startswith("only 1 elements held a long identifier"), found
    assert found[1].startswith("/x/: the page is ") and found[1].endswith(" px wide in a 390 px window"), found
    assert found[2].startswith("/x/: a long identifier's <A> is "), found


def test_the_menu_folds_at_390_px_and_opens_with_one_click(page, live_server, owner_a):
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, live_server, owner_a)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    page.locator("summary.nav-toggle").click()
    expect(nav.get_by_role("link", name="Agents")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    expect(nav.get_by_role("link", name="Agents")).to_be_visible()
    expect(page.locator("summary.nav-toggle")).to_be_hidden()
