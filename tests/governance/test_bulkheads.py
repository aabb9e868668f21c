"""Bulkheads and one clock per call (docs/operations.md §"Slow tools and bulkheads").

A dispatched governed call takes a slot of its web process, its account and its tool before anything is reserved;
over a limit it is refused at once — 429 dispatch_busy with Retry-After — with no reservation, no charge and no
decision. Slots are leases: given back when the dispatch ends, lapsing on their own when the process holding them
dies. The dispatch deadline counts from the request's arrival (X-Request-Start from the proxy).

Real parts: the live server (threads), a tool endpoint on loopback that holds its answer until the test lets it go,
Redis; the crash case kills a real process holding a slot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from billing.models import Plan
from governance import slots
from governance.models import Decision, DispatchIntent
from onceonly_site import clock
from onceonly_site.redis_client import get_redis
from tests.support.governance import register_tool
from tests.support.servers import ROOT, server_env
from tests.support.tool_endpoint import ToolEndpoint

AGENT = "billing-agent"


@pytest.fixture
def endpoint(settings):
    """A tool endpoint whose calls wait until ``gate`` is set (at most 10 s)."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    tool.gate = threading.Event()
    tool.on_call = lambda: tool.gate.wait(10)
    yield tool
    tool.gate.set()
    tool.stop()


def _register(key, endpoint, name: str) -> None:
    response = register_tool(key.client(), name, f"{endpoint.base}/{name}", price_usd=1)
    assert response.status_code == 200, response.content


class Caller:
    """Governed calls through the live server, each in its own thread; ``wait_in_tool(n)`` until n reach the tool."""

    def __init__(self, live_server, key) -> None:
        self.http = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {key.raw}"}, timeout=30)
        self.answers: list[httpx.Response] = []
        self.threads: list[threading.Thread] = []

    def call(self, tool: str, **headers: str) -> httpx.Response:
        body = {"agent_id": AGENT, "tool": tool, "args": {"n": uuid.uuid4().hex}}
        return self.http.post("/v1/ai/run", json=body, headers=headers)

    def in_background(self, tool: str) -> None:
        thread = threading.Thread(target=lambda: self.answers.append(self.call(tool)))
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(20)


def wait_in_tool(endpoint: ToolEndpoint, count: int) -> None:
    until = time.monotonic() + 10
    while len(endpoint.calls) < count:
        assert time.monotonic() < until, f"{len(endpoint.calls)} of {count} calls reached the tool"
        time.sleep(0.01)


def test_a_call_over_the_tool_limit_is_refused_at_once_and_reserves_nothing(
    live_server, key_a, owner_a, endpoint, settings, client
):
    settings.ONCEONLY_DISPATCH_SLOTS_PER_TOOL = 2
    _register(key_a, endpoint, "stripe.refund")
    caller = Caller(live_server, key_a)
    for _ in range(2):
        caller.in_background("stripe.refund")
    wait_in_tool(endpoint, 2)
    decisions, intents = Decision.objects.count(), DispatchIntent.objects.count()
    hour_key = next(iter(get_redis().scan_iter(match=f"oo:{{a{key_a.api_key.account_id}}}:gov:*:hour")))
    reserved = get_redis().zcard(hour_key)

    started = time.monotonic()
    refused = caller.call("stripe.refund")
    took = time.monotonic() - started

    assert refused.status_code == 429, refused.content
    detail = refused.json()["detail"]
    assert detail["error"] == "dispatch_busy" and detail["scope"] == "tool"
    assert (detail["in_flight"], detail["limit"]) == (2, 2)
    assert 1 <= int(refused.headers["Retry-After"]) <= 4 and detail["retry_after"] == int(
        refused.headers["Retry-After"]
    )
    assert took < 1.0, f"refused after {took:.2f} s: it waited for the tool"
    # Nothing reserved, charged, counted or recorded; the tool never saw it.
    assert get_redis().zcard(hour_key) == reserved == 2
    assert (Decision.objects.count(), DispatchIntent.objects.count()) == (decisions, intents)
    assert len(endpoint.calls) == 2

    # The Tools page shows the slots in use and flags the tool.
    page = owner_a.login(client).get("/tools/").content.decode()
    assert "Calls waiting on tools now: <strong>2 of 8</strong>" in page
    row = page[page.index(">stripe.refund<") :]
    assert "2 of 2" in row[: row.index("</tr>")] and "hit its limit" in row[: row.index("</tr>")]

    endpoint.gate.set()
    caller.join()
    assert sorted(r.json()["decision"] for r in caller.answers) == ["executed", "executed"]
    # The slots were given back the moment the dispatches ended: the next call runs.
    assert slots.usage(key_a.api_key.account_id, None, ["stripe.refund"]).tools["stripe.refund"].in_flight == 0
    assert caller.call("stripe.refund").json()["decision"] == "executed"
    # The Tools page's flag and /metrics' counter saw the refusal.
    flags = slots.usage(key_a.api_key.account_id, None, ["stripe.refund"]).tools["stripe.refund"]
    assert flags.busy == 1 and flags.busy_recently(int(time.time() * 1000))
    assert slots.totals()["refused:tool"] >= 1


