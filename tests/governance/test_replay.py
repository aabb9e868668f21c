"""Impact preview by replay (governance/replay.py, docs/policy-changes.md): the agent's recorded decisions replayed
through a draft policy with in-memory counters decide as the live engine does when the same calls are sent to it
for real under that draft — the acceptance test makes both and compares — and the edges of its semantics, its
progress, its bounded memory, its job in Redis and the Celery task."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.services import account_get_or_create
from governance import replay, services
from governance.choices import Outcome, Reason
from governance.models import Agent, Decision, PolicyVersion
from governance.tasks import replay_policy_impact
from onceonly_site import jobs
from onceonly_site.celery import app as celery_app
from onceonly_site.redis_client import get_redis
from tests.conftest import make_key
from tests.support.governance import governed_call, register_tool, set_policy

AGENT = "replay-agent"

# The policy the calls are recorded under: loose, with blocks and an approval of its own (so the draft can let calls
# through that were blocked), and a pricing rule for the registered tool (so the replay must find its registry price).
FIRST = {
    "blocked_tools": ["danger.*"],
    "max_actions_per_hour": 1000,
    "max_spend_usd_per_day": 100.0,
    "require_approval": ["ops.restart"],
    "pricing_rules": [{"tool": "crm.*", "price_usd": 0.05}],
}
# The draft: every kind of rule, with caps small enough to bite within the sequence.
DRAFT = {
    "allowed_tools": ["search.*", "email.*", "stripe.*", "crm.*", "danger.*", "ops.*"],
    "blocked_tools": ["stripe.refund"],
    "max_actions_per_hour": 25,
    "max_calls_per_tool": {"email.send": 4},
    "max_spend_usd_per_day": 3.0,
    "pricing_rules": [{"tool": "stripe.*", "price_usd": 0.25}],
    "require_approval": [{"tool": "stripe.charge", "over_usd": 1.0}, "danger.wipe"],
}
TOOLS = [
    "search.web",
    "search.web",
    "email.send",
    "EMAIL.SEND",  # unregistered: recorded as spelled, counted (and capped) as email.send
    "stripe.charge",
    "stripe.refund",
    "crm.update",  # registered (price 0.10), dispatched to the local endpoint
    "danger.drop",
    "danger.wipe",
    "misc.tool",
    "ops.restart",
]
SPENDS = [None, None, None, 0, 0.05, 0.3, 1.5]
DISABLE_AT, ENABLE_AT = 40, 43  # the kill switch is on for calls 40–42, in both accounts


def calls(count: int = 120, seed: int = 20) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        call = {"tool": rng.choice(TOOLS), "args": {"n": rng.randrange(8)}}
        spend = rng.choice(SPENDS)
        # A call the recording policy stops before pricing it (danger.*: blocked_tools) keeps no declared spend: the
        # replay takes it as 0 (docs/policy-changes.md §"Approximations"), so these calls declare none.
        if spend is not None and not call["tool"].startswith("danger."):
            call["spend_usd"] = spend
        out.append(call)
    return out


def send(client, sequence) -> None:
    """The calls, in order, through POST /v1/ai/run (the kill switch pressed and released at the same points)."""
    for n, call in enumerate(sequence):
        if n == DISABLE_AT:
            response = client.post(f"/v1/agents/{AGENT}/disable", {"reason": "replay test"}, "application/json")
            assert response.status_code == 200, response.content
        if n == ENABLE_AT:
            assert client.post(f"/v1/agents/{AGENT}/enable", {}, "application/json").status_code == 200
        response = governed_call(client, AGENT, call["tool"], **{k: v for k, v in call.items() if k != "tool"})
        assert response.status_code == 200, response.content


def outcomes(agent: Agent) -> Counter:
    return Counter(Decision.objects.filter(agent=agent).values_list("outcome", "policy_reason"))


@pytest.fixture
def away_from_midnight():
    """The live engine counts per UTC day by the real clock: keep both accounts' calls on one day."""
    now = datetime.now(UTC)
    left = (now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1) - now).total_seconds()
    if left < 60:
        time.sleep(left + 1)


@pytest.fixture
def eager():
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


