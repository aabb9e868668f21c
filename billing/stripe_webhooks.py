"""Stripe webhooks: verified, stored once, processed idempotently, never moving an account backwards (docs/billing.md).

``receive`` verifies the ``Stripe-Signature`` (tolerance 300 s) and stores the event in a ``ProviderEvent`` row whose
unique event id makes every redelivery a no-op; ``process`` claims the row (received/failed → processing, one
conditional UPDATE, so concurrent deliveries process it once) and dispatches by type through ``HANDLERS``. A
handler's effects and the row's ``succeeded`` commit together. Subscription state carries the Stripe ``created``
time of the event that set it (``BillingSubscription.state_at``): an older event delivered later is ignored. A
field of the wrong type makes the event ``ignored`` for good (``Malformed``), never a failure Stripe retries.

What an event may reach: the account is always the one linked to the event's Stripe customer (linked by this server
when the owner first subscribes, never by an event), and a completed checkout counts only when this server created
the session (``checkout_session_record``). Metadata (``client_reference_id``, ``metadata.account_id``) never chooses
the account: it only says whom an event that was refused named, for the events page, the log and the audit log.
Within the account, only its linked subscription moves it (``_claim_subscription``): another subscription of the
same customer takes its place only once the linked one is no longer live, and an ended subscription stays ended.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from billing import services
from billing.models import Account, AuditEntry, BillingSubscription, Notification, Plan, ProviderEvent
from billing.notifications import notify
from billing.stripe_client import price_for
from onceonly_site import runner
from onceonly_site.params import whole_number

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)
TOLERANCE_SECONDS = 300
FREE_PLAN = "free"
STALE_PROCESSING = timedelta(minutes=5)
IN_FLIGHT_WAIT_SECONDS = 3.0  # a "processing" row older than this died with its process: retryable
PAYMENT_PROBLEM = ("past_due", "unpaid")
ENDED = ("canceled", "incomplete_expired")  # terminal in Stripe: such a subscription never comes back
LIVE = ("active", "trialing", "past_due", "unpaid", "incomplete")  # billed: BillingSubscription.has_live_subscription
CHECKOUT_STARTED = "billing.checkout.started"  # the record of a Checkout Session this server created
CHECKOUT_OPEN_FOR = timedelta(hours=24)  # the longest a Checkout Session can be paid (Stripe's default expiry)
REFUSED = "billing.stripe_event.refused"  # an event for a customer or subscription the account does not have
MAX_UNIX_TIME = 253402300799  # 9999-12-31T23:59:59Z: the last second a datetime (and the database) holds
MAX_AMOUNT = 2**63 - 1  # BigIntegerField


class BadWebhook(Exception):
    """Not a verified Stripe event (400, nothing stored)."""


class Ignored(Exception):
    """A verified event this server has nothing to do with (another product's customer, an older state).

    ``account``: an account of this server that the event names although it is not that account's (shown with the
    event on the events page, and logged); ``refused``: what to audit for that account when the event tried to put
    another Stripe customer in place of its linked one.
    """

    def __init__(
        self, reason: str, *, account: Account | None = None, refused: dict[str, str] | None = None, notice: str = ""
    ):
        super().__init__(reason)
        self.account, self.refused, self.notice = account, refused, notice


class Malformed(Ignored):
    """A verified event with a field of the wrong type (a string expected, a number, a time out of range…). Ignored
    for good: failing it would make Stripe deliver the same malformed event again for days."""

    def __init__(self, what: str, field: str, expected: str):
        super().__init__(f"malformed {what}: `{field}` is not {expected}")


# --- receive ----------------------------------------------------------------------------------------------------


def receive(payload: bytes, signature: str | None) -> tuple[ProviderEvent, bool]:
    """Verify and store an event. Returns (row, whether this delivery stored it)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("The body is not UTF-8 JSON.") from None
    try:
        stripe.WebhookSignature.verify_header(payload, signature, settings.STRIPE_WEBHOOK_SECRET, TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise BadWebhook(f"Signature verification failed: {str(exc).split('.')[0]}.") from None
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested deeper than json can parse
        raise BadWebhook("The body is not JSON.") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    ):
        raise BadWebhook("Not a Stripe event: id, type, created and data.object are required.")
    created = _unix_time(event["created"])
    if created is None:  # Stripe's are seconds since 1970; 10**20 or true is no time (and would not store)
        raise BadWebhook(f"Not a Stripe event: created must be a Unix time from 0 to {MAX_UNIX_TIME}.")
    if not _storable(event):
        raise BadWebhook("Not a Stripe event: a string holds a NUL character or an unpaired surrogate.")
    try:
        with transaction.atomic():
            row = ProviderEvent.objects.create(
                provider="stripe",
                event_id=event["id"][:100],
                type=event["type"][:100],
                payload=event,
                created_at=created,
            )
        return row, True
    except IntegrityError:
        return ProviderEvent.objects.get(provider="stripe", event_id=event["id"][:100]), False


