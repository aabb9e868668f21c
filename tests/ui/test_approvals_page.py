"""The Approvals pages (governance/approval_views.py): the queue's tabs, search, facets, sort and pages (the data-table
helpers of tests/ui/test_tables.py), an approval's page (args while pending; who, when and why once decided), approve
and deny from it (a reason needed to deny), viewers who look only, other accounts' approvals (404), a decision that
came too late (said so, never a 500), the plan's gate, pinned query counts, and the navigation's pending badge (from
Redis: no query)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import Account, AuditEntry
from governance import approval_selectors, approval_views, approvals
from governance.models import Agent, Approval
from tests.ui.test_tables import Spec, everything, expected, get, notices, rows_of, total, walk
from tests.ui.test_viewer_read_only import post_actions

Status = Approval.Status
JSON = "application/json"
NOW = timezone.now().replace(microsecond=0)


def run(key, tool="stripe.refund", args=None, agent="billing-agent", **extra):
    body = {"agent_id": agent, "tool": tool, "args": {"charge": "ch_1"} if args is None else args, **extra}
    response = key.client().post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def gate(key, agent="billing-agent", **fields):
    policy = {"require_approval": ["stripe.refund", {"tool": "stripe.*", "over_usd": 50}], **fields}
    response = key.client().post(f"/v1/policies/{agent}", policy, content_type=JSON)
    assert response.status_code == 200, response.content


def ask(key, **kwargs) -> str:
    body = run(key, **kwargs)
    assert body["policy_reason"] == "approval_required", body
    return body["result"]["approval_id"]


def decide(key, approval_id, approve=True, reason="", actor="alice@example.com"):
    return approvals.decide(
        account_id=key.api_key.account_id, public_id=approval_id, approve=approve, reason=reason, actor=actor
    )


def page_of(approval_id: str) -> str:
    return f"/approvals/{approval_id}/"


@pytest.fixture
def client(owner_a):
    return owner_a.login(Client())


# --- the queue ----------------------------------------------------------------------------------------------------


def test_the_queue_lists_each_tab_with_its_counts_rules_and_links(client, key_a):
    gate(key_a)
    superseded = ask(key_a, args={"n": 0})
    gate(key_a, max_actions_per_hour=100)  # a new version: the open one is superseded
    pending = ask(key_a, tool="stripe.charge", args={"amount": 7500}, spend_usd=75)
    denied = ask(key_a, args={"n": 2})
    decide(key_a, denied, approve=False, reason="wrong customer")
    used = ask(key_a, args={"n": 3})
    decide(key_a, used)
    retry = run(key_a, args={"n": 3})
    expired = ask(key_a, args={"n": 4})
    Approval.objects.filter(public_id=expired).update(expires_at=timezone.now() - timedelta(seconds=1))  # not swept
    spec = tab_spec("pending")

    html = get(client, spec)
    tabs = dict(re.findall(r'<a href="\?tab=(\w+)"[^>]*>[^<]*<span class="muted">\((\d+)\)</span>', html))
    assert tabs == {"pending": "1", "decided": "2", "closed": "2"}
    assert rows_of(html, spec) == [pending]
    row = Approval.objects.select_related("agent").get(public_id=pending)
    assert f'href="/agents/{row.agent_id}/"' in html and "$75.00" in html and "stripe.* over $50.00" in html
    assert f'href="/decisions/{row.requested_by_id}/" data-drawer' in html
    assert re.search(r"<time [^>]*>in (59|1 hour)", unescape(html)), "expires: relative"
    assert total(html) == "1 approval"

    decided = get(client, tab_spec("decided"))
    assert sorted(rows_of(decided, tab_spec("decided"))) == sorted([denied, used])
    assert ">denied</span>" in decided and ">used</span>" in decided and "by alice@example.com" in decided
    assert f'href="/decisions/{retry["decision_id"]}/" data-drawer' in decided  # the decision that used it
    closed = get(client, tab_spec("closed"))
    assert sorted(rows_of(closed, tab_spec("closed"))) == sorted([superseded, expired])
    assert ">superseded</span>" in closed and ">expired</span>" in closed


def test_an_empty_queue_says_so(client):
    html = get(client, tab_spec("pending"))
    assert "No approval is waiting for a decision." in html and "require_approval" in html
    assert "No approval has been decided yet." in get(client, tab_spec("decided"))
    assert "No approval has expired or been superseded." in get(client, tab_spec("closed"))


def test_an_unknown_tab_is_the_pending_one(client, key_a):
    gate(key_a)
    pending = ask(key_a)
    html = client.get("/approvals/", {"tab": "nope"}).content.decode()
    assert rows_of(html, tab_spec("pending")) == [pending]


# --- the data table: search, facets, sort, pages (tests/ui/test_tables.py's helpers) ------------------------------

TOOLS = ("email", "refund", "search")
AGENTS = ("billing-agent", "support-bot")
RISKS = ("low", "medium", "high")
TAB_STATUSES = {
    "pending": (Status.PENDING,),
    "decided": (Status.APPROVED, Status.DENIED, Status.CONSUMED),
    "closed": (Status.EXPIRED, Status.SUPERSEDED),
}


def seed_tab(tab: str):
    def seed(account, n):
        agents = [Agent.objects.get_or_create(account=account, agent_id=a)[0] for a in AGENTS]
        rows = []
        for i in range(n):
            status = TAB_STATUSES[tab][i % len(TAB_STATUSES[tab])]
            created = NOW - timedelta(minutes=i * 7 % 50, seconds=i)
            decided = status in (Status.APPROVED, Status.DENIED, Status.CONSUMED) or (
                status == Status.SUPERSEDED and i % 2 == 0
            )
            rows.append(
                Approval.objects.create(
                    public_id=f"apr_{tab}{i:03d}",
                    account=account,
                    agent=agents[i % 2],
                    tool=f"{TOOLS[i % 3]}{i:03d}",
                    args_hash=f"{i:064d}",
                    policy_version=1,
                    rule={"tool": f"{TOOLS[i % 3]}*", "over_usd": 10 if i % 2 else None},
                    risk_level=RISKS[i % 3],
                    spend_usd=Decimal(i * 37 % 11),
                    status=status,
                    created_at=created,
                    # In time for the pending and decided tabs (their open ones would be expired, else).
                    expires_at=NOW + timedelta(hours=2, minutes=i * 5 % 13) if tab != "closed" else created,
                    decided_at=created + timedelta(minutes=i % 4) if decided else None,
                    decided_by=f"user{i % 3}@acme.test" if decided else "",
                    reason="too risky" if status == Status.DENIED else "",
                )
            )
        return list(Approval.objects.select_related("agent").filter(pk__in=[r.pk for r in rows]))

    return seed


SORTS = {
    "tool": lambda a: a.tool,
    "agent": lambda a: a.agent.agent_id,
    "risk": lambda a: a.risk_level,
    "spend": lambda a: a.spend_usd,
    "status": lambda a: a.status,
    "created": lambda a: a.created_at,
    "expires": lambda a: a.expires_at,
}


def tab_spec(tab: str) -> Spec:
    sorts = dict(SORTS) if tab == "pending" else {**SORTS, "decided": lambda a: a.decided_at}
    return Spec(
        f"approvals-{tab}",
        "/approvals/",
        "approvals",
        seed_tab(tab),
        lambda a: a.public_id,
        None,
        sorts,
        "expires" if tab == "pending" else "-created",
        base={"tab": tab},
        noun=("approval", "approvals"),
    )


TABS = list(TAB_STATUSES)
PAGE = 5


@pytest.fixture
def small_pages(monkeypatch):
    for table in approval_views.TABLES.values():
        monkeypatch.setattr(table, "per_page", PAGE)


@pytest.mark.parametrize("tab", TABS)
def test_every_sortable_column_sorts_both_ways_across_pages(client, owner_a, small_pages, tab):
    spec = tab_spec(tab)
    rows = spec.seed(owner_a.account, 13)
    headers = approval_views.TABLES[tab].by_key
    assert set(headers) == set(spec.sorts), "a sortable column without a test"
    for sort in spec.sorts:
        for direction in (sort, f"-{sort}"):
            pages, last = walk(client, spec, {"sort": direction})
            assert [len(p) for p in pages] == [5, 5, 3], (direction, pages)
            assert [r for p in pages for r in p] == expected(spec, rows, direction), direction
            back, _ = walk(client, spec, last, rel="prev")
            assert back == pages[::-1], f"{direction}: back differs"
            assert not notices(get(client, spec, last))


FILTERS = {
    "pending": [
        ({"q": "REFUND"}, lambda a: a.tool.startswith("refund")),
        ({"q": "support"}, lambda a: a.agent.agent_id == "support-bot"),
        ({"q": "apr_pending00"}, lambda a: a.public_id.startswith("apr_pending00")),
        ({"agent": "BILLING"}, lambda a: a.agent.agent_id == "billing-agent"),
        ({"agent": "=support-bot"}, lambda a: a.agent.agent_id == "support-bot"),
        ({"tool": "Search"}, lambda a: a.tool.startswith("search")),
        ({"risk": "high"}, lambda a: a.risk_level == "high"),
        ({"agent": "billing", "tool": "email"}, lambda a: a.agent.agent_id == "billing-agent" and "email" in a.tool),
    ],
    "decided": [
        ({"status": "approved"}, lambda a: a.status == Status.APPROVED),
        ({"status": "denied"}, lambda a: a.status == Status.DENIED),
        ({"status": "consumed"}, lambda a: a.status == Status.CONSUMED),
        ({"q": "USER1@"}, lambda a: a.decided_by == "user1@acme.test"),
        ({"q": "too risky"}, lambda a: a.reason == "too risky"),
        (
            {"status": "denied", "agent": "bot"},
            lambda a: a.status == Status.DENIED and a.agent.agent_id == "support-bot",
        ),
    ],
    "closed": [
        ({"status": "expired"}, lambda a: a.status == Status.EXPIRED),
        ({"status": "superseded"}, lambda a: a.status == Status.SUPERSEDED),
        ({"tool": "email", "status": "superseded"}, lambda a: "email" in a.tool and a.status == Status.SUPERSEDED),
    ],
}


@pytest.mark.parametrize("tab", TABS)
def test_search_and_each_facet(client, owner_a, small_pages, tab):
    spec = tab_spec(tab)
    rows = spec.seed(owner_a.account, 17)
    for params, keep in FILTERS[tab]:
        wanted = [spec.ident(r) for r in rows if keep(r)]
        assert wanted, f"{params}: the test's data has no match"
        assert sorted(everything(client, spec, params)) == sorted(wanted), params
        html = get(client, spec, params)
        assert not notices(html) and "Remove filter" in html, params
    facets = {f.name for f in approval_views.TABLES[tab].facets}
    tested = {k for params, _ in FILTERS[tab] for k in params} | {k for params, _ in FILTERS["pending"] for k in params}
    assert facets <= tested, "a facet without a test"


def test_an_open_approval_past_its_time_is_listed_as_expired(client, owner_a):
    rows = seed_tab("pending")(owner_a.account, 4)
    Approval.objects.filter(pk=rows[0].pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert rows[0].public_id not in rows_of(get(client, tab_spec("pending")), tab_spec("pending"))
    closed = get(client, tab_spec("closed"), {"status": "expired"})
    assert rows_of(closed, tab_spec("closed")) == [rows[0].public_id]


def test_links_keep_the_tab_the_search_and_the_filters(client, owner_a, small_pages):
    spec = tab_spec("decided")
    spec.seed(owner_a.account, 30)
    html = get(client, spec, {"q": "0", "status": "denied", "sort": "tool"})
    forward = re.search(r'<a href="([^"]*)" rel="next">', html)
    assert forward is not None
    state = dict(re.findall(r"([a-z]+)=([^&]*)", unescape(forward.group(1))))
    assert state == {"tab": "decided", "q": "0", "status": "denied", "sort": "tool", "page": "2"}
    assert '<input type="hidden" name="tab" value="decided">' in html


@pytest.mark.parametrize(
    ("params", "notice"),
    [
        ({"sort": "nope"}, "Unknown sort ignored"),
        ({"page": "abc"}, "Page ignored"),
        ({"status": "pending"}, "Status “pending” ignored"),  # not a status of the decided tab
        ({"risk": "extreme"}, "Risk “extreme” ignored"),
        ({"agent": "a" * 300}, "Agent ignored"),
    ],
)
def test_bad_parameters_are_ignored_and_said_so(client, owner_a, params, notice):
    spec = tab_spec("decided")
    spec.seed(owner_a.account, 3)
    every_row = sorted(rows_of(get(client, spec), spec))
    html = get(client, spec, params)
    assert any(n.startswith(notice) for n in notices(html)), notices(html)
    assert sorted(rows_of(html, spec)) == every_row


def test_a_search_that_matches_nothing_says_so(client, owner_a):
    spec = tab_spec("pending")
    spec.seed(owner_a.account, 3)
    html = get(client, spec, {"q": "zzz-nothing"})
    assert rows_of(html, spec) == [] and "No approval in this list matches these filters." in html


# Session, user, membership; the tab counts; the agent and tool suggestions; the count; the page (agents joined).
QUERIES = 8


@pytest.mark.parametrize("tab", TABS)
def test_query_count_is_pinned_and_does_not_grow_with_rows(client, owner_a, tab):
    spec = tab_spec(tab)

    def counts():
        out = []
        for params in ({}, {"q": "e", "agent": "b", "sort": "-spend"}):
            with CaptureQueriesContext(connection) as queries:
                html = get(client, spec, params)
            assert rows_of(html, spec) and not notices(html), params
            out.append(len(queries))
        return out

    spec.seed(owner_a.account, 3)
    few = counts()
    Approval.objects.all().delete()
    spec.seed(owner_a.account, 60)
    assert counts() == few == [QUERIES, QUERIES]


def test_the_detail_page_query_count_is_pinned(client, key_a):
    gate(key_a)
    approval_id = ask(key_a)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(page_of(approval_id)).status_code == 200
    assert len(queries) == 4  # session, user, membership; the approval with its agent


# --- one approval -------------------------------------------------------------------------------------------------


def test_the_page_shows_the_call_and_its_args_while_pending(client, key_a):
    gate(key_a)
    body = run(key_a, tool="stripe.charge", args={"amount": 7500, "customer": "cus_1", "run_id": "r-1"}, spend_usd=75)
    approval_id = body["result"]["approval_id"]
    html = unescape(client.get(page_of(approval_id)).content.decode())
    approval = Approval.objects.get(public_id=approval_id)
    assert "stripe.charge" in html and "billing-agent" in html and "$75.00" in html
    assert "require_approval stripe.* over $50.00" in html and f"policy version {approval.policy_version}" in html
    assert '"amount": 7500' in html and '"customer": "cus_1"' in html  # readable JSON
    assert f'href="/decisions/{body["decision_id"]}/" data-drawer' in html
    assert approval.args_hash in html and "Waiting for a person" in html
    assert 'href="/runs/timeline/?run_id=r-1"' in html
    assert post_actions(html) == [f"/approvals/{approval_id}/decide/"] * 2  # Approve, Deny


def test_approve_from_the_page_then_the_identical_retry_runs(client, key_a, owner_a):
    gate(key_a)
    approval_id = ask(key_a)
    response = client.post(f"/approvals/{approval_id}/decide/", {"action": "approve", "reason": ""})
    assert response.status_code == 302 and response["Location"] == page_of(approval_id)
    approval = Approval.objects.get(public_id=approval_id)
    assert approval.status == Status.APPROVED and approval.decided_by == owner_a.email and approval.reason == ""
    html = unescape(client.get(page_of(approval_id)).content.decode())
    assert "Approved. The agent's identical retry of stripe.refund runs once" in html
    assert owner_a.email in html and post_actions(html) == []  # decided: no form
    assert "Not kept: the arguments are deleted" in html and "ch_1" not in html
    retry = run(key_a)
    assert (retry["allowed"], retry["policy_reason"]) == (True, "within_budget")
    html = unescape(client.get(page_of(approval_id)).content.decode())
    assert ">used</span>" in html and f'href="/decisions/{retry["decision_id"]}/" data-drawer' in html
    entry = AuditEntry.objects.get(action="governance.approval.approved")
    assert entry.actor_label == owner_a.email and entry.object_id == approval_id


def test_deny_needs_a_reason_and_shows_it(client, key_a, admin_a):
    gate(key_a)
    approval_id = ask(key_a)
    admin = admin_a.login(Client())
    for blank in ("", "   "):
        response = admin.post(f"/approvals/{approval_id}/decide/", {"action": "deny", "reason": blank})
        assert response.status_code == 422
        html = unescape(response.content.decode())
        assert "Say why it is denied" in html and 'id="deny-reason-err"' in html and 'aria-invalid="true"' in html
        assert Approval.objects.get(public_id=approval_id).status == Status.PENDING
    response = admin.post(f"/approvals/{approval_id}/decide/", {"action": "deny", "reason": "  not this customer "})
    assert response.status_code == 302
    approval = Approval.objects.get(public_id=approval_id)
    assert (approval.status, approval.reason, approval.decided_by) == (
        Status.DENIED,
        "not this customer",
        admin_a.email,
    )
    html = unescape(admin.get(page_of(approval_id)).content.decode())
    assert ">denied</span>" in html and "not this customer" in html and admin_a.email in html
    assert approval.decided_at.strftime("%Y-%m-%d %H:%M:%S") in html
    body = run(key_a)
    assert body["policy_reason"] == "approval_denied" and body["result"]["reason"] == "not this customer"


def test_a_bad_action_or_a_long_reason_decides_nothing(client, key_a):
    gate(key_a)
    approval_id = ask(key_a)
    for data in ({"action": "maybe"}, {}, {"action": "approve", "reason": "x" * 1001}):
        response = client.post(f"/approvals/{approval_id}/decide/", data)
        assert response.status_code == 422, data
    assert Approval.objects.get(public_id=approval_id).status == Status.PENDING


def test_a_viewer_sees_the_page_read_only_and_cannot_decide(viewer_a, key_a):
    gate(key_a)
    approval_id = ask(key_a)
    viewer = viewer_a.login(Client())
    assert viewer.get("/approvals/").status_code == 200
    html = unescape(viewer.get(page_of(approval_id)).content.decode())
    assert post_actions(html) == [] and "Approve</button>" not in html and "Deny</button>" not in html
    assert "Waiting for an owner or admin" in html and '"charge": "ch_1"' in html
    for action in ("approve", "deny"):
        response = viewer.post(f"/approvals/{approval_id}/decide/", {"action": action, "reason": "x"})
        assert response.status_code == 403
    assert Approval.objects.get(public_id=approval_id).status == Status.PENDING


def test_another_accounts_approval_is_404(owner_b, key_a):
    gate(key_a)
    approval_id = ask(key_a)
    other = owner_b.login(Client())
    assert other.get(page_of(approval_id)).status_code == 404
    assert other.post(f"/approvals/{approval_id}/decide/", {"action": "approve"}).status_code == 404
    assert approval_id not in other.get("/approvals/").content.decode()
    assert Approval.objects.get(public_id=approval_id).status == Status.PENDING
    assert Client().get(page_of(approval_id))["Location"].startswith("/login/")


@pytest.mark.parametrize("missing", ["apr_nope", "x" * 300])
def test_a_missing_approval_is_404(client, missing):
    assert client.get(page_of(missing)).status_code == 404
    assert client.post(f"/approvals/{missing}/decide/", {"action": "approve"}).status_code == 404


def test_a_decision_that_comes_too_late_is_said_so(client, key_a):
    gate(key_a)
    denied = ask(key_a)
    decide(key_a, denied, approve=False, reason="no", actor="bob@example.com")
    response = client.post(f"/approvals/{denied}/decide/", {"action": "approve"}, follow=True)
    assert response.status_code == 200
    assert "Nothing changed: this approval was already denied by bob@example.com." in unescape(
        response.content.decode()
    )
    expired = ask(key_a, args={"n": 2})
    Approval.objects.filter(public_id=expired).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.post(f"/approvals/{expired}/decide/", {"action": "approve"}, follow=True)
    assert "Nothing changed: this approval was already expired." in unescape(response.content.decode())
    assert post_actions(client.get(page_of(expired)).content.decode()) == []
    assert not AuditEntry.objects.filter(action="governance.approval.approved").exists()


def test_without_governance_on_the_plan_the_page_is_read_only(client, key_a, plans):
    gate(key_a)
    approval_id = ask(key_a)
    Account.objects.filter(pk=key_a.api_key.account_id).update(plan=plans["starter"])
    html = unescape(client.get(page_of(approval_id)).content.decode())
    assert post_actions(html) == [] and "Approvals are not on the Starter plan" in html
    assert client.post(f"/approvals/{approval_id}/decide/", {"action": "approve"}).status_code == 403
    assert Approval.objects.get(public_id=approval_id).status == Status.PENDING


# --- the navigation's badge ---------------------------------------------------------------------------------------


def badge(html: str) -> str | None:
    found = re.search(r'href="/approvals/"[^>]*>Approvals</a> <span class="badge[^"]*">([\d,]+)<', html)
    return found.group(1) if found else None


def test_the_navigation_shows_the_pending_count_without_a_query(client, key_a, django_capture_on_commit_callbacks):
    assert badge(client.get("/agents/").content.decode()) is None
    gate(key_a)
    with django_capture_on_commit_callbacks(execute=True):  # the approvals' listeners count again, after the commit
        first = ask(key_a)
        ask(key_a, args={"n": 2})
    with CaptureQueriesContext(connection) as shown:
        assert badge(client.get("/agents/").content.decode()) == "2"
    key = approval_selectors.BADGE_KEY.format(account_id=key_a.api_key.account_id)
    count = approval_selectors.get_redis().get(key)
    approval_selectors.get_redis().delete(key)
    with CaptureQueriesContext(connection) as hidden:
        assert badge(client.get("/agents/").content.decode()) is None
    assert len(shown) == len(hidden)  # the badge is read from Redis, not counted
    approval_selectors.get_redis().set(key, count)
    with django_capture_on_commit_callbacks(execute=True):
        decide(key_a, first)
    assert badge(client.get("/agents/").content.decode()) == "1"
    # A count lost (Redis flushed) shows no badge until the queue, or the next change, counts again.
    approval_selectors.get_redis().flushdb()
    assert badge(client.get("/agents/").content.decode()) is None
    assert badge(client.get("/approvals/").content.decode()) == "1"
    assert badge(client.get("/decisions/").content.decode()) == "1"
