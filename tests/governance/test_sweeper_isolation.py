"""A beat sweeper that meets a row it cannot record logs it and goes on with the next one: each row is recorded in
a savepoint of its own, so one poisoned row cannot stop the sweep of every row after it on every run.

``dispatch_intents_record`` used to stop at the first row that raised, every run, forever. The poisoned row here is
made by a database trigger that refuses its decision (the same on PostgreSQL and SQLite).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from governance import services
from governance.models import Agent, Decision, DispatchIntent

POISON_PG = """
CREATE FUNCTION oo_test_poison() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'poisoned row'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER oo_test_poison BEFORE INSERT ON governance_decision FOR EACH ROW
    WHEN (NEW.dispatch_id = 'poison') EXECUTE FUNCTION oo_test_poison();
"""
POISON_SQLITE = """
CREATE TRIGGER oo_test_poison BEFORE INSERT ON governance_decision WHEN NEW.dispatch_id = 'poison'
BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;
"""


@pytest.fixture
def poisoned(db):
    """Inside the test's transaction: rolled back with it."""
    with connection.cursor() as cursor:
        cursor.execute(POISON_PG if connection.vendor == "postgresql" else POISON_SQLITE)


def test_a_poisoned_intent_is_logged_and_the_others_are_recorded(key_a, poisoned, caplog):
    agent = Agent.objects.get_or_create(account_id=key_a.api_key.account_id, agent_id="bot")[0]
    long_ago = timezone.now() - timedelta(minutes=5)
    for dispatch_id in ("first", "poison", "last"):
        DispatchIntent.objects.create(
            account_id=agent.account_id,
            agent=agent,
            created_at=long_ago,
            tool="t",
            args_hash="a" * 64,
            risk_level="low",
            spend_usd=1,
            dispatch_id=dispatch_id,
        )
    with caplog.at_level(logging.ERROR, logger="governance.services"):
        assert services.dispatch_intents_record() == 2
    assert sorted(Decision.objects.values_list("dispatch_id", flat=True)) == ["first", "last"]
    left = DispatchIntent.objects.get()  # still counted against the caps, tried again next run
    assert left.dispatch_id == "poison"
    assert any(f"intent {left.pk}" in record.getMessage() for record in caplog.records), caplog.text
    assert services.dispatch_intents_record() == 0  # the next run meets it again, and goes on
