"""Impact preview of a draft policy (docs/policy-changes.md): an agent's recorded decisions of the last 1, 7 or 30
days replayed, in time order, through the draft's rules with counters of its own — what the draft would have
decided for each call, beside what was decided.

The engine (``replay``) is pure Python over the decision log: it reads the agent's decisions streamed in chunks
(``values_list(...).iterator()``: a server-side cursor on PostgreSQL, bounded memory), and keeps the draft's
counters in memory — the rolling hour, today's calls per tool, today's spend, the dedup entries. It never reads or
writes Redis or the live counters, and writes nothing to the database. It reproduces ``services.governed_call``'s
steps in their order (docs/architecture.md §4): the kill switch, ``blocked_tools``, ``allowed_tools``, the registry,
the price, ``require_approval``, dedup, the hourly cap, the per-tool day cap, the day's spend cap. What it cannot
know from the log it approximates, each approximation written down in docs/policy-changes.md §"Approximations".

A preview runs as a Celery task (``governance.tasks.replay_policy_impact``): ``replay_start`` (the service) keeps
the job's state in Redis under a job id for an hour (onceonly_site/jobs.py) — queued, running with processed/total,
done with the result, or failed — and ``replay_job`` (the selector) reads it back. Nothing else is written anywhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone
from redis.typing import EncodableT, FieldT

from governance import policies
from governance.choices import Outcome, Reason
from governance.models import Agent, Decision, PolicyVersion, Tool
from governance.services import MICRO, OPERATOR_AGENT, SIX_PLACES
from onceonly_site import jobs
from onceonly_site.identifiers import normalise_tool

logger = logging.getLogger(__name__)

RANGES = (1, 7, 30)  # days a preview looks back
CHUNK = 5_000  # decisions per fetch from the server-side cursor, and per progress report
EXAMPLES = 5  # decision ids kept per reason (and for newly allowed / newly blocked)
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
JOB_TTL = 3600  # seconds a job's state and result are kept in Redis
MAX_RUNNING = 2  # previews running at once per account (a third waits for one to finish)
RUNNING_STALE_MS = 15 * 60_000  # a running entry older than this is a job whose worker died: not counted

# The recorded fields a replay reads: what the decision log keeps of each call's input (docs/architecture.md §4.8).
FIELDS = (
    "id",
    "ts",
    "tool",
    "outcome",
    "policy_reason",
    "declared_spend_usd",
    "operator_price_usd",
    "args_hash",
    "policy_version",
)
ALLOWED_OUTCOMES = frozenset({Outcome.EXECUTED, Outcome.ALLOWED, Outcome.DEDUP})  # ``allowed: true`` in the answer
CHARGED = frozenset({Outcome.EXECUTED, Outcome.ALLOWED, Outcome.FAILED})  # choices.CHARGED_OUTCOMES


class ReplayRefused(Exception):
    """A preview that cannot run: a range other than RANGES, the operator's built-in agent, another account's agent."""


class ReplayBusy(Exception):
    """MAX_RUNNING previews of this account are running already."""


class ReplayUnavailable(Exception):
    """The task could not be queued (the broker is unreachable): nothing runs, the job is marked failed."""


def _micro(amount: Decimal) -> int:
    """Micro-dollars, as services._micro counts them in Redis."""
    return int((amount * MICRO).to_integral_value())


# --- what the draft says about one tool: computed once per tool name of the replay --------------------------------


@dataclass(slots=True)
class _ToolRules:
    stop: str | None  # tool_blocked / tool_not_allowed, or None: the tool lists let the call on
    cap: int  # max_calls_per_tool of the tool (-1: none)
    counter: str  # the per-tool day counter the call counts in (policies.counter_name)
    price: int | None  # the draft's pricing-rule price (micro-dollars), None: no rule names the tool
    approval: Decimal | None  # require_approval: None no entry names the tool; else calls costing more than this many
    # micro-dollars need approval (-1: every call)
    passed: str  # the outcome of a call the draft lets through that was not charged when recorded: executed for a
    # registered tool (dispatched; its answer taken to be a success), else allowed (permit-only)


def _tool_rules(draft: dict[str, Any], tool: str, registry: _Registry) -> _ToolRules:
    stop = None
    if policies.matches(tool, draft.get("blocked_tools") or []):
        stop = Reason.TOOL_BLOCKED
    elif draft.get("allowed_tools") is not None and not policies.matches(tool, draft["allowed_tools"]):
        stop = Reason.TOOL_NOT_ALLOWED
    price = policies.operator_price(draft, tool)
    approval: Decimal | None = None
    for pattern, over in policies.approval_entries(draft):
        if policies.matches(tool, [pattern]):
            threshold = Decimal(-1) if over is None else Decimal(str(over)) * MICRO
            approval = threshold if approval is None else min(approval, threshold)
    return _ToolRules(
        stop=stop,
        cap=policies.call_cap(draft, tool),
        counter=policies.counter_name(tool),
        price=None if price is None else _micro(price.quantize(SIX_PLACES)),
        approval=approval,
        passed=Outcome.EXECUTED if registry.registered(tool) else Outcome.ALLOWED,
    )


class _Registry:
    """The registry's price of a call (used when no pricing rule of the draft names the tool), reconstructed from the
    decision: its ``operator_price_usd`` is the registry's price when the policy it was decided under had no pricing
    rule for the tool. Otherwise (that policy priced it, or the call ended before it was priced) the tool's price in
    the registry now — the agent's own scope first, then global — else 0."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._policies: dict[int | None, dict[str, Any]] = {None: {}}
        self._priced: dict[tuple[int | None, str], bool] = {}
        self._now: dict[str, int] | None = None

    def _tools(self) -> dict[str, int]:
        if self._now is None:
            rows = Tool.objects.filter(
                account_id=self.agent.account_id, scope_id__in=["global", f"agent:{self.agent.agent_id}"]
            ).values_list("scope_id", "name_key", "legacy_twin", "price_usd")
            now: dict[str, int] = {}
            # Written global first, then the agent's scope (it wins); among legacy twins the oldest (0) last.
            for _scope, key, _twin, price in sorted(rows, key=lambda r: (r[0] != "global", -r[2])):
                now[key] = 0 if price is None else _micro(price)
            self._now = now
        return self._now

    def _current(self, tool: str) -> int:
        return self._tools().get(normalise_tool(tool), 0)

    def registered(self, tool: str) -> bool:
        """Is ``tool`` in the registry now (the agent's scope or global)? A call of it would be dispatched."""
        return normalise_tool(tool) in self._tools()

    def price(self, version: int | None, tool: str, recorded: Decimal | None) -> int:
        if recorded is None:
            return self._current(tool)
        priced = self._priced.get((version, tool))
        if priced is None:
            if version is not None and version not in self._policies:
                found = PolicyVersion.objects.filter(agent=self.agent, version=version).values_list("policy", flat=True)
                self._policies[version] = found.first() or {}
            priced = policies.operator_price(self._policies[version], tool) is not None
            self._priced[(version, tool)] = priced
        return self._current(tool) if priced else _micro(recorded)


