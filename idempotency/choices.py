from django.db import models


class LeaseStatus(models.TextChoices):
    """Stored state of a lease record. "absent" and "expired" are derived, never stored."""

    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class AttemptOutcome(models.TextChoices):
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired (holder stopped heart-beating)"
    RESET = "reset", "Reset by an operator"


class RunStatus(models.TextChoices):
    """A keyed run (key form of /v1/ai/run): queued until a worker claims it, running while claimed, waiting for an
    approval when an action needs one (no worker holds it then; docs/runs.md §"Runs that wait for an approval")."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
    # An action met a per-run cap: no worker holds the run until an operator raises the cap and resumes it
    # (docs/runs.md §"Runs that pause at a cap").
    PAUSED = "paused", "Paused at a cap"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"


class RunError(models.TextChoices):
    """Why a run failed (the lease's error_code)."""

    POLICY_BLOCKED = "policy_blocked", "An action was blocked by the agent's policy"
    TOOL_ERROR = "tool_error", "A dispatched tool failed"
    TOOL_NOT_FOUND = "tool_not_found", "An action named an unregistered tool (strict mode)"
    USAGE_LIMIT = "usage_limit", "The monthly ai quota ran out"
    HANDLER_NOT_FOUND = "handler_not_found", "No job handler of that name (strict mode)"
    HANDLER_ERROR = "handler_error", "The job handler raised an exception"
    TIMEOUT = "timeout", "The run did not finish before its deadline"
    LEASE_LOST = "lease_lost", "The key's lease was reset or taken over before the run finished"
    FEATURE_NOT_AVAILABLE = "feature_not_available", "The account's plan no longer includes governance"
    APPROVAL_DENIED = "approval_denied", "A person denied the approval an action needed"
    APPROVAL_EXPIRED = "approval_expired", "An action's approval expired (or its policy changed) before it was approved"
    RUN_CAP_EXCEEDED = "run_cap_exceeded", "The run paused at a per-run cap and was not resumed in time"
