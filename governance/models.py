"""Agents, their versioned policies, and the decision log (docs/architecture.md §3, §4)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from billing.models import Account, ApiKey
from governance.choices import AlertKind, AlertMode, Outcome, Reason, RiskLevel


class Agent(models.Model):
    """An agent id of an account, registered on first sight. Holds the kill switch and the current policy."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="agents")
    agent_id = models.CharField(max_length=200)
    is_enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_by = models.CharField(max_length=200, blank=True, help_text="Who pressed the kill switch.")
    # The current policy, denormalised from its latest PolicyVersion so a governed call reads one row.
    # None = no policy: the agent is ungoverned (no limits), which the dashboard flags.
    policy = models.JSONField(null=True, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    # Shadow mode (docs/policy-changes.md §"Shadow mode"): a candidate policy every governed call is also decided
    # against, on its own counters, recorded in the decision's explain — never enforced until promoted.
    shadow_policy = models.JSONField(null=True, blank=True)
    shadow_id = models.CharField(max_length=40, blank=True, help_text="Names this candidate's run (its counters).")
    shadow_started_at = models.DateTimeField(null=True, blank=True)
    shadow_by = models.CharField(max_length=200, blank=True)
    shadow_base_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="The enforced version when the candidate started."
    )
    # A legal hold keeps the agent's runs and run events past retention (docs/operations.md §"Retention"); set and
    # cleared with a reason, audited (governance/holds.py).
    legal_hold_since = models.DateTimeField(null=True, blank=True)
    legal_hold_reason = models.CharField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["agent_id"]
        constraints = [
            # Registration on first sight races between concurrent calls: the loser catches IntegrityError.
            models.UniqueConstraint(fields=["account", "agent_id"], name="governance_agent_unique_id"),
        ]

    def __str__(self) -> str:
        return self.agent_id


class PolicyVersion(models.Model):
    """An immutable version of an agent's policy. Every change (API, template, editor, rollback) adds one."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="policy_versions")
    version = models.PositiveIntegerField()
    policy = models.JSONField()
    source = models.CharField(max_length=64, help_text="api, template:<name>, editor, rollback:<version>")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=200)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "version"], name="governance_policy_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} v{self.version}"


class Decision(models.Model):
    """One governed call's decision, durable before the response. The raw args are never stored
    (docs/architecture.md §3.7)."""

    # No single-column indexes on the two keys: the composite indexes below lead with them (every index is one
    # more write per decision on the hot path, docs/benchmarks.md).
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="decisions", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="decisions", db_index=False)
    ts = models.DateTimeField(default=timezone.now)
    tool = models.CharField(max_length=200)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    allowed = models.BooleanField()
    policy_reason = models.CharField(max_length=64, choices=Reason.choices)
    risk_level = models.CharField(max_length=8, choices=RiskLevel.choices)
    spend_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # The two sides of the charge (docs/api.md §"POST /v1/ai/run — the governed call"): what the request declared
    # (None: it sent no spend_usd) and the operator's price (the policy's pricing rule, else the registry's price,
    # else 0; None when the call ended before it was priced). ``spend_usd`` charges the larger: an agent cannot
    # under-report.
    declared_spend_usd = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="spend_usd as the request declared it."
    )
    operator_price_usd = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="The operator's price of the call."
    )
    args_hash = models.CharField(max_length=64, help_text="HMAC-SHA256 (per-account key) of canonical args.")
    run_id = models.CharField(max_length=256, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The tool's last HTTP status.")
    dispatch_id = models.CharField(
        max_length=64, blank=True, help_text="webhook-id sent to the tool: stable across retries, for dedupe."
    )
    result = models.JSONField(null=True, blank=True, help_text="The tool's output (replayed on dedup).")
    row_hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the row's fields (tamper evidence).")
    original = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,  # a partitioned table (governance/0022): kept by Django, not by PostgreSQL
        help_text="For dedup: the decision whose result was replayed.",
    )
    # Which API key asked (none for keyed runs' actions and operator test calls): after a key leaks, its calls can
    # be told from the others. No index: read on one decision's page, not searched (the hot path pays per index).
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        help_text="The API key that made the call.",
    )
    # What the rule saw when it decided (limit, count before, cost, matched pattern, policy version…): the decision
    # page's explanation (governance/explain.py). Null for decisions recorded before it existed. Not in the row hash
    # unless set (docs/architecture.md §3.9).
    explain = models.JSONField(
        null=True, blank=True, help_text="What the rule saw at decision time (limit, count before, policy)."
    )

    class Meta:
        ordering = ["-ts", "-id"]
        # Every index leads with the account and ends with the time (tests/test_indexes.py): a new decision lands at
        # the right edge of each, so writing one costs about the same at 10M rows as at none, and each read names the
        # account and a time range. No index on a hash: a random key's leaf is anywhere in a large index, so every
        # write reads and dirties another page (docs/benchmarks.md, *Growth*).
        indexes = [
            # Agent logs, agent detail and the rebuild of an agent's counters: an agent's decisions by time.
            models.Index(fields=["account", "agent", "-ts"], name="governance_decision_agent_ts"),
            # The decision timeline: an account's decisions by time (time-range queries, partition-friendly).
            models.Index(fields=["account", "-ts"], name="governance_decision_account_ts"),
            # The decision log filtered by reason (a block reason is a few % of the decisions): its pages and its
            # capped total read this instead of walking the (account, -ts) index over most of the account. Partial:
            # most calls are within budget (that filter finds its rows at once in the time index), and they pay
            # nothing for it.
            models.Index(
                fields=["account", "policy_reason", "-ts"],
                name="governance_decision_reason_ts",
                condition=~models.Q(policy_reason="within_budget"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent} {self.tool} {self.outcome}"


class DispatchIntent(models.Model):
    """A dispatch about to go out (docs/architecture.md §3.4, §4.7): written and committed before the tool is
    called, and deleted in the transaction that records the call's decision. One left behind means the server
    stopped, or lost its database, between calling the tool and recording the answer — the tool may have run. Until
    the sweeper records it (a failed decision, reason ``outcome_unknown``), a rebuild of the agent's counters counts
    it as a charged action, so no cap can be passed by calls whose decisions were never written."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    created_at = models.DateTimeField()
    tool = models.CharField(max_length=200)
    args_hash = models.CharField(max_length=64)
    run_id = models.CharField(max_length=256, blank=True)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    risk_level = models.CharField(max_length=8, choices=RiskLevel.choices)
    spend_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    declared_spend_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    operator_price_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    dispatch_id = models.CharField(max_length=64, help_text="The webhook-id the tool received.")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    explain = models.JSONField(null=True, blank=True)  # the call's explain, for the sweeper's outcome_unknown decision

    class Meta:
        indexes = [models.Index(fields=["agent", "created_at"], name="governance_intent_agent_ts")]

    def __str__(self) -> str:
        return f"{self.agent} {self.tool} {self.dispatch_id}"


