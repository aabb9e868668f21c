"""Budget alerts (docs/governance.md §"Budget alerts") through real governed calls (POST /v1/ai/run, PostgreSQL and
Redis): which thresholds a call crosses (the daily spend cap, the hourly action cap, a tool's day cap, the month's
`ai` quota), each firing once per period with its numbers and the projected time to the cap, written to the
channels subscribed to ``budget_alert``; none with ``alert_thresholds: []``; the Alerts feed page (filters, empty
state, pinned query count, other accounts' alerts never shown), ``GET /v1/alerts`` and the /metrics counter.

The acceptance test (``test_thresholds_fire_exactly_once_under_20_concurrent_callers``) runs a multi-process
gunicorn, a real Celery worker and a webhook receiver on loopback: 20 threads cross 50/80/95/100 % of a daily spend
cap and the receiver gets exactly one signed delivery per threshold."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from billing.models import Plan
from billing.services import account_set_plan
from governance import alerts, channels
from governance.alerts import crossed
from governance.models import Agent, Alert, ChannelDelivery
from tests.conftest import make_key
from tests.governance.test_channels import Receiver

JSON = "application/json"
AGENT = "billing-agent"


@pytest.fixture
def api(key_a):
    return key_a.client()


@pytest.fixture
def hook(account_a, settings):
    """A webhook channel subscribed to budget_alert (never reached in these in-transaction tests: deliveries are
    woken after a commit that does not come)."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    channel, _ = channels.channel_create(
        account=account_a,
        kind="webhook",
        label="alerts",
        url="http://127.0.0.1:9/hook",
        events=["budget_alert"],
        actor="test",
    )
    return channel


def policy(api, agent=AGENT, **fields):
    response = api.post(f"/v1/policies/{agent}", fields, content_type=JSON)
    assert response.status_code == 200, response.content


def call(api, n, *, tool="search", spend=0.5, agent=AGENT) -> dict:
    body = {"agent_id": agent, "tool": tool, "args": {"n": n}, "spend_usd": spend}
    response = api.post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def fired(account, code=None) -> list[Alert]:
    rows = Alert.objects.filter(account=account, kind="budget").order_by("id")  # the detectors write alerts too
    return list(rows.filter(code=code) if code else rows)


# --- the arithmetic ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "cap", "expected"),
    [
        (4, 5, 10, [50]),  # exactly at 50 %: crossed
        (5, 6, 10, []),  # already over 50 %: not again
        (7, 8, 10, [80]),
        (9, 10, 10, [95, 100]),  # one call over two thresholds: both
        (0, 10, 10, [50, 80, 95, 100]),
        (3, 3, 10, []),  # a free call adds nothing
        (0, 1, 0, []),  # a cap of 0 blocks every call: nothing to cross
        (0, 1, -1, []),  # no cap
        (9_499_999, 9_500_000, 10_000_000, [95]),  # micro-dollars
    ],
)
def test_which_thresholds_a_call_crosses(before, after, cap, expected):
    assert crossed(before, after, cap, [50, 80, 95, 100]) == expected


# --- through governed calls --------------------------------------------------------------------------------------


