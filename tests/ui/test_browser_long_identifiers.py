"""Long unbroken identifiers do not widen the page: a 200-character agent id, tool name or run id, a 120-character
account name (the longest allowed) and a 256-character lock key pushed most dashboard pages wider than the window.
The tests crawl every dashboard page reachable by links from the overview (so new pages are covered), plus the lock
lookup, a run timeline and a policy diff, and measure each in headless Chromium, for an owner and for a viewer (who
sees other pages: read-only ones)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.support.pages import (
    ACCOUNT,
    AGENT,
    KEY,
    RUN,
    TOOL,
    crawl,
    extra_urls,
    page_width,
    python_reprs,
    seed_long_identifiers,
)
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


@pytest.fixture
def long_names(key_a, owner_a):
    seed_long_identifiers(key_a, owner_a)


def _measure(page, url: str, visited: list, wide: list, reprs: list) -> int:
    """Record a crawled page: its URL, its width when wider than the window, its Python reprs. Returns the window's
    width."""
    visited.append(url)
    doc, win = page_width(page)
    if doc > win:
        wide.append((url, doc))
    reprs += [(url, found) for found in python_reprs(page)]
    return win


def test_pages_with_long_identifiers_fit_a_1280_px_window(page, live_server, owner_a, long_names):
    page.set_viewport_size({"width": 1280, "height": 900})
    login(page, live_server, owner_a)
    visited, wide, reprs = [], [], []
    for url in crawl(page, live_server.url, extra_urls()):
        _measure(page, url, visited, wide, reprs)
    assert len(visited) >= 15, visited  # the crawl reached the agent, policy, tool, run and lock pages
    assert any(AGENT in page_url or "/agents/" in page_url for page_url in visited)
    assert not wide, f"pages wider than the 1280 px window: {wide}"
    # Policies, audit before/after, results and metadata show as tables, diffs and JSON, never a Python repr.
    assert not reprs, f"Python reprs on the pages: {reprs}"


# Elements whose own text holds one of the long identifiers, and their rendered widths (not inside a <pre> or a
# .table-wrap, which scroll within their own box).
HOLDERS = """markers => [...document.querySelectorAll('body *')].filter(el => !el.closest('pre, .table-wrap') &&
    [...el.childNodes].some(n => n.nodeType === 3 && markers.some(m => n.textContent.includes(m))))
  .map(el => [el.tagName, Math.round(el.getBoundingClientRect().width)])"""
MARKERS = [AGENT[:40], TOOL[:40], RUN[:40], KEY[:40], ACCOUNT[:40], "L" * 40, "e" * 40]


@pytest.mark.parametrize("role", ["owner", "viewer"])
def test_every_page_fits_a_390_px_window(page, live_server, owner_a, viewer_a, long_names, role):
    """At phone width (390×844) no page is wider than the window — not the navigation (it folds behind "Menu"), not
    a table (it scrolls sideways inside its card), not a long identifier (it wraps)."""
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, live_server, owner_a if role == "owner" else viewer_a)
    wide, holders_wide, visited, shown, reprs = [], [], [], 0, []
    for url in crawl(page, live_server.url, extra_urls()):
        win = _measure(page, url, visited, wide, reprs)
        holders = page.evaluate(HOLDERS, MARKERS)
        shown += len(holders)
        holders_wide += [(url, tag, width) for tag, width in holders if width > win]
    assert len(visited) >= 12, visited
    assert shown >= 20, shown  # the identifiers were on the pages measured
    assert not wide, f"pages wider than the 390 px window: {wide}"
    assert not holders_wide, f"long identifiers wider than the 390 px window: {holders_wide}"
    assert not reprs, f"Python reprs on the pages: {reprs}"


def test_the_repr_check_finds_a_repr(page, live_server, owner_a):
    """The check can fail: a dict, a list or a Decimal printed with str() is found, JSON and code samples are not."""
    login(page, live_server, owner_a)
    page.set_content('<main><pre>{"a": null, "b": [1]}</pre><code>run(metadata={"task": "x"})</code></main>')
    assert python_reprs(page) == []
    for text in ("{'blocked_tools': ['x']}", "['a', 'b']", "{'a': None}", "Decimal('1.50')"):
        page.set_content(f"<main><details><summary>data</summary><dd>{text}</dd></details></main>")
        assert python_reprs(page), text


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
