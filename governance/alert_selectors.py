"""Reads of the alerts feed (docs/governance.md §"Budget alerts"): the account's alerts newest first — budget
thresholds crossed, detectors that fired, keyed runs paused at a cap — for the Alerts page, the Overview's panel
and ``GET /v1/alerts``. Every read is scoped to one account and uses the (account, -created_at, -id) index."""

from __future__ import annotations

from django.db.models import QuerySet

from governance.models import Agent, Alert

OVERVIEW_SHOWN = 5


def account_alerts(account_id: int) -> QuerySet[Alert]:
    """The account's alerts with their agents (one query per page)."""
    return Alert.objects.filter(account_id=account_id).select_related("agent")


def agent_suggestions(account_id: int) -> list[str]:
    """Agent ids for the feed's agent filter: the account's agents (the small table; one query)."""
    return list(
        Agent.objects.filter(account_id=account_id).order_by("agent_id").values_list("agent_id", flat=True)[:100]
    )


def latest(account_id: int, shown: int = OVERVIEW_SHOWN) -> list[Alert]:
    """The newest few, for the Overview (one query)."""
    return list(account_alerts(account_id).order_by("-created_at", "-id")[:shown])


def alerts_page(
    account_id: int, *, kind: str | None, agent_id: str | None, limit: int, offset: int
) -> tuple[list[Alert], int]:
    """One page of ``GET /v1/alerts``, newest first, and how many match (two queries; none for the page when
    nothing matches)."""
    rows = Alert.objects.filter(account_id=account_id)
    if kind is not None:
        rows = rows.filter(kind=kind)
    if agent_id is not None:
        rows = rows.filter(agent__agent_id=agent_id)
    total = rows.count()
    page = list(rows.select_related("agent").order_by("-created_at", "-id")[offset : offset + limit]) if total else []
    return page, total
