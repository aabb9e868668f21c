"""Governance pages: agents, agent detail (charts, kill switch), policy editor (history, diff, rollback), decision
timeline (filters, live updates), operator audit log, decision-log verification. Viewers look; editors change."""

from __future__ import annotations

import difflib
import json
from datetime import timedelta
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Subquery, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import audit
from billing.models import AuditEntry
from billing.selectors import current_membership, editor_membership
from governance import ledger, policies, selectors, services, tools
from governance.choices import CHARGED_OUTCOMES, Outcome
from governance.forms import DecisionFilterForm, PolicyForm, ReasonForm, TestCallForm, ToolForm
from governance.models import Agent, Decision, DecisionRollup, PolicyVersion, Tool
from onceonly_site.params import whole_number

PER_PAGE = 25
TIMELINE_PAGE = 50
# Decision timeline filter → ORM lookup (each served by the (account, -ts) index plus a filter).
TIMELINE_FILTERS = {"agent": "agent__agent_id", "tool": "tool", "outcome": "outcome", "reason": "policy_reason",
                    "run": "run_id", "since": "ts__gte", "until": "ts__lte"}  # fmt: skip


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


@login_required
@require_GET
def agents(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    now = timezone.now()
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    last = Decision.objects.filter(agent=OuterRef("pk")).order_by("-ts", "-id")
    queryset = (
        Agent.objects.filter(account=account)
        .annotate(last_ts=Subquery(last.values("ts")[:1]), last_outcome=Subquery(last.values("outcome")[:1]))
        .order_by("agent_id", "id")
    )
    page = Paginator(queryset, PER_PAGE).get_page(request.GET.get("page"))
    ids = [a.pk for a in page.object_list]
    spend = dict(DecisionRollup.objects.filter(agent_id__in=ids, hour__gte=day_start, outcome__in=CHARGED_OUTCOMES)
                 .values_list("agent_id").annotate(s=Sum("spend_usd")))  # fmt: skip
    hour = dict(Decision.objects.filter(agent_id__in=ids, ts__gt=now - timedelta(hours=1))
                .values_list("agent_id").annotate(n=Count("id")))  # fmt: skip
    rows = []
    for agent in page.object_list:
        cap = (agent.policy or {}).get("max_spend_usd_per_day")
        spent = spend.get(agent.pk) or Decimal(0)
        rows.append({"agent": agent, "spent": spent, "cap": cap, "actions_hour": hour.get(agent.pk, 0),
                     "pct": min(100, int(spent / Decimal(str(cap)) * 100)) if cap else None})  # fmt: skip
    return render(request, "governance/agents.html", {"page": page, "rows": rows})


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
    return {"labels": labels, "counts": counts, "spend": spend,
            "cap": (agent.policy or {}).get("max_spend_usd_per_day")}  # fmt: skip


@login_required
@require_GET
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    account = current_membership(request).account
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    now = timezone.now()
    range_ = request.GET.get("range") if request.GET.get("range") in ("day", "week") else "day"
    metrics = selectors.agent_metrics(account.pk, agent.agent_id, range_, now)
    # account + agent: the (account, agent, -ts) index, newest first — no sort of the agent's whole history.
    recent = Decision.objects.filter(account_id=account.pk, agent=agent).order_by("-ts", "-id")[:20]
    return render(request, "governance/agent_detail.html", {
        "agent": agent, "metrics": metrics, "recent": recent, "range": range_, "chart": _series(agent, range_, now),
        "reason_form": ReasonForm(),
    })  # fmt: skip


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
                messages.error(request, error)
    else:
        services.agent_set_enabled(
            account_id=account.pk,
            agent_id=agent.agent_id,
            enabled=enable,
            reason=form.cleaned_data["reason"],
            actor=_actor(request),
        )
        messages.success(request, f"{agent.agent_id} {'enabled' if enable else 'disabled: its next call is blocked'}.")
    return redirect("governance:agent-detail", pk=agent.pk)


def _diff(a: dict | None, b: dict | None) -> list[str]:
    left = json.dumps(a or {}, indent=2, sort_keys=True).splitlines()
    right = json.dumps(b or {}, indent=2, sort_keys=True).splitlines()
    return list(difflib.unified_diff(left, right, "before", "after", lineterm="", n=2))[2:]


@login_required
@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    membership = current_membership(request)
    account = membership.account
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    form = PolicyForm.from_policy(agent.policy, agent.policy_version)
    status = 200
    if request.method == "POST":
        editor_membership(request)
        if not account.plan.has_governance:
            raise PermissionDenied(f"Policies are not on the {account.plan.name} plan (Usage & plan).")
        form = PolicyForm(request.POST)
        if form.is_valid():
            policy = form.cleaned_data["policy"]
            if policy.get("allowed_tools") is not None and not account.plan.has_allowed_tools:
                form.add_error("allowed_tools", f"allowed_tools needs the Agency plan (this account: {account.plan}).")
            else:
                try:
                    result = services.policy_publish(
                        account_id=account.pk, agent_id=agent.agent_id, policy=policy, source="editor",
                        actor=_actor(request), expected_version=form.cleaned_data["base_version"],
                    )  # fmt: skip
                except services.StalePolicyEdit as stale:
                    form.add_error(
                        None,
                        f"Someone saved this policy meanwhile (now version {stale.current}). "
                        "Reload to see it, then apply your change again; nothing was saved.",
                    )
                else:
                    note = "".join(f" Warning: {w['message']}" for w in result.warnings[:3])
                    messages.success(request, f"Policy saved as version {result.version}.{note}")
                    return redirect("governance:policy-edit", pk=agent.pk)
        status = 422
    versions = list(PolicyVersion.objects.filter(agent=agent).order_by("-version")[:50])
    diff = None
    first, second = whole_number(request.GET.get("a", "")), whole_number(request.GET.get("b", ""))
    if first is not None and second is not None:
        by_version = {v.version: v for v in versions}
        a, b = by_version.get(first), by_version.get(second)
        if a and b:
            diff = {"a": a.version, "b": b.version, "lines": _diff(a.policy, b.policy)}
    return render(request, "governance/policy_edit.html", {
        "agent_id": agent.agent_id, "agent": agent, "form": form, "versions": versions, "diff": diff,
        "known_tools": sorted(services.known_tools(account.pk))[:100],
        "templates": {name: json.dumps(body, indent=2) for name, body in policies.TEMPLATES.items()},
    }, status=status)  # fmt: skip


@login_required
@require_POST
def policy_rollback(request: HttpRequest, pk: int) -> HttpResponse:
    account = editor_membership(request).account
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    if not account.plan.has_governance:
        raise PermissionDenied(f"Policies are not on the {account.plan.name} plan (Usage & plan).")
    requested = whole_number(request.POST.get("version", ""))
    old = PolicyVersion.objects.filter(agent=agent, version=requested).first() if requested is not None else None
    if old is None:
        messages.error(request, "No such version.")
        return redirect("governance:policy-edit", pk=agent.pk)
    if old.policy.get("allowed_tools") is not None and not account.plan.has_allowed_tools:
        messages.error(request, "That version sets allowed_tools, which needs the Agency plan.")
        return redirect("governance:policy-edit", pk=agent.pk)
    result = services.policy_rollback(
        account_id=account.pk, agent_id=agent.agent_id, version=old.version, actor=_actor(request)
    )
    messages.success(request, f"Rolled back to version {old.version}: now version {result.version}.")
    return redirect("governance:policy-edit", pk=agent.pk)


@login_required
@require_POST
def policy_template(request: HttpRequest, pk: int) -> HttpResponse:
    account = editor_membership(request).account
    if not account.plan.has_governance:
        raise PermissionDenied(f"Policies are not on the {account.plan.name} plan (Usage & plan).")
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    name = request.POST.get("template", "")
    if name not in policies.TEMPLATES:
        messages.error(request, f"Unknown template; choose one of {', '.join(policies.TEMPLATES)}.")
    elif policies.TEMPLATES[name].get("allowed_tools") is not None and not account.plan.has_allowed_tools:
        messages.error(request, f"The {name} template sets allowed_tools, which needs the Agency plan.")
    else:
        result = services.policy_from_template(
            account_id=account.pk, agent_id=agent.agent_id, template=name, overrides={}, actor=_actor(request)
        )
        messages.success(request, f"Template {name} applied as version {result.version}.")
    return redirect("governance:policy-edit", pk=agent.pk)


def _filtered_decisions(account_id: int, form: DecisionFilterForm):
    queryset = Decision.objects.filter(account_id=account_id).select_related("agent")
    if form.is_valid():
        for field, lookup in TIMELINE_FILTERS.items():
            if form.cleaned_data[field]:
                queryset = queryset.filter(**{lookup: form.cleaned_data[field]})
    return queryset


@login_required
@require_GET
def decisions(request: HttpRequest) -> HttpResponse:
    """Keyset-paginated (no COUNT over millions of rows): ?before=<id> for older, ?after=<id> for live updates."""
    account = current_membership(request).account
    form = DecisionFilterForm(request.GET or None)
    queryset = _filtered_decisions(account.pk, form).order_by("-id")
    after = whole_number(request.GET.get("after", ""))
    if after is not None:  # htmx polling for rows newer than the newest shown
        rows = list(queryset.filter(pk__gt=after)[:TIMELINE_PAGE])
        return render(request, "governance/_decision_rows.html", {"rows": rows, "live": True})
    before = whole_number(request.GET.get("before", ""))
    if before is not None:
        queryset = queryset.filter(pk__lt=before)
    rows = list(queryset[: TIMELINE_PAGE + 1])
    more = len(rows) > TIMELINE_PAGE
    rows = rows[:TIMELINE_PAGE]
    query = request.GET.copy()
    query.pop("before", None)
    query.pop("after", None)
    return render(request, "governance/decisions.html", {
        "form": form, "rows": rows, "more": more, "oldest": rows[-1].pk if rows else None,
        "newest": rows[0].pk if rows else (before - 1 if before is not None else 0),
        "query": query.urlencode(), "first_page": before is None,
    })  # fmt: skip


@login_required
@require_GET
def decision_detail(request: HttpRequest, decision_id: int) -> HttpResponse:
    account = current_membership(request).account
    decision = Decision.objects.select_related("agent", "api_key").filter(account=account, pk=decision_id).first()
    if decision is None:
        raise Http404("No such decision in this account.")
    return render(request, "governance/_decision_detail.html", {"d": decision})


@login_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    page = Paginator(AuditEntry.objects.filter(account=account).order_by("-created_at", "-id"), PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(request, "governance/audit.html", {"page": page})


@login_required
@require_http_methods(["GET", "POST"])
def verify_log(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    result = ledger.verify(account.pk) if request.method == "POST" else None
    audit_result = audit.verify(account.pk) if request.method == "POST" else None
    return render(request, "governance/verify.html", {"result": result, "audit_result": audit_result,
                                                      "timeline": reverse("governance:decisions")})  # fmt: skip


# --- tools -----------------------------------------------------------------------------------------------------


def _tool_or_404(account_id: int, tool_id: int) -> Tool:
    tool = Tool.objects.select_related("account").filter(account_id=account_id, pk=tool_id).first()
    if tool is None:
        raise Http404("No such tool in this account.")
    return tool


@login_required
@require_GET
def tools_list(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    page = Paginator(Tool.objects.filter(account=account).order_by("scope_id", "name", "id"), PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(request, "governance/tools.html", {"page": page, "limit": account.plan.tools_limit})


@login_required
@require_http_methods(["GET", "POST"])
def tool_edit(request: HttpRequest, tool_id: int | None = None) -> HttpResponse:
    membership = current_membership(request)
    account = membership.account
    tool = _tool_or_404(account.pk, tool_id) if tool_id else None
    initial = {} if tool is None else {f: getattr(tool, f) for f in ("name", "scope_id", "url", "timeout_ms",
                                                                   "max_retries", "enabled", "description",
                                                                   "risk_level", "price_usd")}  # fmt: skip
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
                saved, _ = tools.tool_upsert(account_id=account.pk, plan=_plan_limits(account), fields=fields,
                                             actor=_actor(request), create_only=tool is None)  # fmt: skip
            except tools.PlanLimitReached as reached:
                form.add_error(None, f"The {reached.plan} plan allows {reached.limit} tools.")
            except tools.ToolExists as exists:
                form.add_error("name", format_html(
                    'A tool named {} is already registered in scope {}: <a href="{}">edit it</a>, or choose another '
                    "name (names that differ only in case are the same tool).", exists.tool.name,
                    exists.tool.scope_id, reverse("governance:tool-edit", args=[exists.tool.pk])))  # fmt: skip
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
    form = TestCallForm()
    outcome = None
    if request.method == "POST":
        editor_membership(request)
        form = TestCallForm(request.POST)
        if form.is_valid():
            decision, sent = services.tool_test_call(tool=tool, args=form.cleaned_data["args"], actor=_actor(request))
            outcome = {"decision": decision, "sent": sent}
    status = 422 if form.is_bound and form.errors else 200
    return render(request, "governance/tool_test.html", {"tool": tool, "form": form, "outcome": outcome}, status=status)
