"""Settings → Notification channels (docs/notifications.md): list, add, edit, enable/disable, delete and "Send test"
(owners and admins; viewers read), and the confirm page the one-click Approve/Deny links of approval requests open
(signed, expiring with the approval, deciding only on its POST, once)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing.choices import EDITOR_ROLES
from billing.selectors import current_membership, editor_membership
from governance import approvals, channels
from governance.models import Approval, ChannelDelivery, NotificationChannel
from onceonly_site.identifiers import validate_identifier

RECENT_DELIVERIES = 20
URL_HELP = (
    "https:// (http:// only to an address the operator allows). It must not point at a private, loopback or "
    "link-local address, as for tool URLs; redirects are not followed."
)


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


class ChannelForm(forms.Form):
    kind = forms.ChoiceField(choices=NotificationChannel.Kind.choices, initial=NotificationChannel.Kind.SLACK)
    label = forms.CharField(max_length=100, validators=[validate_identifier], help_text="A name for this channel.")
    url = forms.CharField(max_length=2000, label="URL", help_text=URL_HELP, strip=False)
    events = forms.MultipleChoiceField(
        choices=NotificationChannel.Event.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[NotificationChannel.Event.APPROVAL_REQUESTED],
        help_text="What this channel receives.",
    )

    def __init__(self, *args, channel: NotificationChannel | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.channel = channel
        self.url_warning = ""
        if channel is not None:  # editing: the kind stays; an empty URL keeps the stored one (Slack's is secret)
            del self.fields["kind"]
            self.fields["url"].required = False
            self.fields["url"].help_text = f"Now {channels.shown_url(channel)}. Leave empty to keep it. {URL_HELP}"

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not url and self.channel is not None:
            return ""
        try:
            self.url_warning = channels.check_url(url)
        except channels.ChannelProblem as problem:
            raise forms.ValidationError(str(problem), code="url_refused") from None
        return url


def _channel_or_404(account_id: int, pk: int) -> NotificationChannel:
    channel = NotificationChannel.objects.select_related("account").filter(account_id=account_id, pk=pk).first()
    if channel is None:
        raise Http404("No such notification channel in this account.")
    return channel


def _problem_to_form(form: ChannelForm, problem: channels.ChannelProblem) -> None:
    form.add_error(problem.field if problem.field in form.fields else None, str(problem))


@login_required
@require_GET
def channel_list(request: HttpRequest) -> HttpResponse:
    account = current_membership(request).account
    rows = [
        {"channel": channel, "url": channels.shown_url(channel)}
        for channel in NotificationChannel.objects.filter(account=account).order_by("label", "id")
    ]
    return render(request, "governance/channels.html", {"rows": rows, "limit": channels.MAX_CHANNELS})


@login_required
@require_http_methods(["GET", "POST"])
def channel_new(request: HttpRequest) -> HttpResponse:
    account = editor_membership(request).account
    form = ChannelForm()
    status = 200
    if request.method == "POST":
        form = ChannelForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                channel, secret = channels.channel_create(
                    account=account,
                    kind=data["kind"],
                    label=data["label"],
                    url=data["url"],
                    events=data["events"],
                    actor=_actor(request),
                )
            except channels.ChannelProblem as problem:
                _problem_to_form(form, problem)
            else:
                if form.url_warning:
                    messages.warning(request, form.url_warning)
                # The secret is in this answer only: never in the session, a redirect or a later page.
                context = {"channel": channel, "secret": secret, "url": channels.shown_url(channel)}
                return render(request, "governance/channel_created.html", context, status=201)
        status = 422
    return render(request, "governance/channel_edit.html", {"form": form, "channel": None}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def channel_edit(request: HttpRequest, pk: int) -> HttpResponse:
    membership = current_membership(request)
    channel = _channel_or_404(membership.account_id, pk)
    form = ChannelForm(channel=channel, initial={"label": channel.label, "events": channel.events})
    status = 200
    if request.method == "POST":
        editor_membership(request)
        form = ChannelForm(request.POST, channel=channel)
        if form.is_valid():
            data = form.cleaned_data
            try:
                channels.channel_update(
                    channel=channel,
                    label=data["label"],
                    url=data["url"] or None,
                    events=data["events"],
                    actor=_actor(request),
                )
            except channels.ChannelProblem as problem:
                _problem_to_form(form, problem)
            else:
                if form.url_warning:
                    messages.warning(request, form.url_warning)
                messages.success(request, f"Channel {channel.label} saved.")
                return redirect("governance:channels")
        status = 422
    deliveries = list(
        ChannelDelivery.objects.filter(channel=channel).order_by("-created_at", "-id")[:RECENT_DELIVERIES]
    )
    context = {"form": form, "channel": channel, "url": channels.shown_url(channel), "deliveries": deliveries}
    return render(request, "governance/channel_edit.html", context, status=status)


@login_required
@require_POST
def channel_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _channel_or_404(editor_membership(request).account_id, pk)
    channels.channel_toggle(channel=channel, enabled=not channel.enabled, actor=_actor(request))
    messages.success(request, f"Channel {channel.label} {'enabled' if channel.enabled else 'disabled'}.")
    return redirect("governance:channels")


@login_required
@require_POST
def channel_test(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _channel_or_404(editor_membership(request).account_id, pk)
    channels.send_test(channel=channel, actor=_actor(request))
    messages.success(
        request, f"Test message queued for {channel.label}: its result shows here once delivered (refresh)."
    )
    return redirect("governance:channels")


@login_required
@require_http_methods(["GET", "POST"])
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    channel = _channel_or_404(editor_membership(request).account_id, pk)
    if request.method == "POST":
        channels.channel_delete(channel=channel, actor=_actor(request))
        messages.success(request, f"Channel {channel.label} deleted.")
        return redirect("governance:channels")
    return render(request, "governance/channel_delete.html", {"channel": channel})


# --- one-click Approve / Deny -----------------------------------------------------------------------------------


class DenyForm(forms.Form):
    reason = forms.CharField(
        validators=[validate_identifier],
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required: the agent is told why.",
    )


def _refused(request: HttpRequest, title: str, message: str, status: int) -> HttpResponse:
    context = {"title": title, "message": message}
    return render(request, "governance/channel_approval_link.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def approval_confirm(request: HttpRequest, public_id: str, token: str) -> HttpResponse:
    """The page a one-click link opens: the call's summary and one button (Approve, or Deny with a reason). GET
    never decides; the POST does, once (approvals.decide: a decided approval is not decided again). Login required;
    only an owner or admin of the approval's account decides (a viewer sees the summary, without the button)."""
    try:
        link = channels.read_link(token)
    except channels.BadLink as bad:
        return _refused(request, "This link is not valid", str(bad), 400)
    if link.public_id != public_id:
        return _refused(request, "This link is not valid", "The link does not name this approval.", 400)
    current_membership(request)  # the user's memberships, once (the layout uses them too)
    memberships = {m.account_id: m for m in request._memberships}  # type: ignore[attr-defined]
    approval = (
        Approval.objects.select_related("agent").filter(public_id=public_id, account_id__in=list(memberships)).first()
    )
    if approval is None:  # none, or in an account this login is not a member of: the same answer
        raise Http404("No such approval in your accounts.")
    membership = memberships[approval.account_id]
    # As on the approval's page: an owner or admin, on a plan with governance.
    may_decide = membership.role in EDITOR_ROLES and membership.account.plan.has_governance
    if request.method == "POST" and not may_decide:
        raise PermissionDenied("Only an owner or admin of the account, on a plan with governance, decides calls.")
    if link.expired:
        return _refused(request, "This link has expired", "The approval request it was sent for has expired.", 403)
    approve = link.action == "approve"
    form = DenyForm(request.POST or None) if not approve else None
    status, decided_now = 200, False
    if request.method == "POST" and approval.status == Approval.Status.PENDING:
        if approve or (form is not None and form.is_valid()):
            try:
                approval = approvals.decide(
                    account_id=approval.account_id,
                    public_id=approval.public_id,
                    approve=approve,
                    reason="" if approve else form.cleaned_data["reason"],  # type: ignore[union-attr]
                    actor=_actor(request),
                )
                decided_now = True
            except approvals.NotPending as taken:
                approval, status = taken.approval, 409
            except approvals.NotFound:
                raise Http404("No such approval in your accounts.") from None
        else:
            status = 422
    elif request.method == "POST":
        status = 409  # decided, used, expired or superseded before this POST: nothing changes
    context = {
        "approval": approval,
        "action": link.action,
        "form": form,
        "decided_now": decided_now,
        "args": _args_text(approval),
        "rule": channels.rule_text(approval.rule),
        "approval_path": approvals.approval_path(approval),
        "may_decide": may_decide,
    }
    return render(request, "governance/channel_approval_confirm.html", context, status=status)


def _args_text(approval: Approval) -> str | None:
    preview = approvals.args_preview(approval) if approval.status == Approval.Status.PENDING else None
    return None if preview is None else json.dumps(preview, indent=2, sort_keys=True, ensure_ascii=False)
