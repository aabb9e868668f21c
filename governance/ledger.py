"""Tamper evidence of the decision log (docs/architecture.md §3.9): row hashes, checkpoint chains, verification."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import audit
from billing.models import Account, Notification
from billing.notifications import notify
from billing.services import audit_record
from governance.models import Decision, DecisionCheckpoint
from idempotency.services import canonical_json
from onceonly_site import checkpoint_signing

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
BATCH = 5000
SETTLE = timedelta(seconds=30)
ROW_FIELDS = (
    "ts",
    "agent_id",
    "tool",
    "outcome",
    "allowed",
    "policy_reason",
    "risk_level",
    "spend_usd",
    "args_hash",
    "run_id",
    "policy_version",
    "latency_ms",
    "result",
)
# The two sides of a call's charge (what the request declared, the operator's price): hashed only when set, so rows
# written before they existed, and decisions that ended before the call was priced, hash as they always did.
OPTIONAL_AMOUNTS = ("declared_spend_usd", "operator_price_usd")


def row_hash(account_id: int, fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a decision's fields (everything a reader relies on)."""
    payload: dict[str, Any] = {"account_id": account_id}
    for name in ROW_FIELDS:
        value: Any = fields.get(name)
        if name == "ts":
            value = value.isoformat(timespec="microseconds")
        elif name == "spend_usd":
            value = f"{value:.6f}"
        payload[name] = value
    if fields.get("api_key_id") is not None:  # hashed when present: rows written before it existed still verify
        payload["api_key_id"] = fields["api_key_id"]
    for name in OPTIONAL_AMOUNTS:  # the same: hashed when present, as the spend is (6 decimal places)
        if fields.get(name) is not None:
            payload[name] = f"{fields[name]:.6f}"
    if fields.get("explain") is not None:  # what the rule saw: hashed when present, as the amounts are
        payload["explain"] = fields["explain"]
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def _row_fields(decision: Decision) -> dict[str, Any]:
    fields = {name: getattr(decision, name) for name in ROW_FIELDS + OPTIONAL_AMOUNTS}
    fields["api_key_id"] = decision.api_key_id
    fields["explain"] = decision.explain
    return fields


