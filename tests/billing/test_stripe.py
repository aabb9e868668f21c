"""Paid plans through Stripe: signed webhooks in Stripe's format move accounts between plans exactly once, in order;
checkout and the portal go through a real HTTP boundary (a local fake of api.stripe.com); unconfigured, nothing
of it exists."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.core import mail
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing import stripe_client, stripe_webhooks
from billing.models import Account, AuditEntry, BillingSubscription, Notification, Plan, ProviderEvent
from billing.notifications import send_digests
from tests.support.fake_stripe import FakeStripe

EVENTS = Path(__file__).with_name("stripe_events")
SECRET = "whsec_test_0123456789abcdefghijklmnop"
WEBHOOK = "/billing/stripe/webhook"
SESSION, CUSTOMER = "cs_test_a1B2c3D4e5F6g7H8i9J0", "cus_TestCustomer0001"  # the fixtures' session and customer
FOREIGN = "cus_Foreign0001"  # a customer of the Stripe account that this server never linked to an account


@pytest.fixture
def stripe_on(settings):
    settings.STRIPE_ENABLED = True
    settings.STRIPE_SECRET_KEY = "sk_test_fake"
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_PRICE_IDS = {"pro": "price_pro_monthly", "agency": "price_agency_monthly"}
    return settings


@pytest.fixture
def free_account(account_a, plans):
    Account.objects.filter(pk=account_a.pk).update(plan=plans["free"])
    account_a.refresh_from_db()
    return account_a


def checkout_started(account: Account, *, session_id: str = SESSION, customer: str = CUSTOMER) -> Account:
    """What ``POST /billing/checkout/`` leaves behind before Stripe's events arrive: the account linked to its Stripe
    customer, and the Checkout Session recorded as one this server created."""
    BillingSubscription.objects.update_or_create(account=account, defaults={"customer_id": customer})
    pro = Plan.objects.get(code="pro")
    stripe_webhooks.checkout_session_record(account=account, actor=None, plan=pro, session_id=session_id)
    return account


@pytest.fixture
def subscriber(free_account):
    """A Free account whose owner started the fixtures' checkout (session SESSION, customer CUSTOMER)."""
    return checkout_started(free_account)


def event(name: str, account: Account, **changes) -> dict:
    data = json.loads((EVENTS / f"{name}.json").read_text().replace("{ACCOUNT_ID}", str(account.pk)))
    data.update({k: v for k, v in changes.items() if k in ("id", "created")})
    data["data"]["object"].update(changes.get("object", {}))
    return data


def sign(payload: bytes, *, secret: str = SECRET, at: int | None = None) -> str:
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def deliver(client, data: dict | bytes, **sign_kwargs):
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    return client.post(WEBHOOK, payload, content_type="application/json",
                       headers={"Stripe-Signature": sign(payload, **sign_kwargs)})  # fmt: skip


def plan_of(account: Account) -> str:
    return Account.objects.select_related("plan").get(pk=account.pk).plan.code


