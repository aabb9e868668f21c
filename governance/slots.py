"""Bulkheads: how many governed calls may wait on registered tools at once.

docs/operations.md §"Slow tools and bulkheads" has the operator's side.

A dispatched call holds a web thread for as long as its tool takes. Three limits keep one slow tool (or one account
with many slow calls) from taking the threads everyone else needs:

- **per web process** (``ONCEONLY_DISPATCH_SLOTS_PER_PROCESS``, half the process's threads by default): a
  semaphore, so at least half of every process's threads are always free for calls that do not wait on a tool;
- **per account** (the plan's ``dispatch_slots``, else ``ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT``) and **per tool**
  (``ONCEONLY_DISPATCH_SLOTS_PER_TOOL``): leased slots in Redis, taken atomically by dispatch_slots.lua across every
  process and node. A slot lapses on its own at the call's deadline plus ``MARGIN_SECONDS`` (a process killed in
  the middle frees it by then), and a live call gives it back the moment its dispatch ends.

A call over a limit is refused at once with ``429 dispatch_busy`` and a ``Retry-After`` (when the first slot in
use should be free), before anything is reserved or charged, and without a decision: like a rate limit, it is the
server declining to start, not a decision about the call. The SDK raises ``RateLimitError`` for it (with
``retry_after_sec``) and retries it by itself when built with ``max_retries_429``.

The same 429 answers a call whose deadline (counted from the request's arrival, ``onceonly_site.clock``) has
passed before its dispatch could start: it waited in a queue for too long, and starting an attempt that cannot
finish in time would only send the tool a request nobody will hear the answer of.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import redis
from django.conf import settings

from governance.dispatch import MIN_ATTEMPT_SECONDS
from onceonly_site import wakeups
from onceonly_site.api import ApiProblem
from onceonly_site.redis_client import LuaScript, get_redis

# A slot outlives its call's deadline by this much before it lapses on its own (a process that died holding it).
MARGIN_SECONDS = 5.0
# The longest Retry-After a refusal suggests (when many callers wait for few slots).
MAX_RETRY_AFTER = 30
# The flags of the Tools page ("hit its limit", "hit the deadline") are kept this long after the last hit.
FLAGS_KEEP_SECONDS = 86400


class DispatchSlotsKeys(NamedTuple):
    """KEYS of governance/dispatch_slots.lua (its header says what each holds)."""

    account: str
    tool: str
    stats: str
    refused: str


class DispatchSlotsArgs(NamedTuple):
    """ARGV of governance/dispatch_slots.lua."""

    now_ms: int
    lapse_ms: int
    member: str
    account_limit: int
    tool_limit: int
    tool: str
    keep_ms: int
    flags_keep_ms: int
    refused_keep_ms: int


DISPATCH_SLOTS = LuaScript(Path(__file__).with_name("dispatch_slots.lua"), DispatchSlotsKeys, DispatchSlotsArgs)


def account_key(account_id: int) -> str:
    return f"oo:{{a{account_id}}}:slots"


def tool_key(account_id: int, tool: str) -> str:
    return f"oo:{{a{account_id}}}:slots:t:{tool}"


def stats_key(account_id: int) -> str:
    return f"oo:{{a{account_id}}}:slots:stats"


# Server-wide counters for /metrics (a hash: refused:<scope>, deadline), across processes and nodes.
TOTALS_KEY = "oo:dispatch:totals"


def _count(field: str) -> None:
    try:
        get_redis().hincrby(TOTALS_KEY, field, 1)
    except redis.RedisError:
        pass


def totals() -> dict[str, int]:
    counts: dict[bytes, bytes] = get_redis().hgetall(TOTALS_KEY)  # type: ignore[assignment]  # bytes: no decoding
    return {k.decode(): int(v) for k, v in counts.items()}


class DispatchBusy(ApiProblem):
    """429 dispatch_busy: a bulkhead is full (``scope``: process, account or tool), or the call's deadline passed
    while it waited to start (``scope``: deadline). Nothing was reserved, charged or recorded."""

    def __init__(self, scope: str, message: str, retry_after: int, **extra: Any) -> None:
        self.scope = scope
        _count(f"refused:{scope}")
        super().__init__(
            429,
            "dispatch_busy",
            message,
            headers={"Retry-After": str(retry_after)},
            scope=scope,
            retry_after=retry_after,
            **extra,
        )


# The process's own limit: a non-blocking count sized from the setting at each take (tests override it).
_process = wakeups.Slots(lambda: settings.ONCEONLY_DISPATCH_SLOTS_PER_PROCESS)


def process_in_use() -> int:
    """Dispatches of this process waiting on tools right now."""
    return _process.taken


@dataclass(slots=True)
class Slots:
    """The slots one dispatch holds; ``release`` gives them back (once)."""

    account_id: int
    tool: str
    member: str
    holds_process: bool = False
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.zrem(account_key(self.account_id), self.member)
            pipe.zrem(tool_key(self.account_id, self.tool), self.member)
            pipe.execute()
        except redis.RedisError:
            pass  # the slots lapse on their own at the deadline plus the margin
        finally:
            if self.holds_process:
                _process.give()


def account_limit(plan_slots: int | None) -> int:
    return plan_slots if plan_slots else settings.ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT


def take(*, account_id: int, tool: str, plan_slots: int | None, member: str, deadline: float) -> Slots:
    """The slots of one dispatch (``tool``: the tool's counter name; ``deadline``: time.monotonic() by which the
    dispatch must end), or DispatchBusy with nothing taken. The account's and the tool's slots first (the limits
    every process shares), then the process's: a call refused by the former never holds the latter, so "process"
    is only ever the answer when this process's threads are what is short."""
    left = deadline - time.monotonic()
    budget = settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS
    if left <= MIN_ATTEMPT_SECONDS:
        raise DispatchBusy(
            "deadline",
            f"The server could not start this call's dispatch within its {budget:g} s deadline (it waited "
            f"{budget - left:.2f} s to be served); nothing was reserved. Retry it.",
            1,
        )
    now_ms = int(time.time() * 1000)
    reply = DISPATCH_SLOTS(
        get_redis(),
        DispatchSlotsKeys(
            account_key(account_id),
            tool_key(account_id, tool),
            stats_key(account_id),
            f"oo:{{a{account_id}}}:slots:r:{tool}",
        ),
        DispatchSlotsArgs(
            now_ms=now_ms,
            lapse_ms=now_ms + int((left + MARGIN_SECONDS) * 1000),
            member=member,
            account_limit=account_limit(plan_slots),
            tool_limit=settings.ONCEONLY_DISPATCH_SLOTS_PER_TOOL,
            tool=tool,
            keep_ms=int((budget + MARGIN_SECONDS) * 1000) + 60_000,
            flags_keep_ms=FLAGS_KEEP_SECONDS * 1000,
            refused_keep_ms=int(budget * 1000),
        ),
    )
    if reply[0] != b"ok":
        scope, in_flight, cap = reply[1].decode(), int(reply[2]), int(reply[3])
        free_in = (float(reply[4]) - MARGIN_SECONDS * 1000 - now_ms) / 1000
        # Callers waiting for one of ``cap`` slots, each held up to the deadline: the last of them is served after
        # about waiting / cap deadlines (refused_lately counts refusals since the last quiet deadline: roughly them).
        queue = int(reply[5]) / cap * budget
        retry = _retry_after(free_in, max(budget, queue))
        what = "this account" if scope == "account" else f"the tool {tool!r}"
        raise DispatchBusy(
            scope,
            f"{in_flight} calls to {what} are already waiting on tools (its limit is {cap}); nothing was reserved. "
            f"Retry in {retry} s.",
            retry,
            in_flight=in_flight,
            limit=cap,
        )
    slots = Slots(account_id, tool, member)
    if not _process.try_take():
        slots.release()  # the account's and the tool's slots just taken
        size = settings.ONCEONLY_DISPATCH_SLOTS_PER_PROCESS
        raise DispatchBusy(
            "process",
            f"This server process already has {size} calls waiting on tools (its limit); nothing was reserved. "
            "Retry shortly.",
            _retry_after(0, budget),
            in_flight=size,
            limit=size,
        )
    slots.holds_process = True
    return slots