# --- the result ----------------------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What the draft would have decided. ``replayed`` and ``recorded`` count (outcome, reason) pairs; a call the
    draft lets through keeps its recorded outcome when it was charged (the tool is taken to answer as it did), else
    it is ``allowed`` / ``within_budget`` (the tool would have been called)."""

    total: int = 0
    replayed: Counter[tuple[str, str]] = field(default_factory=Counter)
    recorded: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_blocked: datetime | None = None
    examples: dict[str, list[int]] = field(default_factory=dict)  # blocked reason → decision ids (≤ EXAMPLES)
    newly_allowed: int = 0  # recorded blocked, would pass
    newly_allowed_examples: list[int] = field(default_factory=list)
    newly_blocked: int = 0  # recorded allowed (or dedup, or charged), would be blocked
    newly_blocked_examples: list[int] = field(default_factory=list)

    @property
    def blocked(self) -> int:
        return sum(n for (outcome, _), n in self.replayed.items() if outcome == Outcome.BLOCKED)

    def blocked_by_reason(self) -> list[tuple[str, int]]:
        counts: Counter[str] = Counter()
        for (outcome, reason), n in self.replayed.items():
            if outcome == Outcome.BLOCKED:
                counts[reason] += n
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def delta(self) -> list[dict[str, Any]]:
        """Per reason: recorded, with the draft, and the change (the reasons of either, largest change first)."""
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        for (_, reason), n in self.recorded.items():
            before[reason] += n
        for (_, reason), n in self.replayed.items():
            after[reason] += n
        rows = [
            {
                "reason": reason,
                "recorded": before[reason],
                "replayed": after[reason],
                "change": after[reason] - before[reason],
            }
            for reason in set(before) | set(after)
        ]
        return sorted(rows, key=lambda row: (-abs(row["change"]), row["reason"]))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (what the job keeps in Redis and the page shows)."""

        def pairs(counts: Counter[tuple[str, str]]) -> list[list[Any]]:
            return [[o, r, n] for (o, r), n in sorted(counts.items())]

        return {
            "total": self.total,
            "blocked": self.blocked,
            "by_reason": [[reason, n] for reason, n in self.blocked_by_reason()],
            "first_blocked": self.first_blocked.isoformat() if self.first_blocked else None,
            "examples": self.examples,
            "newly_allowed": {"count": self.newly_allowed, "examples": self.newly_allowed_examples},
            "newly_blocked": {"count": self.newly_blocked, "examples": self.newly_blocked_examples},
            "replayed": pairs(self.replayed),
            "recorded": pairs(self.recorded),
            "delta": self.delta(),
        }


