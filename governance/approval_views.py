"""The Approvals pages (docs/approvals.md): the queue and one approval, where admins and owners approve or deny.

The queue is a data table (onceonly_site/tables.py) per tab — pending, decided (approved, denied, used), expired or
superseded — with search, agent/tool/status facets, sort and pages. An approval's page shows the call (its args
while it is pending), the rule that asked for it, the decisions that asked for and used it, and who decided, when
and why; editors on a plan with governance get the Approve and Deny forms. Viewers look."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing.choices import EDITOR_ROLES
from billing.selectors import current_membership, editor_membership
from governance import approval_selectors as selectors
from governance import approvals, display
from governance.choices import RiskLevel
from governance.forms import ApprovalDecisionForm
from governance.models import Approval
from onceonly_site.tables import Column, Facet, Table

Status = Approval.Status

# The badge in the main navigation (onceonly_site/navigation.py) and its count's listeners; idempotent, and also
# called by the app's ready() where it is wired there.
selectors.register()

# Badge colours of each effective status (static/css/app.css).
BADGES: dict[str, str] = {
    Status.PENDING: "badge-warn",
    Status.APPROVED: "badge-on",
    Status.DENIED: "badge-off",
    Status.CONSUMED: "badge-completed",
    Status.EXPIRED: "badge-expired",
    Status.SUPERSEDED: "badge-muted",
}
LABELS: dict[str, str] = {str(value): str(label) for value, label in Status.choices}


def _status_facet(tab: selectors.Tab) -> Facet:
    def apply(queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(selectors.status_q(value, timezone.now()))

    choices = (("", "any"), *((s, LABELS[s].lower()) for s in tab.statuses))
    return Facet("status", "Status", apply=apply, choices=choices)


def _risk_is(queryset: QuerySet, value: str) -> QuerySet:
    return queryset.filter(risk_level=value)


def _table(tab: selectors.Tab) -> Table:
    columns = [
        Column("tool", "Tool", ("tool",)),
        Column("agent", "Agent", ("agent__agent_id",)),
        Column("risk", "Risk", ("risk_level",)),
        Column("spend", "Spend", ("spend_usd",), first="desc"),
        Column("rule", "Rule"),
        Column("status", "Status", ("status",)),
        Column("created", "Requested", ("created_at",), first="desc"),
        Column("expires", "Expires", ("expires_at",)),
    ]
    if tab.key != "pending":
        columns.append(Column("decided", "Decided", ("decided_at",), first="desc", nulls_last=True))
    columns.append(Column("decisions", "Decisions"))
    facets = [
        Facet("agent", "Agent", lookup="agent__agent_id__icontains", hint="contains"),
        Facet("tool", "Tool", lookup="tool__icontains", hint="contains"),
    ]
    if len(tab.statuses) > 1:
        facets.append(_status_facet(tab))
    facets.append(Facet("risk", "Risk", apply=_risk_is, choices=(("", "any"), *RiskLevel.choices)))
    return Table(
        columns=columns,
        # Pending: the one expiring first on top; the others newest first.
        default_sort="expires" if tab.key == "pending" else "-created",
        noun=("approval", "approvals"),
        search=["tool", "agent__agent_id", "public_id", "run_id", "decided_by", "reason"],
        search_hint="tool, agent, approval or run id, approver, reason",
        facets=facets,
        keep=["tab"],
    )


TABLES = {key: _table(tab) for key, tab in selectors.TABS.items()}
EMPTY = {
    "pending": "No approval is waiting for a decision.",
    "decided": "No approval has been decided yet.",
    "closed": "No approval has expired or been superseded.",
}


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    """The queue: tabs with their counts (one query), the tab's table (facet suggestions, count, page). The pending
    count also refreshes the navigation's badge."""
    account = current_membership(request).account
    now = timezone.now()
    tab = request.GET.get("tab") or "pending"
    if tab not in selectors.TABS:
        tab = "pending"
    counts = selectors.tab_counts(account.pk, now)
    selectors.remember_pending(account.pk, counts["pending"])
    table = TABLES[tab].bind(request, suggestions=selectors.suggestions(account.pk))
    queryset = selectors.account_approvals(account.pk).filter(selectors.TABS[tab].condition(now))
    page = table.paginate(table.filter(queryset))
    rows = [_row(approval, now) for approval in page]
    tabs = [
        {"key": t.key, "label": t.label, "count": counts[t.key], "current": t.key == tab}
        for t in selectors.TABS.values()
    ]
    return render(
        request,
        "governance/approvals.html",
        {"table": table, "rows": rows, "tab": tab, "tabs": tabs, "empty": EMPTY[tab]},
    )


