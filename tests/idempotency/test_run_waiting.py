"""Waiting for keyed runs (docs/runs.md §"Waiting for a run"): /v1/ai/status, /v1/ai/result and the key form of
/v1/ai/run wait up to ONCEONLY_RUN_WAIT_SECONDS for an unfinished keyed run and answer as soon as a Redis wake-up
says it finished. Against a live server in this process (its waiter count is this process's), the tests' Redis,
and the worker's code path (``runs.execute``, or a real Celery worker process)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from idempotency import runs, waiting
from idempotency.models import Run
from onceonly_site import wakeups
from tests.conftest import ARTIFACTS
from tests.support.servers import CeleryWorker


@pytest.fixture
def api(live_server, key_a):
    with httpx.Client(
        base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=20
    ) as client:
        yield client


@pytest.fixture
def api_b(live_server, key_b):
    with httpx.Client(
        base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_b.raw}"}, timeout=20
    ) as client:
        yield client


@pytest.fixture
def workers(transactional_db):
    started: list[CeleryWorker] = []

    def start(name: str) -> CeleryWorker:
        worker = CeleryWorker(name, log_dir=ARTIFACTS / "workers")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def start_run(client: httpx.Client, key: str, settings, **metadata) -> dict:
    """Queue a keyed run that no worker takes (none runs): the key form answers at once with waiting off."""
    bound = settings.ONCEONLY_RUN_WAIT_SECONDS
    settings.ONCEONLY_RUN_WAIT_SECONDS = 0
    try:
        response = client.post("/ai/run", json={"key": key, "ttl": 120, "metadata": metadata or None})
    finally:
        settings.ONCEONLY_RUN_WAIT_SECONDS = bound
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "acquired"
    return response.json()


class Timed(threading.Thread):
    """One request in a thread of its own: its answer and how long it took."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.answer: dict = {}
        self.began = self.ended = 0.0

    def run(self) -> None:
        self.began = time.monotonic()
        response = self.call()
        self.ended = time.monotonic()
        assert response.status_code == 200, response.text
        self.answer = response.json()

    @property
    def seconds(self) -> float:
        return self.ended - self.began

    def finish(self) -> Timed:
        self.join(timeout=30)
        assert not self.is_alive() and self.answer, "the request did not answer"
        return self


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("endpoint", ["status", "result"])
def test_a_run_that_finishes_while_the_request_waits_is_answered_completed_at_once(api, settings, endpoint):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 3.0
    start_run(api, "wait:finishes", settings, task="demo.echo", params={"n": 1})
    request = Timed(lambda: api.get(f"/ai/{endpoint}", params={"key": "wait:finishes"}))
    request.start()
    wait_until(lambda: waiting.waiters() == 1)  # it is waiting, not answered
    time.sleep(0.5)
    finishing = time.monotonic()
    assert runs.execute(Run.objects.get(key="wait:finishes").pk) == "completed"  # the worker's code path
    request.finish()
    assert request.answer["status"] == "completed"
    assert request.answer["result"]["output"] == {"echo": {"n": 1}, "key": "wait:finishes"}
    assert request.ended > finishing  # answered after the finish…
    assert request.seconds < 2.5  # …well before the 3 s bound: woken, not timed out
    assert waiting.waiters() == 0


def test_a_run_that_does_not_finish_is_answered_in_progress_at_the_bound(api, settings):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 1.0
    start_run(api, "wait:stuck", settings, task="demo.echo")
    status = Timed(lambda: api.get("/ai/status", params={"key": "wait:stuck"}))
    status.start()
    status.finish()
    assert status.answer["status"] == "in_progress" and status.answer["result"] is None
    assert 0.9 <= status.seconds < 3.0
    assert type(status.answer["retry_after_sec"]) is int and status.answer["retry_after_sec"] == 1  # a fresh run

    again = Timed(lambda: api.post("/ai/run", json={"key": "wait:stuck", "metadata": {"task": "demo.echo"}}))
    again.start()
    again.finish()  # the key form waits too, then answers what it found: someone else's run, still going
    assert again.answer["status"] == "polling" and again.answer["lease_id"] is None and again.answer["charged"] == 0
    assert 0.9 <= again.seconds < 3.0 and type(again.answer["retry_after_sec"]) is int

    first = Timed(lambda: api.post("/ai/run", json={"key": "wait:new", "metadata": {"task": "demo.echo"}}))
    first.start()
    first.finish()  # no worker: the acquiring call waits its bound and answers acquired, with the holder's lease_id
    assert first.answer["status"] == "acquired" and first.answer["lease_id"].startswith("lease_")
    assert first.answer["charged"] == 1 and 0.9 <= first.seconds < 3.0
    assert Run.objects.get(key="wait:new").status == "queued"


def test_a_wake_up_alone_changes_nothing(api, settings):
    """The notification carries no data: a wake-up on the key's own channel makes the request look again, and it
    waits on while the run is unfinished."""
    settings.ONCEONLY_RUN_WAIT_SECONDS = 1.5
    start = start_run(api, "wait:spurious", settings, task="demo.echo")
    request = Timed(lambda: api.get("/ai/status", params={"key": "wait:spurious"}))
    request.start()
    wait_until(lambda: waiting.waiters() == 1)
    wakeups.notify(waiting.lease_channel(Run.objects.get().account_id, "wait:spurious"))
    request.finish()
    assert request.answer["status"] == "in_progress" and request.answer["version"] == start["version"]
    assert request.seconds >= 1.4


