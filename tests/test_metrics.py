"""GET /metrics: Prometheus text, off without ONCEONLY_METRICS_TOKEN, bearer-protected with it, and the numbers
are the database's and Redis's (the same from every web process)."""

import re

import pytest
from django.test import Client

TOKEN = "metrics-token-0123456789"


@pytest.fixture
def metrics_on(settings):
    settings.ONCEONLY_METRICS_TOKEN = TOKEN
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 0


def scrape() -> dict[str, float]:
    response = Client(headers={"Authorization": f"Bearer {TOKEN}"}).get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in response.content.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_off_without_a_token(db):
    assert Client().get("/metrics").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer"])
def test_the_token_is_required(metrics_on, db, header):
    response = Client(headers={"Authorization": header} if header else {}).get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "onceonly_" not in response.content.decode()


def test_numbers_follow_what_happened(metrics_on, key_a):
    before = scrape()
    assert before["onceonly_database_up"] == 1 and before["onceonly_redis_up"] == 1
    client = key_a.client()
    client.post("/v1/policies/bot", {"blocked_tools": ["danger"]}, content_type="application/json")
    client.post("/v1/ai/run", {"agent_id": "bot", "tool": "search"}, content_type="application/json")
    client.post("/v1/ai/run", {"agent_id": "bot", "tool": "danger"}, content_type="application/json")
    client.post("/v1/ai/lease", {"key": "job-1"}, content_type="application/json")
    after = scrape()
    assert after['onceonly_decisions_total{outcome="allowed"}'] == 1
    assert after['onceonly_decisions_total{outcome="blocked"}'] == 1
    assert after["onceonly_leases_in_progress"] == before["onceonly_leases_in_progress"] + 1
    assert any(re.fullmatch(r'onceonly_celery_queue_length\{queue="[^"]+"\}', name) for name in after)


def test_scrapes_are_cached(settings, key_a):
    settings.ONCEONLY_METRICS_TOKEN = TOKEN
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 60
    first = scrape()
    key_a.client().post("/v1/ai/run", {"agent_id": "bot", "tool": "t"}, content_type="application/json")
    assert scrape() == first  # within the cache window: the same answer, no new queries


def test_a_cache_outage_does_not_fail_the_scrape(settings, key_a):
    """The scrape is what reports trouble, so the cache in front of it may fail without failing it."""
    settings.ONCEONLY_METRICS_TOKEN = TOKEN
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 60
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5},
        }
    }
    assert scrape()["onceonly_database_up"] == 1
