"""Every dashboard page, for the browser tests that judge them all: a crawl from the overview (so a new page is
covered without being listed), data with long identifiers on every page, axe-core, and the page-width check.

Used by tests/ui/test_browser_long_identifiers.py (width at 1280 and 390 px, no Python repr), tests/ui/
test_browser_accessibility.py (axe), tests/ui/test_viewer_read_only.py (the viewer's pages) and tests/ui/
test_browser_navigation.py (the current section)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from billing.models import Account, ApiKey
from billing.services import membership_add
from governance.models import Agent

JSON = "application/json"
AGENT = "agent-" + "a" * 194  # 200 characters, no break opportunity
TOOL = "tool." + "t" * 195
RUN = "run-" + "r" * 196
KEY = "key:" + "k" * 252  # 256
ACCOUNT = "Acme" + "N" * 116  # 120, the longest account name
SKIP = ("/logout/", "/admin/", "/api/", "/v1/", "/static/", "/billing/", "/login/")
MAX_PAGES = 60
AXE = Path(__file__).resolve().parents[2] / "static" / "vendor" / "axe.min.js"


def seed_long_identifiers(key, owner) -> None:
    """An account whose every page shows 200-character identifiers: a tool, a policy naming long tools, decisions,
    a run with events, a lock and a lease, a long key label and member email, the longest account name."""
    api = key.client()
    Account.objects.filter(pk=owner.account.pk).update(name=ACCOUNT)
    tool = {
        "name": TOOL,
        "url": "https://tools.example.com/x",
        "description": "d" * 300,
        "auth": {"type": "hmac_sha256", "secret": "s3cret-0123456789"},
    }
    assert api.post("/v1/tools", tool, content_type=JSON).status_code == 200
    policy = {
        "blocked_tools": [TOOL.upper(), "x" * 200],
        "max_calls_per_tool": {"c" * 200: 5},
        "max_actions_per_hour": 1000,
        "max_spend_usd_per_day": 10,
        "pricing_rules": [{"tool": "p" * 200, "price_usd": 1}],
    }
    assert api.post(f"/v1/policies/{AGENT}", policy, content_type=JSON).status_code == 200
    # A second version, so the policy page has a history to compare and the audit log a before/after.
    policy["max_actions_per_hour"] = 2000
    assert api.post(f"/v1/policies/{AGENT}", policy, content_type=JSON).status_code == 200
    for tool_name in (TOOL, "u" * 200):
        body = {"agent_id": AGENT, "tool": tool_name, "args": {"run_id": RUN}}
        assert api.post("/v1/ai/run", body, content_type=JSON).status_code == 200
    api.post("/v1/events", {"run_id": RUN, "type": "note", "message": "m" * 400, "step": "s" * 250}, content_type=JSON)
    assert api.post("/v1/check-lock", {"key": KEY}, content_type=JSON).status_code == 200
    assert api.post("/v1/ai/lease", {"key": KEY, "ttl": 300}, content_type=JSON).status_code == 200
    assert (
        api.post(
            "/v1/ai/run", {"key": "run:" + "q" * 200, "metadata": {"run_id": RUN + "2"}}, content_type=JSON
        ).status_code
        == 200
    )
    ApiKey.objects.filter(pk=key.api_key.pk).update(label="L" * 100)
    membership_add(
        account=owner.account, email=("e" * 60) + "@" + ("d" * 60) + ".test", role="viewer", actor=owner.user
    )
    assert Agent.objects.filter(agent_id=AGENT).exists()


def extra_urls() -> list[str]:
    """Pages (or states of a page) no plain link leads to: a lock lookup, a run's timeline, a policy diff."""
    agent = Agent.objects.get(agent_id=AGENT)
    return [
        f"/locks/?key={quote(KEY, safe='')}",
        f"/runs/timeline/?run_id={quote(RUN, safe='')}",
        f"/agents/{agent.pk}/policy/?a=1&b=2",
    ]


def crawl(page, base: str, extra: list[str] | tuple[str, ...] = ()):
    """Every dashboard page reachable by links from the overview, once per path (query variants of a page share
    its layout), visited in breadth-first order; then `extra` (each visited whatever its path). Yields each URL
    with the page loaded."""
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
    for url in extra:
        response = page.goto(base + url)
        assert response is not None and response.status < 500, url
        yield url


# What a Python repr of stored data looks like in a page's text (str() of a dict, a list of strings, a Decimal or a
# datetime, an object), where JSON, a table or words belong (governance/display.py).
PYTHON_REPR = re.compile(
    r"""\{'[^'\n]{0,300}': |\[\{'|\['[^'\n]{0,300}', '|: (?:None|True|False)[,}]|(?:Decimal|UUID|OrderedDict)\(|"""
    r"""datetime\.(?:datetime|date|timedelta)\(|<[\w.]+ object at 0x"""
)


def python_reprs(page) -> list[str]:
    """Python reprs in the loaded page's <main> text (hidden parts included: closed <details>, the JSON and YAML
    views), each with a little context."""
    text = page.evaluate("() => document.querySelector('main') ? document.querySelector('main').textContent : ''")
    return [text[max(0, m.start() - 40) : m.end() + 40] for m in PYTHON_REPR.finditer(text)]


WIDTH = "() => ({doc: document.documentElement.scrollWidth, win: window.innerWidth})"


def page_width(page) -> tuple[int, int]:
    """(document scroll width, window width) of the loaded page."""
    size = page.evaluate(WIDTH)
    return size["doc"], size["win"]


def axe_violations(page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict]:
    """Run the vendored axe-core on the loaded page (evaluated through the DevTools protocol: no <script> is added,
    so the page's Content-Security-Policy stays as served) and return the violations of these impacts, each as
    {id, impact, help, nodes: [target selector and a snippet of HTML]}."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations'],
                                               runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a',
                                                                               'wcag21aa', 'best-practice']}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => [n.target.join(' '), n.html.slice(0, 160)])}));
        }"""
    )
    return [v for v in result if v["impact"] in impacts]
