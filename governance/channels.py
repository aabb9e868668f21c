"""Notification channels (docs/notifications.md): an account's Slack incoming webhooks and generic outbound webhooks,
each subscribed to some event kinds, and the one-click Approve/Deny links that approval requests carry.

``publish`` writes one ``ChannelDelivery`` per enabled channel subscribed to the event and, after the commit, wakes
a Celery task per delivery (``governance.deliver_channel_message``). ``deliver`` claims a delivery that is due (one
conditional UPDATE: a redelivered or duplicate task sends nothing), POSTs it — Slack: ``{"text", "blocks"}``; a
webhook: ``{"type", "timestamp", "data"}`` signed with Standard Webhooks by the same code as tool dispatch
(``dispatch.standard_webhook_headers``) — through the tools' SSRF guard, pinned to the address it approved, with a
timeout and never following a redirect, and records the attempt on the delivery and on the channel (last status,
consecutive failures). A failure that may pass (a connection error, a timeout, 408, 429, 5xx) is retried after
``BACKOFF_SECONDS`` up to ``MAX_ATTEMPTS``; a beat task (``deliver_due``) re-wakes deliveries whose wake-up was lost.

Payloads never carry a call's args: an approval's tool, agent, spend, risk, rule, args digest and links.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets as random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from billing.models import Account, Notification
from billing.notifications import notify
from billing.services import audit_record
from governance import approvals, dispatch, ssrf
from governance import secrets as sealed
from governance.models import Approval, ChannelDelivery, NotificationChannel
from onceonly_site import formatting

logger = logging.getLogger(__name__)

Event = NotificationChannel.Event
Kind = NotificationChannel.Kind
Status = ChannelDelivery.Status
TEST_EVENT = "test"  # "Send test": to one channel, whatever its events
MAX_CHANNELS = 20  # per account: every event is one delivery per subscribed channel
MAX_ATTEMPTS = 6
BACKOFF_SECONDS = (30, 120, 600, 3600, 3 * 3600)  # after the 1st, 2nd… failed attempt
TIMEOUT_SECONDS = 10.0  # one attempt, connect to last byte read
CLAIM_SECONDS = 60  # a claimed delivery is not taken again for this long (its attempt ends well before)
MAX_READ_BYTES = 2048  # of a receiver's answer: enough for an error message
SWEEP_BATCH = 500
USER_AGENT = "OnceOnly-Server/0.1 (+notification channels)"
LINK_SALT = "governance.approval-one-click-link"
RETRIED_STATUSES = frozenset({408, 425, 429})


class ChannelProblem(Exception):
    """A channel cannot be saved as asked (the message says why; ``field`` names the input at fault)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- the channels (settings page) -----------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 (standard alphabet) of 32 random bytes."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode()


def check_url(url: str) -> str:
    """The tools' SSRF guard on a channel URL (governance/ssrf.py, ONCEONLY_ALLOW_PRIVATE_TOOL_URLS included):
    ChannelProblem when refused; else a warning ("" when none: it does not resolve yet)."""
    try:
        return ssrf.check(url).warning
    except ssrf.RefusedUrl as refused:
        raise ChannelProblem(_channel_words(str(refused)), "url") from None


def _channel_words(message: str) -> str:
    """The SSRF guard's refusal, said of a channel rather than a tool."""
    return (
        message.replace("Tool URLs", "Channel URLs")
        .replace("tools must be reachable", "channels must be reachable")
        .replace("use the tool's signing secret", "a webhook channel is signed with its own secret")
    )


def shown_url(channel: NotificationChannel) -> str:
    """The URL as pages show it (kept beside the encrypted URL)."""
    return channel.url_shown


def _masked(kind: str, url: str) -> str:
    """A Slack webhook's path is its credential, so only its end is shown; a webhook's query may hold a token."""
    head, _, path = url.partition("://")
    host, _, rest = path.partition("/")
    if kind == Kind.SLACK:
        return f"{head}://{host}/…{rest[-4:]}" if rest else url
    return url.partition("?")[0] + ("?…" if "?" in url else "")


