"""Shadow mode's acceptance (docs/policy-changes.md §"Shadow mode"): 1,000 live calls with a shadow candidate — the
recorded shadow outcomes equal a replay of the same calls through the candidate (the impact preview's engine, which
decides from the decision log alone) — and promote creates exactly one version."""

import random
from collections import Counter

from django.utils import timezone

from governance import policies, replay, shadow
from governance.models import Agent, Decision, PolicyVersion

AGENT = "shadowed"
LIVE = {
    "blocked_tools": ["delete_*"],
    "max_actions_per_hour": 700,
    "max_calls_per_tool": {"send_email": 150},
    "max_spend_usd_per_day": 40,
    "pricing_rules": [{"tool": "send_email", "price_usd": 0.01}],
}
CANDIDATE = {
    "blocked_tools": ["wire.*"],
    "max_actions_per_hour": 450,
    "max_calls_per_tool": {"search": 60},
    "max_spend_usd_per_day": 80,
    "pricing_rules": [{"tool": "search", "price_usd": 0.02}],
    "require_approval": [{"tool": "stripe.*", "over_usd": 1}],
}
TOOLS = ["search", "send_email", "stripe.charge", "wire.transfer", "delete_user", "crm.update"]


def calls(n=1000, seed=20261207):
    """Tools, a small pool of args (repeats are dedup), declared spends (some above the candidate's threshold)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tool = rng.choice(TOOLS)
        body = {"agent_id": AGENT, "tool": tool, "args": {"k": rng.randrange(300)}}
        if rng.random() < 0.6:
            body["spend_usd"] = rng.choice([0, 0.01, 0.05, 0.5, 1.5])
        out.append(body)
    return out


def test_a_thousand_live_calls_shadow_outcomes_equal_the_replay_and_promote_makes_one_version(key_a):
    client = key_a.client()
    assert client.post(f"/v1/policies/{AGENT}", LIVE, content_type="application/json").status_code == 200
    started = shadow.shadow_start(account_id=key_a.api_key.account_id, agent_id=AGENT, policy=CANDIDATE, actor="test")
    for body in calls():
        response = client.post("/v1/ai/run", body, content_type="application/json")
        assert response.status_code == 200, response.content

    decisions = Decision.objects.filter(agent__agent_id=AGENT)
    assert decisions.count() == 1000
    recorded = Counter(d.explain["shadow"]["reason"] for d in decisions)
    assert all(d.explain["shadow"]["id"] == started.shadow_id for d in decisions)

    agent = Agent.objects.get(agent_id=AGENT)
    replayed = replay.replay(agent, CANDIDATE, 1, now=timezone.now() + timezone.timedelta(seconds=1))
    by_reason = Counter()
    for (_, reason), n in replayed.replayed.items():
        by_reason[reason] += n
    assert replayed.total == 1000
    assert recorded == by_reason, (recorded, by_reason)
    # The candidate differs from the live policy in every way it can: the comparison covers each of its rules.
    assert set(recorded) >= {
        "within_budget",
        "idempotency_key_hit",
        "tool_blocked",
        "tool_call_limit_exceeded",
        "daily_spend_exceeded",
        "approval_required",
    }, recorded
    seen = shadow.divergence(agent)
    assert seen.total == 1000 and seen.would_block_total > 0 and seen.would_allow_total > 0

    assert PolicyVersion.objects.filter(agent=agent).count() == 1
    shadow.shadow_promote(
        account_id=agent.account_id, agent_id=AGENT, actor="test", shadow_id=started.shadow_id, expected_version=1
    )
    assert PolicyVersion.objects.filter(agent=agent).count() == 2
    agent.refresh_from_db()
    assert agent.policy == policies.merge({}, CANDIDATE) and agent.shadow_policy is None
