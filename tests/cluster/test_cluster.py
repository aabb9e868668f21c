"""REDIS_URL naming a Redis Cluster (docs/operations.md §"Redis Cluster"): a private cluster of three primaries and
three replicas, a single Redis for the Celery broker, and a multi-process gunicorn started with
``REDIS_URL=redis+cluster://…`` — the production start-up path, not settings overridden in the test process — driven
by the real onceonly-sdk. Exactly-once answers under concurrency (check-lock, leases), caps that never overshoot,
dedup, the sign-in throttle (its two keys share a hash tag), wake-ups, /metrics, a replica promoted after its
primary died (it does not know the scripts), and check-lock's database fallback when part of the cluster is down.

Needs redis-server and redis-cli (apt-get install -y redis-server redis-tools): skipped without them, except under
CI=true, where their absence fails.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
from onceonly import OnceOnly
from redis.exceptions import RedisClusterException

from billing import login_throttle, usage
from billing.models import UsageMonth
from billing.services import account_get_or_create
from idempotency.models import Lease, LockRecord, Run
from idempotency.services import CHECK_LOCK, lock_redis_key
from onceonly_site import wakeups
from onceonly_site.redis_client import Cluster, get_redis, lua_script
from tests.cluster.stack import ClusterStack, missing_tools
from tests.conftest import ARTIFACTS, make_key
from tests.faults.stack import wait_until
from tests.support.sdk_race import assert_caps_hold, race
from tests.support.servers import CeleryWorker, GunicornServer

METRICS_TOKEN = "cluster-metrics-token-0123456789"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
if os.environ.get("ONCEONLY_CLUSTER") == "0":
    pytestmark.append(pytest.mark.skip(reason="ONCEONLY_CLUSTER=0: the cluster tests run in the other CI pass"))
elif missing_tools() and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason="the cluster tests need " + "; ".join(missing_tools())))


@pytest.fixture(scope="module")
def stack():
    assert not missing_tools(), "CI=true and the cluster tests cannot run: " + "; ".join(missing_tools())
    started = ClusterStack()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def server(stack, django_db_setup, django_db_blocker):
    """gunicorn (2 processes × 8 threads) on the test database, with REDIS_URL naming the cluster."""
    with django_db_blocker.unblock():
        started = GunicornServer(
            workers=2,
            threads=8,
            REDIS_URL=stack.cluster.url,
            CELERY_BROKER_URL=stack.broker.url,
            ONCEONLY_METRICS_TOKEN=METRICS_TOKEN,
        )
    yield started
    started.stop()


@pytest.fixture
def cluster(stack):
    """The test's own client of the cluster, emptied before the test."""
    client = stack.cluster.client()
    client.flushall(target_nodes=client.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def in_process_cluster(settings, stack, cluster):
    """This test process's ``get_redis()`` pointed at the cluster (for what the server cannot show from outside)."""
    shared = settings.REDIS_URL
    settings.REDIS_URL = stack.cluster.url
    get_redis.cache_clear()
    yield get_redis()
    get_redis().close()
    settings.REDIS_URL = shared
    get_redis.cache_clear()


def test_the_server_uses_the_cluster(server, cluster, transactional_db, account_a):
    key = make_key(account_a)
    with OnceOnly(api_key=key.raw, base_url=f"{server.url}/v1", fail_open=False) as client:
        assert client.check_lock(key="where", ttl=60).locked
    redis_key = lock_redis_key(account_a.pk, "where")
    assert cluster.exists(redis_key) == 1
    assert get_redis().exists(redis_key) == 0  # not the tests' own Redis
    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["redis"] == "ok", health.text


def test_concurrent_check_locks_have_exactly_one_winner(server, cluster, transactional_db, account_a):
    key = make_key(account_a)
    results = race(f"{server.url}/v1", key.raw, 30, lambda c, i: c.check_lock(key="race:lock", ttl=60))
    assert sum(r.locked for r in results) == 1
    assert sum(r.duplicate for r in results) == 29
    assert LockRecord.objects.count() == 1


def test_leases_acquire_complete_and_have_one_holder_under_concurrency(server, cluster, transactional_db, account_a):
    key = make_key(account_a)
    url = f"{server.url}/v1"
    with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
        lease = client.ai.lease(key="refund:1", ttl=60)
        assert lease["status"] == "acquired"
        done = client.ai.complete(key="refund:1", lease_id=lease["lease_id"], result={"refund": "re_1"})
        assert done["status"] == "completed"
        assert client.ai.result("refund:1").result == {"refund": "re_1"}
    results = race(url, key.raw, 20, lambda c, i: c.ai.lease(key="race:lease", ttl=60))
    statuses = [r["status"] for r in results]
    assert statuses.count("acquired") == 1 and statuses.count("polling") == 19, statuses
    assert Lease.objects.filter(key="race:lease").get().version == 1


@pytest.mark.parametrize(
    ("policy", "n", "spend", "allowed", "reason"),
    [
        ({"max_actions_per_hour": 8}, 30, None, 8, "hourly_action_limit_exceeded"),
        ({"max_spend_usd_per_day": 5}, 30, 1.0, 5, "daily_spend_exceeded"),
        ({"max_actions_per_run": 4}, 30, None, 4, "run_action_limit_exceeded"),
    ],
)
def test_concurrent_governed_calls_never_overshoot_a_cap(
    server, cluster, transactional_db, account_a, policy, n, spend, allowed, reason
):
    key = make_key(account_a)
    assert_caps_hold(f"{server.url}/v1", key.raw, policy, n, spend, "crm.note", allowed, reason)


def test_dedup_replays_and_counts_once(server, cluster, transactional_db, account_a):
    key = make_key(account_a)
    url = f"{server.url}/v1"
    with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
        client.gov.upsert_policy({"agent_id": "biller", "max_spend_usd_per_day": 10})
        first = client.ai.run_tool(agent_id="biller", tool="stripe.charge", args={"invoice": 1}, spend_usd=2)
        second = client.ai.run_tool(agent_id="biller", tool="stripe.charge", args={"invoice": 1}, spend_usd=2)
        assert first.decision == "allowed"
        assert (second.decision, second.policy_reason) == ("dedup", "idempotency_key_hit")
    results = race(
        url,
        key.raw,
        12,
        lambda c, i: c.ai.run_tool(agent_id="biller", tool="stripe.charge", args={"invoice": 2}, spend_usd=2),
    )
    decisions = sorted(r.decision for r in results)
    assert decisions == ["allowed"] + ["dedup"] * 11, decisions
    metrics = OnceOnly(api_key=key.raw, base_url=url, fail_open=False)
    try:
        assert metrics.gov.agent_metrics("biller", period="day").total_spend_usd == 4.0  # each invoice once
    finally:
        metrics.close()


def test_a_keyed_run_reaches_a_worker_through_the_single_redis_broker(
    server, stack, cluster, transactional_db, account_a
):
    """The server queues on CELERY_BROKER_URL; a worker started with the same environment runs the run, its state
    on the cluster and in the database."""
    worker = CeleryWorker(
        "cluster", log_dir=ARTIFACTS / "workers", REDIS_URL=stack.cluster.url, CELERY_BROKER_URL=stack.broker.url
    )
    try:
        with OnceOnly(api_key=make_key(account_a).raw, base_url=f"{server.url}/v1", fail_open=False) as client:
            done = client.ai.run_and_wait(
                key="job:echo",
                metadata={"task": "demo.echo", "params": {"hello": "cluster"}},
                timeout=30,
                poll_min=0.2,
                poll_max=0.5,
            )
    finally:
        worker.stop()
    assert stack.broker.client().keys("_kombu.binding.*"), "the broker Redis was not used"
    assert done.status == "completed", done
    assert done.result["output"] == {"echo": {"hello": "cluster"}, "key": "job:echo"}
    assert Run.objects.get(key="job:echo").status == "completed"


def test_metrics_read_the_broker_and_cache_on_the_cluster(server, stack, cluster, transactional_db):
    broker = stack.broker.client()
    broker.rpush("celery", b"a task waiting")  # the broker's queue is a list named after it
    try:
        answer = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    finally:
        broker.delete("celery")
    assert answer.status_code == 200, answer.text
    lines = set(answer.text.splitlines())
    assert {"onceonly_redis_up 1", "onceonly_database_up 1", 'onceonly_celery_queue_length{queue="celery"} 1'} <= lines
    assert [key for key in cluster.scan_iter(match="oo:cache:*", target_nodes=cluster.PRIMARIES)], "not cached"


def test_the_usage_mirror_scans_every_primary(server, in_process_cluster, transactional_db, plans):
    """billing.mirror_usage finds the month hashes with SCAN, which on a cluster runs on every primary."""
    accounts = [account_get_or_create(name=f"Scanned {i}", plan_code="agency")[0] for i in range(6)]
    for account in accounts:
        with OnceOnly(api_key=make_key(account).raw, base_url=f"{server.url}/v1", fail_open=False) as client:
            assert client.check_lock(key="counted", ttl=60).locked
    holders = {in_process_cluster.get_node_from_key(f"oo:{{a{a.pk}}}:x").name for a in accounts}
    assert len(holders) > 1, "every account on one node: nothing to show"
    assert usage.mirror_all() >= len(accounts)
    assert sorted(UsageMonth.objects.filter(account__in=accounts).values_list("make", flat=True)) == [1] * 6


def test_the_sign_in_throttle_locks_out_on_a_cluster(settings, in_process_cluster):
    """login_attempt.lua touches an email's and an address's counters in one step: one slot (the {login} tag)."""
    assert isinstance(in_process_cluster.connected(), Cluster)  # get_redis() builds it at its first use
    settings.ONCEONLY_LOGIN_MAX_FAILURES = 3
    keys = login_throttle._keys("Ops@Example.test", "203.0.113.7")
    assert in_process_cluster.keyslot(keys.email) == in_process_cluster.keyslot(keys.address)
    assert [login_throttle.begin_attempt("ops@example.test", "203.0.113.7") for _ in range(3)] == [0, 0, 0]
    wait = login_throttle.begin_attempt("ops@example.test", "203.0.113.7")
    assert 0 < wait <= settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS
    assert int(in_process_cluster.get(keys.email)) == 3  # the locked-out attempt was not counted
    login_throttle.record_success("other@example.test", "203.0.113.8")  # the pipeline of two slots works too
    assert login_throttle.begin_attempt("other@example.test", "203.0.113.8") == 0


def test_pipelines_on_the_cluster_client(in_process_cluster):
    """Pipelines of several slots go node by node; a transaction (MULTI) of one account's keys runs on its node,
    and one across slots is refused before anything is sent (the server has none: docs/operations.md)."""
    pipe = in_process_cluster.pipeline(transaction=False)
    for account in range(1, 9):
        pipe.set(f"oo:{{a{account}}}:x", account)
    assert pipe.execute() == [True] * 8
    pipe = in_process_cluster.pipeline(transaction=True)
    pipe.incr("oo:{a1}:x")
    pipe.delete("oo:{a1}:y")
    pipe.get("oo:{a1}:x")
    assert pipe.execute() == [2, 0, b"2"]
    pipe = in_process_cluster.pipeline(transaction=True)
    with pytest.raises(RedisClusterException):
        pipe.incr("oo:{a1}:x")
        pipe.incr("oo:{a2}:x")
        pipe.execute()
    assert in_process_cluster.mget_nonatomic("oo:{a1}:x", "oo:{a2}:x") == [b"2", b"2"]


def test_wake_ups_cross_the_cluster(in_process_cluster):
    """A PUBLISH on a cluster reaches every node: the listener hears it whichever node it subscribed on."""
    name = wakeups.channel("a1", "some key")
    try:
        # The first subscription discovers the cluster's nodes: on a loaded machine longer than the 0.5 s a waiter
        # gives a starting listener (it then waits without a wake-up, by design). Let it subscribe first.
        assert wakeups.listener().subscribed.wait(15), "the listener did not subscribe to the cluster"
        with wakeups.listen(name) as event:
            assert event is not None, "the listener did not subscribe"
            time.sleep(0.2)  # the wake-up of every waiter that follows a subscription
            event.clear()
            assert not event.wait(0.3)
            wakeups.notify(name)
            assert event.wait(5)
    finally:
        wakeups.listener().stop()


def test_a_promoted_replica_runs_the_scripts(server, stack, cluster, transactional_db, account_a):
    """The primary of the account's slot dies; its replica takes over without the scripts loaded (NOSCRIPT once,
    then EVAL on that node). A lock replicated before the failover (WAIT) is still a duplicate after it."""
    key = make_key(account_a)
    url = f"{server.url}/v1"
    redis_key = lock_redis_key(account_a.pk, "before")
    sha = lua_script(CHECK_LOCK.path, *CHECK_LOCK.preludes).sha
    with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
        assert client.check_lock(key="before", ttl=300).locked
        primary = stack.cluster.port_of_key(redis_key)
        node = cluster.get_node(host="127.0.0.1", port=primary)
        assert cluster.execute_command("WAIT", 1, 2000, target_nodes=node) == 1
        stack.cluster.kill(primary)
        wait_until(
            lambda: stack.cluster.port_of_key(redis_key) not in {primary, None} and stack.cluster.healthy(),
            20,
            "no failover",
        )
        promoted = stack.cluster.port_of_key(redis_key)
        assert stack.cluster.cli(promoted, "script", "exists", sha) == "0"  # the replica never loaded it
        assert client.check_lock(key="before", ttl=300).duplicate
        assert stack.cluster.cli(promoted, "script", "exists", sha) == "1"  # NOSCRIPT, then EVAL there
        assert client.check_lock(key="after", ttl=300).locked
        assert client.ai.run_tool(agent_id="after-failover", tool="t", args={}).allowed
    stack.cluster.start_node(primary)  # it comes back as a replica of the promoted node
    wait_until(stack.cluster.healthy, 30, "the old primary did not rejoin as a replica")


def test_check_lock_falls_back_to_the_database_when_part_of_the_cluster_is_down(
    server, stack, cluster, transactional_db, plans
):
    """One primary and its replica die: the cluster says CLUSTERDOWN. An account whose keys were on the dead pair
    (the client cannot connect) and one whose keys are on a live node (which answers CLUSTERDOWN, a ResponseError to
    redis-py) both have their check-locks decided by the database alone, once each — not a 500. The nodes start
    again after it (they rejoin as they were)."""
    accounts = [account_get_or_create(name=f"Tenant {i}", plan_code="agency")[0] for i in range(12)]
    ports = {account.pk: stack.cluster.port_of_key(lock_redis_key(account.pk, "outage")) for account in accounts}
    down = next(account for account in accounts if ports[account.pk] is not None)
    primary = ports[down.pk]
    up = next(account for account in accounts if ports[account.pk] not in {primary, None})
    replicas = [
        port
        for port in stack.cluster.ports
        if port != primary and f"master_port:{primary}" in stack.cluster.cli(port, "info", "replication")
    ]
    assert replicas, "the primary has no replica"
    try:
        for port in [primary, *replicas]:
            stack.cluster.kill(port)
        wait_until(
            lambda: "cluster_state:fail" in stack.cluster.cli(ports[up.pk], "cluster", "info"), 20, "no CLUSTERDOWN"
        )
        for account in (down, up):
            started = time.monotonic()
            raw = make_key(account).raw
            results = race(f"{server.url}/v1", raw, 8, lambda c, i: c.check_lock(key="outage", ttl=60))
            took = time.monotonic() - started
            assert sum(r.locked for r in results) == 1 and sum(r.duplicate for r in results) == 7
            assert LockRecord.objects.filter(account=account, key="outage").count() == 1
            assert took < 20, took
    finally:
        for port in [primary, *replicas]:
            stack.cluster.start_node(port)
        wait_until(stack.cluster.healthy, 30, "the cluster did not come back")
