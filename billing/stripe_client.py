"""Every call this server makes to the Stripe API goes through here (docs/billing.md).

One small module so tests can point the HTTP boundary elsewhere (``STRIPE_API_BASE``: a local fake, or Stripe's
own stripe-mock), and so it is easy to see that no call happens inside a database transaction: a slow or failing
Stripe must never hold row locks or roll back our own writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import stripe
from django.conf import settings
from django.db import connection

from billing.models import Account, Plan

if TYPE_CHECKING:
    from stripe._base_address import BaseAddresses  # the type of StripeClient's base_addresses (not re-exported)

_T = TypeVar("_T")

TIMEOUT_SECONDS = 10


class StripeUnavailable(Exception):
    """Stripe refused or could not be reached; the message is safe to show to an operator."""


@dataclass(frozen=True)
class Redirect:
    url: str
    id: str


def price_for(plan: Plan) -> str:
    """The Stripe price of a plan: STRIPE_PRICE_IDS, else the plan row's stripe_price_id ('' = not for sale)."""
    return settings.STRIPE_PRICE_IDS.get(plan.code) or plan.stripe_price_id


def _client() -> stripe.StripeClient:
    if connection.in_atomic_block:
        raise RuntimeError("Stripe is called outside database transactions only (billing/stripe_client.py)")
    base: BaseAddresses | None = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses=base,
        max_network_retries=2,
        http_client=stripe.HTTPXClient(timeout=TIMEOUT_SECONDS, allow_sync_methods=True),  # httpx: already ours
    )


def _call(fn: Callable[..., _T], params: dict[str, Any]) -> _T:
    try:
        return fn(params=params)
    except stripe.StripeError as exc:
        raise StripeUnavailable(exc.user_message or str(exc) or exc.__class__.__name__) from exc


def create_customer(account: Account, email: str) -> str:
    customer = _call(
        _client().v1.customers.create,
        {
            "name": account.name,
            "email": email,
            "metadata": {"account_id": str(account.pk)},
        },
    )
    return customer.id


def create_checkout_session(
    *, account: Account, customer_id: str, plan: Plan, success_url: str, cancel_url: str
) -> Redirect:
    """A Checkout Session (mode subscription) for ``plan``; the webhooks apply the plan once Stripe confirms."""
    session = _call(
        _client().v1.checkout.sessions.create,
        {
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": str(account.pk),
            "line_items": [{"price": price_for(plan), "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": {"account_id": str(account.pk), "plan": plan.code},
            "subscription_data": {"metadata": {"account_id": str(account.pk), "plan": plan.code}},
        },
    )
    if session.url is None:  # only a session that is no longer open has none: never one created just now
        raise StripeUnavailable("Stripe created the checkout without a payment page; try again.")
    return Redirect(url=session.url, id=session.id)


def close_checkout_session(session_id: str) -> str | None:
    """Make sure a Checkout Session this server created can no longer be paid, before creating another: expire it if
    it is still open. Returns its status then: ``expired``, ``complete`` (paid: its subscription exists), or
    ``missing`` (this Stripe account does not know it: keys of another mode); None if Stripe gave no status."""
    client = _client()
    try:
        status = _call(partial(client.v1.checkout.sessions.retrieve, session_id), {}).status
    except StripeUnavailable as exc:
        if getattr(exc.__cause__, "code", None) == "resource_missing":
            return "missing"
        raise
    if status == "open":  # paid between the two calls: Stripe refuses to expire it (StripeUnavailable)
        status = _call(partial(client.v1.checkout.sessions.expire, session_id), {}).status
    return status


def create_portal_session(*, customer_id: str, return_url: str) -> Redirect:
    """The Customer Portal: the owner changes card, plan or cancels there; webhooks bring the changes back."""
    session = _call(_client().v1.billing_portal.sessions.create, {"customer": customer_id, "return_url": return_url})
    return Redirect(url=session.url, id=session.id)