def test_replay_counts_equal_the_live_engine_deciding_the_same_calls_under_the_draft(
    key_a, plans, endpoint, away_from_midnight
):
    sequence = calls()
    recorded_client = key_a.client()
    assert (
        register_tool(recorded_client, "crm.update", endpoint.base + "/crm", max_retries=0, price_usd=0.1).status_code
        == 200
    )
    set_policy(recorded_client, AGENT, **FIRST)
    send(recorded_client, sequence)
    agent = Agent.objects.get(account=key_a.api_key.account, agent_id=AGENT)
    redis = get_redis()
    counters = {key: redis.dump(key) for key in redis.keys(f"oo:{{a{agent.account_id}}}:gov:*")}

    result = replay.replay(agent, DRAFT, 1)

    assert {key: redis.dump(key) for key in redis.keys(f"oo:{{a{agent.account_id}}}:gov:*")} == counters

    fresh, _ = account_get_or_create(name="Replay twin", plan_code="agency")
    live_client = make_key(fresh).client()
    assert (
        register_tool(live_client, "crm.update", endpoint.base + "/crm", max_retries=0, price_usd=0.1).status_code
        == 200
    )
    set_policy(live_client, AGENT, **DRAFT)
    send(live_client, sequence)
    twin = Agent.objects.get(account=fresh, agent_id=AGENT)

    live = outcomes(twin)
    assert result.total == len(sequence) == sum(live.values())
    assert result.replayed == live, (result.replayed, live)
    assert result.recorded == outcomes(agent)
    # Every rule of the draft bit, and the comparison covered calls the draft lets through that were blocked.
    reasons = {reason for _, reason in live}
    assert reasons >= {
        Reason.TOOL_BLOCKED,
        Reason.TOOL_NOT_ALLOWED,
        Reason.HOURLY_ACTION_LIMIT_EXCEEDED,
        Reason.TOOL_CALL_LIMIT_EXCEEDED,
        Reason.DAILY_SPEND_EXCEEDED,
        Reason.IDEMPOTENCY_KEY_HIT,
        Reason.APPROVAL_REQUIRED,
        Reason.AGENT_DISABLED,
        Reason.WITHIN_BUDGET,
    }, live
    assert (Outcome.EXECUTED, Reason.WITHIN_BUDGET) in live
    assert result.newly_allowed > 0 and result.newly_blocked > 0
    assert result.blocked == sum(n for (outcome, _), n in live.items() if outcome == Outcome.BLOCKED)


# --- edges of the semantics, on decisions written directly (their times chosen) -------------------------------------

T0 = datetime(2025, 12, 2, 9, 14, tzinfo=UTC)


@pytest.fixture
def agent(account_a):
    return services.agent_get_or_create(account_id=account_a.pk, agent_id="edge-agent")


def seed(agent, rows) -> list[int]:
    """Decisions of ``agent``: each row (seconds after T0, tool, outcome, reason, declared, price, args hash)."""
    objs = []
    for offset, tool, outcome, reason, declared, price, digest in rows:
        objs.append(
            Decision(
                account_id=agent.account_id,
                agent=agent,
                ts=T0 + timedelta(seconds=offset),
                tool=tool,
                outcome=outcome,
                allowed=outcome in ("executed", "allowed", "dedup"),
                policy_reason=reason,
                risk_level="low",
                declared_spend_usd=None if declared is None else Decimal(str(declared)),
                operator_price_usd=None if price is None else Decimal(str(price)),
                args_hash=digest,
            )
        )
    return [d.pk for d in Decision.objects.bulk_create(objs)]


def ok(offset, tool="t", declared=None, price=0, digest=None, outcome="allowed", reason="within_budget"):
    return (offset, tool, outcome, reason, declared, price, digest or f"h{offset}-{tool}")


def run(agent, draft, rows=None, days=7, **kw):
    """Replay ``agent``'s decisions (``rows`` seeded first) of the ``days`` before T0 + 2 days under ``draft``."""
    if rows is not None:
        seed(agent, rows)
    return replay.replay(agent, draft, days, now=T0 + timedelta(days=2), **kw)


def reasons(result) -> dict:
    """The replayed counts by reason (executed and allowed together)."""
    counts = Counter()
    for (_, reason), n in result.replayed.items():
        counts[reason] += n
    return dict(counts)


