"""The governed call's steps, each alone (governance.services: call_resolve, call_policy, call_price, call_reserve,
call_release, call_tidy, call_record; docs/architecture.md §4). The end-to-end behaviour is pinned by
test_governed_call.py and its neighbours; these pin what each step decides from what it is given.

Tests without the django_db mark run with the database blocked: a step that queried would fail them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing.auth import PlanLimits
from billing.models import Account
from governance import services
from governance.choices import Outcome, Reason
from governance.models import Agent, Decision, Tool
from onceonly_site.redis_client import get_redis
from tests.support.redis_calls import count_redis_round_trips, replication_id

NOW = datetime(2026, 5, 14, 12, 30, tzinfo=UTC)
PLAN = PlanLimits(code="agency", default_ttl=3600, max_ttl=86400, make_limit=-1, ai_limit=100)


def make_call(
    tool: str = "send_email",
    policy: dict[str, Any] | None = None,
    registered: Tool | None = None,
    strict: bool = False,
    dry_run: bool = False,
    digest: str = "d" * 64,
    **agent_fields: Any,
) -> services.Call:
    """A call as call_resolve would hand it on, from unsaved rows: no query is needed to build it."""
    account = Account(pk=3, strict_mode=strict, args_hash_key="k")
    agent = Agent(pk=7, account=account, agent_id="bot", policy=policy, policy_version=4, **agent_fields)
    return services.Call(
        account_id=3,
        agent_id="bot",
        agent=agent,
        registered=registered,
        tool=registered.name if registered else tool,
        args={},
        policy=policy or {},
        digest=digest,
        run_id="",
        dry_run=dry_run,
        finishes_run=True,
        started=time.monotonic(),
        started_at=NOW,
        base={},
    )


def tool(**fields: Any) -> Tool:
    return Tool(pk=5, account_id=3, name="stripe.charge", scope_id="global", **fields)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: NOW)


def ready(call: services.Call) -> services.GovernedCallKeys:
    """The agent's counters and the month's usage hash as a call finds them after a first call: no rebuild."""
    keys = services._keys(call.agent, call.digest, NOW)
    get_redis().set(keys.ready, replication_id())
    get_redis().hset(keys.usage, "ai", 0)
    return keys


# --- policy ------------------------------------------------------------------------------------------------------

DISABLED_AT = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("call", "reason", "explain"),
    [
        (
            make_call(
                is_enabled=False,
                disabled_by="ops",
                disabled_reason="loop",
                disabled_at=DISABLED_AT,
                policy={"blocked_tools": ["send_*"]},
            ),
            Reason.AGENT_DISABLED,
            {
                "stage": "before_call",
                "disabled_by": "ops",
                "disabled_reason": "loop",
                "disabled_at": DISABLED_AT.isoformat(),
            },
        ),
        (
            make_call("DELETE_USER", {"blocked_tools": ["stripe.*", "delete_*"], "allowed_tools": ["delete_*"]}),
            Reason.TOOL_BLOCKED,
            {"pattern": "delete_*"},
        ),  # normalised names; blocked wins over allowed
        (
            make_call(policy={"allowed_tools": [f"read_{i}" for i in range(25)]}),
            Reason.TOOL_NOT_ALLOWED,
            {"allowed_tools": [f"read_{i}" for i in range(20)], "allowed_tools_count": 25},
        ),
        (
            make_call(policy={"allowed_tools": []}),
            Reason.TOOL_NOT_ALLOWED,
            {"allowed_tools": [], "allowed_tools_count": 0},
        ),
        (make_call(registered=tool(enabled=False)), Reason.TOOL_DISABLED, {"tool_id": 5, "scope_id": "global"}),
    ],
    ids=["agent_disabled", "tool_blocked", "tool_not_allowed", "empty_allow_list", "tool_disabled"],
)
def test_the_policy_step_blocks_from_what_was_resolved_without_a_query_or_redis(call, reason, explain):
    with count_redis_round_trips() as trips:
        ending = services.call_policy(call)
    assert trips.count == 0
    assert ending is not None
    assert (ending.outcome, ending.reason, ending.explain) == (Outcome.BLOCKED, reason, explain)
    assert ending.remaining == {} and ending.extra == {} and ending.intent_id is None


def test_the_policy_step_lets_a_call_on_and_strict_mode_refuses_an_unregistered_tool():
    with count_redis_round_trips() as trips:
        assert services.call_policy(make_call(policy={"allowed_tools": ["SEND_*"]})) is None
        assert services.call_policy(make_call(registered=tool(), strict=True)) is None
        with pytest.raises(services.ToolNotFound):
            services.call_policy(make_call(strict=True))
    assert trips.count == 0


# --- price -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "registered", "declared", "expected"),
    [
        ({}, None, None, (Decimal(0), None, Decimal(0))),
        ({}, tool(price_usd=Decimal("0.5")), Decimal("0.2"), (Decimal("0.5"), Decimal("0.2"), Decimal("0.5"))),
        ({}, tool(price_usd=Decimal("0.5")), Decimal("0.9"), (Decimal("0.5"), Decimal("0.9"), Decimal("0.9"))),
        # The policy's rule comes before the registry's price, and a rule of 0 prices the tool at zero.
        (
            {"pricing_rules": [{"tool": "stripe.*", "price_usd": 0}]},
            tool(price_usd=Decimal("0.5")),
            None,
            (Decimal(0), None, Decimal(0)),
        ),
        ({}, None, Decimal("0.12345678"), (Decimal(0), Decimal("0.123457"), Decimal("0.123457"))),
    ],
)
def test_the_charge_is_the_larger_of_the_declared_spend_and_the_operator_price(policy, registered, declared, expected):
    charge = services.call_price(make_call(policy=policy, registered=registered), declared)
    assert (charge.price, charge.declared, charge.cost) == expected


# --- reserve -----------------------------------------------------------------------------------------------------


def test_the_reserve_request_names_every_key_and_argument():
    call = make_call("SEND_EMAIL", {"max_calls_per_tool": {"send_email": 3}, "max_spend_usd_per_day": 2.5})
    charge = services.Charge(price=Decimal("0.25"), declared=None, cost=Decimal("0.25"))
    caps = services.Caps.of(call.policy, call.tool)
    keys, args = services.call_reserve_request(call, PLAN, charge, caps, NOW, "res-1")
    base = "oo:{a3}:gov:7"
    assert keys._asdict() == {
        "ready": f"{base}:ready",
        "dedup": f"{base}:dedup:{'d' * 64}",
        "hour": f"{base}:hour",
        "spend": f"{base}:spend:20260514",
        "calls": f"{base}:calls:20260514",
        "usage": "oo:{a3}:usage:2026-05",
        # No shadow candidate: its keys are named all the same (the script reads them only with shadow "1").
        "shadow_dedup": f"{base}:sh:-:dedup:{'d' * 64}",
        "shadow_hour": f"{base}:sh:-:hour",
        "shadow_spend": f"{base}:sh:-:spend:20260514",
        "shadow_calls": f"{base}:sh:-:calls:20260514",
        # No run id: the run's counters are named all the same (read only with run "1").
        "run": f"{base}:run:-",
        "bucket": None,
    }
    assert args._asdict() == {
        "now_ms": int(NOW.timestamp() * 1000),
        "window_ms": 3_600_000,
        "max_actions": -1,
        "max_calls": 3,
        "max_spend": 2_500_000,
        "cost": 250_000,
        "tool": "send_email",
        "reservation": "res-1",
        "day_seconds": services.DAY_COUNTER_SECONDS,
        "ai_limit": 100,
        "usage_keep_seconds": 62 * 86400,
        "day": "14",
        "dry_run": "0",
        "shadow": "0",
        "shadow_max_actions": -1,
        "shadow_max_calls": -1,
        "shadow_max_spend": -1,
        "shadow_cost": 0,
        "run": "0",
        "run_max_actions": -1,
        "run_max_spend": -1,
        "run_max_calls": -1,
        "run_max_ms": -1,
        "rate": None,
        "burst": None,
    }
    # With the caller's bucket the token is taken in the same script: the optional KEYS[11], ARGV[19] and ARGV[20].
    keys, args = services.call_reserve_request(call, PLAN, charge, caps, NOW, "res-1", ("oo:{a3}:rl:9", [10, 50]))
    assert (keys.bucket, args.rate, args.burst) == ("oo:{a3}:rl:9", 10, 50)


def test_reserve_is_one_round_trip_and_release_gives_all_of_it_back(frozen):
    keys = ready(make_call())
    charge = services.Charge(price=Decimal("0.25"), declared=None, cost=Decimal("0.25"))
    first = services.call_reserve(make_call(), PLAN, charge)  # (loads the script into Redis)
    with count_redis_round_trips() as trips:
        reserved = services.call_reserve(make_call(digest="e" * 64), PLAN, charge)
    assert trips.count == 1
    assert (reserved.status, reserved.actions, reserved.calls, reserved.spent) == ("ok", 2, 2, 500_000)
    assert reserved.remaining == {"spend_usd_today": 0.5, "actions_this_hour": 2, "calls_today": 2}
    client = get_redis()
    assert client.get(reserved.keys.dedup) == f"pending:{reserved.args.reservation}".encode()
    assert client.hget(keys.usage, "ai") == b"2" and client.hget(keys.usage, "ai:14") == b"2"
    services.call_release(reserved)
    services.call_release(first)
    assert client.zcard(keys.hour) == 0 and client.get(keys.spend) == b"0"
    assert client.hget(keys.calls, "send_email") == b"0" and client.hget(keys.usage, "ai") == b"0"
    assert client.get(keys.dedup) is None and client.get(reserved.keys.dedup) is None


def test_a_repeat_is_dedup_and_a_limit_sees_the_counts_before_the_call(frozen):
    call = make_call(policy={"max_actions_per_hour": 1})
    ready(call)
    charge = services.Charge(price=Decimal(0), declared=None, cost=Decimal(0))
    first = services.call_reserve(call, PLAN, charge)
    again = services.call_reserve(call, PLAN, charge)
    assert (again.status, again.detail) == ("dedup", f"pending:{first.args.reservation}")
    other = services.call_reserve(make_call(policy={"max_actions_per_hour": 1}, digest="e" * 64), PLAN, charge)
    assert (other.status, other.detail, other.actions) == ("blocked", Reason.HOURLY_ACTION_LIMIT_EXCEEDED, 1)
    assert services._limit_explain(call, other, charge) == {"limit": 1, "count": 1}


def test_a_dry_run_decides_and_writes_nothing(frozen):
    call = make_call(dry_run=True)
    keys = ready(call)
    reserved = services.call_reserve(call, PLAN, services.Charge(Decimal(1), None, Decimal(1)))
    assert (reserved.status, reserved.actions, reserved.calls, reserved.spent) == ("ok", 1, 1, 1_000_000)
    assert get_redis().get(keys.dedup) is None and get_redis().hget(keys.usage, "ai") == b"0"


# --- the explain numbers -------------------------------------------------------------------------------------------


def reserved_with(call: services.Call, status: str, detail: str, *counts: int) -> services.Reserved:
    """A reply of the atomic step as it would come back: ``counts`` are actions, calls and spend (micro-dollars)."""
    charge = services.Charge(price=Decimal(0), declared=None, cost=Decimal(0))
    caps = services.Caps.of(call.policy, call.tool)
    keys, args = services.call_reserve_request(call, PLAN, charge, caps, NOW, "res-1")
    return services.Reserved(status, detail, *counts, caps, NOW, keys, args)


def test_each_limit_explains_the_numbers_it_met():
    policy = {"max_actions_per_hour": 10, "max_calls_per_tool": {"SEND_EMAIL": 2}, "max_spend_usd_per_day": 5}
    call = make_call(policy=policy)
    charge = services.Charge(price=Decimal("0.4"), declared=Decimal("1.5"), cost=Decimal("1.5"))
    hourly = reserved_with(call, "blocked", Reason.HOURLY_ACTION_LIMIT_EXCEEDED, 10, 1, 0)
    assert services._limit_explain(call, hourly, charge) == {"limit": 10, "count": 10}
    calls = reserved_with(call, "blocked", Reason.TOOL_CALL_LIMIT_EXCEEDED, 3, 2, 0)
    assert services._limit_explain(call, calls, charge) == {"limit": 2, "count": 2, "cap_key": "SEND_EMAIL"}
    spend = reserved_with(call, "blocked", Reason.DAILY_SPEND_EXCEEDED, 3, 1, 4_000_000)
    assert services._limit_explain(call, spend, charge) == {
        "limit": 5.0,
        "spent": 4.0,
        "cost": 1.5,
        "declared": 1.5,
        "price": 0.4,
    }


def test_an_allowed_call_explains_its_cost_and_what_is_left_under_each_cap():
    policy = {"max_actions_per_hour": 10, "max_calls_per_tool": {"send_email": 2}, "max_spend_usd_per_day": 5}
    charge = services.Charge(price=Decimal("0.4"), declared=None, cost=Decimal("0.4"))
    reserved = reserved_with(make_call(policy=policy), "ok", "", 4, 2, 1_200_000)  # counts include this call
    assert services._budget_explain(reserved, charge) == {
        "cost": 0.4,
        "left": {"actions_this_hour": 6, "calls_today": 0, "spend_usd_today": 3.8},
    }
    assert services._budget_explain(reserved_with(make_call(), "ok", "", 1, 1, 0), charge) == {"cost": 0.4, "left": {}}


# --- tidy ----------------------------------------------------------------------------------------------------------


def test_tidy_points_the_dedup_entry_at_the_decision_or_gives_a_failed_call_its_ai_unit_back(frozen):
    client = get_redis()
    charge = services.Charge(price=Decimal(1), declared=None, cost=Decimal(1))
    call = make_call()
    keys = ready(call)
    allowed = services.call_reserve(call, PLAN, charge)
    services.call_tidy(allowed, services.Ending(Outcome.ALLOWED, Reason.WITHIN_BUDGET, {}), Decision(pk=42))
    assert client.get(keys.dedup) == b"decision:42"
    failed = services.call_reserve(make_call(digest="f" * 64), PLAN, charge)
    services.call_tidy(failed, services.Ending(Outcome.FAILED, Reason.TOOL_ERROR, {}), Decision(pk=43))
    assert client.get(failed.keys.dedup) is None
    assert client.hget(keys.usage, "ai") == b"1"  # the failed call's unit given back…
    assert client.get(keys.spend) == b"2000000" and client.zcard(keys.hour) == 2  # …its spend and action stay


# --- resolve and record (the database) ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_resolve_registers_the_agent_and_a_dry_run_is_recorded_nowhere(account_a):
    args = {"to": "a@example.test"}
    call = services.call_resolve(
        account_id=account_a.pk,
        agent_id="new-bot",
        tool="SEND_EMAIL",
        args=args,
        run_id=None,
        dry_run=True,
        finishes_run=True,
        api_key_id=None,
    )
    assert Agent.objects.filter(account=account_a, agent_id="new-bot").exists()
    assert (call.tool, call.registered, call.run_id, call.policy) == ("SEND_EMAIL", None, "", {})
    assert call.digest == services.args_hash(account_a.args_hash_key, "new-bot", "SEND_EMAIL", args)
    assert call.base == {
        "tool": "SEND_EMAIL",
        "args_hash": call.digest,
        "run_id": "",
        "policy_version": None,
        "risk_level": "medium",
        "api_key_id": None,
    }
    outcome = services.call_record(call, services.Ending(Outcome.ALLOWED, Reason.WITHIN_BUDGET, {"cost": 0.0}))
    assert outcome.decision.pk is None and not Decision.objects.exists()
    assert outcome.decision.explain == {"policy_version": None, "cost": 0.0} and outcome.decision.allowed


def test_the_shadow_candidate_is_decided_by_its_lists_without_a_query():
    """(This module's tests have no database: a query would raise.)"""
    candidate = {"blocked_tools": ["send_*"], "max_calls_per_tool": {"search": 2}, "pricing_rules": []}
    blocked = services.call_shadow(make_call(shadow_policy=candidate, shadow_id="s1"), None)
    passing = services.call_shadow(make_call("search", shadow_policy=candidate, shadow_id="s1"), Decimal("0.5"))
    none = services.call_shadow(make_call(), None)
    assert blocked is not None and blocked.reason == "tool_blocked"
    assert passing is not None and (passing.reason, passing.caps.calls, passing.cost) == ("", 2, Decimal("0.5"))
    assert none is None
    call = make_call("search", shadow_policy=candidate, shadow_id="s1")
    call.shadow = passing
    charge = services.Charge(price=Decimal(0), declared=Decimal("0.5"), cost=Decimal("0.5"))
    keys, args = services.call_reserve_request(call, PLAN, charge, services.Caps.of({}, "search"), NOW, "r")
    assert (args.shadow, args.shadow_max_calls, args.shadow_cost) == ("1", 2, 500_000)
    assert keys.shadow_calls == "oo:{a3}:gov:7:sh:s1:calls:20260514"