# --- the engine ----------------------------------------------------------------------------------------------------

Row = tuple[int, datetime, str, str, str, Decimal | None, Decimal | None, str, int | None]


def decisions_to_replay(agent: Agent, since: datetime, until: datetime) -> Any:
    """The agent's decisions in [since, until), oldest first (ties by id): the (account, agent, -ts) index read
    backwards. Every decision is one call the agent made — dedup and blocked ones too: sent again, the live engine
    would decide them afresh."""
    return Decision.objects.filter(account_id=agent.account_id, agent_id=agent.pk, ts__gte=since, ts__lt=until)


def replay_rows(
    agent: Agent,
    draft: dict[str, Any],
    rows: Iterable[Row],
    *,
    dedup_window_s: int,
    total: int = 0,
    progress: Callable[[int, int], None] | None = None,
    every: int = CHUNK,
) -> ReplayResult:
    """Decide each recorded call (``rows``, in time order) under ``draft`` with in-memory counters, as
    ``services.governed_call`` would (docs/architecture.md §4). ``progress(processed, total)`` after every ``every``
    rows and at the end."""
    result = ReplayResult()
    registry = _Registry(agent)
    rules: dict[str, _ToolRules] = {}
    hourly = draft.get("max_actions_per_hour")
    spend_cap = (
        _micro(Decimal(str(draft["max_spend_usd_per_day"]))) if draft.get("max_spend_usd_per_day") is not None else -1
    )
    window_ms = dedup_window_s * 1000
    hour: deque[int] = deque()  # charged calls of the rolling hour (ms), only kept with an hourly cap
    day = -1
    calls_today: dict[str, int] = {}
    spent_today = 0
    dedup: dict[str, int] = {}  # args_hash → when its entry expires (ms)
    last_ms = 0
    replayed, recorded, examples = result.replayed, result.recorded, result.examples
    blocked_outcome = Outcome.BLOCKED
    processed, checkpoint, pruned = 0, every, 0
    for pk, ts, tool, outcome, reason, declared, recorded_price, digest, version in rows:
        if processed == checkpoint:  # every ``every`` rows: progress, and the expired dedup entries dropped
            checkpoint += every
            if progress is not None:
                progress(processed, total)
            if len(dedup) > 2 * pruned + every:  # memory bounded by the calls of one window
                dedup = {k: v for k, v in dedup.items() if v > last_ms}
                pruned = len(dedup)
        processed += 1
        recorded[(outcome, reason)] += 1
        ms = last_ms = int(ts.timestamp() * 1000)
        if ms // DAY_MS != day:  # a new UTC day: the day counters start again
            day, calls_today, spent_today = ms // DAY_MS, {}, 0
        stop: str | None
        if outcome == blocked_outcome and reason == Reason.AGENT_DISABLED:
            # The kill switch is not part of a policy: a call it stopped is stopped again (first, as live).
            stop = Reason.AGENT_DISABLED
        else:
            rule = rules.get(tool)
            if rule is None:
                rule = rules[tool] = _tool_rules(draft, tool, registry)
            stop = rule.stop
            if stop is None and reason == Reason.TOOL_DISABLED:
                stop = Reason.TOOL_DISABLED  # the registry as it was at the call
            if stop is None:
                price = rule.price if rule.price is not None else registry.price(version, tool, recorded_price)
                cost = price if declared is None else max(_micro(declared), price)
                if rule.approval is not None and cost > rule.approval:
                    stop = Reason.APPROVAL_REQUIRED  # a new version: no approval of the old one counts
                elif window_ms and dedup.get(digest, 0) > ms:
                    replayed[(Outcome.DEDUP, Reason.IDEMPOTENCY_KEY_HIT)] += 1
                    if outcome == blocked_outcome:
                        _newly_allowed(result, pk)
                    continue
                else:
                    if hourly is not None:
                        while hour and hour[0] <= ms - HOUR_MS:
                            hour.popleft()
                    if hourly is not None and len(hour) >= hourly:
                        stop = Reason.HOURLY_ACTION_LIMIT_EXCEEDED
                    elif rule.cap >= 0 and calls_today.get(rule.counter, 0) >= rule.cap:
                        stop = Reason.TOOL_CALL_LIMIT_EXCEEDED
                    elif spend_cap >= 0 and spent_today + cost > spend_cap:
                        stop = Reason.DAILY_SPEND_EXCEEDED
                    else:  # allowed: charged, counted, and (unless the tool failed) deduplicated for the window
                        if hourly is not None:
                            hour.append(ms)
                        calls_today[rule.counter] = calls_today.get(rule.counter, 0) + 1
                        spent_today += cost
                        if outcome in CHARGED:
                            replayed[(outcome, reason)] += 1
                        else:
                            replayed[(rule.passed, Reason.WITHIN_BUDGET)] += 1
                            if outcome == blocked_outcome:
                                _newly_allowed(result, pk)
                        if window_ms and not (outcome == Outcome.FAILED and reason != Reason.OUTCOME_UNKNOWN):
                            dedup[digest] = ms + window_ms
                        continue
        replayed[(blocked_outcome, stop)] += 1
        if result.first_blocked is None:
            result.first_blocked = ts
        kept = examples.setdefault(stop, [])
        if len(kept) < EXAMPLES:
            kept.append(pk)
        if outcome != blocked_outcome:
            result.newly_blocked += 1
            if len(result.newly_blocked_examples) < EXAMPLES:
                result.newly_blocked_examples.append(pk)
    result.total = processed
    if progress is not None:
        progress(processed, total)
    return result


