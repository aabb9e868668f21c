"""/healthz and the worker heartbeat, through a real Celery worker on the configured broker."""

import subprocess
import sys
import time

import pytest
from django.test import Client

from onceonly_site.health import HEARTBEAT_KEY, worker_last_seen_seconds
from onceonly_site.redis_client import get_redis
from onceonly_site.tasks import worker_heartbeat
from tests.support.servers import ROOT, server_env


def test_healthz_reports_database_and_redis(db):
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["redis"] == "ok"
    assert body["worker_last_seen_seconds"] is None


def test_healthz_is_503_when_redis_is_unreachable(db, settings):
    get_redis.cache_clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    try:
        response = Client().get("/healthz")
    finally:
        get_redis.cache_clear()
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")


@pytest.mark.slow
def test_a_real_worker_consumes_the_queue_and_the_overview_says_so(transactional_db, owner_a):
    """The same broker path on embedded and real Redis: a task sent from here runs in a separate worker."""
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "onceonly_site",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=server_env(),
    )
    try:
        assert get_redis().get(HEARTBEAT_KEY) is None
        worker_heartbeat.delay()
        deadline = time.monotonic() + 30
        while worker_last_seen_seconds() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_last_seen_seconds() is not None and worker_last_seen_seconds() < 30
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    html = owner_a.login(Client()).get("/").content.decode()
    assert "A worker checked in" in html


def test_overview_warns_when_no_worker_checked_in(owner_a):
    html = owner_a.login(Client()).get("/").content.decode()
    assert "No Celery worker has checked in yet" in html


def test_redis_out_of_memory_is_a_503_that_says_so(key_a, private_redis):
    """maxmemory with noeviction (the advised policy): every write is refused — a clear 503, not a 500."""
    assert key_a.client().post("/v1/check-lock", {"key": "warm"}, content_type="application/json").status_code == 200
    private_redis.client().config_set("maxmemory", 1)
    for path, body in (("/v1/check-lock", {"key": "k"}), ("/v1/ai/run", {"agent_id": "bot", "tool": "t"})):
        response = key_a.client().post(path, body, content_type="application/json")
        assert response.status_code == 503, response.content
        assert "out of memory" in response.json()["detail"]["message"]
