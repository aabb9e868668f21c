"""Explainable decisions: every reason records what the rule saw (Decision.explain), the API returns it with a
sentence (`explain`, `explanation`) in /v1/ai/run answers and agent logs, and the ledger hashes it without breaking
rows written before it existed (docs/api.md §"Explained decisions", docs/architecture.md §3.9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from governance import ledger, services
from governance.explain import explain_numbers, explain_text
from governance.models import Agent, Decision, DispatchIntent, Tool
from tests.support.governance import JSON, register_tool, set_policy

AGENT = "billing-agent"


@pytest.fixture
def client(key_a):
    return key_a.client()


def run(client, tool="stripe.charge", agent=AGENT, **body):
    response = client.post("/v1/ai/run", {"agent_id": agent, "tool": tool, **body}, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def recorded(body) -> Decision:
    decision = Decision.objects.get(pk=body["decision_id"])
    assert body["explain"] == decision.explain  # the answer carries what was recorded…
    assert body["explanation"] == explain_text(decision)  # …and its sentence
    return decision


def test_agent_disabled_records_who_when_and_why(client, key_a):
    set_policy(client, AGENT, max_actions_per_hour=10)
    client.post(f"/v1/agents/{AGENT}/disable", {"reason": "runaway loop"}, content_type=JSON)
    agent = Agent.objects.get(agent_id=AGENT)
    body = run(client, args={"n": 1})
    assert body["decision"] == "blocked" and body["policy_reason"] == "agent_disabled"
    actor = agent.disabled_by
    assert actor.startswith("api key ")
    assert body["explain"] == {
        "policy_version": 1,
        "stage": "before_call",
        "disabled_by": actor,
        "disabled_reason": "runaway loop",
        "disabled_at": agent.disabled_at.isoformat(),
    }
    recorded(body)
    when = agent.disabled_at.strftime("%Y-%m-%d %H:%M UTC")
    assert body["explanation"] == (
        f"stripe.charge: blocked — agent disabled by {actor} at {when} — 'runaway loop' (policy v1)"
    )
    assert "not allowed" not in body["explanation"]


def test_tool_blocked_names_the_pattern_that_matched(client):
    set_policy(client, AGENT, blocked_tools=["delete_*", "stripe.refund*"])
    body = run(client, tool="STRIPE.REFUND_ALL")  # matched on the normalised name
    assert body["explain"] == {"policy_version": 1, "pattern": "stripe.refund*"}
    recorded(body)
    assert (
        body["explanation"] == "STRIPE.REFUND_ALL: blocked — matches blocked_tools entry 'stripe.refund*' (policy v1)"
    )


def test_tool_not_allowed_keeps_the_allow_list_and_its_size(client):
    allowed = [f"read_{i}" for i in range(25)]
    set_policy(client, AGENT, allowed_tools=allowed)
    body = run(client, tool="send_email")
    assert body["policy_reason"] == "tool_not_allowed"
    assert body["explain"] == {"policy_version": 1, "allowed_tools": allowed[:20], "allowed_tools_count": 25}
    recorded(body)
    assert body["explanation"] == (
        "send_email: blocked — not in allowed_tools (25 entries: read_0, read_1, read_2, …) (policy v1)"
    )
    set_policy(client, AGENT, allowed_tools=[])
    assert run(client, tool="send_email")["explanation"] == (
        "send_email: blocked — allowed_tools is empty: no tool is allowed (policy v2)"
    )


def test_tool_disabled_points_at_the_registry_entry(client, endpoint):
    assert register_tool(client, "send_email", endpoint.base + "/x").status_code == 200
    client.post("/v1/tools/send_email/toggle", {"enabled": False}, content_type=JSON)
    body = run(client, tool="send_email")
    assert body["policy_reason"] == "tool_disabled"
    assert body["explain"] == {"policy_version": None, "tool_id": Tool.objects.get().pk, "scope_id": "global"}
    recorded(body)
    assert body["explanation"] == (
        "send_email: blocked — the tool is disabled in the registry (scope global) (no policy: ungoverned)"
    )


def test_hourly_limit_records_the_limit_and_the_count_before_the_call(client):
    set_policy(client, AGENT, max_actions_per_hour=2)
    first = run(client, args={"n": 0})
    assert first["explain"]["left"] == {"actions_this_hour": 1}
    run(client, args={"n": 1})
    body = run(client, args={"n": 2})
    assert body["policy_reason"] == "hourly_action_limit_exceeded"
    assert body["explain"] == {"policy_version": 1, "limit": 2, "count": 2}
    recorded(body)
    assert body["explanation"] == (
        "stripe.charge: hourly action limit reached — 2 of 2 actions in the last hour (policy v1)"
    )


def test_per_tool_cap_of_3_the_fourth_call_says_limit_3_count_3(client):
    set_policy(client, AGENT, max_calls_per_tool={"stripe.refund": 3})
    set_policy(client, AGENT, max_actions_per_hour=100)  # policy v2
    lefts = [run(client, tool="stripe.refund", args={"n": n})["explain"]["left"] for n in range(3)]
    assert [left["calls_today"] for left in lefts] == [2, 1, 0]
    body = run(client, tool="stripe.refund", args={"n": 3})
    assert body["policy_reason"] == "tool_call_limit_exceeded"
    assert body["explain"] == {"policy_version": 2, "limit": 3, "count": 3, "cap_key": "stripe.refund"}
    recorded(body)
    assert body["explanation"] == "stripe.refund: per-tool cap reached — 3 of 3 today (policy v2)"
    # A call under another spelling counts against the same cap, and the sentence names the key that matched.
    other = run(client, tool="STRIPE.REFUND", args={"n": 4})
    assert other["explain"]["cap_key"] == "stripe.refund"
    assert other["explanation"] == (
        'STRIPE.REFUND: per-tool cap reached — 3 of 3 today (max_calls_per_tool["stripe.refund"]) (policy v2)'
    )


def test_daily_spend_records_the_cap_the_spend_before_and_the_cost(client):
    set_policy(client, AGENT, max_spend_usd_per_day=10, pricing_rules=[{"tool": "stripe.charge", "price_usd": 0.5}])
    assert run(client, args={"n": 0}, spend_usd=9.3)["explain"]["left"] == {"spend_usd_today": 0.7}
    body = run(client, args={"n": 1}, spend_usd=0.1)  # declared 0.10, charged at the operator's 0.50
    assert body["explain"]["left"] == {"spend_usd_today": 0.2}
    body = run(client, args={"n": 2}, spend_usd=0.1)
    assert body["policy_reason"] == "daily_spend_exceeded"
    assert body["explain"] == {
        "policy_version": 1,
        "limit": 10.0,
        "spent": 9.8,
        "cost": 0.5,
        "declared": 0.1,
        "price": 0.5,
    }
    recorded(body)
    assert body["explanation"] == (
        "stripe.charge: daily spend $9.80 + $0.50 would exceed $10.00 (declared $0.10, operator price $0.50) "
        "(policy v1)"
    )
    numbers = {fact.label: fact.value for fact in explain_numbers(recorded(body))}
    assert numbers["Limit"] == "$10.00" and numbers["Spent today before this call"] == "$9.80"
    assert numbers["This call's cost"] == "$0.50" and numbers["Policy version"] == "v1"


def test_within_budget_records_the_cost_and_what_is_left(client):
    set_policy(client, AGENT, max_spend_usd_per_day=10, max_actions_per_hour=30, max_calls_per_tool={"x": 1})
    body = run(client, args={"n": 1}, spend_usd=0.5)
    assert body["explain"] == {
        "policy_version": 1,
        "cost": 0.5,
        "left": {"actions_this_hour": 29, "spend_usd_today": 9.5},
    }
    recorded(body)
    assert body["explanation"] == (
        "stripe.charge: allowed (permit-only) within budget — cost $0.50; left: $9.50 of spend today, "
        "29 actions this hour (policy v1)"
    )
    ungoverned = run(client, agent="free-agent")
    assert ungoverned["explain"] == {"policy_version": None, "cost": 0.0, "left": {}}
    assert ungoverned["explanation"] == (
        "stripe.charge: allowed (permit-only) within budget — cost $0.00; no cap applies to this call "
        "(no policy: ungoverned)"
    )


def test_dedup_names_the_original_decision(client):
    first = run(client, args={"invoice": 1})
    body = run(client, args={"invoice": 1})
    assert body["policy_reason"] == "idempotency_key_hit"
    assert body["explain"] == {"policy_version": None, "original_decision_id": first["decision_id"]}
    recorded(body)
    assert f"same arguments as decision #{first['decision_id']}" in body["explanation"]


def test_executed_and_tool_error_record_attempts_status_and_error(client, endpoint):
    assert register_tool(client, "send_email", endpoint.base + "/ok", max_retries=0, price_usd=0.25).status_code == 200
    body = run(client, tool="send_email", args={"n": 1})
    assert body["decision"] == "executed"
    assert body["explain"] == {"policy_version": None, "cost": 0.25, "left": {}, "attempts": 1, "http_status": 200}
    recorded(body)
    assert body["explanation"].endswith("; no cap applies to this call; HTTP 200 (no policy: ungoverned)")

    def drop() -> None:
        raise ConnectionAbortedError("the tool fell over")

    endpoint.on_call = drop
    body = run(client, tool="send_email", args={"n": 2})
    assert (body["decision"], body["policy_reason"]) == ("failed", "tool_error")
    seen = recorded(body).explain
    assert seen["attempts"] == 1 and seen["http_status"] is None and seen["cost"] == 0.25
    assert seen["error"] and len(seen["error"]) <= services.EXPLAIN_ERROR
    assert body["explanation"].startswith("send_email: failed — tool error after 1 attempt: '")
    assert body["explanation"].endswith("(charged $0.25) (no policy: ungoverned)")


@pytest.mark.django_db(transaction=True)
def test_disabled_in_flight_records_who_pressed_the_switch(key_a, endpoint, monkeypatch):
    client = key_a.client()
    assert register_tool(client, "stripe.refund", endpoint.base + "/refund").status_code == 200
    original = services.dispatch.dispatch

    def disable_first(*args, **kwargs):
        services.agent_set_enabled(
            account_id=key_a.api_key.account_id,
            agent_id=AGENT,
            enabled=False,
            reason="refund storm",
            actor="alice@acme.test",
        )
        return original(*args, **kwargs)

    monkeypatch.setattr(services.dispatch, "dispatch", disable_first)
    body = run(client, tool="stripe.refund", args={"n": 1})
    assert (body["decision"], body["policy_reason"]) == ("blocked", "agent_disabled")
    seen = recorded(body).explain
    assert seen["stage"] == "in_flight_before_attempt"
    assert (seen["disabled_by"], seen["disabled_reason"]) == ("alice@acme.test", "refund storm")
    assert body["explanation"].startswith("stripe.refund: blocked — agent disabled by alice@acme.test at ")
    assert "while the call was in flight, before any request was sent" in body["explanation"]
    assert ledger.verify(key_a.api_key.account_id).ok


def test_an_unrecorded_dispatch_keeps_what_its_call_was_decided_on(client, endpoint, monkeypatch):
    """The intent carries the call's explain (written before the tool is called); the sweeper's outcome_unknown
    decision keeps it."""
    set_policy(client, AGENT, max_spend_usd_per_day=5)
    assert register_tool(client, "stripe.refund", endpoint.base + "/refund", price_usd=1).status_code == 200
    seen_by_intent = []
    original = services.dispatch.dispatch

    def look(*args, **kwargs):
        seen_by_intent.append(DispatchIntent.objects.get().explain)
        return original(*args, **kwargs)

    monkeypatch.setattr(services.dispatch, "dispatch", look)
    executed = run(client, tool="stripe.refund", args={"n": 1})
    assert seen_by_intent == [{"policy_version": 1, "cost": 1.0, "left": {"spend_usd_today": 4.0}}]
    assert executed["explain"] == {**seen_by_intent[0], "attempts": 1, "http_status": 200}

    agent = Agent.objects.get(agent_id=AGENT)
    DispatchIntent.objects.create(
        account_id=agent.account_id,
        agent=agent,
        tool="stripe.refund",
        args_hash="a" * 64,
        created_at=timezone.now() - timedelta(hours=1),
        risk_level="high",
        spend_usd="1",
        dispatch_id="stale",
        policy_version=1,
        explain=seen_by_intent[0],
    )
    assert services.dispatch_intents_record() == 1
    decision = Decision.objects.get(policy_reason="outcome_unknown")
    assert decision.explain == seen_by_intent[0]
    assert explain_text(decision) == (
        "stripe.refund: outcome unknown — the server called the tool but stopped before recording its answer; "
        "recorded as failed and charged $1.00 (policy v1)"
    )
    assert ledger.verify(agent.account_id).ok


def test_operator_test_call_is_explained_as_such(key_a, endpoint):
    client = key_a.client()
    assert register_tool(client, "send_email", endpoint.base + "/ok").status_code == 200
    decision, _ = services.tool_test_call(tool=Tool.objects.get(), args={"to": "x"}, actor="alice@acme.test")
    assert decision.explain == {
        "policy_version": None,
        "test_call": True,
        "actor": "alice@acme.test",
        "attempts": 1,
        "http_status": 200,
    }
    assert explain_text(decision) == (
        "send_email: operator test call by alice@acme.test — executed (1 attempt, last HTTP 200) "
        "(no policy: ungoverned)"
    )


def test_dry_run_actions_are_explained_without_being_recorded(key_a, client):
    from billing.auth import plan_limits_for

    set_policy(client, AGENT, max_calls_per_tool={"stripe.charge": 1})
    account_id = key_a.api_key.account_id
    outcome = services.governed_call(
        account_id=account_id,
        plan=plan_limits_for(account_id),
        agent_id=AGENT,
        tool="stripe.charge",
        args={},
        spend_usd=None,
        dry_run=True,
    )
    assert outcome.decision.explain == {"policy_version": 1, "cost": 0.0, "left": {"calls_today": 0}}
    assert not Decision.objects.exists()


def test_agent_logs_carry_explain_and_explanation(client):
    set_policy(client, AGENT, max_calls_per_tool={"stripe.charge": 1})
    run(client, args={"n": 1})
    blocked = run(client, args={"n": 2})
    items = client.get(f"/v1/agents/{AGENT}/logs").json()["items"]
    assert [item["decision_id"] for item in items] == [blocked["decision_id"], blocked["decision_id"] - 1]
    assert items[0]["explain"] == {"policy_version": 1, "limit": 1, "count": 1, "cap_key": "stripe.charge"}
    assert items[0]["explanation"] == "stripe.charge: per-tool cap reached — 1 of 1 today (policy v1)"
    assert items[1]["explain"]["left"] == {"calls_today": 0}


def test_explain_is_under_the_row_hash_and_older_rows_still_verify(client, key_a):
    account_id = key_a.api_key.account_id
    set_policy(client, AGENT, max_actions_per_hour=1)
    run(client, args={"n": 1})
    blocked = run(client, args={"n": 2})
    # A row written before explain existed: hashed without it (explain NULL), as migration 0010 leaves old rows.
    agent = Agent.objects.get(agent_id=AGENT)
    fields = dict(
        ts=timezone.now(),
        tool="old_tool",
        outcome="blocked",
        allowed=False,
        policy_reason="tool_blocked",
        risk_level="low",
        spend_usd=Decimal(0),
        args_hash="b" * 64,
        run_id="",
        policy_version=1,
        latency_ms=1,
        result=None,
    )
    old = Decision.objects.create(
        account_id=account_id,
        agent=agent,
        row_hash=ledger.row_hash(account_id, {**fields, "agent_id": AGENT}),
        **fields,
    )
    assert old.explain is None
    assert ledger.verify(account_id).ok
    assert explain_text(old) == "old_tool: blocked — the tool is in blocked_tools (policy v1)"
    # Editing what a decision says it saw is tampering like any other edit.
    Decision.objects.filter(pk=blocked["decision_id"]).update(explain={"policy_version": 1, "limit": 5, "count": 5})
    result = ledger.verify(account_id)
    assert not result.ok and result.first_bad_decision_id == blocked["decision_id"]


@pytest.mark.parametrize(
    ("reason", "outcome", "extra", "sentence"),
    [
        ("agent_disabled", "blocked", {}, "t: blocked — agent disabled (kill switch) (policy v3)"),
        ("tool_not_allowed", "blocked", {}, "t: blocked — the tool is not in allowed_tools (policy v3)"),
        ("hourly_action_limit_exceeded", "blocked", {}, "t: blocked — hourly action limit reached (policy v3)"),
        ("tool_call_limit_exceeded", "blocked", {}, "t: blocked — per-tool daily cap reached (policy v3)"),
        ("daily_spend_exceeded", "blocked", {}, "t: blocked — this call would exceed the daily spend cap (policy v3)"),
        (
            "within_budget",
            "executed",
            {"spend_usd": Decimal("0.001")},
            "t: executed within budget — cost $0.001 (policy v3)",
        ),
        (
            "tool_error",
            "failed",
            {"http_status": 503, "spend_usd": Decimal("1.5")},
            "t: failed — tool error after HTTP 503 (charged $1.50) (policy v3)",
        ),
        (
            "idempotency_key_hit",
            "dedup",
            {},
            "t: deduplicated — the same call is in flight or its decision is gone; "
            "nothing replayed (not charged) (policy v3)",
        ),
    ],
)
def test_decisions_recorded_before_explain_get_a_sentence_from_their_fields(reason, outcome, extra, sentence):
    decision = Decision(
        tool="t",
        outcome=outcome,
        policy_reason=reason,
        policy_version=3,
        explain=None,
        ts=datetime(2026, 12, 6, 7, 10, tzinfo=UTC),
        **extra,
    )
    assert explain_text(decision) == sentence


def test_sentences_count_in_the_singular_and_name_prices_only_when_set(client):
    set_policy(client, AGENT, max_actions_per_hour=2, max_calls_per_tool={"stripe.charge": 2}, max_spend_usd_per_day=1)
    first = run(client, spend_usd=0.4)
    assert "left: $0.60 of spend today, 1 action this hour, 1 call of this tool today" in first["explanation"]
    run(client, args={"n": 2}, spend_usd=0.4)
    blocked = run(client, args={"n": 3}, spend_usd=0.4)
    assert blocked["decision"] == "blocked"
    # No pricing rule: the operator's price is 0 and the call costs what it declares — no "(declared …, price …)".
    assert "operator price" not in blocked["explanation"]
    set_policy(client, "one-call", max_calls_per_tool={"stripe.charge": 1})
    run(client, agent="one-call")
    capped = run(client, agent="one-call", args={"n": 2})
    assert capped["explanation"] == "stripe.charge: per-tool cap reached — 1 of 1 today (policy v1)"
    decision = Decision.objects.filter(agent__agent_id="one-call", outcome="blocked").get()
    assert ("Count before this call", "1 call today") in [(f.label, f.value) for f in explain_numbers(decision)]


def test_a_malformed_explain_falls_back_to_words_without_numbers(account_a):
    agent = Agent.objects.create(account=account_a, agent_id="odd")
    for reason, seen in [
        ("daily_spend_exceeded", {"limit": 3}),
        ("hourly_action_limit_exceeded", {"limit": 3}),
        ("tool_call_limit_exceeded", {"limit": 3, "cap_key": "t"}),
    ]:
        d = Decision.objects.create(
            account=account_a,
            agent=agent,
            tool="t",
            outcome="blocked",
            allowed=False,
            policy_reason=reason,
            risk_level="low",
            args_hash="x" * 64,
            explain=seen,
        )
        assert explain_text(d).startswith("t: blocked — "), explain_text(d)
        explain_numbers(d)  # no KeyError
