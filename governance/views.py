"""Governance pages: agents, agent detail (charts, kill switch), policy editor (history, diff, rollback), decision
timeline (filters, live updates), operator audit log, decision-log verification. Viewers look; editors change."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, DecimalField, IntegerField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from billing.models import AuditEntry
from billing.selectors import current_membership, editor_membership
from governance import (
    detectors,
    display,
    explain,
    mcp_views,
    overview,
    panels,
    policies,
    policy_review,
    selectors,
    services,
    shadow,
    slots,
    tools,
)
from governance.choices import CHARGED_OUTCOMES, Outcome, Reason
from governance.forms import (
    DENY_ALL_LABEL,
    MAX_VERSION,
    PolicyForm,
    ReasonForm,
    TestCallForm,
    ToolForm,
    sample_args,
)
from governance.models import Agent, Decision, DecisionRollup, PolicyVersion, Tool
from onceonly_site import export
from onceonly_site.identifiers import normalise_tool
from onceonly_site.params import whole_number
from onceonly_site.tables import BoundTable, Column, Facet, Table, capped_count, exact, keyset_page

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    class HtmxHttpRequest(HttpRequest):
        """A request as django_htmx's HtmxMiddleware (settings.MIDDLEWARE) leaves it."""

        htmx: HtmxDetails


PER_PAGE = 25
TIMELINE_PAGE = 50


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


AGENT_STATES = (
    ("", "any state"),
    ("over", "over a cap"),
    ("near", "near a cap"),
    ("disabled", "disabled"),
    ("ungoverned", "ungoverned"),
    ("failing", "calling a failing tool"),
)
AGENTS_TABLE = Table(
    columns=[
        Column("agent", "Agent", ("agent_id",)),
        Column("status", "Status", ("is_enabled",)),
        Column("policy", "Policy", ("policy_version",), nulls_last=True),
        Column("spend", "Spend today", ("spent_today",), first="desc"),  # annotated by _with_usage
        Column("actions", "Charged actions (1 h)", ("actions_hour",), first="desc"),
        Column("last", "Last decision", ("last_ts",), first="desc", nulls_last=True),
    ],
    default_sort="agent",
    noun=("agent", "agents"),
    search=["agent_id"],
    search_hint="agent id",
    facets=[Facet("state", "State", choices=AGENT_STATES)],
)


def _agents_in_state(account_id: int, queryset, state: str, now):
    """The Agents quick filters. Over/near a cap: the cap state of every capped agent (three queries whatever their
    number: agents, today's rollups, the last hour's charged decisions); failing: agents that called a failing tool
    in the last hour (one query for the failing tools, then a subquery)."""
    if state == "disabled":
        return queryset.filter(is_enabled=False)
    if state == "ungoverned":
        return queryset.filter(policy_version__isnull=True)
    if state == "failing":
        names = list(selectors.failing_tools(account_id, now))
        called = Decision.objects.filter(account_id=account_id, ts__gt=now - timedelta(hours=1), tool__in=names)
        return queryset.filter(pk__in=called.values("agent_id"))
    capped = list(selectors.listed_agents(account_id).exclude(policy=None).only("id", "policy"))
    states = selectors.cap_states(account_id, capped, now)
    return queryset.filter(pk__in=[pk for pk, s in states.items() if s.level == state])


USAGE_SORTS = ("spend", "actions")  # the Agents columns sorted by _with_usage's annotations


def _with_usage(account_id: int, queryset, now):
    """The agents with ``spent_today`` and ``actions_hour`` to sort by, counted as selectors.cap_states counts what
    the page shows: today's hourly rollups of charged outcomes (the rollup's (agent, hour, …) unique index) and the
    charged decisions of the rolling hour (the (account, agent, -ts) index); none is 0. Two correlated subqueries
    in the page's own query (and its count): the query count stays the same whatever the number of agents."""
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    spent = (
        DecisionRollup.objects.filter(
            account_id=account_id, agent=OuterRef("pk"), hour__gte=day_start, outcome__in=CHARGED_OUTCOMES
        )
        .order_by()
        .values("agent")
        .annotate(usd=Sum("spend_usd"))
        .values("usd")
    )
    actions = (
        Decision.objects.filter(
            account_id=account_id,
            agent=OuterRef("pk"),
            ts__gt=now - timedelta(hours=1),
            ts__lte=now,
            outcome__in=CHARGED_OUTCOMES,
        )
        .order_by()
        .values("agent")
        .annotate(n=Count("id"))
        .values("n")
    )
    usd = DecimalField(max_digits=16, decimal_places=6)
    return queryset.annotate(
        spent_today=Coalesce(Subquery(spent, output_field=usd), Value(Decimal(0)), output_field=usd),
        actions_hour=Coalesce(Subquery(actions, output_field=IntegerField()), Value(0)),
    )


@login_required
@require_GET
def agents(request: HttpRequest) -> HttpResponse:
    """The Agents table (onceonly_site/tables.py): search, state quick filters, sort, pages; the cap state of the
    page's agents from governance.selectors.cap_states (a fixed number of queries whatever the page holds)."""
    account = current_membership(request).account
    now = timezone.now()
    table = AGENTS_TABLE.bind(request)
    # account + agent: the (account, agent, -ts) index, one row per agent.
    last = Decision.objects.filter(account_id=account.pk, agent=OuterRef("pk")).order_by("-ts", "-id")
    queryset = table.filter(selectors.listed_agents(account.pk)).annotate(
        last_ts=Subquery(last.values("ts")[:1]), last_outcome=Subquery(last.values("outcome")[:1])
    )
    if "state" in table.values:
        queryset = _agents_in_state(account.pk, queryset, table.values["state"], now)
    if table.sort_key in USAGE_SORTS:  # only then: the default page does not count every agent's usage
        queryset = _with_usage(account.pk, queryset, now)
    page = table.paginate(queryset)
    states = selectors.cap_states(account.pk, page, now)
    rows = [{"agent": agent, "cap": states.get(agent.pk), "why": _worst_cap(states.get(agent.pk))} for agent in page]
    return render(request, "governance/agents.html", {"table": table, "rows": rows, "states": AGENT_STATES})


