"""Writes of governance: agents (kill switch), policies (versions, templates) and the governed call
(docs/architecture.md §4)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import redis
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, Sum
from django.db.models.expressions import Col
from django.utils import timezone

from billing import usage
from billing.auth import PlanLimits
from billing.models import Account
from billing.notifications import notify
from billing.ratelimit import TAKE_TOKEN_LUA, RateLimited, take_bucket
from billing.services import audit_record
from governance import alerts, approvals, detectors, dispatch, display, ledger, policies, slots, sql, telemetry
from governance.choices import CHARGED_OUTCOMES, Outcome, Reason
from governance.models import Agent, Decision, DecisionRollup, DispatchIntent, PolicyVersion, Tool
from idempotency import events as run_events
from idempotency.models import RunEvent
from idempotency.services import canonical_json
from onceonly_site.identifiers import normalise_tool
from onceonly_site.redis_client import LuaScript, get_redis

GOVERNED_CALL_LUA = Path(__file__).with_name("governed_call.lua")
SHADOW_CALL_LUA = Path(__file__).with_name("shadow_call.lua")
SHADOW_DECIDE_LUA = Path(__file__).with_name("shadow_decide.lua")
logger = logging.getLogger(__name__)
REBUILD_LUA = Path(__file__).with_name("rebuild_counters.lua")
REPLICATION_ID_LUA = Path(__file__).with_name("replication_id.lua")  # the ready marker's stamp
MICRO = Decimal(1_000_000)
SIX_PLACES = Decimal("0.000001")  # amounts are kept to 6 decimal places (micro-dollars in Redis)
DAY_COUNTER_SECONDS = 2 * 86400
# A dedup entry's original is looked up from the entry's window back, and this much more (clocks, a plan whose dedup
# window was shortened since the entry was written).
DEDUP_LOOKUP_MARGIN = timedelta(days=1)
READY_SECONDS = 86400
# A call's decision, recorded later, is looked up from this long before the call started (or the twin arrived):
# bounded in time like every read of the decision log, with room for clocks of several nodes that disagree.
RECORDED_AFTER_MARGIN = timedelta(minutes=5)


# --- agents ----------------------------------------------------------------------------------------------------


def agent_get_or_create(*, account_id: int, agent_id: str) -> Agent:
    """The agent, registered on first sight (any id). One query when it exists."""
    agent = Agent.objects.select_related("account").filter(account_id=account_id, agent_id=agent_id).first()
    if agent is not None:
        return agent
    try:
        with transaction.atomic():
            Agent.objects.create(account_id=account_id, agent_id=agent_id)
    except IntegrityError:
        pass  # registered concurrently by another call
    return Agent.objects.select_related("account").get(account_id=account_id, agent_id=agent_id)


_AGENT_ATTNAMES = tuple(f.attname for f in sql.AGENT_FIELDS)  # every field: Agent.from_db reads the row as it is


@cache
def _agent_for_call_converters(vendor: str) -> list[tuple[Col, list[Callable[..., Any]]]]:
    """Each column's field and database converters for the row of ``sql.AGENT_FOR_CALL``, built once per process.

    The ORM took about half of a governed call's Python time compiling that query (select_related, an annotated
    subquery) on every call (docs/benchmarks.md); the statement is always the same, so it is written out once
    (governance/sql.py) and its row turned into model instances here.
    """
    converters = []
    for table, model_field in [("a", f) for f in sql.AGENT_FIELDS] + [("c", f) for f in sql.ACCOUNT_FIELDS]:
        column = model_field.get_col(table)
        converters.append(
            (column, connection.ops.get_db_converters(column) + model_field.get_db_converters(connection))
        )
    return converters


def _agent_for_call(account_id: int, agent_id: str, tool: str) -> tuple[Agent, Tool | None]:
    """The calling agent (registered on first sight) with the account fields a call reads, and the registered
    tool it would use — found by the normalised form of ``tool``, its agent scope first, then global: one query
    when the tool is not registered, two when it is (docs/architecture.md §4.2, §4.4)."""
    converters = _agent_for_call_converters(connection.vendor)
    params: list[str | int] = [normalise_tool(tool), f"agent:{agent_id}", tool, account_id, agent_id]
    with connection.cursor() as cursor:
        cursor.execute(sql.AGENT_FOR_CALL, params)
        row = cursor.fetchone()
        if row is None:
            agent_get_or_create(account_id=account_id, agent_id=agent_id)
            cursor.execute(sql.AGENT_FOR_CALL, params)
            row = cursor.fetchone()
    values = []
    for (column, field_converters), value in zip(converters, row, strict=False):
        for convert in field_converters:
            value = convert(value, column, connection)
        values.append(value)
    split = len(sql.AGENT_FIELDS)
    agent = Agent.from_db(connection.alias, _AGENT_ATTNAMES, values[:split])
    account = Account.from_db(connection.alias, list(sql.CALL_ACCOUNT_FIELDS), values[split:])
    Agent.account.field.set_cached_value(agent, account)
    registered_pk = row[-1]
    return agent, Tool.objects.select_related("mcp_server").filter(pk=registered_pk).first() if registered_pk else None


class AgentContained(Exception):
    """Enabling an agent a detector contained is its release (detectors.release), not the kill switch's toggle."""


def agent_set_enabled(
    *, account_id: int, agent_id: str, enabled: bool, reason: str, actor: str, release: bool = False
) -> Agent:
    """The kill switch. Takes effect on the very next governed call in every process (calls read the agent row),
    and on dispatches in flight: each attempt re-reads the row right before its request is written, and a disable
    commits (and answers) only after the requests already past that check have been written (dispatch.KillSwitch)."""
    agent = agent_get_or_create(account_id=account_id, agent_id=agent_id)
    now = timezone.now()
    with transaction.atomic():
        # Decided on the locked row: a contained agent (disabled by a detector) stays contained until released —
        # disabling it again changes nothing (so its detector's reason and release stay), and enabling it is the
        # release's alone (``release``), or an agent's key could disable and re-enable itself out of containment.
        agent = Agent.objects.select_for_update().select_related("account").get(pk=agent.pk)
        if not agent.is_enabled and agent.disabled_by == detectors.AUTO:
            if not enabled:
                return agent
            if not release:
                raise AgentContained(agent_id)
        if not enabled:
            dispatch.KillSwitch.wait_for_requests_being_written(agent.pk)
        before = {"is_enabled": agent.is_enabled, "disabled_reason": agent.disabled_reason}
        agent.is_enabled = enabled
        agent.disabled_reason = "" if enabled else reason
        agent.disabled_at = None if enabled else now
        agent.disabled_by = "" if enabled else actor
        agent.save(update_fields=["is_enabled", "disabled_reason", "disabled_at", "disabled_by"])
        audit_record(
            account=agent.account,
            actor_label=actor,
            action="governance.agent.enabled" if enabled else "governance.agent.disabled",
            object_type="agent",
            object_id=agent_id,
            data={"reason": reason, "before": before, "after": {"is_enabled": enabled}},
        )
    return agent


# --- policies --------------------------------------------------------------------------------------------------


@dataclass
class PolicyOutcome:
    agent: Agent
    version: int | None
    warnings: list[dict[str, str]] = field(default_factory=list)


def known_tools(account_id: int) -> set[str]:
    """Registered tools, and tools this account's agents have called (from the small hourly rollups)."""
    called = set(DecisionRollup.objects.filter(account_id=account_id).values_list("tool", flat=True).distinct())
    return called | set(Tool.objects.filter(account_id=account_id).values_list("name", flat=True))


def _warnings(account_id: int, policy: dict[str, Any]) -> list[dict[str, str]]:
    known = {normalise_tool(name) for name in known_tools(account_id)}  # `SEND_EMAIL` names `send_email`
    unknown = sorted(name for name in policies.named_tools(policy) if normalise_tool(name) not in known)
    return [
        {
            "code": "unknown_tool",
            "tool": name,
            "message": f"{name!r} is not a registered tool and no agent of this account has called it yet.",
        }
        for name in unknown
    ] + unpriced_thresholds(account_id, policy)


def unpriced_thresholds(account_id: int, policy: dict[str, Any]) -> list[dict[str, str]]:
    """A require_approval entry with ``over_usd`` compares a call's cost, the larger of the agent's declared
    spend_usd and the operator's price: for a known tool it covers that has no price (no pricing rule, no registry
    price), the agent alone decides whether its call crosses the threshold (docs/approvals.md §"The policy").
    One warning per such entry, naming the tools (one query, only for a policy with such an entry)."""
    entries = [(pattern, over) for pattern, over in policies.approval_entries(policy) if over is not None]
    if not entries:
        return []
    priced = {
        normalise_tool(name): price
        for name, price in Tool.objects.filter(account_id=account_id).values_list("name", "price_usd")
    }
    names = {normalise_tool(name): name for name in known_tools(account_id)}
    found = []
    for pattern, over in entries:
        unpriced = sorted(
            name
            for key, name in names.items()
            if policies.matches(name, [pattern])
            and policies.operator_price(policy, name) is None
            and priced.get(key) is None
        )
        if unpriced:
            shown = ", ".join(unpriced[:5]) + (f" and {len(unpriced) - 5} more" if len(unpriced) > 5 else "")
            found.append(
                {
                    "code": "unpriced_threshold",
                    "tool": pattern,
                    "message": f"require_approval {pattern!r} over ${over:,.2f}: {shown} "
                    f"{'has' if len(unpriced) == 1 else 'have'} no price (no pricing rule, no registry price), so "
                    "the agent's own spend_usd decides whether a call crosses the threshold: give "
                    f"{'it' if len(unpriced) == 1 else 'them'} a price.",
                }
            )
    return found