def test_daily_spend_thresholds_fire_once_each_with_numbers_and_projection(api, account_a, hook):
    policy(api, max_spend_usd_per_day=10)
    for n in range(9):
        call(api, n)  # $4.50: under 50 %
    assert fired(account_a) == []
    call(api, 9)  # $5.00
    (half,) = fired(account_a)
    assert half.kind == "budget" and half.code == "daily_spend" and half.agent.agent_id == AGENT
    assert half.data["threshold"] == 50 and half.data["value"] == 5.0 and half.data["cap"] == 10.0
    assert half.data["unit"] == "usd" and half.data["period"] == timezone.now().strftime("%Y-%m-%d")
    for n in range(10, 16):
        call(api, n)  # $8.00 at the 16th call
    assert [a.data["threshold"] for a in fired(account_a)] == [50, 80]
    eighty = fired(account_a)[-1]
    assert re.fullmatch(
        r"billing-agent reached 80% of its daily spend cap: \$8\.00 of \$10\.00 today; at the current rate the cap "
        r"is (hit in ~[0-9 hmind]+|not reached before 00:00 UTC)\.",
        eighty.message,
    ), eighty.message
    # The projection: (cap - value) / (value / time since 00:00 UTC).
    start = eighty.created_at.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = max((eighty.created_at - start).total_seconds(), 60)
    assert eighty.data["projected_seconds"] == int(elapsed * 2 / 8)
    for n in range(16, 20):
        call(api, n)
    assert [a.data["threshold"] for a in fired(account_a)] == [50, 80, 95, 100]
    full = fired(account_a)[-1]
    assert full.message == (
        "billing-agent reached its daily spend cap: $10.00 of $10.00 today; further calls are blocked until 00:00 UTC."
    )
    assert full.data["projected_seconds"] is None
    # Blocked from here on: nothing else fires.
    assert call(api, 20)["policy_reason"] == "daily_spend_exceeded"
    assert len(fired(account_a)) == 4
    # Each alert written to the subscribed channel, once.
    deliveries = ChannelDelivery.objects.filter(channel=hook).order_by("id")
    assert [d.event for d in deliveries] == ["budget_alert"] * 4
    assert [d.payload["threshold"] for d in deliveries] == [50, 80, 95, 100]
    assert deliveries[1].text == eighty.message and deliveries[1].payload["alert_id"] == eighty.pk
    assert deliveries[1].payload["alerts_url"].endswith("/alerts/")


def test_slack_gets_the_message_and_a_link_to_the_alerts(api, account_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    settings.ONCEONLY_PUBLIC_URL = "https://onceonly.example.com"
    slack, _ = channels.channel_create(
        account=account_a,
        kind="slack",
        label="ops",
        url="https://hooks.slack.example.com/services/T0/B0/x",
        events=["budget_alert"],
        actor="test",
    )
    policy(api, max_spend_usd_per_day=1, alert_thresholds=[50])
    call(api, 1)
    (delivery,) = ChannelDelivery.objects.filter(channel=slack)
    body, _ = channels.request_of(slack, delivery)
    sent = json.loads(body)
    assert sent["text"].startswith("billing-agent reached 50% of its daily spend cap: $0.50 of $1.00 today")
    (actions,) = [block for block in sent["blocks"] if block["type"] == "actions"]
    assert actions["elements"][0]["url"] == "https://onceonly.example.com/alerts/"


def test_each_threshold_fires_again_the_next_day(api, account_a, monkeypatch):
    policy(api, max_spend_usd_per_day=1, alert_thresholds=[50])
    call(api, 1)
    assert [a.data["period"] for a in fired(account_a)] == [timezone.now().strftime("%Y-%m-%d")]
    call(api, 2)  # over 50 % already: nothing
    tomorrow = (timezone.now() + timedelta(days=1)).replace(hour=0, minute=30)
    monkeypatch.setattr(timezone, "now", lambda: tomorrow)
    call(api, 3)
    periods = [a.data["period"] for a in fired(account_a)]
    assert len(periods) == 2 and periods[1] == tomorrow.strftime("%Y-%m-%d")


def test_hourly_and_per_tool_caps(api, account_a):
    policy(api, max_actions_per_hour=4, max_calls_per_tool={"send_email": 2}, alert_thresholds=[50, 100])
    call(api, 1, tool="send_email", spend=0)
    assert [(a.code, a.data["threshold"]) for a in fired(account_a)] == [("tool_calls", 50)]
    call(api, 2, tool="send_email", spend=0)
    assert [(a.code, a.data["threshold"]) for a in fired(account_a)] == [
        ("tool_calls", 50),
        ("hourly_actions", 50),
        ("tool_calls", 100),
    ]
    tool_full = fired(account_a, "tool_calls")[-1]
    assert tool_full.message == (
        "billing-agent reached its daily cap on send_email: 2 of 2 calls today; further calls are blocked until "
        "00:00 UTC."
    )
    assert tool_full.data["tool"] == "send_email" and tool_full.once.endswith(":send_email")
    assert call(api, 3, tool="send_email", spend=0)["policy_reason"] == "tool_call_limit_exceeded"
    call(api, 4, tool="other", spend=0)
    call(api, 5, tool="other", spend=0)
    hourly = fired(account_a, "hourly_actions")
    assert [a.data["threshold"] for a in hourly] == [50, 100]
    assert hourly[0].data["period"] == timezone.now().strftime("%Y-%m-%dT%H")  # at most once per clock hour
    assert hourly[0].message.startswith("billing-agent reached 50% of its hourly action cap: 2 of 4 actions in")
    assert call(api, 6, tool="other", spend=0)["policy_reason"] == "hourly_action_limit_exceeded"
    assert len(fired(account_a)) == 4


def test_no_alert_when_thresholds_are_off(api, account_a, hook):
    policy(api, max_spend_usd_per_day=2, max_actions_per_hour=5, alert_thresholds=[])
    for n in range(5):
        call(api, n)
    assert call(api, 9)["policy_reason"] in ("daily_spend_exceeded", "hourly_action_limit_exceeded")
    assert fired(account_a) == [] and not ChannelDelivery.objects.filter(channel=hook).exists()


def test_a_call_that_crosses_nothing_reads_nothing_more(api, account_a):
    """The hot path: below every threshold, the alerts add no query (the same count as a call without a cap)."""
    policy(api, max_spend_usd_per_day=1000)
    policy(api, agent="plain")
    call(api, 0)
    call(api, 0, agent="plain")
    counts = []
    for agent in (AGENT, "plain"):
        with CaptureQueriesContext(connection) as queries:
            call(api, 1, agent=agent)
        counts.append(len(queries))
    assert counts[0] == counts[1] and fired(account_a) == []


def test_the_monthly_ai_quota_fires_for_the_account(account_a, plans):
    Plan.objects.filter(code="agency").update(ai_monthly_limit=20)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="agency"))
    api = make_key(account_a).client()
    for n in range(20):
        call(api, n, spend=0, agent=f"bot-{n % 3}")
    quota = fired(account_a, "ai_quota")
    assert [a.data["threshold"] for a in quota] == [50, 80, 95, 100]
    assert all(a.agent is None and a.data["agent_id"] is None for a in quota)
    assert quota[0].message.startswith("The account reached 50% of its monthly ai quota: 10 of 20 used this month")
    assert quota[-1].data["period"] == timezone.now().strftime("%Y-%m")


