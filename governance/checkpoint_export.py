"""``manage.py export_checkpoints``: the signed checkpoints of the decision and audit logs, the public keys, and
optionally every row they cover, as one JSON file that ``tools/verify_checkpoints.py`` checks offline
(docs/operations.md §"Signed checkpoints"). Written as a stream, one row per line: an account's whole log is never
held in memory."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

from django.db.models import QuerySet
from django.utils import timezone

from billing import audit
from billing.models import Account, AuditCheckpoint, AuditEntry
from governance import ledger, partitions
from governance.models import Decision, DecisionCheckpoint
from onceonly_site import checkpoint_signing

FORMAT = "onceonly-checkpoints/1"
KINDS = checkpoint_signing.KINDS
CHUNK = 2000

# A decision's exported row: the hashed fields (ledger.row_hash) under their documented names, plus id and row_hash.
_DECISION_COLUMNS = {
    "id": "pk",
    "row_hash": "row_hash",
    "ts": "ts",
    "agent_id": "agent__agent_id",
    **{name: name for name in ledger.ROW_FIELDS if name not in ("ts", "agent_id")},
    **{name: name for name in ledger.OPTIONAL_AMOUNTS},
    "api_key_id": "api_key_id",
    "explain": "explain",
}
_AUDIT_COLUMNS = ("id", "created_at", "prev_hash", "row_hash", *audit.FIELDS)


@dataclass
class ExportSummary:
    checkpoints: int = 0
    rows: int = 0
    unsigned: list[str] = field(default_factory=list)  # "account 3 decisions seq 7"
    unknown_keys: list[str] = field(default_factory=list)


def _checkpoint_models(kind: str) -> Any:
    return DecisionCheckpoint if kind == "decisions" else AuditCheckpoint


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="microseconds")
    return value


def _checkpoint_dict(kind: str, checkpoint: Any) -> dict[str, Any]:
    first, last = (
        (checkpoint.first_decision_id, checkpoint.last_decision_id)
        if kind == "decisions"
        else (checkpoint.first_entry_id, checkpoint.last_entry_id)
    )
    return {
        "seq": checkpoint.seq,
        "first_id": first,
        "last_id": last,
        "row_count": checkpoint.row_count,
        "prev_hash": checkpoint.prev_hash,
        "chain_hash": checkpoint.chain_hash,
        "created_at": checkpoint_signing.utc_text(checkpoint.created_at),
        "signed_at": checkpoint_signing.utc_text(checkpoint.signed_at) if checkpoint.signed_at else None,
        "kid": checkpoint.key_id or None,
        "signature": checkpoint.signature or None,
    }


def _rows(kind: str, account_id: int) -> Iterator[dict[str, Any]]:
    rows: QuerySet[Any, Any]
    if kind == "decisions":
        names = list(_DECISION_COLUMNS)
        rows = Decision.objects.filter(account_id=account_id).order_by("pk").values_list(*_DECISION_COLUMNS.values())
    else:
        names = list(_AUDIT_COLUMNS)
        rows = AuditEntry.objects.filter(account_id=account_id).order_by("pk").values_list(*_AUDIT_COLUMNS)
    for values in rows.iterator(chunk_size=CHUNK):
        yield {name: _json_value(value) for name, value in zip(names, values, strict=True)}


def export(out: TextIO, *, accounts: Iterable[Account], kinds: Sequence[str], with_rows: bool) -> ExportSummary:
    """Write the export file to ``out``; the summary names what an auditor would reject (unsigned checkpoints,
    signatures by keys no longer published)."""
    summary = ExportSummary()
    published = {checkpoint_signing.key_id(x) for x in checkpoint_signing.keyring()[1]}
    dropped_before = partitions.horizon()
    head = {
        "format": FORMAT,
        "exported_at": checkpoint_signing.utc_text(timezone.now()),
        # Retention's horizon (every day before it dropped, legal holds excepted) and the margin after it: a decision
        # checkpoint made before their sum may lack decisions (ledger.verify; the verifier reports it as archived).
        # Optional in the format: an export without them (older servers) verifies as before.
        "decisions_dropped_before": checkpoint_signing.utc_text(dropped_before) if dropped_before else None,
        "archive_margin_seconds": int(ledger.ARCHIVE_MARGIN.total_seconds()),
        "keys": checkpoint_signing.public_jwks()["keys"],
    }
    out.write(json.dumps(head, ensure_ascii=False)[:-1] + ',\n"accounts": [\n')
    # The checkpoints are read before the rows: a checkpoint written meanwhile is missing from the file, and the
    # rows it covers are exported as rows after the last checkpoint, which is how the verifier treats them.
    for number, account in enumerate(accounts):
        out.write(",\n" if number else "")
        out.write(json.dumps({"account_id": account.pk, "account": account.name}, ensure_ascii=False)[:-1])
        for kind in kinds:
            out.write(f',\n"{kind}": {{"checkpoints": [\n')
            checkpoints = _checkpoint_models(kind).objects.filter(account_id=account.pk).order_by("seq")
            for index, checkpoint in enumerate(checkpoints.iterator(chunk_size=CHUNK)):
                summary.checkpoints += 1
                where = f"account {account.pk} {kind} checkpoint {checkpoint.seq}"
                if not checkpoint.signature:
                    summary.unsigned.append(where)
                elif checkpoint.key_id not in published:
                    summary.unknown_keys.append(where)
                out.write((",\n" if index else "") + json.dumps(_checkpoint_dict(kind, checkpoint)))
            out.write("\n]")
            if with_rows:
                out.write(', "rows": [\n')
                for index, row in enumerate(_rows(kind, account.pk)):
                    summary.rows += 1
                    out.write((",\n" if index else "") + json.dumps(row, ensure_ascii=False))
                out.write("\n]")
            out.write("}")
        out.write("}")
    out.write("\n]}\n")
    return summary


@dataclass
class SignResult:
    signed: int = 0
    refused: list[str] = field(default_factory=list)  # why an account's log was not signed


def sign_missing(accounts: Iterable[Account], kinds: Sequence[str]) -> SignResult:
    """Sign the checkpoints written without a key (before one was configured, or before this feature), with the
    current key and ``signed_at`` now. A log that fails verification is not signed: a signature would vouch for a
    tampered chain. The signature attests the chain as it is now, not as it was written (docs/security.md)."""
    result = SignResult()
    if checkpoint_signing.current_key() is None:
        raise ValueError(
            "No signing key is configured: set ONCEONLY_CHECKPOINT_SIGNING_KEY "
            "(generate one with `python manage.py checkpoint_key generate`)."
        )
    for account in accounts:
        for kind in kinds:
            model = _checkpoint_models(kind)
            unsigned = model.objects.filter(account_id=account.pk, signature="").order_by("seq")
            if not unsigned.exists():
                continue
            checked = ledger.verify(account.pk) if kind == "decisions" else audit.verify(account.pk)
            problem = None if checked.ok else checked.message
            if problem is None and kind == "audit":
                problem = _audit_checkpoints_problem(account.pk)
            if problem is not None:
                result.refused.append(f"account {account.name!r}, {kind}: {problem}")
                continue
            now = timezone.now()
            for checkpoint in unsigned.iterator(chunk_size=CHUNK):
                checkpoint_signing.sign(kind, checkpoint, signed_at=now)
                # Only if still unsigned: a concurrent run may have signed it meanwhile.
                result.signed += model.objects.filter(pk=checkpoint.pk, signature="").update(
                    signature=checkpoint.signature, key_id=checkpoint.key_id, signed_at=checkpoint.signed_at
                )
    return result


def _audit_checkpoints_problem(account_id: int) -> str | None:
    """audit.verify checks the entries' chain; this checks that each checkpoint still names its entries' head."""
    prev, after = audit.GENESIS, 0
    for checkpoint in AuditCheckpoint.objects.filter(account_id=account_id).order_by("seq"):
        covered = AuditEntry.objects.filter(
            account_id=account_id, pk__gt=after, pk__lte=checkpoint.last_entry_id
        ).exclude(row_hash="")
        head = covered.filter(pk=checkpoint.last_entry_id).values_list("row_hash", flat=True).first()
        if checkpoint.prev_hash != prev or head != checkpoint.chain_hash or covered.count() != checkpoint.row_count:
            return f"Audit checkpoint {checkpoint.seq} does not match the entries it covers."
        prev, after = checkpoint.chain_hash, checkpoint.last_entry_id
    return None
