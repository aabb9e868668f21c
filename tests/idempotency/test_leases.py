"""The lease state machine of docs/architecture.md §7.5 over /v1/ai/*: acquisition, fencing, terminal states,
bad input."""

import hashlib
import time
from datetime import timedelta

import pytest
import rfc8785
from django.utils import timezone

from billing import usage
from idempotency.models import Lease, LeaseAttempt
from tests.support.redis_calls import lose_redis_state

KEY = "ai:agent:charge:user_42:invoice_101"


def post(client, path, **body):
    return client.post(f"/v1/ai/{path}", body, content_type="application/json")


def get(client, path, key=KEY):
    return client.get(f"/v1/ai/{path}", {"key": key}, content_type="application/json")


@pytest.fixture
def client(key_a):
    return key_a.client()


def acquire(client, key=KEY, **body):
    response = post(client, "lease", key=key, **body)
    assert response.status_code == 200, response.content
    return response.json()


def test_acquire_then_waiters_poll_without_seeing_the_lease_id(client, key_a):
    first = acquire(client, ttl=300, metadata={"job": 1})
    assert first["status"] == "acquired" and first["ok"] is True
    assert first["lease_id"].startswith("lease_") and first["version"] == 1
    assert (first["charged"], first["usage"], first["limit"]) == (1, 1, 10_000_000)
    assert first["ttl"] == 300 and first["ttl_left"] is None

    second = acquire(client, ttl=300)
    assert second["status"] == "polling" and second["lease_id"] is None
    assert second["charged"] == 0 and second["usage"] == 1
    assert isinstance(second["retry_after_sec"], int) and 1 <= second["retry_after_sec"] <= 5
    assert 299 <= second["ttl_left"] <= 300

    status = get(client, "status").json()
    assert status["status"] == "in_progress" and status["lease_id"] is None
    assert isinstance(status["retry_after_sec"], int)
    assert usage.current(key_a.api_key.account_id, usage.AI) == 1


def test_complete_is_final_and_the_result_is_replayed(client):
    held = acquire(client)
    done = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": True, "charge": "ch_1"})
    assert done.status_code == 200
    body = done.json()
    assert body["status"] == "completed" and body["result"] == {"ok": True, "charge": "ch_1"}
    expected_hash = hashlib.sha256(rfc8785.dumps({"ok": True, "charge": "ch_1"})).hexdigest()
    assert body["result_hash"] == expected_hash and body["done_at"].endswith("Z")

    again = acquire(client)
    assert again["status"] == "completed" and again["charged"] == 0 and again["lease_id"] is None
    result = get(client, "result").json()
    assert result == {
        "ok": True,
        "status": "completed",
        "key": KEY,
        "result": {"ok": True, "charge": "ch_1"},
        "result_hash": expected_hash,
        "error_code": None,
        "done_at": body["done_at"],
        "version": 1,
    }
    assert get(client, "status").json()["status"] == "completed"


def test_repeated_complete_by_the_holder_is_idempotent_but_a_different_result_conflicts(client):
    held = acquire(client)
    first = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"n": 1})
    repeat = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"n": 1})
    assert repeat.status_code == 200 and repeat.json() == first.json()
    other = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"n": 2})
    assert other.status_code == 409
    assert other.json()["detail"]["error"] == "lease_conflict"
    assert Lease.objects.get().result == {"n": 1}


def test_client_sent_result_hash_is_kept(client):
    held = acquire(client)
    body = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"a": 1}, result_hash="abc").json()
    assert body["result_hash"] == "abc"


def test_extend_after_completion_answers_the_terminal_status(client):
    held = acquire(client)
    post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": True})
    late = post(client, "extend", key=KEY, lease_id=held["lease_id"], ttl=300)
    assert late.status_code == 200 and late.json()["status"] == "completed"


def test_failed_is_retryable_with_a_higher_version_and_history(client):
    held = acquire(client)
    failed = post(client, "fail", key=KEY, lease_id=held["lease_id"], error_code="charge_failed")
    assert failed.status_code == 200
    assert failed.json()["status"] == "failed" and failed.json()["error_code"] == "charge_failed"
    assert get(client, "result").json()["error_code"] == "charge_failed"
    retry = acquire(client)
    assert retry["status"] == "acquired" and retry["version"] == 2 and retry["lease_id"] != held["lease_id"]
    attempts = list(LeaseAttempt.objects.order_by("version").values_list("version", "outcome", "error_code"))
    assert attempts == [(1, "failed", "charge_failed"), (2, "in_progress", "")]
    complete_after_fail = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={})
    assert complete_after_fail.status_code == 409
    assert complete_after_fail.json()["detail"]["error"] == "lease_mismatch"