def test_quotas_counted_outside_governed_calls(account_a):
    """``after_quota``: what a check-lock (`make`) or a lease (`ai`) answers as the month's usage after it."""
    assert alerts.after_quota(account_a.pk, "make", 4, 10) == []
    (half,) = alerts.after_quota(account_a.pk, "make", 5, 10)
    assert half.code == "make_quota" and half.agent is None and half.data["threshold"] == 50
    assert half.message.startswith("The account reached 50% of its monthly make quota: 5 of 10 used this month")
    assert alerts.after_quota(account_a.pk, "make", 5, 10) == []  # the same crossing again: fired already
    assert alerts.after_quota(account_a.pk, "ai", 5, -1) == []  # no quota
    assert [a.data["threshold"] for a in alerts.after_quota(account_a.pk, "ai", 10, 10)] == [95, 100]


def test_check_locks_and_leases_fire_their_quota_alerts_through_the_api(account_a, plans):
    """The listeners billing.usage tells (registered by governance): a check-lock's `make` unit and a lease's `ai`."""
    Plan.objects.filter(code="agency").update(make_monthly_limit=4, ai_monthly_limit=2)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="agency"))
    api = make_key(account_a).client()
    for n in range(4):
        assert (
            api.post("/v1/check-lock", {"key": f"k{n}"}, content_type="application/json").json()["status"] == "locked"
        )
    assert api.post("/v1/check-lock", {"key": "k0"}, content_type="application/json").status_code == 200  # a duplicate
    assert [a.data["threshold"] for a in fired(account_a, "make_quota")] == [50, 80, 95, 100]
    for n in range(2):
        assert (
            api.post("/v1/ai/lease", {"key": f"l{n}"}, content_type="application/json").json()["status"] == "acquired"
        )
    assert [a.data["threshold"] for a in fired(account_a, "ai_quota")] == [50, 80, 95, 100]


