"""The operational overview on "/" (governance/overview.py, templates/governance/_operations_panel.html), its live
refresh fragment, and the state you can't miss on the agent page (over/near a cap in colour and words)."""

from __future__ import annotations

import html as html_lib
import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from billing import panels
from governance import overview
from governance.models import Agent
from governance.services import OPERATOR_AGENT
from idempotency.models import Lease, Run
from tests.support.decisions import agent, decide

OPS = '<div id="operations"'


def ops_html(client: Client, url: str = "/") -> str:
    html = client.get(url).content.decode()
    start = html.index(OPS)
    return html[start : html.index('<div class="grid">', start)]


def chart_data(html: str) -> dict:
    return json.loads(html_lib.unescape(re.search(r'<div id="operations"[^>]* data-charts="([^"]*)"', html).group(1)))


def seed_more(account) -> None:
    seed(account, agents=40, per_agent=30, prefix="more-")


def seed(account, *, agents: int = 1, per_agent: int = 1, prefix: str = "") -> None:
    """A busy account: capped agents (one over its spend cap, one at a per-tool cap whose last call was blocked),
    a failing tool, failed runs, the operator's test calls; ``agents``/``per_agent`` scale the volume."""
    now = timezone.now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)

    def today(minutes: int):
        """``minutes`` ago, but not before today's UTC midnight: the caps count per UTC day, and a run just after
        midnight would otherwise put "today's" spend and calls on yesterday."""
        return max(now - timedelta(minutes=minutes), day_start)

    spender = agent(account, f"{prefix}billing-agent", {"max_spend_usd_per_day": 10, "max_actions_per_hour": 100})
    decide(spender, tool="stripe.charge", spend="10.155", n=2, ts=today(30))
    mailer = agent(account, f"{prefix}mailer", {"max_calls_per_tool": {"send_email": 3}})
    decide(mailer, tool="send_email", n=3, ts=today(20))
    decide(
        mailer,
        tool="send_email",
        outcome="blocked",
        ts=today(2),
        explain={"limit": 3, "count": 3, "cap_key": "send_email", "policy_version": 1},
    )
    decide(spender, tool="flaky.api", outcome="failed", n=3, ts=now - timedelta(minutes=5))
    decide(spender, tool="flaky.api", n=1, ts=now - timedelta(minutes=5))
    operator = Agent.objects.get_or_create(account=account, agent_id=OPERATOR_AGENT)[0]
    decide(
        operator,
        tool="webhook.test",
        outcome="failed",
        ts=now - timedelta(minutes=1),
        explain={"test_call": True, "actor": "alice@acme.test"},
    )
    for i in range(agents):
        a = agent(account, f"{prefix}worker-{i:03d}", {"max_spend_usd_per_day": 100, "max_actions_per_hour": 10_000})
        decide(a, tool=f"tool-{i % 7}", spend="0.001", n=per_agent, ts=today(10 + i % 40))
        decide(a, tool=f"tool-{i % 7}", outcome="blocked", reason="daily_spend_exceeded", ts=now - timedelta(hours=3))
        decide(a, tool=f"tool-{i % 7}", n=per_agent, ts=now - timedelta(days=3 + i % 20))
    lease = Lease.objects.create(
        account=account,
        key=f"{prefix}k",
        status="failed",
        lease_id="l",
        ttl_seconds=60,
        first_seen_at=now,
        acquired_at=now,
        expires_at=now,
        updated_at=now,
    )
    for i in range(agents):
        Run.objects.create(
            account=account,
            lease=lease,
            key=f"{prefix}k",
            lease_version=i + 1,
            holder="h",
            run_id=f"{prefix}run-{i}",
            status="failed",
            error_code="timeout",
            created_at=now - timedelta(minutes=i),
            enqueued_at=now,
            deadline_at=now,
        )


# --- what the panel says, and where its numbers lead ----------------------------------------------------------------