def _retry_after(free_in: float, spread: float) -> int:
    """Whole seconds to wait: at random between when a slot should be free (``free_in``) and ``spread`` (the
    deadline, or longer when many callers wait for few slots: the time the last of them should be served, at most
    MAX_RETRY_AFTER), so that calls refused together do not come back in the same instant, nor keep asking faster
    than slots free up (a refusal costs about a permit-only call; twenty arriving at once are a CPU spike every
    other caller of the process feels)."""
    low = max(1, math.ceil(free_in))
    high = max(low, min(MAX_RETRY_AFTER, math.ceil(spread)))
    return random.randint(low, high)


def flag_deadline(account_id: int, tool: str) -> None:
    """Note that a dispatch of ``tool`` ended because the call's deadline ran out (the Tools page flags it)."""
    now_ms = int(time.time() * 1000)
    _count("deadline")
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(stats_key(account_id), f"deadline:{tool}", 1)
        pipe.hset(stats_key(account_id), f"deadline_at:{tool}", now_ms)
        pipe.pexpire(stats_key(account_id), FLAGS_KEEP_SECONDS * 1000)
        pipe.execute()
    except redis.RedisError:
        pass


# --- what the Tools page and /metrics show ------------------------------------------------------------------------

# A tool that hit its limit or the deadline within this long is flagged on the Tools page.
FLAG_RECENT_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class ToolSlots:
    """One tool's dispatches in flight now, and when it last hit its limit or the deadline (epoch ms, 0: never)."""

    in_flight: int
    limit: int
    busy: int = 0  # calls refused because the tool's (or its account's) slots were full, since the flags' start
    busy_at: int = 0
    deadline: int = 0  # dispatches the deadline cut short
    deadline_at: int = 0

    def _recent(self, at: int, now_ms: int) -> bool:
        return bool(at) and now_ms - at <= FLAG_RECENT_SECONDS * 1000

    def busy_recently(self, now_ms: int) -> bool:
        return self._recent(self.busy_at, now_ms)

    def deadline_recently(self, now_ms: int) -> bool:
        return self._recent(self.deadline_at, now_ms)


