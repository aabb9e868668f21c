"""Tamper evidence of the decision log: checkpoints chain every row; the verifier names the first bad one."""

import io

import pytest
from django.core.management import CommandError, call_command

from governance import ledger
from governance.models import Decision, DecisionCheckpoint
from governance.tasks import checkpoint_decisions
from tests.support.redis_calls import count_redis_round_trips


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch):
    # Checkpoints only chain decisions older than ledger.SETTLE (30 s in production); these tests don't wait.
    from datetime import timedelta

    monkeypatch.setattr(ledger, "SETTLE", timedelta(0))


@pytest.fixture
def decisions(key_a):
    client = key_a.client()
    for n in range(6):
        client.post(
            "/v1/ai/run",
            {"agent_id": "bot", "tool": "t", "args": {"n": n}, "spend_usd": 0.1},
            content_type="application/json",
        )
    return list(Decision.objects.order_by("pk"))


def verify_cmd(*extra):
    out = io.StringIO()
    call_command("verify_decision_log", "--account", "Acme", *extra, stdout=out)
    return out.getvalue()


def test_checkpoints_chain_all_decisions_and_verify(decisions, key_a):
    checkpoint_decisions()
    checkpoint = DecisionCheckpoint.objects.get()
    assert (checkpoint.first_decision_id, checkpoint.last_decision_id, checkpoint.row_count) == (
        decisions[0].pk,
        decisions[-1].pk,
        6,
    )
    assert checkpoint.prev_hash == ledger.GENESIS
    assert "6 decisions and 1 checkpoints verified" in verify_cmd()
    key_a.client().post(
        "/v1/ai/run", {"agent_id": "bot", "tool": "t", "args": {"n": 99}}, content_type="application/json"
    )
    checkpoint_decisions()
    second = DecisionCheckpoint.objects.get(seq=2)
    assert second.prev_hash == checkpoint.chain_hash and second.row_count == 1


def test_an_edited_row_is_named(decisions):
    checkpoint_decisions()
    Decision.objects.filter(pk=decisions[3].pk).update(spend_usd=0)  # someone hides a charge
    with pytest.raises(CommandError, match=f"Decision {decisions[3].pk} does not match"):
        verify_cmd()


def test_a_rehashed_edit_or_a_deleted_row_breaks_the_chain(decisions):
    checkpoint_decisions()
    Decision.objects.filter(pk=decisions[2].pk).delete()
    result = ledger.verify(decisions[0].account_id)
    assert not result.ok and "Checkpoint 1" in result.message


def test_unknown_account_is_a_clear_error(db):
    with pytest.raises(CommandError, match="No account named"):
        call_command("verify_decision_log", "--account", "Nope")


def test_fresh_decisions_wait_to_be_chained(decisions, monkeypatch):
    from datetime import timedelta

    monkeypatch.setattr(ledger, "SETTLE", timedelta(seconds=30))
    assert ledger.checkpoint_account(decisions[0].account_id) is None  # a lower id may still commit


