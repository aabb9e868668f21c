from django.db import models


class Outcome(models.TextChoices):
    """What the governed call decided (docs/architecture.md §7.3)."""

    EXECUTED = "executed", "Executed"  # dispatched to a registered tool, 2xx
    ALLOWED = "allowed", "Allowed"  # permit-only: no registered tool to dispatch to
    BLOCKED = "blocked", "Blocked"
    DEDUP = "dedup", "Deduplicated"
    FAILED = "failed", "Failed"  # dispatched, the tool failed after retries


class Reason(models.TextChoices):
    """policy_reason vocabulary (docs/architecture.md §7.3)."""

    WITHIN_BUDGET = "within_budget"
    AGENT_DISABLED = "agent_disabled"
    TOOL_BLOCKED = "tool_blocked"
    TOOL_NOT_ALLOWED = "tool_not_allowed"
    TOOL_DISABLED = "tool_disabled"
    HOURLY_ACTION_LIMIT_EXCEEDED = "hourly_action_limit_exceeded"
    TOOL_CALL_LIMIT_EXCEEDED = "tool_call_limit_exceeded"
    DAILY_SPEND_EXCEEDED = "daily_spend_exceeded"
    IDEMPOTENCY_KEY_HIT = "idempotency_key_hit"
    TOOL_ERROR = "tool_error"
    # The server called the tool but stopped (or lost its database) before recording the answer: the sweeper
    # records the dispatch from its intent row, charged, as failed with this reason (docs/operations.md).
    OUTCOME_UNKNOWN = "outcome_unknown"
    # The policy's require_approval names the call: a person must approve this exact call first (docs/approvals.md).
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_DENIED = "approval_denied"
    # Per-run caps (docs/governance.md §"Per-run caps"): the policy's max_*_per_run for calls of one run id.
    RUN_ACTION_LIMIT_EXCEEDED = "run_action_limit_exceeded"
    RUN_SPEND_EXCEEDED = "run_spend_exceeded"
    RUN_TOOL_CALL_LIMIT_EXCEEDED = "run_tool_call_limit_exceeded"
    RUN_TIME_EXCEEDED = "run_time_exceeded"


class RiskLevel(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


# Outcomes that consumed budget (spend, hourly actions, per-tool calls): the ledger the Redis counters are rebuilt
# from. A failed dispatch keeps its spend (docs/architecture.md §7.3).
CHARGED_OUTCOMES = (Outcome.EXECUTED, Outcome.ALLOWED, Outcome.FAILED)


# The per-run caps' reasons: a keyed run that meets one pauses instead of failing (idempotency/runs.py).
RUN_CAP_REASONS = (
    Reason.RUN_ACTION_LIMIT_EXCEEDED,
    Reason.RUN_SPEND_EXCEEDED,
    Reason.RUN_TOOL_CALL_LIMIT_EXCEEDED,
    Reason.RUN_TIME_EXCEEDED,
)


class AlertKind(models.TextChoices):
    """What raised an alert (docs/governance.md §"Budget alerts", §"Containment detectors")."""

    BUDGET = "budget", "Budget threshold"
    DETECTOR = "detector", "Detector"
    RUN_PAUSED = "run_paused", "Run paused at a cap"


class AlertMode(models.TextChoices):
    """What a detector (or a threshold) does when it fires: tell (alert), or tell and stop the agent (contain)."""

    ALERT = "alert", "Alert"
    CONTAIN = "contain", "Contain"