def test_complete_after_fail_by_the_same_holder_conflicts(client):
    held = acquire(client)
    post(client, "fail", key=KEY, lease_id=held["lease_id"], error_code="boom")
    response = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": True})
    assert response.status_code == 409
    assert response.json()["detail"] == {
        "error": "lease_conflict",
        "message": "the lease is failed; it cannot be completed",
        "status": "failed",
    }
    assert Lease.objects.get().status == "failed"


def test_cancel_releases_the_key(client):
    held = acquire(client)
    cancelled = post(client, "cancel", key=KEY, lease_id=held["lease_id"], reason="user aborted")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert get(client, "status").json()["status"] == "cancelled"
    again = acquire(client)
    assert again["status"] == "acquired" and again["version"] == 2
    assert LeaseAttempt.objects.get(version=1).note == "user aborted"


def test_extend_resets_expiry_capped_at_the_plan_max(client):
    held = acquire(client, ttl=10)
    extended = post(client, "extend", key=KEY, lease_id=held["lease_id"], ttl=10**9)
    assert extended.status_code == 200
    body = extended.json()
    assert body["status"] == "extended" and body["version"] == 1 and body["lease_id"] == held["lease_id"]
    assert body["ttl"] == 30 * 86400
    lease = Lease.objects.get()
    assert timedelta(days=29) < lease.expires_at - timezone.now() <= timedelta(days=30)
    # An extend never invalidates the holder: it can still complete.
    done = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": 1})
    assert done.status_code == 200


def test_extend_without_ttl_reuses_the_lease_ttl(client):
    held = acquire(client, ttl=5)
    time.sleep(1.1)
    body = post(client, "extend", key=KEY, lease_id=held["lease_id"]).json()
    assert body["ttl"] == 5
    assert Lease.objects.get().ttl_left() == 5


def test_fencing_after_expiry(client):
    a = acquire(client, ttl=2)
    time.sleep(2.05)
    assert get(client, "status").json()["status"] == "expired"
    b = acquire(client, ttl=60)
    assert b["status"] == "acquired" and b["version"] == a["version"] + 1
    late_complete = post(client, "complete", key=KEY, lease_id=a["lease_id"], result={"from": "A"})
    assert late_complete.status_code == 409
    assert late_complete.json()["detail"]["error"] == "lease_mismatch"
    late_extend = post(client, "extend", key=KEY, lease_id=a["lease_id"])
    assert late_extend.status_code == 409
    assert post(client, "complete", key=KEY, lease_id=b["lease_id"], result={"from": "B"}).status_code == 200
    assert get(client, "result").json()["result"] == {"from": "B"}
    outcomes = list(LeaseAttempt.objects.order_by("version").values_list("outcome", flat=True))
    assert outcomes == ["expired", "completed"]


@pytest.mark.parametrize("action", ["extend", "complete", "fail", "cancel"])
def test_a_wrong_lease_id_is_409_and_changes_nothing(client, action):
    acquire(client)
    before = Lease.objects.values().get()
    extra = {"complete": {"result": {}}, "fail": {"error_code": "x"}}.get(action, {})
    response = post(client, action, key=KEY, lease_id="lease_not-mine", **extra)
    assert response.status_code == 409
    assert response.json()["detail"]["error"] == "lease_mismatch"
    assert Lease.objects.values().get() == before


def test_unknown_key_is_200_not_found(client):
    for path in ("status", "result"):
        response = get(client, path, key="never-seen")
        assert response.status_code == 200
        assert response.json() == {"ok": False, "status": "not_found", "key": "never-seen"}
    assert post(client, "complete", key="never-seen", lease_id="lease_x").status_code == 409


def test_a_completed_key_survives_a_redis_flush(client):
    held = acquire(client)
    post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": True})
    lose_redis_state()
    assert acquire(client)["status"] == "completed"
    assert get(client, "result").json()["result"] == {"ok": True}


def test_a_held_lease_survives_a_redis_flush(client):
    acquire(client)
    lose_redis_state()
    assert acquire(client)["status"] == "polling"


def test_after_retention_a_completed_key_is_acquired_afresh(client, settings):
    held = acquire(client)
    post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"ok": True})
    Lease.objects.update(done_at=timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS, seconds=1))
    again = acquire(client)
    assert again["status"] == "acquired" and again["version"] == 2


