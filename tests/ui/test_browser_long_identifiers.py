"""Long unbroken identifiers do not widen the page: a 200-character agent id, tool name or run id, a 120-character
account name (the longest allowed) and a 256-character lock key pushed most dashboard pages wider than the window.
The test crawls every dashboard page reachable by links from the overview (so new pages are covered) and measures
each in headless Chromium."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from billing.models import Account, ApiKey
from billing.services import membership_add
from governance.models import Agent
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

JSON = "application/json"
AGENT = "agent-" + "a" * 194  # 200 characters, no break opportunity
TOOL = "tool." + "t" * 195
RUN = "run-" + "r" * 196
KEY = "key:" + "k" * 252  # 256
ACCOUNT = "Acme" + "N" * 116  # 120, the longest account name
SKIP = ("/logout/", "/admin/", "/api/", "/v1/", "/static/", "/billing/", "/login/")
MAX_PAGES = 60


@pytest.fixture
def long_names(key_a, owner_a):
    api = key_a.client()
    Account.objects.filter(pk=owner_a.account.pk).update(name=ACCOUNT)
    tool = {"name": TOOL, "url": "https://tools.example.com/x", "description": "d" * 300,
            "auth": {"type": "hmac_sha256", "secret": "s3cret-0123456789"}}  # fmt: skip
    assert api.post("/v1/tools", tool, content_type=JSON).status_code == 200
    policy = {"blocked_tools": [TOOL.upper(), "x" * 200], "max_calls_per_tool": {"c" * 200: 5},
              "pricing_rules": [{"tool": "p" * 200, "price_usd": 1}]}  # fmt: skip
    assert api.post(f"/v1/policies/{AGENT}", policy, content_type=JSON).status_code == 200
    for tool_name in (TOOL, "u" * 200):
        body = {"agent_id": AGENT, "tool": tool_name, "args": {"run_id": RUN}}
        assert api.post("/v1/ai/run", body, content_type=JSON).status_code == 200
    api.post("/v1/events", {"run_id": RUN, "type": "note", "message": "m" * 400, "step": "s" * 250},
             content_type=JSON)  # fmt: skip
    assert api.post("/v1/check-lock", {"key": KEY}, content_type=JSON).status_code == 200
    assert api.post("/v1/ai/lease", {"key": KEY, "ttl": 300}, content_type=JSON).status_code == 200
    assert api.post("/v1/ai/run", {"key": "run:" + "q" * 200, "metadata": {"run_id": RUN + "2"}},
                    content_type=JSON).status_code == 200  # fmt: skip
    ApiKey.objects.filter(pk=key_a.api_key.pk).update(label="L" * 100)
    membership_add(account=owner_a.account, email=("e" * 60) + "@" + ("d" * 60) + ".test", role="viewer",
                   actor=owner_a.user)  # fmt: skip
    assert Agent.objects.filter(agent_id=AGENT).exists()


def _crawl(page, base: str):
    """Every dashboard page reachable by links from the overview, once per path (query variants of a page share
    its layout), visited in breadth-first order."""
    queue, seen = ["/"], set()
    while queue and len(seen) < MAX_PAGES:
        url = queue.pop(0)
        path = urlsplit(url).path
        if path in seen:
            continue
        seen.add(path)
        response = page.goto(base + url)
        assert response is not None and response.status < 500, url
        if not page.locator("main").count():
            continue  # an htmx fragment (the decision detail), shown inside a page, not on its own
        yield url
        for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))"):
            if href.startswith("/") and not href.startswith("//") and not href.startswith(SKIP):
                queue.append(href)


WIDTH = """() => ({doc: document.documentElement.scrollWidth, win: window.innerWidth,
                   main: document.querySelector('main') ? document.querySelector('main').scrollWidth : 0,
                   mainBox: document.querySelector('main') ? document.querySelector('main').clientWidth : 0})"""


def test_pages_with_long_identifiers_fit_a_1280_px_window(page, live_server, owner_a, long_names):
    page.set_viewport_size({"width": 1280, "height": 900})
    login(page, live_server, owner_a)
    wide, visited = [], []
    for url in _crawl(page, live_server.url):
        visited.append(url)
        size = page.evaluate(WIDTH)
        if size["doc"] > size["win"]:
            wide.append((url, size["doc"]))
    assert len(visited) >= 15, visited  # the crawl reached the agent, policy, tool, run and lock pages
    assert any(AGENT in page_url or "/agents/" in page_url for page_url in visited)
    assert not wide, f"pages wider than the 1280 px window: {wide}"


# Elements whose own text holds one of the long identifiers, and their rendered widths (not inside a <pre>, which
# scrolls within its own box).
HOLDERS = """markers => [...document.querySelectorAll('body *')].filter(el => !el.closest('pre') &&
    [...el.childNodes].some(n => n.nodeType === 3 && markers.some(m => n.textContent.includes(m))))
  .map(el => [el.tagName, Math.round(el.getBoundingClientRect().width)])"""
MARKERS = [AGENT[:40], TOOL[:40], RUN[:40], KEY[:40], ACCOUNT[:40], "L" * 40, "e" * 40]


def test_long_identifiers_wrap_within_a_390_px_window(page, live_server, owner_a, long_names):
    """At phone width some pages are wider than the window whatever their data: the top navigation does not wrap,
    and the Tools, Usage & plan and Team tables (action buttons, plan columns) need ~450 px even with short names;
    this test does not judge that layout. What long identifiers must not do is widen anything: every element showing
    one fits the window, so it wraps instead."""
    page.set_viewport_size({"width": 390, "height": 844})
    login(page, live_server, owner_a)
    wide, shown = [], 0
    for url in _crawl(page, live_server.url):
        holders = page.evaluate(HOLDERS, MARKERS)
        shown += len(holders)
        wide += [(url, tag, width) for tag, width in holders if width > 390]
    assert shown >= 20, shown  # the identifiers were on the pages measured
    assert not wide, f"long identifiers wider than the 390 px window: {wide}"
