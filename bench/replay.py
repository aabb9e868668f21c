"""The `replay` scenario of `make bench`: the impact preview of a draft policy over 100,000 recorded decisions of one
agent (governance/replay.py, docs/policy-changes.md), target ≤ 5 s on this machine.

One account ("replay") is seeded in SQL (``INSERT … SELECT generate_series``, as bench/dashboard.py does): one agent
with a recorded policy (version 1), a registered tool with a price, and 100,000 decisions over the last 7 days —
20 tools, every outcome (executed, allowed, blocked with five reasons, dedup, failed), args hashes that repeat (so
dedup bites), declared spends on a third of the calls and operator prices. Then, in this process (no web server, no
Celery transport), the preview of a draft that uses every kind of rule is timed:

- ``engine``: ``replay.replay(agent, draft, 30)`` — the COUNT, the rows streamed from the server-side cursor in
  chunks, the decisions; ``ROUNDS`` runs (the first one warms the caches), each timed;
- ``job``: ``replay.run_job`` — what the Celery task runs: the same, plus the job state in Redis (progress after every
  chunk, the result as JSON);
- the process's peak resident memory before and after (bounded: the rows are never all held).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

DECISIONS = 100_000
DAYS = 7
ROUNDS = 5
TARGET_S = 5.0
ACCOUNT = "replay"
AGENT = "replay-bench-agent"
TOOLS = [
    "search.web",
    "email.send",
    "crm.update",
    "crm.lookup",
    "stripe.charge",
    "stripe.refund",
    "slack.post",
    "github.issue",
    "calendar.book",
    "docs.fetch",
    "sql.query",
    "s3.put",
    "delete_record",
    "pdf.render",
    "translate.text",
    "sms.send",
    "jira.ticket",
    "hubspot.contact",
    "zendesk.reply",
    "weather.get",
]
RECORDED = {
    "blocked_tools": ["delete_*"],
    "max_actions_per_hour": 2_000,
    "max_spend_usd_per_day": 500.0,
    "pricing_rules": [{"tool": "crm.*", "price_usd": 0.002}],
    "require_approval": ["stripe.refund"],
}
DRAFT = {
    "allowed_tools": ["search.*", "email.*", "crm.*", "stripe.*", "slack.*", "docs.*", "sql.*", "s3.*", "*.get"],
    "blocked_tools": ["stripe.refund", "sql.*"],
    "max_actions_per_hour": 400,
    "max_calls_per_tool": {"email.send": 300, "slack.post": 500},
    "max_spend_usd_per_day": 20.0,
    "pricing_rules": [{"tool": "stripe.*", "price_usd": 0.05}, {"tool": "s3.put", "price_usd": 0.001}],
    "require_approval": [{"tool": "stripe.charge", "over_usd": 0.5}],
}
BLOCK_REASONS = [
    "tool_blocked",
    "approval_required",
    "hourly_action_limit_exceeded",
    "daily_spend_exceeded",
    "agent_disabled",
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def seed() -> dict[str, Any]:
    """The account, its agent (policy version 1), a registered tool and the decisions. Returns timings and ids."""
    from django.db import connection

    from bench.dashboard import _insert
    from billing.models import Plan
    from billing.services import account_get_or_create
    from governance import services as governance
    from governance.models import Agent, Tool
    from onceonly_site.identifiers import normalise_tool

    started = time.monotonic()
    Plan.objects.filter(code="agency").update(make_monthly_limit=10**12, ai_monthly_limit=10**12)
    account, _ = account_get_or_create(name=ACCOUNT, plan_code="agency")
    governance.policy_publish(account_id=account.pk, agent_id=AGENT, policy=RECORDED, source="api", actor="bench")
    agent = Agent.objects.get(account=account, agent_id=AGENT)
    Tool.objects.create(
        account=account,
        name="crm.update",
        name_key=normalise_tool("crm.update"),
        url="https://tools.example.com/crm.update",
        price_usd="0.004",
    )
    params = {
        "account": account.pk,
        "agent": agent.pk,
        "tools": TOOLS,
        "n_tools": len(TOOLS),
        "reasons": BLOCK_REASONS,
        "n": DECISIONS,
        "step_ms": DAYS * 86_400_000 / DECISIONS,
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.19)")
        source = """(
            SELECT g, ts, t, r,
                CASE WHEN r < 0.45 THEN 'executed' WHEN r < 0.70 THEN 'allowed' WHEN r < 0.80 THEN 'blocked'
                     WHEN r < 0.92 THEN 'dedup' ELSE 'failed' END AS outcome
            FROM (SELECT g, now() - interval '5 seconds' - g * (%(step_ms)s * interval '1 millisecond') AS ts,
                         floor(power(random(), 1.5) * %(n_tools)s)::int AS t, random() AS r
                  FROM generate_series(%(n)s, 1, -1) AS g) AS raw) AS s"""
        count = _insert(
            cursor,
            "governance_decision",
            {
                "account_id": "%(account)s",
                "agent_id": "%(agent)s",
                "ts": "ts",
                "tool": "(%(tools)s::text[])[1 + t]",
                "outcome": "outcome",
                "allowed": "outcome IN ('executed', 'allowed', 'dedup')",
                "policy_reason": """CASE outcome WHEN 'blocked' THEN (%(reasons)s::text[])[1 + g %% 5] WHEN 'dedup'
                THEN 'idempotency_key_hit' WHEN 'failed' THEN CASE WHEN g %% 10 = 0 THEN 'outcome_unknown' ELSE
                'tool_error' END ELSE 'within_budget' END""",
                "risk_level": "'low'",
                "spend_usd": """CASE WHEN outcome IN ('executed', 'allowed', 'failed')
                THEN round((0.001 + r * 0.02)::numeric, 6) ELSE 0 END""",
                "declared_spend_usd": "CASE WHEN g %% 3 = 0 THEN round((0.001 + r * 0.02)::numeric, 6) END",
                "operator_price_usd": """CASE WHEN outcome = 'blocked' AND g %% 5 IN (0, 4) THEN NULL
                ELSE round((t * 0.0005)::numeric, 6) END""",
                "args_hash": "md5((g %% 20000)::text) || md5((g %% 20000 + 7)::text)",
                "run_id": "''",
                "policy_version": "1",
                "latency_ms": "(r * 900)::int",
                "row_hash": "''",
            },
            source,
            params,
        )
    connection.close()
    return {"account_id": account.pk, "agent_pk": agent.pk, "decisions": count, "seed_s": time.monotonic() - started}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(rounds: int = ROUNDS) -> dict[str, Any]:
    from unittest import mock

    from governance import replay
    from governance.models import Agent

    log(f"replay: seeding {DECISIONS:,} decisions of one agent over {DAYS} days")
    seeded = seed()
    log(f"  seeded {seeded['decisions']:,} in {seeded['seed_s']:.1f} s")
    agent = Agent.objects.select_related("account__plan").get(pk=seeded["agent_pk"])
    rss_before = _maxrss_mb()
    engine: list[float] = []
    result = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = replay.replay(agent, DRAFT, 30)
        engine.append(time.perf_counter() - started)
    assert result is not None
    log(f"  engine: {', '.join(f'{s:.2f}' for s in engine)} s ({result.total:,} decisions)")
    job: list[float] = []
    for _ in range(rounds):
        with mock.patch("governance.tasks.replay_policy_impact.delay"):  # queued, run here: no Celery transport
            job_id = replay.replay_start(agent=agent, policy=DRAFT, days=30, label="bench")
        started = time.perf_counter()
        replay.run_job(agent.account_id, job_id)
        job.append(time.perf_counter() - started)
        state = replay.replay_job(agent.account_id, job_id)
        assert state is not None and state.state == "done", state
    log(f"  job (run_job, progress and result in Redis): {', '.join(f'{s:.2f}' for s in job)} s")
    summary = result.as_dict()
    return {
        "decisions": result.total,
        "days": DAYS,
        "rounds": rounds,
        "target_s": TARGET_S,
        "engine_s": [round(s, 3) for s in engine],
        "engine_median_s": round(statistics.median(engine), 3),
        "job_s": [round(s, 3) for s in job],
        "job_median_s": round(statistics.median(job), 3),
        "decisions_per_s": round(result.total / statistics.median(engine)),
        "maxrss_mb": {"before": round(rss_before, 1), "after": round(_maxrss_mb(), 1)},
        "blocked": summary["blocked"],
        "by_reason": summary["by_reason"],
        "newly_allowed": summary["newly_allowed"]["count"],
        "seed_s": round(seeded["seed_s"], 1),
    }


def report(measured: dict[str, Any]) -> list[str]:
    verdict = "OK" if measured["job_median_s"] <= TARGET_S else "MISS"
    return [
        f"replay (impact preview) of {measured['decisions']:,} decisions, target ≤ {TARGET_S:g} s, "
        f"median of {measured['rounds']} runs",
        f"  engine {measured['engine_median_s']:.2f} s ({measured['decisions_per_s']:,} decisions/s), "
        f"job with Redis progress {measured['job_median_s']:.2f} s  {verdict}",
        f"  peak RSS {measured['maxrss_mb']['before']:.0f} → {measured['maxrss_mb']['after']:.0f} MB; "
        f"{measured['blocked']:,} would be blocked, {measured['newly_allowed']:,} newly allowed",
    ]
