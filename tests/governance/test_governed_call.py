"""The governed call (tool form of /v1/ai/run): every reason of docs/architecture.md §7.3, dedup, limits,
durability, no raw args."""

import json
import secrets
from typing import NamedTuple

import pytest
from django.utils import timezone

from billing import usage
from billing.services import account_set_plan
from governance import services
from governance.models import Agent, Decision, DecisionRollup
from onceonly_site.redis_client import get_redis
from tests.conftest import make_key
from tests.support.redis_calls import lose_redis_state, replication_id


def run(client, agent="billing-agent", tool="stripe.charge", args=None, **extra):
    body = {"agent_id": agent, "tool": tool, **extra}
    if args is not None:
        body["args"] = args
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def policy(client, agent="billing-agent", **fields):
    response = client.post(f"/v1/policies/{agent}", fields, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def client(key_a):
    return key_a.client()


def test_unregistered_tool_on_an_ungoverned_agent_is_allowed_permit_only(client, key_a):
    body = run(client, args={"amount": 9999, "currency": "usd"}, spend_usd=0.5)
    assert body["ok"] is True and body["allowed"] is True
    assert body["decision"] == "allowed" and body["policy_reason"] == "within_budget"
    assert body["result"] is None and body["risk_level"] == "high"
    assert body["policy_version"] is None and isinstance(body["decision_id"], int)
    assert body["remaining"] == {"spend_usd_today": 0.5, "actions_this_hour": 1, "calls_today": 1}
    decision = Decision.objects.get()
    assert str(decision.spend_usd) == "0.500000" and decision.allowed
    assert Agent.objects.get().agent_id == "billing-agent"  # registered on first sight
    assert usage.current(key_a.api_key.account_id, usage.AI) == 1


def test_raw_args_are_never_stored(client):
    secret = "4242-4242-4242-4242"
    run(client, args={"card": secret, "run_id": "run-7"})
    for row in Decision.objects.values():
        assert secret not in json.dumps(row, default=str)
    decision = Decision.objects.get()
    assert len(decision.args_hash) == 64 and decision.run_id == "run-7"


def test_args_hash_is_an_hmac_with_the_account_key(client, key_a, key_b):
    run(client, args={"amount": 1})
    run(key_b.client(), args={"amount": 1})
    hashes = set(Decision.objects.values_list("args_hash", flat=True))
    assert len(hashes) == 2  # same args, different accounts: different hashes
    from governance.services import args_hash

    account = key_a.api_key.account
    assert args_hash(account.args_hash_key, "billing-agent", "stripe.charge", {"amount": 1}) in hashes


def test_kill_switch_blocks_agent_disabled(client):
    client.post("/v1/agents/billing-agent/disable", {"reason": "runaway loop"}, content_type="application/json")
    body = run(client)
    assert (body["allowed"], body["decision"], body["policy_reason"]) == (False, "blocked", "agent_disabled")
    client.post("/v1/agents/billing-agent/enable", {}, content_type="application/json")
    assert run(client, args={"n": 2})["decision"] == "allowed"


def test_blocked_tools_with_globs_win_over_allowed(client):
    policy(client, allowed_tools=["stripe.*"], blocked_tools=["stripe.refund*"])
    assert run(client, tool="stripe.refund")["policy_reason"] == "tool_blocked"
    assert run(client, tool="send_email")["policy_reason"] == "tool_not_allowed"
    assert run(client, tool="stripe.charge")["policy_reason"] == "within_budget"


def test_an_empty_allowed_list_allows_nothing(client):
    policy(client, allowed_tools=[])
    assert run(client, tool="anything")["policy_reason"] == "tool_not_allowed"


def test_dedup_replays_and_costs_nothing(client):
    policy(client, max_spend_usd_per_day=10)
    first = run(client, args={"invoice": 1}, spend_usd=2)
    second = run(client, args={"invoice": 1}, spend_usd=2)
    assert second["decision"] == "dedup" and second["policy_reason"] == "idempotency_key_hit"
    assert second["allowed"] is True and second["result"] == first["result"]
    assert Decision.objects.get(pk=second["decision_id"]).original_id == first["decision_id"]
    assert Decision.objects.get(pk=second["decision_id"]).spend_usd == 0
    third = run(client, args={"invoice": 2}, spend_usd=2)
    assert third["remaining"]["spend_usd_today"] == 4.0  # the dedup did not count


def test_a_blocked_call_is_not_seen_by_dedup(client):
    policy(client, blocked_tools=["stripe.charge"])
    assert run(client, args={"x": 1})["decision"] == "blocked"
    policy(client, blocked_tools=None)
    assert run(client, args={"x": 1})["decision"] == "allowed"


def test_hourly_action_limit(client):
    policy(client, max_actions_per_hour=2)
    reasons = [run(client, args={"n": n})["policy_reason"] for n in range(3)]
    assert reasons == ["within_budget", "within_budget", "hourly_action_limit_exceeded"]


def test_per_tool_daily_call_limit(client):
    policy(client, max_calls_per_tool={"send_email": 1})
    assert run(client, tool="send_email", args={"to": "a"})["policy_reason"] == "within_budget"
    assert run(client, tool="send_email", args={"to": "b"})["policy_reason"] == "tool_call_limit_exceeded"
    assert run(client, tool="send_sms", args={"to": "b"})["policy_reason"] == "within_budget"


def test_daily_spend_from_request_or_pricing_rules(client):
    policy(client, max_spend_usd_per_day=1.0, pricing_rules=[{"tool": "stripe.*", "price_usd": 0.4}])
    assert run(client, args={"n": 1})["remaining"]["spend_usd_today"] == 0.4
    assert run(client, args={"n": 2})["remaining"]["spend_usd_today"] == 0.8
    assert run(client, args={"n": 3})["policy_reason"] == "daily_spend_exceeded"
    assert run(client, args={"n": 4}, spend_usd=0.2)["policy_reason"] == "daily_spend_exceeded"  # 0.4 charged
    assert run(client, tool="send_email", spend_usd=0.2)["policy_reason"] == "within_budget"  # exactly the cap


def test_spend_cap_survives_a_redis_flush(client):
    policy(client, max_spend_usd_per_day=5)
    assert run(client, args={"n": 1}, spend_usd=3)["decision"] == "allowed"
    lose_redis_state()
    again = run(client, args={"n": 2}, spend_usd=3)
    assert again["decision"] == "blocked" and again["policy_reason"] == "daily_spend_exceeded"
    assert again["remaining"]["spend_usd_today"] == 3.0


def test_dedup_survives_a_redis_flush(client):
    first = run(client, args={"invoice": 9})
    lose_redis_state()
    second = run(client, args={"invoice": 9})
    assert (
        second["decision"] == "dedup"
        and Decision.objects.get(pk=second["decision_id"]).original_id == first["decision_id"]
    )


def test_hourly_window_survives_a_redis_flush(client):
    policy(client, max_actions_per_hour=1)
    run(client, args={"n": 1})
    lose_redis_state()
    assert run(client, args={"n": 2})["policy_reason"] == "hourly_action_limit_exceeded"


class Stale(NamedTuple):
    keys: services.GovernedCallKeys
    rebuilds: list[int]


@pytest.fixture
def stale(monkeypatch, key_a):
    """Makes the agent's counters in Redis miss its last call, as a replica promoted by a failover can (replication
    is asynchronous); counts the rebuilds from the decision log."""
    rebuilds: list[int] = []
    rebuild = services._rebuild

    def counting(agent, keys, now, dedup_window):
        rebuilds.append(agent.pk)
        rebuild(agent, keys, now, dedup_window)

    monkeypatch.setattr(services, "_rebuild", counting)

    def make(marker: str) -> Stale:
        agent = Agent.objects.get(account_id=key_a.api_key.account_id, agent_id="billing-agent")
        keys = services._keys(agent, "-", timezone.now())
        redis = get_redis()
        redis.set(keys.ready, marker, ex=services.READY_SECONDS)
        redis.set(keys.spend, 0)
        redis.delete(keys.hour, keys.calls, *redis.keys(keys.dedup.replace(":dedup:-", ":dedup:*")))
        rebuilds.clear()
        return Stale(keys, rebuilds)

    return make


def test_a_marker_of_another_replication_history_rebuilds_the_counters(client, stale):
    """A promoted replica holds the ready marker (replicated long before) but can miss the last reservations and
    dedup entries: the marker carries the replication id of the server that wrote it, and a promoted replica (or a
    restarted server) has a new one, so the next call rebuilds from the decision log and the cap holds."""
    policy(client, max_spend_usd_per_day=5)
    first = run(client, args={"n": 1}, spend_usd=3)
    assert first["decision"] == "allowed"
    other = "".join(secrets.choice("0123456789abcdef") for _ in range(40))
    assert other != replication_id()
    lost = stale(other)  # on these counters the calls below would be a new call, then within the cap
    repeat = run(client, args={"n": 1}, spend_usd=3)
    assert repeat["decision"] == "dedup" and repeat["decision_id"] != first["decision_id"]
    assert Decision.objects.get(pk=repeat["decision_id"]).original_id == first["decision_id"]
    again = run(client, args={"n": 2}, spend_usd=3)
    assert again["decision"] == "blocked" and again["policy_reason"] == "daily_spend_exceeded"
    assert again["remaining"] == {"spend_usd_today": 3.0, "actions_this_hour": 1, "calls_today": 1}
    assert len(lost.rebuilds) == 1  # once, then the marker carries this server's id
    assert get_redis().get(lost.keys.ready) == replication_id().encode()


def test_a_marker_of_this_server_is_trusted_and_nothing_is_rebuilt(client, stale):
    """The converse: under a marker stamped with this server's replication id the counters in Redis are the ones
    decided on (here set by hand below what the log says, so it shows), and no call rebuilds them."""
    policy(client, max_spend_usd_per_day=5)
    assert run(client, args={"n": 1}, spend_usd=3)["decision"] == "allowed"
    kept = stale(replication_id())
    again = run(client, args={"n": 2}, spend_usd=3)
    assert again["decision"] == "allowed"  # the hand-set counters: a rebuild would have blocked it
    assert again["remaining"] == {"spend_usd_today": 3.0, "actions_this_hour": 1, "calls_today": 1}
    assert run(client, args={"n": 3}, spend_usd=1)["remaining"]["spend_usd_today"] == 4.0  # the log says 7
    assert kept.rebuilds == []


def test_every_decision_is_rolled_up(client):
    policy(client, blocked_tools=["delete_*"])
    run(client, args={"n": 1}, spend_usd=1)
    run(client, tool="delete_user")
    rollups = {(r.tool, r.outcome): (r.count, float(r.spend_usd)) for r in DecisionRollup.objects.all()}
    assert rollups == {("stripe.charge", "allowed"): (1, 1.0), ("delete_user", "blocked"): (1, 0.0)}


def test_governed_calls_need_a_governance_plan(account_a, plans):
    account_set_plan(account=account_a, plan=plans["starter"])
    response = (
        make_key(account_a).client().post("/v1/ai/run", {"agent_id": "a", "tool": "t"}, content_type="application/json")
    )
    assert response.status_code == 403
    assert response.json()["detail"]["error"] == "feature_not_available"
    assert "Pro" in response.json()["detail"]["message"]
    assert not Decision.objects.exists()


BAD = [
    ({"tool": "t"}, "agent_id"),
    ({"agent_id": "", "tool": "t"}, "agent_id"),
    ({"agent_id": "a" * 201, "tool": "t"}, "agent_id"),
    ({"agent_id": "a"}, "tool"),
    ({"agent_id": "a", "tool": "t", "args": [1]}, "args"),
    ({"agent_id": "a", "tool": "t", "spend_usd": -1}, "spend_usd"),
    ({"agent_id": "a", "tool": "t", "spend_usd": "1"}, "spend_usd"),
    ({"agent_id": "a", "tool": "t", "prompt": "hi"}, "prompt"),
]


@pytest.mark.parametrize(("payload", "field"), BAD)
def test_bad_governed_call_input_is_422_and_writes_nothing(client, payload, field):
    response = client.post("/v1/ai/run", payload, content_type="application/json")
    assert response.status_code == 422
    assert ["body", field] in [item["loc"] for item in response.json()["detail"]]
    assert not Decision.objects.exists() and not Agent.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"agent_id": "a", "tool": "t", "args": {"id": 2**64}}, "args"),
        ({"agent_id": "a", "tool": "t", "spend_usd": 1e22}, "spend_usd"),
        ({"agent_id": "a\x00b", "tool": "t"}, "agent_id"),
    ],
)
def test_unhashable_or_absurd_input_is_422_not_500(client, payload, field):
    response = client.post("/v1/ai/run", payload, content_type="application/json")
    assert response.status_code == 422
    assert ["body", field] in [item["loc"] for item in response.json()["detail"]]
    assert not Agent.objects.exists()


@pytest.mark.parametrize("value", [1e400, 10**12, -1])
def test_absurd_policy_numbers_are_422(client, value):
    for field in ("max_actions_per_hour", "max_spend_usd_per_day"):
        raw = f'{{"{field}": {value!r}}}'.replace("inf", "1e400")
        response = client.post("/v1/policies/a", raw, content_type="application/json")
        assert response.status_code == 422, (field, value, response.content)


@pytest.mark.parametrize(
    ("tool", "risk"),
    [
        ("stripe.refund", "high"),
        ("delete_user", "high"),
        ("sendEmail", "medium"),
        ("compute_total", "low"),
        ("get_output", "low"),
        ("list_orders", "low"),
    ],
)
def test_risk_heuristic_works_on_words(tool, risk):
    from governance.policies import risk_of

    assert risk_of(tool) == risk