def _worst_cap(state: selectors.CapState | None) -> str:
    """Which cap puts the agent over (or near): "3 of 3 stripe.refund calls today — at the stripe.refund cap…"."""
    if state is None or state.level not in ("over", "near"):
        return ""
    return next((line["text"] for line in overview.cap_lines(state) if line["level"] == state.level), "")


def _series(agent: Agent, range_: str, now) -> dict:
    """Decisions stacked by outcome and spend per bucket (hours of the last day, or days of the last week)."""
    hours = 24 if range_ == "day" else 24 * 7
    start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    rows = DecisionRollup.objects.filter(agent=agent, hour__gte=start).values_list(
        "hour", "outcome", "count", "spend_usd"
    )
    fmt = "%H:00" if range_ == "day" else "%a %d"
    step = timedelta(hours=1) if range_ == "day" else timedelta(days=1)
    first = start if range_ == "day" else start.replace(hour=0)
    labels, keys = [], []
    cursor = first
    while cursor <= now:
        labels.append(cursor.strftime(fmt))
        keys.append(cursor)
        cursor += step
    counts: dict[str, list[int]] = {o: [0] * len(keys) for o in Outcome.values}
    spend = [0.0] * len(keys)
    for hour, outcome, count, usd in rows:
        index = int((hour - first) / step)
        if 0 <= index < len(keys):
            counts[outcome][index] += count
            if outcome in CHARGED_OUTCOMES:
                spend[index] += float(usd)
    if range_ == "day":  # spend since 00:00 UTC, hour by hour: what the daily cap is compared with
        running = 0.0
        for index, key in enumerate(keys):
            running = (0.0 if key.hour == 0 else running) + spend[index]
            spend[index] = running
    return {
        "labels": labels,
        "counts": counts,
        "spend": spend,
        "cumulative": range_ == "day",
        "cap": (agent.policy or {}).get("max_spend_usd_per_day"),
    }


@login_required
@require_GET
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    account = current_membership(request).account
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    now = timezone.now()
    range_ = request.GET.get("range") or "day"
    if range_ not in ("day", "week"):
        range_ = "day"
    metrics = selectors.agent_metrics(account.pk, agent.agent_id, range_, now)
    # account + agent: the (account, agent, -ts) index, newest first — no sort of the agent's whole history.
    recent = Decision.objects.filter(account_id=account.pk, agent=agent).order_by("-ts", "-id")[:20]
    caps = selectors.cap_states(account.pk, [agent], now)[agent.pk]
    lines = overview.cap_lines(caps)
    worst = max(lines, key=lambda line: ({"over": 2, "near": 1}.get(line["level"], 0), line["pct"] or 0), default=None)
    return render(
        request,
        "governance/agent_detail.html",
        {
            "agent": agent,
            "containment": detectors.containment_of(agent),  # a query only when a detector stopped it
            "metrics": metrics,
            "recent": recent,
            "range": range_,
            "chart": _series(agent, range_, now),
            "reason_form": ReasonForm(),
            "caps": caps,
            "cap_lines": lines,
            "cap_worst": worst,
        },
    )


@login_required
@require_POST
def agent_kill_switch(request: HttpRequest, pk: int) -> HttpResponse:
    account = editor_membership(request).account
    if not account.plan.has_kill_switch and request.POST.get("action") != "enable":
        raise PermissionDenied(f"The kill switch is not on the {account.plan.name} plan (Usage & plan).")
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    form = ReasonForm(request.POST)
    enable = request.POST.get("action") == "enable"
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, str(error))  # ErrorList yields each message as a str
    else:
        try:
            services.agent_set_enabled(
                account_id=account.pk,
                agent_id=agent.agent_id,
                enabled=enable,
                reason=form.cleaned_data["reason"],
                actor=_actor(request),
            )
        except services.AgentContained:
            # Contained by a detector: enabling it is its release (alerts marked, counters reset, audited).
            try:
                detectors.release(
                    account_id=account.pk,
                    agent_id=agent.agent_id,
                    actor=_actor(request),
                    reason=form.cleaned_data["reason"],
                )
            except detectors.NotContained:
                pass  # released meanwhile: it is enabled
        messages.success(request, f"{agent.agent_id} {'enabled' if enable else 'disabled: its next call is blocked'}.")
    return redirect("governance:agent-detail", pk=agent.pk)


# --- the policy editor: every change (save, template, rollback) is reviewed, then confirmed ----------------------
# The first POST of a change validates it and shows the review (governance/policy_review.py: the semantic diff, the
# coloured line diff, the tool lists checked, warnings); nothing is published. Only a second POST with confirm=1
# and the live version that review was computed against publishes, through services.policy_publish's optimistic
# check: a change made meanwhile shows the review again, against the new live policy
# (docs/operations.md §"Governance pages").

_STALE = object()  # a confirm whose version is missing or not a version number: shown again, never published


def _policy_agent(request: HttpRequest, pk: int) -> tuple[Any, Agent]:
    """The account and the agent of a policy change: an editor's, on a plan with policies (else 403)."""
    account = editor_membership(request).account
    agent = selectors.get_agent_for_account(account.pk, pk)
    if not account.plan.has_governance:
        raise PermissionDenied(f"Policies are not on the {account.plan.name} plan (Usage & plan).")
    return account, agent