def _url_fields(kind: str, url: str) -> dict[str, str]:
    return {"url_encrypted": sealed.encrypt(url), "url_shown": _masked(kind, url)}


def _audit(channel: NotificationChannel, account: Account, actor: str, action: str, **data: Any) -> None:
    audit_record(
        account=account,
        actor_label=actor,
        action=f"governance.channel.{action}",
        object_type="notification_channel",
        object_id=channel.label,
        data={"kind": channel.kind, "host": _host(channel.url), **data},
    )


def _host(url: str) -> str:
    return url.partition("://")[2].partition("/")[0].rpartition("@")[2]


def _check_events(events: list[str]) -> None:
    unknown = sorted(set(events) - set(Event.values))
    if unknown or not events:
        raise ChannelProblem(f"Events are some of {', '.join(Event.values)}.", "events")


def channel_create(
    *, account: Account, kind: str, label: str, url: str, events: list[str], actor: str
) -> tuple[NotificationChannel, str]:
    """A new channel (audited). Returns it and its webhook secret, "" for Slack: shown once, then only stored
    encrypted. ChannelProblem: a refused URL, a label in use, or the account's MAX_CHANNELS reached."""
    if kind not in Kind.values:
        raise ChannelProblem("The kind is slack or webhook.", "kind")
    _check_events(events)
    check_url(url)
    secret = new_secret() if kind == Kind.WEBHOOK else ""
    try:
        with transaction.atomic():
            locked = Account.objects.select_for_update().get(pk=account.pk)  # creations of one account in turn
            if NotificationChannel.objects.filter(account=locked).count() >= MAX_CHANNELS:
                raise ChannelProblem(f"An account has at most {MAX_CHANNELS} notification channels.")
            channel = NotificationChannel.objects.create(
                account=locked,
                kind=kind,
                label=label,
                **_url_fields(kind, url),
                events=sorted(set(events)),
                secret_encrypted=sealed.encrypt(secret) if secret else "",
            )
            _audit(channel, locked, actor, "created", events=channel.events)
    except IntegrityError:  # governance_channel_unique_label
        raise ChannelProblem(f"A channel named {label!r} exists already.", "label") from None
    return channel, secret


def channel_update(
    *, channel: NotificationChannel, label: str, url: str | None, events: list[str], actor: str
) -> NotificationChannel:
    """Change the label, events and (``url`` not None) the URL; audited."""
    _check_events(events)
    if url is not None and url != channel.url:
        check_url(url)
        fields = _url_fields(channel.kind, url)
        channel.url_encrypted, channel.url_shown, url_changed = fields["url_encrypted"], fields["url_shown"], True
    else:
        url_changed = False
    channel.label, channel.events = label, sorted(set(events))
    try:
        with transaction.atomic():
            channel.save(update_fields=["label", "url_encrypted", "url_shown", "events"])
            _audit(channel, channel.account, actor, "updated", events=channel.events, url_changed=url_changed)
    except IntegrityError:
        raise ChannelProblem(f"A channel named {label!r} exists already.", "label") from None
    return channel


def channel_toggle(*, channel: NotificationChannel, enabled: bool, actor: str) -> NotificationChannel:
    channel.enabled = enabled
    with transaction.atomic():
        channel.save(update_fields=["enabled"])
        _audit(channel, channel.account, actor, "enabled" if enabled else "disabled")
    return channel


def channel_delete(*, channel: NotificationChannel, actor: str) -> None:
    """Delete the channel with its deliveries (audited); pending ones are not sent."""
    with transaction.atomic():
        _audit(channel, channel.account, actor, "deleted")
        channel.delete()


def send_test(*, channel: NotificationChannel, actor: str) -> ChannelDelivery:
    """A ``test`` event to this channel only (whatever its events, enabled or not); audited."""
    text = f"Test message from OnceOnly to the channel {channel.label!r}, sent by {actor}."
    payload = {"channel": channel.label, "sent_by": actor}
    with transaction.atomic():
        _audit(channel, channel.account, actor, "test_sent")
        (delivery,) = publish(channel.account_id, TEST_EVENT, payload, text, channel=channel)
    return delivery


