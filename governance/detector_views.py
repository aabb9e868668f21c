"""Release of a contained agent on the dashboard (its page; docs/governance.md §"Containment detectors"): an admin or
owner lets an agent a detector stopped go again, in one click. The same service as ``POST /v1/agents/{id}/release``."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from billing.selectors import editor_membership, operator
from governance import detectors, selectors


@login_required
@require_POST
def release(request: HttpRequest, pk: int) -> HttpResponse:
    account = editor_membership(request).account  # admin or owner, as the kill switch's toggle
    agent = selectors.get_agent_for_account(account.pk, pk)
    try:
        detectors.release(account_id=account.pk, agent_id=agent.agent_id, actor=operator(request).get_username())
    except detectors.NotContained:
        messages.error(request, f"{agent.agent_id} is not contained by a detector: nothing to release.")
    else:
        messages.success(request, f"{agent.agent_id} released: its next call is decided by its policy again.")
    return redirect("governance:agent-detail", pk=agent.pk)