def _confirmed_against(request: HttpRequest) -> int | object | None:
    """The live version a confirm's review was computed against ("" for an ungoverned agent), or _STALE."""
    raw = request.POST.get("expected_version")
    if raw is None:
        return _STALE
    if raw == "":
        return None
    version = whole_number(raw, MAX_VERSION)
    return _STALE if version is None else version


def _deny_all_chosen(request: HttpRequest) -> bool:
    return forms.BooleanField(required=False).clean(request.POST.get("deny_all"))


class _Change:
    """One change path's two steps: the review, then the confirmed publish."""

    def __init__(self, request: HttpRequest, account: Any, agent: Agent, policy: dict[str, Any], source: str):
        self.request, self.account, self.agent, self.policy, self.source = request, account, agent, policy, source
        self.tools: set[str] | None = None  # the account's known tools, read once per request

    def known(self) -> set[str]:
        if self.tools is None:
            self.tools = services.known_tools(self.account.pk)
        return self.tools

    def review(self, *, stale: str = "", error: str = "") -> dict[str, Any]:
        known = policy_review.known_names(self.account.pk, self.known())
        review = policy_review.review(self.account.pk, self.agent, self.policy, known=known)
        review.update(stale=stale, error=error)
        return review

    def run(self, render: Any, *, success: str) -> HttpResponse:
        """Review, or publish a confirmed change (``success`` said with ``{version}`` of the new version).
        ``render(agent, review, status)`` shows the path's review page."""
        request, agent = self.request, self.agent
        if agent.policy_version is not None and (agent.policy or {}) == self.policy:
            messages.info(
                request, f"No change: version {agent.policy_version} is already this policy. Nothing was published."
            )
            return redirect("governance:policy-edit", pk=agent.pk)
        if request.POST.get("confirm") != "1":
            return render(agent, self.review(), 200)
        expected = _confirmed_against(request)
        if expected is _STALE or expected != agent.policy_version:
            return render(agent, self.review(stale=_stale_note(agent)), 409)
        if self.policy.get("allowed_tools") == [] and not _deny_all_chosen(request):
            return render(agent, self.review(error=DENY_ALL_NEEDED), 422)
        try:
            result = services.policy_publish(
                account_id=self.account.pk,
                agent_id=agent.agent_id,
                policy=self.policy,
                source=self.source,
                actor=_actor(request),
                expected_version=expected,
            )
        except services.StalePolicyEdit:
            self.agent = selectors.get_agent_for_account(self.account.pk, agent.pk)
            return render(self.agent, self.review(stale=_stale_note(self.agent)), 409)
        messages.success(request, success.format(version=result.version))
        for warning in result.warnings[:5]:  # said apart from the success: an unknown tool is no success
            messages.warning(request, f"Warning: {warning['message']}")
        return redirect("governance:policy-edit", pk=agent.pk)


DENY_ALL_NEEDED = (
    f"This policy allows no tool: every call of the agent would be refused. Tick “{DENY_ALL_LABEL}” to publish it "
    "anyway."
)


def _stale_note(agent: Agent) -> str:
    return (
        f"The policy changed meanwhile: it is now version {agent.policy_version or 'none'}. Nothing was published. "
        "The review below is against the policy as it is now: check it, then confirm again."
    )


def _editor_context(account: Any, agent: Agent, form: PolicyForm, tools: set[str] | None = None) -> dict[str, Any]:
    tools = services.known_tools(account.pk) if tools is None else tools
    known = policy_review.known_names(account.pk, tools)
    lists = form.tool_lists()
    chips = {name: policy_review.chips(entries, known) for name, entries in lists.items()}
    return {
        "agent_id": agent.agent_id,
        "agent": agent,
        "form": form,
        "fields": [(field, chips.get(field.name)) for field in form.visible_fields()],
        "known_tools": sorted(tools, key=str.casefold)[:100],
        "known_json": sorted(known.values(), key=str.casefold),
        "templates": {name: json.dumps(body, indent=2) for name, body in policies.TEMPLATES.items()},
    }


def _history(request: HttpRequest, agent: Agent) -> dict[str, Any]:
    versions = list(PolicyVersion.objects.filter(agent=agent).order_by("-version")[:50])
    diff = None
    first, second = whole_number(request.GET.get("a", "")), whole_number(request.GET.get("b", ""))
    # A version asked for by link (a decision's "policy v3", a diff) that is older than the 50 shown: added below them.
    wanted = {n for n in (whole_number(request.GET.get("version", "")), first, second) if n is not None}
    if wanted - {v.version for v in versions} and len(versions) == 50:
        older = PolicyVersion.objects.filter(agent=agent, version__in=wanted, version__lt=versions[-1].version)
        versions += list(older.order_by("-version"))
    if first is not None and second is not None:
        by_version = {v.version: v for v in versions}
        a, b = by_version.get(first), by_version.get(second)
        if a and b:
            diff = {"a": a.version, "b": b.version, "lines": display.diff_lines(a.policy, b.policy)}
    return {"versions": versions, "diff": diff}


@login_required
@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """The policy page: the policy, the editor (editors on a plan with policies), templates, history. A save is
    reviewed first (the review shown above the form, which stays editable), then confirmed."""
    account = current_membership(request).account
    agent = selectors.get_agent_for_account(account.pk, pk)
    if request.method != "POST":
        form = PolicyForm.from_policy(agent.policy, agent.policy_version)
        return _editor_page(request, account, agent, form, None, 200)
    account, agent = _policy_agent(request, pk)
    form = PolicyForm(request.POST)
    if form.is_valid():
        policy = form.cleaned_data["policy"]
        if policy.get("allowed_tools") is not None and not account.plan.has_allowed_tools:
            form.add_error("allowed_tools", f"allowed_tools needs the Agency plan (this account: {account.plan}).")
        else:

            def page(current: Agent, review: dict[str, Any], status: int) -> HttpResponse:
                return _editor_page(request, account, current, form, review, status, change.known())

            change = _Change(request, account, agent, policy, "editor")
            return change.run(page, success="Policy saved as version {version}.")
    return _editor_page(request, account, agent, form, None, 422)