def _newly_allowed(result: ReplayResult, pk: int) -> None:
    result.newly_allowed += 1
    if len(result.newly_allowed_examples) < EXAMPLES:
        result.newly_allowed_examples.append(pk)


def replay(
    agent: Agent,
    draft: dict[str, Any],
    days: int,
    *,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> ReplayResult:
    """Replay ``agent``'s decisions of the last ``days`` days (one of RANGES) through ``draft``: one COUNT, then the
    rows streamed ``chunk`` at a time. The dedup window is the account's plan's (the live engine's)."""
    if days not in RANGES:
        raise ReplayRefused(f"A preview looks back {', '.join(map(str, RANGES))} days, not {days}.")
    if agent.agent_id == OPERATOR_AGENT:
        raise ReplayRefused("The operator's test calls are not an agent's calls: there is nothing to preview.")
    until = now or timezone.now()
    since = until - timedelta(days=days)
    found = decisions_to_replay(agent, since, until)
    total = found.count()
    rows: Iterator[Row] = found.order_by("ts", "id").values_list(*FIELDS).iterator(chunk_size=chunk)
    window = agent.account.plan.default_ttl_seconds
    return replay_rows(agent, draft, rows, dedup_window_s=window, total=total, progress=progress, every=chunk)


# --- the job: its state in Redis (onceonly_site/jobs.py; service, selector, and what the task runs) ---------------

JOBS = jobs.Jobs("replay", max_running=MAX_RUNNING, stale_ms=RUNNING_STALE_MS, ttl=JOB_TTL)


@dataclass(frozen=True, slots=True)
class ReplayJob(jobs.Progress):
    """A preview as the page shows it: ``state`` queued, running, done or failed."""

    job_id: str
    state: str
    agent_pk: int
    days: int
    label: str
    policy: dict[str, Any]
    processed: int
    total: int
    created: float  # epoch seconds
    result: dict[str, Any] | None
    error: str


def replay_start(*, agent: Agent, policy: dict[str, Any], days: int, label: str) -> str:
    """Service: queue a preview of ``policy`` (a validated draft) for ``agent`` over the last ``days`` days; returns
    the job id. Raises ReplayRefused (a range other than RANGES, the operator agent), ReplayBusy (MAX_RUNNING of the
    account's previews are running) and ReplayUnavailable (the task could not be queued). Writes only the job's
    state to Redis (an hour): nothing is written to the database, so nothing waits for a commit."""
    from governance.tasks import replay_policy_impact

    if days not in RANGES:
        raise ReplayRefused(f"A preview looks back {', '.join(map(str, RANGES))} days, not {days}.")
    if agent.agent_id == OPERATOR_AGENT:
        raise ReplayRefused("The operator's test calls are not an agent's calls: there is nothing to preview.")
    account_id = agent.account_id
    fields: dict[FieldT, EncodableT] = {"agent": agent.pk, "days": days, "label": label, "policy": json.dumps(policy)}
    try:
        return JOBS.start(account_id, fields, lambda job_id: replay_policy_impact.delay(account_id, job_id))
    except jobs.JobBusy:
        raise ReplayBusy(
            f"{MAX_RUNNING} previews of this account are running: try again when one has finished."
        ) from None
    except jobs.JobUnavailable as exc:
        raise ReplayUnavailable(str(exc)) from exc


def _replay_job(job: jobs.Job) -> ReplayJob:
    return ReplayJob(
        job_id=job.job_id,
        state=job.state,
        agent_pk=int(job.fields.get("agent", 0)),
        days=int(job.fields.get("days", 0)),
        label=job.fields.get("label", ""),
        policy=json.loads(job.fields.get("policy", "{}")),
        processed=job.processed,
        total=job.total,
        created=job.created,
        result=job.result,
        error=job.error,
    )


def replay_job(account_id: int, job_id: str) -> ReplayJob | None:
    """Selector: the preview ``job_id`` of that account, or None (unknown, another account's, or past its hour)."""
    job = JOBS.get(account_id, job_id)
    return _replay_job(job) if job is not None else None


def run_job(account_id: int, job_id: str) -> None:
    """What the Celery task runs: the replay of a queued job, its progress (processed/total after every chunk) and its
    result written to the job's state. An error marks the job failed (logged), never raised to the worker."""
    taken = JOBS.take(account_id, job_id)
    if taken is None:
        return  # expired before a worker took it, or taken already
    job = _replay_job(taken)

    def progress(processed: int, total: int) -> None:
        JOBS.progress(account_id, job_id, processed, total)

    started = time.monotonic()
    try:
        agent = Agent.objects.select_related("account__plan").get(account_id=account_id, pk=job.agent_pk)
        result = replay(agent, job.policy, job.days, progress=progress)
    except Exception as exc:
        logger.exception("policy impact preview %s failed", job_id)
        JOBS.fail(account_id, job_id, str(exc) if isinstance(exc, ReplayRefused) else "The preview failed: try again.")
        return
    out = result.as_dict()
    out["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    JOBS.done(account_id, job_id, out, processed=result.total)
