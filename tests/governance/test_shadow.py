"""Shadow mode (docs/policy-changes.md §"Shadow mode"): every governed call is also decided against the agent's
candidate policy — tool lists in Python, caps on the candidate's own counters in the same Lua step — and the
decision records it; the live decision never changes; promote publishes exactly one version."""

import pytest

from governance import shadow
from governance.models import Agent, Decision, PolicyVersion
from governance.services import StalePolicyEdit


def run(client, tool="send_email", args=None, agent="bot", **extra):
    body = {"agent_id": agent, "tool": tool, "args": args if args is not None else {"n": 1}, **extra}
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def shadow_reasons(agent="bot"):
    return [
        (d.policy_reason, (d.explain or {}).get("shadow", {}).get("reason")) for d in Decision.objects.order_by("id")
    ]


@pytest.fixture
def client(key_a):
    return key_a.client()


def start(key_a, agent="bot", **policy):
    return shadow.shadow_start(account_id=key_a.api_key.account_id, agent_id=agent, policy=policy, actor="ops")


def test_the_candidates_caps_on_its_own_counters_and_the_live_decision_unchanged(client, key_a):
    client.post("/v1/policies/bot", {"max_actions_per_hour": 100}, content_type="application/json")
    started = start(key_a, max_calls_per_tool={"send_email": 2}, max_spend_usd_per_day=1.0)
    for n in range(5):
        body = run(client, args={"n": n}, spend_usd=0.1)
        assert body["decision"] == "allowed"  # enforced: the live policy only
        assert body["explain"]["shadow"]["id"] == started.shadow_id
    assert (
        shadow_reasons()
        == [("within_budget", "within_budget")] * 2 + [("within_budget", "tool_call_limit_exceeded")] * 3
    )
    spent = run(client, tool="stripe.charge", args={"n": 9}, spend_usd=0.95)
    assert spent["explain"]["shadow"]["reason"] == "daily_spend_exceeded"  # 0.2 + 0.95 > 1.0 for the candidate
    seen = shadow.divergence(Agent.objects.get(agent_id="bot"))
    assert (seen.total, seen.agree, seen.would_block_total, seen.would_allow_total) == (6, 2, 4, 0)
    assert seen.would_block == {"tool_call_limit_exceeded": 3, "daily_spend_exceeded": 1}
    assert seen.block_examples[0] == spent["decision_id"]


def test_lists_dedup_and_approvals_of_the_candidate(client, key_a):
    client.post("/v1/policies/bot", {"blocked_tools": ["wire.*"]}, content_type="application/json")
    start(key_a, blocked_tools=["send_email"], require_approval=["stripe.refund"], max_calls_per_tool={"wire.out": 1})
    assert run(client)["explain"]["shadow"]["reason"] == "tool_blocked"
    assert run(client, tool="stripe.refund")["explain"]["shadow"]["reason"] == "approval_required"
    # Blocked live before the atomic step, allowed by the candidate: decided on its counters all the same.
    first = run(client, tool="wire.out", args={"to": "a"})
    assert (first["policy_reason"], first["explain"]["shadow"]["reason"]) == ("tool_blocked", "within_budget")
    again = run(client, tool="wire.out", args={"to": "a"})
    assert again["explain"]["shadow"]["reason"] == "idempotency_key_hit"  # the candidate's own dedup entry
    other = run(client, tool="wire.out", args={"to": "b"})
    assert other["explain"]["shadow"]["reason"] == "tool_call_limit_exceeded"
    # Live dedup: the candidate dedups the same repeat.
    run(client, tool="search", args={"q": 1})
    repeat = run(client, tool="search", args={"q": 1})
    assert (repeat["decision"], repeat["explain"]["shadow"]["reason"]) == ("dedup", "idempotency_key_hit")
    seen = shadow.divergence(Agent.objects.get(agent_id="bot"))
    # the repeat the candidate would have answered as a dedup (allowed) diverges too
    assert seen.would_allow == {"tool_blocked": 2} and seen.would_block == {"tool_blocked": 1, "approval_required": 1}


def test_no_candidate_no_shadow_and_a_dry_run_records_none(client, key_a):
    assert "shadow" not in run(client)["explain"]
    start(key_a, max_actions_per_hour=0)
    response = client.post(
        "/v1/ai/run",
        {"key": "dry", "metadata": {"agent_id": "bot", "dry_run": True, "actions": [{"tool": "send_email"}]}},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert Decision.objects.count() == 1


def test_promote_publishes_exactly_one_version_and_drops_the_candidate(client, key_a):
    client.post("/v1/policies/bot", {"max_actions_per_hour": 100}, content_type="application/json")
    agent = start(key_a, max_actions_per_hour=5)
    with pytest.raises(StalePolicyEdit):
        shadow.shadow_promote(
            account_id=key_a.api_key.account_id,
            agent_id="bot",
            actor="ops",
            shadow_id=agent.shadow_id,
            expected_version=7,
        )
    with pytest.raises(shadow.NoShadow):
        shadow.shadow_promote(
            account_id=key_a.api_key.account_id, agent_id="bot", actor="ops", shadow_id="other", expected_version=1
        )
    assert PolicyVersion.objects.count() == 1
    outcome = shadow.shadow_promote(
        account_id=key_a.api_key.account_id,
        agent_id="bot",
        actor="ops",
        shadow_id=agent.shadow_id,
        expected_version=1,
    )
    assert outcome.version == 2 and PolicyVersion.objects.count() == 2
    published = PolicyVersion.objects.get(version=2)
    assert published.policy == {"max_actions_per_hour": 5} and published.source == f"shadow:{agent.shadow_id}"
    agent.refresh_from_db()
    assert agent.shadow_policy is None and agent.shadow_id == "" and agent.policy == {"max_actions_per_hour": 5}
    assert "shadow" not in run(client)["explain"]
    with pytest.raises(shadow.NoShadow):
        shadow.shadow_stop(account_id=key_a.api_key.account_id, agent_id="bot", actor="ops")
