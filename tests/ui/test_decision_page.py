"""The decision page: /decisions/<id>/ opened directly is a full page (nav, title) with the explanation first; asked
for by htmx (the drawer) it is the fragment alone. Tenant-scoped, query count pinned; rows link to it everywhere."""

from __future__ import annotations

import re

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils.html import escape

from governance.models import Agent, Decision, Tool
from tests.support.governance import JSON, register_tool, set_policy


def call(key, agent="billing-agent", tool="stripe.refund", **body):
    response = key.client().post("/v1/ai/run", {"agent_id": agent, "tool": tool, **body}, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def capped_and_blocked(key, runs=4):
    """Per-tool cap 3 on stripe.refund (policy v1), run `runs` times: the 4th is blocked."""
    set_policy(key.client(), "billing-agent", max_calls_per_tool={"stripe.refund": 3})
    # The first call is a step of run-7 (args.run_id names the run).
    return [call(key, args={"n": n, **({"run_id": "run-7"} if n == 0 else {})}, spend_usd=0.5) for n in range(runs)]


def test_direct_visit_is_a_full_page_with_the_explanation_first(owner_a, key_a):
    blocked = capped_and_blocked(key_a)[-1]
    assert blocked["policy_reason"] == "tool_call_limit_exceeded"
    client = owner_a.login(Client())
    response = client.get(f"/decisions/{blocked['decision_id']}/")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    html = response.content.decode()
    assert '<nav aria-label="Main">' in html and f"<title>Decision #{blocked['decision_id']} · " in html
    sentence = "stripe.refund: per-tool cap reached — 3 of 3 today (policy v1)"
    assert escape(sentence) in html
    # The explanation comes first, then its numbers, then the context.
    assert html.index(escape(sentence)) < html.index("Count before this call") < html.index("Context")
    numbers = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", html))
    assert numbers["Limit"] == "3" and numbers["Count before this call"] == "3 calls today"
    assert numbers["Policy version"] == "v1"
    agent = Agent.objects.get()
    assert f'href="/agents/{agent.pk}/"' in html  # the agent
    assert f'href="/agents/{agent.pk}/policy/?version=1#version-1"' in html  # the policy version
    assert "max_calls_per_tool[&quot;stripe.refund&quot;]" in html


def test_htmx_request_gets_the_fragment_alone(owner_a, key_a):
    first = capped_and_blocked(key_a, runs=1)[0]
    client = owner_a.login(Client())
    response = client.get(f"/decisions/{first['decision_id']}/", headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert "<html" not in html and '<nav aria-label="Main">' not in html
    assert "data-drawer-title>Decision #" in html and "data-explanation" in html
    assert escape(first["explanation"]) in html
    assert 'href="/runs/timeline/?run_id=run-7"' in html  # the run
    assert f'href="/decisions/{first["decision_id"]}/">Open decision' in html


def test_kill_switch_decision_reads_blocked_agent_disabled(owner_a, admin_a, key_a):
    call(key_a, args={"n": 0})
    agent = Agent.objects.get()
    client = admin_a.login(Client())
    client.post(f"/agents/{agent.pk}/kill-switch/", {"reason": "runaway loop", "confirm": "on", "action": "disable"})
    blocked = call(key_a, args={"n": 1})
    html = owner_a.login(Client()).get(f"/decisions/{blocked['decision_id']}/").content.decode()
    assert "stripe.refund: blocked — agent disabled by adam@acme.test at " in html
    assert "runaway loop" in html and "not allowed" not in html
    assert "<dt>Disabled by</dt><dd>adam@acme.test</dd>" in html


def test_dedup_links_the_original_and_a_registered_tool_links_its_entry(owner_a, key_a, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    assert register_tool(key_a.client(), "stripe.refund", "http://127.0.0.1:9/refund", enabled=False).status_code == 200
    call(key_a, tool="send_email", args={"n": 1})
    dedup = call(key_a, tool="send_email", args={"n": 1})
    client = owner_a.login(Client())
    html = client.get(f"/decisions/{dedup['decision_id']}/").content.decode()
    original = dedup["explain"]["original_decision_id"]
    assert f'<a href="/decisions/{original}/">#{original}</a>' in html
    assert "send_email (not registered)" in html
    disabled = call(key_a, args={"n": 2})
    assert disabled["policy_reason"] == "tool_disabled"
    html = client.get(f"/decisions/{disabled['decision_id']}/").content.decode()
    assert 'href="/tools/?q=stripe.refund">stripe.refund (registered, global, disabled)</a>' in html
    assert Tool.objects.count() == 1


def test_another_accounts_decision_is_404(owner_b, key_a):
    decision_id = call(key_a)["decision_id"]
    client = owner_b.login(Client())
    assert client.get(f"/decisions/{decision_id}/").status_code == 404
    assert client.get(f"/decisions/{decision_id}/", headers={"HX-Request": "true"}).status_code == 404
    assert client.get("/decisions/999999/").status_code == 404


def test_query_count_of_the_decision_page_is_pinned(owner_a, key_a):
    bodies = capped_and_blocked(key_a, runs=4)
    client = owner_a.login(Client())

    def count(decision_id, **headers):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/decisions/{decision_id}/", headers=headers).status_code == 200
        return len(queries)

    # session, user, membership (+ nav context), decision with agent and key, registered tool.
    few = (count(bodies[-1]["decision_id"]), count(bodies[-1]["decision_id"], **{"HX-Request": "true"}))
    for n in range(20):
        call(key_a, tool="send_email", args={"more": n})
    assert (count(bodies[0]["decision_id"]), count(bodies[0]["decision_id"], **{"HX-Request": "true"})) == few
    assert few == (5, 5), few


def test_decision_rows_link_to_the_drawer_agent_tool_and_run(viewer_a, key_a):
    first = capped_and_blocked(key_a, runs=1)[0]
    agent = Agent.objects.get()
    client = viewer_a.login(Client())
    for url in ("/decisions/", f"/agents/{agent.pk}/"):
        html = client.get(url).content.decode()
        assert f'data-href="/decisions/{first["decision_id"]}/"' in html, url
        assert f'<a href="/decisions/{first["decision_id"]}/" data-drawer' in html, url
        assert 'href="/runs/timeline/?run_id=run-7"' in html, url
        assert 'href="/decisions/?tool=stripe.refund"' in html, url
    assert f'href="/agents/{agent.pk}/"' in client.get("/decisions/").content.decode()
    assert Decision.objects.count() == 1


def test_the_policy_link_lands_on_its_version(owner_a, key_a):
    blocked = capped_and_blocked(key_a)[-1]
    client = owner_a.login(Client())
    html = client.get(f"/agents/{Agent.objects.get().pk}/policy/", {"version": blocked["policy_version"]}).content
    assert b'<tr id="version-1" class="highlight" aria-current="true">' in html


def test_a_version_older_than_the_fifty_listed_is_still_there_when_linked(owner_a, key_a):
    api = key_a.client()
    for n in range(55):
        body = {"max_actions_per_hour": n + 1}
        assert api.post("/v1/policies/billing-agent", body, content_type="application/json").status_code == 200
    client = owner_a.login(Client())
    url = f"/agents/{Agent.objects.get().pk}/policy/"
    assert b'id="version-1"' not in client.get(url).content  # the latest 50: 55 … 6
    assert b'<tr id="version-1" class="highlight" aria-current="true">' in client.get(url, {"version": 1}).content
    assert "<h3>Version 1 → 2</h3>" in client.get(url, {"a": 1, "b": 2}).content.decode()  # a diff of old versions
