"""A dispatch is written down before the tool is called (governance.models.DispatchIntent): a server that loses its
database — or dies — between calling the tool and recording the answer leaves the intent behind, which keeps the
call counted against the caps and becomes a failed decision (``outcome_unknown``) through the sweeper.

Found by the fault suite (tests/faults): a PostgreSQL crash in that window let a tool run with no decision and its
reservation released, so the caps no longer counted it.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from governance import ledger, services
from governance.models import Agent, Decision, DecisionRollup, DispatchIntent
from onceonly_site.redis_client import get_redis
from tests.support import servers
from tests.support.tool_endpoint import ToolEndpoint

AGENT, TOOL = "billing-agent", "stripe.refund"


@pytest.fixture
def tool(settings, key_a):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    client = key_a.client()
    registered = client.post(
        "/v1/tools",
        {
            "name": TOOL,
            "url": endpoint.base + "/refund",
            "max_retries": 0,
            "auth": {"type": "hmac_sha256", "secret": "refund-secret-123"},
        },
        content_type="application/json",
    )
    assert registered.status_code == 200, registered.json()
    yield endpoint
    endpoint.stop()


def call(client, **args):
    return client.post(
        "/v1/ai/run", {"agent_id": AGENT, "tool": TOOL, "args": args, "spend_usd": 2}, content_type="application/json"
    )


def cap_actions(client, n: int) -> None:
    answer = client.post(f"/v1/policies/{AGENT}", {"max_actions_per_hour": n}, content_type="application/json")
    assert answer.status_code == 200, answer.content


def test_a_dispatch_leaves_no_intent_and_records_the_webhook_id(key_a, tool):
    body = call(key_a.client(), order=1).json()
    assert body["decision"] == "executed" and body["result"] == {"refunded": True}
    assert DispatchIntent.objects.count() == 0
    decision = Decision.objects.get()
    assert decision.dispatch_id == tool.calls[0]["webhook_id"] and decision.api_key_id == key_a.api_key.pk
    assert ledger.verify(decision.account_id).ok  # written by the one-statement path on PostgreSQL: same hash
    rollup = DecisionRollup.objects.get(agent=decision.agent)
    assert (rollup.outcome, rollup.count, rollup.spend_usd) == ("executed", 1, 2)


def test_an_intent_recorded_already_is_not_recorded_twice(key_a, tool):
    agent = Agent.objects.get_or_create(account_id=key_a.api_key.account_id, agent_id=AGENT)[0]
    intent = DispatchIntent.objects.create(
        account_id=agent.account_id,
        agent=agent,
        created_at=timezone.now(),
        tool=TOOL,
        args_hash="b" * 64,
        risk_level="high",
        dispatch_id="d",
    )
    DispatchIntent.objects.filter(pk=intent.pk).delete()  # the sweeper got there first
    with pytest.raises(services.IntentGone):
        services._record(
            agent,
            None,
            intent.pk,
            tool=TOOL,
            args_hash="b" * 64,
            risk_level="high",
            outcome="executed",
            allowed=True,
            policy_reason="within_budget",
            dispatch_id="d",
        )
    assert not Decision.objects.exists() and not DecisionRollup.objects.exists()


def test_an_intent_left_behind_counts_against_the_caps_after_a_redis_loss(key_a, tool):
    """The state a crash after the dispatch leaves: an intent row, no decision, Redis lost."""
    client = key_a.client()
    cap_actions(client, 1)
    agent = Agent.objects.get(agent_id=AGENT)
    DispatchIntent.objects.create(
        account_id=agent.account_id,
        agent=agent,
        created_at=timezone.now(),
        tool=TOOL,
        args_hash="0" * 64,
        risk_level="high",
        spend_usd=2,
        dispatch_id="lost",
    )
    get_redis().flushdb()
    body = call(client, order=2).json()
    assert (body["decision"], body["policy_reason"]) == ("blocked", "hourly_action_limit_exceeded")
    assert tool.calls == []


def test_the_sweeper_records_stale_intents_once_and_leaves_live_ones(key_a, tool):
    agent = Agent.objects.get_or_create(account_id=key_a.api_key.account_id, agent_id=AGENT)[0]
    dispatched_at = timezone.now() - timedelta(minutes=5)

    def intent(created_at, dispatch_id):
        return DispatchIntent.objects.create(
            account_id=agent.account_id,
            agent=agent,
            created_at=created_at,
            tool=TOOL,
            args_hash="a" * 64,
            run_id="run-7",
            risk_level="high",
            spend_usd="1.5",
            dispatch_id=dispatch_id,
        )

    intent(dispatched_at, "stale")
    live = intent(timezone.now(), "live")
    assert services.dispatch_intents_record() == 1
    decision = Decision.objects.get()
    assert (decision.outcome, decision.policy_reason, decision.allowed) == ("failed", "outcome_unknown", False)
    assert decision.ts == dispatched_at and decision.dispatch_id == "stale" and decision.spend_usd == 1.5
    assert decision.run_id == "run-7" and decision.row_hash  # chained like any decision
    assert list(DispatchIntent.objects.all()) == [live]
    assert services.dispatch_intents_record() == 0  # nothing recorded twice


@pytest.mark.django_db(transaction=True)
def test_database_lost_after_the_dispatch_keeps_the_call_counted(key_a, tool, plans):
    """A real fault: the server's PostgreSQL connection is terminated while the tool is being called. The call
    answers 503; the tool ran once; a retry is deduplicated, not dispatched again; the cap still counts the call,
    also after Redis is flushed; the sweeper then records it as failed / outcome_unknown."""
    if connection.vendor != "postgresql":
        pytest.skip("terminates a PostgreSQL backend")
    client = key_a.client()
    cap_actions(client, 2)
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid

    def terminate_the_servers_connection() -> None:
        with psycopg.connect(servers.test_database_url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    tool.on_call = terminate_the_servers_connection
    lost = call(client, order=3)
    tool.on_call = None
    assert lost.status_code == 503 and lost.json()["detail"]["error"] == "service_unavailable"
    connection.close()  # the test shares the (terminated) connection with the in-process server
    assert len(tool.calls) == 1
    assert Decision.objects.count() == 0
    left = DispatchIntent.objects.get()
    assert left.dispatch_id == tool.calls[0]["webhook_id"]

    retry = call(client, order=3).json()
    assert retry["decision"] == "dedup" and len(tool.calls) == 1  # the tool may have run: not called again
    assert call(client, order=4).json()["decision"] == "executed"  # the second of two actions
    assert call(client, order=5).json()["policy_reason"] == "hourly_action_limit_exceeded"
    get_redis().flushdb()
    assert call(client, order=6).json()["policy_reason"] == "hourly_action_limit_exceeded"  # rebuilt with it
    assert len(tool.calls) == 2

    assert services.dispatch_intents_record(grace=timedelta(0)) == 1
    assert not DispatchIntent.objects.exists()
    unknown = Decision.objects.get(policy_reason="outcome_unknown")
    assert unknown.outcome == "failed" and unknown.dispatch_id == tool.calls[0]["webhook_id"]
    get_redis().flushdb()
    assert call(client, order=7).json()["policy_reason"] == "hourly_action_limit_exceeded"  # still counted


def test_redis_lost_after_the_decision_is_written_still_answers_executed(key_a, tool, private_redis):
    """A real fault: a private Redis is killed while the tool is being called. The decision is durable by the time
    Redis is needed again, so the call answers what happened (executed), not a 503 an agent would retry."""
    tool.on_call = private_redis.kill
    answer = call(key_a.client(), order=8)
    assert answer.status_code == 200, answer.content
    assert answer.json()["decision"] == "executed" and answer.json()["result"] == {"refunded": True}
    assert Decision.objects.get().outcome == "executed" and not DispatchIntent.objects.exists()
    tool.on_call = None
    private_redis.start()  # empty: rebuilt from the decision log on the next call
    again = call(key_a.client(), order=8).json()
    assert again["decision"] == "dedup" and again["result"] == {"refunded": True} and len(tool.calls) == 1


def test_a_call_slower_than_the_sweeper_answers_with_the_sweepers_decision(key_a, tool, monkeypatch):
    """The sweeper recorded the dispatch (outcome_unknown) before the call could: the call's own write finds its intent
    gone (IntentGone) and answers with the decision the sweeper wrote, looked up by its dispatch id within a bounded
    time range of the decision log — one decision for the call, never two."""
    real = services.call_record

    def sweeper_first(call_, ending):
        DispatchIntent.objects.update(created_at=timezone.now() - timedelta(minutes=2))  # past the sweeper's grace
        assert services.dispatch_intents_record() == 1
        return real(call_, ending)

    monkeypatch.setattr(services, "call_record", sweeper_first)
    body = call(key_a.client(), order=7).json()
    [decision] = Decision.objects.all()
    assert body["decision_id"] == decision.pk and (decision.outcome, decision.policy_reason) == (
        "failed",
        "outcome_unknown",
    )
    assert not DispatchIntent.objects.exists()