def test_checkout_completed_upgrades_and_the_sdk_gains_the_plan_at_once(stripe_on, subscriber, sdk, live_server):
    from onceonly.exceptions import ApiError

    with pytest.raises(ApiError) as refused:
        sdk.gov.upsert_policy({"agent_id": "bot", "max_actions_per_hour": 5})
    assert refused.value.status_code == 403  # Free: no governance
    payload = json.dumps(event("checkout.session.completed", subscriber)).encode()
    answer = httpx.post(f"{live_server.url}{WEBHOOK}", content=payload,
                        headers={"Stripe-Signature": sign(payload), "Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    assert plan_of(subscriber) == "pro"
    assert sdk.gov.upsert_policy({"agent_id": "bot", "max_actions_per_hour": 5}).max_actions_per_hour == 5
    billing = BillingSubscription.objects.get(account=subscriber)
    assert (billing.customer_id, billing.subscription_id) == ("cus_TestCustomer0001", "sub_TestSubscription0001")
    audit = AuditEntry.objects.get(action="billing.account.plan_changed")
    assert audit.actor_label == "stripe" and audit.data["to"] == "pro" and "evt_1QcHeckout" in audit.data["reason"]


def test_same_event_five_times_concurrently_changes_the_plan_once(stripe_on, subscriber, live_server):
    payload = json.dumps(event("checkout.session.completed", subscriber)).encode()
    headers = {"Stripe-Signature": sign(payload), "Content-Type": "application/json"}
    answers, barrier = [], threading.Barrier(5)

    def post():
        barrier.wait()
        answers.append(httpx.post(f"{live_server.url}{WEBHOOK}", content=payload, headers=headers, timeout=20))

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 5
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert ProviderEvent.objects.count() == 1 and ProviderEvent.objects.get().status == "succeeded"
    assert AuditEntry.objects.filter(action="billing.account.plan_changed").count() == 1
    assert plan_of(subscriber) == "pro"


def test_subscription_updated_follows_the_price_and_an_older_update_never_downgrades(stripe_on, subscriber):
    client = Client()
    assert deliver(client, event("checkout.session.completed", subscriber)).status_code == 200
    newer = event("customer.subscription.updated", subscriber)  # price_agency_monthly, created +100 s
    older = event("customer.subscription.updated", subscriber, id="evt_1QsUbscriptionUpdated000",
                  created=newer["created"] - 50,
                  object={"items": {"data": [{"price": {"id": "price_pro_monthly"}}]}})  # fmt: skip
    assert deliver(client, newer).json()["status"] == "succeeded"
    assert plan_of(subscriber) == "agency"
    late = deliver(client, older)
    assert late.status_code == 200 and late.json()["status"] == "ignored"
    assert plan_of(subscriber) == "agency"
    assert "older than" in ProviderEvent.objects.get(event_id="evt_1QsUbscriptionUpdated000").error


def test_subscription_deleted_returns_to_free_at_the_period_end(stripe_on, subscriber):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    period_end = int((timezone.now() + timedelta(days=20)).timestamp())
    deleted = event("customer.subscription.deleted", subscriber,
                    object={"items": {"data": [{"current_period_end": period_end,
                                                "price": {"id": "price_pro_monthly"}}]}})  # fmt: skip
    assert deliver(client, deleted).json()["status"] == "succeeded"
    billing = BillingSubscription.objects.get(account=subscriber)
    assert plan_of(subscriber) == "pro" and billing.status == "canceled"
    assert int(billing.downgrade_at.timestamp()) == period_end
    assert stripe_webhooks.apply_scheduled_downgrades() == 0  # not yet
    BillingSubscription.objects.filter(pk=billing.pk).update(downgrade_at=timezone.now() - timedelta(seconds=1))
    assert stripe_webhooks.apply_scheduled_downgrades() == 1
    assert plan_of(subscriber) == "free"
    assert stripe_webhooks.apply_scheduled_downgrades() == 0


def test_subscription_deleted_after_its_period_is_free_now(stripe_on, subscriber):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    deliver(client, event("customer.subscription.deleted", subscriber))  # period end in the fixture's past
    assert plan_of(subscriber) == "free"


def test_payment_failure_shows_a_banner_and_emails_the_owners(stripe_on, subscriber, owner_a, viewer_a):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    assert deliver(client, event("invoice.payment_failed", subscriber)).json()["status"] == "succeeded"
    billing = BillingSubscription.objects.get(account=subscriber)
    assert billing.payment_problem and billing.last_invoice_status == "payment_failed"
    html = owner_a.login(Client()).get("/usage/").content.decode()
    assert 'id="payment-problem"' in html and "Manage billing" in html and "99.00 USD" in html
    assert "Ask an owner" in viewer_a.login(Client()).get("/usage/").content.decode()
    assert Notification.objects.get(kind="billing").subject.startswith("Payment problem")
    mail.outbox.clear()
    assert send_digests() == 1
    assert mail.outbox[0].to == ["alice@acme.test"] and "Payment problem" in mail.outbox[0].body
    deliver(client, event("invoice.paid", subscriber))  # paid later: the banner goes
    assert 'id="payment-problem"' not in owner_a.login(Client()).get("/usage/").content.decode()


@pytest.mark.parametrize(
    ("payload", "sign_kwargs", "message"),
    [
        (b'{"id": "evt_1", "type": "invoice.paid"}', {"secret": "whsec_wrong"}, "Signature verification failed"),
        (b'{"id": "evt_1", "type": "invoice.paid"}', {"at": int(time.time()) - 301}, "Signature verification failed"),
        (b'{"id": "evt_1", "type": ', {}, "not JSON"),
        (b'{"id": "evt_1", "type": "invoice.paid"}', {}, "Not a Stripe event"),
        (b'\xff\xfe{"id": "evt_1"}', {}, "not UTF-8"),
    ],
)
def test_bad_signature_stale_timestamp_or_malformed_body_is_400_and_stores_nothing(
    stripe_on, db, payload, sign_kwargs, message
):
    response = deliver(Client(), payload, **sign_kwargs)
    assert response.status_code == 400 and message in response.json()["detail"]["message"]
    assert not ProviderEvent.objects.exists()
    missing = Client().post(WEBHOOK, payload, content_type="application/json")
    assert missing.status_code == 400 and not ProviderEvent.objects.exists()


def test_unknown_types_are_stored_and_ignored(stripe_on, free_account):
    unknown = {"id": "evt_1Unknown", "object": "event", "type": "customer.tax_id.created", "created": 1764500000,
               "data": {"object": {"id": "txi_1"}}}  # fmt: skip
    response = deliver(Client(), unknown)
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert ProviderEvent.objects.get().error == "customer.tax_id.created is not handled"


def test_a_failed_event_is_503_then_retried_by_a_superuser(stripe_on, subscriber, settings, django_user_model):
    settings.STRIPE_PRICE_IDS = {}  # the price of the update is not mapped yet: processing fails
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    failed = deliver(client, event("customer.subscription.updated", subscriber))
    assert failed.status_code == 503 and failed.json()["detail"]["error"] == "processing_failed"
    row = ProviderEvent.objects.get(type="customer.subscription.updated")
    assert row.status == "failed" and "price_agency_monthly" in row.error

    admin = django_user_model.objects.create_superuser("root@example.com", "root@example.com", "pw-123-456-789")
    staff = Client()
    staff.force_login(admin)
    Account.objects.get(pk=subscriber.pk).memberships.create(user=admin, role="owner")
    page = staff.get("/billing/events/", {"status": "failed"}).content.decode()
    assert "evt_1QsUbscriptionUpdated001" in page and "Retry" in page
    settings.STRIPE_PRICE_IDS = {"pro": "price_pro_monthly", "agency": "price_agency_monthly"}
    staff.post(f"/billing/events/{row.pk}/retry/")
    assert ProviderEvent.objects.get(pk=row.pk).status == "succeeded" and plan_of(subscriber) == "agency"
    redelivered = deliver(client, event("customer.subscription.updated", subscriber))
    assert redelivered.json() == {"ok": True, "event_id": row.event_id, "status": "succeeded", "duplicate": True}


def test_provider_events_page_is_for_superusers_only(stripe_on, owner_a):
    assert owner_a.login(Client()).get("/billing/events/").status_code == 404


@pytest.mark.django_db(transaction=True)  # real commits: the client refuses to call Stripe inside a transaction
def test_checkout_and_portal_go_through_stripe_outside_transactions(stripe_on, free_account, owner_a, viewer_a):
    fake = FakeStripe()
    stripe_on.STRIPE_API_BASE = fake.url
    try:
        client = owner_a.login(Client())
        page = client.get("/usage/").content.decode()
        assert "Subscribe to Pro" in page and "Subscribe to Agency" in page and "Switch to" not in page
        response = client.post("/billing/checkout/", {"plan": "pro"})
        assert (
            response.status_code == 303 and response["Location"] == "https://checkout.stripe.com/c/pay/cs_test_Fake0001"
        )
        assert fake.paths() == ["/v1/customers", "/v1/checkout/sessions"]
        _, params, auth = fake.requests[1]
        assert auth == "Bearer sk_test_fake"
        assert params["mode"] == ["subscription"] and params["client_reference_id"] == [str(free_account.pk)]
        assert params["line_items[0][price]"] == ["price_pro_monthly"] and params["customer"] == ["cus_Fake0001"]
        assert BillingSubscription.objects.get(account=free_account).customer_id == "cus_Fake0001"
        assert plan_of(free_account) == "free"  # nothing changes before Stripe's webhook confirms

        client.post("/billing/checkout/", {"plan": "agency"})
        assert fake.paths()[2:] == ["/v1/checkout/sessions"]  # the customer is reused
        portal = client.post("/billing/portal/")
        assert portal.status_code == 303 and portal["Location"].startswith("https://billing.stripe.com/")
        assert viewer_a.login(Client()).post("/billing/checkout/", {"plan": "pro"}).status_code == 403
        assert client.post("/usage/", {"plan": "agency"}).status_code == 403  # no free switching when paid
        assert "Thank you" in client.get("/billing/done/", {"result": "paid"}).content.decode()
    finally:
        fake.stop()
    with transaction.atomic(), pytest.raises(RuntimeError, match="outside database transactions"):
        stripe_client.create_customer(free_account, "x@example.com")


@pytest.mark.django_db(transaction=True)
def test_stripe_down_is_a_message_not_a_500(stripe_on, free_account, owner_a):
    fake = FakeStripe(fail_with=500)
    stripe_on.STRIPE_API_BASE = fake.url
    try:
        response = owner_a.login(Client()).post("/billing/checkout/", {"plan": "pro"}, follow=True)
    finally:
        fake.stop()
    assert response.status_code == 200 and "Stripe could not start the checkout" in response.content.decode()


def test_unconfigured_stripe_shows_nothing_and_the_webhook_is_404(settings, free_account, owner_a):
    settings.STRIPE_ENABLED = False  # the default: no STRIPE_* variables
    payload = json.dumps(event("checkout.session.completed", free_account)).encode()
    response = Client().post(WEBHOOK, payload, content_type="application/json",
                             headers={"Stripe-Signature": sign(payload)})  # fmt: skip
    assert response.status_code == 404 and not ProviderEvent.objects.exists()
    client = owner_a.login(Client())
    page = client.get("/usage/").content.decode()
    assert "Switch to Pro" in page and "Subscribe to" not in page and "Manage billing" not in page
    assert 'id="billing-status"' not in page
    for url in ("/billing/checkout/", "/billing/portal/"):
        assert client.post(url, {"plan": "pro"}).status_code == 404
    assert client.get("/billing/events/").status_code == 404


def test_subscription_created_stamped_before_the_checkout_still_brings_the_renewal(stripe_on, subscriber):
    client = Client()
    checkout = event("checkout.session.completed", subscriber)
    item = {"price": {"id": "price_pro_monthly"}, "current_period_end": 1767178350}
    created = event("customer.subscription.updated", subscriber, id="evt_1SubCreated",
                    created=checkout["created"] - 1, object={"items": {"data": [item]}})  # fmt: skip
    created["type"] = "customer.subscription.created"
    deliver(client, checkout)
    assert deliver(client, created).json()["status"] == "succeeded"
    billing = BillingSubscription.objects.get(account=subscriber)
    assert billing.price_id == "price_pro_monthly" and int(billing.current_period_end.timestamp()) == 1767178350
    assert plan_of(subscriber) == "pro"


def test_a_session_this_server_did_not_create_is_ignored(stripe_on, free_account):
    foreign = event("checkout.session.completed", free_account, object={"metadata": {"plan": "agency"}})
    response = deliver(Client(), foreign)
    assert response.json()["status"] == "ignored" and plan_of(free_account) == "free"


def test_a_subscription_that_ended_unpaid_drops_to_free_at_once(stripe_on, subscriber):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    deliver(client, event("invoice.payment_failed", subscriber))
    future = int((timezone.now() + timedelta(days=25)).timestamp())
    deleted = event("customer.subscription.deleted", subscriber, created=1764500500,
                    object={"items": {"data": [{"current_period_end": future}]}})  # fmt: skip
    deliver(client, deleted)
    assert plan_of(subscriber) == "free"  # the period it would run to was never paid


def test_no_second_subscription_while_one_is_live(stripe_on, subscriber, owner_a):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    deliver(client, event("customer.subscription.updated", subscriber))
    owner = owner_a.login(Client())
    page = owner.get("/usage/").content.decode()
    assert "Subscribe to" not in page and "Manage billing" in page
    response = owner.post("/billing/checkout/", {"plan": "pro"}, follow=True)
    assert "already has a subscription" in response.content.decode()


# --- events this server must not apply: a customer it never linked, a session it never created --------------------

BILLING_FIELDS = ("customer_id", "subscription_id", "status", "price_id", "state_at", "downgrade_at",
                  "payment_problem", "last_invoice_id", "last_invoice_status")  # fmt: skip


def billing_of(account: Account) -> dict | None:
    return BillingSubscription.objects.filter(account=account).values(*BILLING_FIELDS).first()


def foreign(name: str, account: Account) -> dict:
    """A signed-as-genuine event of type ``name`` for the customer FOREIGN whose metadata names ``account``."""
    base = "customer.subscription.updated" if name == "customer.subscription.created" else name
    named = {"customer": FOREIGN, "metadata": {"account_id": str(account.pk), "plan": "agency"}}
    data = event(base, account, id=f"evt_1Foreign{name.replace('.', '_')}", created=1764501000, object=named)
    data["type"] = name
    return data


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "never-subscribed"])
@pytest.mark.parametrize(
    "name",
    ["customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
     "invoice.paid", "invoice.payment_failed"],
)  # fmt: skip
def test_events_for_a_customer_this_server_never_linked_change_no_account(
    stripe_on, free_account, name, linked, caplog
):
    client = Client()
    if linked:  # the account subscribed here: it is on Pro, linked to CUSTOMER
        checkout_started(free_account)
        assert deliver(client, event("checkout.session.completed", free_account)).json()["status"] == "succeeded"
    plan, billing, changes = plan_of(free_account), billing_of(free_account), AuditEntry.objects.count()

    response = deliver(client, foreign(name, free_account))

    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert plan_of(free_account) == plan and billing_of(free_account) == billing
    assert not BillingSubscription.objects.filter(customer_id=FOREIGN).exists()
    assert not Notification.objects.exists()
    row = ProviderEvent.objects.get(type=name)
    assert row.account_id == free_account.pk and FOREIGN in row.error  # on the superusers' events page, with why
    refused = AuditEntry.objects.filter(action="billing.stripe_event.refused")
    if linked:  # an attempt to replace the account's customer: audited for the account, and logged
        assert AuditEntry.objects.count() == changes + 1 and refused.get().data["customer"] == FOREIGN
        assert refused.get().data["linked_customer"] == CUSTOMER and refused.get().object_id == row.event_id
        assert any(FOREIGN in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    else:
        assert AuditEntry.objects.count() == changes


@pytest.mark.parametrize(
    ("customer", "reference", "metadata"),
    [(CUSTOMER, True, True), (FOREIGN, True, True), (CUSTOMER, True, False), (CUSTOMER, False, True),
     (FOREIGN, True, False), (FOREIGN, False, True)],
    ids=["own-customer", "foreign-customer", "reference-only", "metadata-only", "foreign-reference-only",
         "foreign-metadata-only"],
)  # fmt: skip
def test_checkout_completed_for_a_session_this_server_never_created_changes_no_account(
    stripe_on, free_account, customer, reference, metadata
):
    checkout_started(free_account, session_id="cs_test_TheOneStartedHere")  # linked to CUSTOMER, another session
    billing, changes = billing_of(free_account), AuditEntry.objects.count()
    forged = event("checkout.session.completed", free_account, object={
        "id": "cs_test_NeverCreatedHere", "customer": customer, "subscription": "sub_Forged0001",
        "client_reference_id": str(free_account.pk) if reference else None,
        "metadata": {"account_id": str(free_account.pk), "plan": "agency"} if metadata else {"plan": "agency"},
    })  # fmt: skip

    response = deliver(Client(), forged)

    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert plan_of(free_account) == "free" and billing_of(free_account) == billing
    assert not AuditEntry.objects.filter(action="billing.account.plan_changed").exists()
    assert "cs_test_NeverCreatedHere" in ProviderEvent.objects.get().error
    assert AuditEntry.objects.count() - changes == (1 if customer == FOREIGN else 0)  # a customer replaced: audited


def test_a_refused_event_is_on_the_superusers_events_page(stripe_on, subscriber, django_user_model):
    client = Client()
    deliver(client, event("checkout.session.completed", subscriber))
    deliver(client, foreign("customer.subscription.updated", subscriber))
    admin = django_user_model.objects.create_superuser("root@example.com", "root@example.com", "pw-123-456-789")
    staff = Client()
    staff.force_login(admin)
    page = staff.get("/billing/events/", {"status": "ignored"}).content.decode()
    assert "evt_1Foreigncustomer_subscription_updated" in page and FOREIGN in page and subscriber.name in page


@pytest.mark.django_db(transaction=True)  # the checkout view calls the fake Stripe outside transactions
def test_a_checkout_started_here_is_applied_with_the_plan_chosen_here(stripe_on, free_account, owner_a):
    fake = FakeStripe()
    stripe_on.STRIPE_API_BASE = fake.url
    try:
        assert owner_a.login(Client()).post("/billing/checkout/", {"plan": "agency"}).status_code == 303
    finally:
        fake.stop()
    started = AuditEntry.objects.get(action="billing.checkout.started")
    assert (started.object_id, started.data) == ("agency", {"session": "cs_test_Fake0001"})
    completed = event("checkout.session.completed", free_account, object={
        "id": "cs_test_Fake0001", "customer": "cus_Fake0001", "metadata": {"account_id": str(free_account.pk)},
    })  # fmt: skip
    assert deliver(Client(), completed).json()["status"] == "succeeded"
    assert plan_of(free_account) == "agency"  # the plan recorded when the session was created, not metadata's
    billing = BillingSubscription.objects.get(account=free_account)
    assert (billing.customer_id, billing.subscription_id) == ("cus_Fake0001", "sub_TestSubscription0001")


@pytest.mark.django_db(transaction=True)
def test_a_session_on_another_origin_is_a_link_and_a_non_https_one_is_refused(stripe_on, free_account, owner_a):
    custom = "https://pay.example.test/c/pay/cs_test_Fake0001"
    for url, expected in ((custom, 200), ("javascript:alert(1)", 302), ("http://pay.example.test/c/pay/x", 302)):
        fake = FakeStripe(urls={"/v1/checkout/sessions": url})
        stripe_on.STRIPE_API_BASE = fake.url
        try:
            response = owner_a.login(Client()).post("/billing/checkout/", {"plan": "pro"})
        finally:
            fake.stop()
        assert response.status_code == expected, url
        if expected == 200:
            assert f'href="{custom}"' in response.content.decode() and "no-store" in response["Cache-Control"]
        else:
            assert response["Location"] == "/usage/"


def test_the_csp_lets_forms_lead_to_stripe_only_while_stripe_is_on(settings, owner_a):
    client = owner_a.login(Client())
    settings.STRIPE_ENABLED = False
    assert "form-action 'self';" in client.get("/usage/")["Content-Security-Policy"]
    settings.STRIPE_ENABLED = True
    policy = client.get("/usage/")["Content-Security-Policy"]
    assert "form-action 'self' https://checkout.stripe.com https://billing.stripe.com;" in policy
    assert "form-action 'self';" in client.get("/admin/login/")["Content-Security-Policy"]