def test_a_lower_id_that_settles_later_is_not_skipped(decisions, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr(ledger, "SETTLE", timedelta(seconds=30))
    old = timezone.now() - timedelta(minutes=5)
    Decision.objects.exclude(pk=decisions[2].pk).update(ts=old)  # decision 3 "committed late"
    checkpoint = ledger.checkpoint_account(decisions[0].account_id)
    assert checkpoint.last_decision_id == decisions[1].pk  # stops below the unsettled one
    Decision.objects.update(ts=old)  # now it has settled too (the edit of ts is only this test's time travel)
    second = ledger.checkpoint_account(decisions[0].account_id)
    assert (second.first_decision_id, second.last_decision_id) == (decisions[2].pk, decisions[-1].pk)


@pytest.mark.django_db(transaction=True)
def test_decisions_written_in_one_statement_verify_and_roll_up(key_a):
    """Outside a transaction (as in production) PostgreSQL writes a decision and its rollup in one statement;
    the row must hash, chain and count exactly like the two-step write."""
    from governance.models import DecisionRollup

    client = key_a.client()
    for n in range(4):
        client.post(
            "/v1/ai/run",
            {"agent_id": "bot", "tool": "t", "args": {"n": n % 3}, "spend_usd": 0.25},
            content_type="application/json",
        )
    assert Decision.objects.count() == 4
    rollup = DecisionRollup.objects.get(tool="t", outcome="allowed")
    assert rollup.count == 3 and float(rollup.spend_usd) == 0.75  # the fourth call was a dedup (no charge)
    checkpoint_decisions()
    assert ledger.verify(key_a.api_key.account_id).ok


@pytest.mark.django_db(transaction=True)
def test_a_governed_call_is_two_statements_in_production(key_a, django_assert_num_queries):
    """Outside a transaction, an allowed permit-only call reads its agent, account and tool in one statement and
    writes its decision (with the rollup) in one more on PostgreSQL; SQLite writes them in one transaction. Redis:
    three round trips (docs/benchmarks.md)."""
    from django.db import connection

    client = key_a.client()
    first = {"agent_id": "bot", "tool": "t", "args": {"n": 0}}
    assert client.post("/v1/ai/run", first, content_type="application/json").status_code == 200  # warm: key, agent
    expected = (
        2 if connection.vendor == "postgresql" else 5
    )  # SQLite: the select, then BEGIN IMMEDIATE, decision, rollup…
    with django_assert_num_queries(expected, connection=connection), count_redis_round_trips() as trips:
        response = client.post("/v1/ai/run", {**first, "args": {"n": 1}}, content_type="application/json")
    # The decision script (rate token included), the containment detectors' script (the default policy watches
    # every call: docs/governance.md §"Containment detectors"), then the dedup entry's decision id.
    assert trips.count == 3
    assert response.json()["decision"] == "allowed"
    assert Decision.objects.count() == 2


def test_the_daily_verification_reports_a_tampered_log_to_the_owners(decisions, key_b):
    from billing.models import AuditEntry, Notification
    from governance.tasks import verify_decision_logs

    key_b.client().post("/v1/ai/run", {"agent_id": "bot", "tool": "t"}, content_type="application/json")
    checkpoint_decisions()
    verify_decision_logs()
    assert not Notification.objects.exists() and not AuditEntry.objects.filter(action__contains="ledger").exists()

    Decision.objects.filter(pk=decisions[3].pk).update(spend_usd=0)  # someone hides a charge in account A
    verify_decision_logs()
    [note] = Notification.objects.all()
    assert (note.account_id, note.kind) == (decisions[0].account_id, "security")
    assert f"Decision {decisions[3].pk} does not match" in note.body
    [entry] = AuditEntry.objects.filter(action="governance.ledger.verify_failed")
    assert (entry.account_id, entry.object_id) == (decisions[0].account_id, str(decisions[3].pk))


def test_a_decision_names_the_key_that_asked_and_the_hash_covers_it(key_a, owner_a):
    from django.test import Client

    from tests.conftest import make_key

    other = make_key(key_a.api_key.account)
    for key in (key_a, other):
        key.client().post(
            "/v1/ai/run", {"agent_id": "bot", "tool": "t", "args": {"k": key.raw[-4:]}}, content_type="application/json"
        )
    first, second = Decision.objects.order_by("pk")
    assert (first.api_key_id, second.api_key_id) == (key_a.api_key.pk, other.api_key.pk)
    page = owner_a.login(Client()).get(f"/decisions/{first.pk}/")
    assert key_a.api_key.preview in page.content.decode()
    assert ledger.verify(first.account_id).ok
    Decision.objects.filter(pk=first.pk).update(api_key=other.api_key)  # blame the other key
    result = ledger.verify(first.account_id)
    assert not result.ok and result.first_bad_decision_id == first.pk