# --- the feed, the API, the metric ---------------------------------------------------------------------------------


def seed_alerts(account, n: int, agent_id: str = AGENT) -> list[Alert]:
    agent, _ = Agent.objects.get_or_create(account=account, agent_id=agent_id)
    kinds = ["budget", "detector", "run_paused"]
    return [
        Alert.objects.create(
            account=account,
            agent=agent,
            kind=kinds[i % 3],
            code="daily_spend" if i % 3 == 0 else "call_loop" if i % 3 == 1 else "run_action_limit_exceeded",
            once=f"seed:{agent_id}:{i}",
            message=f"{agent_id} alert number {i}",
            data={"i": i},
        )
        for i in range(n)
    ]


def feed_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-id="(\d+)"', html)


def test_the_alerts_page_lists_filters_and_is_empty_with_words(owner_a, account_a, account_b):
    client = owner_a.login(Client())
    html = client.get("/alerts/").content.decode()
    assert "No alert yet." in html and 'href="/alerts/"' in html  # the navigation links it
    rows = seed_alerts(account_a, 6) + seed_alerts(account_a, 2, "support-bot")
    seed_alerts(account_b, 3, "globex-bot")
    html = client.get("/alerts/").content.decode()
    assert feed_ids(html) == [str(a.pk) for a in sorted(rows, key=lambda a: (a.created_at, a.pk), reverse=True)]
    assert "globex-bot" not in html
    budget = client.get("/alerts/", {"kind": "budget"}).content.decode()
    assert set(feed_ids(budget)) == {str(a.pk) for a in rows if a.kind == "budget"}
    support = client.get("/alerts/", {"agent": "=support-bot"}).content.decode()
    assert set(feed_ids(support)) == {str(a.pk) for a in rows[6:]}
    none = client.get("/alerts/", {"agent": "nobody"}).content.decode()
    assert "No alert matches these filters." in none and feed_ids(none) == []
    overview = client.get("/").content.decode()
    assert "Alerts · latest" in overview and "support-bot alert number 1" in overview


@pytest.mark.parametrize("count", [3, 60])
def test_the_alerts_page_query_count_is_pinned(owner_a, account_a, count):
    seed_alerts(account_a, count)
    client = owner_a.login(Client())
    client.get("/alerts/")
    for params in ({}, {"kind": "budget", "agent": "bill", "q": "alert", "sort": "kind"}):
        with CaptureQueriesContext(connection) as queries:
            html = client.get("/alerts/", params).content.decode()
        assert feed_ids(html)
        # session, user, membership (+account, plan); agent suggestions, count, page
        assert len(queries) == 6, [q["sql"] for q in queries.captured_queries]


def test_the_alerts_api_lists_the_accounts_alerts(key_a, key_b, account_a, account_b):
    rows = seed_alerts(account_a, 5)
    seed_alerts(account_b, 2, "globex-bot")
    body = key_a.client().get("/v1/alerts", {"limit": 2}).json()
    assert body["total"] == 5 and body["limit"] == 2 and body["offset"] == 0
    newest = sorted(rows, key=lambda a: (a.created_at, a.pk), reverse=True)
    assert [item["alert_id"] for item in body["items"]] == [a.pk for a in newest[:2]]
    assert body["items"][0]["agent_id"] == AGENT and body["items"][0]["data"] == newest[0].data
    detectors = key_a.client().get("/v1/alerts", {"kind": "detector"}).json()
    assert {i["kind"] for i in detectors["items"]} == {"detector"} and detectors["total"] == 2
    assert key_a.client().get("/v1/alerts", {"agent_id": "globex-bot"}).json()["total"] == 0
    assert key_b.client().get("/v1/alerts").json()["total"] == 2
    bad = key_a.client().get("/v1/alerts", {"kind": "nope"})
    assert bad.status_code == 422 and "kind" in json.dumps(bad.json())


