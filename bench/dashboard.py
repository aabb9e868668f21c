"""The `dashboard` scenario of `make bench`: the operator console at 1,000,000 decisions (docs/benchmarks.md).

One account ("dashboard") is seeded in SQL (``INSERT … SELECT generate_series``): 50 agents (three with
200-character ids, ten ungoverned, two disabled, some with caps they are over or near), 60 registered tools,
1,000,000 decisions over 30 days with their hourly rollups, 3,000 leases with their runs and attempts, 18,000 run
events, 5,000 audit entries and 100,000 lock records. Decisions' and audit entries' ``row_hash`` are placeholders
(empty): the hash chains are not verified here, only read. Then an owner, logged in with a session cookie, asks
for every table page and the overview through the same gunicorn stack as the API scenarios, each URL ``rounds``
times in sequence, and the server's own time of each answer is read from the ``Server-Timing`` header that
bench/settings.py adds (bench/timing.py: middleware, view, queries, template; not gunicorn or the socket). For each
page over the target at p95, the slowest SQL statement of one request is run again under
``EXPLAIN (ANALYZE, BUFFERS)`` and kept in the results.
"""

from __future__ import annotations

import re
import time
from typing import Any

DECISIONS = 1_000_000
DAYS = 30
AGENTS = 50
LEASES = 3_000
EVENTS_PER_RUN = 6
AUDIT_ENTRIES = 5_000
LOCKS = 100_000
ROUNDS = 30
WARMUP = 2
TARGET_MS = 150.0
ACCOUNT = "dashboard"
EMAIL = "dashboard@example.com"

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
FAILING_TOOL = "crm.update"  # fails 60 % of its calls in the last two hours: the Tools/overview flag
BLOCK_REASONS = [
    "tool_blocked",
    "tool_not_allowed",
    "hourly_action_limit_exceeded",
    "daily_spend_exceeded",
    "tool_call_limit_exceeded",
    "agent_disabled",
]


def _long_id(prefix: str) -> str:
    text = prefix
    n = 0
    while len(text) < 200:
        text += f"-segment{n:02d}"
        n += 1
    return text[:200]


def agent_ids() -> list[str]:
    named = [
        "billing-agent",
        "billing-reconciler",
        "support-agent",
        "support-triage",
        "sales-outreach",
        "research-bot",
        "crm-sync",
        "invoice-bot",
        "data-pipeline",
        "ops-oncall",
    ]
    teams = ["growth", "finance", "support", "platform", "marketing", "legal", "hr", "security"]
    roles = ["assistant", "scheduler", "writer", "scraper", "router"]
    generated = [f"{teams[i % len(teams)]}-{roles[i % len(roles)]}-{i:02d}" for i in range(AGENTS - len(named) - 3)]
    long = [
        _long_id("billing-escalations/eu-west/tenant-0042"),
        _long_id("customer-success-orchestrator"),
        _long_id("x" * 40),
    ]
    return named + generated + long


def _columns_sql(cursor, table: str, known: dict[str, str]) -> tuple[str, str]:
    """Column list and SELECT expressions for ``known`` plus a typed filler for any NOT NULL column without a
    database default this seed does not know (a column another change added since), so the seed keeps working."""
    cursor.execute(
        """SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s
           AND is_nullable = 'NO' AND column_default IS NULL""",
        [table],
    )
    filler = {"jsonb": "'{}'::jsonb", "boolean": "false", "text": "''", "character varying": "''"}
    columns = dict(known)
    for name, kind in cursor.fetchall():
        if name not in columns and name != "id":
            columns[name] = filler.get(kind, "0")
    return ", ".join(columns), ", ".join(columns.values())


def _insert(cursor, table: str, known: dict[str, str], source: str, params: dict[str, Any]) -> int:
    names, values = _columns_sql(cursor, table, known)
    cursor.execute(f"INSERT INTO {table} ({names}) SELECT {values} FROM {source}", params)  # noqa: S608
    return cursor.rowcount


