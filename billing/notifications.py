"""Notifications by email: recorded when something fails, sent in per-account digests by a beat task."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing.choices import EDITOR_ROLES
from billing.models import Account, Membership, Notification

logger = logging.getLogger(__name__)
DIGEST_ITEMS = 50
PREFERENCE: dict[str, str] = {
    Notification.Kind.TOOL_ERROR: "tool_error_notifications_enabled",
    Notification.Kind.RUN_FAILURE: "run_failure_notifications_enabled",
}


# Told of every notice, whether or not email is on (the governance app's notification channels): each is called with
# account_id, kind, subject and body; an error is logged, never raised into the caller.
LISTENERS: list[Callable[..., None]] = []


def notify(*, account_id: int, kind: str, subject: str, body: str = "") -> None:
    """Queue a notification if the account wants this kind (/v1/me/notifications, the Settings page)."""
    for listener in LISTENERS:
        try:
            listener(account_id=account_id, kind=kind, subject=subject, body=body)
        except Exception:
            logger.exception("notification listener %s failed", listener)
    # Payment problems (billing) and security findings have no switch of their own: sent whenever email is on.
    preference = {PREFERENCE[kind]: True} if kind in PREFERENCE else {}
    wanted = Account.objects.filter(pk=account_id, email_notifications_enabled=True, **preference)
    if wanted.exists():
        Notification.objects.create(account_id=account_id, kind=kind, subject=subject[:200], body=body)


def send_digests() -> int:
    """Beat: one email per account with everything unsent (at most DIGEST_ITEMS listed). Returns emails sent."""
    sent = 0
    account_ids = set(Notification.objects.filter(sent_at__isnull=True).values_list("account_id", flat=True))
    for account_id in account_ids:
        try:
            sent += _send_digest(account_id)
        except Exception:
            logger.exception("could not send the notification digest of account %s; retried next run", account_id)
    return sent


def _send_digest(account_id: int) -> int:
    """Claim the account's unsent rows, send one email, mark them sent. Returns 1 if an email went out."""
    with transaction.atomic():
        pending = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(account_id=account_id, sent_at__isnull=True)
            .order_by("created_at", "id")
        )
        if not pending:
            return 0  # nothing, or another worker is sending this account's digest
        recipients = sorted(
            set(
                Membership.objects.filter(account_id=account_id, role__in=EDITOR_ROLES)
                .exclude(user__email="")
                .values_list("user__email", flat=True)
            )
        )
        account = Account.objects.get(pk=account_id)
        lines = [
            f"- [{n.get_kind_display()}] {n.created_at:%Y-%m-%d %H:%M:%S} UTC — {n.subject}"
            for n in pending[:DIGEST_ITEMS]
        ]
        if len(pending) > DIGEST_ITEMS:
            lines.append(f"… and {len(pending) - DIGEST_ITEMS} more.")
        if recipients:
            asks = sum(1 for n in pending if n.kind == Notification.Kind.APPROVAL_REQUESTED)
            problems = len(pending) - asks
            parts = [f"{problems} new problem{'s' if problems != 1 else ''}"] if problems else []
            parts += [f"{asks} approval request{'s' if asks != 1 else ''}"] if asks else []
            subject = f"[OnceOnly] {' and '.join(parts)} in {account.name}"
            body = "\n".join(
                [f"Account {account.name}:", "", *lines, "", "Change what you receive on the Settings page."]
            )
            # Inside the transaction on purpose: if sending fails, the rows stay unsent and the next run retries
            # (EMAIL_TIMEOUT bounds how long the rows stay locked).
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
        Notification.objects.filter(pk__in=[n.pk for n in pending]).update(sent_at=timezone.now())
    return 1 if recipients else 0
