"""The keyed-run sweeper goes on past a run it cannot update: each run is handled in a savepoint of its own, and a
failure is logged, so one poisoned row cannot stop every later run's timeout or wake-up on every beat.

The sweeper used to stop at the first row that raised. The poisoned rows here are made by a database trigger that
refuses any update of them (the same on PostgreSQL and SQLite).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from idempotency import runs
from idempotency.choices import RunStatus
from idempotency.models import Run

POISON_PG = """
CREATE FUNCTION oo_test_poison_run() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'poisoned run'; END $$
    LANGUAGE plpgsql;
CREATE TRIGGER oo_test_poison_run BEFORE UPDATE ON idempotency_run FOR EACH ROW
    WHEN (OLD.key LIKE 'poison%') EXECUTE FUNCTION oo_test_poison_run();
"""
POISON_SQLITE = """
CREATE TRIGGER oo_test_poison_run BEFORE UPDATE ON idempotency_run WHEN OLD.key LIKE 'poison%'
BEGIN SELECT RAISE(ABORT, 'poisoned run'); END;
"""


def start(client, key):
    response = client.post(
        "/v1/ai/run", {"key": key, "metadata": {"task": "demo.echo"}}, content_type="application/json"
    )
    assert response.status_code == 200, response.content


def test_a_poisoned_run_is_logged_and_the_others_are_swept(key_a, caplog):
    client = key_a.client()
    for key in ("late-1", "poison-late", "late-2", "lapsed-1", "poison-lapsed", "lapsed-2"):
        start(client, key)
    past = timezone.now() - timedelta(minutes=5)
    Run.objects.filter(key__contains="late").update(deadline_at=past)
    Run.objects.filter(key__contains="lapsed").update(enqueued_at=past)
    with connection.cursor() as cursor:
        cursor.execute(POISON_PG if connection.vendor == "postgresql" else POISON_SQLITE)
    with caplog.at_level(logging.ERROR, logger="idempotency.runs"):
        assert runs.sweep() == {"timed_out": 2, "woken": 2}
    statuses = dict(Run.objects.values_list("key", "status"))
    assert statuses["late-1"] == statuses["late-2"] == RunStatus.FAILED
    assert statuses["poison-late"] == RunStatus.QUEUED
    poisoned = Run.objects.filter(key__startswith="poison").values_list("pk", flat=True)
    for pk in poisoned:
        assert any(f"run {pk}" in record.getMessage() for record in caplog.records), caplog.text
    assert Run.objects.get(key="poison-lapsed").enqueued_at == past  # not woken: its update was refused
