"""The Verification page (docs/operations.md §"Decision-log tamper evidence"): where the hourly verification of the
account's decision and audit logs stands, and "Verify now" — the whole of both logs checked by a Celery task
(governance/verify_jobs.py) while the page polls its progress (htmx), then the result. Any member may verify: it
changes nothing."""

from __future__ import annotations

import re
import time
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from billing.selectors import current_membership
from governance import verify_jobs
from governance.models import LogVerification
from onceonly_site import jobs
from onceonly_site.health import HEARTBEAT_STALE_AFTER, worker_last_seen_seconds

JOB_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
WAITING_NOTICE_SECONDS = 5  # a check queued longer than this says whether a worker is running


def _job_context(job: jobs.Job | None) -> dict[str, Any]:
    context: dict[str, Any] = {"job": job}
    if job is None:
        return context
    context["poll_url"] = reverse("governance:verify-job", args=[job.job_id])
    if job.state == "queued" and time.time() - job.created > WAITING_NOTICE_SECONDS:
        seen = worker_last_seen_seconds()
        context["no_worker"] = seen is None or seen > HEARTBEAT_STALE_AFTER
    if job.result is not None:
        context["result"], context["audit_result"] = job.result["decisions"], job.result["audit"]
    return context


def _job_or_none(account_id: int, job_id: str) -> jobs.Job | None:
    """The account's check ``job_id``; None when unknown, expired, another account's — or Redis is unreachable (the
    page then says the check cannot be shown rather than failing)."""
    if not JOB_ID.fullmatch(job_id):
        return None
    try:
        return verify_jobs.verify_job(account_id, job_id)
    except redis.RedisError:
        return None


@login_required
@require_http_methods(["GET", "POST"])
def verify_log(request: HttpRequest) -> HttpResponse:
    """The hourly checks' state, a POST that starts a whole check (→ ``?job=<id>``, or the one already running), and
    that check's progress or result."""
    account_id = current_membership(request).account_id
    problems: list[str] = []
    if request.method == "POST":
        try:
            job_id = verify_jobs.verify_start(account_id)
        except jobs.JobBusy:
            problems = ["Another verification of this account is starting: try again in a moment."]
        except (jobs.JobUnavailable, redis.RedisError):
            problems = ["The verification could not be queued (the task queue is unreachable): try again later."]
        else:
            return HttpResponseRedirect(f"{reverse('governance:verify')}?job={job_id}")
    job, expired = None, False
    wanted = request.GET.get("job", "")
    if wanted:
        job = _job_or_none(account_id, wanted)
        expired = job is None
    context = _job_context(job)
    context.update(
        {
            "problems": problems,
            "expired": expired,
            "hourly": list(LogVerification.objects.filter(account_id=account_id).order_by("-log")),
            "sweep_days": settings.ONCEONLY_VERIFY_SWEEP_DAYS,
            "timeline": reverse("governance:decisions"),
        }
    )
    return render(request, "governance/verify.html", context, status=503 if problems else 200)


@login_required
@require_GET
def verify_log_job(request: HttpRequest, job_id: str) -> HttpResponse:
    """The check's fragment alone: what the page polls every second until it is done or failed."""
    account_id = current_membership(request).account_id
    job = _job_or_none(account_id, job_id)
    return render(request, "governance/verify_job.html", {**_job_context(job), "expired": job is None})
