"""The data tables in headless Chromium, on each of the six pages (Agents, Decisions, Runs, Audit log, Tools, Locks &
leases): type a search, pick a facet, click a sortable header, go to the next page — after each, the address holds
the state; the address opened in a fresh page shows the same rows, and the controls show the same state. And
``agent=billing`` finds ``billing-agent`` (Decisions and Runs: the Agent facet; Agents: the search).

Rows come from tests/ui/test_tables.py's seeds (straight to the database); two rows a page, so a few rows page."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from playwright.sync_api import expect

from governance import views as gov_views
from tests.ui.test_browser_keys import login
from tests.ui.test_tables import SPECS, TABLES, seed_decisions, seed_runs

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class Flow:
    name: str  # a SPECS key
    search: str
    facet: str  # the facet's parameter
    value: str
    select: bool  # a <select> (else a text input)
    header: str  # the column header to click
    sort: str  # the sort it asks
    page: tuple[str, str]  # the parameter the next page sets, and its value (None: any)


FLOWS = [
    Flow("agents", "AG-0", "state", "disabled", True, "Policy", "policy", ("page", "2")),
    Flow("decisions", "s", "agent", "billing", False, "Time", "time", ("after", "")),
    Flow("audit", "OBJ", "actor", "user1", False, "Action", "action", ("page", "2")),
    Flow("tools", "tool", "enabled", "yes", True, "Price", "price", ("page", "2")),
    Flow("runs", "JOB", "agent", "billing", False, "Task", "task", ("page", "2")),
    Flow("locks", "lock", "status", "expired", True, "TTL", "ttl", ("page", "2")),
]


@pytest.fixture
def two_a_page(monkeypatch):
    for table in TABLES.values():
        monkeypatch.setattr(table, "per_page", 2)
    monkeypatch.setattr(gov_views, "TIMELINE_PAGE", 2)


def state(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def rows(page, name: str) -> list[str]:
    spec = SPECS[name]
    body = page.locator(f"#{spec.table_id} > tbody > tr")
    if spec.cell is None:
        return [body.nth(i).get_attribute("data-id") for i in range(body.count())]
    return [" ".join(body.nth(i).locator("td").nth(spec.cell).inner_text().split()) for i in range(body.count())]


def controls(page, flow: Flow) -> dict[str, str | None]:
    """What the page's controls show: the search box, the facet, the sorted column, the current page."""
    sorted_th = page.locator("th[aria-sort]")
    current = page.locator('.pagination [aria-current="page"]')
    back = page.locator('.pagination a[rel="prev"]')
    return {
        "q": page.locator("#table-q").input_value(),
        "facet": page.locator(f"#table-{flow.facet}").input_value(),
        "sorted": f"{sorted_th.inner_text().split()[0]} {sorted_th.get_attribute('aria-sort')}",
        "page": current.inner_text() if current.count() else None,
        "back": back.inner_text() if back.count() else None,
    }


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
def test_search_facet_sort_and_page_round_trip_through_the_url(page, live_server, owner_a, two_a_page, flow):
    spec = SPECS[flow.name]
    spec.seed(owner_a.account, 13)
    login(page, live_server, owner_a)
    tab = f"?tab={spec.base['tab']}" if spec.base else ""
    page.goto(f"{live_server.url}{spec.path}{tab}")

    page.locator("#table-q").fill(flow.search)
    page.locator("#table-q").press("Enter")
    page.wait_for_url(lambda url: state(url).get("q") == flow.search)
    assert state(page.url).get("tab") == spec.base.get("tab")

    facet = page.locator(f"#table-{flow.facet}")
    if flow.select:
        facet.select_option(flow.value)
    else:
        facet.fill(flow.value)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(lambda url: state(url).get(flow.facet) == flow.value)
    assert state(page.url)["q"] == flow.search
    blank = [k for k, v in parse_qsl(urlsplit(page.url).query, keep_blank_values=True) if not v]
    assert not blank, f"empty fields in the shared address: {blank}"
    expect(page.get_by_role("list", name="Active filters").get_by_text(flow.search).first).to_be_visible()

    page.locator("a.sort-link", has_text=flow.header).click()
    page.wait_for_url(lambda url: "sort" in state(url))
    now = state(page.url)
    assert now["sort"] == flow.sort and now["q"] == flow.search and now[flow.facet] == flow.value

    first_page = rows(page, flow.name)
    assert len(first_page) == 2
    page.locator('.pagination a[rel="next"]').click()
    parameter, value = flow.page
    page.wait_for_url(lambda url: parameter in state(url))
    now = state(page.url)
    assert (now[parameter] == value or not value) and now["sort"] == flow.sort and now["q"] == flow.search
    assert now[flow.facet] == flow.value and now.get("tab") == spec.base.get("tab")
    shown, shown_controls = rows(page, flow.name), controls(page, flow)
    assert shown and not set(shown) & set(first_page)
    assert shown_controls["q"] == flow.search and shown_controls["facet"] == flow.value
    assert shown_controls["sorted"] == f"{flow.header} ascending"
    assert shown_controls["page"] == "2" if parameter == "page" else shown_controls["back"] == "← Older"

    fresh = page.context.new_page()  # the address alone, shared with someone of the account
    fresh.goto(page.url)
    assert rows(fresh, flow.name) == shown
    assert controls(fresh, flow) == shown_controls
    fresh.close()


def test_agent_billing_finds_billing_agent(page, live_server, owner_a, two_a_page):
    seed_decisions(owner_a.account, 6)  # billing-agent and support-bot
    seed_runs(owner_a.account, 6)  # runs of billing-agent, support-bot and of no agent
    login(page, live_server, owner_a)
    for path, field in (("/decisions/", "#table-agent"), ("/runs/", "#table-agent"), ("/agents/", "#table-q")):
        page.goto(f"{live_server.url}{path}")
        page.locator(field).fill("billing")
        page.locator(field).press("Enter")
        parameter = "q" if field == "#table-q" else "agent"
        page.wait_for_url(lambda url, p=parameter: state(url).get(p) == "billing")
        cells = page.locator("table.table > tbody > tr").all_inner_texts()
        assert cells and all("billing-agent" in cell for cell in cells), (path, cells)
        assert not any("support-bot" in cell for cell in cells)
