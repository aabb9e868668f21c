"""Every dashboard page, for the browser tests that judge them all: a crawl from the overview (so a new page is
covered without being listed), data with long identifiers on every page, axe-core, the page-width check, and
`judge_every_page`, which runs any number of checks (`PageCheck`) on each page of one crawl.

tests/ui/test_browser_every_page.py crawls once per (persona, width) and runs on every page the checks defined next
to the tests that prove they can fail:
- page width and long identifiers, no Python repr: tests/ui/test_browser_long_identifiers.py;
- axe: tests/ui/test_browser_accessibility.py;
- the current section of the main navigation: tests/ui/test_browser_navigation.py;
- the write forms and 403 links a role must not be shown: tests/ui/test_viewer_read_only.py."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from billing.models import Account, ApiKey
from billing.services import membership_add
from governance import approvals
from governance.models import Agent, Approval

JSON = "application/json"
AGENT = "agent-" + "a" * 194  # 200 characters, no break opportunity
TOOL = "tool." + "t" * 195
RUN = "run-" + "r" * 196
KEY = "key:" + "k" * 252  # 256
ACCOUNT = "Acme" + "N" * 116  # 120, the longest account name
APPROVED_TOOL = "v" * 200  # require_approval names it; "w…" needs approval over $10.00
OVER_TOOL = "w" * 200
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
        "require_approval": [APPROVED_TOOL, {"tool": "w*", "over_usd": 10}],
        "approval_ttl_seconds": 7200,
    }
    assert api.post(f"/v1/policies/{AGENT}", policy, content_type=JSON).status_code == 200
    approval_of(api, APPROVED_TOOL, {"n": 0})  # superseded by the next version
    # A second version, so the policy page has a history to compare and the audit log a before/after.
    policy["max_actions_per_hour"] = 2000
    assert api.post(f"/v1/policies/{AGENT}", policy, content_type=JSON).status_code == 200
    seed_approvals(api, owner)
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
    seed_channels(owner)
    seed_policy_files(owner)


def approval_of(api, tool: str, args: dict, spend: float = 0) -> str:
    """A governed call of AGENT that needs approval: the id of its approval (pending)."""
    body = {"agent_id": AGENT, "tool": tool, "args": args, "spend_usd": spend}
    response = api.post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 200 and response.json()["policy_reason"] == "approval_required", response.content
    return response.json()["result"]["approval_id"]


def seed_approvals(api, owner) -> None:
    """Approvals in every state but expired, with long identifiers: one pending (its args shown), one denied with a
    long reason, one approved and used by the agent's retry (and the superseded one seed_long_identifiers made)."""
    approval_of(api, OVER_TOOL, {"run_id": RUN, "note": "n" * 300}, spend=12.5)

    def decide(approval_id: str, approve: bool, reason: str) -> None:
        approvals.decide(
            account_id=owner.account.pk, public_id=approval_id, approve=approve, reason=reason, actor=owner.email
        )

    decide(approval_of(api, APPROVED_TOOL, {"n": 2}), False, "Not this one: " + "r" * 300)
    used = {"n": 3}
    decide(approval_of(api, APPROVED_TOOL, used), True, "")
    retry = api.post("/v1/ai/run", {"agent_id": AGENT, "tool": APPROVED_TOOL, "args": used}, content_type=JSON)
    assert retry.json()["allowed"], retry.content


def extra_urls() -> list[str]:
    """Pages (or states of a page) no plain link leads to: a lock lookup, a run's timeline, a policy diff, the
    Approvals tabs (the crawl visits a path once) and the approvals that are not pending."""
    agent = Agent.objects.get(agent_id=AGENT)
    closed = Approval.objects.filter(agent=agent).exclude(status=Approval.Status.PENDING).order_by("pk")
    return [
        f"/locks/?key={quote(KEY, safe='')}",
        f"/runs/timeline/?run_id={quote(RUN, safe='')}",
        f"/agents/{agent.pk}/policy/?a=1&b=2",
        "/approvals/?tab=decided",
        "/approvals/?tab=closed",
        *(f"/approvals/{approval.public_id}/" for approval in closed),
        *channel_urls(agent),
        *policy_code_urls(),
    ]


# --- notification channels (Settings → Notification channels) and the one-click approval links -----------------
CHANNEL = "channel-" + "c" * 92  # 100 characters: the longest label


def seed_channels(owner) -> None:
    """A webhook channel with the longest label, a long URL and a failing delivery, and a Slack channel."""
    from django.utils import timezone

    from governance import channels
    from governance.models import ChannelDelivery, NotificationChannel

    events = ["approval_requested", "approval_decided", "tool_error", "run_failure"]
    url = "https://hooks.example.com/" + "w" * 300
    hook, _ = channels.channel_create(
        account=owner.account, kind="webhook", label=CHANNEL, url=url, events=events, actor=owner.email
    )
    slack_url = "https://hooks.slack.com/services/T0/B0/" + "s" * 24
    channels.channel_create(
        account=owner.account, kind="slack", label="slack", url=slack_url, events=events[:1], actor=owner.email
    )
    error = "HTTP 500: " + "e" * 400
    ChannelDelivery.objects.create(
        channel=hook,
        event="tool_error",
        message_id="msg_seeded",
        payload={"subject": "s"},
        status="failed",
        attempts=6,
        last_status=500,
        last_error=error,
    )
    NotificationChannel.objects.filter(pk=hook.pk).update(
        consecutive_failures=6, last_status=500, last_error=error, last_delivery_at=timezone.now()
    )