def _storable(event: dict) -> bool:
    """Whether the database can keep the payload: PostgreSQL's jsonb refuses a NUL character (and UTF-8 any unpaired
    surrogate) in a string or a key, which would be a 500 when the row is written. Iterative: json nests deeper than
    the recursion limit allows."""
    stack: list[Any] = [event]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, str) and ("\x00" in value or not _utf8(value)):
            return False
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- process ----------------------------------------------------------------------------------------------------


def process(row_pk: int) -> str:
    """Process a stored event once. Returns its status afterwards (a concurrent delivery sees ``processing``)."""
    now = timezone.now()
    retryable = Q(status__in=[ProviderEvent.Status.RECEIVED, ProviderEvent.Status.FAILED]) | Q(
        status=ProviderEvent.Status.PROCESSING, processed_at__lt=now - STALE_PROCESSING
    )
    claimed = ProviderEvent.objects.filter(retryable, pk=row_pk).update(
        status=ProviderEvent.Status.PROCESSING, attempts=F("attempts") + 1, processed_at=now
    )
    row = ProviderEvent.objects.get(pk=row_pk)
    if not claimed:
        # Another delivery is processing it (milliseconds, normally): wait for its outcome, so this answer says
        # what happened. Still processing after that → the caller answers 503 and Stripe delivers it again.
        deadline = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
        while row.status == ProviderEvent.Status.PROCESSING and time.monotonic() < deadline:
            with runner.stepped_aside():  # the other delivery may be a request of this very process
                time.sleep(0.05)
            row.refresh_from_db(fields=["status"])
        return row.status
    handler = HANDLERS.get(row.type)
    try:
        with transaction.atomic():
            if handler is None:
                raise Ignored(f"{row.type} is not handled")
            account = handler(row.payload["data"]["object"], row.created_at, row.event_id)
            _mark(row, ProviderEvent.Status.SUCCEEDED, account=account)
    except Ignored as ignored:
        _ignore(row, ignored)
    except Exception as exc:
        logger.exception("Stripe event %s (%s) failed", row.event_id, row.type)
        _mark(row, ProviderEvent.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
    return ProviderEvent.objects.values_list("status", flat=True).get(pk=row_pk)


def _mark(row: ProviderEvent, status: str, *, account: Account | None = None, error: str = "") -> None:
    changes: dict[str, Any] = {"status": status, "error": error, "processed_at": timezone.now()}
    if account is not None:
        changes["account"] = account
    ProviderEvent.objects.filter(pk=row.pk).update(**changes)


def _ignore(row: ProviderEvent, ignored: Ignored) -> None:
    """Store the reason; an event that named an account of this server is logged, and shown with that account on the
    events page; one that tried to replace its linked customer or subscription is audited too, and one that shows a
    second subscription billed next to the linked one is notified to the owners. Ignored rows are never processed
    again, so each event is audited and notified once."""
    with transaction.atomic():
        _mark(row, ProviderEvent.Status.IGNORED, account=ignored.account, error=str(ignored))
        if ignored.account is None:
            return
        logger.warning("Stripe event %s (%s) not applied: %s", row.event_id, row.type, ignored)
        if ignored.refused:
            services.audit_record(
                account=ignored.account,
                action=REFUSED,
                actor_label="stripe",
                object_type="stripe_event",
                object_id=row.event_id,
                data={"type": row.type, **ignored.refused},
            )
        if ignored.notice:
            notify(account_id=ignored.account.pk, kind=Notification.Kind.BILLING, subject=ignored.notice)


# --- handlers ---------------------------------------------------------------------------------------------------


def _billing_for(account: Account) -> BillingSubscription:
    BillingSubscription.objects.get_or_create(account=account)
    return BillingSubscription.objects.select_for_update().select_related("account__plan").get(account=account)


def _id(value: Any) -> str:
    """A Stripe reference as an id: a string, or an expanded object's ``id``."""
    value = value.get("id") if isinstance(value, dict) else value
    return value if isinstance(value, str) else ""


# Fields of data.object: missing or null is "none"; another type than Stripe's, or a string longer than the column
# that keeps it, is Malformed (ignored for good; a database error would be a failure Stripe retries).


def _unix_time(value: Any) -> datetime | None:
    """Whole seconds since 1970 as a datetime; None for anything else (a bool, a float, out of range)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UNIX_TIME:
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def _text(obj: dict, key: str, what: str, *, longest: int = 100) -> str:
    value = obj.get(key)
    if value is not None and not (isinstance(value, str) and len(value) <= longest):
        raise Malformed(what, key, f"a string of at most {longest} characters")
    return value or ""


def _ref(obj: dict, key: str, what: str) -> str:
    """A reference to another Stripe object: its id, or the object expanded with its id."""
    value = obj.get(key)
    value = value.get("id") if isinstance(value, dict) else value
    if value is not None and not (isinstance(value, str) and len(value) <= 100):
        raise Malformed(what, key, "an id")
    return value or ""


def _time(obj: dict, key: str, what: str) -> datetime | None:
    if obj.get(key) is None:
        return None
    at = _unix_time(obj[key])
    if at is None:
        raise Malformed(what, key, "a Unix time")
    return at


def _amount(obj: dict, key: str, what: str) -> int | None:
    value = obj.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or abs(value) > MAX_AMOUNT):
        raise Malformed(what, key, "an amount")
    return value


def _flag(obj: dict, key: str, what: str) -> bool:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise Malformed(what, key, "true or false")
    return bool(value)


def _object(obj: dict, key: str, what: str) -> dict:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise Malformed(what, key, "an object")
    return value or {}


def _first_item(sub: dict, what: str) -> dict:
    """The subscription's first item (its price, and its period end in the API versions that moved it there)."""
    items = _object(sub, "items", what).get("data")
    if items is None or items == []:
        return {}
    if not isinstance(items, list) or not isinstance(items[0], dict):
        raise Malformed(what, "items.data", "a list of items")
    return items[0]


@contextmanager
def _about(account: Account) -> Iterator[None]:
    """A malformed event of a linked customer is shown with its account on the events page, and logged."""
    try:
        yield
    except Malformed as malformed:
        malformed.account = account
        raise


def _named_account(obj: dict) -> Account | None:
    """The account of this server that an object's ``client_reference_id`` or ``metadata.account_id`` names. Never
    the account an event is applied to (anyone who can create objects in the Stripe account can write them): only
    whom to tell about an event that was refused."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    for value in (obj.get("client_reference_id"), metadata.get("account_id")):
        account_id = whole_number(value) if isinstance(value, str) else None
        account = Account.objects.filter(pk=account_id).first() if account_id is not None else None
        if account is not None:
            return account
    return None


def _linked_account(obj: dict, what: str) -> Account:
    """The account linked to the object's Stripe customer. That link is made by this server only (the first
    *Subscribe* creates the customer and stores its id) and never replaced by an event: an event for any other
    customer changes nothing, whatever account its metadata names."""
    customer = _id(obj.get("customer"))
    if customer:
        billing = BillingSubscription.objects.filter(customer_id=customer).select_related("account").first()
        if billing is not None:
            return billing.account
    named = _named_account(obj)
    if named is None:
        raise Ignored(f"{what}: no account of this server is linked to customer {customer!r}")
    linked = BillingSubscription.objects.filter(account=named).values_list("customer_id", flat=True).first() or ""
    reason = (
        f"{what} is for customer {customer!r}, not the Stripe customer linked to account {named.pk} "
        f"({linked or 'none yet'}): not applied"
    )
    raise Ignored(reason, account=named, refused={"customer": customer, "linked_customer": linked} if linked else None)


def checkout_session_record(*, account: Account, actor: User, plan: Plan, session_id: str) -> AuditEntry:
    """Record a Checkout Session this server created for ``account`` (the audit entry ``billing.checkout.started``:
    the plan chosen and the session id); ``checkout.session.completed`` applies only sessions recorded here. Written
    after Stripe answered and before the owner is sent there, so every session an owner can pay is recorded."""
    return services.audit_record(
        account=account,
        actor=actor,
        action=CHECKOUT_STARTED,
        object_type="plan",
        object_id=plan.code,
        data={"session": session_id},
    )


def _started_plan(account: Account, session_id: str) -> str | None:
    """The plan code recorded when this server created ``session_id`` for ``account``; None if it never did."""
    if not session_id:
        return None
    started = AuditEntry.objects.filter(account=account, action=CHECKOUT_STARTED, data__session=session_id)
    return started.values_list("object_id", flat=True).first()


def checkout_pending(account: Account) -> str:
    """The Checkout Session this server created for ``account`` most recently, if as far as this server knows it may
    still be paid: created less than CHECKOUT_OPEN_FOR ago, and no ``checkout.session.completed`` (applied or not) or
    ``checkout.session.expired`` of it stored. '' otherwise. Before creating a session, checkout closes this one
    (billing/views.py), so no older one can be open (short of two checkouts at the same instant)."""
    started = AuditEntry.objects.filter(
        account=account, action=CHECKOUT_STARTED, created_at__gte=timezone.now() - CHECKOUT_OPEN_FOR
    )
    latest = started.order_by("-created_at", "-id").first()
    if latest is None or not isinstance(latest.data, dict):
        return ""
    session_id = latest.data.get("session")
    if not isinstance(session_id, str) or not session_id:
        return ""
    closed = ProviderEvent.objects.filter(
        provider="stripe",
        type__in=["checkout.session.completed", "checkout.session.expired"],
        received_at__gte=latest.created_at,
        payload__data__object__id=session_id,
    )
    return "" if closed.exists() else session_id


def _plan_for_price(price_id: str) -> Plan:
    for plan in Plan.objects.all():
        if price_id and price_for(plan) == price_id:
            return plan
    raise ValueError(f"price {price_id!r} is not mapped to a plan (STRIPE_PRICE_IDS or a plan's stripe_price_id)")


def _set_plan(account: Account, plan: Plan, event_id: str) -> None:
    if account.plan_id != plan.pk:
        reason = f"Stripe event {event_id}" if event_id else "subscription ended; paid period over"
        services.account_set_plan(account=account, plan=plan, actor_label="stripe", reason=reason)


def _newer(billing: BillingSubscription, at: datetime, *, advance: bool = True) -> bool:
    """Whether an event created at ``at`` may still change the account (and, with ``advance``, record it as the
    newest state). Checkout does not advance it: the subscription events that follow it, even those Stripe stamped
    a moment earlier, still bring the renewal date and price."""
    if billing.state_at is not None and at < billing.state_at:
        return False
    if advance:
        billing.state_at = at
    return True


def _flag_payment_problem(billing: BillingSubscription, problem: bool, why: str) -> None:
    if problem and not billing.payment_problem:
        notify(
            account_id=billing.account_id,
            kind=Notification.Kind.BILLING,
            subject=f"Payment problem: {why}; update the payment method (Usage & plan, Manage billing)",
        )
    billing.payment_problem = problem


def _has_ended(account: Account, subscription: str) -> bool:
    """Whether an event of this account (applied or ignored) said ``subscription`` was deleted or had ended."""
    about = ProviderEvent.objects.filter(provider="stripe", account=account, payload__data__object__id=subscription)
    return about.filter(
        Q(type="customer.subscription.deleted")
        | Q(
            type__in=["customer.subscription.created", "customer.subscription.updated"],
            payload__data__object__status__in=ENDED,
        )
    ).exists()


def _claim_subscription(
    billing: BillingSubscription, subscription: str, what: str, *, live: bool, announce: bool = False, **context: str
) -> None:
    """Let an event about ``subscription`` change the account, or raise Ignored.

    Only the account's linked subscription moves it; the first one seen is linked. The linked one, once ended
    (``canceled``, ``incomplete_expired``: Stripe's terminal states), stays ended whatever arrives later for it. Another
    subscription of the same customer takes its place only when the linked one is no longer billed, the other one is
    (``live``) and has not ended itself; otherwise its event is ignored and audited (``billing.stripe_event.refused``),
    and, with ``announce`` (a checkout completed or a subscription created while the linked one is billed), the owners
    are told that two subscriptions are billed."""
    account, linked = billing.account, billing.subscription_id
    if subscription == linked:
        if billing.status in ENDED:
            raise Ignored(
                f"{what}: subscription {subscription!r} has ended ({billing.status}); a later event does not revive it",
                account=account,
            )
        return
    if not linked and not _has_ended(account, subscription):
        billing.subscription_id = subscription
        return
    if live and linked and not billing.has_live_subscription and not _has_ended(account, subscription):
        # The linked one ended (or never got going): the new one replaces it, with its own state from now on.
        billing.subscription_id, billing.state_at, billing.status, billing.price_id = subscription, None, "", ""
        billing.current_period_end, billing.cancel_at_period_end = None, False
        return
    reason = (
        f"{what} is about subscription {subscription!r}, not the subscription linked to account {account.pk} "
        f"({linked!r}, {billing.status or 'no status yet'}): not applied"
    )
    notice = ""
    told = AuditEntry.objects.filter(account=account, action=REFUSED, data__subscription=subscription)
    if announce and live and billing.has_live_subscription and not told.exists():  # once per subscription
        notice = (
            f"Two subscriptions billed: {subscription} was not applied, the account follows {linked}; cancel "
            f"the one you do not want with Manage billing (Usage & plan)"
        )
    refused = {"customer": billing.customer_id, "subscription": subscription, "linked_subscription": linked, **context}
    raise Ignored(reason, account=account, refused=refused, notice=notice)


def checkout_completed(session: dict, at: datetime, event_id: str) -> Account:
    """An owner finished Checkout: link the subscription, and apply the plan they chose when this server created the
    session. The account is the one linked to the session's customer, and the session must be one this server
    created for it; client_reference_id and metadata choose nothing (another integration on the same Stripe account,
    or anyone with access to it, can set them). A session whose subscription is not the account's (a second one,
    while the first is billed; one that has ended) is ignored (``_claim_subscription``)."""
    session_id = _id(session.get("id"))
    what = f"checkout session {session_id!r}"
    account = _linked_account(session, what)
    plan_code = _started_plan(account, session_id)
    if plan_code is None:
        raise Ignored(
            f"checkout session {session_id!r} was not created by this server for account {account.pk}", account=account
        )
    with _about(account):
        subscription = _ref(session, "subscription", "checkout session")
        if not subscription:  # the sessions this server creates are all in mode subscription
            raise Malformed("checkout session", "subscription", "a subscription (mode subscription)")
        paid = _text(session, "payment_status", "checkout session") in ("paid", "no_payment_required")
    billing = _billing_for(account)
    _claim_subscription(billing, subscription, what, live=True, announce=paid, session=session_id)
    if paid and _newer(billing, at, advance=False):
        plan = Plan.objects.filter(code=plan_code).first()
        if plan is None:
            raise ValueError(f"checkout for unknown plan {plan_code!r}")
        billing.status, billing.downgrade_at, billing.payment_problem = "active", None, False
        _set_plan(account, plan, event_id)
    elif not billing.status:
        billing.status = "incomplete"  # a payment still pending: billed once it goes through (has_live_subscription)
    billing.updated_at = timezone.now()
    billing.save()
    return account


def _subscription_of(sub: dict) -> tuple[Account, str, str]:
    """The account a subscription event is about (by its linked customer), the subscription's id, and how to name
    it in messages; Malformed (marked with the account) when the event carries no usable id."""
    what = f"subscription {_id(sub.get('id'))!r}"
    account = _linked_account(sub, what)
    with _about(account):
        subscription = _ref(sub, "id", "subscription")
        if not subscription:
            raise Malformed("subscription", "id", "an id")
    return account, subscription, what


def subscription_changed(sub: dict, at: datetime, event_id: str, *, created: bool = False) -> Account:
    """customer.subscription.created/updated: the plan follows the subscription's price; past_due and unpaid flag the
    account and notify its owners; an ended subscription is handled like a deletion."""
    account, subscription, what = _subscription_of(sub)
    with _about(account):
        status = _text(sub, "status", "subscription", longest=32)
        item = _first_item(sub, "subscription")
        price_id = _ref(item, "price", "subscription item")
        period_end = _time(sub, "current_period_end", "subscription") or _time(
            item, "current_period_end", "subscription item"
        )
        cancel_at_period_end = _flag(sub, "cancel_at_period_end", "subscription")
        if status in LIVE and status != "incomplete" and not price_id:
            raise Malformed("subscription", "items.data[0].price", "a price")
    billing = _billing_for(account)
    _claim_subscription(billing, subscription, what, live=status in LIVE, announce=created)
    if not _newer(billing, at):
        raise Ignored(f"older than the subscription state already applied ({billing.state_at:%Y-%m-%d %H:%M:%S})")
    if status in ENDED or status == "paused":
        _ended(billing, status, period_end, event_id)
        return account
    billing.status, billing.price_id = status, price_id
    billing.current_period_end, billing.cancel_at_period_end = period_end, cancel_at_period_end
    _flag_payment_problem(billing, status in PAYMENT_PROBLEM, f"subscription is {status}")
    if status in ("active", "trialing", "past_due", "unpaid"):
        billing.downgrade_at = None
        _set_plan(account, _plan_for_price(price_id), event_id)
    billing.updated_at = timezone.now()
    billing.save()
    return account


def subscription_deleted(sub: dict, at: datetime, event_id: str) -> Account:
    """The subscription ended: back to Free at the end of the period already paid for (now, if that has passed).
    Terminal: nothing that arrives later for this subscription changes the account."""
    account, subscription, what = _subscription_of(sub)
    with _about(account):
        status = _text(sub, "status", "subscription", longest=32)
        period_end = _time(sub, "current_period_end", "subscription") or _time(
            _first_item(sub, "subscription"), "current_period_end", "subscription item"
        )
    billing = _billing_for(account)
    _claim_subscription(billing, subscription, what, live=False)
    if not _newer(billing, at):
        raise Ignored("older than the subscription state already applied")
    _ended(billing, status if status in ENDED else "canceled", period_end, event_id)
    return account


def _ended(billing: BillingSubscription, status: str, period_end: datetime | None, event_id: str) -> None:
    paid_until = period_end or timezone.now()
    if billing.payment_problem or status == "paused":
        paid_until = min(paid_until, timezone.now())  # ended for lack of payment: the last period was never paid
    billing.status, billing.cancel_at_period_end = status, False
    billing.current_period_end = paid_until
    billing.payment_problem = False
    if paid_until <= timezone.now():
        billing.downgrade_at = None
        _set_plan(billing.account, Plan.objects.get(code=FREE_PLAN), event_id)
    else:
        billing.downgrade_at = paid_until
    billing.updated_at = timezone.now()
    billing.save()


def _invoice_subscription(invoice: dict) -> str:
    """The subscription an invoice bills: ``parent.subscription_details.subscription`` since API 2025-03-31,
    ``subscription`` before."""
    details = _object(_object(invoice, "parent", "invoice"), "subscription_details", "invoice parent")
    return _ref(details, "subscription", "invoice parent") or _ref(invoice, "subscription", "invoice")


def _invoice(invoice: dict, at: datetime, failed: bool, event_id: str) -> Account:
    """The last invoice of the linked subscription (and the payment-problem flag). An invoice of another subscription
    of the customer is ignored and audited; one of no subscription (a one-off invoice) is ignored."""
    what = f"invoice {_id(invoice.get('id'))!r}"
    account = _linked_account(invoice, what)
    with _about(account):
        invoice_id = _ref(invoice, "id", "invoice")
        subscription = _invoice_subscription(invoice)
        created = _time(invoice, "created", "invoice") or at
        amount = _amount(invoice, "amount_due" if failed else "amount_paid", "invoice")
        status = _text(invoice, "status", "invoice", longest=32)
        currency = _text(invoice, "currency", "invoice", longest=8)
        url = _text(invoice, "hosted_invoice_url", "invoice", longest=500)
        if url and not url.startswith("https://"):  # the Billing card links it: no javascript: or http: address
            raise Malformed("invoice", "hosted_invoice_url", "an https address")
    billing = _billing_for(account)
    linked = billing.subscription_id
    if linked and subscription != linked:
        if not subscription:
            raise Ignored(
                f"{what} is for no subscription (account {account.pk} follows {linked!r}): not applied", account=account
            )
        _claim_subscription(billing, subscription, what, live=False)  # raises: another subscription's invoice
    if billing.last_invoice_at is None or created >= billing.last_invoice_at:
        billing.last_invoice_id = invoice_id
        billing.last_invoice_status = "payment_failed" if failed else (status or "paid")
        billing.last_invoice_amount, billing.last_invoice_currency = amount, currency
        billing.last_invoice_at, billing.last_invoice_url = created, url
        shown = billing.last_invoice_amount_display
        _flag_payment_problem(billing, failed, f"invoice {billing.last_invoice_id} for {shown} was not paid")
    billing.updated_at = timezone.now()
    billing.save()
    return account


HANDLERS: dict[str, Callable[[dict, datetime, str], Account]] = {
    "checkout.session.completed": checkout_completed,
    "customer.subscription.created": lambda sub, at, event_id: subscription_changed(sub, at, event_id, created=True),
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_deleted,
    "invoice.paid": lambda invoice, at, event_id: _invoice(invoice, at, False, event_id),
    "invoice.payment_failed": lambda invoice, at, event_id: _invoice(invoice, at, True, event_id),
}


# --- scheduled downgrades (beat) --------------------------------------------------------------------------------


def apply_scheduled_downgrades() -> int:
    """Accounts whose subscription ended and whose paid period is over go back to Free. Returns how many."""
    free = Plan.objects.get(code=FREE_PLAN)
    moved = 0
    for billing in BillingSubscription.objects.filter(downgrade_at__lte=timezone.now()).select_related("account"):
        with transaction.atomic():
            if BillingSubscription.objects.filter(pk=billing.pk, downgrade_at__lte=timezone.now()).update(
                downgrade_at=None, updated_at=timezone.now()
            ):
                _set_plan(billing.account, free, "")
                moved += 1
    return moved
