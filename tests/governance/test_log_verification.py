"""The hourly verification of the decision and audit logs (governance/ledger.py ``verify_recent``): each run checks
what was written since the last one, from an anchor that must itself be unchanged, and one slice of a rolling
re-verification of everything before it — so its cost is the new rows plus a fixed share of the log, and a change
to an old row is still found within ONCEONLY_VERIFY_SWEEP_DAYS."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billing.models import AuditCheckpoint, AuditEntry, Notification
from billing.services import audit_record
from governance import ledger
from governance.models import Decision, DecisionCheckpoint, LogVerification
from tests.support.decisions import agent, decide

PER_CHECKPOINT = 5


@pytest.fixture(autouse=True)
def small_checkpoints(monkeypatch):
    monkeypatch.setattr(ledger, "SETTLE", timedelta(0))  # chain at once (30 s in production)
    monkeypatch.setattr(ledger, "BATCH", PER_CHECKPOINT)  # many checkpoints from few decisions


def write(account, n: int) -> list[Decision]:
    """``n`` decisions with their row hashes, as the governed call writes them, chained into checkpoints."""
    bot = agent(account, f"bot-{Decision.objects.count()}")
    made = decide(bot, n=n, spend="0.25")
    for decision in Decision.objects.filter(pk__in=[d.pk for d in made]).select_related("agent"):
        fields = ledger._row_fields(decision)
        fields["agent_id"] = decision.agent.agent_id
        Decision.objects.filter(pk=decision.pk).update(row_hash=ledger.row_hash(account.pk, fields))
    while ledger.checkpoint_account(account.pk):
        pass
    return made


def run(account, days: int = 1) -> ledger.LogCheck:
    decisions, _audit = ledger.verify_recent(account, days=days)
    return decisions


def state(account, log="decisions") -> LogVerification:
    return LogVerification.objects.get(account=account, log=log)


def test_each_run_reads_the_new_rows_and_one_slice_of_the_old(account_a):
    write(account_a, 10 * PER_CHECKPOINT)
    first = run(account_a, days=1)  # nothing verified yet: all 50 new rows, then a slice of 1 of 10 checkpoints
    assert first.ok and first.rows == 50 + PER_CHECKPOINT
    assert (state(account_a).anchor_seq, state(account_a).sweep_seq) == (10, 1)
    write(account_a, 2 * PER_CHECKPOINT)
    second = run(account_a, days=1)  # 10 new rows, and the next slice (12 checkpoints over 24 runs: 1)
    assert second.ok and second.rows == 10 + PER_CHECKPOINT
    assert (state(account_a).anchor_seq, state(account_a).sweep_seq) == (12, 2)
    quiet = run(account_a, days=1)  # nothing new: the slice alone
    assert quiet.ok and quiet.rows == PER_CHECKPOINT


def test_the_rolling_re_verification_finds_an_old_edit_within_its_period(account_a):
    made = write(account_a, 30 * PER_CHECKPOINT)
    assert run(account_a, days=1).ok  # everything verified once
    victim = made[17 * PER_CHECKPOINT + 2]  # in checkpoint 18, long verified
    Decision.objects.filter(pk=victim.pk).update(spend_usd=0)  # someone hides a charge
    runs = 0
    while True:
        runs += 1
        found = run(account_a, days=1)
        if not found.ok:
            break
        assert runs < 24, "a whole day of hourly runs did not find the edit"
    assert found.first_bad_id == victim.pk and f"Decision {victim.pk} does not match its hash" in found.message
    assert runs <= 24  # 30 checkpoints, 2 per run (ceil(30 / 24)): the slice that holds it comes within a day
    [note] = Notification.objects.filter(account=account_a)
    assert note.kind == "security" and str(victim.pk) in note.body


def test_a_full_pass_is_recorded_when_the_slices_wrap_around(account_a):
    write(account_a, 4 * PER_CHECKPOINT)
    for n in range(4):  # 4 checkpoints, a slice of 1 (ceil(4 / 24)): the 4th run ends the pass
        assert run(account_a, days=1).ok
        assert (state(account_a).full_pass_at is not None) == (n == 3)
    assert state(account_a).sweep_seq == 0


def test_a_new_row_changed_before_its_first_verification_is_found_at_once(account_a):
    write(account_a, 2 * PER_CHECKPOINT)
    assert run(account_a).ok
    made = write(account_a, PER_CHECKPOINT)
    Decision.objects.filter(pk=made[1].pk).update(tool="something-else")
    found = run(account_a)
    assert not found.ok and found.first_bad_id == made[1].pk
    assert state(account_a).anchor_seq == 2  # the anchor does not move past a failure


def test_removing_the_newest_checkpoints_with_their_decisions_is_found(account_a):
    """What a walk from the first row cannot see (the log simply looks shorter) the anchor shows: the checkpoint the
    last run verified up to is gone."""
    made = write(account_a, 3 * PER_CHECKPOINT)
    assert run(account_a).ok and state(account_a).anchor_seq == 3
    DecisionCheckpoint.objects.filter(account=account_a, seq=3).delete()
    Decision.objects.filter(pk__in=[d.pk for d in made[-PER_CHECKPOINT:]]).delete()
    assert ledger.verify(account_a.pk).ok  # the whole-log walk finds nothing wrong
    found = run(account_a)
    assert not found.ok and "Checkpoint 3, verified" in found.message and "was changed or removed" in found.message


def test_a_broken_log_is_notified_once_a_day_not_every_hour(account_a):
    made = write(account_a, PER_CHECKPOINT)
    assert run(account_a).ok
    Decision.objects.filter(pk=made[0].pk).update(spend_usd=9)
    for _ in range(3):
        assert not run(account_a).ok
    assert Notification.objects.filter(account=account_a).count() == 1
    assert AuditEntry.objects.filter(account=account_a, action="governance.ledger.verify_failed").count() == 1
    LogVerification.objects.filter(account=account_a, log="decisions").update(
        notified_at=state(account_a).notified_at - ledger.NOTIFY_AGAIN - timedelta(minutes=1)
    )
    assert not run(account_a).ok
    assert Notification.objects.filter(account=account_a).count() == 2


def test_accounts_are_verified_on_their_own(account_a, account_b):
    made = write(account_a, PER_CHECKPOINT)
    write(account_b, PER_CHECKPOINT)
    Decision.objects.filter(pk=made[0].pk).update(spend_usd=9)
    failed = ledger.verify_all()
    assert [account for account, _ in failed] == [account_a.pk]
    assert state(account_b).ok and not state(account_a).ok


def audit_entries(account, n: int) -> list[AuditEntry]:
    for i in range(n):
        audit_record(account=account, action="test.entry", object_type="thing", object_id=str(i), data={"i": i})
    return list(AuditEntry.objects.filter(account=account, action="test.entry").order_by("id"))


def test_the_audit_log_new_entries_and_the_re_verification(account_a):
    from billing import audit

    entries = []
    for _ in range(6):  # six audit checkpoints of three entries each
        entries += audit_entries(account_a, 3)[-3:]
        audit.checkpoint_account(account_a.pk)
    _decisions, first = ledger.verify_recent(account_a, days=1)
    assert first.ok and state(account_a, "audit").anchor_id == entries[-1].pk
    more = audit_entries(account_a, 2)[-2:]
    _decisions, second = ledger.verify_recent(account_a, days=1)
    assert second.ok and state(account_a, "audit").anchor_id == more[-1].pk
    assert second.rows == 2 + 3  # the two new entries, and one audit checkpoint's range re-verified
    AuditEntry.objects.filter(pk=entries[10].pk).update(action="edited")  # old, verified long ago
    results = [ledger.verify_recent(account_a, days=1)[1] for _ in range(AuditCheckpoint.objects.count())]
    bad = [result for result in results if not result.ok]
    assert bad and bad[0].first_bad_id == entries[10].pk


def test_a_changed_audit_anchor_is_found(account_a):
    entries = audit_entries(account_a, 3)
    assert ledger.verify_recent(account_a)[1].ok
    AuditEntry.objects.filter(pk=entries[-1].pk).delete()  # the newest entry, which the last run verified
    audit_log = ledger.verify_recent(account_a)[1]
    assert not audit_log.ok and f"Audit entry {entries[-1].pk}, verified earlier, was changed or removed" in (
        audit_log.message
    )


def rehash_audit(account, first_pk: int, last_pk: int) -> None:
    """What a database writer who has the code does: recompute the entries' hashes from ``first_pk`` to ``last_pk``."""
    from billing import audit

    prev = (
        AuditEntry.objects.filter(account=account, pk__lt=first_pk).order_by("-id").values_list("row_hash", flat=True)
    ).first() or audit.GENESIS
    for entry in AuditEntry.objects.filter(account=account, pk__gte=first_pk, pk__lte=last_pk).order_by("id"):
        fields = {name: getattr(entry, name) for name in audit.FIELDS}
        digest = audit.entry_hash(account.pk, prev, entry.created_at, fields)
        AuditEntry.objects.filter(pk=entry.pk).update(prev_hash=prev, row_hash=digest)
        prev = digest