def test_reaching_the_spend_cap_exactly_is_allowed_one_micro_dollar_more_is_not(agent):
    result = run(
        agent, {"max_spend_usd_per_day": 1.0}, [ok(1, declared=0.6), ok(2, declared=0.4), ok(3, declared=0.000001)]
    )
    assert reasons(result) == {"within_budget": 2, "daily_spend_exceeded": 1}


def test_the_hour_is_rolling_and_an_entry_leaves_it_exactly_sixty_minutes_later(agent):
    rows = [ok(0), ok(3599.5), ok(3600), ok(3601)]
    result = run(agent, {"max_actions_per_hour": 1}, rows)
    # 0 allowed; 3599.5 blocked (0 is 59:59.5 old); at 3600 the first left the window; 3601: the one of 3600 in it.
    assert reasons(result) == {"within_budget": 2, "hourly_action_limit_exceeded": 2}
    assert result.examples["hourly_action_limit_exceeded"] == list(
        Decision.objects.filter(ts__in=[T0 + timedelta(seconds=3599.5), T0 + timedelta(seconds=3601)])
        .order_by("ts")
        .values_list("pk", flat=True)
    )


def test_per_tool_day_caps_count_by_normalised_name_and_start_again_each_utc_day(agent):
    midnight = (T0.replace(hour=0, minute=0, second=0) + timedelta(days=1) - T0).total_seconds()
    rows = [ok(1, "send_email"), ok(2, "SEND_EMAIL"), ok(3, "Send_Email"), ok(midnight + 1, "send_email")]
    result = run(agent, {"max_calls_per_tool": {"send_email": 2}}, rows)
    assert reasons(result) == {"within_budget": 3, "tool_call_limit_exceeded": 1}


def test_spend_starts_again_at_midnight_but_the_rolling_hour_does_not(agent):
    midnight = (T0.replace(hour=0, minute=0, second=0) + timedelta(days=1) - T0).total_seconds()
    rows = [ok(midnight - 10, declared=1), ok(midnight + 10, declared=1), ok(midnight + 20, declared=1)]
    assert reasons(run(agent, {"max_spend_usd_per_day": 1.0}, rows)) == {"within_budget": 2, "daily_spend_exceeded": 1}
    Decision.objects.all().delete()
    assert reasons(run(agent, {"max_actions_per_hour": 1}, rows)) == {
        "within_budget": 1,
        "hourly_action_limit_exceeded": 2,
    }


def test_the_checks_run_in_the_live_order(agent):
    # Hourly before per-tool before spend; tool lists and approval before dedup; dedup before every cap.
    rows = [ok(1, "a", declared=5, digest="same"), ok(2, "a", declared=5, digest="same")]
    draft = {"max_actions_per_hour": 0, "max_calls_per_tool": {"a": 0}, "max_spend_usd_per_day": 0.0}
    assert reasons(run(agent, draft, rows)) == {"hourly_action_limit_exceeded": 2}
    draft = {"max_calls_per_tool": {"a": 0}, "max_spend_usd_per_day": 0.0}
    assert reasons(run(agent, draft)) == {"tool_call_limit_exceeded": 2}
    assert reasons(run(agent, {"max_spend_usd_per_day": 4.0})) == {"daily_spend_exceeded": 2}
    assert reasons(run(agent, {"max_spend_usd_per_day": 5.0})) == {"within_budget": 1, "idempotency_key_hit": 1}
    assert reasons(run(agent, {"require_approval": ["a"]})) == {"approval_required": 2}
    assert reasons(run(agent, {"blocked_tools": ["A"], "require_approval": ["a"]})) == {"tool_blocked": 2}
    assert reasons(run(agent, {"allowed_tools": []})) == {"tool_not_allowed": 2}