def test_the_metric_counts_alerts_fired_by_metric(api, account_a, settings):
    settings.ONCEONLY_METRICS_TOKEN = "t0ken"
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 0
    policy(api, max_spend_usd_per_day=1, alert_thresholds=[50, 100])
    call(api, 1)
    call(api, 2)
    text = Client().get("/metrics", headers={"Authorization": "Bearer t0ken"}).content.decode()
    assert 'onceonly_budget_alerts_fired_total{metric="daily_spend"} 2' in text
    assert 'onceonly_budget_alerts_fired_total{metric="hourly_actions"} 0' in text


# --- acceptance: real traffic against a live server ------------------------------------------------------------------


@pytest.mark.slow
def test_thresholds_fire_exactly_once_under_20_concurrent_callers(transactional_db, account_a, owner_a, settings):
    """20 threads make governed calls of $0.25 against a $10 daily cap through a two-process gunicorn (40 calls
    reach it; 60 are made): a real Celery worker delivers, and the webhook receiver gets exactly one signed
    ``budget_alert`` per threshold — and none more after another round of calls."""
    from tests.conftest import ARTIFACTS
    from tests.support.servers import CeleryWorker, GunicornServer

    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    receiver = Receiver()
    channel, secret = channels.channel_create(
        account=account_a,
        kind="webhook",
        label="alerts",
        url=receiver.base + "/hook",
        events=["budget_alert"],
        actor="test",
    )
    key = make_key(account_a)
    server = GunicornServer(workers=2, threads=8, ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1")
    worker = CeleryWorker("alerts", log_dir=ARTIFACTS / "workers", ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1")
    headers = {"Authorization": f"Bearer {key.raw}"}
    try:
        with httpx.Client(base_url=server.url + "/v1", headers=headers, timeout=30) as http:
            answer = http.post(f"/policies/{AGENT}", json={"max_spend_usd_per_day": 10})
            assert answer.status_code == 200, answer.text

        def round_of(tag: str) -> list[str]:
            barrier = threading.Barrier(20)

            def caller(w: int) -> list[str]:
                reasons = []
                with httpx.Client(base_url=server.url + "/v1", headers=headers, timeout=30) as http:
                    barrier.wait(30)
                    for n in range(3):
                        body = {"agent_id": AGENT, "tool": "search", "args": {"q": f"{tag}-{w}-{n}"}}
                        answer = http.post("/ai/run", json={**body, "spend_usd": 0.25})
                        assert answer.status_code == 200, answer.text
                        reasons.append(answer.json()["policy_reason"])
                return reasons

            with ThreadPoolExecutor(20) as pool:
                return [r for batch in pool.map(caller, range(20)) for r in batch]

        first = round_of("a")
        assert first.count("within_budget") == 40 and first.count("daily_spend_exceeded") == 20

        def delivered() -> list[dict]:
            return [Webhook(secret).verify(c["body"], c["headers"]) for c in receiver.calls]

        deadline = time.monotonic() + 30
        while len(receiver.calls) < 4:
            assert time.monotonic() < deadline, (len(receiver.calls), worker.log()[-3000:])
            time.sleep(0.1)
        time.sleep(2)  # any duplicate would have arrived by now
        events = delivered()
        assert len(events) == 4
        assert sorted(e["data"]["threshold"] for e in events) == [50, 80, 95, 100]
        assert {e["type"] for e in events} == {"budget_alert"}
        by = {e["data"]["threshold"]: e["data"] for e in events}
        assert by[80]["value"] == 8.0 and by[100]["message"].startswith("billing-agent reached its daily spend cap")
        second = round_of("b")  # over the cap: all blocked, nothing fires
        assert set(second) == {"daily_spend_exceeded"}
        time.sleep(2)
        assert len(receiver.calls) == 4
        assert Alert.objects.filter(account=account_a, kind="budget").count() == 4
        assert set(ChannelDelivery.objects.filter(channel=channel).values_list("status", flat=True)) == {"delivered"}
        assert alerts.fired_counts()["daily_spend"] == 4
    finally:
        worker.stop()
        server.stop()
        receiver.stop()