def test_leases_and_check_locks_are_separate_keyspaces(client):
    assert client.post("/v1/check-lock", {"key": KEY}, content_type="application/json").json()["status"] == "locked"
    assert acquire(client)["status"] == "acquired"


def test_leases_are_per_account(key_a, key_b):
    assert acquire(key_a.client())["status"] == "acquired"
    assert acquire(key_b.client())["status"] == "acquired"
    assert get(key_b.client(), "status").json()["status"] == "in_progress"


BAD = [
    ("lease", {}, "key"),
    ("lease", {"key": ""}, "key"),
    ("lease", {"key": "x" * 257}, "key"),
    ("lease", {"key": KEY, "ttl": 0}, "ttl"),
    ("lease", {"key": KEY, "ttl": "abc"}, "ttl"),
    ("lease", {"key": KEY, "metadata": [1]}, "metadata"),
    ("lease", {"key": KEY, "owner": "me"}, "owner"),
    ("extend", {"key": KEY}, "lease_id"),
    ("extend", {"key": KEY, "lease_id": 5}, "lease_id"),
    ("extend", {"key": KEY, "lease_id": "lease_x", "ttl": -1}, "ttl"),
    ("complete", {"key": KEY, "lease_id": "lease_x", "result": "done"}, "result"),
    ("complete", {"key": KEY, "lease_id": "lease_x", "result": {"x": "y" * 300_000}}, "result"),
    ("fail", {"key": KEY, "lease_id": "lease_x"}, "error_code"),
    ("fail", {"key": KEY, "lease_id": "lease_x", "error_code": ""}, "error_code"),
    ("cancel", {"lease_id": "lease_x"}, "key"),
    ("cancel", {"key": KEY, "lease_id": "lease_x", "reason": 3}, "reason"),
]


@pytest.mark.parametrize(("path", "payload", "field"), BAD)
def test_bad_lease_input_is_422_and_writes_nothing(client, key_a, path, payload, field):
    response = client.post(f"/v1/ai/{path}", payload, content_type="application/json")
    assert response.status_code == 422, response.content
    assert ["body", field] in [item["loc"] for item in response.json()["detail"]]
    assert not Lease.objects.exists() and not LeaseAttempt.objects.exists()
    assert usage.current(key_a.api_key.account_id, usage.AI) == 0


@pytest.mark.parametrize("path", ["status", "result"])
def test_status_without_a_key_is_422_in_the_query(client, path):
    response = client.get(f"/v1/ai/{path}")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "key"]


def test_malformed_json_on_a_lease_endpoint_is_422(client):
    response = client.post("/v1/ai/lease", b"{'key':", content_type="application/json")
    assert response.status_code == 422
    assert not Lease.objects.exists()


def test_a_non_ascii_lease_id_is_a_mismatch_not_a_500(client):
    acquire(client)
    response = post(client, "complete", key=KEY, lease_id="lease_é", result={})
    assert response.status_code == 409


def test_holder_calls_report_the_current_usage(client):
    held = acquire(client)
    assert post(client, "extend", key=KEY, lease_id=held["lease_id"]).json()["usage"] == 1


def test_a_result_with_an_unsafe_integer_is_422(client):
    held = acquire(client)
    response = post(client, "complete", key=KEY, lease_id=held["lease_id"], result={"id": 2**60})
    assert response.status_code == 422
    assert Lease.objects.get().status == "in_progress"


@pytest.mark.parametrize("reason", ["", "  "])
def test_a_blank_cancel_reason_is_422_and_the_lease_is_still_held(client, reason):
    lease_id = acquire(client)["lease_id"]
    response = post(client, "cancel", key=KEY, lease_id=lease_id, reason=reason)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reason"]
    assert get(client, "status").json()["status"] == "in_progress"


