"""Retention of the decision log by whole days (governance/partitions.py, ONCEONLY_DECISION_RETENTION_DAYS): beat
drops the day partitions past retention, and the verification goes on from the new start of the log — the
checkpoints that chained dropped decisions are checked as a chain and their kept decisions by row hash, every later
checkpoint re-chained from its rows as before. PostgreSQL only (SQLite keeps one table and no retention)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection

from governance import ledger, partitions
from governance.models import Decision, DecisionCheckpoint
from governance.tasks import maintain_decision_partitions
from tests.support.decisions import agent, decide
from tests.support.partitions import lay_out_days

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's"),
]

DAYS = 6  # days of history, 3 decisions each


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch):
    monkeypatch.setattr(ledger, "SETTLE", timedelta(0))


def hashed(decisions: list[Decision]) -> None:
    for decision in Decision.objects.filter(pk__in=[d.pk for d in decisions]).select_related("agent"):
        fields = ledger._row_fields(decision)
        fields["agent_id"] = decision.agent.agent_id
        Decision.objects.filter(pk=decision.pk).update(row_hash=ledger.row_hash(decision.account_id, fields))


@pytest.fixture
def history(account_a):
    """DAYS days of decisions, each day checkpointed five minutes after it ended, as beat does; and one decision
    written at 00:01 on each day but chained by the previous day's checkpoint (committed just before it ran): the
    checkpoints that straddle a day boundary."""
    today = lay_out_days(back=30)
    bot = agent(account_a, "bot")
    for n in range(DAYS, 0, -1):
        day = today - timedelta(days=n)
        made = decide(bot, ts=day + timedelta(hours=12), n=3, spend="0.5")
        made += decide(bot, ts=day + timedelta(days=1, minutes=1), spend="0.5")  # the next day's, chained now
        hashed(made)
        checkpoint = ledger.checkpoint_account(account_a.pk)
        DecisionCheckpoint.objects.filter(pk=checkpoint.pk).update(created_at=day + timedelta(days=1, minutes=5))
    with connection.cursor() as cursor:
        # The rows' deferred foreign-key checks, due at the test transaction's commit, now: PostgreSQL drops no table
        # with checks pending (beat's drop runs in a transaction of its own, which has none).
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return today


def test_beat_drops_the_days_past_retention_and_keeps_the_rest(history, account_a, settings):
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 0
    maintain_decision_partitions()
    assert Decision.objects.filter(account=account_a).count() == DAYS * 4  # 0: nothing is dropped
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    assert partitions.horizon() == history - timedelta(days=3)
    kept = Decision.objects.filter(account=account_a)
    # The last three days' (3 at noon, 1 at 00:01 each) and today's 00:01 one.
    assert kept.count() == 3 * 4 + 1
    assert not kept.filter(ts__lt=history - timedelta(days=3)).exists()
    assert all(p.end is None or p.end > history - timedelta(days=3) for p in partitions.partitions())
    ahead = [p for p in partitions.partitions() if p.start is not None and p.start >= history]
    assert len(ahead) == partitions.DAYS_AHEAD + 1  # today and a week ahead


def test_the_log_verifies_after_retention(history, account_a, settings):
    assert ledger.verify(account_a.pk).ok
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    result = ledger.verify(account_a.pk)
    assert result.ok, result.message
    # The checkpoints made before the horizon plus a day lack dropped decisions: those of the two days dropped
    # whole, and the one made at 00:05 on the horizon's day (it chained that day's 00:01 decision, kept: checked by
    # its hash). The later ones are re-chained from their rows.
    assert result.archived == 3 and "lack decisions retention dropped" in result.message
    assert result.checkpoints_checked == DAYS and result.rows_checked == 3 * 4 + 1


def test_a_changed_kept_decision_of_an_archived_checkpoint_is_found(history, account_a, settings):
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    straddling = Decision.objects.get(account=account_a, ts=history - timedelta(days=3, hours=-0, minutes=-1))
    Decision.objects.filter(pk=straddling.pk).update(spend_usd=0)
    result = ledger.verify(account_a.pk)
    assert not result.ok and result.first_bad_decision_id == straddling.pk


def test_a_deleted_decision_after_the_archive_is_found(history, account_a, settings):
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    victim = Decision.objects.filter(account=account_a, ts__gte=history - timedelta(days=1)).order_by("pk").first()
    Decision.objects.filter(pk=victim.pk).delete()
    result = ledger.verify(account_a.pk)
    assert not result.ok and "does not match" in result.message


def test_a_changed_archived_checkpoint_is_found(history, account_a, settings):
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    DecisionCheckpoint.objects.filter(account=account_a, seq=2).update(chain_hash="f" * 64)
    result = ledger.verify(account_a.pk)
    assert not result.ok and result.message.startswith("Checkpoint 3 ")  # it no longer follows the one before


def test_the_hourly_verification_sweeps_from_the_archive(history, account_a, settings):
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    for _ in range(3):  # the new checkpoints, then slices of the re-verification: none reads a dropped decision
        decisions, _audit = ledger.verify_recent(account_a, days=1)
        assert decisions.ok, decisions.message


def test_a_legal_hold_keeps_the_account_s_decisions_past_retention(history, account_a, account_b, settings):
    other = agent(account_b, "other-bot")
    dropped_day = history - timedelta(days=5)
    hashed(decide(other, ts=dropped_day + timedelta(hours=6), n=2))
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    account_a.legal_hold_since = history
    account_a.save(update_fields=["legal_hold_since"])
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    assert Decision.objects.filter(account=account_a).count() == DAYS * 4  # every one, under its id
    assert not Decision.objects.filter(account=account_b).exists()  # the other account's days are gone
    result = ledger.verify(account_a.pk)
    assert result.ok and result.rows_checked == DAYS * 4 and result.archived == 0, result.message
    # The held days are partitions of held decisions only, dropped no further while the hold lasts.
    maintain_decision_partitions()
    assert Decision.objects.filter(account=account_a).count() == DAYS * 4
    account_a.legal_hold_since = None
    account_a.save(update_fields=["legal_hold_since"])
    maintain_decision_partitions()  # released: its old days go
    assert Decision.objects.filter(account=account_a).count() == 3 * 4 + 1
    assert ledger.verify(account_a.pk).ok


def test_a_held_agent_keeps_its_decisions_and_the_log_still_verifies(history, account_a, settings):
    other = agent(account_a, "other-bot")
    held = agent(account_a, "held-bot", legal_hold_since=history)
    for n in range(DAYS, 3, -1):  # on the days to be dropped, after the history's (chained by a checkpoint each)
        day = history - timedelta(days=n)
        made = decide(held, ts=day + timedelta(hours=13), n=2) + decide(other, ts=day + timedelta(hours=14))
        hashed(made)
    checkpoint = ledger.checkpoint_account(account_a.pk)
    DecisionCheckpoint.objects.filter(pk=checkpoint.pk).update(created_at=history - timedelta(days=3, hours=-1))
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    settings.ONCEONLY_DECISION_RETENTION_DAYS = 3
    maintain_decision_partitions()
    assert Decision.objects.filter(agent=held).count() == 2 * 3  # every one of the held agent's
    assert not Decision.objects.filter(agent=other).exists()
    result = ledger.verify(account_a.pk)
    assert result.ok, result.message
    # Its checkpoint lacks the other agent's dropped decisions: archived, the held ones checked by their hashes.
    assert result.archived == 4
    first_held = Decision.objects.filter(agent=held).order_by("pk").first()
    Decision.objects.filter(pk=first_held.pk).update(spend_usd=9)  # a kept decision of an archived checkpoint, changed
    assert not ledger.verify(account_a.pk).ok
