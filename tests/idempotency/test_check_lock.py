"""POST /v1/check-lock: one winner per TTL window, exact expiry, durability across Redis loss, bad input."""

import json
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import usage
from billing.services import account_set_plan
from idempotency.models import LockRecord
from onceonly_site.redis_client import get_redis
from tests.conftest import make_key
from tests.support.redis_calls import count_redis_round_trips, lose_redis_state


def lock(client, key="order-1:charge", **body):
    return client.post("/v1/check-lock", {"key": key, **body}, content_type="application/json")


def lock_keys() -> list[bytes]:
    return get_redis().keys("oo:{a*}:lock:*")


def test_first_call_locks_and_the_second_is_a_duplicate_with_the_first_metadata(key_a):
    client = key_a.client()
    first = lock(client, ttl=60, metadata={"order": 1, "who": "agent"})
    assert first.status_code == 200
    assert first.json() == {
        "success": True,
        "status": "locked",
        "key": "order-1:charge",
        "ttl": 60,
        "first_seen_at": None,
    }
    assert first["X-OnceOnly-Status"] == "locked"

    second = lock(client, ttl=60, metadata={"order": 2})
    assert second.status_code == 200
    body = second.json()
    assert body["success"] is False and body["status"] == "duplicate"
    assert body["metadata"] == {"order": 1, "who": "agent"}
    assert body["ttl"] == 60 and 59 <= body["ttl_left"] <= 60
    assert body["first_seen_at"].endswith("Z")
    assert second["X-OnceOnly-Status"] == "duplicate"

    record = LockRecord.objects.get()
    assert record.key == "order-1:charge" and record.metadata == {"order": 1, "who": "agent"}
    assert body["first_seen_at"] == record.first_seen_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_duplicate_without_stored_metadata_has_no_metadata_key(key_a):
    client = key_a.client()
    lock(client)
    assert "metadata" not in lock(client, metadata={"x": 1}).json()


def test_request_id_is_echoed(key_a):
    response = key_a.client().post(
        "/v1/check-lock", {"key": "k"}, content_type="application/json", headers={"X-Request-Id": "req-42"}
    )
    assert response["X-Request-Id"] == "req-42"


@pytest.mark.parametrize(
    ("plan_code", "default_ttl", "max_ttl"), [("free", 60, 3600), ("pro", 21600, 604800), ("agency", 86400, 2592000)]
)
def test_ttl_default_and_clamp_come_from_the_plan(account_a, plans, plan_code, default_ttl, max_ttl):
    account_set_plan(account=account_a, plan=plans[plan_code])
    client = make_key(account_a).client()
    assert lock(client, "a").json()["ttl"] == default_ttl
    assert lock(client, "b", ttl=max_ttl * 10).json()["ttl"] == max_ttl
    assert LockRecord.objects.get(key="b").ttl_seconds == max_ttl
    assert 0 < get_redis().pttl(f"oo:{{a{account_a.pk}}}:lock:b") <= max_ttl * 1000


def test_expiry_is_exact_and_duplicates_do_not_extend_it(key_a):
    client = key_a.client()
    assert lock(client, ttl=2).json()["status"] == "locked"
    time.sleep(1.0)
    assert lock(client, ttl=2).json()["status"] == "duplicate"  # must not push the expiry to t=3
    time.sleep(1.05)
    assert lock(client, ttl=2).json()["status"] == "locked"
    assert LockRecord.objects.count() == 1  # the record was taken over, not duplicated


def test_only_locked_calls_count_as_make_usage(key_a):
    client = key_a.client()
    for _ in range(3):
        lock(client, "same")
    lock(client, "other")
    assert usage.current(key_a.api_key.account_id, usage.MAKE) == 2


def test_keys_of_two_accounts_are_independent(key_a, key_b):
    assert lock(key_a.client(), "shared").json()["status"] == "locked"
    assert lock(key_b.client(), "shared").json()["status"] == "locked"
    assert lock(key_b.client(), "shared").json()["status"] == "duplicate"


def test_after_a_redis_flush_a_live_lock_is_still_a_duplicate(key_a):
    client = key_a.client()
    first = lock(client, ttl=120, metadata={"n": 1})
    assert first.json()["status"] == "locked"
    lose_redis_state()
    again = lock(client, ttl=120, metadata={"n": 2}).json()
    assert again["status"] == "duplicate"
    assert again["metadata"] == {"n": 1}
    assert again["first_seen_at"] is not None and 118 <= again["ttl_left"] <= 120
    # Redis was repaired from the database, and the refuted lock was not counted as usage.
    assert lock(client, ttl=120).json()["first_seen_at"] == again["first_seen_at"]
    assert usage.current(key_a.api_key.account_id, usage.MAKE) == 0  # counter was flushed too; not re-counted


def test_an_expired_record_without_redis_lets_the_key_lock_again(key_a):
    client = key_a.client()
    lock(client, ttl=1)
    time.sleep(1.05)
    lose_redis_state()
    assert lock(client, ttl=30).json()["status"] == "locked"
    assert LockRecord.objects.get().ttl_seconds == 30