@pytest.mark.parametrize("path", ["lease", "extend", "complete", "fail", "cancel"])
def test_the_lean_path_keeps_the_error_contract(client, path):
    """The lease calls skip DRF's machinery on their usual form (billing/lean_api.py); every other form, and every
    error, answers as DRF's path does."""
    from django.test import Client

    bad_json = client.post(f"/v1/ai/{path}", b'{"key": ', content_type="application/json")
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    no_key = Client().post(f"/v1/ai/{path}", {"key": "k"}, content_type="application/json")
    assert no_key.status_code == 401 and no_key["WWW-Authenticate"] == 'Bearer realm="api"'
    wrong = Client(headers={"Authorization": "Bearer once_live_nope"}).post(
        f"/v1/ai/{path}", {"key": "k"}, content_type="application/json"
    )
    assert wrong.status_code == 403 and wrong.json() == {"detail": "Invalid API key"}
    invalid = post(client, path, key="", ttl=0, lease_id="")
    assert invalid.status_code == 422 and "key" in {e["loc"][-1] for e in invalid.json()["detail"]}
    assert client.post(f"/v1/ai/{path}", {"key": "k"}).status_code == 415  # multipart: DRF's path, no parser for it
    if path != "lease":
        stale = post(client, path, key="k", lease_id="lease_stale", **({"error_code": "x"} if path == "fail" else {}))
        assert stale.status_code == 409 and stale.json()["detail"]["error"] == "lease_mismatch"
    lean = post(client, "lease", key="é", metadata={"who": "ünïcode"})  # the usual form: the lean path
    assert lean.status_code == 200 and lean["Content-Type"] == "application/json"
    assert lean.json()["status"] == "acquired" and lean.json()["key"] == "é" and lean.json()["charged"] == 1
    # …answered in the bytes and headers DRF's renderer would send (U+2028/U+2029 escaped, Allow)
    from rest_framework.renderers import JSONRenderer

    done = post(client, "complete", key="é", lease_id=lean.json()["lease_id"], result={"line": "a\u2028b\u2029c"})
    assert done.status_code == 200 and b"\\u2028" in done.content and "\u2028".encode() not in done.content
    assert done.content == JSONRenderer().render(done.json()) and done["Allow"] == "POST, OPTIONS"


@pytest.mark.django_db(transaction=True)
def test_a_lease_cycle_is_one_statement_per_call_in_production(account_a, django_assert_num_queries):
    """Committed on its own (as in production), an acquisition and a completion are each one statement on
    PostgreSQL (the attempt rows included) and two Redis round trips: the rate-limit token, then the quota unit with
    its statistics — or, for the completion, its statistics with the key's wake-up and the answer's usage
    (docs/benchmarks.md)."""
    from django.db import connection

    from tests.conftest import make_key
    from tests.support.redis_calls import count_redis_round_trips

    client = make_key(account_a).client()
    warm = acquire(client, key="warm")  # the key's principal cached, the scripts loaded (a poll's release too)
    assert acquire(client, key="warm")["status"] == "polling"
    post(client, "complete", key="warm", lease_id=warm["lease_id"], result={})
    postgresql = connection.vendor == "postgresql"
    # SQLite: BEGIN, the conditional UPDATE, the read, SAVEPOINT, the INSERT, the attempt, RELEASE, COMMIT
    with django_assert_num_queries(1 if postgresql else 8), count_redis_round_trips() as trips:
        held = acquire(client, key="job")
    assert held["status"] == "acquired" and trips.count == 2
    # A poll of the held key reads the row in that statement and writes nothing: no row lock, no commit to flush.
    locked_by = "SELECT xmax::text FROM idempotency_lease WHERE key = 'job'"
    if postgresql:
        with connection.cursor() as cursor:
            cursor.execute(locked_by)
            before = cursor.fetchone()[0]
    with django_assert_num_queries(1 if postgresql else 4), count_redis_round_trips() as trips:
        polled = acquire(client, key="job")
    assert polled["status"] == "polling" and polled["lease_id"] is None
    assert trips.count == 3  # the rate-limit token, the quota unit, its release (polling_ai counted instead)
    if postgresql:
        with connection.cursor() as cursor:
            cursor.execute(locked_by)
            assert cursor.fetchone()[0] == before  # the poll locked nothing (FK checks leave their own lock)
    # SQLite: the holder's row, BEGIN, the conditional UPDATE, the attempt, COMMIT, the row again
    with django_assert_num_queries(1 if postgresql else 6), count_redis_round_trips() as trips:
        done = post(client, "complete", key="job", lease_id=held["lease_id"], result={"ok": True}).json()
    assert done["status"] == "completed" and done["usage"] == 2  # warm's and job's (the poll gave its unit back)
    assert trips.count == (2 if postgresql else 4)  # SQLite: the statistics, the wake-up and the usage apart
    # The completed key's replay (the SDK's exactly-once answer) is that one statement's read too
    with django_assert_num_queries(1 if postgresql else 5):  # SQLite: the poll's four, then "still final?"
        replay = post(client, "lease", key="job").json()
    assert replay["status"] == "completed" and replay["result"] == {"ok": True}
    attempt = LeaseAttempt.objects.get(lease__key="job")
    assert (attempt.outcome, attempt.holder, attempt.ended_at is not None) == ("completed", held["lease_id"], True)
