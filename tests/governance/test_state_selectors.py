"""The state selectors (governance.selectors.cap_states, failing_tools, listed_agents): what the overview, the agent
page and the Agents/Tools tables flag, computed in a constant number of queries."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from governance import selectors
from governance.services import OPERATOR_AGENT
from tests.support.decisions import agent, decide


@pytest.fixture
def now():
    # Mid-day, so that "today" and "the last hour" both hold earlier rows of the same day.
    return timezone.now().replace(hour=12, minute=30, second=0, microsecond=0)


def test_over_near_and_ok_by_spend_actions_and_per_tool_calls(account_a, now):
    over = agent(account_a, "over", {"max_spend_usd_per_day": 10})
    near = agent(account_a, "near", {"max_actions_per_hour": 10})
    ok = agent(account_a, "ok", {"max_spend_usd_per_day": 10, "max_actions_per_hour": 10})
    tool_cap = agent(account_a, "mailer", {"max_calls_per_tool": {"Send_Email": 3}})
    free = agent(account_a, "free")
    decide(over, spend="10.155", ts=now - timedelta(hours=3), n=2)  # $20.31 today, earlier than the last hour
    decide(over, outcome="blocked", spend="5", ts=now - timedelta(minutes=5))  # blocked: not charged
    decide(near, ts=now - timedelta(minutes=10), n=8)  # 8 of 10 in the last hour
    decide(near, ts=now - timedelta(minutes=90), n=5)  # outside the rolling hour
    decide(ok, spend="1", ts=now - timedelta(minutes=20), n=3)
    decide(tool_cap, tool="send_email", ts=now - timedelta(hours=2), n=3)  # the cap counts normalised names
    decide(tool_cap, tool="send_email", outcome="blocked", ts=now - timedelta(minutes=1))
    decide(free, spend="100", ts=now - timedelta(minutes=1))
    decide(ok, spend="50", ts=now - timedelta(days=1))  # yesterday

    states = selectors.cap_states(account_a.pk, [over, near, ok, tool_cap, free], now)

    assert states[over.pk].spent_today == Decimal("20.31") and states[over.pk].spend_cap == Decimal(10)
    assert states[over.pk].spend_pct == 203 and states[over.pk].level == "over"
    assert states[near.pk].actions_hour == 8 and states[near.pk].actions_pct == 80
    assert states[near.pk].level == "near" and states[near.pk].spend_cap is None
    assert states[ok.pk].spent_today == Decimal(3) and states[ok.pk].actions_hour == 3
    assert (states[ok.pk].spend_pct, states[ok.pk].actions_pct, states[ok.pk].level) == (30, 30, "ok")
    assert states[tool_cap.pk].tool_calls == {"Send_Email": (3, 3)} and states[tool_cap.pk].level == "over"
    assert states[tool_cap.pk].worst_tool == ("Send_Email", 3, 3)
    assert states[free.pk].level is None and states[free.pk].spent_today == Decimal(100)


def test_cap_states_reads_only_its_account(account_a, account_b, now):
    mine = agent(account_a, "same", {"max_spend_usd_per_day": 1})
    theirs = agent(account_b, "same", {"max_spend_usd_per_day": 1})
    decide(theirs, spend="5", ts=now - timedelta(minutes=1))
    assert selectors.cap_states(account_a.pk, [mine], now)[mine.pk].spent_today == 0


def test_cap_states_query_count_does_not_grow_with_agents(account_a, now, django_assert_num_queries):
    agents = [agent(account_a, f"a{i}", {"max_spend_usd_per_day": 5, "max_actions_per_hour": 5}) for i in range(30)]
    for a in agents:
        decide(a, spend="1", ts=now - timedelta(minutes=5), n=2)
    with django_assert_num_queries(2):
        one = selectors.cap_states(account_a.pk, agents[:1], now)
    with django_assert_num_queries(2):
        many = selectors.cap_states(account_a.pk, agents, now)
    assert one[agents[0].pk] == many[agents[0].pk] and len(many) == 30
    with django_assert_num_queries(0):
        assert selectors.cap_states(account_a.pk, [], now) == {}


def test_failing_tools_needs_four_calls_half_failed_in_the_last_hour(account_a, now):
    a = agent(account_a, "worker")
    decide(a, tool="flaky", outcome="failed", ts=now - timedelta(minutes=5), n=2)
    decide(a, tool="flaky", ts=now - timedelta(minutes=5), n=2)  # 2 of 4 failed: flagged
    decide(a, tool="few", outcome="failed", ts=now - timedelta(minutes=5), n=3)  # 3 of 3: too few to tell
    decide(a, tool="mostly_fine", outcome="failed", ts=now - timedelta(minutes=5))
    decide(a, tool="mostly_fine", ts=now - timedelta(minutes=5), n=3)  # 1 of 4
    decide(a, tool="old", outcome="failed", ts=now - timedelta(minutes=61), n=10)  # before the last hour
    decide(a, tool="guarded", outcome="blocked", ts=now - timedelta(minutes=5), n=10)  # never dispatched

    failing = selectors.failing_tools(account_a.pk, now)

    assert list(failing) == ["flaky"]
    assert (failing["flaky"].failed, failing["flaky"].total, failing["flaky"].pct) == (2, 4, 50)
    health = selectors.tool_health(account_a.pk, now)
    assert health["few"].total == 3 and not health["few"].flagged
    assert health["mostly_fine"].pct == 25 and "old" not in health and "guarded" not in health


def test_failing_tools_is_one_query_and_per_account(account_a, account_b, now, django_assert_num_queries):
    decide(agent(account_b, "x"), tool="theirs", outcome="failed", ts=now - timedelta(minutes=1), n=5)
    with django_assert_num_queries(1):
        assert selectors.failing_tools(account_a.pk, now) == {}
    assert list(selectors.failing_tools(account_b.pk, now)) == ["theirs"]


def test_listed_agents_leave_out_the_operator_test_agent(account_a):
    agent(account_a, OPERATOR_AGENT)
    agent(account_a, "billing-agent")
    assert [a.agent_id for a in selectors.listed_agents(account_a.pk)] == ["billing-agent"]