# --- publishing -------------------------------------------------------------------------------------------------


def publish(
    account_id: int, event: str, payload: dict[str, Any], text: str, *, channel: NotificationChannel | None = None
) -> list[ChannelDelivery]:
    """One delivery per enabled channel of the account subscribed to ``event`` (or to ``channel`` alone), each
    delivered by a Celery task woken after the commit. Returns the deliveries."""
    if channel is not None:
        targets = [channel]
    else:
        enabled = NotificationChannel.objects.filter(account_id=account_id, enabled=True).only("pk", "events")
        targets = [c for c in enabled if event in (c.events or [])]  # a few rows; JSON containment is not portable
    if not targets:
        return []
    now = timezone.now()
    deliveries = ChannelDelivery.objects.bulk_create(
        ChannelDelivery(
            channel_id=target.pk,
            event=event,
            message_id="msg_" + random.token_urlsafe(18),
            payload=payload,
            text=text,
            next_attempt_at=now,
            created_at=now,
        )
        for target in targets
    )
    # robust: a broker that is down must not undo the caller's work; the beat sweep wakes the deliveries later.
    transaction.on_commit(partial(enqueue, [d.pk for d in deliveries]), robust=True)
    return deliveries


def enqueue(delivery_ids: list[int], countdown: float | None = None) -> None:
    from governance.tasks import deliver_channel_message

    for pk in delivery_ids:
        if countdown is None:
            deliver_channel_message.delay(pk)
        else:
            deliver_channel_message.apply_async((pk,), countdown=countdown)


def backoff(attempts: int) -> int:
    """Seconds before the next attempt, after ``attempts`` failed ones."""
    return BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1]


# --- delivery ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    status: int | None  # the receiver's HTTP status; None when none came
    error: str  # "" when delivered
    retry: bool  # may a later attempt succeed?


def deliver(delivery_id: int) -> str | None:
    """Send one delivery if it is due and nobody else is sending it; record the attempt. Returns its status after
    the attempt, None when there was nothing to send."""
    now = timezone.now()
    claimed = ChannelDelivery.objects.filter(pk=delivery_id, status=Status.PENDING, next_attempt_at__lte=now).update(
        next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS)
    )
    if not claimed:
        return None  # delivered, failed, not due yet, or being sent
    delivery = ChannelDelivery.objects.select_related("channel").filter(pk=delivery_id).first()
    if delivery is None:  # its channel was deleted meanwhile
        return None
    channel = delivery.channel
    if not channel.enabled and delivery.event != TEST_EVENT:
        attempt = Attempt(None, "the channel was disabled before this could be sent", retry=False)
    else:
        attempt = _attempt(channel, delivery)
    return _record(delivery, attempt)


def _attempt(channel: NotificationChannel, delivery: ChannelDelivery) -> Attempt:
    try:
        body, headers = request_of(channel, delivery)
    except ValueError as problem:  # the secret cannot be decrypted with the configured keys
        return Attempt(None, str(problem), retry=False)
    try:
        checked = ssrf.check(channel.url)  # again at each delivery: DNS may have changed since it was saved
    except ssrf.RefusedUrl as refused:
        return Attempt(None, _channel_words(str(refused)), retry=False)
    if checked.warning:  # does not resolve now: never let the HTTP client resolve it again unchecked
        return Attempt(None, checked.warning, retry=True)
    url, pin_headers, extensions = dispatch.pinned(checked)
    started = time.monotonic()
    try:
        with dispatch.client().stream(
            "POST",
            url,
            content=body,
            headers=headers | pin_headers,
            timeout=TIMEOUT_SECONDS,
            extensions=extensions,
        ) as response:
            status = response.status_code
            answer = _read(response, started + TIMEOUT_SECONDS)
    except httpx.TimeoutException:
        return Attempt(None, f"timed out after {TIMEOUT_SECONDS:.0f} s", retry=True)
    except httpx.HTTPError as exc:
        return Attempt(None, f"connection failed: {exc.__class__.__name__}", retry=True)
    if 200 <= status < 300:
        return Attempt(status, "", retry=False)
    said = " ".join(answer.decode(errors="replace").split())[:200]
    if 300 <= status < 400:
        return Attempt(status, f"HTTP {status}: redirects are not followed (use the final URL)", retry=False)
    error = f"HTTP {status}" + (f": {said}" if said else "")
    return Attempt(status, error, retry=status >= 500 or status in RETRIED_STATUSES)


