"""The policy page's shadow candidate (docs/policy-changes.md §"Shadow mode"): start one from the editor's form,
watch its divergence, promote it through the same review and confirm as every other change, or stop it."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from governance import services, shadow
from governance.forms import PolicyForm
from governance.models import Agent
from governance.views import (
    _STALE,
    DENY_ALL_NEEDED,
    _actor,
    _Change,
    _confirm_page,
    _confirmed_against,
    _deny_all_chosen,
    _editor_page,
    _policy_agent,
    _stale_note,
)


@login_required
@require_POST
def policy_shadow(request: HttpRequest, pk: int) -> HttpResponse:
    """``action``: ``start`` (the editor's form, as a candidate: nothing enforced, so no confirm step), ``stop``, or
    ``promote`` (reviewed, then confirmed against the reviewed version, as a save is)."""
    account, agent = _policy_agent(request, pk)
    action = request.POST.get("action", "")
    actor = _actor(request)
    if action == "start":
        form = PolicyForm(request.POST)
        if not form.is_valid():
            return _editor_page(request, account, agent, form, None, 422)
        policy = form.cleaned_data["policy"]
        if policy.get("allowed_tools") == [] and not form.cleaned_data.get("deny_all"):
            form.add_error("allowed_tools", DENY_ALL_NEEDED)
            return _editor_page(request, account, agent, form, None, 422)
        shadow.shadow_start(account_id=account.pk, agent_id=agent.agent_id, policy=policy, actor=actor)
        messages.success(
            request,
            "Shadow candidate started: every call of this agent is now also decided against it (nothing of it is "
            "enforced). Its divergence shows below as calls come in.",
        )
        return redirect("governance:policy-edit", pk=agent.pk)
    if action == "stop":
        try:
            shadow.shadow_stop(account_id=account.pk, agent_id=agent.agent_id, actor=actor)
            messages.success(request, "Shadow candidate stopped. Its recorded outcomes stay in the decision log.")
        except shadow.NoShadow:
            messages.info(request, "This agent has no shadow candidate.")
        return redirect("governance:policy-edit", pk=agent.pk)
    if action == "promote":
        return _promote(request, account, agent, actor)
    messages.error(request, "Unknown action.")
    return redirect("governance:policy-edit", pk=agent.pk)


def _promote(request: HttpRequest, account: Any, agent: Agent, actor: str) -> HttpResponse:
    shadow_id = request.POST.get("shadow_id", "")
    if agent.shadow_policy is None or agent.shadow_id != shadow_id:
        messages.error(request, "That shadow candidate is no longer this agent's: nothing was published.")
        return redirect("governance:policy-edit", pk=agent.pk)
    candidate = agent.shadow_policy
    page = _confirm_page(
        request,
        agent,
        "Promote the shadow candidate",
        reverse("governance:policy-shadow", args=[agent.pk]),
        [("action", "promote"), ("shadow_id", shadow_id)],
    )
    change = _Change(request, account, agent, candidate, f"shadow:{shadow_id}")
    if request.POST.get("confirm") != "1" or (agent.policy or {}) == candidate:
        return change.run(page, success="")  # the review (or "No change")
    expected = _confirmed_against(request)
    if expected is _STALE or expected != agent.policy_version:
        return page(agent, change.review(stale=_stale_note(agent)), 409)
    if candidate.get("allowed_tools") == [] and not _deny_all_chosen(request):
        return page(agent, change.review(error=DENY_ALL_NEEDED), 422)
    try:
        outcome = shadow.shadow_promote(
            account_id=account.pk, agent_id=agent.agent_id, actor=actor, shadow_id=shadow_id, expected_version=expected
        )
    except services.StalePolicyEdit:
        agent.refresh_from_db()
        return page(agent, change.review(stale=_stale_note(agent)), 409)
    except shadow.NoShadow:
        messages.error(request, "That shadow candidate is no longer this agent's: nothing was published.")
        return redirect("governance:policy-edit", pk=agent.pk)
    messages.success(request, f"Shadow candidate promoted: now version {outcome.version}.")
    return redirect("governance:policy-edit", pk=agent.pk)
