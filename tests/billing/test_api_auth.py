"""Bearer-key authentication of /v1: status codes, the zero-query hot path, revocation, last_used_at."""

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from billing import auth, services
from billing.models import ApiKey
from tests.conftest import make_key


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc", "once_live_abc"],
)
def test_missing_or_malformed_bearer_is_401(db, header):
    headers = {} if header is None else {"Authorization": header}
    response = Client(headers=headers).get("/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Missing Authorization Bearer token"}
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("raw", ["once_live_nope", "x" * 300, "once_live_é"])
def test_unknown_key_is_403_invalid_api_key(db, raw):
    response = Client(headers={"Authorization": f"Bearer {raw}"}).get("/v1/me")
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid API key"}


def test_revoked_key_is_refused_at_once_in_this_process(key_a, django_capture_on_commit_callbacks):
    client = key_a.client()
    assert client.get("/v1/me").status_code == 200  # warm the caches
    with django_capture_on_commit_callbacks(execute=True):
        assert services.api_key_revoke(api_key=key_a.api_key) is True
    response = client.get("/v1/me")
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid API key"}
    assert ApiKey.objects.get(pk=key_a.api_key.pk).revoked_at is not None


def test_revoking_twice_records_one_audit_entry(key_a):
    assert services.api_key_revoke(api_key=key_a.api_key) is True
    assert services.api_key_revoke(api_key=key_a.api_key) is False
    assert key_a.api_key.account.audit_entries.filter(action="billing.api_key.revoked").count() == 1


def test_deactivating_an_account_refuses_its_cached_keys_and_reactivating_restores_them(
    key_a, django_capture_on_commit_callbacks
):
    client = key_a.client()
    assert client.get("/v1/me").status_code == 200  # cached as valid
    account = key_a.api_key.account
    with django_capture_on_commit_callbacks(execute=True):
        assert services.account_set_active(account=account, is_active=False) is True
    assert client.get("/v1/me").status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        assert services.account_set_active(account=account, is_active=True) is True
    assert client.get("/v1/me").status_code == 200
    actions = list(account.audit_entries.values_list("action", flat=True))
    assert "billing.account.deactivated" in actions and "billing.account.reactivated" in actions


def test_revocation_with_redis_down_still_answers_and_stands(key_a, django_capture_on_commit_callbacks, settings):
    from onceonly_site.redis_client import get_redis

    get_redis.cache_clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert services.api_key_revoke(api_key=key_a.api_key) is True
        assert key_a.client().get("/v1/me").status_code == 403  # decided by the database
    finally:
        get_redis.cache_clear()


def test_authentication_after_warm_up_costs_no_query(key_a, settings):
    settings.ONCEONLY_COUNTER_FLUSH_SECONDS = 3600  # the batched statistics flush is not authentication
    client = key_a.client()
    assert client.get("/v1/me").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/me").status_code == 200
    # What is left are the view's own reads (the account, its usage); nothing touches api keys.
    assert [q["sql"] for q in queries if "billing_apikey" in q["sql"]] == []
    assert "billing_account" in queries[0]["sql"]
    # Another process (empty memory) finds the key in Redis: still no authentication query.
    auth.clear_local_cache()
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/v1/me").status_code == 200
    assert [q["sql"] for q in queries if "billing_apikey" in q["sql"]] == []


def test_authentication_survives_a_redis_flush(key_a):
    from billing import auth
    from onceonly_site.redis_client import get_redis

    client = key_a.client()
    assert client.get("/v1/me").status_code == 200
    get_redis().flushdb()
    auth.clear_local_cache()
    assert client.get("/v1/me").status_code == 200  # rebuilt from the database


def test_revocation_survives_a_redis_flush(key_a):
    from billing import auth
    from onceonly_site.redis_client import get_redis

    services.api_key_revoke(api_key=key_a.api_key)
    get_redis().flushdb()
    auth.clear_local_cache()
    assert key_a.client().get("/v1/me").status_code == 403


def test_last_used_at_is_written_at_most_once_a_minute(key_a):
    client = key_a.client()
    assert ApiKey.objects.get(pk=key_a.api_key.pk).last_used_at is None
    client.get("/v1/me")
    first = ApiKey.objects.get(pk=key_a.api_key.pk).last_used_at
    assert first is not None
    from billing import auth

    auth.clear_local_cache()  # even a fresh process (empty memory) is held back by the shared Redis marker
    time.sleep(0.01)
    with CaptureQueriesContext(connection) as queries:
        client.get("/v1/me")
    assert ApiKey.objects.get(pk=key_a.api_key.pk).last_used_at == first
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]


def test_each_key_reaches_only_its_own_account(key_a, key_b):
    assert key_a.client().get("/v1/me").json()["account"] == "Acme"
    assert key_b.client().get("/v1/me").json()["account"] == "Globex"


def test_new_key_format_and_storage(account_a):
    key = make_key(account_a)
    assert key.raw.startswith("once_live_")
    assert len(key.raw) >= len("once_live_") + 43  # 32 random bytes, url-safe base64
    stored = ApiKey.objects.get(pk=key.api_key.pk)
    assert key.raw not in (stored.key_hash, stored.prefix, stored.label)
    assert stored.key_hash != key.raw and len(stored.key_hash) == 64
    assert stored.preview == f"{key.raw[:14]}…{key.raw[-4:]}"
