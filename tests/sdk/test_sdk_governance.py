"""Governance through the real onceonly-sdk: policies, templates, kill switch, logs, metrics — and caps that never
overshoot under real concurrency against a multi-process server."""

import pytest
from onceonly import OnceOnly

from governance.models import Decision
from tests.conftest import make_key
from tests.support.sdk_race import assert_caps_hold


def test_governance_example_flow(sdk):
    policy = sdk.gov.upsert_policy(
        {
            "agent_id": "billing-agent",
            "max_actions_per_hour": 200,
            "max_spend_usd_per_day": 50.0,
            "allowed_tools": ["stripe.charge", "send_email", "stripe.refund"],
            "blocked_tools": ["delete_user"],
        }
    )
    assert policy.agent_id == "billing-agent" and policy.max_actions_per_hour == 200
    assert policy.blocked_tools == ["delete_user"]

    charged = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.charge", args={"amount": 9999}, spend_usd=0.5)
    assert charged.allowed and charged.decision == "allowed" and charged.policy_reason == "within_budget"
    blocked = sdk.ai.run_tool(agent_id="billing-agent", tool="delete_user", args={"id": 1})
    assert not blocked.allowed and blocked.decision == "blocked" and blocked.policy_reason == "tool_blocked"

    metrics = sdk.gov.agent_metrics("billing-agent", period="day")
    assert (metrics.total_actions, metrics.blocked_actions, metrics.total_spend_usd) == (2, 1, 0.5)
    assert {t["tool"] for t in metrics.top_tools} == {"stripe.charge", "delete_user"}

    status = sdk.gov.disable_agent("billing-agent", reason="Suspicious activity")
    assert status.is_enabled is False and status.disabled_reason == "Suspicious activity" and status.disabled_at
    assert sdk.ai.run_tool(agent_id="billing-agent", tool="send_email", args={}).policy_reason == "agent_disabled"
    assert sdk.gov.enable_agent("billing-agent", reason="Reviewed").is_enabled is True

    logs = sdk.gov.agent_logs("billing-agent", limit=10)
    assert [log.decision for log in logs] == ["blocked", "blocked", "allowed"]
    assert logs[0].policy_reason == "agent_disabled" and logs[-1].spend_usd == 0.5


def test_templates_and_reads(sdk):
    policy = sdk.gov.policy_from_template("support-bot", "moderate", overrides={"max_actions_per_hour": 120})
    assert policy.max_actions_per_hour == 120 and policy.max_spend_usd_per_day == 25.0
    assert sdk.gov.get_policy("support-bot").max_actions_per_hour == 120
    assert [p.agent_id for p in sdk.gov.list_policies()] == ["support-bot"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "n", "spend", "tool", "allowed", "reason"),
    [
        ({"max_spend_usd_per_day": 50}, 200, 1.0, "stripe.charge", 50, "daily_spend_exceeded"),
        ({"max_actions_per_hour": 10}, 40, None, "stripe.charge", 10, "hourly_action_limit_exceeded"),
        ({"max_calls_per_tool": {"send_email": 3}}, 40, None, "send_email", 3, "tool_call_limit_exceeded"),
        # Per-run caps (docs/governance.md §"Per-run caps"): every call carries the same args.run_id.
        ({"max_actions_per_run": 5}, 40, None, "crm.note", 5, "run_action_limit_exceeded"),
        ({"max_spend_usd_per_run": 3}, 40, 1.0, "crm.note", 3, "run_spend_exceeded"),
    ],
)
def test_concurrent_calls_never_overshoot_a_cap(gunicorn_server, account_a, policy, n, spend, tool, allowed, reason):
    key = make_key(account_a)
    assert_caps_hold(f"{gunicorn_server.url}/v1", key.raw, policy, n, spend, tool, allowed, reason)
    assert Decision.objects.count() == n  # every call has its durable decision


@pytest.mark.slow
def test_kill_switch_in_one_process_blocks_the_next_call_in_another(gunicorn_server, account_a):
    key = make_key(account_a)
    url = f"{gunicorn_server.url}/v1"
    clients = [OnceOnly(api_key=key.raw, base_url=url, fail_open=False) for _ in range(4)]
    try:
        for i, c in enumerate(clients):  # separate connections: spread over both worker processes
            assert c.ai.run_tool(agent_id="bot", tool="t", args={"warm": i}).allowed
        clients[0].gov.disable_agent("bot", reason="stop now")
        for i, c in enumerate(clients):
            assert c.ai.run_tool(agent_id="bot", tool="t", args={"after": i}).policy_reason == "agent_disabled"
    finally:
        for c in clients:
            c.close()
