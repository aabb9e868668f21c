"""Tamper evidence of the operator audit log: every entry is chained to the account's entry before it.

``row_hash`` = SHA-256 over the canonical JSON of the entry's fields and ``prev_hash`` (the previous entry's
``row_hash``, or 64 zeros for an account's first). Entries are chained under a per-account lock (a PostgreSQL
advisory lock held to the end of the writing transaction), so concurrent writers cannot fork the chain. ``verify``
walks an account's entries in id order and names the first that does not match: an edited entry fails its own
hash, a deleted or inserted one breaks the next entry's link. (Deleting the newest entries leaves no trace inside
the database: compare the newest ``row_hash`` with a copy kept elsewhere.) ``checkpoint_account`` records the chain's
head in a signed ``AuditCheckpoint`` (beat, with the decision-log checkpoints), which is such a copy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.models import AuditCheckpoint, AuditEntry
from onceonly_site import checkpoint_signing

GENESIS = "0" * 64
FIELDS = ("actor_label", "action", "object_type", "object_id", "data")
_LOCK_NAMESPACE = 0x0A0D17  # first key of the advisory lock pair; the second is the account id


def entry_hash(account_id: int, prev_hash: str, created_at: Any, fields: dict[str, Any]) -> str:
    payload = {
        "account_id": account_id,
        "prev_hash": prev_hash,
        "created_at": created_at.isoformat(timespec="microseconds"),
        **{name: fields.get(name) for name in FIELDS},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def normalised(data: dict[str, Any] | None) -> dict[str, Any]:
    """The data as it reads back from a JSON column (tuples become lists, keys strings): hashed as stored."""
    return json.loads(json.dumps(data or {}))


def lock_chain(account_id: int) -> None:
    """Serialize the account's audit writes until the current transaction ends (PostgreSQL; SQLite writes are
    serialized by the database itself)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, account_id])


def previous_hash(account_id: int) -> str:
    last = AuditEntry.objects.filter(account_id=account_id).order_by("-id").values_list("row_hash", flat=True).first()
    return last or GENESIS


def checkpoint_account(account_id: int) -> AuditCheckpoint | None:
    """Record the account's newest chained entry as a new checkpoint (signed when a key is configured), if there
    are entries since the last one. No settling wait, unlike the decision log: entries are chained under the
    account's lock, so an entry cannot commit after one with a higher id."""
    last = AuditCheckpoint.objects.filter(account_id=account_id).order_by("-seq").first()
    after = last.last_entry_id if last else 0
    chained = AuditEntry.objects.filter(account_id=account_id, pk__gt=after).exclude(row_hash="")
    head = chained.order_by("-id").values_list("pk", "row_hash").first()
    if head is None:
        return None
    covered = chained.filter(pk__lte=head[0])
    first = covered.order_by("id").values_list("pk", flat=True).first()
    checkpoint = AuditCheckpoint(
        account_id=account_id,
        seq=(last.seq + 1) if last else 1,
        first_entry_id=first if first is not None else head[0],
        last_entry_id=head[0],
        row_count=covered.count(),
        prev_hash=last.chain_hash if last else GENESIS,
        chain_hash=head[1],
        created_at=timezone.now(),
    )
    checkpoint_signing.sign("audit", checkpoint)
    try:
        with transaction.atomic():
            checkpoint.save(force_insert=True)
    except IntegrityError:
        return None  # another run wrote this checkpoint first
    return checkpoint


@dataclass
class AuditVerification:
    ok: bool
    entries_checked: int
    unchained: int  # entries written before the chain existed (no hash), all older than the first chained one
    first_bad_entry_id: int | None = None
    message: str = ""
    # Where a walk that passed ended: its last chained entry and that entry's hash (the next walk's ``prev``).
    last_entry_id: int = 0
    last_hash: str | None = None


def verify(
    account_id: int,
    *,
    after_id: int = 0,
    prev: str | None = None,
    upto_id: int | None = None,
    progress: Callable[[int], None] | None = None,
    every: int = 20_000,
) -> AuditVerification:
    """Walk the account's entries in id order and name the first that does not match: from the first entry, or
    after ``after_id`` whose hash was ``prev`` (an incremental or partial walk), up to ``upto_id``. ``progress`` is
    told the entries checked so far, every ``every`` entries."""
    checked = unchained = 0
    last_id = after_id
    rows = AuditEntry.objects.filter(account_id=account_id, pk__gt=after_id)
    if upto_id is not None:
        rows = rows.filter(pk__lte=upto_id)
    for entry in rows.order_by("id").iterator(chunk_size=2000):
        checked += 1
        if progress is not None and checked % every == 0:
            progress(checked)
        if not entry.row_hash:
            if prev is not None:
                return AuditVerification(
                    False,
                    checked,
                    unchained,
                    entry.pk,
                    f"Audit entry {entry.pk} has no hash but follows chained entries: it was inserted afterwards.",
                )
            unchained += 1
            continue
        expected_prev = GENESIS if prev is None else prev  # an account's first chained entry follows GENESIS
        fields = {name: getattr(entry, name) for name in FIELDS}
        if entry_hash(account_id, entry.prev_hash, entry.created_at, fields) != entry.row_hash:
            return AuditVerification(
                False,
                checked,
                unchained,
                entry.pk,
                f"Audit entry {entry.pk} does not match its hash: it was changed after it was written.",
            )
        if entry.prev_hash != expected_prev:
            return AuditVerification(
                False,
                checked,
                unchained,
                entry.pk,
                f"Audit entry {entry.pk} does not follow the entry before it: entries were "
                "deleted or inserted before it.",
            )
        prev, last_id = entry.row_hash, entry.pk
    if progress is not None:
        progress(checked)
    return AuditVerification(
        True,
        checked,
        unchained,
        message=f"{checked - unchained} audit entries verified"
        + (f" ({unchained} older entries have no hash)." if unchained else "."),
        last_entry_id=last_id,
        last_hash=prev,
    )