BAD_BODIES = [
    ({}, "key"),
    ({"key": ""}, "key"),
    ({"key": "   "}, "key"),
    ({"key": "k" * 257}, "key"),
    ({"key": 123}, "key"),
    ({"key": None}, "key"),
    ({"key": "k", "ttl": 0}, "ttl"),
    ({"key": "k", "ttl": -1}, "ttl"),
    ({"key": "k", "ttl": "abc"}, "ttl"),
    ({"key": "k", "ttl": 1.5}, "ttl"),
    ({"key": "k", "ttl": True}, "ttl"),
    ({"key": "k", "metadata": ["not", "an", "object"]}, "metadata"),
    ({"key": "k", "metadata": "text"}, "metadata"),
    ({"key": "k", "metadata": {"blob": "x" * 2100}}, "metadata"),
    ({"key": "k", "lock_for": 5}, "lock_for"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_BODIES)
def test_bad_input_is_422_naming_the_field_and_writes_nothing(key_a, payload, field):
    response = key_a.client().post("/v1/check-lock", payload, content_type="application/json")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert ["body", field] in [item["loc"] for item in detail], detail
    assert all(item["msg"] for item in detail)
    assert not LockRecord.objects.exists()
    assert lock_keys() == []
    assert usage.current(key_a.api_key.account_id, usage.MAKE) == 0


@pytest.mark.parametrize("raw", [b"{", b"[1,2]", b'"key"', b"null"])
def test_malformed_or_non_object_json_is_422(key_a, raw):
    response = key_a.client().post("/v1/check-lock", raw, content_type="application/json")
    assert response.status_code == 422
    assert not LockRecord.objects.exists() and lock_keys() == []


def test_a_key_of_exactly_256_characters_and_any_text_is_accepted(key_a):
    key = "ü:" + "x" * 254
    assert lock(key_a.client(), key).json()["status"] == "locked"
    assert LockRecord.objects.get().key == key


def test_metadata_of_exactly_2048_bytes_is_accepted(key_a):
    metadata = {"b": "x" * (2048 - len(json.dumps({"b": ""}, separators=(",", ":"))))}
    assert lock(key_a.client(), metadata=metadata).status_code == 200


def test_duplicate_costs_one_redis_round_trip_and_no_query(key_a, settings):
    settings.ONCEONLY_COUNTER_FLUSH_SECONDS = 3600
    client = key_a.client()
    lock(client)
    lock(client)  # warm: auth cache, script loaded
    with CaptureQueriesContext(connection) as queries, count_redis_round_trips() as trips:
        assert lock(client).json()["status"] == "duplicate"
    assert len(queries) == 0, [q["sql"] for q in queries]
    assert trips.count == 1


def test_new_lock_costs_one_redis_round_trip_and_one_insert(key_a, settings):
    settings.ONCEONLY_COUNTER_FLUSH_SECONDS = 3600
    client = key_a.client()
    lock(client, "warm-up")
    with CaptureQueriesContext(connection) as queries, count_redis_round_trips() as trips:
        assert lock(client, "fresh").json()["status"] == "locked"
    statements = [q["sql"] for q in queries if not q["sql"].startswith(("SET LOCAL", "SAVEPOINT", "RELEASE"))]
    assert len(statements) == 1 and statements[0].lstrip().startswith("INSERT"), statements
    assert trips.count == 1


def test_with_redis_unreachable_the_database_still_decides(key_a, settings):
    from onceonly_site.redis_client import get_redis as current_redis

    client = key_a.client()
    assert lock(client, "down:1", ttl=60).json()["status"] == "locked"  # warms the key cache in this process
    current_redis.cache_clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        assert lock(client, "down:1", ttl=60).json()["status"] == "duplicate"  # the record decides
        assert lock(client, "down:2", ttl=60).json()["status"] == "locked"
        assert lock(client, "down:2", ttl=60).json()["status"] == "duplicate"
    finally:
        current_redis.cache_clear()
    assert LockRecord.objects.filter(key="down:2").exists()


def test_an_infinite_ttl_is_422(key_a):
    response = key_a.client().post("/v1/check-lock", b'{"key": "k", "ttl": 1e400}', content_type="application/json")
    assert response.status_code == 422


def test_over_quota_a_forgotten_live_lock_is_still_a_duplicate(account_a, plans):
    from billing.models import Plan

    Plan.objects.filter(code="free").update(make_monthly_limit=1)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="free"))
    client = make_key(account_a).client()
    assert lock(client, "only", ttl=60).json()["status"] == "locked"
    from billing.tasks import mirror_usage

    mirror_usage()
    lose_redis_state()
    again = lock(client, "only", ttl=60)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert lock(client, "another", ttl=60).status_code == 402


def test_the_lean_path_keeps_the_error_contract(key_a):
    """check-lock skips DRF's machinery on its usual form; every other form, and every error, answers the same."""
    from django.test import Client

    lean = key_a.client()
    bad_json = lean.post("/v1/check-lock", b'{"key": ', content_type="application/json")
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    no_key = Client().post("/v1/check-lock", {"key": "k"}, content_type="application/json")
    assert no_key.status_code == 401 and no_key["WWW-Authenticate"] == 'Bearer realm="api"'
    wrong = Client(headers={"Authorization": "Bearer once_live_nope"}).post(
        "/v1/check-lock", {"key": "k"}, content_type="application/json"
    )
    assert wrong.status_code == 403 and wrong.json() == {"detail": "Invalid API key"}
    invalid = lean.post("/v1/check-lock", {"key": "", "ttl": 0}, content_type="application/json")
    assert invalid.status_code == 422 and {e["loc"][-1] for e in invalid.json()["detail"]} == {"key", "ttl"}
    form = lean.post("/v1/check-lock", {"key": "k"})  # multipart: DRF's path, which has no parser for it
    assert form.status_code == 415
    first = lean.post("/v1/check-lock", {"key": "é", "metadata": {"who": "ünïcode"}}, content_type="application/json")
    again = lean.post("/v1/check-lock", {"key": "é"}, content_type="application/json")
    assert first["Content-Type"] == "application/json" and first["X-OnceOnly-Status"] == "locked"
    assert again.json()["metadata"] == {"who": "ünïcode"} and again["X-OnceOnly-Status"] == "duplicate"