def test_the_overview_shows_state_with_numbers_and_links_into_filtered_tables(owner_a, account_a):
    seed(account_a)
    html = ops_html(owner_a.login(Client()))

    assert "$20.31 of $10.00 today — over the daily cap" in html
    assert "3 of 3 send_email calls today — at the send_email cap" in html
    assert 'class="state state-over">over<' in html
    # the failing tool, with its numbers and a link to its failed decisions of the last hour
    failing = re.search(r'<a href="([^"]+)">3 of 4 calls failed \(75%\)</a>', html)
    assert failing and "flaky.api" in html
    query = parse_qs(urlsplit(failing.group(1).replace("&amp;", "&")).query)
    assert query["tool"] == ["=flaky.api"] and query["outcome"] == ["failed"] and "since" in query
    # the top block reason links to the Decisions table filtered by reason and outcome
    reason = re.search(r'<a href="(/decisions/\?[^"]+)"><strong>1</strong> <span class="mono">tool_call_limit', html)
    assert reason, html
    query = parse_qs(urlsplit(reason.group(1).replace("&amp;", "&")).query)
    assert query["outcome"] == ["blocked"] and query["reason"] == ["=tool_call_limit_exceeded"]
    # the latest blocked decision of each agent opens in the drawer
    blocked = html[html.index("Recently blocked") :]
    assert len(re.findall(r'<a href="/decisions/(\d+)/" data-drawer', blocked)) == 2  # mailer, worker-000
    assert blocked.index("mailer") < blocked.index("worker-000")  # newest first
    assert "per-tool cap reached — 3 of 3 today" in blocked


def test_the_operators_test_calls_are_in_no_agent_list(owner_a, account_a):
    seed(account_a)
    client = owner_a.login(Client())
    assert OPERATOR_AGENT not in ops_html(client)
    assert OPERATOR_AGENT not in client.get("/agents/").content.decode()
    # …while its decisions stay in the decision log
    assert OPERATOR_AGENT in client.get("/decisions/").content.decode()


def test_time_ranges_pick_buckets_and_mark_the_current_one(owner_a, account_a):
    seed(account_a)
    client = owner_a.login(Client())
    for key, buckets in (("1h", 12), ("24h", 24), ("7d", 28), ("30d", 30), ("nonsense", 24)):
        html = ops_html(client, f"/?range={key}")
        shown = key if key in overview.RANGES else "24h"
        assert re.search(rf'<a href="\?range={shown}" aria-current="page">', html)
        assert html.count('aria-current="page"') == 1
        data = chart_data(html)
        assert len(data["outcomes"]["labels"]) == buckets
        assert all(len(values) == buckets for values in data["outcomes"]["counts"].values())
        assert f'hx-get="/overview/operations/?range={shown}"' in html
    # 5-minute buckets of the last hour count the last hour's decisions, from the decisions themselves
    data = chart_data(ops_html(client, "/?range=1h"))
    assert sum(data["outcomes"]["counts"]["executed"]) == 2 + 3 + 1 + 1  # spender 2, mailer 3, flaky 1, worker 1
    assert sum(data["outcomes"]["counts"]["failed"]) == 3 + 1  # flaky 3, the operator's failed test call


def test_spend_chart_data_is_cumulative_against_the_cap(owner_a, account_a):
    seed(account_a)
    html = ops_html(owner_a.login(Client()))
    data = chart_data(html)
    charts = {c["agent"]: c for c in data["spend"]["charts"]}
    assert charts["billing-agent"]["cap"] == 10 and charts["billing-agent"]["spend"][-1] == pytest.approx(20.31)
    spend = charts["billing-agent"]["spend"]
    assert spend == sorted(spend)  # cumulative: never goes down
    assert charts["billing-agent"]["level"] == "over" and "mailer" not in charts  # no spend cap, no chart
    assert charts["worker-000"]["spend"][-1] == pytest.approx(0.001)


