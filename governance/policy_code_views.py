"""Agents → Policies as code (docs/policies-as-code.md): download every policy as one YAML file; upload a file to
see its dry run (each agent's diff as the policy page colours it, every problem with its line) and apply exactly
what was shown with Confirm; the drift of the live policies from the last file applied. Owners and admins upload
and apply; viewers download and look.

An upload waits in Redis for its Confirm (an hour, under the account and the text's SHA-256, which the preview's URL
carries): a changed file is another preview, and the Confirm posts the plan's fingerprint (the file and the versions
it was compared with), so a confirm of a stale preview applies nothing."""

from __future__ import annotations

import json
import os
import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from billing.choices import EDITOR_ROLES
from billing.models import Account
from billing.selectors import current_membership, editor_membership
from governance import policy_code
from onceonly_site.identifiers import identifier_problem
from onceonly_site.redis_client import get_redis

PREVIEW_KEY = "policy-code:preview:{account_id}:{sha256}"
SHA256 = re.compile(r"[0-9a-f]{64}")
SHOWN = 500  # agents (with their diffs) one page shows; the plan's counts cover the rest


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


def _governance(account: Account) -> None:
    if not account.plan.has_governance:
        raise PermissionDenied(f"Policies are not on the {account.plan.name} plan (Usage & plan).")


def _stored(account_id: int, sha256: str) -> dict | None:
    """The upload waiting for its Confirm: {filename, text}, or None (expired, never uploaded, another account's)."""
    if not SHA256.fullmatch(sha256):
        return None
    raw = get_redis().get(PREVIEW_KEY.format(account_id=account_id, sha256=sha256))
    return json.loads(raw) if raw else None


def store_preview(account_id: int, filename: str, text: str) -> str:
    """Keep an upload for its preview and Confirm (``PREVIEW_SECONDS``); returns the SHA-256 its URL carries."""
    sha256 = policy_code.sha256_of(text)
    key = PREVIEW_KEY.format(account_id=account_id, sha256=sha256)
    get_redis().set(key, json.dumps({"filename": filename, "text": text}), ex=policy_code.PREVIEW_SECONDS)
    return sha256


def _gone(request: HttpRequest) -> HttpResponse:
    messages.warning(
        request, "That preview has expired (an upload waits an hour for its Confirm): upload the file again."
    )
    return redirect("governance:policy-code")


@login_required
@require_GET
def policy_code_page(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    account = membership.account
    applied = policy_code.last_file(account.pk)
    drifted = policy_code.drift(account.pk, applied)
    context = {
        "applied": applied,
        "drifted": drifted[:SHOWN],
        "drift_total": len(drifted),
        "can_apply": membership.role in EDITOR_ROLES and account.plan.has_governance,
    }
    return render(request, "governance/policy_code.html", context)


@login_required
@require_GET
def policy_code_export(request: HttpRequest) -> HttpResponse:
    """The export as a download (every member may download)."""
    account = current_membership(request).account
    response = HttpResponse(policy_code.export(account.pk), content_type="application/yaml; charset=utf-8")
    name = slugify(account.name)[:60] or "account"
    response["Content-Disposition"] = f'attachment; filename="policies-{name}-{timezone.now():%Y%m%d}.yaml"'
    return response


def _filename(name: str | None) -> str:
    base = os.path.basename(name or "")[:200].strip()
    return base if base and identifier_problem(base) is None else policy_code.DEFAULT_FILENAME


@login_required
@require_POST
def policy_code_upload(request: HttpRequest) -> HttpResponse:
    account = editor_membership(request).account
    _governance(account)
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a policies file (YAML) to upload.")
        return redirect("governance:policy-code")
    filename = _filename(upload.name)
    if upload.size is not None and upload.size > policy_code.MAX_BYTES:
        messages.error(
            request, f"{filename} is {upload.size:,} bytes; a policies file is at most 1 MiB. Nothing changed."
        )
        return redirect("governance:policy-code")
    try:
        text = policy_code.decode(upload.read(policy_code.MAX_BYTES + 1))
    except policy_code.PlanHasErrors as refused:
        messages.error(request, f"{refused.problems[0].text(filename)} Nothing changed.")
        return redirect("governance:policy-code")
    return redirect("governance:policy-code-preview", sha256=store_preview(account.pk, filename, text))


@login_required
@require_GET
def policy_code_preview(request: HttpRequest, sha256: str) -> HttpResponse:
    """The dry run of an upload: per agent the action, the semantic diff and the coloured line diff; every problem
    with its line; Confirm when there is none (owners and admins)."""
    membership = current_membership(request)
    account = membership.account
    stored = _stored(account.pk, sha256)
    if stored is None:
        return _gone(request)
    plan = policy_code.plan(account.pk, stored["text"], stored["filename"])
    changed = plan.changed
    context = {
        "plan": plan,
        "sha256": sha256,
        "changed": changed[:SHOWN],
        "changed_hidden": max(0, len(changed) - SHOWN),
        "unchanged": [agent for agent in plan.agents if agent.action == policy_code.UNCHANGED][:SHOWN],
        "problems": [problem.text(plan.filename) for problem in plan.errors],
        "can_apply": membership.role in EDITOR_ROLES and account.plan.has_governance and plan.ok,
    }
    return render(request, "governance/policy_code_preview.html", context, status=200 if plan.ok else 422)


@login_required
@require_POST
def policy_code_apply(request: HttpRequest, sha256: str) -> HttpResponse:
    """Confirm: the preview's plan, applied whole or not at all — only if it is still the plan that was shown."""
    account = editor_membership(request).account
    _governance(account)
    stored = _stored(account.pk, sha256)
    if stored is None:
        return _gone(request)
    plan = policy_code.plan(account.pk, stored["text"], stored["filename"])
    stale = (
        "The live policies changed since this preview, so it no longer shows what Confirm would do. Nothing was "
        "applied: review the diff below, and confirm again."
    )
    if not plan.ok:
        messages.error(request, "The file has problems (below); nothing was applied.")
        return redirect("governance:policy-code-preview", sha256=sha256)
    if request.POST.get("fingerprint") != plan.fingerprint:
        messages.error(request, stale)
        return redirect("governance:policy-code-preview", sha256=sha256)
    try:
        policy_code.apply(account.pk, plan, _actor(request))
    except policy_code.PlanStale:
        messages.error(request, stale)
        return redirect("governance:policy-code-preview", sha256=sha256)
    get_redis().delete(PREVIEW_KEY.format(account_id=account.pk, sha256=sha256))
    messages.success(request, f"Applied {plan.filename}: {plan.summary(done=True)}")
    return redirect("governance:policy-code")