class StalePolicyEdit(Exception):
    """The editor started from a version that is no longer current: refuse rather than overwrite silently."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"the policy changed meanwhile (now version {current})")
        self.current = current


_ANY = object()


def policy_publish(
    *,
    account_id: int,
    agent_id: str,
    policy: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    source: str,
    actor: str,
    expected_version: Any = _ANY,
) -> PolicyOutcome:
    """Make ``policy`` the agent's current policy as a new immutable version (unless nothing changed). Audited.

    With ``changes`` instead of ``policy``, the new policy is ``changes`` merged into the policy current *under the
    agent row's lock* (``policies.merge``), so concurrent merges of different fields all take effect.
    ``expected_version`` is the editor's optimistic concurrency: when given, the current version must still be it.
    """
    agent = agent_get_or_create(account_id=account_id, agent_id=agent_id)
    with transaction.atomic():
        agent = Agent.objects.select_for_update().select_related("account").get(pk=agent.pk)
        if expected_version is not _ANY and agent.policy_version != expected_version:
            raise StalePolicyEdit(agent.policy_version)
        if changes is not None:
            policy = policies.merge(agent.policy, changes)
        elif policy is None:
            raise TypeError("policy_publish takes a policy or changes")
        if agent.policy == policy and agent.policy_version is not None:
            return PolicyOutcome(agent=agent, version=agent.policy_version, warnings=_warnings(account_id, policy))
        before = agent.policy
        version = (agent.policy_version or 0) + 1
        PolicyVersion.objects.create(agent=agent, version=version, policy=policy, source=source, created_by=actor)
        agent.policy, agent.policy_version = policy, version
        agent.save(update_fields=["policy", "policy_version"])
        approvals.supersede(agent)  # an approval binds the policy version it was asked under (docs/approvals.md)
        audit_record(
            account=agent.account,
            actor_label=actor,
            action="governance.policy.updated",
            object_type="agent",
            object_id=agent_id,
            data={
                "version": version,
                "source": source,
                "before": before,
                "after": policy,
                "changes": [change["text"] for change in display.policy_changes(before, policy)],
            },
        )
    return PolicyOutcome(agent=agent, version=version, warnings=_warnings(account_id, policy))


def policy_upsert(*, account_id: int, agent_id: str, changes: dict[str, Any], actor: str) -> PolicyOutcome:
    """Merge upsert: fields sent replace, explicit null clears (``changes`` already validated), merged into the
    policy current under the row lock (a merge into a copy read before the lock would lose a concurrent change)."""
    return policy_publish(account_id=account_id, agent_id=agent_id, changes=changes, source="api", actor=actor)


def policy_rollback(*, account_id: int, agent_id: str, version: int, actor: str) -> PolicyOutcome:
    """Make an earlier version current again — as a new version, so history only grows."""
    old = PolicyVersion.objects.get(agent__account_id=account_id, agent__agent_id=agent_id, version=version)
    return policy_publish(
        account_id=account_id, agent_id=agent_id, policy=old.policy, source=f"rollback:{version}", actor=actor
    )


def policy_from_template(
    *, account_id: int, agent_id: str, template: str, overrides: dict[str, Any], actor: str
) -> PolicyOutcome:
    """The named template with ``overrides`` (validated) replacing its fields; a new version like any change."""
    policy = policies.merge(policies.TEMPLATES[template], overrides)
    return policy_publish(
        account_id=account_id, agent_id=agent_id, policy=policy, source=f"template:{template}", actor=actor
    )


# --- the governed call -----------------------------------------------------------------------------------------


class ToolNotFound(Exception):
    """Strict mode and no registered tool of that name: 404 tool_not_found."""


@dataclass
class CallOutcome:
    decision: Decision
    remaining: dict[str, Any]
    registered: Tool | None = None  # the registered tool the call used (governed_call sets it)


def args_hash(key: str, agent_id: str, tool: str, args: dict[str, Any]) -> str:
    """HMAC-SHA256 with the account's key over RFC 8785 canonical JSON (docs/architecture.md §3.7): an auditor
    holding the args can check a match; the log alone cannot be brute-forced. The tool is in its normalised form
    (``identifiers.normalise_tool``): `STRIPE.CHARGE` and `stripe.charge` with the same args are one call to dedup,
    as they are one tool to the policy and the registry."""
    message = canonical_json({"agent_id": agent_id, "tool": normalise_tool(tool), "args": args})
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


class GovernedCallKeys(NamedTuple):
    """KEYS of governance/governed_call.lua (its header says what each holds)."""

    ready: str
    dedup: str
    hour: str
    spend: str
    calls: str
    usage: str
    shadow_dedup: str  # the shadow candidate's counters (docs/policy-changes.md §"Shadow mode")
    shadow_hour: str
    shadow_spend: str
    shadow_calls: str
    run: str  # the run's counters (per-run caps; a placeholder never read without them)
    bucket: str | None = None  # with ``rate`` and ``burst``: the caller's rate-limit token is taken in the script


class GovernedCallArgs(NamedTuple):
    """ARGV of governance/governed_call.lua."""

    now_ms: int
    window_ms: int
    max_actions: int
    max_calls: int
    max_spend: int
    cost: int
    tool: str
    reservation: str
    day_seconds: int
    ai_limit: int
    usage_keep_seconds: int
    day: str
    dry_run: str
    shadow: str  # "1": decide the shadow candidate's caps too
    shadow_max_actions: int
    shadow_max_calls: int
    shadow_max_spend: int
    shadow_cost: int
    run: str  # "1": decide the per-run caps on the run's counters
    run_max_actions: int
    run_max_spend: int
    run_max_calls: int
    run_max_ms: int
    rate: int | None = None
    burst: int | None = None


GOVERNED_CALL = LuaScript(
    GOVERNED_CALL_LUA,
    GovernedCallKeys,
    GovernedCallArgs,
    preludes=(TAKE_TOKEN_LUA, SHADOW_DECIDE_LUA, REPLICATION_ID_LUA),
)


class ShadowCallKeys(NamedTuple):
    """KEYS of governance/shadow_call.lua: the candidate's counters, as in GovernedCallKeys."""

    dedup: str
    hour: str
    spend: str
    calls: str


class ShadowCallArgs(NamedTuple):
    """ARGV of governance/shadow_call.lua."""

    now_ms: int
    window_ms: int
    max_actions: int
    max_calls: int
    max_spend: int
    cost: int
    tool: str
    member: str
    day_seconds: int


SHADOW_CALL = LuaScript(SHADOW_CALL_LUA, ShadowCallKeys, ShadowCallArgs, preludes=(SHADOW_DECIDE_LUA,))


class RebuildKeys(NamedTuple):
    """KEYS of governance/rebuild_counters.lua, before its ``runs``: the agent's counters, as in GovernedCallKeys."""

    ready: str
    hour: str
    spend: str
    calls: str


class RebuildArgs(NamedTuple):
    """ARGV of governance/rebuild_counters.lua, before its ``pairs``."""

    spend_today: int
    day_seconds: int
    ready_seconds: int
    tool_count: int


REBUILD = LuaScript(
    REBUILD_LUA, RebuildKeys, RebuildArgs, rest="pairs", rest_keys="runs", preludes=(REPLICATION_ID_LUA,)
)


def run_key(agent: Agent, run_id: str) -> str:
    """The Redis hash of a run's counters (per-run caps): by a digest of the run id, which may be long."""
    # The run id as decisions record it (its first 256 characters): the rebuild after a Redis loss names the same hash.
    digest = hashlib.sha256(run_id[:256].encode()).hexdigest()[:32] if run_id else "-"
    return f"oo:{{a{agent.account_id}}}:gov:{agent.pk}:run:{digest}"


def _keys(
    agent: Agent, args_digest: str, now: datetime, bucket: str | None = None, run_id: str = ""
) -> GovernedCallKeys:
    base = f"oo:{{a{agent.account_id}}}:gov:{agent.pk}"
    day = now.strftime("%Y%m%d")
    shadow = _shadow_keys(agent, args_digest, day)
    return GovernedCallKeys(
        ready=f"{base}:ready",
        dedup=f"{base}:dedup:{args_digest}",
        hour=f"{base}:hour",
        spend=f"{base}:spend:{day}",
        calls=f"{base}:calls:{day}",
        usage=usage.usage_key(agent.account_id, now),
        shadow_dedup=shadow.dedup,
        shadow_hour=shadow.hour,
        shadow_spend=shadow.spend,
        shadow_calls=shadow.calls,
        run=run_key(agent, run_id),
        bucket=bucket,
    )


def _shadow_keys(agent: Agent, args_digest: str, day: str) -> ShadowCallKeys:
    """The shadow candidate's counters: its own, named by the candidate (a new candidate starts from zero)."""
    base = f"oo:{{a{agent.account_id}}}:gov:{agent.pk}:sh:{agent.shadow_id or '-'}"
    return ShadowCallKeys(
        dedup=f"{base}:dedup:{args_digest}",
        hour=f"{base}:hour",
        spend=f"{base}:spend:{day}",
        calls=f"{base}:calls:{day}",
    )