def _editor_page(
    request: HttpRequest,
    account: Any,
    agent: Agent,
    form: PolicyForm,
    review: dict[str, Any] | None,
    status: int,
    tools: set[str] | None = None,
) -> HttpResponse:
    context = {**_editor_context(account, agent, form, tools), **_history(request, agent)}
    context["shadow"] = shadow.panel(agent)
    if review is not None:
        first_step = request.POST.get("confirm") != "1"
        if first_step and form.cleaned_data.get("base_version") != agent.policy_version:
            review["stale"] = (
                f"This policy changed since the editor was opened: it is now version "
                f"{agent.policy_version or 'none'}. The review below is against it — your form would undo "
                "whatever of that change it does not keep."
            )
        context["review"] = review
        context["confirm"] = {
            "action": reverse("governance:policy-edit", args=[agent.pk]),
            "fields": form.carried(),
            "label": f"Confirm: publish version {review['next_version']}",
            "deny_all": bool(form.cleaned_data.get("deny_all")),
            "cancel": reverse("governance:policy-edit", args=[agent.pk]),
        }
    return render(request, "governance/policy_edit.html", context, status=status)


def _confirm_page(request: HttpRequest, agent: Agent, title: str, action: str, fields: list[tuple[str, str]]) -> Any:
    """The review page of a template or a rollback (templates/governance/policy_confirm.html)."""

    def page(current: Agent, review: dict[str, Any], status: int) -> HttpResponse:
        confirm = {
            "action": action,
            "fields": fields,
            "label": f"Confirm: publish version {review['next_version']}",
            "cancel": reverse("governance:policy-edit", args=[current.pk]),
        }
        context = {"agent": current, "agent_id": current.agent_id, "title": title, "review": review, "confirm": confirm}
        return render(request, "governance/policy_confirm.html", context, status=status)

    return page


@login_required
@require_POST
def policy_rollback(request: HttpRequest, pk: int) -> HttpResponse:
    """Roll back to an earlier version (as a new version, source rollback:N): reviewed, then confirmed."""
    account, agent = _policy_agent(request, pk)
    requested = whole_number(request.POST.get("version", ""))
    old = PolicyVersion.objects.filter(agent=agent, version=requested).first() if requested is not None else None
    if old is None:
        messages.error(request, "No such version.")
        return redirect("governance:policy-edit", pk=agent.pk)
    if old.policy.get("allowed_tools") is not None and not account.plan.has_allowed_tools:
        messages.error(request, "That version sets allowed_tools, which needs the Agency plan.")
        return redirect("governance:policy-edit", pk=agent.pk)
    page = _confirm_page(
        request,
        agent,
        f"Roll back to version {old.version}",
        reverse("governance:policy-rollback", args=[agent.pk]),
        [("version", str(old.version))],
    )
    change = _Change(request, account, agent, old.policy, f"rollback:{old.version}")
    return change.run(page, success=f"Rolled back to version {old.version}: now version {{version}}.")


@login_required
@require_POST
def policy_template(request: HttpRequest, pk: int) -> HttpResponse:
    """Apply a built-in template (the whole policy replaced, source template:<name>): reviewed, then confirmed."""
    account, agent = _policy_agent(request, pk)
    name = request.POST.get("template", "")
    if name not in policies.TEMPLATES:
        messages.error(request, f"Unknown template; choose one of {', '.join(policies.TEMPLATES)}.")
        return redirect("governance:policy-edit", pk=agent.pk)
    if policies.TEMPLATES[name].get("allowed_tools") is not None and not account.plan.has_allowed_tools:
        messages.error(request, f"The {name} template sets allowed_tools, which needs the Agency plan.")
        return redirect("governance:policy-edit", pk=agent.pk)
    page = _confirm_page(
        request,
        agent,
        f"Apply the {name} template",
        reverse("governance:policy-template", args=[agent.pk]),
        [("template", name)],
    )
    change = _Change(request, account, agent, policies.merge(policies.TEMPLATES[name], {}), f"template:{name}")
    return change.run(page, success=f"Template {name} applied as version {{version}}.")


OUTCOMES = (("", "any"), *((o, o) for o in Outcome.values))
# Time only sorts, by design: the log is read through the (account, -ts) index (and its per-agent and per-reason
# twins), newest or oldest first, at any depth. An order by tool, agent or spend over a million decisions needs an
# index per column, written on every governed call (the hot path) — so the other columns are facets instead
# (docs/operations.md §"Dashboard tables").
DECISIONS_TABLE = Table(
    columns=[
        Column("time", "Time", ("ts",), first="desc"),
        Column("agent", "Agent"),
        Column("tool", "Tool"),
        Column("outcome", "Decision"),
        Column("reason", "Reason"),
        Column("spend", "Spend"),
        Column("run", "Run"),
    ],
    default_sort="-time",
    sort_note=(
        "the decision log sorts by time only, newest or oldest first (the Time header); "
        "narrow it by agent, tool, outcome or reason with the filters."
    ),
    noun=("decision", "decisions"),
    search_hint="agent or tool",
    facets=[
        Facet("agent", "Agent", hint="contains"),  # resolved to agent ids first (_decision_filters)
        Facet("tool", "Tool", hint="contains"),  # resolved to the tool names called first (_decision_filters)
        Facet("outcome", "Outcome", lookup="outcome", choices=OUTCOMES),
        Facet("reason", "Reason", hint="contains"),  # resolved in the Reason vocabulary first (_decision_filters)
        Facet("run", "Run id", lookup="run_id", hint="exact"),
        Facet("since", "From (UTC)", lookup="ts__gte", kind="datetime"),
        Facet("until", "To (UTC)", lookup="ts__lte", kind="datetime"),
    ],
    per_page=TIMELINE_PAGE,
)
DECISIONS_COUNT_CAP = 10_000  # "10,000+ decisions": a total never reads more than this many rows
ROLLUP_FACETS = {"agent", "tool", "outcome"}  # filters the hourly rollups can total


