"""POST/GET /v1/events, GET /v1/runs/{run_id} and GET /v1/metrics: validation, shapes, paging, tenants, queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from governance import services as governance
from idempotency.models import RunEvent


def post_event(key, **body):
    return key.client().post("/v1/events", body, content_type="application/json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "note"}, "run_id"),
        ({"run_id": "   ", "type": "note"}, "run_id"),
        ({"run_id": "r", "type": ""}, "type"),
        ({"run_id": "r", "type": "x" * 65}, "type"),
        ({"run_id": "r", "type": "note", "ts": True}, "ts"),
        ({"run_id": "r", "type": "note", "ts": "yesterday"}, "ts"),
        ({"run_id": "r", "type": "note", "duration_ms": -1}, "duration_ms"),
        ({"run_id": "r", "type": "note", "data": [1, 2]}, "data"),
        ({"run_id": "r", "type": "note", "message": 5}, "message"),
        ({"run_id": "r", "type": "note", "step": "s" * 257}, "step"),
        ({"run_id": "r", "type": "note", "blob": "x" * 9000}, "body"),
    ],
)
def test_bad_events_are_422_and_store_nothing(key_a, body, field):
    response = post_event(key_a, **body)
    assert response.status_code == 422, response.content
    assert field in {item["loc"][-1] for item in response.json()["detail"]}
    assert not RunEvent.objects.exists()


def test_event_fields_and_extra_keys_come_back_in_order(key_a):
    later = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    earlier = later - 60
    fields = {
        "status": "ok",
        "step": "2",
        "tool": "t",
        "req_id": "q",
        "lease_id": "l",
        "agent_id": "bot",
        "message": "second",
        "duration_ms": 12,
        "data": {"k": [1]},
        "team": "ops",
    }
    a = post_event(key_a, run_id="r/1", type="note", ts=later, **fields)
    b = post_event(key_a, run_id="r/1", type="note", ts=earlier, message="first")
    assert a.status_code == b.status_code == 200
    assert a.json() == {"ok": True, "event_id": a.json()["event_id"], "run_id": "r/1"}
    body = key_a.client().get("/v1/runs/r%2F1").json()
    assert [e["message"] for e in body["events"]] == ["first", "second"]  # by ts, not by arrival
    second = body["events"][1]
    assert second["ts"] == later and second["team"] == "ops" and second["data"] == {"k": [1]}
    assert (second["status"], second["step"], second["tool"], second["duration_ms"]) == ("ok", "2", "t", 12)
    assert second["source"] == "client" and second["decision_id"] is None


def test_timeline_pages_and_counts_with_a_fixed_number_of_queries(key_a, django_assert_num_queries):
    RunEvent.objects.bulk_create(
        RunEvent(
            account_id=key_a.api_key.account_id,
            run_id="big",
            type="note",
            message=str(i),
            ts=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        )
        for i in range(30)
    )
    client = key_a.client()
    client.get("/v1/runs/big")  # warm the key cache
    with django_assert_num_queries(2):  # the page, the count
        page = client.get("/v1/runs/big", {"limit": 10, "offset": 10}).json()
    assert page["total"] == 30 and [e["message"] for e in page["events"]] == [str(i) for i in range(10, 20)]
    with django_assert_num_queries(1):  # a short last page needs no count
        tail = client.get("/v1/runs/big", {"limit": 50, "offset": 20}).json()
    assert tail["total"] == 30 and len(tail["events"]) == 10
    assert client.get("/v1/runs/big", {"limit": 2001}).status_code == 422
    assert client.get("/v1/runs/big", {"offset": -1}).status_code == 422


def test_feed_merges_run_events_decisions_and_kill_switch_newest_first(key_a, key_b, account_a):
    post_event(key_a, run_id="r", type="note", message="hello", kind="spoofed")  # an extra key cannot pose as a kind
    governance.agent_set_enabled(
        account_id=account_a.pk, agent_id="bot", enabled=False, reason="runaway", actor="ops@acme"
    )
    key_a.client().post("/v1/ai/run", {"agent_id": "bot", "tool": "send_email"}, content_type="application/json")
    feed = key_a.client().get("/v1/events", {"limit": 2}).json()
    assert feed["total"] == 3 and len(feed["data"]) == 2
    assert [item["kind"] for item in feed["data"]] == ["decision", "audit"]
    assert feed["data"][0]["status"] == "blocked" and feed["data"][0]["message"] == "agent_disabled"
    assert feed["data"][1]["type"] == "governance.agent.disabled" and feed["data"][1]["message"] == "runaway"
    rest = key_a.client().get("/v1/events", {"limit": 2, "offset": 2}).json()
    assert [item["kind"] for item in rest["data"]] == ["run_event"]
    assert key_b.client().get("/v1/events").json() == {"data": [], "total": 0, "limit": 50, "offset": 0}
    assert key_a.client().get("/v1/events", {"limit": 201}).status_code == 422


def test_feed_query_count_does_not_grow(key_a, django_assert_num_queries):
    for i in range(5):
        post_event(key_a, run_id="r", type="note", message=str(i))
        key_a.client().post("/v1/ai/run", {"agent_id": "bot", "tool": f"t{i}"}, content_type="application/json")
    with django_assert_num_queries(6):  # three sources, three counts
        assert len(key_a.client().get("/v1/events").json()["data"]) == 10


def test_runs_and_events_are_tenant_scoped(key_a, key_b):
    post_event(key_a, run_id="shared-name", type="note", message="A's")
    assert key_b.client().get("/v1/runs/shared-name").json()["total"] == 0
    key_a.client().post(
        "/v1/ai/run", {"key": "same-key", "metadata": {"task": "demo.echo"}}, content_type="application/json"
    )
    other = key_b.client().post("/v1/ai/run", {"key": "same-key"}, content_type="application/json").json()
    assert other["status"] == "acquired"  # an independent keyspace
    assert key_b.client().get("/v1/runs/same-key").json()["total"] == 1  # only B's own run_queued


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to_day": "2026-01-01"}, "from_day"),
        ({"from_day": "2026-01-01"}, "to_day"),
        ({"from_day": "2026-13-01", "to_day": "2026-12-31"}, "from_day"),
        ({"from_day": "20260101", "to_day": "2026-01-02"}, "from_day"),
        ({"from_day": "2026-W01-1", "to_day": "2026-01-02"}, "from_day"),  # ISO week date: Python 3.11 reads it
        ({"from_day": "2026-01-02", "to_day": "2026-01-01"}, "to_day"),
        ({"from_day": "2025-01-01", "to_day": "2026-01-02"}, "to_day"),
    ],
)
def test_bad_metric_days_are_422(key_a, params, field):
    response = key_a.client().get("/v1/metrics", params)
    assert response.status_code == 422
    assert field in {item["loc"][-1] for item in response.json()["detail"]}


def test_metrics_cover_each_day_of_the_range(key_a):
    body = key_a.client().get("/v1/metrics", {"from_day": "2026-02-27", "to_day": "2026-03-02"}).json()
    assert [d["day"] for d in body["days"]] == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    assert body["days"][0]["decisions"] == {
        "executed": 0,
        "allowed": 0,
        "blocked": 0,
        "dedup": 0,
        "failed": 0,
        "total": 0,
    }
    assert body["totals"]["spend_usd"] == 0