def _micro(amount: Decimal) -> int:
    return int((amount * MICRO).to_integral_value())


class IntentGone(Exception):
    """The dispatch intent was already recorded (by the sweeper): its decision exists."""


def _record(
    agent: Agent,
    events: Callable[[Decision], list[RunEvent]] | None = None,
    intent_id: int | None = None,
    **fields: Any,
) -> Decision:
    """The decision row, its hourly rollup and its run events, in one synchronous transaction, before the
    response (so a timeline read right after the call shows them). With ``intent_id`` the dispatch intent is
    deleted in that transaction — exactly one decision per intent (``IntentGone`` if it was recorded already)."""
    fields.setdefault("ts", timezone.now())
    fields.setdefault("spend_usd", Decimal(0))
    fields["row_hash"] = ledger.row_hash(agent.account_id, {**fields, "agent_id": agent.agent_id})
    decision = Decision(account_id=agent.account_id, agent=agent, **fields)
    ops = connection.ops
    hour = decision.ts.replace(minute=0, second=0, microsecond=0)
    rollup = [
        agent.account_id,
        agent.pk,
        ops.adapt_datetimefield_value(hour),
        decision.tool,
        decision.outcome,
        ops.adapt_decimalfield_value(decision.spend_usd, 16, 6),
    ]
    if events is None and connection.vendor == "postgresql" and not connection.in_atomic_block:
        # The common case as one statement (its own synchronous transaction): one round trip instead of BEGIN,
        # INSERT, upsert, COMMIT — the commit's flush is the same (docs/benchmarks.md).
        values = [f.get_db_prep_save(getattr(decision, f.attname), connection) for f in sql.DECISION_FIELDS]
        with connection.cursor() as cursor:
            if intent_id is None:
                cursor.execute(sql.DECISION_AND_ROLLUP, [*values, *rollup])
            else:
                cursor.execute(sql.DECISION_FOR_INTENT, [intent_id, *values, *rollup])
            row = cursor.fetchone()
        if row is None:
            raise IntentGone(intent_id)
        decision.pk = row[0]
        decision._state.adding = False
        return decision
    with transaction.atomic():
        if intent_id is not None and not DispatchIntent.objects.filter(pk=intent_id).delete()[0]:
            raise IntentGone(intent_id)
        decision.save(force_insert=True)
        if events is not None:
            run_events.emit_many(events(decision))
        with connection.cursor() as cursor:
            cursor.execute(sql.ROLLUP_UPSERT, rollup)
    return decision


