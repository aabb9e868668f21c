"""The Locks & leases pages: look up a key in both keyspaces, list active and finished leases, and (owners and
admins) release a lock or reset a lease with a reason. The Runs pages: keyed runs and live run timelines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing.selectors import current_membership, editor_membership, operator
from idempotency import selectors, services
from idempotency.choices import LeaseStatus, RunStatus
from idempotency.forms import KeyLookupForm, OperatorResetForm, RunTimelineForm
from onceonly_site import export
from onceonly_site.params import whole_number
from onceonly_site.tables import BoundTable, Column, Facet, Table

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from billing.models import Account

PER_PAGE = 25
TABS = {
    "active": ("Active leases", selectors.active_leases),
    "finished": ("Completed, failed and cancelled", selectors.finished_leases),
    "locks": ("Check-locks", selectors.recent_locks),
}


def _lock_status(queryset, value):
    now = timezone.now()
    return queryset.filter(expires_at__gt=now) if value == "locked" else queryset.filter(expires_at__lte=now)


_LEASE_COLUMNS = [
    Column("key", "Key", ("key",)),
    Column("status", "Status", ("status",)),
    Column("version", "Version", ("version",)),
    Column("updated", "Updated", ("updated_at",), first="desc"),
]
_FINISHED = (LeaseStatus.COMPLETED, LeaseStatus.FAILED, LeaseStatus.CANCELLED)
LIST_TABLES = {
    "active": Table(
        columns=[*_LEASE_COLUMNS, Column("left", "TTL left", ("expires_at",))],
        default_sort="-updated",
        noun=("active lease", "active leases"),
        search=["key"],
        search_hint="key",
        keep=["tab"],
    ),
    "finished": Table(
        columns=[*_LEASE_COLUMNS, Column("error", "Error code", ("error_code",))],
        default_sort="-updated",
        noun=("lease", "leases"),
        search=["key"],
        search_hint="key",
        keep=["tab"],
        facets=[Facet("status", "Status", lookup="status", choices=(("", "any"), *((s, s) for s in _FINISHED)))],
    ),
    "locks": Table(
        columns=[
            Column("key", "Key", ("key",)),
            Column("seen", "First seen", ("first_seen_at",), first="desc"),
            Column("ttl", "TTL", ("ttl_seconds",)),
            Column("status", "Status", ("expires_at",)),
        ],
        default_sort="-seen",
        noun=("check-lock", "check-locks"),
        search=["key"],
        search_hint="key",
        keep=["tab"],
        facets=[
            Facet(
                "status",
                "Status",
                apply=_lock_status,
                choices=(("", "any"), ("locked", "locked"), ("expired", "expired")),
            )
        ],
    ),
}


def _pretty(value: object) -> str | None:
    return None if value is None else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@login_required
@require_GET
def locks(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    now = timezone.now()
    lookup = None
    form = KeyLookupForm(request.GET if "key" in request.GET else None)  # a list's ?tab=/?q= is no empty lookup
    if request.GET.get("key") is not None and form.is_valid():
        key = form.cleaned_data["key"]
        lock = selectors.lock_for_account(account, key)
        lease = selectors.lease_for_account(account, key)
        lookup = {
            "key": key,
            "lock": lock,
            "lock_live": lock is not None and lock.expires_at > now,
            "lock_metadata": _pretty(lock.metadata) if lock else None,
            "lease": lease,
            "lease_status": lease.visible_status(now) if lease else None,
            "lease_result": _pretty(lease.result) if lease else None,
            "lease_metadata": _pretty(lease.metadata) if lease else None,
            "reset_form": OperatorResetForm(initial={"key": key}),
        }
    tab = request.GET.get("tab") or "active"
    if tab not in TABS:
        tab = "active"
    title, selector = TABS[tab]
    table = LIST_TABLES[tab].bind(request)
    table.paginate(table.filter(selector(account)))
    return render(
        request,
        "idempotency/locks.html",
        {
            "form": form,
            "lookup": lookup,
            "tab": tab,
            "tabs": {k: v[0] for k, v in TABS.items()},
            "tab_title": title,
            "table": table,
            "now": now,
            "api_base_url": request.build_absolute_uri("/v1"),
        },
    )


def _back_to(key: str) -> HttpResponse:
    return redirect(f"{reverse('idempotency:locks')}?{urlencode({'key': key})}")


class OperatorAction(Protocol):
    """``services.lock_release`` and ``services.lease_reset``: an audited operator action on one key; False when
    there was nothing to act on."""

    def __call__(self, *, account: Account, key: str, reason: str, actor: User) -> bool: ...


def _operator_action(request: HttpRequest, action: OperatorAction, done: str, nothing: str) -> HttpResponse:
    account = editor_membership(request).account
    form = OperatorResetForm(request.POST)
    if not form.is_valid():
        key = request.POST.get("key", "")
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, str(error))  # ErrorList yields each message as a str
        return _back_to(key)
    key, reason = form.cleaned_data["key"], form.cleaned_data["reason"]
    if action(account=account, key=key, reason=reason, actor=operator(request)):
        messages.success(request, done)
    else:
        messages.info(request, nothing)
    return _back_to(key)


@login_required
@require_POST
def lock_release(request: HttpRequest) -> HttpResponse:
    return _operator_action(
        request,
        services.lock_release,
        "Lock released: the next check-lock on this key locks.",
        "The lock had already expired; nothing to release.",
    )


@login_required
@require_POST
def lease_reset(request: HttpRequest) -> HttpResponse:
    return _operator_action(
        request,
        services.lease_reset,
        "Lease reset: the next lease on this key acquires; the old holder gets 409.",
        "There is no lease for this key.",
    )


# --- Runs and run timelines -----------------------------------------------------------------------------------

TIMELINE_PAGE = 500
LIVE_POLL_SECONDS = 2


RUNS_TABLE = Table(
    columns=[
        Column("run", "Run", ("run_id",)),
        Column("key", "Key", ("key",)),
        Column("status", "Status", ("status",)),
        Column("agent", "Agent", ("agent_id",)),
        Column("task", "Task", ("task",)),
        Column("started", "Started", ("created_at",), first="desc"),
        Column("duration", "Duration"),
        Column("result", "Result or error"),
    ],
    default_sort="-started",
    noun=("run", "runs"),
    search=["key", "run_id", "task"],
    search_hint="key, run id or task",
    facets=[
        Facet("status", "Status", lookup="status", choices=(("", "any"), *RunStatus.choices)),
        Facet("run", "Run id", lookup="run_id__icontains", hint="contains"),
        Facet("agent", "Agent", lookup="agent_id__icontains", hint="contains"),
    ],
)


@login_required
@require_GET
def runs(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    table = RUNS_TABLE.bind(request, suggestions={"agent": selectors.recent_run_agents(account)})
    table.paginate(table.filter(selectors.runs_for_account(account)))
    return render(request, "idempotency/runs.html", {"table": table, "export_url": reverse("idempotency:runs-export")})


# A run's export (docs/api.md §"Exports"): what the Runs table shows, never its params or actions (they carry the
# job's and tools' arguments) nor its result.
RUN_EXPORT_COLUMNS = [
    export.Column("run_id", "run_id"),
    export.Column("key", "key"),
    export.Column("lease_version", "lease_version"),
    export.Column("status", "status"),
    export.Column("agent_id", "agent_id"),
    export.Column("task", "task"),
    export.Column("dry_run", "dry_run"),
    export.Column("created_at", "created_at"),
    export.Column("started_at", "started_at"),
    export.Column("finished_at", "finished_at"),
    export.Column("actions_done", "actions_done"),
    export.Column("error_code", "error_code"),
    export.Column("error_message", "error_message"),
]
# A timeline's events, without their data and extra (a client's free-form JSON, which may hold arguments) and the
# lease id (the holder's credential).
RUN_EVENT_EXPORT_COLUMNS = [
    export.Column("id", "id"),
    export.Column("run_id", "run_id"),
    export.Column("ts", "ts"),
    export.Column("type", "type"),
    export.Column("status", "status"),
    export.Column("step", "step"),
    export.Column("tool", "tool"),
    export.Column("message", "message"),
    export.Column("duration_ms", "duration_ms"),
    export.Column("req_id", "req_id"),
    export.Column("agent_id", "agent_id"),
    export.Column("decision_id", "decision_id"),
    export.Column("source", "source"),
]


def runs_export_source(account: Account, params: QueryDict) -> export.Source:
    """The Runs table's rows for an export, with its search and filters, in start order (the Started column's
    direction; other sorts are not kept by an export)."""
    table = BoundTable(RUNS_TABLE, params, {})
    queryset = table.filter(selectors.runs_for_account(account))
    descending = table.descending if table.sort_key == "started" else True
    return export.Source("runs", queryset, RUN_EXPORT_COLUMNS, ("created_at", "id"), descending, table.errors)


def run_events_export_source(account: Account, run_id: str) -> export.Source:
    """One timeline's events in the order they were written, as the timeline page shows them."""
    events = selectors.timeline_events(account, run_id)
    return export.Source("run-events", events, RUN_EVENT_EXPORT_COLUMNS, ("id",), descending=False)


