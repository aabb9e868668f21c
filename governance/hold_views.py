"""Legal holds on the dashboard (docs/operations.md §"Retention"): an owner puts the account (Settings page) or one
agent (its page) on hold, or releases it, with a reason; the change is audited (governance/holds.py). Everyone else
sees the state."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from billing.selectors import operator, owner_membership
from governance import holds, selectors
from onceonly_site.identifiers import validate_identifier


class HoldForm(forms.Form):
    action = forms.ChoiceField(choices=[("set", "Put on hold"), ("clear", "Release the hold")])
    reason = forms.CharField(
        max_length=holds.MAX_REASON,
        validators=[validate_identifier],  # one line, no control or bidirectional character (shown in the audit log)
        help_text="Required: why the history must be kept (a matter, a ticket), or why it no longer must.",
    )


def _apply(request: HttpRequest, done: str, change) -> None:
    form = HoldForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, str(error))
        return
    held = form.cleaned_data["action"] == "set"
    try:
        changed = change(held=held, reason=form.cleaned_data["reason"], actor=operator(request).get_username())
    except holds.HoldError as problem:
        messages.error(request, str(problem))
        return
    if not changed:
        messages.info(request, f"{done} was already {'on hold' if held else 'not on hold'}: nothing changed.")
    else:
        messages.success(request, f"{done} {'is on legal hold' if held else 'is no longer on legal hold'}.")


@login_required
@require_POST
def account_hold(request: HttpRequest) -> HttpResponse:
    account = owner_membership(request).account

    def change(**kwargs):
        return holds.set_account_hold(account=account, **kwargs)

    _apply(request, "The account", change)
    return redirect(f"{reverse('billing:settings')}#legal-hold")


@login_required
@require_POST
def agent_hold(request: HttpRequest, pk: int) -> HttpResponse:
    account = owner_membership(request).account
    agent = selectors.get_agent_for_account(account.pk, pk)

    def change(**kwargs):
        return holds.set_agent_hold(account=account, agent=agent, **kwargs)

    _apply(request, f"Agent {agent.agent_id}", change)
    return redirect(f"{reverse('governance:agent-detail', args=[agent.pk])}#legal-hold")
