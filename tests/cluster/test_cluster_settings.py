"""A cluster REDIS_URL is read, refused when malformed with a message saying what is wrong, and needs a broker of its
own (CELERY_BROKER_URL): no cluster is started here."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from onceonly_site import env
from onceonly_site.settings import redis_dependent_settings
from tests.test_settings_env import _settings_import


def test_a_cluster_url_names_its_nodes_and_credentials():
    parts = env.cluster_url_parts("rediss+cluster://ops:s%40cret@10.0.0.1:7000,[::1]:7001,redis-c:7002/0")
    assert parts.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("redis-c", 7002))
    assert (parts.username, parts.password, parts.ssl) == ("ops", "s@cret", True)
    assert env.cluster_url_parts("redis+cluster://h:7000").ssl is False
    assert env.redis_db_of("redis+cluster://h:7000/0") == 0
    assert env.validate_redis_url("redis+cluster://h1:7000,h2:7000") == "redis+cluster://h1:7000,h2:7000"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://h1:7000,h2", "'h2' is not host:port"),
        ("redis+cluster://h1:7000,,h2:7000", "'(empty)' is not host:port"),
        ("redis+cluster://h1:99999", "'h1:99999' is not host:port"),
        ("redis+cluster://h1:7000/3", "database 0 only"),
        ("redis+cluster://h1:7000?ssl_cert_reqs=none", "takes no ?options"),
        ("redis+cluster://h:1:2", "'h:1:2' is not host:port"),  # a host with a colon needs brackets: [::1]:7000
        ("redis+cluster://h :7000", "'h :7000' is not host:port"),
        ("redis+cluster://h:７０００", "is not host:port"),  # full-width digits are not a port
    ],
)
def test_a_malformed_cluster_url_is_refused_saying_why(url, says):
    with pytest.raises(ImproperlyConfigured, match="is not a Redis Cluster URL") as refused:
        env.validate_redis_url(url)
    assert says in str(refused.value)
    assert "redis+cluster://host1:6379,host2:6379" in str(refused.value)


def test_a_cluster_keeps_database_0_and_cannot_be_the_broker():
    assert env.redis_url_with_db("redis+cluster://h:7000", 0) == "redis+cluster://h:7000"
    with pytest.raises(ImproperlyConfigured, match="database 0 only"):
        env.redis_url_with_db("redis+cluster://h:7000", 3)
    with pytest.raises(ImproperlyConfigured, match="set CELERY_BROKER_URL to a single Redis"):
        redis_dependent_settings("redis+cluster://h:7000", broker_url="")
    with pytest.raises(ImproperlyConfigured, match="CELERY_BROKER_URL 'redis\\+cluster://b:7000' is not supported"):
        redis_dependent_settings("redis+cluster://h:7000", broker_url="redis+cluster://b:7000")
    derived = redis_dependent_settings("redis+cluster://h:7000,h:7001", broker_url="redis://broker:6379/2")
    assert derived["CELERY_BROKER_URL"] == derived["BROKER_REDIS_URL"] == "redis://broker:6379/2"
    cache = derived["CACHES"]["default"]
    assert cache["LOCATION"] == ["redis+cluster://h:7000,h:7001"]
    assert cache["OPTIONS"]["CLIENT_CLASS"] == "onceonly_site.redis_client.ClusterCacheClient"


def test_a_single_redis_may_have_a_broker_of_its_own():
    assert redis_dependent_settings("redis://h:6379/1", broker_url="")["CELERY_BROKER_URL"] == "redis://h:6379/1"
    derived = redis_dependent_settings("redis://h:6379/1", broker_url="unix:///b/redis.sock?db=4")
    assert derived["CELERY_BROKER_URL"] == "redis+socket:///b/redis.sock?virtual_host=4"
    assert derived["BROKER_REDIS_URL"] == "unix:///b/redis.sock?db=4"


def test_start_up_stops_on_a_cluster_without_a_broker(tmp_path):
    result = _settings_import(
        ONCEONLY_VAR_DIR=str(tmp_path), SECRET_KEY="k" * 50, REDIS_URL="redis+cluster://h1:7000,h2:7000"
    )
    assert result.returncode != 0
    assert "names a Redis Cluster, which cannot be the Celery broker: set CELERY_BROKER_URL" in result.stderr
    result = _settings_import(
        ONCEONLY_VAR_DIR=str(tmp_path),
        SECRET_KEY="k" * 50,
        REDIS_URL="redis+cluster://h1:7000,h2:7000",
        CELERY_BROKER_URL="redis://broker:6379/0",
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_a_cluster_unreachable_from_the_start_is_redis_unreachable(settings, key_a):
    """A process that starts while no node answers (its client is built at the first call) falls back as with a
    single Redis that is down: check-lock decided by the database (one winner), /healthz a 503 naming Redis."""
    from django.test import Client

    from onceonly_site.redis_client import get_redis

    shared = settings.REDIS_URL
    settings.REDIS_URL = "redis+cluster://127.0.0.1:1,127.0.0.1:2"  # nothing listens there
    get_redis.cache_clear()
    try:
        client = key_a.client()
        first = client.post("/v1/check-lock", {"key": "boot", "ttl": 60}, content_type="application/json")
        again = client.post("/v1/check-lock", {"key": "boot", "ttl": 60}, content_type="application/json")
        assert (first.status_code, first.json()["status"]) == (200, "locked"), first.content
        assert (again.status_code, again.json()["status"]) == (200, "duplicate"), again.content
        health = Client().get("/healthz")
        assert health.status_code == 503 and health.json()["redis"] != "ok", health.content
    finally:
        settings.REDIS_URL = shared
        get_redis.cache_clear()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://[::1", "is not a valid URL: Invalid IPv6 URL"),
        ("redis://[::1", "is not a valid URL: Invalid IPv6 URL"),
        ("redis://h:abc/0", "is not a valid URL: Port could not be cast"),
        ("redis://h:99999/0", "is not a valid URL: Port out of range"),
        ("redis://", "names no host"),
    ],
)
def test_a_url_that_does_not_parse_is_refused_at_start_up_not_at_first_use(url, says):
    """Found by a review: these gave a raw traceback at start-up, or passed and then failed every connection."""
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL") as refused:
        env.validate_redis_url(url)
    assert says in str(refused.value)