def test_empty_states_say_what_to_do(owner_a):
    html = ops_html(owner_a.login(Client()))
    assert "No decisions in the last 24 h" in html and "API keys" in html
    assert "No call was blocked" in html and "Set <code>max_spend_usd_per_day</code>" in html
    assert chart_data(html) == {
        "outcomes": chart_data(html)["outcomes"],
        "spend": {"labels": chart_data(html)["spend"]["labels"], "charts": []},
    }


def test_the_live_refresh_fragment(owner_a, account_a, owner_b):
    seed(account_a)
    anonymous = Client().get("/overview/operations/?range=1h")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    html = owner_a.login(Client()).get("/overview/operations/?range=7d").content.decode()
    assert html.lstrip().startswith('<div id="operations"') and "<main" not in html
    assert "billing-agent" in html and 'href="?range=7d" aria-current="page"' in html
    # another account sees its own (empty) overview
    assert "billing-agent" not in owner_b.login(Client()).get("/overview/operations/").content.decode()


@pytest.mark.parametrize("url", ["/", "/overview/operations/"])
def test_an_unknown_range_shows_24_hours_and_says_so(owner_a, url):
    response = owner_a.login(Client()).get(url, {"range": "<b>90d</b>"})
    html = response.content.decode()
    assert response.status_code == 200 and 'href="?range=24h" aria-current="page"' in html
    assert "Range “&lt;b&gt;90d&lt;/b&gt;” ignored: choose 1h, 24h, 7d, 30d." in html
    assert "ignored" not in owner_a.login(Client()).get(url, {"range": "7d"}).content.decode()


# --- bounded reads ---------------------------------------------------------------------------------------------------


QUERIES_PAGE = 18


@pytest.mark.parametrize("range_", ["1h", "24h", "30d"])
def test_overview_query_count_does_not_depend_on_the_data(owner_a, account_a, range_, django_assert_num_queries):
    """A handful of decisions or forty agents with thousands: the same number of queries (the series from the
    rollups, the last hour from its decisions, every list LIMITed)."""
    seed(account_a)
    client = owner_a.login(Client())
    client.get("/")  # warm the session's caches
    # session, user, memberships, active keys, usage mirror; operations: series, block reasons, agents needing
    # attention, their cap states (2), the spend charts, failing tools, recent blocked (2), failed runs, alerts;
    # keyed-runs panel (2)
    with django_assert_num_queries(QUERIES_PAGE):
        assert client.get(f"/?range={range_}").status_code == 200
    seed_more(account_a)
    with django_assert_num_queries(QUERIES_PAGE):
        response = client.get(f"/?range={range_}")
    assert "more-mailer" in response.content.decode()  # the new data is read, not a cached page


def test_the_fragment_query_count_is_pinned(owner_a, account_a, django_assert_num_queries):
    seed(account_a)
    seed_more(account_a)
    client = owner_a.login(Client())
    client.get("/")
    with django_assert_num_queries(QUERIES_PAGE - 4):  # not: active keys, usage mirror, the keyed-runs panel
        assert client.get("/overview/operations/").status_code == 200


def test_recent_blocked_reads_only_the_hour_of_each_agents_latest_blocked_decision(account_a):
    """The newest blocked decision is found even when many later calls of the agent were not blocked, and an older
    blocked one of the same agent is not shown."""
    now = timezone.now()
    a = agent(account_a, "busy")
    [old] = decide(a, outcome="blocked", ts=now - timedelta(hours=5))
    [latest] = decide(a, outcome="blocked", ts=now - timedelta(hours=2))
    decide(a, n=50, ts=now - timedelta(minutes=30))
    rows = overview.recent_blocked(account_a.pk, now - timedelta(days=1))
    assert [row["d"].pk for row in rows] == [latest.pk] and old.pk != latest.pk


# --- the panel registry of billing ---------------------------------------------------------------------------------