class DecisionRollup(models.Model):
    """Hourly counts per (agent, tool, outcome), updated with each decision: metrics read ≤ 168 rows a week."""

    # Covered by governance_rollup_account_hour and governance_rollup_unique (which lead with them).
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="rollups", db_index=False)
    hour = models.DateTimeField()
    tool = models.CharField(max_length=200)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    count = models.PositiveIntegerField(default=0)
    spend_usd = models.DecimalField(max_digits=16, decimal_places=6, default=0)

    class Meta:
        constraints = [
            # The per-decision upsert (ON CONFLICT … DO UPDATE count = count + 1) targets this.
            models.UniqueConstraint(fields=["agent", "hour", "tool", "outcome"], name="governance_rollup_unique"),
        ]
        indexes = [
            models.Index(fields=["account", "hour"], name="governance_rollup_account_hour"),
            # The tools an account called (selectors.called_tools: one probe per name) and the decision log's
            # totals by tool. A rollup row is inserted once per agent, hour, tool and outcome, so this costs the
            # governed call nothing on the upserts that only add to a count.
            models.Index(fields=["account", "tool", "outcome"], name="governance_rollup_account_tool"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} {self.hour:%Y-%m-%d %H}h {self.tool} {self.outcome}: {self.count}"


class DecisionCheckpoint(models.Model):
    """A link of an account's decision-log hash chain (docs/architecture.md §3.9), written by a beat task.

    ``chain_hash`` = SHA-256(previous checkpoint's chain_hash ‖ row_hash of every decision in (first..last], in id
    order). Recomputing it detects edited, deleted or inserted rows; ``verify_decision_log`` names the first.
    Signed with the server's Ed25519 key when one is configured (onceonly_site/checkpoint_signing.py), so a rewrite
    by someone who can only write the database is caught outside it (``tools/verify_checkpoints.py``).
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField()
    first_decision_id = models.BigIntegerField()
    last_decision_id = models.BigIntegerField()
    row_count = models.PositiveIntegerField()
    prev_hash = models.CharField(max_length=64)
    chain_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    # Ed25519 over checkpoint_signing.message (base64url); empty when no signing key was configured.
    signature = models.CharField(max_length=100, blank=True)
    key_id = models.CharField(max_length=64, blank=True, help_text="RFC 7638 thumbprint of the signing key.")
    signed_at = models.DateTimeField(null=True, blank=True, help_text="Later than created_at when backfilled.")

    class Meta:
        ordering = ["account", "seq"]
        constraints = [
            # Two checkpoint runs racing for one account: the second insert of a seq fails and is retried later.
            models.UniqueConstraint(fields=["account", "seq"], name="governance_checkpoint_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"checkpoint {self.seq} of account {self.account_id}"


class DecisionLogHorizon(models.Model):
    """Where retention has dropped the decision log up to (one row; governance/partitions.py): every day before
    ``dropped_before`` was dropped, but for legal holds. The verification lets the checkpoints made before it, plus a
    day, lack decisions (docs/operations.md §"Decision-log partitions")."""

    dropped_before = models.DateTimeField()
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"decisions dropped before {self.dropped_before:%Y-%m-%d}"


class LogVerification(models.Model):
    """Where the hourly verification of one of an account's two tamper-evident logs stands (governance/ledger.py
    ``verify_recent``; docs/operations.md §"Decision-log tamper evidence"): the anchor it verified up to, and the
    position of the rolling re-verification of what came before it."""

    class Log(models.TextChoices):
        DECISIONS = "decisions", "Decision log"
        AUDIT = "audit", "Audit log"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    log = models.CharField(max_length=16, choices=Log.choices)
    # The anchor: decisions — the newest checkpoint verified (seq), its last decision id and chain hash; audit — the
    # last entry verified and its row hash. 0 / 64 zeros: nothing verified yet.
    anchor_seq = models.PositiveIntegerField(default=0)
    anchor_id = models.BigIntegerField(default=0)
    anchor_hash = models.CharField(max_length=64, default="0" * 64)
    # The re-verification: the checkpoint (decisions) or audit checkpoint after which its next slice starts.
    sweep_seq = models.PositiveIntegerField(default=0)
    full_pass_at = models.DateTimeField(null=True, blank=True, help_text="When the last full re-verification ended.")
    checked_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(default=True)
    message = models.TextField(blank=True)
    notified_at = models.DateTimeField(null=True, blank=True, help_text="When a failure was last notified.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "log"], name="governance_logverification_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.log} of account {self.account_id}: {'ok' if self.ok else 'failed'}"


class McpServer(models.Model):
    """An upstream MCP server (Streamable HTTP) whose tools the gateway governs (docs/mcp.md): its tools are
    discovered with ``tools/list`` and registered as tools named ``<server>.<tool>`` (``Tool.kind`` "mcp"); a governed
    call to one is forwarded as ``tools/call``. The auth header's value is kept encrypted, like tool secrets."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="mcp_servers")
    name = models.CharField(max_length=64, help_text="Lowercase letters, digits, '-' and '_': its tools' prefix.")
    url = models.URLField(max_length=2000)
    auth_header_name = models.CharField(max_length=100, blank=True, default="Authorization")
    auth_header_encrypted = models.TextField(blank=True, help_text="Fernet token of the header's value.")
    auth_header_mask = models.CharField(max_length=16, blank=True)
    timeout_ms = models.PositiveIntegerField(default=15000)
    enabled = models.BooleanField(default=True)
    last_discovered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=512, blank=True, help_text="Why the last discovery failed, if it did.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["account", "name"], name="governance_mcpserver_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name


