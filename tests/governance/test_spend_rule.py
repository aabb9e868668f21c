"""The charged cost of a governed call is max(the request's spend_usd, the operator's price): an agent may declare a
higher cost, never a lower one than the operator set (a pricing rule, else the registry's price, else 0).

Guards the daily spend cap against an agent that under-reports: when the request's ``spend_usd`` replaced the
operator's price, an agent that reported ``spend_usd: 0`` ran a $1 tool 20 times under a $2/day cap.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from governance import ledger, services
from governance.models import Agent, Decision, DispatchIntent
from governance.runs import execute_action
from tests.support.governance import governed_call, register_tool, set_policy

AGENT = "billing-agent"


@pytest.fixture
def client(key_a):
    return key_a.client()


def register(client, endpoint, name, **extra):
    response = register_tool(client, name, endpoint.base + "/t", max_retries=0, **extra)
    assert response.status_code == 200, response.content


def run(client, tool, n, **extra):
    """Call number ``n`` (its args: distinct calls, never a dedup); it must be answered 200."""
    response = governed_call(client, AGENT, tool, args={"n": n}, **extra)
    assert response.status_code == 200, response.content
    return response.json()


def prices(decision):
    declared = decision.declared_spend_usd
    return (
        (None if declared is None else float(declared)),
        float(decision.operator_price_usd),
        float(decision.spend_usd),
    )


def test_reporting_zero_does_not_evade_a_registry_priced_daily_cap(client, endpoint):
    register(client, endpoint, "stripe.charge", price_usd=1)
    set_policy(client, AGENT, max_spend_usd_per_day=2)
    answers = [run(client, "stripe.charge", n, spend_usd=0) for n in range(5)]
    assert [a["decision"] for a in answers] == ["executed", "executed", "blocked", "blocked", "blocked"]
    assert answers[2]["policy_reason"] == "daily_spend_exceeded"
    assert answers[1]["remaining"]["spend_usd_today"] == 2.0
    assert len(endpoint.calls) == 2
    executed = Decision.objects.get(pk=answers[0]["decision_id"])
    assert prices(executed) == (0.0, 1.0, 1.0)  # declared 0, the operator's price 1, charged 1
    assert ledger.verify(executed.account_id).ok


def test_reporting_zero_does_not_evade_a_pricing_rule(client):
    set_policy(client, AGENT, max_spend_usd_per_day=2, pricing_rules=[{"tool": "llm.*", "price_usd": 1}])
    reasons = [run(client, "llm.complete", n, spend_usd=0)["policy_reason"] for n in range(4)]
    assert reasons == ["within_budget", "within_budget", "daily_spend_exceeded", "daily_spend_exceeded"]
    assert [prices(d) for d in Decision.objects.filter(outcome="allowed")] == [(0.0, 1.0, 1.0)] * 2


def test_a_pricing_rule_of_zero_prices_the_tool_at_zero_over_the_registry(client, endpoint):
    register(client, endpoint, "search.docs", price_usd=1)
    set_policy(client, AGENT, max_spend_usd_per_day=1, pricing_rules=[{"tool": "search.*", "price_usd": 0}])
    answers = [run(client, "search.docs", n) for n in range(3)]
    assert [a["decision"] for a in answers] == ["executed"] * 3
    assert answers[-1]["remaining"]["spend_usd_today"] == 0.0
    assert prices(Decision.objects.get(pk=answers[0]["decision_id"])) == (None, 0.0, 0.0)


def test_an_agent_may_declare_more_than_the_price(client, endpoint):
    register(client, endpoint, "stripe.charge", price_usd=1)
    set_policy(client, AGENT, max_spend_usd_per_day=5)
    first = run(client, "stripe.charge", 1, spend_usd=3)
    assert first["remaining"]["spend_usd_today"] == 3.0
    assert prices(Decision.objects.get(pk=first["decision_id"])) == (3.0, 1.0, 3.0)
    assert run(client, "stripe.charge", 2, spend_usd=2.5)["policy_reason"] == "daily_spend_exceeded"
    assert run(client, "stripe.charge", 3)["remaining"]["spend_usd_today"] == 4.0  # no declaration: the price


def test_no_price_and_no_declaration_costs_nothing(client):
    decision = Decision.objects.get(pk=run(client, "get_user", 1)["decision_id"])
    assert prices(decision) == (None, 0.0, 0.0)


def test_blocked_before_pricing_records_what_it_declared_and_no_price(client):
    """Not priced and not charged; what the agent declared is kept (a replay of the log decides with it)."""
    set_policy(client, AGENT, blocked_tools=["delete_*"])
    decision = Decision.objects.get(pk=run(client, "delete_user", 1, spend_usd=4)["decision_id"])
    assert (decision.declared_spend_usd, decision.operator_price_usd, decision.spend_usd) == (4, None, 0)
    undeclared = Decision.objects.get(pk=run(client, "delete_user", 2)["decision_id"])
    assert undeclared.declared_spend_usd is None


def test_a_keyed_run_action_cannot_under_report_either(client, key_a):
    set_policy(client, AGENT, max_spend_usd_per_day=2, pricing_rules=[{"tool": "llm.*", "price_usd": 1}])
    account_id = key_a.api_key.account_id
    outcomes = [
        execute_action(
            account_id=account_id,
            agent_id=AGENT,
            tool="llm.complete",
            args={"n": n},
            spend_usd=0,
            run_id="run-1",
            dry_run=False,
        )
        for n in range(3)
    ]
    assert [o.policy_reason for o in outcomes] == ["within_budget", "within_budget", "daily_spend_exceeded"]
    assert prices(Decision.objects.get(pk=outcomes[0].decision_id)) == (0.0, 1.0, 1.0)


def test_the_row_hash_covers_both_prices(client):
    set_policy(client, AGENT, pricing_rules=[{"tool": "llm.*", "price_usd": 1}])
    decision = Decision.objects.get(pk=run(client, "llm.complete", 1, spend_usd=2)["decision_id"])
    assert ledger.verify(decision.account_id).ok
    Decision.objects.filter(pk=decision.pk).update(operator_price_usd=Decimal("0.5"))
    assert ledger.verify(decision.account_id).first_bad_decision_id == decision.pk
    Decision.objects.filter(pk=decision.pk).update(operator_price_usd=Decimal(1), declared_spend_usd=Decimal(0))
    assert ledger.verify(decision.account_id).first_bad_decision_id == decision.pk
    Decision.objects.filter(pk=decision.pk).update(declared_spend_usd=Decimal(2))
    assert ledger.verify(decision.account_id).ok


def test_an_unfinished_dispatch_is_recorded_with_both_prices(key_a):
    agent = Agent.objects.get_or_create(account_id=key_a.api_key.account_id, agent_id=AGENT)[0]
    DispatchIntent.objects.create(
        account_id=agent.account_id,
        agent=agent,
        created_at=timezone.now() - timedelta(minutes=5),
        tool="t",
        args_hash="a" * 64,
        risk_level="low",
        spend_usd=Decimal(1),
        declared_spend_usd=Decimal(0),
        operator_price_usd=Decimal(1),
        dispatch_id="lost",
    )
    assert services.dispatch_intents_record() == 1
    decision = Decision.objects.get()
    assert decision.policy_reason == "outcome_unknown" and prices(decision) == (0.0, 1.0, 1.0)
    assert ledger.verify(decision.account_id).ok


def test_the_agent_log_shows_what_was_declared_and_the_price(client):
    set_policy(client, AGENT, pricing_rules=[{"tool": "llm.*", "price_usd": 1}])
    run(client, "llm.complete", 1, spend_usd=0)
    item = client.get(f"/v1/agents/{AGENT}/logs").json()["items"][0]
    assert (item["spend_usd"], item["declared_spend_usd"], item["operator_price_usd"]) == (1.0, 0.0, 1.0)