def test_dedup_window_what_leaves_an_entry_and_what_does_not(agent, account_a):
    window = account_a.plan.default_ttl_seconds
    rows = [
        ok(0, digest="x"),
        ok(1, digest="x", outcome="dedup", reason="idempotency_key_hit"),  # a repeat: dedup, not charged
        ok(window + 1, digest="x"),  # past the window: decided afresh (charged)
        ok(10, "b", digest="f", outcome="failed", reason="tool_error"),  # failed: its entry is released
        ok(11, "b", digest="f"),
        ok(20, "c", digest="u", outcome="failed", reason="outcome_unknown"),  # never tidied: the entry stays
        ok(21, "c", digest="u"),
        ok(30, "blocked", digest="z"),  # blocked by the draft: no entry, its repeat is decided afresh
        ok(31, "blocked", digest="z"),
    ]
    result = run(agent, {"blocked_tools": ["blocked"], "max_actions_per_hour": 100}, rows)
    assert result.replayed == Counter(
        {
            ("allowed", "within_budget"): 3,
            ("dedup", "idempotency_key_hit"): 2,
            ("failed", "tool_error"): 1,
            ("failed", "outcome_unknown"): 1,
            ("blocked", "tool_blocked"): 2,
        }
    )


def test_kill_switch_calls_stay_stopped_and_the_agents_state_now_is_ignored(agent, account_a):
    services.agent_set_enabled(account_id=account_a.pk, agent_id=agent.agent_id, enabled=False, reason="r", actor="t")
    agent.refresh_from_db()
    rows = [ok(1), (2, "t", "blocked", "agent_disabled", None, None, "k"), ok(3, outcome="executed")]
    result = run(agent, {}, rows)
    assert result.replayed == Counter(
        {("allowed", "within_budget"): 1, ("blocked", "agent_disabled"): 1, ("executed", "within_budget"): 1}
    )
    assert result.newly_allowed == 0 and result.newly_blocked == 0


def test_a_disabled_tool_stays_disabled_unless_the_tool_lists_stop_the_call_first(agent):
    rows = [
        (1, "t", "blocked", "tool_disabled", None, None, "a"),
        (2, "u", "blocked", "tool_disabled", None, None, "b"),
    ]
    assert reasons(run(agent, {"blocked_tools": ["u"]}, rows)) == {"tool_disabled": 1, "tool_blocked": 1}


def test_the_cost_is_the_larger_of_the_declared_spend_and_the_drafts_price(agent):
    rows = [ok(1, "paid", declared=None, price=0), ok(2, "paid", declared=0.5, price=0), ok(3, "paid", declared=0.1)]
    # The draft prices `paid` at 0.3: costs 0.3, 0.5, 0.3 = 1.1 > 1.0 at the third.
    draft = {"pricing_rules": [{"tool": "PAID", "price_usd": 0.3}], "max_spend_usd_per_day": 1.0}
    assert reasons(run(agent, draft, rows)) == {"within_budget": 2, "daily_spend_exceeded": 1}


def test_registry_price_from_the_decision_or_from_the_registry_now(agent, account_a):
    from governance.models import Tool

    url = "https://tools.example.com/reg"
    Tool.objects.create(account=account_a, name="reg", name_key="reg", url=url, price_usd=Decimal("0.7"))
    policy = services.policy_publish(
        account_id=account_a.pk,
        agent_id=agent.agent_id,
        policy={"pricing_rules": [{"tool": "r*", "price_usd": 0.01}]},
        source="api",
        actor="t",
    )
    rows = [
        # Decided under a policy without a rule for the tool: the recorded operator price is the registry's then.
        ok(1, "unruled", price=0.4),
        # Decided under a policy that priced it: the registry's price now (reg: 0.7; an unregistered tool: 0).
        ok(2, "reg", price=0.01),
        ok(3, "ruled", price=0.01),
        # Ended before it was priced (no recorded price): the registry's price now.
        (4, "reg", "blocked", "tool_blocked", None, None, "h4"),
    ]
    seed(agent, rows)
    Decision.objects.filter(tool__in=["reg", "ruled"]).update(policy_version=policy.version)
    result = run(agent, {"max_spend_usd_per_day": 1.8})
    # 0.4 + 0.7 + 0 = 1.1; the fourth (0.7) would make 1.8: allowed (exactly the cap) — a fifth cent would not.
    assert reasons(result) == {"within_budget": 4}
    assert result.replayed[("executed", "within_budget")] == 1  # newly allowed call of a registered tool: dispatched
    assert reasons(run(agent, {"max_spend_usd_per_day": 1.79})) == {"within_budget": 3, "daily_spend_exceeded": 1}