def seed() -> dict[str, Any]:
    """The dashboard account, its operator and its data. Returns timings, counts and the ids the URLs need."""
    from django.db import connection

    from billing.models import Account, Plan
    from billing.services import account_get_or_create, operator_create
    from governance import services as governance
    from governance.models import Agent, Tool
    from onceonly_site.identifiers import normalise_tool

    started = time.monotonic()
    timings: dict[str, float] = {}
    Plan.objects.filter(code="agency").update(make_monthly_limit=10**12, ai_monthly_limit=10**12)
    account, _ = account_get_or_create(name=ACCOUNT, plan_code="agency")
    operator_create(account=account, email=EMAIL, password="dashboard-password-0123", role="owner")
    ids = agent_ids()
    for i, agent_id in enumerate(ids):
        if i % 5 == 4:  # ten ungoverned agents (no policy)
            governance.agent_get_or_create(account_id=account.pk, agent_id=agent_id)
            continue
        cap = 1.0 if i % 10 == 3 else 4.0 if i % 10 == 8 else 500.0  # over / near / well below the daily cap
        governance.policy_upsert(
            account_id=account.pk,
            agent_id=agent_id,
            actor="alice@example.com",
            changes={
                "max_actions_per_hour": 40 if i % 10 == 1 else 100_000,
                "max_spend_usd_per_day": cap,
                "blocked_tools": ["delete_*"],
            },
        )
    for agent_id in (ids[6], ids[11]):
        governance.agent_set_enabled(
            account_id=account.pk,
            agent_id=agent_id,
            enabled=False,
            reason="runaway loop on crm.update",
            actor="bob@example.com",
        )
    tools = []
    long_tool = _long_id("integrations.salesforce.opportunity.update")
    for name in [*TOOLS, long_tool]:
        tools.append(
            Tool(
                account=account,
                scope_id="global",
                name=name,
                name_key=normalise_tool(name),
                url=f"https://tools.example.com/{name[:60]}",
                timeout_ms=5000,
                max_retries=1,
                risk_level="high" if name.startswith(("stripe", "delete")) else "low",
                price_usd="0.002",
                last_status=500 if name == FAILING_TOOL else 200,
                last_latency_ms=120,
            )
        )
    for n, agent_id in enumerate(ids[:39]):
        name = TOOLS[n % len(TOOLS)]
        tools.append(
            Tool(
                account=account,
                scope_id=f"agent:{agent_id}",
                name=name,
                name_key=normalise_tool(name),
                url=f"https://agents.example.com/{n}/{name}",
                timeout_ms=5000,
                max_retries=1,
                enabled=n % 7 != 0,
            )
        )
    Tool.objects.bulk_create(tools)
    timings["setup_s"] = round(time.monotonic() - started, 1)

    agents = list(Agent.objects.filter(account=account).order_by("id").values_list("pk", flat=True))
    params = {
        "account": account.pk,
        "agents": agents,
        "n_agents": len(agents),
        "tools": TOOLS,
        "n_tools": len(TOOLS),
        "reasons": BLOCK_REASONS,
        "n": DECISIONS,
        "failing": FAILING_TOOL,
        "step_ms": DAYS * 86_400_000 / DECISIONS,
        "leases": LEASES,
        "events": EVENTS_PER_RUN,
        "audit": AUDIT_ENTRIES,
        "locks": LOCKS,
        "names": ids,
    }
    counts: dict[str, int] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.19)")
        started = time.monotonic()
        # ids grow with time (generate_series counts down from the oldest); agents skewed (a few busy ones), each
        # calling five neighbouring tools of TOOLS.
        source = """(
            SELECT g, ts, a, t, r,
                CASE WHEN (%(tools)s::text[])[1 + t] = %(failing)s AND ts > now() - interval '2 hours' AND r < 0.6
                     THEN 'failed'
                     WHEN r < 0.70 THEN 'executed' WHEN r < 0.80 THEN 'allowed' WHEN r < 0.88 THEN 'blocked'
                     WHEN r < 0.95 THEN 'dedup' ELSE 'failed' END AS outcome
            FROM (SELECT g, ts, a, (a * 3 + floor(random() * 5)::int) %% %(n_tools)s AS t, random() AS r
                  FROM (SELECT g, now() - interval '5 seconds' - g * (%(step_ms)s * interval '1 millisecond') AS ts,
                               floor(power(random(), 2) * %(n_agents)s)::int AS a
                        FROM generate_series(%(n)s, 1, -1) AS g) AS raw) AS picked) AS s"""
        counts["decisions"] = _insert(
            cursor,
            "governance_decision",
            {
                "account_id": "%(account)s",
                "agent_id": "(%(agents)s::bigint[])[1 + a]",
                "ts": "ts",
                "tool": "(%(tools)s::text[])[1 + t]",
                "outcome": "outcome",
                "allowed": "outcome IN ('executed', 'allowed', 'dedup')",
                "policy_reason": """CASE outcome WHEN 'blocked' THEN (%(reasons)s::text[])[1 + g %% 6] WHEN 'dedup' THEN
                'idempotency_key_hit' WHEN 'failed' THEN 'tool_error' ELSE 'within_budget' END""",
                "risk_level": "CASE WHEN t IN (4, 5, 12) THEN 'high' WHEN t %% 3 = 0 THEN 'medium' ELSE 'low' END",
                "spend_usd": """CASE WHEN outcome IN ('executed', 'allowed', 'failed')
                THEN round((0.001 + r * 0.02)::numeric, 6) ELSE 0 END""",
                "declared_spend_usd": "CASE WHEN g %% 3 = 0 THEN round((0.001 + r * 0.02)::numeric, 6) END",
                "args_hash": "md5(g::text) || md5((g + 7)::text)",
                "run_id": "CASE WHEN g %% 5 = 0 THEN 'run-' || (g %% %(leases)s) ELSE '' END",
                "policy_version": "1",
                "latency_ms": "(r * 900)::int",
                "http_status": "CASE outcome WHEN 'executed' THEN 200 WHEN 'failed' THEN 502 END",
                "dispatch_id": """CASE WHEN outcome IN ('executed', 'failed') THEN 'msg_' || left(md5(g::text), 24)
                ELSE '' END""",
                "row_hash": "''",
            },
            source,
            params,
        )
        cursor.execute(
            """
            INSERT INTO governance_decisionrollup (account_id, agent_id, hour, tool, outcome, count, spend_usd)
            SELECT account_id, agent_id, date_trunc('hour', ts), tool, outcome, count(*), sum(spend_usd)
            FROM governance_decision WHERE account_id = %(account)s GROUP BY 1, 2, 3, 4, 5""",
            params,
        )
        counts["rollups"] = cursor.rowcount
        timings["decisions_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        lease_source = """(SELECT g, now() - (g * interval '14 minutes') AS t0,
                (%(names)s::text[])[1 + (g * 7) %% %(n_agents)s] AS agent,
                CASE WHEN g <= 30 THEN 'in_progress' WHEN g %% 10 = 0 THEN 'failed' ELSE 'completed' END AS st
            FROM generate_series(%(leases)s, 1, -1) AS g) AS s"""
        counts["leases"] = _insert(
            cursor,
            "idempotency_lease",
            {
                "account_id": "%(account)s",
                "key": "'job:' || agent || ':' || g",
                "status": "st",
                "lease_id": "'lease_' || md5(g::text)",
                "version": "1",
                "ttl_seconds": "300",
                "first_seen_at": "t0",
                "acquired_at": "t0",
                "expires_at": "t0 + interval '5 minutes'",
                "done_at": "CASE WHEN st <> 'in_progress' THEN t0 + interval '40 seconds' END",
                "result": "CASE WHEN st = 'completed' THEN jsonb_build_object('ok', true, 'rows', g) END",
                "result_hash": "''",
                "error_code": "CASE WHEN st = 'failed' THEN 'tool_error' ELSE '' END",
                "error_hash": "''",
                "metadata": "jsonb_build_object('run_id', 'run-' || g, 'agent_id', agent, 'n', g)",
                "updated_at": "t0 + interval '40 seconds'",
            },
            lease_source,
            params,
        )
        lease_rows = """(SELECT l.*, l.metadata ->> 'agent_id' AS agent, (l.metadata ->> 'n')::int AS g
            FROM idempotency_lease l WHERE l.account_id = %(account)s) AS l"""
        counts["attempts"] = _insert(
            cursor,
            "idempotency_leaseattempt",
            {
                "lease_id": "l.id",
                "version": "1",
                "holder": "l.lease_id",
                "acquired_at": "l.acquired_at",
                "ended_at": "l.done_at",
                "outcome": "l.status",
                "error_code": "l.error_code",
                "note": "''",
            },
            lease_rows,
            params,
        )
        counts["runs"] = _insert(
            cursor,
            "idempotency_run",
            {
                "account_id": "%(account)s",
                "lease_id": "l.id",
                "key": "l.key",
                "lease_version": "1",
                "holder": "l.lease_id",
                "run_id": "'run-' || l.g",
                "agent_id": "l.agent",
                "task": "(ARRAY['sync-invoices', 'triage-ticket', 'enrich-lead', 'nightly-report'])[1 + l.g %% 4]",
                "actions": "jsonb_build_array(jsonb_build_object('tool', 'crm.update', 'args', "
                "jsonb_build_object('n', l.g)))",
                "dry_run": "false",
                "status": "CASE l.status WHEN 'in_progress' THEN 'running' ELSE l.status END",
                "fence": "1",
                "claimed_by": "'worker@bench'",
                "claimed_until": "l.expires_at",
                "result": "l.result",
                "error_code": "l.error_code",
                "error_message": "CASE WHEN l.status = 'failed' THEN 'crm.update answered 502 after 2 attempts' "
                "ELSE '' END",
                "created_at": "l.first_seen_at",
                "enqueued_at": "l.first_seen_at",
                "started_at": "l.first_seen_at + interval '1 second'",
                "finished_at": "l.done_at",
                "deadline_at": "l.first_seen_at + interval '10 minutes'",
            },
            lease_rows,
            params,
        )
        counts["run_events"] = _insert(
            cursor,
            "idempotency_runevent",
            {
                "account_id": "%(account)s",
                "run_id": "'run-' || l.g",
                "ts": "l.first_seen_at + e * interval '5 seconds'",
                "type": "(ARRAY['run.started', 'step', 'tool.call', 'tool.call', 'step', 'run.finished'])[1 + e]",
                "status": "CASE WHEN e = 5 THEN l.status ELSE 'ok' END",
                "step": "'step ' || e",
                "tool": "CASE WHEN e IN (2, 3) THEN 'crm.update' ELSE '' END",
                "message": "'seeded event ' || e",
                "duration_ms": "e * 120",
                "req_id": "''",
                "lease_id": "l.lease_id",
                "agent_id": "l.agent",
                "data": "NULL",
                "extra": "NULL",
                "decision_id": "NULL",
                "source": "'client'",
            },
            lease_rows + " CROSS JOIN generate_series(0, %(events)s - 1) AS e",
            params,
        )
        audit_source = """(SELECT g, now() - g * interval '518 seconds' AS t,
                (ARRAY['governance.policy.updated', 'governance.agent.disabled', 'governance.agent.enabled',
                       'governance.tool.saved', 'governance.tool.toggled', 'billing.api_key.created',
                       'idempotency.lock.released', 'idempotency.lease.reset', 'governance.tool.test_call'])[1 + g %% 9]
                    AS action,
                (ARRAY['alice@example.com', 'bob@example.com', 'ops-bot', 'carol@example.com'])[1 + g %% 4] AS actor,
                (%(names)s::text[])[1 + g %% %(n_agents)s] AS agent
            FROM generate_series(%(audit)s, 1, -1) AS g) AS s"""
        counts["audit_entries"] = _insert(
            cursor,
            "billing_auditentry",
            {
                "account_id": "%(account)s",
                "actor_id": "NULL",
                "actor_label": "actor",
                "action": "action",
                "object_type": "split_part(action, '.', 2)",
                "object_id": "agent",
                "data": """CASE WHEN action = 'governance.policy.updated'
                THEN jsonb_build_object('version', g, 'source', 'editor',
                    'before', jsonb_build_object('max_spend_usd_per_day', 10,
                        'blocked_tools', jsonb_build_array('delete_*')),
                    'after', jsonb_build_object('max_spend_usd_per_day', 20 + g %% 5,
                        'blocked_tools', jsonb_build_array('delete_*', 'stripe.refund')))
                ELSE jsonb_build_object('reason', 'seeded entry ' || g) END""",
                "created_at": "t",
                "prev_hash": "''",
                "row_hash": "''",
            },
            audit_source,
            params,
        )
        counts["locks"] = _insert(
            cursor,
            "idempotency_lockrecord",
            {
                "account_id": "%(account)s",
                "key": "'order:' || g || ':charge'",
                "first_seen_at": "now() - g * interval '25 seconds'",
                "expires_at": "now() - g * interval '25 seconds' + interval '1 day'",
                "ttl_seconds": "86400",
                "metadata": "CASE WHEN g %% 4 = 0 THEN jsonb_build_object('source', 'make', 'scenario', g %% 97) END",
            },
            "generate_series(1, %(locks)s) AS g",
            params,
        )
        timings["other_tables_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        # What tables that grew over months look like: vacuumed and analysed, their pages flushed.
        cursor.execute(
            "VACUUM (ANALYZE) governance_decision, governance_decisionrollup, governance_agent, governance_tool, "
            "idempotency_lease, idempotency_leaseattempt, idempotency_run, idempotency_runevent, "
            "idempotency_lockrecord, billing_auditentry"
        )
        cursor.execute("CHECKPOINT")
        timings["vacuum_s"] = round(time.monotonic() - started, 1)
    connection.close()
    return {"timings": timings, "counts": counts, **context(Account.objects.get(name=ACCOUNT).pk)}


def context(account_id: int) -> dict[str, Any]:
    """The ids the URLs name: an agent's row, a decision in the middle of the log (an older keyset page)."""
    from django.db import connection

    from governance.models import Agent, Decision

    decisions = Decision.objects.filter(account_id=account_id)
    newest = decisions.order_by("-id").values_list("pk", flat=True).first()
    oldest = decisions.order_by("id").values_list("pk", flat=True).first()
    agent = Agent.objects.get(account_id=account_id, agent_id="billing-agent")
    blocked = decisions.filter(agent=agent, outcome="blocked").order_by("-id").values_list("pk", flat=True).first()
    connection.close()
    return {
        "account_id": account_id,
        "agent_pk": agent.pk,
        "newest_decision": newest,
        "middle_decision": (newest + oldest) // 2,
        "blocked_decision": blocked,
    }


def existing() -> dict[str, Any] | None:
    """The seeded account's context when a kept database already holds it (``--reuse-db``)."""
    from billing.models import Account
    from governance.models import Decision

    account = Account.objects.filter(name=ACCOUNT).first()
    if account is None or not Decision.objects.filter(account=account).exists():
        return None
    return {"timings": {}, "counts": {}, "reused": True, **context(account.pk)}


def pages(ctx: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, URL) of every page measured: each table's default view, a search, a contains facet, the other facets,
    a sort and a deep or older page; the overview at each range; an agent and a decision page."""
    agent, middle, blocked = ctx["agent_pk"], ctx["middle_decision"], ctx["blocked_decision"]
    return [
        ("overview", "/"),
        ("overview range=1h", "/?range=1h"),
        ("overview range=24h", "/?range=24h"),
        ("overview range=7d", "/?range=7d"),
        ("overview range=30d", "/?range=30d"),
        ("agents", "/agents/"),
        ("agents q=billing", "/agents/?q=billing"),
        ("agents sort=-spend", "/agents/?sort=-spend"),  # spend today, counted per agent in the page's query
        ("agents sort=-actions", "/agents/?sort=-actions"),
        ("agents state=over", "/agents/?state=over"),
        ("agents state=near", "/agents/?state=near"),
        ("agents page=2", "/agents/?page=2"),
        ("agent detail", f"/agents/{agent}/"),
        ("decisions", "/decisions/"),
        ("decisions q=crm", "/decisions/?q=crm"),
        ("decisions agent=billing", "/decisions/?agent=billing"),
        ("decisions outcome=blocked", "/decisions/?outcome=blocked"),
        ("decisions reason=daily_spend", "/decisions/?reason=daily_spend_exceeded"),
        ("decisions tool+outcome", "/decisions/?tool=crm.update&outcome=failed"),
        ("decisions sort=time", "/decisions/?sort=time"),  # oldest first: the only other order it has (time only)
        ("decisions before=<middle>", f"/decisions/?before={middle}"),
        ("decisions agent=billing older", f"/decisions/?agent=billing&before={middle}"),
        ("decision detail", f"/decisions/{blocked}/"),
        ("runs", "/runs/"),
        ("runs q=run-12", "/runs/?q=run-12"),
        ("runs agent=billing", "/runs/?agent=billing"),
        ("runs state=failed", "/runs/?state=failed&status=failed"),
        ("runs sort=-created", "/runs/?sort=-created"),
        ("runs page=100", "/runs/?page=100"),
        ("audit", "/audit/"),
        ("audit q=policy", "/audit/?q=policy"),
        ("audit action+actor", "/audit/?action=governance.policy.updated&actor=alice"),
        ("audit page=150", "/audit/?page=150"),
        ("tools", "/tools/"),
        ("tools q=crm", "/tools/?q=crm"),
        ("tools sort=name", "/tools/?sort=name"),
        ("tools page=3", "/tools/?page=3"),
        ("locks", "/locks/"),
        ("locks tab=locks", "/locks/?tab=locks"),
        ("locks q=order:12", "/locks/?tab=locks&q=order:12"),
        ("locks page=2000", "/locks/?tab=locks&page=2000"),
        ("locks tab=finished", "/locks/?tab=finished"),
    ]


def session_cookie() -> str:
    """A logged-in owner's session (saved in the database the stack reads), as a Cookie header value."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=EMAIL))
    connection.close()
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


TIMING = re.compile(r"(\w+);dur=([0-9.]+)(?:;desc=\"(\d+) queries\")?")


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))], 1)


