"""Raise & resume on the dashboard (a paused run's timeline page; docs/runs.md §"Runs that pause at a cap"): an
admin or owner sets the run's own caps and resumes it. The same service as ``POST /v1/runs/{run_id}/resume``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework import exceptions

from billing.selectors import editor_membership, operator
from governance import run_caps
from idempotency.models import Run


def _caps(post: Any) -> dict[str, Any]:
    """The form's caps: blank fields left out, numbers parsed as JSON numbers would be (then ResumeInput's checks)."""
    sent: dict[str, Any] = {}
    for name in run_caps.ResumeInput.fields:
        text = (post.get(name) or "").strip()
        if not text:
            continue
        try:
            sent[name] = float(text) if "." in text or "e" in text.lower() else int(text)
        except ValueError:
            sent[name] = text  # refused below, in the API's words
    return {name: value for name, value in run_caps.ResumeInput.parse(sent).changes().items() if value is not None}


@login_required
@require_POST
def resume(request: HttpRequest, pk: int) -> HttpResponse:
    account = editor_membership(request).account
    run = Run.objects.filter(pk=pk, account=account).only("run_id").first()
    if run is None:
        raise Http404("No such run.")
    back = reverse("idempotency:run-timeline") + "?" + _query(run.run_id)
    try:
        caps = _caps(request.POST)
        run_caps.resume(account_id=account.pk, run_id=run.run_id, caps=caps, actor=operator(request).get_username())
    except exceptions.ValidationError as refused:
        for field, problems in _problems(refused.detail):
            messages.error(request, f"{field}: {problems}")
        return redirect(back)
    except run_caps.StillCapped as capped:
        messages.error(request, f"{capped.field}: {capped.message}")
        return redirect(back)
    except run_caps.NotPaused:
        messages.error(request, "The run is no longer paused: it was resumed meanwhile, or it finished or failed.")
        return redirect(back)
    raised = ", ".join(f"{name} {value}" for name, value in caps.items()) or "its caps as they stand"
    messages.success(request, f"Resumed with {raised}: it goes on from the action that paused.")
    return redirect(back)


def _query(run_id: str) -> str:
    return urlencode({"run_id": run_id})


def _problems(detail: Any) -> list[tuple[str, str]]:
    if isinstance(detail, dict):
        return [(str(field), " ".join(str(p) for p in problems)) for field, problems in detail.items()]
    return [("caps", str(detail))]