def test_over_the_waiter_limit_a_request_answers_at_once(api, settings):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 2.0
    settings.ONCEONLY_RUN_WAITERS_PER_PROCESS = 1
    start_run(api, "wait:limit", settings, task="demo.echo")
    waiter = Timed(lambda: api.get("/ai/status", params={"key": "wait:limit"}))
    waiter.start()
    wait_until(lambda: waiting.waiters() == 1)
    extra = Timed(lambda: api.get("/ai/result", params={"key": "wait:limit"}))
    extra.start()
    extra.finish()
    assert extra.answer["status"] == "in_progress" and extra.seconds < 1.0  # no slot: today's immediate answer
    assert waiter.is_alive()  # the first one still waits
    waiter.finish()
    assert waiter.answer["status"] == "in_progress" and waiter.seconds >= 1.9

    settings.ONCEONLY_RUN_WAITERS_PER_PROCESS = 0  # no waiting at all
    none = Timed(lambda: api.get("/ai/status", params={"key": "wait:limit"}))
    none.start()
    assert none.finish().seconds < 1.0


def test_a_wake_up_for_another_tenants_run_changes_nothing(api, api_b, settings, account_a, account_b):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 2.0
    mine = start_run(api, "wait:shared", settings, task="demo.echo", params={"who": "a"})
    start_run(api_b, "wait:shared", settings, task="demo.echo", params={"who": "b"})
    request = Timed(lambda: api.get("/ai/result", params={"key": "wait:shared"}))
    request.start()
    wait_until(lambda: waiting.waiters() == 1)
    assert runs.execute(Run.objects.get(account=account_b).pk) == "completed"  # B's run, same key, finishes
    request.finish()
    assert request.answer["status"] == "in_progress" and request.answer["result"] is None
    assert request.answer["version"] == mine["version"] and request.seconds >= 1.9  # not woken early by B
    theirs = api_b.get("/ai/result", params={"key": "wait:shared"}).json()
    assert theirs["status"] == "completed" and theirs["result"]["output"]["echo"] == {"who": "b"}


def test_channels_are_per_account_and_key(transactional_db):
    """Only a wake-up on the waiter's own channel sets its event (the listener, through the tests' Redis)."""
    mine, theirs = waiting.lease_channel(1, "k"), waiting.lease_channel(2, "k")
    assert len({mine, theirs, waiting.lease_channel(1, "k2")}) == 3
    with wakeups.listen(mine) as event:
        assert event is not None  # subscribed
        wakeups.notify(theirs)
        wakeups.notify(waiting.lease_channel(1, "k2"))
        assert not event.wait(0.5)
        wakeups.notify(mine)
        assert event.wait(2.0)


def test_a_cancel_by_the_holder_wakes_the_waiting_request(api, settings):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 3.0
    held = start_run(api, "wait:cancel", settings, task="demo.echo")
    request = Timed(lambda: api.get("/ai/status", params={"key": "wait:cancel"}))
    request.start()
    wait_until(lambda: waiting.waiters() == 1)
    cancelled = api.post("/ai/cancel", json={"key": "wait:cancel", "lease_id": held["lease_id"], "reason": "stop"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    request.finish()
    assert request.answer["status"] == "cancelled" and request.seconds < 2.5


def test_without_redis_requests_answer_at_once_and_waiting_resumes_when_it_is_back(api, settings, private_redis):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 2.0
    start_run(api, "wait:redis", settings, task="demo.echo")
    assert api.get("/ai/status", params={"key": "wait:redis"}).json()["status"] == "in_progress"  # waited: subscribed
    private_redis.kill()
    wait_until(lambda: wakeups.listener().failing, timeout=15)
    began = time.monotonic()
    down = api.get("/ai/status", params={"key": "wait:redis"})
    assert down.status_code == 200 and down.json()["status"] == "in_progress"
    assert time.monotonic() - began < 1.0  # nothing could wake it: no wait

    private_redis.start()  # empty
    wait_until(lambda: wakeups.listener().subscribed.is_set(), timeout=15)
    request = Timed(lambda: api.get("/ai/result", params={"key": "wait:redis"}))
    request.start()
    wait_until(lambda: waiting.waiters() == 1)
    assert runs.execute(Run.objects.get(key="wait:redis").pk) == "completed"
    request.finish()
    assert request.answer["status"] == "completed" and request.seconds < 1.8


def test_a_plain_lease_is_answered_at_once(api, settings):
    settings.ONCEONLY_RUN_WAIT_SECONDS = 2.0
    lease = api.post("/ai/lease", json={"key": "wait:plain", "ttl": 60}).json()
    assert lease["status"] == "acquired"
    began = time.monotonic()
    status = api.get("/ai/status", params={"key": "wait:plain"}).json()
    polling = api.post("/ai/run", json={"key": "wait:plain"}).json()  # the key form finds a plain lease: no wait
    assert time.monotonic() - began < 1.0
    assert status["status"] == "in_progress" and type(status["retry_after_sec"]) is int
    assert polling["status"] == "polling" and Run.objects.count() == 0


def test_the_key_form_and_run_and_wait_complete_with_a_worker_well_under_the_sdk_poll(sdk, workers):
    workers("w1")
    began = time.monotonic()
    first = sdk.ai.run(key="wait:sdk:first", metadata={"task": "demo.echo", "params": {"x": 1}})
    assert time.monotonic() - began < 2.0
    # The first answer waited for the run: the key is completed, this call acquired it (charged) and holds it.
    assert first.status == "completed" and first.charged == 1 and (first.lease_id or "").startswith("lease_")
    assert first.result is not None and first.result["output"]["echo"] == {"x": 1}

    began = time.monotonic()
    result = sdk.ai.run_and_wait(key="wait:sdk", metadata={"task": "demo.echo", "params": {"y": 2}})
    took = time.monotonic() - began
    assert result.status == "completed" and result.result["output"] == {"echo": {"y": 2}, "key": "wait:sdk"}
    assert took < 2.0, f"run_and_wait took {took:.2f} s (the SDK's poll is 5 s)"