def _read(response: httpx.Response, until: float) -> bytes:
    """At most MAX_READ_BYTES of the answer, and only until ``until`` (a receiver that trickles is cut off)."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_READ_BYTES or time.monotonic() > until:
            break
    return b"".join(chunks)[:MAX_READ_BYTES]


def _record(delivery: ChannelDelivery, attempt: Attempt) -> str:
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_status, delivery.last_error = attempt.status, attempt.error[:500]
    if not attempt.error:
        delivery.status, delivery.delivered_at, delivery.next_attempt_at = Status.DELIVERED, now, None
    elif attempt.retry and delivery.attempts < MAX_ATTEMPTS:
        delivery.next_attempt_at = now + timedelta(seconds=backoff(delivery.attempts))
    else:
        delivery.status, delivery.next_attempt_at = Status.FAILED, None
    fields = ("attempts", "last_status", "last_error", "status", "delivered_at", "next_attempt_at")
    if not ChannelDelivery.objects.filter(pk=delivery.pk).update(**{f: getattr(delivery, f) for f in fields}):
        return delivery.status  # the channel was deleted during the attempt
    NotificationChannel.objects.filter(pk=delivery.channel_id).update(
        last_delivery_at=now,
        last_status=attempt.status,
        last_error=attempt.error[:500],
        consecutive_failures=0 if not attempt.error else F("consecutive_failures") + 1,
    )
    if delivery.status == Status.PENDING:
        enqueue([delivery.pk], countdown=backoff(delivery.attempts))
    elif delivery.status == Status.FAILED:
        logger.warning(
            "channel %s: delivery %s failed after %s attempt(s): %s",
            delivery.channel_id,
            delivery.message_id,
            delivery.attempts,
            attempt.error,
        )
    return delivery.status


def deliver_due(*, batch: int = SWEEP_BATCH) -> int:
    """Beat: wake the pending deliveries that are due (their wake-up was lost: a broker down at the commit, a
    worker that died), and delete finished ones older than ONCEONLY_RETENTION_DAYS. Returns how many were woken."""
    now = timezone.now()
    due = list(
        ChannelDelivery.objects.filter(status=Status.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:batch]
    )
    if due:
        enqueue(due)
    cutoff = now - timedelta(days=settings.ONCEONLY_RETENTION_DAYS)
    # Per channel (a range of the (channel, -created_at) index each, unordered): the rows past retention, never a walk
    # over every delivery kept (tests/test_beat_tasks_bounded.py).
    old = list(
        ChannelDelivery.objects.filter(channel__in=NotificationChannel.objects.values("pk"), created_at__lt=cutoff)
        .exclude(status=Status.PENDING)
        .order_by()
        .values_list("pk", flat=True)[:batch]
    )
    if old:
        ChannelDelivery.objects.filter(pk__in=old).delete()
    return len(due)


# --- what is sent -----------------------------------------------------------------------------------------------


def request_of(channel: NotificationChannel, delivery: ChannelDelivery) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an attempt. ValueError: the webhook's secret cannot be decrypted."""
    if channel.kind == Kind.SLACK:
        # The top-level text is what notifications and mobile pushes show: escaped like the blocks (an agent id of
        # "<!channel>" must not mention anyone).
        body = _json(
            {"text": _mrkdwn(delivery.text), "blocks": slack_blocks(delivery.event, delivery.payload, delivery.text)}
        )
        return body, {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    envelope = {"type": delivery.event, "timestamp": approvals.iso(delivery.created_at), "data": delivery.payload}
    body = _json(envelope)
    secret = sealed.decrypt(channel.secret_encrypted)
    signed = dispatch.standard_webhook_headers(secret, msg_id=delivery.message_id, body=body, now=datetime.now(UTC))
    return body, {"Content-Type": "application/json", "User-Agent": USER_AGENT, **signed}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _mrkdwn(text: str, limit: int = 2900) -> str:
    """Plain text inside Slack's mrkdwn: &, < and > escaped (no mention or link can be injected), cut to fit."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def _absolute(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("https://", "http://"))


def slack_blocks(event: str, payload: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """Block Kit of a message: the text; an approval's facts; its Approve / Deny / Open link buttons (absolute
    links only: Slack refuses relative ones, so without ONCEONLY_PUBLIC_URL there are none)."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(text)}}]
    if event in (Event.APPROVAL_REQUESTED, Event.APPROVAL_DECIDED):
        facts = [
            ("Tool", payload.get("tool")),
            ("Agent", payload.get("agent_id")),
            ("Spend", usd(payload.get("spend_usd"))),
            ("Risk", payload.get("risk_level")),
            ("Rule", rule_text(payload.get("rule"))),
            ("Expires" if event == Event.APPROVAL_REQUESTED else "Status", _when_or(event, payload)),
        ]
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_mrkdwn(str(value), 1900)}"}
                    for name, value in facts
                    if value not in (None, "")
                ],
            }
        )
    buttons = []
    for label, key, style in (("Approve", "approve_url", "primary"), ("Deny", "deny_url", "danger")):
        if event == Event.APPROVAL_REQUESTED and _absolute(payload.get(key)):
            buttons.append(_button(label, payload[key], style))
    if _absolute(payload.get("approval_url")):
        buttons.append(_button("Open in OnceOnly", payload["approval_url"], None))
    if event == Event.BUDGET_ALERT and _absolute(payload.get("alerts_url")):  # docs/governance.md §"Budget alerts"
        buttons.append(_button("Open alerts", payload["alerts_url"], None))
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"OnceOnly · {_mrkdwn(event, 100)}"}]})
    return blocks