def test_approval_thresholds_compare_the_drafts_cost(agent):
    rows = [ok(1, "pay", declared=50), ok(2, "pay", declared=50.000001), ok(3, "other", declared=99)]
    result = run(agent, {"require_approval": [{"tool": "pay", "over_usd": 50}]}, rows)
    assert reasons(result) == {"within_budget": 2, "approval_required": 1}


def test_summary_examples_first_blocked_newly_allowed_and_the_delta(agent):
    rows = [ok(n, "x") for n in range(8)] + [
        (100 + n, "y", "blocked", "tool_blocked", None, None, f"y{n}") for n in range(7)
    ]
    ids = seed(agent, rows)
    result = run(agent, {"blocked_tools": ["x"]})
    assert result.total == 15 and result.blocked == 8
    assert result.blocked_by_reason() == [("tool_blocked", 8)]
    assert result.examples == {"tool_blocked": ids[:5]}
    assert result.first_blocked == T0
    assert (result.newly_allowed, result.newly_allowed_examples) == (7, ids[8:13])
    assert (result.newly_blocked, result.newly_blocked_examples) == (8, ids[:5])
    assert result.delta() == [
        {"reason": "tool_blocked", "recorded": 7, "replayed": 8, "change": 1},
        {"reason": "within_budget", "recorded": 8, "replayed": 7, "change": -1},
    ]
    assert result.as_dict()["by_reason"] == [["tool_blocked", 8]]


def test_only_the_range_is_replayed_and_other_agents_are_not(agent, account_a):
    other = services.agent_get_or_create(account_id=account_a.pk, agent_id="other-agent")
    seed(agent, [ok(0), ok(86400 * 3)])  # 30 h before "now" → in 2 days; 3 days later → after now: not replayed
    seed(other, [ok(5)])
    now = T0 + timedelta(hours=30)
    assert replay.replay(agent, {}, 1, now=now).total == 0
    assert replay.replay(agent, {}, 7, now=now).total == 1
    with pytest.raises(replay.ReplayRefused):
        replay.replay(agent, {}, 2, now=now)
    operator = services.agent_get_or_create(account_id=account_a.pk, agent_id=services.OPERATOR_AGENT)
    with pytest.raises(replay.ReplayRefused):
        replay.replay(operator, {}, 7, now=now)


def test_progress_is_reported_after_every_chunk_and_at_the_end(agent):
    seed(agent, [ok(n) for n in range(10)])
    seen = []
    result = run(agent, {}, progress=lambda done, total: seen.append((done, total)), chunk=3)
    assert result.total == 10
    assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]


def test_replay_reads_the_decisions_in_chunks_and_its_memory_does_not_grow_with_them(agent):
    def peak(n: int) -> int:
        Decision.objects.all().delete()
        # Many calls, a few distinct args (a dedup window holds them all) and no hourly cap: nothing grows but the
        # rows, which must not be held.
        seed(agent, [ok(n_ * 0.01, "t", digest=f"d{n_ % 7}") for n_ in range(n)])
        tracemalloc.start()
        try:
            run(agent, {}, chunk=500)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(1_000), peak(8_000)
    assert large < small * 1.5, (small, large)
    Decision.objects.all().delete()
    if connection.vendor == "postgresql":  # a server-side cursor: the database holds the rows, not this process
        with CaptureQueriesContext(connection) as queries:
            run(agent, {})
        assert any(q["sql"].startswith("DECLARE") for q in queries.captured_queries)


def test_the_replay_never_touches_redis(agent):
    seed(agent, [ok(n, digest="same") for n in range(5)])
    client = get_redis()
    client.set("marker", "1")
    before = sorted(client.keys("*"))
    run(agent, {"max_actions_per_hour": 2, "max_spend_usd_per_day": 1.0})
    assert sorted(client.keys("*")) == before


# --- the job: service, Celery task (eager), selector ------------------------------------------------------------------