def test_the_plan_sets_the_account_limit_across_tools(live_server, key_a, endpoint, settings):
    Plan.objects.filter(code=key_a.api_key.account.plan.code).update(dispatch_slots=1)
    _register(key_a, endpoint, "stripe.refund")
    _register(key_a, endpoint, "email.send")
    caller = Caller(live_server, key_a)
    caller.in_background("stripe.refund")
    wait_in_tool(endpoint, 1)

    refused = caller.call("email.send")

    assert refused.status_code == 429, refused.content
    assert refused.json()["detail"] | {"message": ""} == {
        "error": "dispatch_busy",
        "message": "",
        "scope": "account",
        "in_flight": 1,
        "limit": 1,
        "retry_after": int(refused.headers["Retry-After"]),
    }
    assert "this account" in refused.json()["detail"]["message"]
    endpoint.gate.set()
    caller.join()
    assert caller.call("email.send").json()["decision"] == "executed"


def test_a_permit_only_call_takes_no_slot(live_server, key_a, endpoint, settings):
    """Only calls that will wait on a tool are bounded: an unregistered tool's call is decided and answered."""
    settings.ONCEONLY_DISPATCH_SLOTS_PER_ACCOUNT = 1
    _register(key_a, endpoint, "stripe.refund")
    caller = Caller(live_server, key_a)
    caller.in_background("stripe.refund")
    wait_in_tool(endpoint, 1)
    answer = caller.call("search.web")
    assert answer.status_code == 200 and answer.json()["decision"] == "allowed"
    endpoint.gate.set()
    caller.join()


def test_the_process_limit_keeps_threads_free(live_server, key_a, endpoint, settings):
    settings.ONCEONLY_DISPATCH_SLOTS_PER_PROCESS = 1
    _register(key_a, endpoint, "stripe.refund")
    _register(key_a, endpoint, "email.send")
    caller = Caller(live_server, key_a)
    caller.in_background("stripe.refund")
    wait_in_tool(endpoint, 1)
    refused = caller.call("email.send")
    assert refused.status_code == 429 and refused.json()["detail"]["scope"] == "process", refused.content
    assert slots.process_in_use() == 1
    endpoint.gate.set()
    caller.join()
    assert slots.process_in_use() == 0


def test_the_deadline_counts_from_the_proxys_arrival_stamp(live_server, key_a, endpoint, settings):
    """X-Request-Start (nginx's t=${msec}) says the request waited: the dispatch gets only what is left of the
    deadline — and none at all when it is used up, answered at once and nothing reserved."""
    settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS = 2.0
    _register(key_a, endpoint, "stripe.refund")
    caller = Caller(live_server, key_a)

    used_up = caller.call("stripe.refund", **{"X-Request-Start": f"t={time.time() - 2.5:.3f}"})
    assert used_up.status_code == 429 and used_up.json()["detail"]["scope"] == "deadline", used_up.content
    assert endpoint.calls == [] and Decision.objects.count() == 0

    started = time.monotonic()
    cut = caller.call("stripe.refund", **{"X-Request-Start": f"t={time.time() - 1.4:.3f}"})  # 0.6 s left
    took = time.monotonic() - started
    assert cut.status_code == 200 and cut.json()["decision"] == "failed", cut.content
    assert 0.4 < took < 1.2, f"the dispatch had ~0.6 s left and took {took:.2f} s"
    decision = Decision.objects.get()
    assert decision.explain["error"].startswith("timed out after 0."), decision.explain
    flags = slots.usage(key_a.api_key.account_id, None, ["stripe.refund"]).tools["stripe.refund"]
    assert flags.deadline == 1

    # A stamp from the future (or a forged one) is "now", never more time.
    started = time.monotonic()
    late = caller.call("stripe.refund", **{"X-Request-Start": f"t={time.time() + 3600:.3f}"})
    assert late.json()["decision"] == "failed" and 1.8 < time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    "header, queued",
    [
        ("t=1000000000.000", None),  # seconds with a fraction (nginx's $msec): 10 s before "now" below
        ("1000000000000", None),  # milliseconds
        ("1000000000000000", None),  # microseconds
        ("t=abc", 0.0),
        ("", 0.0),
        ("t=nan", 0.0),
        ("t=-5", 0.0),
        ("t=999999000.0", 0.0),  # 1,010 s ago: older than any queue, a wrong clock
        ("t=1000000020.0", 0.0),  # in the future
    ],
)
def test_x_request_start_forms(header, queued):
    now = 1000000010.0
    assert clock.queued_seconds(header, now) == pytest.approx(10.0 if queued is None else queued)


CRASHER = """
import os, sys, time, django
django.setup()
from governance import slots
slots.MARGIN_SECONDS = 0.5
account, deadline = int(sys.argv[1]), time.monotonic() + 0.5
slots.take(account_id=account, tool="stripe.refund", plan_slots=None, member="crashed", deadline=deadline)
print("held", flush=True)
time.sleep(60)
"""


def test_a_slot_held_by_a_killed_process_lapses_at_its_deadline_plus_the_margin(key_a, settings):
    settings.ONCEONLY_DISPATCH_SLOTS_PER_TOOL = 1
    account = key_a.api_key.account_id
    env = server_env(ONCEONLY_DISPATCH_SLOTS_PER_TOOL="1")
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(account)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        held_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
    with pytest.raises(slots.DispatchBusy) as busy:
        slots.take(account_id=account, tool="stripe.refund", plan_slots=None, member="a", deadline=time.monotonic() + 2)
    assert busy.value.scope == "tool"
    time.sleep(max(0.0, held_at + 1.1 - time.monotonic()))  # its deadline (0.5 s) and margin (0.5 s) have passed
    taken = slots.take(
        account_id=account, tool="stripe.refund", plan_slots=None, member="b", deadline=time.monotonic() + 2
    )
    taken.release()
    assert slots.usage(account, None, ["stripe.refund"]).tools["stripe.refund"].in_flight == 0