def _button(label: str, url: str, style: str | None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url[:3000]}
    if style:
        button["style"] = style
    return button


def _when_or(event: str, payload: dict[str, Any]) -> str:
    if event == Event.APPROVAL_REQUESTED:
        return str(payload.get("expires_at") or "")
    status = str(payload.get("status") or "")
    by = payload.get("decided_by")
    return f"{status} by {by}" if by else status


def usd(value: Any) -> str:
    return "" if value is None or value == "" else formatting.usd(value)


def rule_text(rule: Any) -> str:
    """The require_approval entry that matched, as people read it: "stripe.*, over $50.00"."""
    if not isinstance(rule, dict):
        return "" if rule is None else str(rule)
    over = rule.get("over_usd")
    return str(rule.get("tool", "")) + (f", over {usd(over)}" if over is not None else "")


# --- approvals: what their events carry, and the one-click links ------------------------------------------------


def approval_payload(approval: Approval) -> dict[str, Any]:
    """An approval as events describe it: never its args (the digest only)."""
    return {
        "approval_id": approval.public_id,
        "status": approval.status,
        "agent_id": approval.agent.agent_id,
        "tool": approval.tool,
        "args_hash": approval.args_hash,
        "spend_usd": float(approval.spend_usd),
        "risk_level": approval.risk_level,
        "rule": approval.rule,
        "policy_version": approval.policy_version,
        "run_id": approval.run_id or None,
        "created_at": approvals.iso(approval.created_at),
        "expires_at": approvals.iso(approval.expires_at),
        "approval_url": approvals.approval_url(approval),
    }


@dataclass(frozen=True, slots=True)
class Link:
    public_id: str
    action: str  # "approve" or "deny"
    expires_at: int  # Unix time: the approval's expires_at

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


