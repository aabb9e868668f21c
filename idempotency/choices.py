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
