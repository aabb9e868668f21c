"""The overview's keyed-runs panel: runs in progress and the failures of the last 24 hours."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from billing.models import Account
from idempotency import selectors

SHOWN = 5


def runs_panel(account: Account) -> dict[str, Any] | None:
    running = selectors.runs_in_progress(account, SHOWN)
    failed = selectors.recent_failed_runs(account, timezone.now() - timedelta(hours=24), SHOWN)
    return {"template": "idempotency/_runs_panel.html", "running": running, "failed": failed}