class Tool(models.Model):
    """A registered tool: where approved calls are dispatched, signed with its secret (docs/architecture.md §5)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="tools")
    scope_id = models.CharField(max_length=210, default="global", help_text='"global" or "agent:<agent id>".')
    name = models.CharField(max_length=200)
    # What governed calls and /v1/tools/{name} look the tool up by: identifiers.normalise_tool(name), so that
    # `STRIPE.CHARGE` and `ｓｔｒｉｐｅ.charge` find `stripe.charge` as the policies' matching does. Set by
    # governance.tools.tool_upsert (the only writer), filled for older rows by migration 0009.
    name_key = models.CharField(max_length=200, editable=False)
    legacy_twin = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="0; 1, 2… for a tool registered, before such names were refused, after another tool of its scope "
        "whose name differs only in case (migration 0009): calls that do not name it exactly reach the oldest.",
    )
    url = models.URLField(max_length=2000)
    secret_encrypted = models.TextField(blank=True, help_text="Fernet token; the plain secret is never stored.")
    secret_mask = models.CharField(max_length=16, blank=True)
    timeout_ms = models.PositiveIntegerField(default=15000)
    max_retries = models.PositiveSmallIntegerField(default=2)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=512, blank=True)
    risk_level = models.CharField(max_length=8, choices=RiskLevel.choices, blank=True)
    price_usd = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status of the last call.")
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_dispatch_at = models.DateTimeField(null=True, blank=True)
    # "webhook": a signed POST to url (docs/tools.md); "mcp": a tool of an upstream MCP server, discovered from it and
    # called with tools/call (docs/mcp.md) — name is "<server>.<remote_name>", url the server's.
    kind = models.CharField(max_length=8, default="webhook", choices=[("webhook", "Webhook"), ("mcp", "MCP")])
    mcp_server = models.ForeignKey(McpServer, on_delete=models.CASCADE, null=True, blank=True, related_name="tools")
    remote_name = models.CharField(max_length=128, blank=True, help_text="The tool's name on its MCP server.")
    input_schema = models.JSONField(null=True, blank=True, help_text="An MCP tool's inputSchema, as discovered.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["scope_id", "name"]
        constraints = [
            # Upsert on (scope, name); the governed call looks tools up by it (agent scope, then global).
            models.UniqueConstraint(fields=["account", "scope_id", "name"], name="governance_tool_unique_name"),
            # One tool per normalised name and scope (the refusal of `Send_Email` next to `send_email` in
            # tool_upsert, backed here), and the governed call's lookup: account, name_key, scope_id IN (agent's,
            # global). legacy_twin is in it because databases from before that refusal may hold such pairs: the
            # migration numbers them instead of failing (or deleting an operator's tool); every new tool is 0.
            models.UniqueConstraint(
                fields=["account", "name_key", "scope_id", "legacy_twin"], name="governance_tool_unique_name_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope_id}/{self.name}"


class Approval(models.Model):
    """A person's approval of one exact governed call (docs/approvals.md): bound to the account, the agent, the tool,
    the args digest and the policy version it was asked under, single-use and expiring. Created when a call that the
    policy's ``require_approval`` names arrives without one; the agent's identical retry consumes it once approved.
    The call's args are kept encrypted for the approvers' preview only while it is pending."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"
        CONSUMED = "consumed", "Used"  # approved, then its call went through (once)
        EXPIRED = "expired", "Expired"
        SUPERSEDED = "superseded", "Superseded"  # the agent's policy changed while it was open

    public_id = models.CharField(max_length=40, editable=False)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="approvals", db_index=False)
    tool = models.CharField(max_length=200)
    args_hash = models.CharField(max_length=64)
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    rule = models.JSONField(help_text='The require_approval entry that matched: {"tool": <glob>, "over_usd": …}.')
    risk_level = models.CharField(max_length=8, choices=RiskLevel.choices)
    spend_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0, help_text="The call's cost.")
    run_id = models.CharField(max_length=256, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=1000, blank=True, help_text="The approver's reason (required to deny).")
    consumed_at = models.DateTimeField(null=True, blank=True)
    args_encrypted = models.TextField(blank=True, help_text="Fernet token of the call's args; emptied once decided.")
    # No database constraint: decisions are a partitioned table on PostgreSQL, which a foreign key can only name by
    # (id, ts) (governance/0022); Django keeps SET_NULL.
    requested_by = models.ForeignKey(
        Decision,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    consumed_by = models.ForeignKey(
        Decision,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["public_id"], name="governance_approval_unique_public_id"),
            # One open request per exact call: concurrent first calls race, the loser reads the winner's.
            models.UniqueConstraint(
                fields=["agent", "tool", "args_hash"],
                condition=models.Q(status="pending"),
                name="governance_approval_one_pending",
            ),
        ]
        indexes = [
            # The governed call's lookup of the exact call's approvals.
            models.Index(fields=["agent", "args_hash"], name="governance_approval_call"),
            # The queue (by status) and the sweep of expired ones.
            models.Index(fields=["account", "status", "-created_at"], name="governance_approval_queue"),
            models.Index(fields=["status", "expires_at"], name="governance_approval_expiry"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.agent} {self.tool} {self.status}"


class NotificationChannel(models.Model):
    """Where an account's events go besides email (docs/notifications.md): a Slack incoming webhook, or a generic
    webhook signed with Standard Webhooks (its ``whsec_`` secret generated at creation, shown once, kept encrypted
    like tool secrets). The URL passes the tools' SSRF guard when saved and again at every delivery."""

    class Kind(models.TextChoices):
        SLACK = "slack", "Slack incoming webhook"
        WEBHOOK = "webhook", "Webhook (Standard Webhooks)"

    class Event(models.TextChoices):
        APPROVAL_REQUESTED = "approval_requested", "Approval requested"
        APPROVAL_DECIDED = "approval_decided", "Approval decided"
        TOOL_ERROR = "tool_error", "Tool error"
        RUN_FAILURE = "run_failure", "Run failure"
        # docs/governance.md: a budget threshold crossed; a detector that fired (alert, or contain: the agent was
        # stopped); a keyed run paused at a per-run cap.
        BUDGET_ALERT = "budget_alert", "Budget alert"
        DETECTOR = "detector", "Detector fired / agent contained"
        RUN_PAUSED = "run_paused", "Run paused at a cap"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    label = models.CharField(max_length=100)
    # A Slack webhook's URL is its credential, and a webhook's may carry a token: the URL is kept encrypted like tool
    # secrets, with the part pages may show beside it.
    url_encrypted = models.TextField(help_text="Fernet token of the URL.")
    url_shown = models.CharField(max_length=2000, help_text="The URL as pages show it (a Slack path masked).")
    secret_encrypted = models.TextField(blank=True, help_text="Fernet token of the webhook's whsec_ secret.")
    events = models.JSONField(default=list, help_text="The event kinds it receives.")
    enabled = models.BooleanField(default=True)
    last_delivery_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt.")
    last_error = models.CharField(max_length=500, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["label", "id"]
        constraints = [
            # Also the index of an account's channels (publish, the settings page).
            models.UniqueConstraint(fields=["account", "label"], name="governance_channel_unique_label"),
            models.CheckConstraint(condition=models.Q(kind__in=["slack", "webhook"]), name="governance_channel_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.kind})"

    @property
    def url(self) -> str:
        from governance import secrets

        return secrets.decrypt(self.url_encrypted)


class ChannelDelivery(models.Model):
    """One event for one channel: POSTed by a Celery task, retried with backoff until delivered or out of attempts.
    The payload never holds a call's args (an approval's digest at most)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event = models.CharField(max_length=32)
    message_id = models.CharField(max_length=40, help_text="webhook-id: the same on every attempt, for dedupe.")
    payload = models.JSONField()
    text = models.TextField(blank=True, help_text="The message for people (Slack's text).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["message_id"], name="governance_delivery_unique_message_id"),
        ]
        indexes = [
            # A channel's recent deliveries (its page), and the pruning of old ones.
            models.Index(fields=["channel", "-created_at"], name="governance_delivery_channel"),
            # The sweep of deliveries due (a lost wake-up, a retry): the pending ones only.
            models.Index(
                fields=["next_attempt_at"], name="governance_delivery_due", condition=models.Q(status="pending")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.channel_id} {self.status}"


class PolicyFile(models.Model):
    """A policies file applied to an account (docs/policies-as-code.md): the policy it gave each agent it names, so
    that the drift view can say which agents' live policies differ from the last file applied since."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the file's text (UTF-8).")
    applied_at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=200, help_text="Who applied it (a login, an API key, a CLI user).")
    policies = models.JSONField(help_text="{agent id: the policy the file gave it}, every agent the file names.")
    versions = models.JSONField(help_text="{agent id: its policy version right after the apply}.")

    class Meta:
        ordering = ["-applied_at", "-id"]
        indexes = [
            # The last file applied to an account (the drift view), and its history.
            models.Index(fields=["account", "-applied_at"], name="governance_policyfile_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.filename} ({self.sha256[:12]}) at {self.applied_at:%Y-%m-%d %H:%M}"


class Alert(models.Model):
    """One notification of the alerts feed (docs/governance.md §"Budget alerts", §"Containment detectors"): a budget
    threshold crossed, a detector that fired (alert or contain), a keyed run paused at a per-run cap. ``once`` is
    what makes it fire once: a threshold per period, a detector per window — the unique constraint decides between
    processes (a second insert of the same ``once`` is a no-op)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="alerts")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="alerts", null=True, blank=True)
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    code = models.CharField(max_length=40, help_text="The metric (daily_spend …) or the detector (call_loop …).")
    mode = models.CharField(max_length=16, choices=AlertMode.choices, default=AlertMode.ALERT)
    once = models.CharField(max_length=300, help_text="Fires once per this key (the metric, period and threshold).")
    message = models.CharField(max_length=1000, help_text="What happened, with its numbers.")
    data = models.JSONField(default=dict, blank=True, help_text="The numbers: value, cap, threshold, window, …")
    created_at = models.DateTimeField(default=timezone.now)
    # A containment's one-click release (audited): who let the agent go again, and when.
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "once"], name="governance_alert_fires_once"),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at", "-id"], name="governance_alert_feed"),
            models.Index(fields=["agent", "-created_at"], name="governance_alert_of_agent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.code} {self.message[:60]}"