def channel_urls(agent) -> list[str]:
    """The confirm pages a pending approval's one-click links open (no link of the dashboard leads there)."""
    from governance import channels

    pending = Approval.objects.filter(agent=agent, status=Approval.Status.PENDING).first()
    return [channels.one_click_url(pending, action) for action in channels.ACTIONS] if pending else []


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
        assert response is not None and response.status < 500, f"{url} answered {response and response.status}"
        if not page.locator("main").count():
            continue  # an htmx fragment (the decision detail), shown inside a page, not on its own
        yield url
        for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))"):
            if href.startswith("/") and not href.startswith("//") and not href.startswith(SKIP):
                queue.append(href)
    for url in extra:
        response = page.goto(base + url)
        assert response is not None and response.status < 500, f"{url} answered {response and response.status}"
        yield url


class PageCheck:
    """One guarantee judged on every page of a crawl (a subclass per guarantee). `visit` looks at the loaded page and
    records what is wrong with it; after the crawl, `problems` returns what failed, one line each, naming the page
    and what was found there. A check that changes the page (opens its <details>…) sets `changes_page`: it runs
    after the others on each page, so they see the page as served."""

    title = "a check"  # what it proves: the heading of its findings in the failure message
    changes_page = False

    def visit(self, page, url: str) -> None:
        raise NotImplementedError

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        """What failed, after the crawl (`page` is still logged in, on the last page visited)."""
        raise NotImplementedError


def judge_every_page(page, base: str, checks: list[PageCheck], extra: list[str] | tuple[str, ...] = ()):
    """Crawl once (see `crawl`) and run every check on every page. Returns the URLs visited and one failure message
    per check that found something: its title, then its findings, one line each."""
    ordered = sorted(checks, key=lambda check: check.changes_page)  # stable: the others keep their order
    visited = []
    for url in crawl(page, base, extra):
        visited.append(url)
        for check in ordered:
            check.visit(page, url)
    failures = []
    for check in checks:
        found = check.problems(page, base, visited)
        if found:
            failures.append(f"{check.title} ({type(check).__name__}, {len(found)}):\n  " + "\n  ".join(found))
    return visited, failures


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


def preload_axe(page) -> None:
    """Evaluate the vendored axe-core in every document the page loads from now on, before the document's own scripts
    (Playwright's init script, through the DevTools protocol like `axe_violations`: no <script>, no change to the
    Content-Security-Policy). A crawl that runs axe on each page spares sending the script over each time (~0.1 s a
    page)."""
    page.add_init_script(AXE.read_text(encoding="utf-8"))


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


# --- policies as code (Agents → Policies as code): a file applied, drift since, two uploads waiting ----------------
DRIFT_AGENT = "drift-" + "d" * 194
NEW_AGENT = "new-" + "n" * 196
POLICY_FILE = "f" * 120 + ".yaml"
POLICY_PREVIEWS = (
    # A change (the drifted agent, long tool names in its diff) and a create.
    f"agents:\n  {DRIFT_AGENT}:\n    blocked_tools: [{'b' * 200}, {'c' * 200}]\n    max_calls_per_tool: "
    f"{{{'m' * 200}: 5}}\n  {NEW_AGENT}: {{max_actions_per_hour: 5}}\n",
    # Problems, each with its line: shown, with no Confirm.
    f"agents:\n  {NEW_AGENT}:\n    max_budget: 5\n    blocked_tools: ['{'x' * 190} y']\n",
)


def seed_policy_files(owner) -> None:
    """A file with a 120-character name applied (creating an agent of 200 characters), that agent's policy changed
    since (the drift), and two uploads waiting for their Confirm (POLICY_PREVIEWS). The long-identifier agent's
    policy is left as it is: its pending approval stays pending."""
    from governance import policy_code, policy_code_views, services

    account_id = owner.account.pk
    applied = f"agents:\n  {DRIFT_AGENT}:\n    blocked_tools: [{'a' * 200}]\n"
    policy_code.apply(account_id, policy_code.plan(account_id, applied, POLICY_FILE), owner.email)
    changed = {"blocked_tools": ["e" * 200], "max_actions_per_hour": 7}
    services.policy_publish(
        account_id=account_id, agent_id=DRIFT_AGENT, policy=changed, source="editor", actor=owner.email
    )
    for text in POLICY_PREVIEWS:
        policy_code_views.store_preview(account_id, POLICY_FILE, text)


def policy_code_urls() -> list[str]:
    """The previews of the uploads seed_policy_files left (an upload's redirect is the only way there)."""
    from governance import policy_code

    return [f"/agents/policies/preview/{policy_code.sha256_of(text)}/" for text in POLICY_PREVIEWS]
