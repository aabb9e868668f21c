"""The impact preview page (docs/policy-changes.md): what a draft policy would have decided for an agent's recorded
calls of the last 1, 7 or 30 days, computed by a Celery task (governance/replay.py) while the page polls its
progress (htmx), then shown as a sentence, the blocks by reason with example decisions (drawer links), the calls
that were blocked and would now pass, and recorded against replayed counts per reason.

The draft comes from a POST: the policy editor's fields (its form's "Preview impact" button posts them here), an
existing version (``version``; ``?version=<n>`` preselects it), the JSON of a draft (``policy_json``), or an earlier
preview of this agent (``job``: the same draft over another range). Viewers may run previews too: a preview changes
nothing — it reads the decision log and writes only its own state to Redis, for an hour."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from billing.selectors import current_membership
from governance import policies, replay, selectors
from governance.forms import PolicyForm
from governance.models import Agent, PolicyVersion
from governance.services import OPERATOR_AGENT
from onceonly_site.health import HEARTBEAT_STALE_AFTER, worker_last_seen_seconds
from onceonly_site.params import whole_number

JOB_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
DEFAULT_DAYS = 7
MAX_DRAFT_JSON = 64 * 1024  # characters of a JSON draft (a policy is far smaller)
VERSIONS_SHOWN = 50
WAITING_NOTICE_SECONDS = 5  # a preview queued longer than this says whether a worker is running


def _agent(request: HttpRequest, pk: int) -> Agent:
    agent = selectors.get_agent_for_account(current_membership(request).account_id, pk)
    if agent.agent_id == OPERATOR_AGENT:
        raise Http404("The operator's test calls have no policy to preview.")
    return agent


def _problems_of(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{field}: {message}" for field, messages in detail.items() for message in messages]
    return [str(detail)]


def _draft(request: HttpRequest, agent: Agent) -> tuple[dict[str, Any] | None, str, list[str]]:
    """The draft a POST names, its label, and what is wrong with it (then no draft)."""
    post = request.POST
    if "job" in post:
        earlier = replay.replay_job(agent.account_id, post["job"]) if JOB_ID.fullmatch(post["job"]) else None
        if earlier is None or earlier.agent_pk != agent.pk:
            return None, "", ["That preview has expired (previews are kept for an hour): start it again."]
        return earlier.policy, earlier.label, []
    if "policy_json" in post:
        text = post["policy_json"]
        if len(text) > MAX_DRAFT_JSON:
            return None, "", [f"The draft is longer than {MAX_DRAFT_JSON:,} characters."]
        try:
            body = json.loads(text)
        except ValueError as exc:
            return None, "", [f"The draft is not JSON: {exc}."]
        if not isinstance(body, dict):
            return None, "", ['The draft must be a JSON object of policy fields, e.g. {"max_actions_per_hour": 50}.']
        try:
            cleaned = policies.clean_fields(body)
        except Exception as exc:  # rest_framework's ValidationError, per field
            if not hasattr(exc, "detail"):
                raise
            return None, "", _problems_of(exc.detail)
        return policies.merge({}, cleaned), "a JSON draft", []
    if "version" in post:
        number = whole_number(post["version"])
        found = PolicyVersion.objects.filter(agent=agent, version=number).first() if number is not None else None
        if found is None:
            return None, "", [f"This agent's policy has no version {post['version'][:20]!r}."]
        return found.policy, f"version {found.version}", []
    form = PolicyForm(post)  # the policy editor's fields
    if not form.is_valid():
        return (
            None,
            "",
            [
                f"{form.fields[field].label if field in form.fields else 'Policy'}: {message}"
                for field, messages in form.errors.items()
                for message in messages
            ],
        )
    return policies.merge({}, form.cleaned_data["policy"]), "the editor's draft", []


def _days(request: HttpRequest) -> tuple[int | None, list[str]]:
    raw = request.POST.get("days", str(DEFAULT_DAYS))
    days = whole_number(raw)
    if days not in replay.RANGES:
        return None, [f"Choose a range of {', '.join(map(str, replay.RANGES))} days."]
    return days, []


def _when(moment: datetime) -> str:
    return f"{moment:%H:%M} UTC on {moment.day} {moment:%b %Y}"


def summary(result: dict[str, Any]) -> str:
    """ "Of 12,480 calls, 1,311 would have been blocked: 1,200 daily_spend_exceeded, 111 tool_blocked — first at
    09:14 UTC on 2 Dec 2025." """
    total, blocked = result["total"], result["blocked"]
    if not total:
        return "There are no recorded calls in this range to replay."
    calls = f"{total:,} call" + ("" if total == 1 else "s")
    if not blocked:
        return f"Of {calls}, none would have been blocked."
    reasons = ", ".join(f"{n:,} {reason}" for reason, n in result["by_reason"])
    first = datetime.fromisoformat(result["first_blocked"])
    return f"Of {calls}, {blocked:,} would have been blocked: {reasons} — first at {_when(first)}."


