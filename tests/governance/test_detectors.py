"""Containment detectors (docs/governance.md §"Containment detectors") on real PostgreSQL/Redis: each detector fires
with its numbers and only past its guard, once per window; alert mode notifies and does not contain; contain mode
flips the kill switch (disabled_by auto) and the one-click release restores the agent; off costs no Redis call; a
Redis that is down never fails the call. The acceptance runs 200 identical blocked calls against a live server."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from django.test import Client
from standardwebhooks.webhooks import Webhook

from billing.models import AuditEntry
from billing.services import api_key_create
from governance import detectors, services
from governance.models import Agent, Alert, ChannelDelivery, Decision
from onceonly_site.redis_client import get_redis
from tests.governance.test_channels import Receiver, add_channel
from tests.support.redis_calls import count_redis_round_trips, lose_redis_state

JSON = "application/json"
AGENT = "loop-bot"
OFF = {name: {"mode": "off"} for name in ("call_loop", "deny_spike", "spend_velocity", "first_high_risk_tool")}


@pytest.fixture(autouse=True)
def eager_celery():
    from onceonly_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture
def api(key_a):
    return key_a.client()


def set_policy(api, policy: dict, agent: str = AGENT) -> None:
    response = api.post(f"/v1/policies/{agent}", policy, content_type=JSON)
    assert response.status_code == 200, response.content


def call(api, tool: str, args: dict | None = None, spend: float | None = None, agent: str = AGENT) -> dict:
    body: dict = {"agent_id": agent, "tool": tool, "args": args or {"n": 1}}
    if spend is not None:
        body["spend_usd"] = spend
    response = api.post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def alerts(code: str | None = None) -> list[Alert]:
    found = Alert.objects.filter(kind="detector").order_by("pk")
    return list(found.filter(code=code) if code else found)


def detectors_with(**chosen) -> dict:
    return {**OFF, **chosen}


# --- call_loop ----------------------------------------------------------------------------------------------------


def test_call_loop_contains_past_its_count_once_with_its_numbers(api, account_a):
    set_policy(api, {"blocked_tools": ["stripe.refund"], "detectors": detectors_with(call_loop={"count": 5})})
    for _ in range(5):
        assert call(api, "stripe.refund")["policy_reason"] == "tool_blocked"
    assert alerts() == [] and Agent.objects.get(agent_id=AGENT).is_enabled  # at the limit: not past it

    assert call(api, "stripe.refund")["policy_reason"] == "tool_blocked"  # the 6th: recorded, then contained
    (alert,) = alerts("call_loop")
    assert alert.mode == "contain" and alert.data["contained"] is True
    assert alert.data["count"] == 6 and alert.data["blocked"] == 6 and alert.data["limit"] == 5
    assert "the same stripe.refund call" in alert.message and "blocked 6 times in 10 min (limit 5)" in alert.message
    agent = Agent.objects.get(agent_id=AGENT)
    assert not agent.is_enabled and agent.disabled_by == "auto" and agent.disabled_reason == alert.message

    stopped = call(api, "stripe.refund")
    assert (stopped["decision"], stopped["policy_reason"]) == ("blocked", "agent_disabled")
    assert stopped["explain"]["disabled_by"] == "auto" and "blocked 6 times" in stopped["explain"]["disabled_reason"]
    for _ in range(10):  # agent_disabled calls are not counted: no second containment, no second alert
        call(api, "stripe.refund")
    assert len(alerts()) == 1
    audit = AuditEntry.objects.get(action="governance.agent.disabled")
    assert audit.actor_label == "auto" and "call_loop" in audit.data["reason"]


def test_call_loop_counts_dedups_and_other_args_apart(api):
    set_policy(api, {"detectors": detectors_with(call_loop={"count": 3, "mode": "alert"})})
    assert call(api, "search.web", {"q": "same"})["decision"] == "allowed"
    for _ in range(3):
        assert call(api, "search.web", {"q": "same"})["decision"] == "dedup"
        call(api, "search.web", {"q": f"other {time.monotonic_ns()}"})  # other args: counters of their own
    assert alerts() == []
    assert call(api, "search.web", {"q": "same"})["decision"] == "dedup"  # the 4th repeat
    (alert,) = alerts("call_loop")
    assert alert.mode == "alert" and alert.data["deduplicated"] == 4 and "deduplicated 4 times" in alert.message
    assert Agent.objects.get(agent_id=AGENT).is_enabled  # alert mode: told, not stopped


def test_calls_waiting_on_an_approval_are_not_a_loop(api):
    """An agent polling its approval request repeats the same call by design."""
    set_policy(api, {"require_approval": ["stripe.refund"], "detectors": detectors_with(call_loop={"count": 2})})
    for _ in range(5):
        assert call(api, "stripe.refund")["policy_reason"] == "approval_required"
    assert alerts() == [] and Agent.objects.get(agent_id=AGENT).is_enabled


# --- deny_spike ---------------------------------------------------------------------------------------------------


def test_deny_spike_fires_past_its_minimum_volume_with_the_share(api):
    set_policy(
        api,
        {
            "blocked_tools": ["delete_*"],
            "detectors": detectors_with(deny_spike={"mode": "alert", "share": 0.5, "min_calls": 10}),
        },
    )
    for n in range(4):
        call(api, "search.web", {"q": n})
    for n in range(5):
        assert call(api, "delete_user", {"id": n})["decision"] == "blocked"
    assert alerts() == []  # 5 of 9 blocked, but fewer than 10 calls
    call(api, "delete_user", {"id": 99})
    (alert,) = alerts("deny_spike")
    assert alert.data["blocked"] == 6 and alert.data["calls"] == 10 and alert.data["share"] == 0.6
    assert "6 of the agent's last 10 calls in 10 min were blocked (60%, threshold 50%, at least 10 calls)" in (
        alert.message
    )
    for n in range(5):  # still spiking: once per window
        call(api, "delete_user", {"id": 100 + n})
    assert len(alerts()) == 1 and Agent.objects.get(agent_id=AGENT).is_enabled


# --- spend_velocity -----------------------------------------------------------------------------------------------


def test_spend_velocity_without_history_fires_at_its_minimum_spend(api):
    set_policy(api, {"detectors": detectors_with(spend_velocity={"mode": "alert", "min_spend_usd": 5.0})})
    for n in range(4):
        call(api, "search.web", {"q": n}, spend=1.0)
    assert alerts() == []  # $4.00: under the guard
    call(api, "search.web", {"q": 5}, spend=1.0)
    (alert,) = alerts("spend_velocity")
    assert alert.data["spend_usd"] == 5.0 and alert.data["active_hours"] == 0
    assert "$5.00 spent in the last 10 min, with no spend in the trailing 24 h" in alert.message


def test_spend_velocity_against_the_trailing_baseline(api):
    set_policy(api, {"detectors": detectors_with(spend_velocity={"mode": "contain", "min_spend_usd": 5.0})})
    agent = Agent.objects.get(agent_id=AGENT)
    # Three earlier hours with $60.00 spent in each (the hour ring's documented layout): a baseline of $10.00 per
    # 10 minutes over the 3 active hours; factor 5 → more than $50.00 in 10 minutes fires.
    hour = int(time.time() // 3600)
    ring = {}
    for back in (1, 2, 5):
        slot = (hour - back) % 25
        ring.update({f"t{slot}": hour - back, f"c{slot}": 30, f"s{slot}": 60_000_000})
    get_redis().hset(f"{detectors.key_prefix(agent)}:hr", mapping=ring)
    for n in range(5):
        call(api, "search.web", {"q": n}, spend=10.0)
    assert alerts() == []  # $50.00: exactly 5×, not above it
    call(api, "search.web", {"q": 6}, spend=10.0)
    (alert,) = alerts("spend_velocity")
    assert alert.data["baseline_usd"] == 10.0 and alert.data["active_hours"] == 3
    assert (
        "$60.00 spent in the last 10 min, 6.0× the agent's trailing 24 h baseline of $10.00 per 10 min "
        "(3 active hours) (limit 5×, at least $5.00)" in alert.message
    )
    agent.refresh_from_db()
    assert agent.disabled_by == "auto" and "spend_velocity" in agent.disabled_reason


# --- first_high_risk_tool -----------------------------------------------------------------------------------------


def test_first_high_risk_tool_fires_once_per_tool_on_use_not_on_a_block(api):
    set_policy(
        api, {"blocked_tools": ["drop_table"], "detectors": detectors_with(first_high_risk_tool={"mode": "alert"})}
    )
    call(api, "search.web")  # low risk
    assert call(api, "drop_table")["decision"] == "blocked"  # high risk, but not used
    assert alerts() == []
    call(api, "stripe.refund", {"charge": 1})
    call(api, "stripe.refund", {"charge": 2})
    (alert,) = alerts("first_high_risk_tool")
    assert alert.data["tool"] == "stripe.refund" and "first call of the high-risk tool stripe.refund" in alert.message
    call(api, "delete_user")
    assert [a.data["tool"] for a in alerts()] == ["stripe.refund", "delete_user"]
    # Redis lost the set (or the detector started watching an agent with a past): the decision log's rollups say
    # the agent used these tools before — not a first use.
    lose_redis_state()
    call(api, "stripe.refund", {"charge": 3})
    call(api, "delete_user", {"id": 2})
    assert len(alerts()) == 2


# --- costs and failures -------------------------------------------------------------------------------------------


def test_detectors_off_cost_no_redis_call_and_on_cost_one(api):
    set_policy(api, {"detectors": OFF})
    call(api, "search.web", {"q": "warm"})
    with count_redis_round_trips() as off:
        call(api, "search.web", {"q": "a"})
    set_policy(api, {"detectors": None})  # the defaults: call_loop contain, deny_spike and first_high_risk_tool alert
    call(api, "search.web", {"q": "warm again"})
    with count_redis_round_trips() as on:
        call(api, "search.web", {"q": "b"})
    assert on.count == off.count + 1  # one EVALSHA per decision


def test_redis_down_does_not_fail_the_call(api, account_a, settings, caplog):
    set_policy(api, {"blocked_tools": ["stripe.refund"]})
    resolved = services.call_resolve(
        account_id=account_a.pk,
        agent_id=AGENT,
        tool="stripe.refund",
        args={"n": 1},
        run_id=None,
        dry_run=False,
        finishes_run=True,
        api_key_id=None,
    )
    stop = services.call_policy(resolved)
    assert stop is not None and stop.reason == "tool_blocked"
    get_redis.cache_clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    try:
        outcome = services.call_record(resolved, stop)
    finally:
        get_redis.cache_clear()
    assert outcome.decision.pk and Decision.objects.filter(pk=outcome.decision.pk).exists()
    assert "not observed" in caplog.text


def test_contain_mode_on_a_plan_without_the_kill_switch_only_alerts(api, account_a, plans):
    account_a.plan = plans["starter"]
    account_a.save(update_fields=["plan"])
    agent = services.agent_get_or_create(account_id=account_a.pk, agent_id=AGENT)
    services.policy_upsert(
        account_id=account_a.pk,
        agent_id=AGENT,
        changes={"blocked_tools": ["stripe.refund"], "detectors": detectors_with(call_loop={"count": 2})},
        actor="test",
    )
    decision = Decision.objects.create(
        account_id=account_a.pk,
        agent=agent,
        ts=datetime.now(UTC),
        tool="x",
        outcome="blocked",
        policy_reason="x",
        allowed=False,
    )
    fired = detectors.Fired("call_loop", "call_loop: test", {"count": 3}, "t1")
    alert = detectors.fire(agent, fired, "contain", tool="x", decision=decision)
    assert alert.data == {
        "count": 3,
        "decision_id": decision.pk,
        "contained": False,
        "not_contained": "the plan has no kill switch",
    }
    assert Agent.objects.get(pk=agent.pk).is_enabled
    assert detectors.fire(agent, fired, "contain", tool="x", decision=decision) is None  # the same firing: once


# --- release ------------------------------------------------------------------------------------------------------


def contain(api, count: int = 3) -> Agent:
    set_policy(api, {"blocked_tools": ["stripe.refund"], "detectors": detectors_with(call_loop={"count": count})})
    for _ in range(count + 1):
        call(api, "stripe.refund")
    agent = Agent.objects.get(agent_id=AGENT)
    assert agent.disabled_by == "auto"
    return agent


def test_the_agent_page_shows_why_and_releases_in_one_click(api, owner_a, viewer_a):
    agent = contain(api)
    page = owner_a.login(Client()).get(f"/agents/{agent.pk}/").content.decode()
    assert "Contained by the call_loop detector" in page and "blocked 4 times in 10 min (limit 3)" in page
    assert f'action="/agents/{agent.pk}/release/"' in page

    viewer = viewer_a.login(Client())
    assert "Release</button>" not in viewer.get(f"/agents/{agent.pk}/").content.decode()
    assert viewer.post(f"/agents/{agent.pk}/release/").status_code == 403
    assert Agent.objects.get(pk=agent.pk).disabled_by == "auto"

    owner = owner_a.login(Client())
    assert owner.post(f"/agents/{agent.pk}/release/").status_code == 302
    agent.refresh_from_db()
    assert agent.is_enabled and agent.disabled_by == ""
    (alert,) = alerts()
    assert alert.released_at is not None and alert.released_by == owner_a.email
    released = AuditEntry.objects.get(action="governance.agent.released")
    assert released.actor_label == owner_a.email and released.data["detectors"] == ["call_loop"]
    assert "Contained by" not in owner.get(f"/agents/{agent.pk}/").content.decode()

    # The counters were reset: the loop must happen again in full to contain it again.
    for _ in range(3):
        assert call(api, "stripe.refund")["policy_reason"] == "tool_blocked"
    assert Agent.objects.get(pk=agent.pk).is_enabled
    call(api, "stripe.refund")
    assert Agent.objects.get(pk=agent.pk).disabled_by == "auto" and len(alerts()) == 2


def test_the_release_api_needs_an_admin_key_and_a_contained_agent(api, account_a):
    agent = contain(api)
    refused = api.post(f"/v1/agents/{AGENT}/release", {}, content_type=JSON)
    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "admin_key_required"
    admin = Client(HTTP_AUTHORIZATION=f"Bearer {api_key_create(account=account_a, scope='admin').raw}")
    released = admin.post(f"/v1/agents/{AGENT}/release", {}, content_type=JSON)
    assert released.status_code == 200 and released.json()["is_enabled"] is True
    assert Alert.objects.get(agent=agent).released_by.startswith("api key ")
    again = admin.post(f"/v1/agents/{AGENT}/release", {}, content_type=JSON)
    assert again.status_code == 409 and again.json()["detail"]["error"] == "agent_not_contained"
    # A person's kill switch is not a detector's: /enable, not /release.
    services.agent_set_enabled(account_id=account_a.pk, agent_id=AGENT, enabled=False, reason="manual", actor="ops")
    assert admin.post(f"/v1/agents/{AGENT}/release", {}, content_type=JSON).status_code == 409
    assert admin.post("/v1/agents/nobody/release", {}, content_type=JSON).status_code == 409


def test_an_agents_own_key_cannot_undo_its_containment_through_enable(api, account_a, owner_a):
    """/enable on a contained agent is its release: refused to an agent's key (or a runaway agent would let itself
    go), done with the release's bookkeeping for an admin key and the dashboard's kill-switch toggle."""
    agent = contain(api)
    refused = api.post(f"/v1/agents/{AGENT}/enable", {}, content_type=JSON)
    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "admin_key_required"
    assert Agent.objects.get(pk=agent.pk).disabled_by == "auto"
    # Disabling it again first changes nothing: it stays the detector's, and enable is still refused.
    assert api.post(f"/v1/agents/{AGENT}/disable", {"reason": "me"}, content_type=JSON).status_code == 200
    assert Agent.objects.get(pk=agent.pk).disabled_by == "auto"
    assert api.post(f"/v1/agents/{AGENT}/enable", {}, content_type=JSON).status_code == 403
    admin = Client(HTTP_AUTHORIZATION=f"Bearer {api_key_create(account=account_a, scope='admin').raw}")
    enabled = admin.post(f"/v1/agents/{AGENT}/enable", {"reason": "fixed"}, content_type=JSON)
    assert enabled.status_code == 200 and enabled.json()["is_enabled"] is True
    assert Alert.objects.get(agent=agent).released_at is not None
    assert AuditEntry.objects.filter(action="governance.agent.released").count() == 1

    contain_again = [call(api, "stripe.refund") for _ in range(4)]
    assert contain_again[-1]["policy_reason"] == "tool_blocked" and Agent.objects.get(pk=agent.pk).disabled_by == "auto"
    toggled = owner_a.login(Client()).post(
        f"/agents/{agent.pk}/kill-switch/", {"action": "enable", "reason": "ok", "confirm": "on"}
    )
    assert toggled.status_code == 302 and Agent.objects.get(pk=agent.pk).is_enabled
    assert AuditEntry.objects.filter(action="governance.agent.released").count() == 2
    # A person's kill switch stays a person's: an agent's key enables what a person disabled, as before.
    services.agent_set_enabled(account_id=account_a.pk, agent_id=AGENT, enabled=False, reason="manual", actor="ops")
    assert api.post(f"/v1/agents/{AGENT}/enable", {}, content_type=JSON).status_code == 200


def test_metrics_count_alerts_and_containments_by_detector(api, settings):
    settings.ONCEONLY_METRICS_TOKEN = "metrics-token"
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 0
    contain(api)
    set_policy(api, {"detectors": detectors_with(first_high_risk_tool={"mode": "alert"})}, agent="other")
    call(api, "stripe.refund", agent="other")
    text = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").content.decode()
    assert 'onceonly_detector_alerts_total{detector="call_loop"} 1' in text
    assert 'onceonly_detector_alerts_total{detector="first_high_risk_tool"} 1' in text
    assert 'onceonly_containments_total{detector="call_loop"} 1' in text
    assert 'onceonly_containments_total{detector="first_high_risk_tool"} 0' in text


# --- acceptance: real traffic against a live server ---------------------------------------------------------------


@pytest.mark.slow
def test_acceptance_a_loop_of_200_identical_blocked_calls_is_contained_and_released(live_server, key_a, owner_a):
    v1 = httpx.Client(base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30)
    assert v1.post(f"/policies/{AGENT}", json={"blocked_tools": ["stripe.refund"]}).status_code == 200  # defaults
    body = {"agent_id": AGENT, "tool": "stripe.refund", "args": {"charge": "ch_1", "amount": 500}}
    answers = [v1.post("/ai/run", json=body).json() for _ in range(200)]
    reasons = [answer["policy_reason"] for answer in answers]
    # call_loop's defaults: contain past 50 in 10 minutes — the 51st is recorded and contains the agent.
    assert reasons[:51] == ["tool_blocked"] * 51 and reasons[51:] == ["agent_disabled"] * 149
    (alert,) = alerts("call_loop")
    assert alert.mode == "contain" and alert.data["count"] == 51
    # deny_spike's defaults (alert past 50 % blocked of at least 20 calls) flagged it first, at the 20th call: once.
    (spike,) = alerts("deny_spike")
    assert spike.mode == "alert" and spike.data["calls"] == 20 and spike.created_at < alert.created_at
    assert "the same stripe.refund call" in alert.message and "blocked 51 times in 10 min (limit 50)" in alert.message
    agent = Agent.objects.get(agent_id=AGENT)
    assert agent.disabled_by == "auto" and agent.disabled_reason == alert.message
    stopped = v1.post("/ai/run", json=body).json()
    assert (stopped["decision"], stopped["policy_reason"]) == ("blocked", "agent_disabled")
    assert stopped["explain"]["disabled_by"] == "auto"

    page = owner_a.login(Client()).get(f"/agents/{agent.pk}/").content.decode()
    assert "Contained by the call_loop detector" in page and "blocked 51 times in 10 min (limit 50)" in page
    assert owner_a.login(Client()).post(f"/agents/{agent.pk}/release/").status_code == 302

    allowed = v1.post("/ai/run", json={"agent_id": AGENT, "tool": "search.web", "args": {"q": "x"}}).json()
    assert allowed["decision"] == "allowed"
    again = v1.post("/ai/run", json=body).json()
    assert again["policy_reason"] == "tool_blocked"  # its policy decides again, not the kill switch
    assert Alert.objects.get(pk=alert.pk).released_at is not None


@pytest.mark.slow
def test_acceptance_alert_mode_notifies_a_webhook_and_does_not_contain(live_server, key_a, owner_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    receiver = Receiver()
    try:
        _, secret = add_channel(owner_a.login(Client()), "webhook", receiver.base + "/hook", events=("detector",))
        v1 = httpx.Client(
            base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30
        )
        policy = {"blocked_tools": ["stripe.refund"], "detectors": {"call_loop": {"mode": "alert"}}}
        assert v1.post(f"/policies/{AGENT}", json=policy).status_code == 200
        body = {"agent_id": AGENT, "tool": "stripe.refund", "args": {"charge": "ch_1"}}
        reasons = {v1.post("/ai/run", json=body).json()["policy_reason"] for _ in range(200)}
        assert reasons == {"tool_blocked"}  # never agent_disabled
        assert Agent.objects.get(agent_id=AGENT).is_enabled
        deadline = time.monotonic() + 10
        while not receiver.calls and time.monotonic() < deadline:
            time.sleep(0.05)
        while len(receiver.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # nothing more comes
        # One firing per detector in the window, not 150: deny_spike (its defaults, at the 20th call), call_loop.
        events = [Webhook(secret).verify(d["body"], d["headers"]) for d in receiver.calls]
        assert [(e["type"], e["data"]["detector"]) for e in events] == [
            ("detector", "deny_spike"),
            ("detector", "call_loop"),
        ]
        data = events[1]["data"]
        delivered = receiver.calls[1]
        assert data["detector"] == "call_loop" and data["mode"] == "alert" and data["contained"] is False
        assert data["numbers"]["count"] == 51 and "blocked 51 times in 10 min (limit 50)" in data["message"]
        assert set(ChannelDelivery.objects.values_list("status", flat=True)) == {"delivered"}
        assert json.loads(delivered["body"])["data"]["agent_id"] == AGENT
    finally:
        receiver.stop()


@pytest.mark.browser
def test_acceptance_in_chromium_the_page_shows_why_and_release_restores(page, live_server, admin_a, key_a):
    from playwright.sync_api import expect

    from tests.ui.test_browser_keys import login

    v1 = httpx.Client(base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}, timeout=30)
    assert v1.post(f"/policies/{AGENT}", json={"blocked_tools": ["stripe.refund"]}).status_code == 200
    body = {"agent_id": AGENT, "tool": "stripe.refund", "args": {"charge": "ch_1"}}
    for _ in range(52):
        v1.post("/ai/run", json=body)
    login(page, live_server, admin_a)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Agents").click()
    page.get_by_role("link", name=AGENT).click()
    expect(page.get_by_role("heading", name="Contained by the call_loop detector")).to_be_visible()
    expect(page.get_by_text("was blocked 51 times in 10 min (limit 50)").first).to_be_visible()
    page.get_by_role("button", name="Release").click()
    expect(page.get_by_text(f"{AGENT} released")).to_be_visible()
    expect(page.get_by_role("heading", name="Contained by the call_loop detector")).to_have_count(0)
    assert Agent.objects.get(agent_id=AGENT).is_enabled
    allowed = v1.post("/ai/run", json={"agent_id": AGENT, "tool": "search.web", "args": {"q": "x"}}).json()
    assert allowed["decision"] == "allowed"