def audit_checkpoints(account, checkpoints: int = 6, per: int = 5) -> None:
    from billing import audit

    for _ in range(checkpoints):
        audit_entries(account, per)
        assert audit.checkpoint_account(account.pk)


@pytest.mark.parametrize("attack", ["delete the end of a range", "edit, re-hashed to the range's end", "blank hashes"])
def test_the_audit_re_verification_checks_each_slice_against_its_checkpoint(account_a, attack):
    """Found by a review: a slice walked to its checkpoint's last entry without comparing the walk's end with the
    hash the checkpoint recorded, so these passed every hourly run for ever; each is found within one full pass."""
    audit_checkpoints(account_a)
    assert ledger.verify_recent(account_a, days=1)[1].ok
    cp2, cp3 = (AuditCheckpoint.objects.get(account=account_a, seq=seq) for seq in (2, 3))
    if attack == "delete the end of a range":
        AuditEntry.objects.filter(account=account_a, pk__gt=cp3.last_entry_id - 2, pk__lte=cp3.last_entry_id).delete()
    elif attack == "edit, re-hashed to the range's end":
        victim = cp2.last_entry_id + 2
        AuditEntry.objects.filter(pk=victim).update(data={"i": "forged"}, actor_label="nobody")
        rehash_audit(account_a, victim, cp3.last_entry_id)
    else:
        first = AuditCheckpoint.objects.get(account=account_a, seq=1)
        AuditEntry.objects.filter(account=account_a, pk__lte=first.last_entry_id).update(
            row_hash="", prev_hash="", data={"forged": True}
        )
    runs = [ledger.verify_recent(account_a, days=1)[1] for _ in range(AuditCheckpoint.objects.count())]
    assert any(not found.ok for found in runs), [found.message for found in runs]


def test_a_changed_anchor_is_notified_once_not_every_hour(account_a):
    write(account_a, 3 * PER_CHECKPOINT)
    assert run(account_a).ok
    newest = DecisionCheckpoint.objects.filter(account=account_a).order_by("-seq").first()
    Decision.objects.filter(account=account_a, pk__gte=newest.first_decision_id).delete()
    newest.delete()
    assert [run(account_a).ok for _ in range(3)] == [False, False, False]
    assert Notification.objects.filter(account=account_a).count() == 1