def _export_format(request: HttpRequest) -> str:
    fmt = request.GET.get("format", "csv")
    if fmt not in export.FORMATS:
        raise Http404("Export formats: csv, jsonl.")
    return fmt


@login_required
@require_GET
def runs_export(request: HttpRequest) -> StreamingHttpResponse:
    """The Runs page's Export button: the runs its filters show, streamed (any role)."""
    account = current_membership(request).account
    fmt = _export_format(request)
    return export.stream(runs_export_source(account, request.GET), account_id=account.pk, fmt=fmt)


@login_required
@require_GET
def run_timeline_export(request: HttpRequest) -> HttpResponseBase:
    """The timeline page's Export button: its events (an invalid run id: the timeline page's 400)."""
    account = current_membership(request).account
    fmt = _export_format(request)
    form = RunTimelineForm(request.GET)
    if not form.is_valid():
        return render(request, "idempotency/run_timeline.html", {"form": form}, status=400)
    source = run_events_export_source(account, form.cleaned_data["run_id"])
    return export.stream(source, account_id=account.pk, fmt=fmt)


def _stop_polling(response: HttpResponse) -> HttpResponse:
    response.status_code = 286  # htmx: swap this response, then stop polling
    return response


@login_required
@require_GET
def run_timeline(request: HttpRequest) -> HttpResponse:
    """One timeline: the runs that wrote to it and its events in order; htmx polls ``?after=<event id>`` for new
    events while a run is queued or running, and stops once every run has finished."""
    account = current_membership(request).account
    form = RunTimelineForm(request.GET or None)
    if not form.is_valid():
        return render(request, "idempotency/run_timeline.html", {"form": form}, status=400 if request.GET else 200)
    run_id = form.cleaned_data["run_id"]
    found = selectors.runs_with_run_id(account, run_id)
    live = any(not run.is_finished for run in found)
    after = whole_number(request.GET.get("after", ""))
    if after is not None:
        rows = selectors.timeline_page(account, run_id, after=after, limit=TIMELINE_PAGE)
        response = render(request, "idempotency/_timeline_poll.html", {"events": rows, "runs": found, "live": live})
        return response if live else _stop_polling(response)
    rows = selectors.timeline_page(account, run_id, limit=TIMELINE_PAGE)
    return render(
        request,
        "idempotency/run_timeline.html",
        {
            "form": form,
            "run_id": run_id,
            "runs": found,
            "events": rows,
            "live": live,
            "newest": rows[-1].pk if rows else 0,
            "more": len(rows) == TIMELINE_PAGE,
            "poll_seconds": LIVE_POLL_SECONDS,
            "poll_query": urlencode({"run_id": run_id}),
            "export_url": reverse("idempotency:run-timeline-export"),
            "export_params": [("run_id", run_id)],
        },
    )