def _contains(names, value: str) -> list[str]:
    """The names that contain ``value``, ignoring case (as ``icontains`` compares)."""
    wanted = value.casefold()
    return [name for name in names if wanted in name.casefold()]


def _decision_filters(account_id: int, table, tools: list[str] | None) -> tuple[Q | None, Q | None, Q | None]:
    """(held_q, search_q, reason_q): the agent and tool facets, the search, and the reason facet as conditions on a
    decision (the first two on a rollup too: the rollups hold the same fields). Each "contains" is resolved in a
    small set first — agent ids in the Agent table, tool names among the names the account called (``tools``:
    selectors.called_tools), reasons in the Reason vocabulary — so the decision table is read with ``IN (…)`` lists
    the planner estimates well (an ordered read of the (account, -ts) index, or of (account, agent, -ts) and
    (account, policy_reason, -ts)), never scanned for a ``LIKE '%…%'``. ``tools`` None (more names than
    selectors.CALLED_TOOLS_MAX): the tool is matched in place."""
    agents = Agent.objects.filter(account_id=account_id)
    held_q = search_q = reason_q = None

    def tool_q(value: str) -> Q:
        return Q(tool__in=_contains(tools, value)) if tools is not None else Q(tool__icontains=value)

    # A value written "=text" matches exactly (tables.exact); a tool name still ignoring case, as tools are matched
    # everywhere.
    if "agent" in table.values:
        value = table.values["agent"]
        wanted = exact(value)
        found = agents.filter(agent_id=wanted) if wanted is not None else agents.filter(agent_id__icontains=value)
        held_q = Q(agent_id__in=list(found.values_list("pk", flat=True)[:1000]))
    if "tool" in table.values:
        value = table.values["tool"]
        wanted = exact(value)
        condition = Q(tool__iexact=wanted) if wanted is not None else tool_q(value)
        held_q = condition if held_q is None else held_q & condition
    if table.q:
        ids = list(agents.filter(agent_id__icontains=table.q).values_list("pk", flat=True)[:1000])
        search_q = Q(agent_id__in=ids) | tool_q(table.q)
    if "reason" in table.values:
        value = table.values["reason"]
        wanted = exact(value)
        known = _contains(Reason.values, value) if wanted is None else [r for r in Reason.values if r == wanted]
        # Every decision's reason is of the vocabulary; anything else typed is matched in place (and finds none).
        reason_q = Q(policy_reason__in=known) if known else Q(policy_reason__icontains=value)
    return held_q, search_q, reason_q


def _decision_suggestions(account_id: int, tools: list[str]) -> dict[str, list[str]]:
    """The facets' <datalist>s: agent ids (the small Agent table), the tools called (selectors.called_tools, read
    once for the tool facet and its suggestions) and the reasons."""
    agent_ids = selectors.listed_agents(account_id).order_by("agent_id").values_list("agent_id", flat=True)[:100]
    return {
        "agent": list(agent_ids),
        "tool": tools[:100],
        "reason": list(Reason.values),
    }


def _filtered_decisions(account_id: int, table, tools: list[str] | None) -> tuple[Any, Q | None, Q | None]:
    """The account's decisions narrowed by the table's filters (the page and its export read the same rows), and
    the agent/tool and search conditions the rollup totals reuse."""
    queryset = table.filter(Decision.objects.filter(account_id=account_id), search=False)
    held_q, search_q, reason_q = _decision_filters(account_id, table, tools)
    for condition in (held_q, search_q, reason_q):
        if condition is not None:
            queryset = queryset.filter(condition)
    return queryset, held_q, search_q


# The decision log's export (docs/api.md §"Exports"): what a reader of the log relies on, the row hash included (a
# file can be checked against the ledger); never the call's args (only their HMAC, args_hash), nor the tool's
# output or the rule's explanation (on the decision's page).
DECISION_EXPORT_COLUMNS = [
    export.Column("id", "id"),
    export.Column("ts", "ts"),
    export.Column("agent_id", "agent__agent_id"),
    export.Column("tool", "tool"),
    export.Column("outcome", "outcome"),
    export.Column("allowed", "allowed"),
    export.Column("policy_reason", "policy_reason"),
    export.Column("risk_level", "risk_level"),
    export.Column("spend_usd", "spend_usd"),
    export.Column("declared_spend_usd", "declared_spend_usd"),
    export.Column("operator_price_usd", "operator_price_usd"),
    export.Column("args_hash", "args_hash"),
    export.Column("run_id", "run_id"),
    export.Column("policy_version", "policy_version"),
    export.Column("latency_ms", "latency_ms"),
    export.Column("http_status", "http_status"),
    export.Column("dispatch_id", "dispatch_id"),
    export.Column("dedup_of", "original_id"),
    export.Column("api_key_id", "api_key_id"),
    export.Column("row_hash", "row_hash"),
]


def decisions_export_source(account_id: int, params: QueryDict) -> export.Source:
    """The decision log's rows for an export, with the timeline's filters (search, facets, the time sort's
    direction) read from ``params`` as the page reads them; values the page would ignore are in ``errors``."""
    table = BoundTable(DECISIONS_TABLE, params, {})
    wants_tools = bool(table.q or "tool" in table.values)
    tools = selectors.called_tools(account_id) if wants_tools else []
    queryset, _, _ = _filtered_decisions(account_id, table, tools)
    return export.Source(
        "decisions", queryset, DECISION_EXPORT_COLUMNS, ("ts", "id"), table.descending, errors=table.errors
    )