def _row(approval: Approval, now) -> dict:
    status = selectors.effective_status(approval, now)
    return {
        "a": approval,
        "status": status,
        "status_label": LABELS[status].lower(),
        "badge": BADGES[status],
        "rule": selectors.rule_text(approval.rule),
        "open": status in (Status.PENDING, Status.APPROVED),
    }


def _detail(request: HttpRequest, approval: Approval, form: ApprovalDecisionForm | None = None, status: int = 200):
    membership = current_membership(request)
    now = timezone.now()
    row = _row(approval, now)
    preview = approvals.args_preview(approval) if row["status"] == Status.PENDING else None
    can_decide = (
        row["status"] == Status.PENDING and membership.role in EDITOR_ROLES and membership.account.plan.has_governance
    )
    failed = form.cleaned_data.get("action") if form is not None and form.errors else None
    return render(
        request,
        "governance/approval.html",
        {
            **row,
            "args": display.dumps(preview) if preview is not None else None,
            "can_decide": can_decide,
            "form": form,
            "failed": failed,
            "reason_value": form.data.get("reason", "") if form is not None else "",
        },
        status=status,
    )


@login_required
@require_GET
def detail(request: HttpRequest, public_id: str) -> HttpResponse:
    approval = selectors.approval_for_account(current_membership(request).account_id, public_id)
    return _detail(request, approval)


@login_required
@require_POST
def decide(request: HttpRequest, public_id: str) -> HttpResponse:
    """Approve or deny (editors, on a plan with governance). A reason is required to deny: without one the page is
    shown again (422), nothing decided. Decided meanwhile (by someone else, used, expired, superseded): said so."""
    account = editor_membership(request).account
    approval = selectors.approval_for_account(account.pk, public_id)
    if not account.plan.has_governance:
        raise PermissionDenied(f"Approvals are not on the {account.plan.name} plan (Usage & plan).")
    form = ApprovalDecisionForm(request.POST)
    if not form.is_valid():
        return _detail(request, approval, form, status=422)
    approve = form.cleaned_data["action"] == "approve"
    try:
        decided = approvals.decide(
            account_id=account.pk,
            public_id=approval.public_id,
            approve=approve,
            reason=form.cleaned_data["reason"],
            actor=request.user.get_username(),
        )
    except approvals.NotFound:
        raise Http404("No such approval in this account.") from None
    except approvals.NotPending as late:
        label = LABELS[selectors.effective_status(late.approval, timezone.now())].lower()
        by = f" by {late.approval.decided_by}" if late.approval.decided_by else ""
        messages.info(request, f"Nothing changed: this approval was already {label}{by}.")
        return redirect("governance:approval", public_id=approval.public_id)
    if approve:
        messages.success(
            request,
            f"Approved. The agent's identical retry of {decided.tool} runs once (until "
            f"{decided.expires_at:%Y-%m-%d %H:%M} UTC); the policy's caps are checked then.",
        )
    else:
        messages.success(request, f"Denied. The agent's retries of this {decided.tool} call are answered your reason.")
    return redirect("governance:approval", public_id=approval.public_id)
