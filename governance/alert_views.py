"""The Alerts page (docs/governance.md §"Budget alerts"): the notifications feed — budget thresholds crossed,
detectors that fired (and agents they contained), keyed runs paused at a cap — newest first, a data table
(onceonly_site/tables.py) with kind and agent filters, search in the messages and pages. Every role reads it."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing.selectors import current_membership
from governance import alert_selectors as selectors
from governance.choices import AlertKind
from governance.models import Alert
from onceonly_site.tables import Column, Facet, Table, exact

BADGES: dict[str, str] = {
    AlertKind.BUDGET: "badge-warn",
    AlertKind.DETECTOR: "badge-off",
    AlertKind.RUN_PAUSED: "badge-muted",
}


def _kind_is(queryset: QuerySet, value: str) -> QuerySet:
    return queryset.filter(kind=value)


def _agent_is(queryset: QuerySet, value: str) -> QuerySet:
    """``agent=bot`` contains, ``agent==bot`` is exactly bot (the Overview's links)."""
    whole = exact(value)
    if whole is not None:
        return queryset.filter(agent__agent_id=whole)
    return queryset.filter(agent__agent_id__icontains=value)


TABLE = Table(
    columns=[
        Column("created", "Time", ("created_at",), first="desc"),
        Column("kind", "Kind", ("kind",)),
        Column("agent", "Agent", ("agent__agent_id",)),
        Column("code", "What", ("code",)),
        Column("message", "Message"),
    ],
    default_sort="-created",
    noun=("alert", "alerts"),
    search=["message", "code"],
    search_hint="message, metric or detector",
    facets=[
        Facet("kind", "Kind", apply=_kind_is, choices=(("", "any"), *AlertKind.choices)),
        Facet("agent", "Agent", apply=_agent_is, hint="contains; =id for exactly"),
    ],
)


@login_required
@require_GET
def feed(request: HttpRequest) -> HttpResponse:
    """The feed (session, user, membership; agent suggestions, count, page: six queries whatever it holds)."""
    account = current_membership(request).account
    table = TABLE.bind(request, suggestions={"agent": selectors.agent_suggestions(account.pk)})
    page = table.paginate(table.filter(selectors.account_alerts(account.pk)))
    rows = [_row(alert) for alert in page]
    return render(request, "governance/alerts.html", {"table": table, "rows": rows})


def _row(alert: Alert) -> dict:
    return {"a": alert, "badge": BADGES.get(alert.kind, "badge-muted"), "kind_label": alert.get_kind_display()}