def measure(base_url: str, cookie: str, urls: list[tuple[str, str]], rounds: int) -> dict[str, dict[str, Any]]:
    """Each URL ``rounds`` times in sequence (after WARMUP unmeasured requests): server time from Server-Timing,
    client time on loopback, query counts, status codes."""
    import httpx

    out = {}
    with httpx.Client(base_url=base_url, headers={"Cookie": cookie}, timeout=60.0, follow_redirects=False) as http:
        for name, url in urls:
            for _ in range(WARMUP):
                http.get(url)
            server, db, client, queries, statuses, size = [], [], [], set(), {}, 0
            for _ in range(rounds):
                started = time.perf_counter()
                try:
                    response = http.get(url)
                except httpx.HTTPError as error:  # a worker killed by its timeout: counted, not fatal
                    statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
                    continue
                client.append((time.perf_counter() - started) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                size = len(response.content)
                if response.status_code in (301, 302) and "/login" in response.headers.get("location", ""):
                    raise SystemExit(f"{url}: redirected to the login page (the session cookie was not accepted)")
                for metric, duration, count in TIMING.findall(response.headers.get("server-timing", "")):
                    if metric == "app":
                        server.append(float(duration))
                    elif metric == "db":
                        db.append(float(duration))
                        queries.add(int(count))
            row = {
                "url": url,
                "status": statuses,
                "bytes": size,
                "client_p50_ms": _pct(client, 50),
                "client_p95_ms": _pct(client, 95),
            }
            if server:
                row.update(
                    p50_ms=_pct(server, 50),
                    p95_ms=_pct(server, 95),
                    max_ms=round(max(server), 1),
                    db_p50_ms=_pct(db, 50),
                    queries=sorted(queries),
                )
            out[name] = row
            _log_row(name, row)
    return out


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _log_row(name: str, row: dict[str, Any]) -> None:
    status = ",".join(f"{code}×{n}" for code, n in row["status"].items())
    log(
        f"  {name:34} p50 {row.get('p50_ms', 0):7.1f} p95 {row.get('p95_ms', 0):7.1f} ms (db p50 "
        f"{row.get('db_p50_ms', 0):6.1f}, queries {row.get('queries')}, client p95 {row['client_p95_ms']:.1f}) "
        f"[{status}]"
    )


def explain_slowest(cookie: str, urls: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """For each URL: one request in-process, every SQL statement timed; the slowest one again under EXPLAIN
    (ANALYZE, BUFFERS). The statements of the three slowest are kept too."""
    from django.db import connection
    from django.test import Client

    client = Client(raise_request_exception=False)
    client.cookies.load(cookie)
    out: dict[str, dict[str, Any]] = {}
    for name, url in urls:
        try:
            out[name] = _explain_one(client, url)
        except Exception as error:  # a page being rebuilt must not lose the other results
            out[name] = {"url": url, "error": repr(error)}
    connection.close()
    return out


def _explain_one(client, url: str) -> dict[str, Any]:
    from django.db import connection

    statements: list[tuple[float, str, Any]] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(((time.perf_counter() - started) * 1000, sql, params))

    client.get(url)  # warm
    with connection.execute_wrapper(timed):
        status = client.get(url).status_code
    statements.sort(key=lambda item: -item[0])
    _, sql, params = statements[0]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plan = [line for (line,) in cursor.fetchall()]
    return {
        "url": url,
        "status": status,
        "statements": len(statements),
        "sql_ms": round(sum(s[0] for s in statements), 1),
        "slowest": [{"ms": round(s[0], 1), "sql": s[1][:4000]} for s in statements[:3]],
        "explain": plan,
    }


def run(base_url: str, *, rounds: int = ROUNDS, reuse: bool = False) -> dict[str, Any]:
    data = existing() if reuse else None
    if data is None:
        log(f"dashboard: seeding {DECISIONS:,} decisions over {DAYS} days for {AGENTS} agents, and the other tables")
        data = seed()
        log(f"  seeded in {sum(data['timings'].values()):.0f} s: {data['timings']}, {data['counts']}")
    else:
        log("dashboard: reusing the seeded account of the kept database")
    urls = pages(data)
    cookie = session_cookie()
    log(f"dashboard: {len(urls)} URLs × {rounds} sequential requests (server time from Server-Timing)")
    started = time.monotonic()
    results = measure(base_url, cookie, urls, rounds)
    slow = [(name, row["url"]) for name, row in results.items() if row.get("p95_ms", 0) > TARGET_MS]
    explains = explain_slowest(cookie, slow) if slow else {}
    for name, found in explains.items():
        log(f"  slowest statement of {name} ({found['slowest'][0]['ms']} ms):\n    " + "\n    ".join(found["explain"]))
    return {
        "seed": {k: v for k, v in data.items() if k in ("timings", "counts", "reused")},
        "sizes": {
            "decisions": DECISIONS,
            "days": DAYS,
            "agents": AGENTS,
            "leases_runs": LEASES,
            "run_events": LEASES * EVENTS_PER_RUN,
            "audit_entries": AUDIT_ENTRIES,
            "locks": LOCKS,
        },
        "rounds": rounds,
        "target_ms": TARGET_MS,
        "pages": results,
        "explain": explains,
        "measure_s": round(time.monotonic() - started, 1),
    }


def report(dashboard: dict[str, Any]) -> list[str]:
    lines = [
        f"dashboard at {DECISIONS:,} decisions: server time (Server-Timing) of {dashboard['rounds']} "
        f"sequential requests per page, target p95 ≤ {TARGET_MS:g} ms",
        f"  {'page':34} {'p50':>7} {'p95':>7} {'max':>7} {'db p50':>7} {'queries':>9} {'status':>10}",
    ]
    for name, row in dashboard["pages"].items():
        status = ",".join(f"{code}" for code in row["status"])
        queries = "/".join(str(q) for q in row.get("queries", []))
        verdict = "OK" if row.get("p95_ms", 0) <= TARGET_MS and set(row["status"]) == {200} else "MISS"
        lines.append(
            f"  {name:34} {row.get('p50_ms', 0):7.1f} {row.get('p95_ms', 0):7.1f} {row.get('max_ms', 0):7.1f} "
            f"{row.get('db_p50_ms', 0):7.1f} {queries:>9} {status:>10}  {verdict}"
        )
    return lines