def checkpoint_account(account_id: int) -> DecisionCheckpoint | None:
    """Chain the decisions written since the last checkpoint into a new one (at most BATCH rows)."""
    last = DecisionCheckpoint.objects.filter(account_id=account_id).order_by("-seq").first()
    after = last.last_decision_id if last else 0
    # Only decisions older than SETTLE: on PostgreSQL a lower id can commit after a higher one, and a chain that
    # skipped it would never include it (or would later look tampered with).
    settled = timezone.now() - SETTLE
    # Chain by id, and stop below the first id that is not settled yet: ids and timestamps need not agree.
    first_unsettled = (
        Decision.objects.filter(account_id=account_id, pk__gt=after, ts__gte=settled)
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    pending = Decision.objects.filter(account_id=account_id, pk__gt=after)
    if first_unsettled is not None:
        pending = pending.filter(pk__lt=first_unsettled)
    hashes = list(pending.order_by("pk").values_list("pk", "row_hash")[:BATCH])
    if not hashes:
        return None
    prev = last.chain_hash if last else GENESIS
    digest = hashlib.sha256(prev.encode())
    for _, value in hashes:
        digest.update(value.encode())
    checkpoint = DecisionCheckpoint(
        account_id=account_id,
        seq=(last.seq + 1) if last else 1,
        first_decision_id=hashes[0][0],
        last_decision_id=hashes[-1][0],
        row_count=len(hashes),
        prev_hash=prev,
        chain_hash=digest.hexdigest(),
        created_at=timezone.now(),
    )
    # Signed before it is written, in the same insert (docs/operations.md §"Signed checkpoints").
    checkpoint_signing.sign("decisions", checkpoint)
    try:
        with transaction.atomic():
            checkpoint.save(force_insert=True)
    except IntegrityError:
        return None  # another run wrote this checkpoint first
    return checkpoint


def checkpoint_all() -> int:
    """Beat: checkpoint every account with new decisions, and its audit log's head when it has new entries.
    Returns the number of checkpoints written (of both logs)."""
    written = 0
    for account_id in Account.objects.values_list("pk", flat=True):
        while checkpoint_account(account_id) is not None:  # catch up in batches
            written += 1
        if audit.checkpoint_account(account_id) is not None:
            written += 1
    return written


@dataclass
class Verification:
    ok: bool
    rows_checked: int
    checkpoints_checked: int
    first_bad_decision_id: int | None = None
    message: str = ""


def verify(account_id: int) -> Verification:
    """Recompute every row hash and every checkpoint; name the first decision that does not match."""
    rows = checkpoints = 0
    for decision in (
        Decision.objects.filter(account_id=account_id).order_by("pk").select_related("agent").iterator(chunk_size=2000)
    ):
        rows += 1
        fields = _row_fields(decision)
        fields["agent_id"] = decision.agent.agent_id
        if row_hash(account_id, fields) != decision.row_hash:
            return Verification(
                False,
                rows,
                checkpoints,
                decision.pk,
                f"Decision {decision.pk} does not match its hash: it was changed after it was written.",
            )
    prev = GENESIS
    expected_first = None
    for checkpoint in DecisionCheckpoint.objects.filter(account_id=account_id).order_by("seq"):
        checkpoints += 1
        ids_hashes = list(
            Decision.objects.filter(
                account_id=account_id, pk__gte=checkpoint.first_decision_id, pk__lte=checkpoint.last_decision_id
            )
            .order_by("pk")
            .values_list("pk", "row_hash")
        )
        digest = hashlib.sha256(prev.encode())
        for _, value in ids_hashes:
            digest.update(value.encode())
        broken = (
            checkpoint.prev_hash != prev
            or digest.hexdigest() != checkpoint.chain_hash
            or len(ids_hashes) != checkpoint.row_count
            or (expected_first is not None and checkpoint.first_decision_id < expected_first)
        )
        if broken:
            first = ids_hashes[0][0] if ids_hashes else checkpoint.first_decision_id
            return Verification(
                False,
                rows,
                checkpoints,
                first,
                f"Checkpoint {checkpoint.seq} (decisions {checkpoint.first_decision_id}–"
                f"{checkpoint.last_decision_id}) does not match: rows were deleted, inserted or "
                f"re-hashed; first decision of the range: {first}.",
            )
        prev = checkpoint.chain_hash
        expected_first = checkpoint.last_decision_id + 1
    return Verification(True, rows, checkpoints, message=f"{rows} decisions and {checkpoints} checkpoints verified.")


def verify_all() -> list[tuple[int, Any]]:
    """Beat (daily): verify every account's decision log and audit log; a failure is logged, notified to the owners
    (kind security) and, for the decision log, audited — tampering is found within a day without anyone opening the
    verify page. Returns the failures."""
    failed: list[tuple[int, Any]] = []
    for account in Account.objects.order_by("pk"):
        result = verify(account.pk)
        if not result.ok:
            failed.append((account.pk, result))
            logger.error("decision log of account %s failed verification: %s", account.pk, result.message)
            audit_record(
                account=account,
                action="governance.ledger.verify_failed",
                object_type="decision",
                object_id=result.first_bad_decision_id or "",
                data={"message": result.message},
            )
            notify(
                account_id=account.pk,
                kind=Notification.Kind.SECURITY,
                subject="The decision log failed its daily verification",
                body=result.message,
            )
        checked = audit.verify(account.pk)
        if not checked.ok:
            failed.append((account.pk, checked))
            logger.error("audit log of account %s failed verification: %s", account.pk, checked.message)
            # Not audited: the entry would be chained to a log that is known to be broken.
            notify(
                account_id=account.pk,
                kind=Notification.Kind.SECURITY,
                subject="The audit log failed its daily verification",
                body=checked.message,
            )
    return failed
