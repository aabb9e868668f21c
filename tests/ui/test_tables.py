"""The dashboard's data tables (onceonly_site/tables.py) on their six pages — Agents, Decisions, Runs, Audit log,
Tools, Locks & leases: search (contains, ignoring case), each facet, each sortable column both ways (the order
checked against the rows), totals, pages forward and back (offset pages; the decision log's keyset pages) with
nothing lost or repeated, the state kept in sort and page links, the Agents quick filters, bad parameters ignored
and said so (never a 500), and a query count that does not grow with the rows.

Rows are written straight to the database with chosen values (so every order is known); the page size is made
small where a test walks pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser
from itertools import count
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import AuditEntry
from governance import views as gov_views
from governance.models import Agent, Decision, Tool
from idempotency import views as idem_views
from idempotency.models import Lease, LockRecord, Run
from onceonly_site.identifiers import normalise_tool
from tests.support.decisions import decide

NOW = timezone.now().replace(microsecond=0)


# --- reading a page ---------------------------------------------------------------------------------------------


class _Rows(HTMLParser):
    """The body rows of the table with id ``table_id``: each row's attributes and its cells' text."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.depth, self.in_body = table_id, 0, False
        self.rows: list[tuple[dict[str, str], list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "table":
            if self.depth or attrs.get("id") == self.table_id:
                self.depth += 1
        elif self.depth == 1 and tag == "tbody":
            self.in_body = True
        elif self.depth == 1 and self.in_body and tag == "tr":
            self.rows.append((attrs, []))
        elif self.depth == 1 and self.in_body and tag == "td" and self.rows:
            self.rows[-1][1].append("")

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "tbody" and self.depth == 1:
            self.in_body = False

    def handle_data(self, data):
        if self.depth and self.in_body and self.rows and self.rows[-1][1]:
            self.rows[-1][1][-1] += data


def rows_of(html: str, spec: Spec) -> list[str]:
    parser = _Rows(spec.table_id)
    parser.feed(html)
    if spec.cell is None:
        return [attrs["data-id"] for attrs, _ in parser.rows]
    return [" ".join(cells[spec.cell].split()) for _, cells in parser.rows]


def notices(html: str) -> list[str]:
    return [unescape(m) for m in re.findall(r'<p class="field-error" role="alert">(.*?)</p>', html)]


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]*)" rel="{rel}">', html)
    return unescape(found.group(1)) if found else None


def total(html: str) -> str:
    return " ".join(unescape(re.search(r'<span class="table-total"[^>]*>(.*?)</span>', html, re.S).group(1)).split())


def header_links(html: str) -> dict[str, str]:
    """Sortable header label → its href."""
    return {
        unescape(label).strip(): unescape(href)
        for href, label in re.findall(r'<a class="sort-link" href="([^"]*)">([^<]*)', html)
    }


def query(href: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}


# --- the tables -------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    name: str
    path: str
    table_id: str
    seed: Callable[[Any, int], list[Any]]
    ident: Callable[[Any], str]
    cell: int | None  # the cell that shows ident(row); None: the row's data-id
    sorts: dict[str, Callable[[Any], Any]]  # sort key → the value it sorts by (None: no value, last)
    default: str
    base: dict[str, str] = field(default_factory=dict)  # parameters of the page itself (a tab)
    noun: tuple[str, str] = ("", "")


_n = count()