@login_required
@require_GET
@vary_on_headers("HX-Request")  # ?after=<id> is the live poll's rows with it, the "Newer" page without
def decisions(request: HtmxHttpRequest) -> HttpResponse:
    """The decision log, keyset-paginated by (ts, id) at any depth: ?before=<id> for older rows, ?after=<id> for
    newer; htmx's live polling (HX-Request) of the first page asks ?after=<newest id> for the rows written since.
    Totals stop at 10,000 ("10,000+"): at most 10,001 hourly rollups added up when the filters are ones they hold
    (agent, tool, outcome, search), else a COUNT of at most 10,001 decisions."""
    account = current_membership(request).account
    live = request.GET.get("after") and request.htmx
    names = set(request.GET) & {"q", "tool"}
    tools = selectors.called_tools(account.pk) if not live or names else []
    table = DECISIONS_TABLE.bind(request, suggestions={} if live else _decision_suggestions(account.pk, tools or []))
    queryset, held_q, search_q = _filtered_decisions(account.pk, table, tools)
    queryset = queryset.select_related("agent")
    after = whole_number(request.GET.get("after", ""))
    if after is not None and request.htmx:  # live: rows newer than the newest shown
        rows = list(queryset.filter(pk__gt=after).order_by("-id")[:TIMELINE_PAGE])
        return render(request, "governance/_decision_rows.html", {"rows": rows, "live": True})
    before = whole_number(request.GET.get("before", ""))
    cursor_id = after if after is not None else before
    cursor = None
    if cursor_id is not None:
        cursor = Decision.objects.filter(account_id=account.pk, pk=cursor_id).values_list("ts", "id").first()
        if cursor is None:
            table.errors.append("That page no longer exists: showing the newest decisions.")
    elif request.GET.get("after") or request.GET.get("before"):
        table.errors.append("Page ignored: not a decision id.")
    descending = table.descending
    keys = {"after": cursor} if after is not None else {"before": cursor}
    rows, older, newer = keyset_page(queryset, order=("ts", "id"), size=TIMELINE_PAGE, descending=descending, **keys)
    if cursor is not None and descending and after is not None and not newer:  # back at the newest: the live page
        cursor = None
        rows, older, newer = keyset_page(queryset, order=("ts", "id"), size=TIMELINE_PAGE)
    first_page = cursor is None
    if rows:
        oldest, newest = (rows[-1], rows[0]) if descending else (rows[0], rows[-1])
    keyset = {
        "older": table.url(before=oldest.pk) if rows and older else None,
        "newer": table.url(after=newest.pk) if rows and newer else None,
        "newest": table.url() if not first_page else None,
    }
    if set(table.values) <= ROLLUP_FACETS:
        # At most DECISIONS_COUNT_CAP + 1 rollup rows summed (each counts ≥ 1 decision): any more is "10,000+".
        rollups = DecisionRollup.objects.filter(account_id=account.pk)
        rollups = table.filter(rollups.filter(held_q) if held_q is not None else rollups, search=False)
        rollups = rollups.filter(search_q) if search_q is not None else rollups
        summed = (
            rollups.order_by()
            .values("pk", "count")[: DECISIONS_COUNT_CAP + 1]
            .aggregate(n=Sum("count"), rows=Count("pk"))
        )
        total = summed["n"] or 0
        if summed["rows"] > DECISIONS_COUNT_CAP or total > DECISIONS_COUNT_CAP:
            table.set_total(DECISIONS_COUNT_CAP, capped=True)
        else:
            table.set_total(total)
    else:
        total, capped = capped_count(queryset, DECISIONS_COUNT_CAP)
        table.set_total(total, capped=capped)
    live_query = table.url(sort=None)[1:]
    return render(
        request,
        "governance/decisions.html",
        {
            "table": table,
            "rows": rows,
            "keyset": keyset,
            "first_page": first_page and descending,
            "newest": max((r.pk for r in rows), default=0),
            "query": live_query,
            "export_url": reverse("governance:decisions-export"),
        },
    )


@login_required
@require_GET
def decision_detail(request: HtmxHttpRequest, decision_id: int) -> HttpResponse:
    account = current_membership(request).account
    decision = Decision.objects.select_related("agent", "api_key").filter(account=account, pk=decision_id).first()
    if decision is None:
        raise Http404("No such decision in this account.")
    tool = explain.registered_tool(decision)
    context = {
        "d": decision,
        "explanation": explain.explain_text(decision),
        "numbers": explain.explain_numbers(decision),
        "facts": explain.explain_facts(decision, tool),
    }
    # The drawer (and any htmx request) gets the fragment; the URL opened directly is the full page with the nav.
    # Vary: a cached fragment must never be shown for a direct visit (or the reverse).
    template = "governance/_decision_detail.html" if request.htmx else "governance/decision.html"
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _object_contains(queryset, value):
    return queryset.filter(Q(object_type__icontains=value) | Q(object_id__icontains=value))


AUDIT_TABLE = Table(
    columns=[
        Column("when", "When", ("created_at",), first="desc"),
        Column("actor", "Who", ("actor_label",)),
        Column("action", "Action", ("action",)),
        Column("object", "Object", ("object_type", "object_id")),
        Column("details", "Details"),
    ],
    default_sort="-when",
    noun=("entry", "entries"),
    search=["actor_label", "action", "object_type", "object_id"],
    search_hint="who, action or object",
    facets=[
        Facet("actor", "Who", lookup="actor_label__icontains", hint="contains"),
        Facet("action", "Action", lookup="action__icontains", hint="contains"),
        Facet("object", "Object", apply=_object_contains, hint="contains"),
    ],
)