def _job_context(agent: Agent, job: replay.ReplayJob | None) -> dict[str, Any]:
    context: dict[str, Any] = {"agent": agent, "job": job, "ranges": replay.RANGES}
    if job is None:
        return context
    context["poll_url"] = reverse("governance:policy-impact-job", args=[agent.pk, job.job_id])
    if job.state == "queued" and time.time() - job.created > WAITING_NOTICE_SECONDS:
        seen = worker_last_seen_seconds()
        context["no_worker"] = seen is None or seen > HEARTBEAT_STALE_AFTER
    if job.result is not None:
        context["summary"] = summary(job.result)
        context["by_reason"] = [
            {"reason": reason, "count": n, "examples": job.result["examples"].get(reason, [])}
            for reason, n in job.result["by_reason"]
        ]
        context["newly_allowed"] = job.result["newly_allowed"]
        context["newly_blocked"] = job.result["newly_blocked"]
        context["delta"] = job.result["delta"]
    return context


@login_required
@require_http_methods(["GET", "POST"])
def policy_impact(request: HttpRequest, pk: int) -> HttpResponse:
    """The form (a version or a JSON draft, and the range), a POST that starts a preview (→ ``?job=<id>``), and the
    preview's progress or result."""
    agent = _agent(request, pk)
    problems: list[str] = []
    status = 200
    if request.method == "POST":
        days, problems = _days(request)
        draft, label, more = _draft(request, agent)
        problems += more
        if not problems and draft is not None and days is not None:
            try:
                job_id = replay.replay_start(agent=agent, policy=draft, days=days, label=label)
            except replay.ReplayBusy as busy:
                problems, status = [str(busy)], 429
            except replay.ReplayUnavailable:
                problems, status = ["The preview could not be queued (the task queue is unreachable): try later."], 503
            else:
                return HttpResponseRedirect(f"{reverse('governance:policy-impact', args=[agent.pk])}?job={job_id}")
        else:
            status = 422
    job, expired = None, False
    wanted = request.GET.get("job", "")
    if wanted:
        job = replay.replay_job(agent.account_id, wanted) if JOB_ID.fullmatch(wanted) else None
        if job is not None and job.agent_pk != agent.pk:
            job = None
        expired = job is None
    versions = list(
        PolicyVersion.objects.filter(agent=agent)
        .order_by("-version")
        .values_list("version", flat=True)[:VERSIONS_SHOWN]
    )
    chosen = whole_number(request.GET.get("version", "")) or agent.policy_version
    context = _job_context(agent, job)
    context.update(
        {
            "problems": problems,
            "expired": expired,
            "versions": versions,
            "chosen_version": chosen,
            "chosen_days": whole_number(request.POST.get("days", "")) or DEFAULT_DAYS,
            "policy_json": request.POST.get("policy_json", ""),
        }
    )
    return render(request, "governance/policy_impact.html", context, status=status)


@login_required
@require_GET
def policy_impact_job(request: HttpRequest, pk: int, job_id: str) -> HttpResponse:
    """The preview's fragment alone: what the page polls every second until the job is done or failed."""
    agent = _agent(request, pk)
    job = replay.replay_job(agent.account_id, job_id) if JOB_ID.fullmatch(job_id) else None
    if job is not None and job.agent_pk != agent.pk:
        job = None
    return render(request, "governance/policy_impact_job.html", {**_job_context(agent, job), "expired": job is None})