class BadLink(Exception):
    pass


ACTIONS = ("approve", "deny")


def one_click_url(approval: Approval, action: str) -> str:
    """A signed link that opens the confirm page of ``action`` on this approval: it names the approval, the action
    and a nonce, expires with the approval, and decides nothing by itself (a POST from the page does, once)."""
    assert action in ACTIONS
    token = signing.dumps(
        {
            "a": approval.public_id,
            "d": action,
            "n": random.token_urlsafe(9),
            "e": int(approval.expires_at.timestamp()),
        },
        salt=LINK_SALT,
    )
    path = reverse("governance:approval-confirm", args=[approval.public_id, token])
    return settings.ONCEONLY_PUBLIC_URL.rstrip("/") + path


def read_link(token: str) -> Link:
    """The link's contents; BadLink when its signature does not verify or it is malformed."""
    try:
        data = signing.loads(token, salt=LINK_SALT)
        link = Link(public_id=str(data["a"]), action=str(data["d"]), expires_at=int(data["e"]))
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise BadLink("This link is not valid (it was changed or cut short).") from None
    if link.action not in ACTIONS:
        raise BadLink("This link is not valid.")
    return link


def on_approval_requested(approval: Approval) -> None:
    """Listener (approvals.REQUESTED, after the commit): the channels subscribed to approval_requested get the
    request with its one-click links; the account's email digest lists it."""
    payload = approval_payload(approval) | {
        "approve_url": one_click_url(approval, "approve"),
        "deny_url": one_click_url(approval, "deny"),
    }
    text = (
        f"Approval needed: agent {approval.agent.agent_id} wants to call {approval.tool}"
        f" ({usd(approval.spend_usd)}, {approval.risk_level} risk, rule {rule_text(approval.rule)})."
        f" It expires at {approval.expires_at:%Y-%m-%d %H:%M} UTC."
    )
    publish(approval.account_id, Event.APPROVAL_REQUESTED, payload, text)
    url = approvals.approval_url(approval)
    notify(
        account_id=approval.account_id,
        kind=Notification.Kind.APPROVAL_REQUESTED,
        subject=f"Approval needed: {url} — {approval.tool} by {approval.agent.agent_id}",
        body=text,
    )


def on_notice(*, account_id: int, kind: str, subject: str, body: str = "") -> None:
    """A tool error or a failed run (what billing.notifications.notify records for email) for the channels
    subscribed to it; other kinds are not channel events."""
    if kind in (Event.TOOL_ERROR, Event.RUN_FAILURE):
        publish(account_id, kind, {"subject": subject, "detail": body or None}, subject)


SETTLED_WORDS: dict[str, str] = {
    Approval.Status.APPROVED: "was approved",
    Approval.Status.DENIED: "was denied",
    Approval.Status.EXPIRED: "expired undecided",
    Approval.Status.SUPERSEDED: "was superseded by a policy change",
}


def on_approval_settled(approval: Approval) -> None:
    """Listener (approvals.SETTLED, after the commit): approval_decided, with who decided and why. The request's
    line not yet emailed is dropped from the digest: nobody needs to act on it any more."""
    Notification.objects.filter(
        account_id=approval.account_id,
        kind=Notification.Kind.APPROVAL_REQUESTED,
        sent_at__isnull=True,
        subject__contains=approval.public_id,
    ).delete()
    payload = approval_payload(approval) | {
        "decided_by": approval.decided_by or None,
        "decided_at": approvals.iso(approval.decided_at),
        "reason": approval.reason or None,
    }
    did = SETTLED_WORDS.get(approval.status, f"is {approval.status}")
    by = f" by {approval.decided_by}" if approval.decided_by else ""
    why = f": {approval.reason!r}" if approval.reason else ""
    text = f"The call of {approval.tool} by agent {approval.agent.agent_id} {did}{by}{why}."
    publish(approval.account_id, Event.APPROVAL_DECIDED, payload, text)