def test_a_job_runs_in_the_task_with_progress_and_its_result_kept_for_an_hour(agent, eager, monkeypatch):
    now = timezone.now()
    Decision.objects.bulk_create(
        Decision(
            account_id=agent.account_id,
            agent=agent,
            ts=now - timedelta(minutes=10, seconds=-n),
            tool="t",
            outcome="allowed",
            allowed=True,
            policy_reason="within_budget",
            risk_level="low",
            args_hash=f"h{n}",
        )
        for n in range(7)
    )
    monkeypatch.setattr(replay, "CHUNK", 3)
    states = []
    real = replay.replay

    def spy(*args, **kwargs):
        progress = kwargs["progress"]

        def recording(done, total):
            progress(done, total)
            states.append(replay.replay_job(agent.account_id, job_id))

        return real(*args, **{**kwargs, "progress": recording, "chunk": 3})

    monkeypatch.setattr(replay, "replay", spy)
    job_id = "0" * 32
    monkeypatch.setattr(jobs.uuid, "uuid4", lambda: type("U", (), {"hex": job_id})())
    assert replay.replay_start(agent=agent, policy={"max_actions_per_hour": 5}, days=1, label="draft") == job_id
    assert [(s.state, s.processed, s.total) for s in states] == [
        ("running", 3, 7),
        ("running", 6, 7),
        ("running", 7, 7),
    ]
    job = replay.replay_job(agent.account_id, job_id)
    assert job.state == "done" and job.finished and job.percent == 100
    assert job.result["total"] == 7 and job.result["by_reason"] == [["hourly_action_limit_exceeded", 2]]
    assert job.label == "draft" and job.days == 1 and job.policy == {"max_actions_per_hour": 5}
    client = get_redis()
    assert 3500 < client.ttl(f"oo:{{a{agent.account_id}}}:replay:{job_id}") <= 3600
    assert not client.zcard(f"oo:{{a{agent.account_id}}}:replay:running")
    assert replay.replay_job(agent.account_id + 1, job_id) is None  # another account's key: not found


def test_at_most_two_previews_of_an_account_run_at_once(agent, monkeypatch):
    sent = []
    monkeypatch.setattr(replay_policy_impact, "delay", lambda *args: sent.append(args))  # queued, not run yet
    first = replay.replay_start(agent=agent, policy={}, days=7, label="a")
    replay.replay_start(agent=agent, policy={}, days=7, label="b")
    with pytest.raises(replay.ReplayBusy):
        replay.replay_start(agent=agent, policy={}, days=7, label="c")
    assert replay.replay_job(agent.account_id, first).state == "queued"
    replay_policy_impact(*sent[0])  # the worker runs one: a third may start
    assert replay.replay_job(agent.account_id, first).state == "done"
    replay.replay_start(agent=agent, policy={}, days=7, label="c")


def test_a_broker_that_is_down_fails_the_job_rather_than_leaving_it_queued(agent, monkeypatch):
    def down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr(replay_policy_impact, "delay", down)
    with pytest.raises(replay.ReplayUnavailable):
        replay.replay_start(agent=agent, policy={}, days=7, label="a")
    (key,) = get_redis().keys(f"oo:{{a{agent.account_id}}}:replay:????????????????????????????????")
    job = replay.replay_job(agent.account_id, key.decode().rsplit(":", 1)[1])
    assert job.state == "failed" and "unreachable" in job.error


def test_a_failing_replay_marks_the_job_failed(agent, eager, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(replay, "replay", boom)
    job_id = replay.replay_start(agent=agent, policy={}, days=7, label="a")
    job = replay.replay_job(agent.account_id, job_id)
    assert job.state == "failed" and job.error == "The preview failed: try again."
    assert not get_redis().zcard(f"oo:{{a{agent.account_id}}}:replay:running")


def test_the_policy_version_rows_are_read_once_per_version(agent, account_a, django_assert_num_queries):
    seed(agent, [ok(n, f"tool{n % 4}", price=0.1) for n in range(40)])
    Decision.objects.update(policy_version=1)
    PolicyVersion.objects.create(agent=agent, version=1, policy={}, source="api", created_by="t")
    # account + plan, count, the rows (one cursor), the policy version, the registry.
    agent = Agent.objects.select_related("account__plan").get(pk=agent.pk)
    with django_assert_num_queries(4):
        assert run(agent, {}).total == 40