def seed_agents(account, n):
    """Agents with known statuses, policies, last decisions, spend today and charged actions in the last hour (what
    the Spend today and Charged actions columns show and sort by: charged outcomes only — a blocked call's spend and
    count are not). Decisions are written minutes before the seeding, never before today's 00:00 UTC, so each one is
    both today's and the rolling hour's, whenever the test runs."""
    now = timezone.now().replace(microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0)
    rows = []
    for i in range(n):
        governed = i % 4 != 0
        agent = Agent.objects.create(
            account=account,
            agent_id=f"ag-{i:03d}",
            is_enabled=i % 3 != 0,
            policy={"max_actions_per_hour": 1000} if governed else None,
            policy_version=i % 5 + 1 if governed else None,
        )
        agent.last, agent.spent, agent.actions = None, Decimal(0), 0
        if i % 2 == 0:
            agent.last = max(now - timedelta(minutes=i * 7 % 50), day_start)
            calls, price = i % 3 + 1, Decimal(i * 3 % 7) / 4  # ties included (0, and repeated values)
            decide(agent, ts=agent.last, n=calls, spend=str(price), outcome=("executed", "failed")[i % 4 // 2])
            agent.spent, agent.actions = calls * price, calls
            if i % 4 == 2:
                decide(agent, ts=agent.last, outcome="blocked", spend="5")  # not charged: counted in neither
        rows.append(agent)
    return rows


def _seed_agent(account):
    return Agent.objects.get_or_create(account=account, agent_id="billing-agent")[0]


TOOLS = ("send_email", "stripe.charge", "Search.Web")
OUTCOMES = ("executed", "allowed", "blocked", "dedup", "failed")


def seed_decisions(account, n):
    agents = [_seed_agent(account), Agent.objects.get_or_create(account=account, agent_id="support-bot")[0]]
    rows = []
    for i in range(n):
        ts = NOW - timedelta(minutes=i // 2)  # two decisions a minute: ties broken by id
        (d,) = decide(agents[i % 2], tool=TOOLS[i % 3], outcome=OUTCOMES[i % 5], ts=ts)
        if i % 4 == 0:
            Decision.objects.filter(pk=d.pk).update(run_id=f"run-{i:03d}")
            d.run_id = f"run-{i:03d}"
        rows.append(d)
    return rows


def seed_audit(account, n):
    AuditEntry.objects.filter(account=account).delete()  # the fixtures' own (account and members created)
    actions = ("governance.policy.published", "billing.api_key.created", "governance.tool.saved")
    return [
        AuditEntry.objects.create(
            account=account,
            actor_label=f"user{i % 4}@acme.test",
            action=actions[i % 3],
            object_type=("agent", "tool")[i % 2],
            object_id=f"obj-{i:03d}",
            created_at=NOW - timedelta(minutes=i * 7 % 50),
        )
        for i in range(n)
    ]


def seed_tools(account, n):
    rows = []
    for i in range(n):
        name = f"tool-{i:03d}"
        rows.append(
            Tool.objects.create(
                account=account,
                scope_id=("global", "billing-agent", "ops")[i % 3],
                name=name,
                name_key=normalise_tool(name),
                url=f"https://h{i % 4}.example.com/{i:03d}",
                enabled=i % 3 != 1,
                risk_level=("", "low", "medium", "high")[i % 4],
                price_usd=Decimal(i % 5) if i % 2 else None,
                description="Sends mail" if i % 5 == 0 else "",
                last_dispatch_at=NOW - timedelta(minutes=i * 7 % 50) if i % 3 else None,
            )
        )
    return rows


def _lease(account, key, status, i, **fields):
    updated = NOW - timedelta(minutes=i * 7 % 50)
    return Lease.objects.create(
        account=account,
        key=key,
        status=status,
        lease_id=f"l{i}",
        ttl_seconds=300,
        first_seen_at=updated,
        acquired_at=updated,
        updated_at=updated,
        expires_at=fields.pop("expires_at", NOW + timedelta(hours=5 + i)),  # NOW is import time: hours
        **fields,
    )


def seed_runs(account, n):
    rows = []
    statuses = ("queued", "running", "completed", "failed")
    for i in range(n):
        key = f"job:{i:03d}"
        lease = _lease(account, key, "in_progress", i)
        created = NOW - timedelta(minutes=i * 7 % 50)
        rows.append(
            Run.objects.create(
                account=account,
                lease=lease,
                key=key,
                lease_version=1,
                holder="h",
                run_id=f"nightly-{i % 7:02d}-{i:03d}",
                agent_id=("billing-agent", "support-bot", "")[i % 3],
                task=("demo.echo", "report.build")[i % 2],
                status=statuses[i % 4],
                created_at=created,
                enqueued_at=created,
                deadline_at=NOW + timedelta(hours=1),
            )
        )
    return rows


def seed_locks(account, n):
    return [
        LockRecord.objects.create(
            account=account,
            key=f"lock:{i:03d}",
            ttl_seconds=60 * (i % 5 + 1),
            first_seen_at=NOW - timedelta(minutes=i * 7 % 50),
            expires_at=NOW + timedelta(hours=i - n // 2),  # live from the middle one on, for hours
        )
        for i in range(n)
    ]


def seed_active(account, n):
    return [_lease(account, f"lease:{i:03d}", "in_progress", i, version=i % 3 + 1) for i in range(n)]


def seed_finished(account, n):
    return [
        _lease(
            account,
            f"done:{i:03d}",
            ("completed", "failed", "cancelled")[i % 3],
            i,
            version=i % 3 + 1,
            error_code="handler_error" if i % 3 == 1 else "",
            expires_at=NOW - timedelta(minutes=1),
        )
        for i in range(n)
    ]


SPECS = {
    "agents": Spec(
        "agents",
        "/agents/",
        "agents",
        seed_agents,
        lambda a: a.agent_id,
        0,
        {
            "agent": lambda a: a.agent_id,
            "status": lambda a: a.is_enabled,
            "policy": lambda a: a.policy_version,
            "spend": lambda a: a.spent,
            "actions": lambda a: a.actions,
            "last": lambda a: a.last,
        },
        "agent",
        noun=("agent", "agents"),
    ),
    "decisions": Spec(
        "decisions",
        "/decisions/",
        "timeline",
        seed_decisions,
        lambda d: str(d.pk),
        None,
        {"time": lambda d: d.ts},
        "-time",
        noun=("decision", "decisions"),
    ),
    "audit": Spec(
        "audit",
        "/audit/",
        "audit",
        seed_audit,
        lambda e: f"{e.object_type} {e.object_id}",
        3,
        {
            "when": lambda e: e.created_at,
            "actor": lambda e: e.actor_label,
            "action": lambda e: e.action,
            "object": lambda e: (e.object_type, e.object_id),
        },
        "-when",
        noun=("entry", "entries"),
    ),
    "tools": Spec(
        "tools",
        "/tools/",
        "tools",
        seed_tools,
        lambda t: t.name,
        0,
        {
            "tool": lambda t: (t.name_key, t.name),
            "scope": lambda t: t.scope_id,
            "host": lambda t: t.url,
            "status": lambda t: t.enabled,
            "risk": lambda t: t.risk_level,
            "price": lambda t: t.price_usd,
            "last": lambda t: t.last_dispatch_at,
        },
        "tool",
        noun=("tool", "tools"),
    ),
    "runs": Spec(
        "runs",
        "/runs/",
        "runs",
        seed_runs,
        lambda r: r.run_id,
        0,
        {
            "run": lambda r: r.run_id,
            "key": lambda r: r.key,
            "status": lambda r: r.status,
            "agent": lambda r: r.agent_id,
            "task": lambda r: r.task,
            "started": lambda r: r.created_at,
        },
        "-started",
        noun=("run", "runs"),
    ),
    "locks": Spec(
        "locks",
        "/locks/",
        "lock-list",
        seed_locks,
        lambda lk: lk.key,
        0,
        {
            "key": lambda lk: lk.key,
            "seen": lambda lk: lk.first_seen_at,
            "ttl": lambda lk: lk.ttl_seconds,
            "status": lambda lk: lk.expires_at,
        },
        "-seen",
        base={"tab": "locks"},
        noun=("check-lock", "check-locks"),
    ),
    "active": Spec(
        "active",
        "/locks/",
        "lock-list",
        seed_active,
        lambda lease: lease.key,
        0,
        {
            "key": lambda x: x.key,
            "status": lambda x: x.status,
            "version": lambda x: x.version,
            "updated": lambda x: x.updated_at,
            "left": lambda x: x.expires_at,
        },
        "-updated",
        base={"tab": "active"},
        noun=("active lease", "active leases"),
    ),
    "finished": Spec(
        "finished",
        "/locks/",
        "lock-list",
        seed_finished,
        lambda lease: lease.key,
        0,
        {
            "key": lambda x: x.key,
            "status": lambda x: x.status,
            "version": lambda x: x.version,
            "updated": lambda x: x.updated_at,
            "error": lambda x: x.error_code,
        },
        "-updated",
        base={"tab": "finished"},
        noun=("lease", "leases"),
    ),
}
TABLES = {
    "agents": gov_views.AGENTS_TABLE,
    "audit": gov_views.AUDIT_TABLE,
    "tools": gov_views.TOOLS_TABLE,
    "runs": idem_views.RUNS_TABLE,
    **{
        name: idem_views.LIST_TABLES[tab]
        for name, tab in (("locks", "locks"), ("active", "active"), ("finished", "finished"))
    },
}
PAGE = 5  # rows per page in the tests that walk pages


@pytest.fixture
def small_pages(monkeypatch):
    for table in TABLES.values():
        monkeypatch.setattr(table, "per_page", PAGE)
    monkeypatch.setattr(gov_views, "TIMELINE_PAGE", PAGE)


@pytest.fixture
def client(owner_a):
    return owner_a.login(Client())


def get(client, spec: Spec, params: dict | str | None = None) -> str:
    if isinstance(params, str):  # a link's ?query
        response = client.get(spec.path + params)
    else:
        response = client.get(spec.path, {**spec.base, **(params or {})})
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def walk(client, spec: Spec, params: dict | str | None = None, rel: str = "next") -> tuple[list[list[str]], Any]:
    """Every page from the one ``params`` ask for, following the ``rel`` links: the rows of each page, and the
    last page's address (its ?query, or ``params`` when there was one page)."""
    html, last = get(client, spec, params), params
    pages = [rows_of(html, spec)]
    while href := link(html, rel):
        html, last = get(client, spec, href), href
        pages.append(rows_of(html, spec))
        assert len(pages) < 50
    return pages, last


def everything(client, spec, params=None) -> list[str]:
    pages, _ = walk(client, spec, params)
    flat = [row for page in pages for row in page]
    assert len(flat) == len(set(flat)), "a row is repeated across pages"
    return flat


def expected(spec: Spec, rows: list, sort: str) -> list[str]:
    """The order of a sort: by the column's value then the row id (both reversed when descending); rows without a
    value last either way."""
    key, descending = spec.sorts[sort.lstrip("-")], sort.startswith("-")
    valued = sorted((r for r in rows if key(r) is not None), key=lambda r: (key(r), r.pk), reverse=descending)
    empty = sorted((r for r in rows if key(r) is None), key=lambda r: r.pk, reverse=descending)
    return [spec.ident(r) for r in [*valued, *empty]]


ALL = list(SPECS)


# --- sorting and pages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_sortable_column_sorts_both_ways_across_pages(client, owner_a, small_pages, name):
    spec = SPECS[name]
    rows = spec.seed(owner_a.account, 13)
    for sort in spec.sorts:
        for direction in (sort, f"-{sort}"):
            pages, last = walk(client, spec, {"sort": direction})
            assert [len(p) for p in pages] == [5, 5, 3], (direction, pages)
            assert [r for p in pages for r in p] == expected(spec, rows, direction), direction
            assert query(last).get("sort", spec.default) == direction  # the page links keep the sort
            back, _ = walk(client, spec, last, rel="prev")
            assert back == pages[::-1], f"{direction}: back differs"
            assert not notices(get(client, spec, last))


@pytest.mark.parametrize("name", ALL)
def test_header_links_toggle_the_sort_and_keep_the_filters(client, owner_a, name):
    spec = SPECS[name]
    spec.seed(owner_a.account, 3)
    search = {
        "agents": "ag",
        "decisions": "a",
        "audit": "obj",
        "tools": "tool",
        "runs": "job",
        "locks": "lock",
        "active": "lease",
        "finished": "done",
    }[name]
    html = get(client, spec, {"q": search})
    headers = header_links(html)
    assert len(headers) == len(spec.sorts)
    default_key = spec.default.lstrip("-")
    for href in headers.values():
        state = query(href)
        assert state.get("q") == search and state.get("tab") == spec.base.get("tab"), href
        assert "page" not in state and "before" not in state and "after" not in state
    # The sorted column says so, and its link flips the direction; on the flipped page, it flips back to the default.
    sorted_th = re.search(r'<th scope="col" aria-sort="(\w+)"[^>]*><a class="sort-link" href="([^"]*)"', html)
    assert sorted_th.group(1) == ("descending" if spec.default.startswith("-") else "ascending")
    flipped = query(unescape(sorted_th.group(2)))
    assert flipped["sort"] == (default_key if spec.default.startswith("-") else f"-{default_key}")
    html = get(client, spec, {"q": search, "sort": flipped["sort"]})
    again = re.search(r'<th scope="col" aria-sort="(\w+)"[^>]*><a class="sort-link" href="([^"]*)"', html)
    assert again.group(1) == ("ascending" if spec.default.startswith("-") else "descending")
    assert "sort" not in query(unescape(again.group(2)))  # back to the default: no parameter
    # The toolbar form carries the sort (and the tab) when the search changes.
    assert f'<input type="hidden" name="sort" value="{flipped["sort"]}">' in html


@pytest.mark.parametrize("name", ALL)
def test_page_links_keep_search_sort_and_filters(client, owner_a, small_pages, name):
    spec = SPECS[name]
    spec.seed(owner_a.account, 30)
    search, facets = {
        "agents": ("AG", {"state": "ungoverned"}),
        "decisions": ("A", {"tool": "e", "outcome": "executed"}),
        "audit": ("OBJ", {"action": "governance"}),
        "tools": ("TOOL", {"enabled": "yes", "scope": "o"}),
        "runs": ("JOB", {"agent": "o"}),
        "locks": ("LOCK", {"status": "expired"}),
        "active": ("LEASE", {}),
        "finished": ("DONE", {"status": "completed"}),
    }[name]
    sort = next(k for k in spec.sorts if k != spec.default.lstrip("-")) if len(spec.sorts) > 1 else "time"
    wanted = {"q": search, "sort": sort, **facets, **spec.base}
    html = get(client, spec, {"q": search, "sort": sort, **facets})
    assert not notices(html)
    forward = link(html, "next")
    assert forward is not None
    assert {k: v for k, v in query(forward).items() if k not in ("page", "after", "before")} == wanted
    html = get(client, spec, forward)
    assert {k: v for k, v in query(link(html, "prev")).items() if k not in ("page", "after", "before")} == wanted
    for href in header_links(html).values():  # the headers keep the search and the filters, and start again
        assert {k: v for k, v in query(href).items() if k != "sort"} == {"q": search, **facets, **spec.base}
    # The search box, the facets and the chips show the state; Clear keeps the sort and the tab only.
    assert f'name="q" value="{search}"' in html
    for facet, value in facets.items():
        assert re.search(rf'name="{facet}" value="{value}"|<option value="{value}" selected>', html), facet
    assert len(re.findall(r'aria-label="Remove filter ', html)) == 1 + len(facets)
    clear = re.search(r'<a href="([^"]*)">Clear</a>', html).group(1)
    assert query(unescape(clear)) == {"sort": sort, **spec.base}


# --- totals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_totals_are_shown(client, owner_a, small_pages, name):
    spec = SPECS[name]
    spec.seed(owner_a.account, 13)
    plural = spec.noun[1]
    html = get(client, spec)
    if name == "decisions":
        assert total(html) == f"13 {plural}"
    else:
        assert total(html) == f"13 {plural}, showing 1–5"
        assert "Page 1 of 3" in html
        assert total(get(client, spec, {"page": "3"})) == f"13 {plural}, showing 11–13"
        assert "Page 3 of 3" in get(client, spec, {"page": "99"})  # past the last: the last


def test_decision_totals_past_the_rollups_are_capped(client, owner_a, monkeypatch):
    seed_decisions(owner_a.account, 20)
    monkeypatch.setattr(gov_views, "DECISIONS_COUNT_CAP", 5)
    spec = SPECS["decisions"]
    assert total(get(client, spec, {"reason": "within"})) == "5+ decisions"  # reasons: not in the rollups
    assert total(get(client, spec, {"reason": "tool_error"})) == "4 decisions"  # under the cap: exact
    assert total(get(client, spec, {"outcome": "blocked"})) == "4 decisions"  # from the rollups
    assert total(get(client, spec, {"q": "BILLING", "tool": "send"})) == "4 decisions"
    assert total(get(client, spec, {"outcome": "allowed", "agent": "SUPPORT"})) == "2 decisions"


# --- search and facets ------------------------------------------------------------------------------------------


def _same(client, spec, params, rows, keep) -> None:
    wanted = [spec.ident(r) for r in rows if keep(r)]
    assert wanted, f"{params}: the test's data has no match"
    assert sorted(everything(client, spec, params)) == sorted(wanted), params


FILTERS: dict[str, list[tuple[dict, Callable[[Any], bool]]]] = {
    "agents": [
        ({"q": "AG-00"}, lambda a: a.agent_id.startswith("ag-00")),
        ({"q": "g-01"}, lambda a: "g-01" in a.agent_id),
    ],
    "decisions": [
        ({"q": "BILLING"}, lambda d: d.agent.agent_id == "billing-agent"),
        ({"q": "search."}, lambda d: d.tool == "Search.Web"),
        ({"agent": "SUPPORT"}, lambda d: d.agent.agent_id == "support-bot"),
        ({"agent": "billing"}, lambda d: d.agent.agent_id == "billing-agent"),
        ({"tool": "STRIPE"}, lambda d: d.tool == "stripe.charge"),
        ({"outcome": "dedup"}, lambda d: d.outcome == "dedup"),
        ({"reason": "LIMIT_exceeded"}, lambda d: d.outcome == "blocked"),
        ({"run": "run-004"}, lambda d: d.run_id == "run-004"),
        (
            {"since": (NOW - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")},
            lambda d: d.ts >= NOW - timedelta(minutes=2),
        ),
        (
            {"until": (NOW - timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M:%S+00:00")},
            lambda d: d.ts <= NOW - timedelta(minutes=3),
        ),
        (
            {"agent": "billing", "tool": "send", "outcome": "executed"},
            lambda d: d.agent.agent_id == "billing-agent" and d.tool == "send_email" and d.outcome == "executed",
        ),
    ],
    "audit": [
        ({"q": "API_KEY"}, lambda e: "api_key" in e.action),
        ({"q": "OBJ-01"}, lambda e: e.object_id.startswith("obj-01")),
        ({"q": "User2@"}, lambda e: e.actor_label == "user2@acme.test"),
        ({"actor": "USER1"}, lambda e: e.actor_label == "user1@acme.test"),
        ({"action": "Policy"}, lambda e: e.action == "governance.policy.published"),
        ({"object": "TOOL"}, lambda e: e.object_type == "tool"),
        ({"object": "obj-00"}, lambda e: e.object_id.startswith("obj-00")),
    ],
    "tools": [
        ({"q": "TOOL-01"}, lambda t: t.name.startswith("tool-01")),
        ({"q": "H2.EXAMPLE"}, lambda t: "h2.example" in t.url),
        ({"q": "sends MAIL"}, lambda t: t.description == "Sends mail"),
        ({"q": "billing"}, lambda t: t.scope_id == "billing-agent"),
        ({"scope": "OPS"}, lambda t: t.scope_id == "ops"),
        ({"enabled": "yes"}, lambda t: t.enabled),
        ({"enabled": "no"}, lambda t: not t.enabled),
        ({"risk": "medium"}, lambda t: t.risk_level == "medium"),
        ({"risk": "none"}, lambda t: t.risk_level == ""),
    ],
    "runs": [
        ({"q": "JOB:00"}, lambda r: r.key.startswith("job:00")),
        ({"q": "NIGHTLY-03"}, lambda r: r.run_id.startswith("nightly-03")),
        ({"q": "REPORT"}, lambda r: r.task == "report.build"),
        ({"status": "failed"}, lambda r: r.status == "failed"),
        ({"run": "Nightly-02"}, lambda r: r.run_id.startswith("nightly-02")),
        ({"agent": "billing"}, lambda r: r.agent_id == "billing-agent"),
        ({"agent": "BOT", "status": "running"}, lambda r: r.agent_id == "support-bot" and r.status == "running"),
    ],
    "locks": [
        ({"q": "LOCK:01"}, lambda lk: lk.key.startswith("lock:01")),
        ({"status": "locked"}, lambda lk: lk.expires_at > timezone.now()),
        ({"status": "expired"}, lambda lk: lk.expires_at <= timezone.now()),
    ],
    "active": [({"q": "Lease:00"}, lambda x: x.key.startswith("lease:00"))],
    "finished": [
        ({"q": "DONE:01"}, lambda x: x.key.startswith("done:01")),
        ({"status": "failed"}, lambda x: x.status == "failed"),
        ({"status": "cancelled", "q": "done"}, lambda x: x.status == "cancelled"),
    ],
}


@pytest.mark.parametrize("name", ALL)
def test_search_contains_ignoring_case_and_each_facet(client, owner_a, small_pages, name):
    spec = SPECS[name]
    rows = spec.seed(owner_a.account, 17)
    if name == "decisions":
        rows = list(Decision.objects.select_related("agent").filter(pk__in=[d.pk for d in rows]))
    for params, keep in FILTERS[name]:
        _same(client, spec, params, rows, keep)
        html = get(client, spec, params)
        assert not notices(html), (params, notices(html))
        for value in params.values():
            assert "Remove filter" in html and unescape(value) in unescape(html)
    facets = {f.name for f in (TABLES.get(name) or gov_views.DECISIONS_TABLE).facets} - {"state", "failing"}
    assert facets <= {k for params, _ in FILTERS[name] for k in params}, "a facet without a test"


@pytest.mark.parametrize("name", ALL)
def test_a_search_that_matches_nothing_says_so(client, owner_a, name):
    spec = SPECS[name]
    spec.seed(owner_a.account, 3)
    html = get(client, spec, {"q": "zzz-nothing"})
    assert rows_of(html, spec) == [] and not notices(html)
    assert re.search(r"(No|Nothing)( \w+)+ match", html) and 'aria-label="Remove filter Search: zzz-nothing"' in html


def test_the_tools_failing_facet(client, owner_a, key_a):
    tools = seed_tools(owner_a.account, 4)
    bot = _seed_agent(owner_a.account)
    decide(bot, tool="TOOL-001", outcome="failed", n=3)  # calls name tools as typed: compared normalised
    decide(bot, tool="tool-001", outcome="executed", n=1)
    decide(bot, tool="tool-002", outcome="failed", n=1)
    decide(bot, tool="tool-002", outcome="executed", n=5)
    assert everything(client, SPECS["tools"], {"failing": "yes"}) == [tools[1].name]


# --- filter suggestions ----------------------------------------------------------------------------------------


def suggestions(html: str, facet: str) -> list[str]:
    """The values of a text facet's <datalist> (_table_toolbar.html), in order; the input must point at it."""
    assert f'name="{facet}"' in html and f'list="table-{facet}-list"' in html, f"{facet}: no datalist on its input"
    found = re.search(rf'<datalist id="table-{facet}-list">(.*?)</datalist>', html, re.S)
    return [unescape(v) for v in re.findall(r'<option value="([^"]*)">', found.group(1))]


def test_facets_suggest_the_seeded_values(client, owner_a):
    """Each text facet with suggestions lists the values the account has: agents (not the operator's test-call
    agent), tools called and the reasons on Decisions; actors and actions on the Audit log; scopes on Tools; run
    agents on Runs. Each value once."""
    from governance.choices import Reason
    from governance.services import OPERATOR_AGENT

    account = owner_a.account
    seed_decisions(account, 6)
    decide(Agent.objects.create(account=account, agent_id=OPERATOR_AGENT), tool="tool-000")  # a Tools page test call
    seed_audit(account, 8)
    seed_tools(account, 6)
    seed_runs(account, 6)
    cases = {
        "decisions": {
            "agent": ["billing-agent", "support-bot"],
            "tool": sorted({*TOOLS, "tool-000"}, key=str.casefold),
            "reason": list(Reason.values),
        },
        "audit": {
            "actor": [f"user{i}@acme.test" for i in range(4)],
            "action": ["billing.api_key.created", "governance.policy.published", "governance.tool.saved"],
        },
        "tools": {"scope": ["billing-agent", "global", "ops"]},
        "runs": {"agent": ["billing-agent", "support-bot"]},
    }
    for name, facets in cases.items():
        html = get(client, SPECS[name])
        for facet, wanted in facets.items():
            listed = suggestions(html, facet)
            assert len(listed) == len(set(listed)), (name, facet, listed)
            if facet == "tool":  # in the database's collation: compared as a set
                assert set(listed) == set(wanted), (name, facet, listed)
            else:
                assert listed == wanted, (name, facet, listed)
    # A facet with a list of values is a <select>, not suggestions; the date facets are date inputs.
    html = get(client, SPECS["decisions"])
    assert 'list="table-outcome-list"' not in html and '<select id="table-outcome" name="outcome">' in html
    assert '<input type="datetime-local" id="table-since" name="since"' in html


# --- the Agents quick filters -----------------------------------------------------------------------------------


def test_agents_quick_filters(client, owner_a):
    account = owner_a.account

    def make(agent_id, policy=None, **fields):
        return Agent.objects.create(
            account=account, agent_id=agent_id, policy=policy, policy_version=1 if policy else None, **fields
        )

    over = make("over-agent", {"max_spend_usd_per_day": 1})
    decide(over, spend="1.5")
    near = make("near-agent", {"max_actions_per_hour": 10})
    decide(near, n=8)
    tool_near = make("tool-near-agent", {"max_calls_per_tool": {"send_email": 5}})
    decide(tool_near, tool="send_email", n=4)
    make("ok-agent", {"max_spend_usd_per_day": 100})
    make("disabled-agent", {"max_actions_per_hour": 10}, is_enabled=False)
    make("plain-agent")
    failing = make("failing-agent", {"blocked_tools": ["x"]})
    decide(failing, tool="flaky", outcome="failed", n=4)
    old = make("old-caller")  # called the failing tool, but two hours ago
    decide(old, tool="flaky", outcome="failed", ts=NOW - timedelta(hours=2))
    spec = SPECS["agents"]
    states = {
        "over": ["over-agent"],
        "near": ["near-agent", "tool-near-agent"],
        "disabled": ["disabled-agent"],
        "ungoverned": ["old-caller", "plain-agent"],
        "failing": ["failing-agent"],
    }
    for state, names in states.items():
        html = get(client, spec, {"state": state})
        assert rows_of(html, spec) == names, state
        assert re.search(rf'<a href="\?state={state}"[^>]*aria-current="true"', html), state
        assert f'<option value="{state}" selected>' in html
    assert rows_of(get(client, spec, {"state": "near", "q": "TOOL"}), spec) == ["tool-near-agent"]
    assert rows_of(get(client, spec, {"state": "near", "sort": "-agent"}), spec) == ["tool-near-agent", "near-agent"]
    # The quick filters keep the search and the sort (and go back to page 1).
    html = get(client, spec, {"state": "near", "q": "agent", "sort": "-agent", "page": "1"})
    quick = dict(
        re.findall(
            r'<a href="([^"]*)"(?: aria-current="true")?>([^<]+)</a>', html.split("quick-filters")[1].split("</nav>")[0]
        )
    )
    assert {label: query(unescape(href)) for href, label in quick.items()}["Disabled"] == {
        "q": "agent",
        "state": "disabled",
        "sort": "-agent",
    }


def test_the_lists_of_locks_and_leases_are_no_empty_key_lookup(client, owner_a):
    seed_locks(owner_a.account, 3)
    for params in ({"tab": "locks"}, {"q": "lock", "sort": "ttl"}, {"tab": "finished", "page": "2"}):
        html = client.get("/locks/", params).content.decode()
        assert "This field is required" not in html and 'aria-invalid="true"' not in html, params
    html = client.get("/locks/", {"key": ""}).content.decode()  # the lookup submitted empty: said so
    assert "This field is required" in html


# --- bad parameters ---------------------------------------------------------------------------------------------


BAD = [
    ({"sort": "nope"}, "Unknown sort ignored"),
    ({"sort": "--agent"}, "Unknown sort ignored"),
    ({"sort": "-"}, "Unknown sort ignored"),
    ({"page": "abc"}, "Page ignored"),
    ({"page": "-1"}, "Page ignored"),
    ({"page": "0"}, "Page ignored"),
    ({"page": str(10**9)}, "Page ignored"),
    ({"page": "²"}, "Page ignored"),
    ({"page": "9" * 5000}, "Page ignored"),
    ({"q": "x" * 10_000}, "Search ignored"),
    ({"q": " "}, ""),  # blank: no search
]
FACET_BAD = {
    "agents": [({"state": "exploded"}, "State “exploded” ignored")],
    "decisions": [
        ({"since": "2026-02-30T10:00"}, "From (UTC) “2026-02-30T10:00” ignored"),
        ({"until": "yesterday"}, "To (UTC) “yesterday” ignored"),
        ({"outcome": "maybe"}, "Outcome “maybe” ignored"),
        ({"tool": "t" * 300}, "Tool ignored"),
        ({"before": "abc"}, "Page ignored: not a decision id"),
        ({"after": "-5"}, "Page ignored: not a decision id"),
        ({"before": "9" * 40}, "Page ignored: not a decision id"),
        ({"before": "999999999"}, "That page no longer exists"),
    ],
    "audit": [({"actor": "u" * 300}, "Who ignored")],
    "tools": [
        ({"risk": "extreme"}, "Risk “extreme” ignored"),
        ({"enabled": "maybe"}, "Status “maybe” ignored"),
        ({"failing": "no"}, "Failing “no” ignored"),
    ],
    "runs": [({"status": "bogus"}, "Status “bogus” ignored"), ({"agent": "a" * 257}, "Agent ignored")],
    "locks": [({"status": "open"}, "Status “open” ignored")],
    "active": [({"status": "open"}, "")],  # no status facet on this tab: not a parameter of it
    "finished": [({"status": "in_progress"}, "Status “in_progress” ignored")],
}


@pytest.mark.parametrize("name", ALL)
def test_bad_parameters_are_ignored_and_said_so(client, owner_a, name):
    spec = SPECS[name]
    spec.seed(owner_a.account, 3)
    every_row = sorted(rows_of(get(client, spec), spec))
    for params, notice in [*BAD, *FACET_BAD[name]]:
        html = get(client, spec, params)
        if notice:
            assert any(n.startswith(notice) for n in notices(html)), (params, notices(html))
        else:
            assert not notices(html)
        assert sorted(rows_of(html, spec)) == every_row, params  # the rest of the page as if not asked
    # Several at once: each said; what is valid still applies.
    html = get(client, spec, {"sort": "nope", "page": "x", "q": "y" * 257})
    assert len(notices(html)) == 3 and sorted(rows_of(html, spec)) == every_row
    # Control characters never reach a view (onceonly_site.middleware.ControlCharactersMiddleware): the 400 page.
    for bad in ({"q": "a\x00b"}, {"q": "a\x1bb"}, {"sort": "\x7f"}, {"page": "1\x85"}):
        response = client.get(spec.path, {**spec.base, **bad})
        assert response.status_code == 400 and "Bad request" in response.content.decode(), bad


def test_bad_dates_keep_the_good_filters(client, owner_a):
    seed_decisions(owner_a.account, 6)
    spec = SPECS["decisions"]
    html = get(client, spec, {"since": "not a date", "outcome": "executed"})
    assert len(rows_of(html, spec)) == 2 and notices(html) == [
        "From (UTC) “not a date” ignored: not a date and time (YYYY-MM-DD HH:MM)."
    ]
    # A shared link's date in another form shows in the input as the same instant, in UTC.
    html = get(client, spec, {"since": "2026-01-02 12:30+02:00"})
    assert 'name="since" value="2026-01-02T10:30:00"' in html


# --- queries ----------------------------------------------------------------------------------------------------


QUERIES = {"agents": 7, "decisions": 7, "audit": 7, "tools": 8, "runs": 6, "locks": 5, "active": 5, "finished": 5}
# Each: session, user, membership; then agents: count, page, cap states (today's rollups, the last hour's
# decisions) · decisions: suggestions (agents, tools of the week), page, total (the rollups) · audit: suggestions
# (actors, actions), count, page · tools: scope suggestions, the last hour's calls, count, page · runs: agent
# suggestions, count, page · locks & leases: count, page.
FILTERED = {
    "agents": {"q": "ag", "sort": "-last"},
    "decisions": {"q": "a", "tool": "s", "sort": "time"},
    "audit": {"q": "o", "actor": "user", "sort": "actor"},
    "tools": {"q": "t", "scope": "o", "sort": "-price"},
    "runs": {"q": "j", "agent": "b", "sort": "task"},
    "locks": {"q": "l", "status": "locked", "sort": "ttl"},
    "active": {"q": "l", "sort": "left"},
    "finished": {"q": "d", "status": "failed", "sort": "error"},
}
FILTERED_QUERIES = {"decisions": 8}  # + the agent ids the search matches (the small Agent table first)


@pytest.mark.parametrize("name", ALL)
def test_query_count_is_pinned_and_does_not_grow_with_rows(client, owner_a, name):
    spec = SPECS[name]

    def counts():
        out = []
        for params in ({}, FILTERED[name]):
            with CaptureQueriesContext(connection) as queries:
                html = get(client, spec, params)
            assert rows_of(html, spec) and not notices(html), params
            out.append(len(queries))
        return out

    spec.seed(owner_a.account, 3)
    few = counts()
    Agent.objects.filter(account=owner_a.account).exclude(agent_id__in=["billing-agent", "support-bot"]).delete()
    Decision.objects.filter(account=owner_a.account).delete()
    AuditEntry.objects.filter(account=owner_a.account).delete()
    Tool.objects.filter(account=owner_a.account).delete()
    Run.objects.filter(account=owner_a.account).delete()
    Lease.objects.filter(account=owner_a.account).delete()
    LockRecord.objects.filter(account=owner_a.account).delete()
    spec.seed(owner_a.account, 60)
    many = counts()
    assert few == many == [QUERIES[name], FILTERED_QUERIES.get(name, QUERIES[name])]


USAGE_SORTS = ("spend", "-spend", "actions", "-actions")


def test_agents_sorted_by_spend_or_actions_keep_a_fixed_query_count(client, owner_a):
    """Spend today and charged actions in the last hour sort in the page's own query (a correlated subquery each,
    governance.views._with_usage), over every agent the search and the quick filter keep: no query per agent, and
    the sorted page is the one the columns show (its cap states)."""
    spec = SPECS["agents"]

    def counts(params):
        out = {}
        for sort in USAGE_SORTS:
            with CaptureQueriesContext(connection) as queries:
                html = get(client, spec, {**params, "sort": sort})
            assert rows_of(html, spec) and not notices(html), sort
            out[sort] = len(queries)
        return out

    seed_agents(owner_a.account, 3)
    few = counts({"q": "ag"}), counts({"state": "ungoverned"})
    Agent.objects.filter(account=owner_a.account).delete()
    rows = seed_agents(owner_a.account, 60)
    many = counts({"q": "ag"}), counts({"state": "ungoverned"})
    assert few == many == (dict.fromkeys(USAGE_SORTS, QUERIES["agents"]), dict.fromkeys(USAGE_SORTS, 7))
    # The top spender first, with the amount its Spend today cell shows.
    top = max(rows, key=lambda a: (a.spent, a.pk))
    html = get(client, spec, {"sort": "-spend"})
    first = _Rows("agents")
    first.feed(html)
    assert first.rows[0][1][0].strip() == top.agent_id and f"${top.spent:,.2f}" in first.rows[0][1][3], first.rows[0]


def test_the_decision_log_sorts_by_time_only_and_says_so(client, owner_a):
    """By design (docs/operations.md §"Dashboard tables"): only Time sorts — newest or oldest first — and the other
    headers are plain text, not links; the page says why, and a sort by another column is ignored saying so."""
    spec = SPECS["decisions"]
    rows = seed_decisions(owner_a.account, 6)
    html = get(client, spec)
    head = html.split('<table class="table" id="timeline">')[1].split("</thead>")[0]
    assert list(header_links(head)) == ["Time"]
    for label in ("Agent", "Tool", "Decision", "Reason", "Spend", "Run"):
        assert f'<th scope="col">{label}</th>' in head, label  # no link, no arrow, no aria-sort
    assert head.count("aria-sort=") == 1
    note = "The decision log sorts by time only, newest or oldest first"
    assert f'<p class="help table-sort-note">{note}' in html
    newest = [str(d.pk) for d in sorted(rows, key=lambda d: (d.ts, d.pk), reverse=True)]
    assert rows_of(html, spec) == newest
    assert rows_of(get(client, spec, {"sort": "time"}), spec) == newest[::-1]  # oldest first
    for sort in ("tool", "-agent", "spend", "-reason", "outcome", "run"):
        html = get(client, spec, {"sort": sort})
        assert notices(html) == [
            f"Unknown sort ignored: {note[0].lower()}{note[1:]} (the Time header); narrow it "
            "by agent, tool, outcome or reason with the filters."
        ], sort
        assert rows_of(html, spec) == newest, sort


def test_like_wildcards_are_plain_characters(client, owner_a):
    for agent_id in ("a_b", "axb", "50%off", "500ff"):
        Agent.objects.create(account=owner_a.account, agent_id=agent_id)
    spec = SPECS["agents"]
    assert rows_of(get(client, spec, {"q": "_"}), spec) == ["a_b"]
    assert rows_of(get(client, spec, {"q": "0%o"}), spec) == ["50%off"]


def test_agents_quick_filters_keep_a_fixed_query_count(client, owner_a):
    spec = SPECS["agents"]

    def seed(n):
        Agent.objects.filter(account=owner_a.account).delete()
        for i in range(n):
            over = Agent.objects.create(
                account=owner_a.account, agent_id=f"over-{i:03d}", policy_version=1, policy={"max_actions_per_hour": 1}
            )
            decide(over, tool="flaky", outcome="failed", n=2)  # over its cap, and calling a failing tool
            Agent.objects.create(account=owner_a.account, agent_id=f"off-{i:03d}", is_enabled=False)

    def counts():
        out = {}
        for state in ("over", "near", "disabled", "ungoverned", "failing"):
            with CaptureQueriesContext(connection) as queries:
                html = get(client, spec, {"state": state})
            out[state] = (len(rows_of(html, spec)) > 0, len(queries))
        return out

    seed(3)
    few = counts()
    seed(60)
    # Over / near: the capped agents and their cap state (3) before the count and the page; failing: the failing
    # tools (1); disabled, ungoverned: a condition on the agent. A page of rows adds its cap states (2); no agent
    # in the state (near): not even a count.
    assert (
        counts()
        == few
        == {
            "over": (True, 10),
            "near": (False, 6),
            "disabled": (True, 7),
            "ungoverned": (True, 7),
            "failing": (True, 8),
        }
    )


def test_a_contains_facet_written_with_equals_matches_exactly(client, owner_a):
    """tables.exact, on every "contains" facet: Runs' agent=billing finds billing-agent, agent==billing finds none."""
    spec = SPECS["runs"]
    seed_runs(owner_a.account, 6)
    Run.objects.filter(account=owner_a.account, agent_id="support-bot").update(agent_id="billing")
    contains = get(client, spec, {"agent": "billing"})
    exactly = get(client, spec, {"agent": "=billing"})
    assert len(rows_of(contains, spec)) == 4 and len(rows_of(exactly, spec)) == 2
