"""Accounts (tenants), their members, API keys, the plan catalogue and the operator audit log."""

from __future__ import annotations

import calendar
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from billing.choices import ApiKeyScope, Role


class Plan(models.Model):
    """A row of the plan catalogue (seeded by a data migration with the numbers of docs/architecture.md §7.1;
    editable by admins).

    Entitlements are read from here by ``billing.services.entitlements`` — never from hard-coded plan names.
    """

    code = models.SlugField(max_length=32, unique=True, help_text="Name reported to clients as `plan`.")
    name = models.CharField(max_length=64)
    sort_order = models.PositiveSmallIntegerField(default=0)
    price_usd_month = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    make_monthly_limit = models.PositiveBigIntegerField(help_text="Locked check-locks per UTC month.")
    ai_monthly_limit = models.PositiveBigIntegerField(
        help_text="Acquired leases/runs and executed or allowed governed calls per UTC month."
    )
    default_ttl_seconds = models.PositiveIntegerField()
    max_ttl_seconds = models.PositiveIntegerField()
    tools_limit = models.PositiveIntegerField(default=0, help_text="Registered tools; 0 = registry not available.")
    dispatch_slots = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Governed calls of an account waiting on its tools at once (blank: the server's setting).",
    )
    has_governance = models.BooleanField(default=False, help_text="Policies, agent logs and metrics.")
    has_allowed_tools = models.BooleanField(default=False, help_text="`allowed_tools` in policies.")
    has_kill_switch = models.BooleanField(default=False)
    # At least 1: a burst of 0 refuses every request, a rate of 0 would divide by zero in the bucket script.
    rate_limit_per_second = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1)], help_text="Token refill rate per API key (at least 1)."
    )
    rate_limit_burst = models.PositiveIntegerField(
        default=50, validators=[MinValueValidator(1)], help_text="Token bucket size per API key (at least 1)."
    )
    stripe_price_id = models.CharField(
        max_length=100,
        blank=True,
        help_text="Stripe price (recurring) an owner subscribes to for this plan; STRIPE_PRICE_IDS overrides it.",
    )
    # How long the account's history (finished lease records with their keyed runs, expired lock records, run
    # events) is kept before the retention sweep deletes it (docs/operations.md §"Retention").
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Days of history kept (blank: ONCEONLY_RETENTION_DAYS); an account may override it.",
    )

    class Meta:
        ordering = ["sort_order", "id"]
        constraints = [
            # A default TTL above the maximum would be clamped on every call: refuse such a plan row.
            models.CheckConstraint(
                condition=models.Q(default_ttl_seconds__gte=1)
                & models.Q(default_ttl_seconds__lte=models.F("max_ttl_seconds")),
                name="billing_plan_default_ttl_within_max",
            ),
            models.CheckConstraint(
                condition=models.Q(retention_days__isnull=True) | models.Q(retention_days__gte=1),
                name="billing_plan_retention_days_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name


def new_args_hash_key() -> str:
    return secrets.token_hex(32)


class Account(models.Model):
    """A tenant. Every API key, lock, policy, tool, decision and run belongs to exactly one account."""

    name = models.CharField(max_length=120, unique=True)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    is_active = models.BooleanField(default=True)
    strict_mode = models.BooleanField(
        default=False,
        help_text="Refuse unregistered tools and unknown job handlers instead of permitting them.",
    )
    email_notifications_enabled = models.BooleanField(default=True)
    tool_error_notifications_enabled = models.BooleanField(default=True)
    run_failure_notifications_enabled = models.BooleanField(default=True)
    # Statistics, added to by the web processes in batches (billing.counters); never used for enforcement.
    requests_total_all_time = models.PositiveBigIntegerField(default=0)
    blocked_total_all_time = models.PositiveBigIntegerField(default=0)
    # HMAC key of the decision log's args_hash (docs/architecture.md §3.7): per account, so a hash says nothing
    # across tenants and low-entropy arguments cannot be brute-forced from the log without it.
    args_hash_key = models.CharField(max_length=64, default=new_args_hash_key, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    # Retention (docs/operations.md §"Retention"): this account's override of its plan's retention_days (blank: the
    # plan's, else ONCEONLY_RETENTION_DAYS). A legal hold keeps all of its history past retention; set and cleared
    # by an owner or an admin key with a reason, audited (governance/holds.py) — never edited in /admin/.
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Days of history kept for this account (blank: its plan's).",
    )
    legal_hold_since = models.DateTimeField(null=True, blank=True, editable=False)
    legal_hold_reason = models.CharField(max_length=1000, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(retention_days__isnull=True) | models.Q(retention_days__gte=1),
                name="billing_account_retention_days_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def current_period_end(now: datetime | None = None) -> datetime:
        """End of the current quota period: the first instant of the next UTC calendar month."""
        now = now or timezone.now()
        last_day = calendar.monthrange(now.year, now.month)[1]
        return now.replace(day=last_day, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


class Membership(models.Model):
    """A user's role in an account. A user may belong to several accounts (the UI has a switcher)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["account__name"]
        constraints = [
            # One role per user and account; services catch the IntegrityError of a concurrent double insert.
            models.UniqueConstraint(fields=["user", "account"], name="billing_membership_unique_user_account"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.account} ({self.role})"


class ApiKey(models.Model):
    """An API key. Only its SHA-256 is stored; the raw key is shown once, at creation."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, help_text="First characters of the key, to recognise it.")
    last4 = models.CharField(max_length=4)
    key_hash = models.CharField(max_length=64, help_text="SHA-256 hex of the raw key.")
    scope = models.CharField(
        max_length=8,
        choices=ApiKeyScope.choices,
        default=ApiKeyScope.AGENT,
        help_text="agent: calls the API; admin: may also approve or deny approval requests.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # Authentication looks keys up by hash (billing.auth); unique also guards against a (theoretical)
            # collision of two generated keys.
            models.UniqueConstraint(fields=["key_hash"], name="billing_apikey_unique_hash"),
            models.CheckConstraint(condition=models.Q(scope__in=["agent", "admin"]), name="billing_apikey_scope"),
        ]
        indexes = [
            # The API keys page: an account's keys, newest first.
            models.Index(fields=["account", "-created_at"], name="billing_apikey_account_recent"),
        ]

    def __str__(self) -> str:
        return self.preview

    @property
    def preview(self) -> str:
        return f"{self.prefix}…{self.last4}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class AuditEntry(models.Model):
    """Who changed what, written by services in the same transaction as the change (never by signals)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="audit_entries")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A readable snapshot of the actor ("alice@example.com", "api key once_live_ab…wxyz", "system"): it
    # survives the deletion of the user or key.
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64, help_text="Namespaced code, e.g. billing.api_key.revoked.")
    object_type = models.CharField(max_length=64, blank=True)
    # Wide enough for every id the services audit: a lock or lease key (256), a tool as scope/name (≤ 407).
    object_id = models.CharField(max_length=512, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Tamper evidence (billing.audit): each entry's hash covers its fields and the hash of the account's entry before
    # it, so an edited or deleted entry breaks the chain. Empty on entries written before the chain existed.
    prev_hash = models.CharField(max_length=64, blank=True)
    row_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The audit log page: an account's entries, newest first.
            models.Index(fields=["account", "-created_at"], name="billing_audit_account_recent"),
            # The chain: an account's newest entry by id (each write reads it under the chain's lock).
            models.Index(fields=["account", "-id"], name="billing_audit_account_chain"),
        ]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_label}"


class AuditCheckpoint(models.Model):
    """A signed copy of an account's audit-log chain head (billing.audit.checkpoint_account), written by beat.

    The entries already chain each other; a checkpoint records the newest entry's ``row_hash`` (``chain_hash``), the
    entries since the previous checkpoint and, when a key is configured, an Ed25519 signature over them
    (onceonly_site/checkpoint_signing.py), so a rewritten chain is caught outside the database.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField()
    first_entry_id = models.BigIntegerField()
    last_entry_id = models.BigIntegerField()
    row_count = models.PositiveIntegerField(help_text="Chained entries in (previous last_entry_id, last_entry_id].")
    prev_hash = models.CharField(max_length=64, help_text="The previous checkpoint's chain_hash (64 zeros first).")
    chain_hash = models.CharField(max_length=64, help_text="row_hash of the entry last_entry_id.")
    created_at = models.DateTimeField(default=timezone.now)
    signature = models.CharField(max_length=100, blank=True)
    key_id = models.CharField(max_length=64, blank=True, help_text="RFC 7638 thumbprint of the signing key.")
    signed_at = models.DateTimeField(null=True, blank=True, help_text="Later than created_at when backfilled.")

    class Meta:
        ordering = ["account", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["account", "seq"], name="billing_auditcheckpoint_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"audit checkpoint {self.seq} of account {self.account_id}"


class UsageMonth(models.Model):
    """The database mirror of an account's monthly usage counters (Redis holds the live ones;
    docs/architecture.md §7.10).

    Written by the ``billing.mirror_usage`` beat task; read back into Redis when Redis has lost a month's counters.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="usage_months")
    month = models.CharField(max_length=7, help_text="YYYY-MM (UTC).")
    make = models.PositiveBigIntegerField(default=0, help_text="Locked check-locks (the enforced counter).")
    ai = models.PositiveBigIntegerField(default=0, help_text="Acquired leases and allowed governed calls.")
    requests_make = models.PositiveBigIntegerField(default=0)
    requests_ai = models.PositiveBigIntegerField(default=0)
    blocked_make = models.PositiveBigIntegerField(default=0, help_text="Refused with 402 (over quota).")
    blocked_ai = models.PositiveBigIntegerField(default=0)
    polling_ai = models.PositiveBigIntegerField(default=0, help_text="Lease calls answered `polling`.")
    daily = models.JSONField(default=dict, blank=True, help_text='Per-day usage: {"make:07": 12, "ai:07": 3, …}.')
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-month"]
        constraints = [
            # The mirror upserts one row per account and month.
            models.UniqueConstraint(fields=["account", "month"], name="billing_usage_unique_month"),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.month}"


class Notification(models.Model):
    """Something an account's owners and admins should hear about (a tool error, a failed run). Sent in digests by
    a beat task, so a failure storm becomes one email per account and run, not thousands."""

    class Kind(models.TextChoices):
        TOOL_ERROR = "tool_error", "Tool error"
        RUN_FAILURE = "run_failure", "Run failure"
        BILLING = "billing", "Billing"
        SECURITY = "security", "Security"  # e.g. the decision log failed its verification
        APPROVAL_REQUESTED = "approval_requested", "Approval requested"  # a governed call waits for a person

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The digest task: unsent notifications, oldest first.
            models.Index(fields=["sent_at", "created_at"], name="billing_notification_unsent"),
        ]

    def __str__(self) -> str:
        return self.subject


class BillingSubscription(models.Model):
    """An account's Stripe customer and subscription, as the verified webhooks last described them (billing.stripe).

    ``state_at`` is the Stripe ``created`` time of the newest event applied: an older event delivered later never
    moves the account backwards.
    """

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="billing_subscription")
    customer_id = models.CharField(max_length=100, blank=True)
    subscription_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=32, blank=True, help_text="Stripe's subscription status (active, past_due…).")
    price_id = models.CharField(max_length=100, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True, help_text="Next renewal, or the paid-up end.")
    cancel_at_period_end = models.BooleanField(default=False)
    state_at = models.DateTimeField(null=True, blank=True)
    downgrade_at = models.DateTimeField(null=True, blank=True, help_text="Back to Free then (subscription ended).")
    payment_problem = models.BooleanField(default=False)
    last_invoice_id = models.CharField(max_length=100, blank=True)
    last_invoice_status = models.CharField(max_length=32, blank=True)
    last_invoice_amount = models.BigIntegerField(null=True, blank=True, help_text="In the currency's minor unit.")
    last_invoice_currency = models.CharField(max_length=8, blank=True)
    last_invoice_at = models.DateTimeField(null=True, blank=True)
    last_invoice_url = models.URLField(max_length=500, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer_id"], condition=~models.Q(customer_id=""), name="billing_subscription_unique_customer"
            ),
        ]
        indexes = [models.Index(fields=["downgrade_at"], name="billing_subscription_downgrade")]

    def __str__(self) -> str:
        return f"{self.account} {self.status or 'no subscription'}"

    ZERO_DECIMAL = frozenset(
        {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
    )

    @property
    def has_live_subscription(self) -> bool:
        """A subscription Stripe still bills (a second checkout would bill twice): plan changes go via the portal."""
        return bool(self.subscription_id) and self.status in ("active", "trialing", "past_due", "unpaid", "incomplete")

    @property
    def last_invoice_amount_display(self) -> str:
        """Stripe amounts are in the currency's minor unit (cents), except for zero-decimal currencies."""
        amount, currency = self.last_invoice_amount or 0, self.last_invoice_currency.lower()
        major = f"{amount:,}" if currency in self.ZERO_DECIMAL else f"{amount / 100:,.2f}"
        return f"{major} {currency.upper()}".strip()


class ProviderEvent(models.Model):
    """One webhook event of a payment provider, stored before it is processed; the unique event id makes every
    redelivery a no-op."""

    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSING = "processing", "Processing"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        IGNORED = "ignored", "Ignored"

    provider = models.CharField(max_length=16, default="stripe")
    event_id = models.CharField(max_length=100)
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    error = models.TextField(blank=True)
    payload = models.JSONField()
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(help_text="When the provider created the event.")
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="billing_provider_event_unique"),
            models.CheckConstraint(
                condition=models.Q(status__in=["received", "processing", "succeeded", "failed", "ignored"]),
                name="billing_provider_event_status",
            ),
        ]
        indexes = [models.Index(fields=["-received_at"], name="billing_provider_event_recent")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_id} {self.type} ({self.status})"