@dataclass(frozen=True, slots=True)
class AccountSlots:
    in_flight: int
    limit: int
    per_tool: int
    tools: dict[str, ToolSlots]


def usage(account_id: int, plan_slots: int | None, tools: list[str]) -> AccountSlots | None:
    """The account's slots in use and ``tools``' (counter names), with their flags: one Redis round trip. None when
    Redis does not answer (the page shows the rest)."""
    now_ms = int(time.time() * 1000)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.zcount(account_key(account_id), f"({now_ms}", "+inf")
        pipe.hgetall(stats_key(account_id))
        for tool in tools:
            pipe.zcount(tool_key(account_id, tool), f"({now_ms}", "+inf")
        replies = pipe.execute()
    except redis.RedisError:
        return None
    stats = {k.decode(): int(v) for k, v in replies[1].items()}
    per_tool = settings.ONCEONLY_DISPATCH_SLOTS_PER_TOOL
    return AccountSlots(
        in_flight=int(replies[0]),
        limit=account_limit(plan_slots),
        per_tool=per_tool,
        tools={
            tool: ToolSlots(
                in_flight=int(count),
                limit=per_tool,
                busy=stats.get(f"busy:{tool}", 0),
                busy_at=stats.get(f"busy_at:{tool}", 0),
                deadline=stats.get(f"deadline:{tool}", 0),
                deadline_at=stats.get(f"deadline_at:{tool}", 0),
            )
            for tool, count in zip(tools, replies[2:], strict=True)
        },
    )


def in_flight_everywhere(limit: int = 1000) -> list[tuple[int, str, int]]:
    """(account id, tool, dispatches in flight) of every tool with a slot in use, for /metrics: a SCAN of the slot
    sets (each lapses on its own, so there are only as many as tools recently called)."""
    client = get_redis()
    now_ms = int(time.time() * 1000)
    found: list[tuple[int, str, int]] = []
    keys = [key.decode() for key in client.scan_iter(match="oo:{a*}:slots:t:*", count=500)]
    pipe = client.pipeline(transaction=False)
    for key in keys[:limit]:
        pipe.zcount(key, f"({now_ms}", "+inf")
    for key, count in zip(keys[:limit], pipe.execute(), strict=True):
        account, _, tool = key.removeprefix("oo:{a").partition("}:slots:t:")
        if count and account.isdigit():
            found.append((int(account), tool, int(count)))
    return sorted(found)