@login_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    entries = AuditEntry.objects.filter(account=account)
    suggestions = {
        "actor": entries.order_by("actor_label").values_list("actor_label", flat=True).distinct()[:100],
        "action": entries.order_by("action").values_list("action", flat=True).distinct()[:100],
    }
    table = AUDIT_TABLE.bind(request, suggestions=suggestions)
    table.paginate(table.filter(entries))
    return render(request, "governance/audit.html", {"table": table, "export_url": reverse("governance:audit-export")})


AUDIT_EXPORT_COLUMNS = [
    export.Column("id", "id"),
    export.Column("created_at", "created_at"),
    export.Column("actor", "actor_label"),
    export.Column("action", "action"),
    export.Column("object_type", "object_type"),
    export.Column("object_id", "object_id"),
    export.Column("data", "data"),
    export.Column("prev_hash", "prev_hash"),
    export.Column("row_hash", "row_hash"),
]


def audit_export_source(account_id: int, params: QueryDict) -> export.Source:
    """The operator audit log's entries for an export, with the audit page's search and filters, in time order
    (the When column's direction; other sorts are not kept by an export)."""
    table = BoundTable(AUDIT_TABLE, params, {})
    entries = table.filter(AuditEntry.objects.filter(account_id=account_id))
    descending = table.descending if table.sort_key == "when" else True
    return export.Source("audit", entries, AUDIT_EXPORT_COLUMNS, ("created_at", "id"), descending, table.errors)


def export_format(request: HttpRequest) -> str:
    """``?format=csv|jsonl`` of a dashboard export link (another value: 404, as an unknown page)."""
    fmt = request.GET.get("format", "csv")
    if fmt not in export.FORMATS:
        raise Http404("Export formats: csv, jsonl.")
    return fmt


@login_required
@require_GET
def decisions_export(request: HttpRequest) -> StreamingHttpResponse:
    """The Export button of the decision timeline: the rows its filters show, streamed (any role: viewers read the
    log too)."""
    account = current_membership(request).account
    fmt = export_format(request)
    return export.stream(decisions_export_source(account.pk, request.GET), account_id=account.pk, fmt=fmt)


@login_required
@require_GET
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    account = current_membership(request).account
    fmt = export_format(request)
    return export.stream(audit_export_source(account.pk, request.GET), account_id=account.pk, fmt=fmt)


# --- tools -----------------------------------------------------------------------------------------------------


def _tool_or_404(account_id: int, tool_id: int) -> Tool:
    tool = Tool.objects.select_related("account").filter(account_id=account_id, pk=tool_id).first()
    if tool is None:
        raise Http404("No such tool in this account.")
    return tool


def _enabled_is(queryset, value):
    return queryset.filter(enabled=value == "yes")


def _risk_is(queryset, value):
    return queryset.filter(risk_level="" if value == "none" else value)


TOOLS_TABLE = Table(
    columns=[
        Column("tool", "Tool", ("name_key", "name")),
        Column("scope", "Scope", ("scope_id",)),
        Column("host", "Host", ("url",)),
        Column("status", "Status", ("enabled",)),
        Column("risk", "Risk", ("risk_level",)),
        Column("price", "Price", ("price_usd",), nulls_last=True),
        Column("calls", "Calls (1 h)"),
        Column("slots", "In flight"),
        Column("last", "Last call", ("last_dispatch_at",), first="desc", nulls_last=True),
    ],
    default_sort="tool",
    noun=("tool", "tools"),
    search=["name", "scope_id", "url", "description"],
    search_hint="name, scope, URL",
    facets=[
        Facet("scope", "Scope", lookup="scope_id__icontains", hint="contains"),
        Facet("enabled", "Status", apply=_enabled_is, choices=(("", "any"), ("yes", "enabled"), ("no", "disabled"))),
        Facet(
            "risk",
            "Risk",
            apply=_risk_is,
            choices=(("", "any"), ("low", "low"), ("medium", "medium"), ("high", "high"), ("none", "by name")),
        ),
        Facet("failing", "Failing", choices=(("", "any"), ("yes", "failing now (≥ 50 % of calls, 1 h)"))),
    ],
)


