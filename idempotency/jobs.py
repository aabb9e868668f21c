"""The job-handler registry of keyed runs (docs/architecture.md §2.3, §7.6): project-defined Python callables
keyed by name.

A key-form ``/v1/ai/run`` whose ``metadata.task`` names a registered handler runs it once, in a worker::

    from idempotency.jobs import JobContext, handler

    @handler("reports.daily_summary")
    def daily_summary(ctx: JobContext) -> dict:
        # ctx.key is stable across retries of this run: pass it as the idempotency key of external calls.
        total = billing_api.summarise(day=ctx.params["day"], idempotency_key=ctx.key)
        ctx.event("note", message="summary computed", data={"total": total})
        return {"total": total}

Put handlers in a module listed in ``ONCEONLY_JOB_HANDLER_MODULES`` (imported when the app starts, in web and
worker processes alike). A handler returns a JSON object (anything else is wrapped as ``{"value": "<str>"}``);
an exception fails the run with ``handler_error``. A worker that dies mid-run is replaced once its claim lapses,
so a handler can start more than once for one run — its result is written exactly once, and external calls made
with ``ctx.key`` can be deduplicated by the receiving side.

``governance`` fills in the action executor (``metadata.actions`` run through the governed call): this module
never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from onceonly_site.identifiers import REGISTERED_NAME

# A handler's name: 1–200 ASCII letters, digits or `_ . : -`, like a registered tool's (`\Z`: no final newline).
NAME = REGISTERED_NAME


@dataclass
class JobContext:
    """What a handler gets: the run's identity, its input, and a way to write timeline events."""

    account_id: int
    key: str
    run_id: str
    params: dict[str, Any]
    attempt: int
    emit: Callable[..., Any] | None = None
    still_holding: Callable[[], bool] = lambda: True

    def event(self, type: str, **fields: Any) -> None:
        """Add an event to this run's timeline (``status``, ``step``, ``tool``, ``message``, ``data``)."""
        if self.emit is not None:
            self.emit(type, **fields)


Handler = Callable[[JobContext], Any]
_handlers: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the job handler called ``name`` (letters, digits, ``_ . : -``)."""
    if not NAME.match(name):
        raise ValueError(f"invalid job handler name {name!r}")

    def register(fn: Handler) -> Handler:
        existing = _handlers.get(name)
        if existing is not None and existing is not fn and existing.__qualname__ != fn.__qualname__:
            raise ValueError(f"job handler {name!r} is already registered to {existing.__module__}.{existing.__name__}")
        _handlers[name] = fn
        return fn

    return register


def get_handler(name: str) -> Handler | None:
    return _handlers.get(name)


def handler_names() -> list[str]:
    return sorted(_handlers)


@dataclass
class ActionOutcome:
    """One action of a run as the governance pipeline decided it."""

    decision: str  # executed | allowed | blocked | dedup | failed
    allowed: bool
    policy_reason: str | None
    decision_id: int | None
    result: Any = None
    error: str = ""  # usage_limit | tool_not_found when the call was refused before a decision
    explain: dict[str, Any] | None = None  # what the rule saw (a per-run cap's numbers)


class ActionExecutor(Protocol):
    def __call__(
        self,
        *,
        account_id: int,
        agent_id: str,
        tool: str,
        args: dict[str, Any],
        spend_usd: float | None,
        run_id: str,
        dry_run: bool,
        run_caps: dict[str, Any] | None = None,
    ) -> ActionOutcome: ...


_executor: list[ActionExecutor] = []


def set_action_executor(executor: ActionExecutor) -> None:
    _executor[:] = [executor]


def action_executor() -> ActionExecutor | None:
    return _executor[0] if _executor else None