def _rebuild(agent: Agent, keys: GovernedCallKeys, now: datetime, dedup_window: int) -> None:
    """Counters and dedup entries from the database ledger (the decision log), after Redis lost them."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Every read of the decision log here names the account and a time range, as the hot path's indexes (and
    # partitions) are laid out: (account, agent, ts) answers each one with the rows of its range only.
    charged = Decision.objects.filter(account_id=agent.account_id, agent=agent, outcome__in=CHARGED_OUTCOMES)
    today = charged.filter(ts__gte=day_start)
    spend = today.aggregate(total=Sum("spend_usd"))["total"] or Decimal(0)
    calls: dict[str, int] = {}
    for tool, n in today.values_list("tool").annotate(n=Count("id")):  # by normalised name, as calls count
        name = policies.counter_name(tool)
        calls[name] = calls.get(name, 0) + n
    hour = [(f"db:{pk}", ts) for pk, ts in charged.filter(ts__gt=now - timedelta(hours=1)).values_list("id", "ts")]
    # Dispatches whose decision was never written (the server stopped after calling the tool) count as charged.
    for pk, ts, tool, cost in DispatchIntent.objects.filter(agent=agent).values_list(
        "id", "created_at", "tool", "spend_usd"
    ):
        if ts >= day_start:
            spend += cost
            name = policies.counter_name(tool)
            calls[name] = calls.get(name, 0) + 1
        if ts > now - timedelta(hours=1):
            hour.append((f"intent:{pk}", ts))
    client = get_redis()
    if dedup_window:
        # Dedup entries first: calls wait for the ready marker, so none can slip between the two steps.
        pipe = client.pipeline(transaction=False)
        seen = Decision.objects.filter(
            account_id=agent.account_id,
            agent=agent,
            outcome__in=[Outcome.EXECUTED, Outcome.ALLOWED],
            ts__gt=now - timedelta(seconds=dedup_window),
        ).values_list("id", "args_hash", "ts")
        base = keys.dedup.rsplit(":", 1)[0]
        unrecorded = DispatchIntent.objects.filter(
            agent=agent, created_at__gt=now - timedelta(seconds=dedup_window)
        ).values_list("id", "args_hash", "created_at")
        for marker, rows in (("decision", seen), ("intent", unrecorded)):
            for pk, digest, ts in rows:
                left_ms = int((ts + timedelta(seconds=dedup_window) - now).total_seconds() * 1000)
                if left_ms > 0:
                    pipe.set(f"{base}:{digest}", f"{marker}:{pk}", px=left_ms, nx=True)
        pipe.execute()
    runs = _rebuild_runs(agent, now)
    pairs: list[Any] = []
    for tool, count in calls.items():
        pairs += [tool, count]
    for counts in runs.values():  # in the order of the run keys below
        fields = [(name, value) for name, value in counts.items() if name != "t0"]
        pairs += [int(counts["t0"].timestamp() * 1000), len(fields)]
        for name, value in fields:
            pairs += [name, value]
    for member, ts in hour:
        pairs += [int(ts.timestamp() * 1000), member]
    REBUILD(
        client,
        RebuildKeys(ready=keys.ready, hour=keys.hour, spend=keys.spend, calls=keys.calls),
        RebuildArgs(
            spend_today=_micro(spend),
            day_seconds=DAY_COUNTER_SECONDS,
            ready_seconds=READY_SECONDS,
            tool_count=len(calls),
        ),
        pairs,
        list(runs),  # under the account's hash tag, as the agent's keys (one slot on a Redis Cluster)
    )


def _rebuild_runs(agent: Agent, now: datetime) -> dict[str, dict[str, Any]]:
    """The counts of the agent's runs with charged calls in the day counters' span, by their hash (``run_key``), from
    the decision log (docs/governance.md §"Per-run caps"): a, s, t:<tool> and t0 (the first one's time).
    rebuild_counters.lua raises each hash to them in the step that sets the ready marker, and only when the marker
    is stale: a concurrent rebuild or a call admitted since is never overwritten."""
    since = now - timedelta(seconds=DAY_COUNTER_SECONDS)
    runs: dict[str, dict[str, Any]] = {}
    charged = Decision.objects.filter(
        account_id=agent.account_id, agent=agent, ts__gt=since, outcome__in=CHARGED_OUTCOMES
    ).exclude(run_id="")
    unrecorded = DispatchIntent.objects.filter(agent=agent, created_at__gt=since).exclude(run_id="")
    rows = [*charged.values_list("run_id", "tool", "spend_usd", "ts")]
    rows += unrecorded.values_list("run_id", "tool", "spend_usd", "created_at")
    for run_id, tool, cost, ts in rows:
        run = runs.setdefault(run_key(agent, run_id), {"a": 0, "s": 0, "t0": ts})
        run["a"] += 1
        run["s"] += _micro(cost or Decimal(0))
        run["t0"] = min(run["t0"], ts)
        field = f"t:{policies.counter_name(tool)}"
        run[field] = run.get(field, 0) + 1
    return runs


EXPLAIN_LIST = 20  # entries of allowed_tools a tool_not_allowed decision keeps (with the list's size)
EXPLAIN_ERROR = 200  # characters of a tool's error text a decision keeps


def _usd(amount: Decimal | int | float | None) -> float | None:
    """An amount as the explain object carries it: USD as a JSON number, 6 decimal places at most."""
    return None if amount is None else float(Decimal(amount).quantize(SIX_PLACES))


def _disabled_explain(agent: Agent, stage: str) -> dict[str, Any]:
    """What the kill switch said when it stopped a call: who, when, why, and at which point of the call."""
    return {
        "stage": stage,
        "disabled_by": agent.disabled_by or None,
        "disabled_reason": agent.disabled_reason or None,
        "disabled_at": agent.disabled_at.isoformat() if agent.disabled_at else None,
    }


def _attempts_explain(sent: dispatch.DispatchResult) -> dict[str, Any]:
    """A dispatch as a decision explains it: attempts, the last HTTP status and the error text (short)."""
    out: dict[str, Any] = {"attempts": sent.attempts, "http_status": sent.http_status}
    if sent.error:
        out["error"] = sent.error[:EXPLAIN_ERROR]
    return out


# --- the governed call, step by step (docs/architecture.md §4) ---------------------------------------------------
#
# governed_call runs the steps of the pipeline in its order, one function each, each testable alone: call_resolve
# (the agent and the tool), call_policy and call_price (the kill switch, the policy, the registry, the charge),
# call_reserve (governed_call.lua: the rate-limit token, dedup, the limits, the quota and the reservation),
# call_dispatch, call_record and call_tidy. They share state through small dataclasses: Call (what was resolved),
# Charge (the price), Caps (the policy's limits), Reserved (what the atomic step answered), Ending (how the call
# ends, as its decision records it).


@dataclass(slots=True)
class Call:
    """One governed call as its steps see it: what ``call_resolve`` found, and the fields every decision of the call
    records (``base``: the priced call adds both sides of its charge to them)."""

    account_id: int
    agent_id: str
    agent: Agent
    registered: Tool | None  # the registered tool the call uses, if any (its name is then ``tool``)
    tool: str
    args: dict[str, Any]
    policy: dict[str, Any]  # the agent's current policy ({}: no limits)
    digest: str  # args_hash
    run_id: str
    dry_run: bool
    finishes_run: bool
    started: float  # time.monotonic() at the start, for the decision's latency
    started_at: datetime
    base: dict[str, Any]
    shadow: Shadow | None = None  # the agent's shadow candidate, when it has one (call_shadow)
    keyed: bool = False  # named by the caller's idempotency key, not its args (call_resolve's dedup_key)
    run_caps: dict[str, Any] | None = None  # a keyed run's own per-run caps (Raise & resume), over the policy's


@dataclass(slots=True)
class Shadow:
    """The agent's shadow candidate as this call meets it (docs/policy-changes.md §"Shadow mode"): its caps and its
    price of the call, and what it decides (``reason``: "" until decided — by its tool lists here, else by its caps
    on its own counters in the same Lua step as the enforced policy's)."""

    id: str
    caps: Caps
    cost: Decimal
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Charge:
    """A call's cost (docs/architecture.md §4.4): the larger of what the request declares and the operator's price."""

    price: Decimal
    declared: Decimal | None
    cost: Decimal


@dataclass(frozen=True, slots=True)
class Caps:
    """The limits of the agent's policy that apply to this call: ``calls`` is -1 when the tool has no day cap."""

    hourly: int | None
    calls: int
    spend: float | int | None  # USD per day, as the policy holds it
    # Per-run caps (docs/governance.md §"Per-run caps"), None when unset: the policy's, or a keyed run's own after a
    # Raise & resume (``overrides``).
    run_actions: int | None = None
    run_spend: float | int | None = None
    run_calls: int | None = None
    run_seconds: int | None = None

    @classmethod
    def of(cls, policy: dict[str, Any], tool: str, overrides: dict[str, Any] | None = None) -> Caps:
        run = {field: policy.get(field) for field in policies.RUN_CAP_FIELDS}
        if overrides:
            run.update({field: value for field, value in overrides.items() if field in run})
        return cls(
            policy.get("max_actions_per_hour"),
            policies.call_cap(policy, tool),
            policy.get("max_spend_usd_per_day"),
            run["max_actions_per_run"],
            run["max_spend_usd_per_run"],
            run["max_calls_per_tool_per_run"],
            run["max_run_seconds"],
        )

    @property
    def per_run(self) -> bool:
        return any(cap is not None for cap in (self.run_actions, self.run_spend, self.run_calls, self.run_seconds))


@dataclass(slots=True)
class Reserved:
    """What governed_call.lua answered (``status``: ok, blocked or dedup; the other answers raise), with what it ran
    with: the caps, the time, and the keys and arguments that undoing the reservation needs (``call_release``)."""

    status: str
    detail: str  # blocked: the reason; dedup: the entry ("decision:<id>", "pending:<reservation>", "intent:<id>")
    actions: int  # the counts: before this call when blocked, after its reservation when ok (0 on dedup)
    calls: int
    spent: int  # micro-dollars
    caps: Caps
    now: datetime
    keys: GovernedCallKeys
    args: GovernedCallArgs
    ai_used: int = 0  # the month's `ai` units (after this call's when ok)
    run_actions: int = 0  # the run's counts (per-run caps only): before the call when blocked, after it when ok
    run_calls: int = 0
    run_spent: int = 0  # micro-dollars
    run_ms: int = 0  # since the run's first action

    @property
    def remaining(self) -> dict[str, Any]:
        left = {
            "spend_usd_today": float(Decimal(self.spent) / MICRO),
            "actions_this_hour": self.actions,
            "calls_today": self.calls,
        }
        if self.args.run == "1":
            left.update(
                run_actions=self.run_actions,
                run_calls=self.run_calls,
                run_spend_usd=float(Decimal(self.run_spent) / MICRO),
            )
        return left


@dataclass(slots=True)
class Ending:
    """How a call ends, as its decision records it: outcome, reason, what the rule saw (``explain``, without the
    policy version ``call_record`` adds), and the decision fields only this ending sets (``extra``)."""

    outcome: str
    reason: str
    explain: dict[str, Any]
    remaining: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # spend_usd, http_status, dispatch_id, result, original
    intent_id: int | None = None  # a dispatched call's intent, deleted with the decision's write
    sent: dispatch.DispatchResult | None = None  # a dispatched call's dispatch


def call_resolve(
    *,
    account_id: int,
    agent_id: str,
    tool: str,
    args: dict[str, Any],
    run_id: str | None,
    dry_run: bool,
    finishes_run: bool,
    api_key_id: int | None,
    dedup_key: str | None = None,
) -> Call:
    """Resolve (docs/architecture.md §4.2, §4.4): the agent (registered on first sight) and the registered tool it
    would use, in one query (two with a tool); the call's args hash, run id and risk level."""
    started = time.monotonic()
    started_at = timezone.now()
    agent, registered = _agent_for_call(account_id, agent_id, tool)  # agent scope first (docs/architecture.md §4.2)
    if registered is not None:
        # A call of `STRIPE.CHARGE` is a call of the registered `stripe.charge`: decided, recorded, counted and
        # dispatched under that name, so the log, the rollups and top_tools show one tool (docs/api.md).
        tool = registered.name
    # An idempotency key of the caller's (an MCP call's, docs/mcp.md §"Exactly once") names the call with its args:
    # the same args under two keys are two calls. A list: no args object (a JSON object) can hash the same; and the
    # args stay in it, so an approval, bound to this digest, never covers other args under the same key.
    hashed: Any = args if dedup_key is None else ["onceonly-idempotency-key", dedup_key, args]
    digest = args_hash(agent.account.args_hash_key, agent_id, tool, hashed)
    if run_id is None:
        from_args = args.get("run_id")
        run_id = from_args if isinstance(from_args, str) else ""
    risk = (registered.risk_level if registered else "") or policies.risk_of(tool)
    base = dict(
        tool=tool,
        args_hash=digest,
        run_id=run_id[:256],
        policy_version=agent.policy_version,
        risk_level=risk,
        api_key_id=api_key_id,
    )
    return Call(
        account_id=account_id,
        agent_id=agent_id,
        agent=agent,
        registered=registered,
        tool=tool,
        args=args,
        policy=agent.policy or {},
        digest=digest,
        run_id=run_id,
        dry_run=dry_run,
        finishes_run=finishes_run,
        started=started,
        started_at=started_at,
        base=base,
        keyed=dedup_key is not None,
    )


def call_shadow(call: Call, spend_usd: Decimal | None) -> Shadow | None:
    """Shadow mode (docs/policy-changes.md §"Shadow mode"): the agent's candidate policy, decided beside the enforced
    one — its tool lists, registry and approval rules here (no query, no Redis), its caps later on its own counters.
    None without a candidate, and for a dry run (nothing of it is recorded)."""
    candidate = call.agent.shadow_policy
    if candidate is None or call.dry_run:
        return None
    price = policies.operator_price(candidate, call.tool)
    if price is None:
        registered = call.registered
        price = registered.price_usd if registered is not None and registered.price_usd is not None else Decimal(0)
    declared = spend_usd.quantize(SIX_PLACES) if spend_usd is not None else None
    cost = price.quantize(SIX_PLACES) if declared is None else max(declared, price.quantize(SIX_PLACES))
    shadow = Shadow(call.agent.shadow_id, Caps.of(candidate, call.tool), cost)
    agent, tool, registered = call.agent, call.tool, call.registered
    if not agent.is_enabled:
        shadow.reason = Reason.AGENT_DISABLED
    elif policies.matching_pattern(tool, candidate.get("blocked_tools") or []) is not None:
        shadow.reason = Reason.TOOL_BLOCKED
    elif candidate.get("allowed_tools") is not None and not policies.matches(tool, candidate["allowed_tools"]):
        shadow.reason = Reason.TOOL_NOT_ALLOWED
    elif registered is not None and not registered.enabled:
        shadow.reason = Reason.TOOL_DISABLED
    elif policies.approval_rule(candidate, tool, cost) is not None:
        shadow.reason = Reason.APPROVAL_REQUIRED  # the candidate's approvals are not asked for: it would wait
    return shadow


def _shadow_args(call: Call) -> tuple[str, int, int, int, int]:
    """ARGV shadow, shadow_max_actions, shadow_max_calls, shadow_max_spend, shadow_cost of the Lua steps."""
    shadow = call.shadow
    if shadow is None or shadow.reason:
        return "0", -1, -1, -1, 0
    caps = shadow.caps
    spend = _micro(Decimal(str(caps.spend))) if caps.spend is not None else -1
    return "1", caps.hourly if caps.hourly is not None else -1, caps.calls, spend, _micro(shadow.cost)


def call_shadow_alone(call: Call, plan: PlanLimits) -> None:
    """The candidate's caps for a call the enforced policy ended before its atomic step (its tool lists, the
    registry, an approval): one shadow_call.lua round trip, only when the agent has a candidate that lets the call
    through its own lists. A Redis error leaves the shadow outcome unrecorded, never fails the call."""
    shadow = call.shadow
    if shadow is None or shadow.reason:
        return
    now = timezone.now()
    _, max_actions, max_calls, max_spend, cost = _shadow_args(call)
    try:
        reply = SHADOW_CALL(
            get_redis(),
            _shadow_keys(call.agent, call.digest, now.strftime("%Y%m%d")),
            ShadowCallArgs(
                now_ms=int(now.timestamp() * 1000),
                window_ms=plan.default_ttl * 1000,
                max_actions=max_actions,
                max_calls=max_calls,
                max_spend=max_spend,
                cost=cost,
                tool=policies.counter_name(call.tool),
                member=uuid.uuid4().hex,
                day_seconds=DAY_COUNTER_SECONDS,
            ),
        )
    except redis.RedisError:
        logger.warning("shadow candidate of agent %s not decided: Redis unreachable", call.agent.pk, exc_info=True)
        return
    shadow.reason = reply[1].decode()


def call_policy(call: Call) -> Ending | None:
    """Policy (docs/architecture.md §4.2–§4.4): the kill switch, the policy's tool lists and the registry, from what
    ``call_resolve`` read (no query, no Redis): the blocking Ending, or None when the call goes on. Strict mode and no
    registered tool raises ToolNotFound (404, nothing recorded)."""
    agent, tool, registered = call.agent, call.tool, call.registered
    if not agent.is_enabled:
        return Ending(Outcome.BLOCKED, Reason.AGENT_DISABLED, _disabled_explain(agent, "before_call"))
    if (pattern := policies.matching_pattern(tool, call.policy.get("blocked_tools") or [])) is not None:
        return Ending(Outcome.BLOCKED, Reason.TOOL_BLOCKED, {"pattern": pattern})
    allow_list = call.policy.get("allowed_tools")
    if allow_list is not None and not policies.matches(tool, allow_list):
        seen = {"allowed_tools": allow_list[:EXPLAIN_LIST], "allowed_tools_count": len(allow_list)}
        return Ending(Outcome.BLOCKED, Reason.TOOL_NOT_ALLOWED, seen)
    if registered is not None and not registered.enabled:
        seen = {"tool_id": registered.pk, "scope_id": registered.scope_id}
        return Ending(Outcome.BLOCKED, Reason.TOOL_DISABLED, seen)
    server = registered.mcp_server if registered is not None else None
    if registered is not None and server is not None and not server.enabled:  # all the server's tools are off
        seen = {"tool_id": registered.pk, "scope_id": registered.scope_id, "mcp_server": server.name}
        return Ending(Outcome.BLOCKED, Reason.TOOL_DISABLED, seen)
    if registered is None and agent.account.strict_mode:
        # Unregistered, and the account refuses unregistered tools instead of permit-only decisions.
        raise ToolNotFound(tool)
    return None


def call_price(call: Call, spend_usd: Decimal | None) -> Charge:
    """Price (docs/architecture.md §4.4): the larger of what the request declares and the operator's price
    (docs/api.md §"POST /v1/ai/run — the governed call"): an agent may declare more, never less. The operator's
    price is the first pricing rule that names the tool (a rule of 0 prices it at zero), else the registry's price,
    else 0."""
    price = policies.operator_price(call.policy, call.tool)  # price_for on normalised names (docs/security.md)
    if price is None:
        registered = call.registered
        price = registered.price_usd if registered is not None and registered.price_usd is not None else Decimal(0)
    price = price.quantize(SIX_PLACES)
    declared = spend_usd.quantize(SIX_PLACES) if spend_usd is not None else None
    return Charge(price=price, declared=declared, cost=price if declared is None else max(declared, price))


def call_approval(call: Call, charge: Charge, *, fresh: bool = False) -> approvals.Gate | None:
    """Approval (docs/approvals.md): None when the policy's require_approval does not name the call; else the gate
    — "proceed" (approved: the call goes on and uses the approval once reserved), or the blocking state, with the
    pending approval created for a first call. ``fresh``: the call's approval was used by another call, so only a
    new request (or a pending or denied one) can answer it."""
    if not call.policy.get("require_approval"):
        return None
    return approvals.gate(
        agent=call.agent,
        tool=call.tool,
        digest=call.digest,
        policy=call.policy,
        cost=charge.cost,
        args=call.args,
        run_id=call.run_id,
        risk_level=call.base["risk_level"],
        dry_run=call.dry_run,
        fresh=fresh,
    )


def call_record_approval(call: Call, gate: approvals.Gate, charge: Charge) -> CallOutcome:
    """The blocked decision of a call waiting for (or denied) its approval: nothing reserved or charged; ``result``
    carries the approval (the SDK keeps ``result``)."""
    denied = gate.state == "denied"
    ending = Ending(
        Outcome.BLOCKED,
        Reason.APPROVAL_DENIED if denied else Reason.APPROVAL_REQUIRED,
        approvals.explain_of(gate, charge.cost),
        extra={"result": approvals.answer(gate.approval, gate.state)},
    )
    outcome = call_record(call, ending)
    if gate.approval is not None and not call.dry_run:
        approvals.link(gate.approval, outcome.decision, consumed=False)
    return outcome


def call_slots(call: Call, plan: PlanLimits, deadline: float) -> slots.Slots | None:
    """Bulkheads (docs/operations.md §"Slow tools and bulkheads"): a call that will be dispatched takes a slot of its
    web process, its account and its tool before anything is reserved, or is refused (``DispatchBusy``, 429) with
    nothing reserved or recorded. A dry run or a call of an unregistered tool waits on no tool: no slot."""
    if call.registered is None or call.dry_run:
        return None
    return slots.take(
        account_id=call.account_id,
        tool=policies.counter_name(call.tool),
        plan_slots=plan.dispatch_slots,
        member=uuid.uuid4().hex,
        deadline=deadline,
    )


def _dedup_entry_stands(call: Call) -> bool:
    """Whether the call's dedup entry exists (one EXISTS; the script decides for real): see ``governed_call``."""
    try:
        return bool(get_redis().exists(f"oo:{{a{call.account_id}}}:gov:{call.agent.pk}:dedup:{call.digest}"))
    except redis.RedisError:
        return False


def call_reserve_request(
    call: Call,
    plan: PlanLimits,
    charge: Charge,
    caps: Caps,
    now: datetime,
    reservation: str,
    rate_limit: tuple[str, list[int]] | None = None,
) -> tuple[GovernedCallKeys, GovernedCallArgs]:
    """The KEYS and ARGV of governed_call.lua for this call (no Redis): the caps as the script takes them (-1: none,
    spend in micro-dollars), the per-tool counter by its normalised name (`SEND_EMAIL` counts as `send_email`), and
    the caller's rate-limit bucket when the token is taken in the script."""
    bucket: str | None = None
    rate: int | None = None
    burst: int | None = None
    if rate_limit is not None:
        bucket, (rate, burst) = rate_limit
    keys = _keys(call.agent, call.digest, now, bucket, call.run_id)
    shadow_on, shadow_actions, shadow_calls, shadow_spend, shadow_cost = _shadow_args(call)
    per_run = bool(call.run_id) and caps.per_run
    args = GovernedCallArgs(
        now_ms=int(now.timestamp() * 1000),
        window_ms=plan.default_ttl * 1000,
        max_actions=caps.hourly if caps.hourly is not None else -1,
        max_calls=caps.calls,
        max_spend=_micro(Decimal(str(caps.spend))) if caps.spend is not None else -1,
        cost=_micro(charge.cost),
        tool=policies.counter_name(call.tool),
        reservation=reservation,
        day_seconds=DAY_COUNTER_SECONDS,
        ai_limit=plan.ai_limit,
        usage_keep_seconds=usage.KEEP_SECONDS,
        day=now.strftime("%d"),
        dry_run="1" if call.dry_run else "0",
        shadow=shadow_on,
        shadow_max_actions=shadow_actions,
        shadow_max_calls=shadow_calls,
        shadow_max_spend=shadow_spend,
        shadow_cost=shadow_cost,
        run="1" if per_run else "0",
        run_max_actions=_cap(caps.run_actions),
        run_max_spend=_micro(Decimal(str(caps.run_spend))) if caps.run_spend is not None else -1,
        run_max_calls=_cap(caps.run_calls),
        run_max_ms=caps.run_seconds * 1000 if caps.run_seconds is not None else -1,
        rate=rate,
        burst=burst,
    )
    return keys, args


def _cap(value: int | None) -> int:
    return -1 if value is None else int(value)


def call_reserve(
    call: Call, plan: PlanLimits, charge: Charge, rate_limit: tuple[str, list[int]] | None = None
) -> Reserved:
    """Reserve (docs/architecture.md §4.5, §4.6): the atomic step, one governed_call.lua round trip (the counters or
    the usage hash rebuilt first when Redis lost them). Raises RateLimited (429) and QuotaExceeded (402): nothing
    recorded."""
    now, caps = timezone.now(), Caps.of(call.policy, call.tool, call.run_caps)
    keys, args = call_reserve_request(call, plan, charge, caps, now, uuid.uuid4().hex, rate_limit)
    client = get_redis()
    for _ in range(3):
        reply = GOVERNED_CALL(client, keys, args)
        if reply[0] == b"rebuild":
            _rebuild(call.agent, keys, now, plan.default_ttl)
        elif reply[0] == b"rebuild_usage":
            usage.rebuild(call.account_id, now)
        else:
            break
    else:
        raise RuntimeError("governance counters could not be rebuilt")
    status = reply[0].decode()
    if status == "rate_limited":
        raise RateLimited(int(reply[1]))
    if status == "quota":
        raise usage.QuotaExceeded(kind=usage.AI, plan=plan.code, usage=int(reply[1]), limit=plan.ai_limit)
    if call.shadow is not None and args.shadow == "1":  # the candidate's caps, decided in the same step
        call.shadow.reason = reply[-1].decode()
    if status == "dedup":
        return Reserved(status, reply[1].decode(), 0, 0, 0, caps, now, keys, args)
    actions, calls, spent, ai_used, run_actions, run_calls, run_spent, run_ms = (int(n) for n in reply[2:10])
    return Reserved(
        status,
        reply[1].decode(),
        actions,
        calls,
        spent,
        caps,
        now,
        keys,
        args,
        ai_used,
        run_actions,
        run_calls,
        run_spent,
        run_ms,
    )


def call_release(reserved: Reserved) -> None:
    """Without its durable decision the reservation must not stand (the ledger is the decision log): the hourly
    entry, the tool's day count, the day's spend, the dedup entry and the `ai` usage unit are taken back."""
    keys, args = reserved.keys, reserved.args
    pipe = get_redis().pipeline(transaction=False)
    pipe.zrem(keys.hour, args.reservation)
    pipe.hincrby(keys.calls, args.tool, -1)
    pipe.incrby(keys.spend, -args.cost)
    pipe.delete(keys.dedup)
    pipe.hincrby(keys.usage, usage.AI, -1)
    pipe.hincrby(keys.usage, f"{usage.AI}:{args.day}", -1)
    if args.run == "1":
        pipe.hincrby(keys.run, "a", -1)
        pipe.hincrby(keys.run, f"t:{args.tool}", -1)
        pipe.hincrby(keys.run, "s", -args.cost)
    pipe.execute()


def _dedup_ending(call: Call, reserved: Reserved) -> Ending:
    """A repeat within the dedup window (docs/architecture.md §4.5) points at the original decision and replays its
    result once the original is recorded; while it is still in flight (pending:, intent:) or gone, neither."""
    original = None
    seen: dict[str, Any] = {}
    kind, _, ref = reserved.detail.partition(":")
    if kind == "decision":
        # Named by its id, found in a time range (the decision log's partitions by day,
        # docs/operations.md §"Decision-log partitions"): the entry was written at most the dedup window ago, before
        # its decision.
        written_after = reserved.now - timedelta(milliseconds=reserved.args.window_ms) - DEDUP_LOOKUP_MARGIN
        named = Decision.objects.filter(account_id=call.account_id, agent=call.agent, pk=int(ref))
        # Else (rare: an entry written under a longer window, before the plan's was shortened) by its id alone.
        original = named.filter(ts__gte=written_after).first() or named.first()
    elif kind == "pending":  # in flight: its dispatch id names the decision it will be (the MCP gateway waits for it)
        seen["original_dispatch_id"] = ref
    elif kind == "intent" and ref.isdigit():
        seen["original_dispatch_id"] = (
            DispatchIntent.objects.filter(pk=int(ref), agent=call.agent).values_list("dispatch_id", flat=True).first()
        )
    if call.keyed:  # the caller's idempotency key matched, whatever the args (docs/mcp.md §"Exactly once")
        seen["idempotency_key"] = True
    return Ending(
        Outcome.DEDUP,
        Reason.IDEMPOTENCY_KEY_HIT,
        {"original_decision_id": original.pk if original else None, **seen},
        extra={"result": original.result if original else None, "original": original},
    )


def _limit_explain(call: Call, reserved: Reserved, charge: Charge) -> dict[str, Any]:
    """What a limit saw when it blocked the call: the limit and the counts before the call (the ones the script
    returns with "blocked"), and for the spend cap the spend so far, the cost and both sides of the charge."""
    caps, reason = reserved.caps, reserved.detail
    run: dict[str, Any] = {
        "run_id": call.run_id[:256],
        # The run's counts before this call, every one: a resume checks all its caps against them (run_caps.py).
        "run": {
            "actions": reserved.run_actions,
            "tool_calls": reserved.run_calls,
            "spent": _usd(Decimal(reserved.run_spent) / MICRO),
            "elapsed_seconds": round(reserved.run_ms / 1000, 3),
            "cost": _usd(charge.cost),  # this call's
        },
        **({"run_caps": "raised"} if call.run_caps else {}),
    }
    if reason == Reason.RUN_ACTION_LIMIT_EXCEEDED:
        return {"limit": caps.run_actions, "count": reserved.run_actions, **run}
    if reason == Reason.RUN_TOOL_CALL_LIMIT_EXCEEDED:
        return {"limit": caps.run_calls, "count": reserved.run_calls, **run}
    if reason == Reason.RUN_TIME_EXCEEDED:
        return {"limit_seconds": caps.run_seconds, "elapsed_seconds": round(reserved.run_ms / 1000, 3), **run}
    if reason == Reason.RUN_SPEND_EXCEEDED:
        return {
            "limit": _usd(Decimal(str(caps.run_spend))),
            "spent": _usd(Decimal(reserved.run_spent) / MICRO),
            "cost": _usd(charge.cost),
            **run,
        }
    if reason == Reason.HOURLY_ACTION_LIMIT_EXCEEDED:
        return {"limit": caps.hourly, "count": reserved.actions}
    if reason == Reason.TOOL_CALL_LIMIT_EXCEEDED:
        return {"limit": caps.calls, "count": reserved.calls, "cap_key": policies.call_cap_key(call.policy, call.tool)}
    # daily_spend_exceeded
    return {
        "limit": _usd(Decimal(str(caps.spend))),
        "spent": _usd(Decimal(reserved.spent) / MICRO),
        "cost": _usd(charge.cost),
        "declared": _usd(charge.declared),
        "price": _usd(charge.price),
    }


def _budget_explain(reserved: Reserved, charge: Charge) -> dict[str, Any]:
    """Within budget: the cost, and what is left under each cap the policy sets after this call (counts include
    it)."""
    caps = reserved.caps
    left: dict[str, Any] = {}
    if caps.hourly is not None:
        left["actions_this_hour"] = caps.hourly - reserved.actions
    if caps.calls >= 0:
        left["calls_today"] = caps.calls - reserved.calls
    if caps.spend is not None:
        left["spend_usd_today"] = _usd(Decimal(str(caps.spend)) - Decimal(reserved.spent) / MICRO)
    if reserved.args.run == "1":
        if caps.run_actions is not None:
            left["run_actions"] = caps.run_actions - reserved.run_actions
        if caps.run_calls is not None:
            left["run_calls"] = caps.run_calls - reserved.run_calls
        if caps.run_spend is not None:
            left["run_spend_usd"] = _usd(Decimal(str(caps.run_spend)) - Decimal(reserved.run_spent) / MICRO)
    return {"cost": _usd(charge.cost), "left": left}


def call_dispatch(
    call: Call, reserved: Reserved, charge: Charge, budget: dict[str, Any], deadline: float | None = None
) -> Ending:
    """Dispatch (docs/architecture.md §4.7): the dispatch intent first (committed: from here on the tool may run, and
    a rebuild counts it), then the signed dispatch, outside any transaction, while the reservation stands; the kill
    switch can stop it in flight. Only for a registered, enabled tool. The Ending carries the intent, for
    call_record to delete. ``deadline`` (time.monotonic()): when the dispatch must have ended, counted from the
    request's arrival (default: the dispatch deadline from now)."""
    agent, registered, tool = call.agent, call.registered, call.tool
    assert registered is not None
    reservation = reserved.args.reservation
    try:
        intent = DispatchIntent.objects.create(
            account_id=call.account_id,
            agent=agent,
            created_at=reserved.now,
            tool=tool,
            args_hash=call.digest,
            run_id=call.run_id[:256],
            policy_version=agent.policy_version,
            risk_level=call.base["risk_level"],
            spend_usd=charge.cost,
            declared_spend_usd=charge.declared,
            operator_price_usd=charge.price,
            dispatch_id=reservation,
            api_key_id=call.base["api_key_id"],
            explain={"policy_version": agent.policy_version, **budget},
        )
    except Exception:
        call_release(reserved)
        raise
    try:
        sent = dispatch.dispatch(
            registered,
            dispatch_id=reservation,
            agent_id=call.agent_id,
            args=call.args,
            run_id=call.run_id,
            args_digest=call.digest,
            fence=reserved.args.now_ms,
            kill_switch=dispatch.KillSwitch(agent.pk),
            deadline=deadline,
        )
    except Exception as exc:  # an undecryptable secret, a broken answer: a tool error, never a 500
        logger.exception("dispatch of %s failed unexpectedly", tool)
        # Counted as an attempt: the request may have been sent before it broke (the approval, if any, is used).
        sent = dispatch.DispatchResult(False, None, None, 0, 1, f"dispatch error: {exc.__class__.__name__}")
    extra = {
        "spend_usd": charge.cost,
        "http_status": sent.http_status,
        "dispatch_id": reservation,
        "result": sent.result,
    }
    ending = Ending(
        Outcome.EXECUTED if sent.ok else Outcome.FAILED,
        Reason.WITHIN_BUDGET if sent.ok else Reason.TOOL_ERROR,
        {**budget, **_attempts_explain(sent)},
        reserved.remaining,
        extra,
        intent.pk,
        sent,
    )
    # Who pressed the kill switch meanwhile: one read, on this rare path only.
    switched = (Agent.objects.filter(pk=agent.pk).first() or agent) if sent.stopped else agent
    if sent.stopped and not sent.attempts:
        # Disabled while in flight, before the first attempt: no request was sent. Blocked like a call that meets
        # the kill switch at its start: nothing charged, the reservation released by call_tidy.
        ending.outcome, ending.reason, ending.remaining = Outcome.BLOCKED, Reason.AGENT_DISABLED, {}
        ending.extra["spend_usd"] = Decimal(0)
        ending.explain = _disabled_explain(switched, "in_flight_before_attempt")
    elif sent.stopped:
        # Disabled before a retry: the retry was not sent, but an earlier attempt reached the tool, which may have
        # acted on it (a timeout or a dropped connection says nothing about that). Failed like a tool error: the
        # spend and the counted action stay (else the caps could be passed by tool runs nobody paid for).
        ending.outcome, ending.reason = Outcome.FAILED, Reason.AGENT_DISABLED
        ending.explain = {**budget, **_disabled_explain(switched, "in_flight_after_attempt"), **_attempts_explain(sent)}
    if sent.deadline_hit:
        slots.flag_deadline(call.account_id, policies.counter_name(tool))
    if sent.attempts:
        Tool.objects.filter(pk=registered.pk).update(
            last_status=sent.http_status, last_latency_ms=sent.latency_ms, last_dispatch_at=timezone.now()
        )
    return ending


def call_record(call: Call, ending: Ending) -> CallOutcome:
    """Record (docs/architecture.md §4.8): the decision row (with its rollup and the call's run events) in one
    synchronous transaction; a dry run is decided, not recorded: its timeline alone shows what would have happened."""
    agent = call.agent
    latency = int((time.monotonic() - call.started) * 1000)
    allowed = ending.outcome in (Outcome.EXECUTED, Outcome.ALLOWED, Outcome.DEDUP)
    # What the rule saw (governance/explain.py words it): always the policy version, then the reason's numbers.
    seen = {"policy_version": agent.policy_version, **ending.explain}
    if call.shadow is not None and call.shadow.reason:  # what the shadow candidate decided (no decision of its own)
        seen["shadow"] = {"id": call.shadow.id, "reason": call.shadow.reason}
    fields = dict(
        outcome=ending.outcome,
        policy_reason=ending.reason,
        latency_ms=latency,
        allowed=allowed,
        explain=seen,
        **call.base,
        **ending.extra,
    )
    timeline = None
    if call.run_id:
        run_id, started_at, dry_run, finishes_run = call.run_id, call.started_at, call.dry_run, call.finishes_run
        timeline = lambda decision: _call_events(  # noqa: E731
            decision, run_id=run_id, started_at=started_at, dry_run=dry_run, finishes_run=finishes_run
        )
    if call.dry_run:
        decision = Decision(account_id=call.account_id, agent=agent, ts=timezone.now(), **fields)
        if timeline is not None:
            run_events.emit_many(timeline(decision))
    else:
        decision = _record(agent, timeline, ending.intent_id, **fields)
        telemetry.export_call(agent_id=call.agent_id, started_at=call.started_at, decision=decision)
        detectors.observe(call, decision)  # docs/governance.md §"Containment detectors" (never raises)
    return CallOutcome(decision=decision, remaining=ending.remaining)


def call_tidy(reserved: Reserved, ending: Ending, decision: Decision) -> None:
    """Tidy (docs/architecture.md §4.8), after the commit: a call stopped before any attempt gives its whole
    reservation back; a failed call its dedup entry and its `ai` unit (the spend stays charged); any other call's
    dedup entry becomes ``decision:<id>``. A Redis error is logged: the decision is durable, and a rebuild after the
    outage restores the same state from the decision log."""
    keys = reserved.keys
    try:
        if ending.outcome == Outcome.BLOCKED:
            # Stopped by the kill switch before any attempt: not charged, not counted, not deduplicated.
            call_release(reserved)
        elif ending.outcome == Outcome.FAILED:
            # The tool failed: a retry may run again (dedup entry released); the spend stays charged, the ai quota
            # unit is given back (it counts executed or allowed calls only).
            pipe = get_redis().pipeline(transaction=False)
            pipe.delete(keys.dedup)
            pipe.hincrby(keys.usage, usage.AI, -1)
            pipe.hincrby(keys.usage, f"{usage.AI}:{reserved.args.day}", -1)
            pipe.execute()
        else:
            get_redis().set(keys.dedup, f"decision:{decision.pk}", xx=True, keepttl=True)
    except redis.RedisError:
        logger.warning("decision %s recorded; Redis could not be updated after it", decision.pk, exc_info=True)


def governed_call(
    *,
    account_id: int,
    plan: PlanLimits,
    agent_id: str,
    tool: str,
    args: dict[str, Any],
    spend_usd: Decimal | None,
    run_id: str | None = None,
    dry_run: bool = False,
    finishes_run: bool = True,
    rate_limit: tuple[str, list[int]] | None = None,
    api_key_id: int | None = None,
    arrived: float | None = None,
    dedup_key: str | None = None,
    registered_only: bool = False,
    run_caps: dict[str, Any] | None = None,
) -> CallOutcome:
    """Decide a tool call before it runs (docs/architecture.md §4). Every ending is a durable decision row.

    With a run id (``run_id``, else ``args.run_id``) the call also writes ``tool_call`` and ``tool_result`` events
    to that run's timeline, and ``run_finished`` when ``finishes_run`` (a tool-form call is a run of one step; a
    keyed run's actions are steps of a longer run). ``dry_run`` decides exactly as a real call would but reserves,
    dispatches, charges and records nothing (keyed runs with ``metadata.dry_run``). ``rate_limit`` (the API key's
    bucket and its rate and burst, ``billing.ratelimit.script_args``) takes the caller's token in the same script:
    over the limit raises ``RateLimited`` with nothing recorded.

    ``arrived`` (time.monotonic(), ``onceonly_site.clock``): a web request's arrival. Its dispatch must end within
    the dispatch deadline of it, and it takes the bulkheads' slots first (``call_slots``: over a limit raises
    ``DispatchBusy`` with nothing reserved or recorded). Without it (a keyed run's action, run by a worker whose
    concurrency bounds it) the deadline counts from now and no slot is taken.

    ``run_caps``: a keyed run's own per-run caps (Raise & resume, docs/runs.md §"Runs that pause at a cap") over its
    policy's.
    """
    call = call_resolve(
        account_id=account_id,
        agent_id=agent_id,
        tool=tool,
        args=args,
        run_id=run_id,
        dry_run=dry_run,
        finishes_run=finishes_run,
        api_key_id=api_key_id,
        dedup_key=dedup_key,
    )
    if registered_only and call.registered is None:
        raise ToolNotFound(tool)  # the MCP gateway: a name no tool of the account has is not a call to decide
    call.run_caps = run_caps
    outcome = _governed_call(call, plan, spend_usd, rate_limit, arrived)
    outcome.registered = call.registered
    return outcome


def _governed_call(
    call: Call,
    plan: PlanLimits,
    spend_usd: Decimal | None,
    rate_limit: tuple[str, list[int]] | None,
    arrived: float | None,
) -> CallOutcome:
    account_id, agent_id, dry_run = call.account_id, call.agent_id, call.dry_run
    call.shadow = call_shadow(call, spend_usd)
    stop = call_policy(call)
    if stop is not None:
        # Not priced (it ends here), but what it declared is recorded: a replay of the log reads it (replay.py).
        call.base["declared_spend_usd"] = spend_usd.quantize(SIX_PLACES) if spend_usd is not None else None
        if rate_limit is not None:
            take_bucket(*rate_limit)  # no script runs for it, and it writes a decision: the caller's rate applies
        call_shadow_alone(call, plan)
        return call_record(call, stop)
    charge = call_price(call, spend_usd)
    # From here on every decision (blocked by a limit, dedup, allowed, executed, failed) records both sides.
    call.base.update(declared_spend_usd=charge.declared, operator_price_usd=charge.price)
    gate = call_approval(call, charge)
    if gate is not None and gate.state != "proceed":
        if rate_limit is not None:
            take_bucket(*rate_limit)  # an approval request writes rows: it counts against the caller's rate
        call_shadow_alone(call, plan)
        return call_record_approval(call, gate, charge)
    deadline = (call.started if arrived is None else arrived) + settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS
    # A repeat of a call whose dedup entry stands (in flight or done) will not be dispatched: it takes no slot, so
    # twins get the first call's answer even while the tool's slots are full (the MCP gateway's concurrent twins).
    twin = arrived is not None and call.registered is not None and not dry_run and _dedup_entry_stands(call)
    held = call_slots(call, plan, deadline) if arrived is not None and not twin else None
    try:
        reserved = call_reserve(call, plan, charge, rate_limit)
        if reserved.status == "dedup":
            return call_record(call, _dedup_ending(call, reserved))
        if reserved.status == "blocked":
            ending = Ending(
                Outcome.BLOCKED, reserved.detail, _limit_explain(call, reserved, charge), reserved.remaining
            )
            return call_record(call, ending)
        budget = _budget_explain(reserved, charge)
        if dry_run:  # decided exactly as a real call, but the script reserved nothing: nothing to release or tidy
            ending = Ending(
                Outcome.ALLOWED, Reason.WITHIN_BUDGET, budget, reserved.remaining, {"spend_usd": charge.cost}
            )
            return call_record(call, ending)
        if twin:  # the entry lapsed before the script ran: this call is dispatched after all, with its slots
            try:
                held = call_slots(call, plan, deadline)
            except slots.DispatchBusy:
                call_release(reserved)
                raise
        if gate is not None and gate.approval is not None and not approvals.claim(gate.approval):
            # Used by another call meanwhile (or expired): this call needs an approval of its own.
            call_release(reserved)
            return call_record_approval(call, call_approval(call, charge, fresh=True) or gate, charge)
        if call.registered is None:  # permit-only: an unregistered tool is not dispatched
            ending = Ending(
                Outcome.ALLOWED, Reason.WITHIN_BUDGET, budget, reserved.remaining, {"spend_usd": charge.cost}
            )
        else:
            ending = call_dispatch(call, reserved, charge, budget, deadline)
        if gate is not None and gate.approval is not None:  # the decision says whose approval let it through
            approved = gate.approval
            ending.explain["approval"] = {"approval_id": approved.public_id, "decided_by": approved.decided_by}
    finally:
        if held is not None:
            held.release()  # the dispatch is over (or never started): the next call may have the slot
    try:
        outcome = call_record(call, ending)
    except IntentGone:
        # Slower than the sweeper's grace period: it recorded this dispatch (outcome_unknown) meanwhile.
        original = Decision.objects.get(
            account_id=call.account_id,
            agent=call.agent,
            dispatch_id=reserved.args.reservation,
            ts__gte=call.started_at - RECORDED_AFTER_MARGIN,  # the sweeper's decision has the intent's time
        )
        return CallOutcome(decision=original, remaining=ending.remaining)
    except Exception:
        if ending.intent_id is None:
            call_release(reserved)
        # Else the tool was called and may have run: the reservation stands, and the intent row keeps it counted
        # through any Redis rebuild until the sweeper records it (dispatch_intents_record).
        raise
    call_tidy(reserved, ending, outcome.decision)
    alerts.after_call(call, reserved, plan, ending.outcome)  # docs/governance.md §"Budget alerts"
    if gate is not None and gate.approval is not None:
        if ending.sent is not None and ending.sent.stopped and not ending.sent.attempts:
            # Stopped before any request reached the tool (the kill switch in flight): the approval was not used.
            approvals.unclaim(gate.approval)
        else:
            # Used, even when the tool then failed: it may have acted, and a retry is another call to a person.
            approvals.link(gate.approval, outcome.decision, consumed=True)
    if ending.outcome == Outcome.FAILED and ending.reason == Reason.TOOL_ERROR and ending.sent is not None:
        sent = ending.sent
        notify(
            account_id=account_id,
            kind="tool_error",
            subject=f"{agent_id} → {call.tool} failed: {sent.error}",
            body=f"Decision {outcome.decision.pk}: {sent.attempts} attempt(s), last HTTP status {sent.http_status}.",
        )
    return outcome


def _small(value: Any, limit: int = 4096) -> Any:
    """A tool result as a timeline shows it: whole when small, else a marker (the decision keeps it whole)."""
    if value is None or len(canonical_json(value)) <= limit:
        return value
    return {"truncated": True, "bytes": len(canonical_json(value))}


def _call_events(
    decision: Decision, *, run_id: str, started_at: datetime, dry_run: bool, finishes_run: bool
) -> list[RunEvent]:
    """The timeline entries of one governed call: tool_call, tool_result (and run_finished for a one-step run)."""
    account_id, agent_id = decision.account_id, decision.agent.agent_id
    decision_id = decision.pk
    note = {"dry_run": True} if dry_run else {}
    duration = int((decision.ts - started_at).total_seconds() * 1000)
    built = [
        run_events.build(
            account_id,
            run_id,
            "tool_call",
            ts=started_at,
            status="requested",
            tool=decision.tool,
            agent_id=agent_id,
            data={"args_hash": decision.args_hash, **note},
        ),
        run_events.build(
            account_id,
            run_id,
            "tool_result",
            ts=decision.ts,
            status=decision.outcome,
            tool=decision.tool,
            agent_id=agent_id,
            message=decision.policy_reason,
            duration_ms=duration,
            decision_id=decision_id,
            data={
                "allowed": decision.allowed,
                "decision": decision.outcome,
                "policy_reason": decision.policy_reason,
                "risk_level": decision.risk_level or None,
                "spend_usd": float(decision.spend_usd or 0),
                "http_status": decision.http_status,
                "result": _small(decision.result),
                **note,
            },
        ),
    ]
    if finishes_run:
        status = "completed" if decision.allowed and decision.outcome != Outcome.FAILED else "failed"
        built.append(
            run_events.build(
                account_id,
                run_id,
                "run_finished",
                ts=decision.ts,
                status=status,
                tool=decision.tool,
                agent_id=agent_id,
                message=decision.policy_reason,
                duration_ms=duration,
                decision_id=decision_id,
            )
        )
    return built


OPERATOR_AGENT = "onceonly-operator"


def tool_test_call(*, tool: Tool, args: dict[str, Any], actor: str) -> tuple[Decision, dispatch.DispatchResult]:
    """The Tools page's "Send test call": a signed dispatch with sample args, recorded as a decision of the built-in
    operator agent (outside its limits: an operator, not an agent, is asking)."""
    agent = agent_get_or_create(account_id=tool.account_id, agent_id=OPERATOR_AGENT)
    digest = args_hash(agent.account.args_hash_key, OPERATOR_AGENT, tool.name, args)
    started = time.monotonic()
    dispatch_id = uuid.uuid4().hex
    sent = dispatch.dispatch(
        tool,
        dispatch_id=dispatch_id,
        agent_id=OPERATOR_AGENT,
        args=args,
        run_id="",
        args_digest=digest,
        fence=int(time.time() * 1000),
    )
    decision = _record(
        agent,
        tool=tool.name,
        args_hash=digest,
        run_id="",
        policy_version=agent.policy_version,
        risk_level=tool.risk_level or policies.risk_of(tool.name),
        outcome=Outcome.EXECUTED if sent.ok else Outcome.FAILED,
        allowed=sent.ok,
        policy_reason=Reason.WITHIN_BUDGET if sent.ok else Reason.TOOL_ERROR,
        latency_ms=int((time.monotonic() - started) * 1000),
        http_status=sent.http_status,
        result=sent.result,
        # A webhook's message id; an MCP tool's tools/call carries the dispatch id in its _meta (no such header).
        dispatch_id=(sent.request_headers or {}).get("webhook-id", dispatch_id if sent.attempts else ""),
        explain={"policy_version": agent.policy_version, "test_call": True, "actor": actor, **_attempts_explain(sent)},
    )
    Tool.objects.filter(pk=tool.pk).update(
        last_status=sent.http_status, last_latency_ms=sent.latency_ms, last_dispatch_at=timezone.now()
    )
    audit_record(
        account=agent.account,
        actor_label=actor,
        action="governance.tool.test_call",
        object_type="tool",
        object_id=f"{tool.scope_id}/{tool.name}",
        data={"decision": decision.pk, "ok": sent.ok},
    )
    return decision, sent


def dispatch_intents_record(*, grace: timedelta | None = None, batch: int = 500) -> int:
    """Beat: record the dispatches whose decision was never written (the server stopped, or lost its database,
    between calling the tool and recording its answer) as failed decisions with reason ``outcome_unknown`` —
    charged, at the time of the dispatch, with the webhook-id the tool received (so an operator can ask the tool
    what happened). ``grace`` (default: the dispatch deadline + 60 s) leaves live calls alone."""
    if grace is None:
        grace = timedelta(seconds=settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS + 60)
    recorded = 0
    stale = DispatchIntent.objects.filter(created_at__lt=timezone.now() - grace).select_related("agent")
    for intent in stale.order_by("pk")[:batch]:
        # One intent at a time, each in its own transaction (_record is atomic): one that fails must not stop the
        # others, on this run or any later one.
        try:
            _record(
                intent.agent,
                None,
                intent.pk,
                ts=intent.created_at,
                tool=intent.tool,
                args_hash=intent.args_hash,
                run_id=intent.run_id,
                policy_version=intent.policy_version,
                risk_level=intent.risk_level,
                outcome=Outcome.FAILED,
                allowed=False,
                policy_reason=Reason.OUTCOME_UNKNOWN,
                spend_usd=intent.spend_usd,
                declared_spend_usd=intent.declared_spend_usd,
                operator_price_usd=intent.operator_price_usd,
                dispatch_id=intent.dispatch_id,
                latency_ms=0,
                api_key_id=intent.api_key_id,
                # What the call was decided on (within budget) before the server stopped; intents written before
                # explain existed have only their policy version.
                explain=intent.explain or {"policy_version": intent.policy_version},
            )
        except IntentGone:
            continue  # recorded by its own call meanwhile
        except (OperationalError, InterfaceError):
            raise  # the database is down, not this row: the task fails (and is retried) instead of logging each row
        except Exception:
            # Left in place: it still counts against the caps, and the next run tries it again.
            logger.exception(
                "could not record unfinished dispatch intent %s (%s); going on with the next",
                intent.pk,
                intent.dispatch_id,
            )
            continue
        recorded += 1
        logger.warning(
            "recorded unfinished dispatch %s of %s → %s (outcome unknown)",
            intent.dispatch_id,
            intent.agent.agent_id,
            intent.tool,
        )
    return recorded