@login_required
@require_GET
def tools_list(request: HttpRequest) -> HttpResponse:
    """The Tools table: search, facets (scope, status, risk, failing now), sort, pages; each tool's calls in the
    last hour from governance.selectors.tool_health (one query), flagged when failing. Above it, a page of the
    account's upstream MCP servers (one query); their tools are rows of the table, badged MCP."""
    account = current_membership(request).account
    now = timezone.now()
    tools_qs = Tool.objects.filter(account=account)
    scopes = tools_qs.order_by("scope_id").values_list("scope_id", flat=True).distinct()[:100]
    table = TOOLS_TABLE.bind(request, suggestions={"scope": scopes})
    health: dict[str, selectors.ToolHealth] = {}
    for name, h in selectors.tool_health(account.pk, now).items():  # calls name tools as typed: compare normalised
        key = normalise_tool(name)
        seen = health.get(key)
        failed, total = (seen.failed, seen.total) if seen else (0, 0)
        health[key] = selectors.ToolHealth(h.failed + failed, h.total + total)
    queryset = table.filter(tools_qs)
    if table.values.get("failing") == "yes":
        queryset = queryset.filter(name_key__in=[key for key, h in health.items() if h.flagged])
    page = list(table.paginate(queryset))
    # Dispatches in flight now and the bulkhead/deadline flags (docs/operations.md §"Slow tools and bulkheads").
    in_flight = slots.usage(account.pk, account.plan.dispatch_slots, sorted({tool.name_key for tool in page}))
    now_ms = int(time.time() * 1000)
    rows = []
    for tool in page:
        held = in_flight.tools.get(tool.name_key) if in_flight else None
        rows.append(
            {
                "tool": tool,
                "health": health.get(tool.name_key),
                "slots": held,
                "busy": held is not None and held.busy_recently(now_ms),
                "deadline": held is not None and held.deadline_recently(now_ms),
            }
        )
    context = {
        "table": table,
        "rows": rows,
        "limit": account.plan.tools_limit,
        "in_flight": in_flight,
        "servers": mcp_views.servers_section(request, account.pk),  # docs/mcp.md §"Upstream MCP servers"
    }
    return render(request, "governance/tools.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def tool_edit(request: HttpRequest, tool_id: int | None = None) -> HttpResponse:
    membership = current_membership(request)
    account = membership.account
    tool = _tool_or_404(account.pk, tool_id) if tool_id else None
    if tool is not None and tool.kind == "mcp":  # its URL, name and schema are its server's: fewer settings
        return mcp_views.tool_edit(request, tool)
    initial = (
        {}
        if tool is None
        else {
            f: getattr(tool, f)
            for f in (
                "name",
                "scope_id",
                "url",
                "timeout_ms",
                "max_retries",
                "enabled",
                "description",
                "risk_level",
                "price_usd",
            )
        }
    )
    form = ToolForm(initial=initial)
    status = 200
    if request.method == "POST":
        editor_membership(request)
        if not account.plan.tools_limit:
            raise PermissionDenied(f"The tools registry is not on the {account.plan.name} plan (Usage & plan).")
        form = ToolForm(request.POST)
        if form.is_valid():
            body = form.to_body()
            if tool is not None:  # editing: the name and scope identify the tool and stay as they are
                body.update(name=tool.name, scope_id=tool.scope_id)
            if not form.cleaned_data.get("risk_level"):
                body["risk_level"] = None
            if form.cleaned_data.get("price_usd") is None:
                body["price_usd"] = None
            try:
                fields, warnings = tools.clean(body)
                # "New tool" never replaces one (its price and secret would go): POST /v1/tools is the upsert.
                saved, _ = tools.tool_upsert(
                    account_id=account.pk,
                    plan=_plan_limits(account),
                    fields=fields,
                    actor=_actor(request),
                    create_only=tool is None,
                )
            except tools.PlanLimitReached as reached:
                form.add_error(None, f"The {reached.plan} plan allows {reached.limit} tools.")
            except tools.ToolExists as exists:
                form.add_error(
                    "name",
                    format_html(
                        'A tool named {} is already registered in scope {}: <a href="{}">edit it</a>, or choose '
                        "another name (names that differ only in case are the same tool).",
                        exists.tool.name,
                        exists.tool.scope_id,
                        reverse("governance:tool-edit", args=[exists.tool.pk]),
                    ),
                )
            except Exception as exc:  # rest_framework ValidationError: per-field messages
                detail = getattr(exc, "detail", None)
                if not isinstance(detail, dict):
                    raise
                for field, errors in detail.items():
                    target = "secret" if field == "auth" else field
                    for error in errors:
                        form.add_error(target if target in form.fields else None, str(error))
            else:
                note = "".join(f" Warning: {w}" for w in warnings)
                messages.success(request, f"Tool {saved.name} saved.{note}")
                return redirect("governance:tools")
        status = 422
    return render(request, "governance/tool_edit.html", {"form": form, "tool": tool}, status=status)


def _plan_limits(account):
    from billing.auth import PlanLimits

    plan = account.plan
    return PlanLimits(
        code=plan.code,
        default_ttl=plan.default_ttl_seconds,
        max_ttl=plan.max_ttl_seconds,
        make_limit=plan.make_monthly_limit,
        ai_limit=plan.ai_monthly_limit,
        tools_limit=plan.tools_limit,
    )


@login_required
@require_POST
def tool_toggle(request: HttpRequest, tool_id: int) -> HttpResponse:
    account = editor_membership(request).account
    tool = _tool_or_404(account.pk, tool_id)
    tools.tool_toggle(tool=tool, enabled=not tool.enabled, actor=_actor(request))
    messages.success(request, f"Tool {tool.name} {'enabled' if tool.enabled else 'disabled'}.")
    return redirect("governance:tools")


@login_required
@require_http_methods(["GET", "POST"])
def tool_delete(request: HttpRequest, tool_id: int) -> HttpResponse:
    account = editor_membership(request).account
    tool = _tool_or_404(account.pk, tool_id)
    if tool.kind == "mcp":  # its server's next discovery would register it again: disable it, or delete the server
        messages.error(request, tools.mcp_tool_refused(tool, deleting=True))
        return redirect("governance:tools")
    if request.method == "POST":
        tools.tool_delete(tool=tool, actor=_actor(request))
        messages.success(request, f"Tool {tool.name} deleted.")
        return redirect("governance:tools")
    return render(request, "governance/tool_delete.html", {"tool": tool})


@login_required
@require_http_methods(["GET", "POST"])
def tool_test(request: HttpRequest, tool_id: int) -> HttpResponse:
    membership = current_membership(request)
    tool = _tool_or_404(membership.account_id, tool_id)
    form = TestCallForm(initial={"args": sample_args(tool.input_schema)})
    outcome = None
    if request.method == "POST":
        editor_membership(request)
        form = TestCallForm(request.POST)
        if form.is_valid():
            decision, sent = services.tool_test_call(tool=tool, args=form.cleaned_data["args"], actor=_actor(request))
            outcome = {"decision": decision, "sent": sent, "explanation": explain.explain_text(decision)}
    status = 422 if form.is_bound and form.errors else 200
    return render(request, "governance/tool_test.html", {"tool": tool, "form": form, "outcome": outcome}, status=status)


@login_required
@require_GET
def operations(request: HttpRequest) -> HttpResponse:
    """The overview's operations panel alone (?range=), for its live refresh (htmx, every 15 s)."""
    account = current_membership(request).account
    return render(request, "governance/_operations_panel.html", {"panel": panels.operations_panel(account, request)})