def test_panels_may_take_the_request_and_come_first(monkeypatch, rf, account_a):
    monkeypatch.setattr(panels, "_panels", [])
    seen = []
    panels.register(lambda account: {"template": "a"})
    panels.register(lambda account, request: seen.append(request) or {"template": "b"}, with_request=True, first=True)
    request = rf.get("/?range=7d")
    assert [ctx["template"] for ctx in panels.render_all(account_a, request)] == ["b", "a"]
    assert seen == [request]


# --- the agent page: over / near a cap in colour and words -----------------------------------------------------------


def test_agent_page_says_over_the_cap_in_red_and_words(owner_a, account_a):
    a = agent(account_a, "billing-agent", {"max_spend_usd_per_day": 10})
    decide(a, spend="10.155", n=2)
    html = owner_a.login(Client()).get(f"/agents/{a.pk}/").content.decode()
    status = re.search(r'<p class="status-line">(.*?)</p>', html, re.S).group(1)
    assert "over a cap" in status and "$20.31 of $10.00 today — over the daily cap" in status
    assert 'class="bar bar-over"' in html and 'data-width="203"' in html


def test_agent_page_says_near_the_cap_in_amber(owner_a, account_a):
    a = agent(account_a, "near-agent", {"max_spend_usd_per_day": 10, "max_actions_per_hour": 100})
    decide(a, spend="8.5")
    html = owner_a.login(Client()).get(f"/agents/{a.pk}/").content.decode()
    status = re.search(r'<p class="status-line">(.*?)</p>', html, re.S).group(1)
    assert "near a cap" in status and "$8.50 of $10.00 today — near the daily cap" in status
    assert 'class="bar bar-near"' in html and 'class="bar bar-ok"' in html  # spend near, actions (1 of 100) ok
    assert "1 of 100 actions in the last hour — within the hourly cap" in html


def test_agent_page_within_caps_and_ungoverned(owner_a, account_a):
    calm = agent(account_a, "calm", {"max_spend_usd_per_day": 10})
    free = agent(account_a, "free")
    client = owner_a.login(Client())
    assert "within its caps" in client.get(f"/agents/{calm.pk}/").content.decode()
    html = client.get(f"/agents/{free.pk}/").content.decode()
    assert "no limits apply" in re.search(r'<p class="status-line">(.*?)</p>', html, re.S).group(1)


def test_the_agents_table_says_which_cap(owner_a, account_a):
    over = agent(account_a, "refund-bot", {"max_calls_per_tool": {"stripe.refund": 3}, "max_spend_usd_per_day": 100})
    decide(over, tool="stripe.refund", n=3)
    near = agent(account_a, "near-bot", {"max_spend_usd_per_day": 10})
    decide(near, spend="8.5")
    agent(account_a, "calm-bot", {"max_spend_usd_per_day": 10})
    html = owner_a.login(Client()).get("/agents/").content.decode()
    why = {}
    for row in html.split("<tr")[1:]:
        name, said = re.search(r'href="/agents/\d+/">([^<]+)</a>', row), re.search(r'class="cap-why">([^<]+)<', row)
        if name and said:
            why[name.group(1)] = said.group(1)
    assert why == {
        "refund-bot": "3 of 3 stripe.refund calls today — at the stripe.refund cap: the next call is blocked",
        "near-bot": "$8.50 of $10.00 today — near the daily cap",
    }


def test_agent_page_draws_spend_cumulatively_against_the_daily_cap(owner_a, account_a):
    a = agent(account_a, "spender", {"max_spend_usd_per_day": 10})
    now = timezone.now()
    hours = [h for h in (now - timedelta(hours=2), now - timedelta(hours=1), now) if h.date() == now.date()]
    for h in hours:
        decide(a, spend="1.5", ts=h)
    html = owner_a.login(Client()).get(f"/agents/{a.pk}/").content.decode()
    chart = json.loads(re.search(r'<script id="chart-data" type="application/json">(.*?)</script>', html).group(1))
    assert chart["cumulative"] is True and chart["cap"] == 10
    assert chart["spend"][-1] == pytest.approx(1.5 * len(hours))  # today's total, not the last hour's
    assert "against the daily cap of $10.00" in html
