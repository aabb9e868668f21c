"""Tamper evidence of the decision log (docs/architecture.md §3.9): row hashes, checkpoint chains, verification."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from billing import audit
from billing.audit import AuditVerification
from billing.models import Account, AuditCheckpoint, AuditEntry, Notification
from billing.notifications import notify
from billing.services import audit_record
from governance import partitions
from governance.models import Decision, DecisionCheckpoint, LogVerification
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
    # Chain by id, and stop below the first id that is not settled yet: ids and timestamps need not agree. The
    # unsettled decisions are the account's last SETTLE of them, read as a range of its time index (ORDER BY -ts):
    # "the lowest id after ``after`` with a recent ts" ordered by id would walk the id index over the whole backlog
    # when there is none (an idle account, or a catch-up after beat was down).
    recent = Decision.objects.filter(account_id=account_id, ts__gte=settled, pk__gt=after).order_by("-ts")
    first_unsettled = min(recent.values_list("pk", flat=True), default=None)
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
    # Where a walk that passed ended: the last checkpoint it closed (0: none), that checkpoint's last decision id
    # and chain hash — the anchor the next incremental verification starts from.
    last_seq: int = 0
    last_decision_id: int = 0
    last_chain_hash: str = GENESIS
    archived: int = 0  # checkpoints that lacked decisions retention dropped (their chain hash taken as stored)


# What a walk reads of each decision: the hashed fields (the agent by its public id), no model instances.
_HASHED = (*ROW_FIELDS, *OPTIONAL_AMOUNTS, "api_key_id", "explain")
_READ = ("pk", "row_hash", "agent__agent_id", *(name for name in _HASHED if name != "agent_id"))
WALK_CHUNK = 2000  # decisions read at a time
PROGRESS_EVERY = 20_000  # decisions between two progress reports
TAIL_COUNTED = 1_000_000  # decisions after the last checkpoint counted for the progress bar's total, at most


def _walk(
    account_id: int,
    checkpoints: Iterator[DecisionCheckpoint],
    *,
    prev: str,
    after_id: int,
    upto_id: int | None = None,
    progress: Callable[[int], None] | None = None,
    archivable_before: Any = None,
) -> Verification:
    """One pass in id order over the account's decisions after ``after_id`` (up to ``upto_id``), beside
    ``checkpoints`` in seq order, the first of which must follow the chain hash ``prev``: every row's hash is
    recomputed, and each checkpoint re-chained from the rows now in its range — except one made before
    ``archivable_before`` that has fewer rows than it chained (retention dropped them): its chain hash is taken as
    stored. Stops at the first problem."""
    rows = checks = 0
    checkpoint: DecisionCheckpoint | None = None
    digest: Any = None
    in_range = 0
    first_in_range: int | None = None
    last = Verification(True, 0, 0, last_chain_hash=prev, last_decision_id=after_id)
    expected_first: int | None = after_id + 1 if after_id else None
    upcoming = iter(checkpoints)

    def broken(cp: DecisionCheckpoint, first: int | None) -> Verification:
        first = first if first is not None else cp.first_decision_id
        return Verification(
            False,
            rows,
            checks,
            first,
            f"Checkpoint {cp.seq} (decisions {cp.first_decision_id}–{cp.last_decision_id}) does not match: rows "
            f"were deleted, inserted or re-hashed; first decision of the range: {first}.",
        )

    def open_next() -> Verification | None:
        nonlocal checkpoint, digest, in_range, first_in_range, checks
        checkpoint = next(upcoming, None)
        if checkpoint is None:
            return None
        checks += 1
        digest, in_range, first_in_range = hashlib.sha256(last.last_chain_hash.encode()), 0, None
        overlaps = expected_first is not None and checkpoint.first_decision_id < expected_first
        if checkpoint.prev_hash != last.last_chain_hash or overlaps:
            return broken(checkpoint, None)
        return None

    def close() -> Verification | None:
        nonlocal expected_first
        assert checkpoint is not None
        if in_range != checkpoint.row_count or digest.hexdigest() != checkpoint.chain_hash:
            dropped = (
                archivable_before is not None
                and checkpoint.created_at < archivable_before
                and in_range < checkpoint.row_count
            )
            if not dropped:
                return broken(checkpoint, first_in_range)
            last.archived += 1
        last.last_seq, last.last_decision_id = checkpoint.seq, checkpoint.last_decision_id
        last.last_chain_hash = checkpoint.chain_hash
        expected_first = checkpoint.last_decision_id + 1
        return None

    failure = open_next()
    if failure:
        return failure
    found = Decision.objects.filter(account_id=account_id, pk__gt=after_id)
    if upto_id is not None:
        found = found.filter(pk__lte=upto_id)
    for values in found.order_by("pk").values_list(*_READ).iterator(chunk_size=WALK_CHUNK):
        pk, stored, agent_id = values[0], values[1], values[2]
        fields = dict(zip(_READ[3:], values[3:], strict=True))
        fields["agent_id"] = agent_id
        rows += 1
        if row_hash(account_id, fields) != stored:
            return Verification(
                False, rows, checks, pk, f"Decision {pk} does not match its hash: it was changed after it was written."
            )
        while checkpoint is not None and pk > checkpoint.last_decision_id:
            failure = close() or open_next()
            if failure:
                return failure
        if checkpoint is not None and pk >= checkpoint.first_decision_id:
            # A decision between two checkpoints' ranges is in none: its row hash is checked, as the rows after the
            # last checkpoint are (one committed after a later id was chained lands there).
            digest.update(stored.encode())
            in_range += 1
            first_in_range = pk if first_in_range is None else first_in_range
        if progress is not None and rows % PROGRESS_EVERY == 0:
            progress(rows)
    while checkpoint is not None:  # checkpoints whose rows are gone (or fewer than they chained)
        failure = close() or open_next()
        if failure:
            return failure
    if progress is not None:
        progress(rows)
    last.rows_checked, last.checkpoints_checked = rows, checks
    return last


# After retention dropped the days before its horizon (governance/partitions.py), a checkpoint made before the
# horizon plus this margin may chain decisions that are gone: the walk lets it lack rows (below). A checkpoint chains
# decisions older than the moment it was made, and beat makes one every 5 minutes: the margin also covers a day of
# beat downtime.
ARCHIVE_MARGIN = timedelta(days=1)


def archivable_before() -> Any:
    """The moment before which a checkpoint may lack decisions retention dropped (None: retention dropped none)."""
    horizon = partitions.horizon()
    return horizon + ARCHIVE_MARGIN if horizon is not None else None


def verify(account_id: int, progress: Callable[[int], None] | None = None) -> Verification:
    """The whole log: every decision's row hash and every checkpoint re-chained from the first (one pass in id
    order); names the first decision that does not match. ``progress`` is told the rows checked so far.

    After retention dropped days of the log, a checkpoint made before its horizon plus a day may lack decisions:
    its kept ones are checked by their row hashes and its chain hash is taken as stored (it must still follow the
    one before it, and the next one must follow it); every other checkpoint is re-chained from its rows."""
    checkpoints = DecisionCheckpoint.objects.filter(account_id=account_id).order_by("seq").iterator(chunk_size=500)
    before = archivable_before()
    result = _walk(account_id, checkpoints, prev=GENESIS, after_id=0, progress=progress, archivable_before=before)
    if result.ok:
        result.message = f"{result.rows_checked} decisions and {result.checkpoints_checked} checkpoints verified."
        if result.archived:
            result.message += (
                f" {result.archived} checkpoints made before {before:%Y-%m-%d %H:%M} UTC lack decisions retention "
                "dropped: their kept decisions were checked by their hashes."
            )
    return result


def rows_to_verify(account_id: int) -> int:
    """About how many decisions ``verify`` reads: those its checkpoints chain, and those written since (no COUNT
    over the whole log)."""
    chained = DecisionCheckpoint.objects.filter(account_id=account_id).aggregate(
        rows=Sum("row_count"), last=Max("last_decision_id")
    )
    tail = Decision.objects.filter(account_id=account_id, pk__gt=chained["last"] or 0)[:TAIL_COUNTED].count()
    return (chained["rows"] or 0) + tail


# --- the hourly verification: incremental, and a rolling re-verification (docs/operations.md) ---------------------

NOTIFY_AGAIN = timedelta(days=1)  # a log that stays broken is notified again after this long, not every hour


@dataclass
class LogCheck:
    """One hourly run for one log of one account: what the new part showed, then the re-verified slice."""

    ok: bool
    message: str
    first_bad_id: int | None = None
    rows: int = 0


def _state(account_id: int, log: str) -> LogVerification:
    state, _ = LogVerification.objects.get_or_create(account_id=account_id, log=log)
    return state


def _slice(anchor_seq: int, days: int) -> int:
    """Checkpoints the re-verification takes per hourly run, so that it goes over ``anchor_seq`` of them in
    ``days`` days."""
    return max(1, math.ceil(anchor_seq / (days * 24)))


def _decisions_anchor_moved(state: LogVerification) -> Verification | None:
    if not state.anchor_seq:
        return None
    found = (
        DecisionCheckpoint.objects.filter(account_id=state.account_id, seq=state.anchor_seq)
        .values_list("chain_hash", "last_decision_id")
        .first()
    )
    if found == (state.anchor_hash, state.anchor_id):
        return None
    return Verification(
        False,
        0,
        0,
        state.anchor_id,
        f"Checkpoint {state.anchor_seq}, verified by an earlier hourly run, was changed or removed (with the newest "
        "checkpoints, or to hide a rewrite).",
    )


def verify_new_decisions(state: LogVerification) -> Verification:
    """The checkpoints written since the anchor, their decisions re-hashed and re-chained from the anchor's hash; the
    anchor itself must be unchanged. Moves the anchor (not saved) when they pass."""
    moved = _decisions_anchor_moved(state)
    if moved:
        return moved
    new = list(DecisionCheckpoint.objects.filter(account_id=state.account_id, seq__gt=state.anchor_seq).order_by("seq"))
    if not new:
        return Verification(True, 0, 0, last_seq=state.anchor_seq)
    result = _walk(
        state.account_id,
        iter(new),
        prev=state.anchor_hash,
        after_id=state.anchor_id,
        upto_id=new[-1].last_decision_id,
        archivable_before=archivable_before(),
    )
    if result.ok:
        state.anchor_seq, state.anchor_id, state.anchor_hash = (
            result.last_seq,
            result.last_decision_id,
            result.last_chain_hash,
        )
    return result


def sweep_decisions(state: LogVerification, days: int, now: Any) -> Verification:
    """The next slice of the re-verification of what the anchor covers: checkpoints after ``sweep_seq``, re-chained
    from the chain hash of the one before them, with their decisions. Wraps around (a full pass ended) at the
    anchor. Moves ``sweep_seq`` (not saved) when the slice passes."""
    if not state.anchor_seq:
        return Verification(True, 0, 0)
    start = state.sweep_seq if state.sweep_seq < state.anchor_seq else 0
    end = min(start + _slice(state.anchor_seq, days), state.anchor_seq)
    checkpoints = list(
        DecisionCheckpoint.objects.filter(account_id=state.account_id, seq__gt=start, seq__lte=end).order_by("seq")
    )
    prev, after = GENESIS, 0
    if start:
        before = (
            DecisionCheckpoint.objects.filter(account_id=state.account_id, seq=start)
            .values_list("chain_hash", "last_decision_id")
            .first()
        )
        if before is None:
            return Verification(False, 0, 0, None, f"Checkpoint {start} was removed from the middle of the chain.")
        prev, after = before
    if not checkpoints:
        return Verification(False, 0, 0, None, f"Checkpoints {start + 1}–{end} were removed from the chain.")
    result = _walk(
        state.account_id,
        iter(checkpoints),
        prev=prev,
        after_id=after,
        upto_id=checkpoints[-1].last_decision_id,
        archivable_before=archivable_before(),
    )
    if result.ok:
        if result.last_seq >= state.anchor_seq:
            state.sweep_seq, state.full_pass_at = 0, now
        else:
            state.sweep_seq = result.last_seq
    return result


def _audit_anchor_moved(state: LogVerification) -> AuditVerification | None:
    if not state.anchor_id:
        return None
    stored = AuditEntry.objects.filter(account_id=state.account_id, pk=state.anchor_id).values_list(
        "row_hash", flat=True
    )
    if stored.first() == state.anchor_hash:
        return None
    return AuditVerification(
        False,
        0,
        0,
        state.anchor_id,
        f"Audit entry {state.anchor_id}, verified earlier, was changed or removed.",
    )


def verify_new_audit(state: LogVerification) -> AuditVerification:
    """The audit entries written since the anchor, chained from the anchor entry's hash (which must be unchanged).
    Moves the anchor (not saved) when they pass."""
    moved = _audit_anchor_moved(state)
    if moved:
        return moved
    result = audit.verify(
        state.account_id, after_id=state.anchor_id, prev=state.anchor_hash if state.anchor_id else None
    )
    if result.ok and result.last_hash is not None:
        state.anchor_id, state.anchor_hash = result.last_entry_id, result.last_hash
    return result


def sweep_audit(state: LogVerification, days: int, now: Any) -> AuditVerification:
    """The next slice of the re-verification of the audit entries up to the anchor, by audit checkpoint ranges (a
    checkpoint's chain hash is its last entry's hash: the slice's ``prev``)."""
    covered = AuditCheckpoint.objects.filter(account_id=state.account_id, last_entry_id__lte=state.anchor_id)
    total = covered.aggregate(n=Max("seq"))["n"] or 0
    if not total:
        return AuditVerification(True, 0, 0)
    start = state.sweep_seq if state.sweep_seq < total else 0
    end = min(start + _slice(total, days), total)
    prev: str | None = None
    after = 0
    if start:
        before = covered.filter(seq=start).values_list("chain_hash", "last_entry_id").first()
        if before is None:
            return AuditVerification(False, 0, 0, None, f"Audit checkpoint {start} was removed.")
        prev, after = before
    head = covered.filter(seq=end).values_list("last_entry_id", "chain_hash").first()
    if head is None:
        return AuditVerification(False, 0, 0, None, f"Audit checkpoint {end} was removed.")
    upto, end_hash = head
    result = audit.verify(state.account_id, after_id=after, prev=prev, upto_id=upto)
    if result.ok and (result.last_entry_id, result.last_hash) != (upto, end_hash):
        # The walk passed but does not end on the entry and hash the checkpoint recorded: entries at the end of its
        # range were deleted, or re-hashed up to it, or left without hashes (then the walk has no chained entry).
        return AuditVerification(
            False,
            result.entries_checked,
            result.unchained,
            upto,
            f"Audit checkpoint {end} (entries up to {upto}) does not match the entries now in its range: entries "
            "were deleted, edited or re-hashed before it.",
        )
    if result.ok:
        if end >= total:
            state.sweep_seq, state.full_pass_at = 0, now
        else:
            state.sweep_seq = end
    return result


def verify_recent(account: Account, *, days: int | None = None) -> list[LogCheck]:
    """The hourly verification of the account's two logs: what was written since the last run (from the anchor),
    then one slice of the re-verification of everything before it, so that the whole log is verified again every
    ``days`` days (ONCEONLY_VERIFY_SWEEP_DAYS). The cost of a run is the new rows plus 1/(24 × days) of the log, not
    the whole history. A failure is stored, logged and reported (``_report``); the anchor does not move past it."""
    days = days or settings.ONCEONLY_VERIFY_SWEEP_DAYS
    now = timezone.now()
    outcomes = []
    for log, new_part, next_slice, noun in _LOGS:
        state = _state(account.pk, log)
        new = new_part(state)
        swept = next_slice(state, days, now) if new.ok else None
        rows = _rows(new) + (_rows(swept) if swept is not None else 0)
        failed = next((result for result in (new, swept) if result is not None and not result.ok), None)
        outcome = (
            LogCheck(False, failed.message, _first_bad(failed), rows)
            if failed is not None
            else LogCheck(True, f"{rows} {noun} verified.", rows=rows)
        )
        _report(account, state, outcome, now)
        outcomes.append(outcome)
    return outcomes


def _rows(result: Verification | AuditVerification) -> int:
    return result.rows_checked if isinstance(result, Verification) else result.entries_checked


def _first_bad(result: Verification | AuditVerification) -> int | None:
    return result.first_bad_decision_id if isinstance(result, Verification) else result.first_bad_entry_id


# Per log: what is new since its anchor, the next slice of its re-verification, and what its rows are called.
_LOGS: tuple[tuple[str, Callable[..., Any], Callable[..., Any], str], ...] = (
    (LogVerification.Log.DECISIONS, verify_new_decisions, sweep_decisions, "decisions"),
    (LogVerification.Log.AUDIT, verify_new_audit, sweep_audit, "audit entries"),
)


def _report(account: Account, state: LogVerification, outcome: LogCheck, now: Any) -> None:
    """Store the run's outcome; a failure is logged, and notified to the owners (kind security) — and, for the
    decision log, audited — when it is new, different from the last one, or last notified a day ago."""
    notify_now = not outcome.ok and (
        state.ok or state.message != outcome.message or not state.notified_at or now - state.notified_at > NOTIFY_AGAIN
    )
    state.ok, state.message, state.checked_at = outcome.ok, outcome.message, now
    if notify_now:
        state.notified_at = now
    state.save(
        update_fields=[
            "anchor_seq",
            "anchor_id",
            "anchor_hash",
            "sweep_seq",
            "full_pass_at",
            "checked_at",
            "ok",
            "message",
            "notified_at",
        ]
    )
    if outcome.ok:
        return
    decisions = state.log == LogVerification.Log.DECISIONS
    logger.error("%s of account %s failed verification: %s", state.get_log_display(), account.pk, outcome.message)
    if not notify_now:
        return
    if decisions:  # not for the audit log: the entry would be chained to a log that is known to be broken
        audit_record(
            account=account,
            action="governance.ledger.verify_failed",
            object_type="decision",
            object_id=outcome.first_bad_id or "",
            data={"message": outcome.message},
        )
    notify(
        account_id=account.pk,
        kind=Notification.Kind.SECURITY,
        subject=f"The {'decision' if decisions else 'audit'} log failed its verification",
        body=outcome.message,
    )


def verify_all() -> list[tuple[int, LogCheck]]:
    """Beat (hourly): ``verify_recent`` for every account. Returns the failures."""
    failed: list[tuple[int, LogCheck]] = []
    for account in Account.objects.order_by("pk"):
        try:
            failed += [(account.pk, outcome) for outcome in verify_recent(account) if not outcome.ok]
        except Exception:  # one account's error (a statement timeout…) must not stop the others' checks
            logger.exception("the hourly verification of account %s could not run", account.pk)
    return failed
