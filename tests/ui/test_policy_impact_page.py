"""The impact preview page (governance/replay_views.py, docs/policy-changes.md): a draft — the editor's fields, a
version, a JSON draft, or an earlier preview over another range — replayed by the Celery task (eager here), its
progress polled by htmx until done, then the sentence, the blocks by reason with drawer links to the decisions, the
calls that would now pass, and recorded against replayed counts. Viewers may run previews; bad drafts are a 422 that
starts nothing; another account's agent or preview is not found."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.test import Client
from django.utils import timezone

from governance.models import Agent, Decision
from governance.tasks import replay_policy_impact
from onceonly_site.celery import app as celery_app
from onceonly_site.redis_client import get_redis
from tests.conftest import make_key

JSON = "application/json"
AGENT = "impact-agent"


@pytest.fixture(autouse=True)
def eager():
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def agent(key_a):
    """Version 1 (no limits) and 12 calls through the live engine: 4 of send_email, 8 of search.web, 2 of them blocked
    under version 2 (search.web blocked)."""
    client = key_a.client()
    assert client.post(f"/v1/policies/{AGENT}", {"max_actions_per_hour": 100}, content_type=JSON).status_code == 200
    for n in range(12):
        tool = "send_email" if n < 4 else "search.web"
        body = {"agent_id": AGENT, "tool": tool, "args": {"n": n}, "spend_usd": 0.5}
        assert client.post("/v1/ai/run", body, content_type=JSON).status_code == 200
    response = client.post(f"/v1/policies/{AGENT}", {"blocked_tools": ["search.*"]}, content_type=JSON)
    assert response.status_code == 200
    for n in range(2):
        body = {"agent_id": AGENT, "tool": "search.web", "args": {"n": 100 + n}}
        assert client.post("/v1/ai/run", body, content_type=JSON).json()["policy_reason"] == "tool_blocked"
    return Agent.objects.get(agent_id=AGENT)


def page(agent):
    return f"/agents/{agent.pk}/policy/impact/"


def text(response) -> str:
    return unescape(re.sub(r"\s+", " ", response.content.decode())).strip()


def start(client, agent, data):
    response = client.post(page(agent), data)
    assert response.status_code == 302, text(response)
    assert response["Location"].startswith(page(agent) + "?job=")
    return response["Location"]


def test_replaying_a_version_shows_the_sentence_the_reasons_and_drawer_links(owner_a, agent):
    client = owner_a.login(Client())
    form = text(client.get(page(agent) + "?version=1"))
    assert '<option value="1" selected>1</option>' in form and '<option value="2">2 (current)</option>' in form
    result = client.get(start(client, agent, {"version": "2", "days": "1"}))
    html = text(result)
    blocked = Decision.objects.filter(agent=agent, tool="search.web").order_by("ts", "id")
    first = blocked.first().ts
    assert (
        f"Of 14 calls, 10 would have been blocked: 10 tool_blocked — first at {first:%H:%M} UTC on "
        f"{first.day} {first:%b %Y}." in html
    )
    assert "Preview of version 2 · last 1 day" in html
    ids = list(blocked.values_list("pk", flat=True))
    for pk in ids[:5]:
        assert f'<a href="/decisions/{pk}/" data-drawer>#{pk}</a>' in html
    assert f"#{ids[5]}<" not in html  # five examples per reason
    assert "Passed, would now be blocked</h3> <p>8 calls that passed would be blocked" in html
    assert "None: every call that was blocked would still be blocked." in html
    assert "<td>tool_blocked</td><td>2</td><td>10</td><td>+8</td>" in html
    assert "<td>within_budget</td><td>12</td><td>4</td><td>-8</td>" in html
    assert "hx-trigger" not in html  # done: nothing polls


def test_the_editors_fields_and_a_json_draft_and_newly_allowed_calls(admin_a, agent):
    client = admin_a.login(Client())
    # The editor's form as it posts (its "Preview impact" button): no search.* block, a spend cap of 1.00 a day.
    fields = {"base_version": "2", "blocked_tools": "", "max_spend_usd_per_day": "1"}
    html = text(client.get(start(client, agent, fields)))
    assert "Preview of the editor's draft · last 7 days" in html
    # 0.50 a call: two send_email calls reach the cap exactly; the calls blocked before pricing declared nothing.
    assert "Of 14 calls, 10 would have been blocked: 10 daily_spend_exceeded" in html
    assert "2 calls that were blocked would pass" in html
    html = text(client.get(start(client, agent, {"policy_json": '{"blocked_tools": ["send_*"]}', "days": "30"})))
    assert "Preview of a JSON draft · last 30 days" in html
    assert "Of 14 calls, 4 would have been blocked: 4 tool_blocked" in html
    # The same draft over another range, from the result's form.
    job = re.search(r'name="job" value="([0-9a-f]{32})"', html).group(1)
    html = text(client.get(start(client, agent, {"job": job, "days": "1"})))
    assert "Preview of a JSON draft · last 1 day" in html


def test_viewers_may_run_previews(viewer_a, agent):
    client = viewer_a.login(Client())
    html = text(client.get(start(client, agent, {"version": "1", "days": "7"})))
    assert "Of 14 calls, none would have been blocked." in html


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"version": "1", "days": "2"}, "Choose a range of 1, 7, 30 days."),
        ({"version": "9", "days": "7"}, "This agent's policy has no version '9'."),
        ({"policy_json": "{nope", "days": "7"}, "The draft is not JSON"),
        ({"policy_json": "[1]", "days": "7"}, "The draft must be a JSON object of policy fields"),
        ({"policy_json": '{"max_actions_per_hour": -1}'}, "max_actions_per_hour: Must be a whole number"),
        ({"policy_json": '{"speed": 1}'}, "speed: Unknown field."),
        ({"max_actions_per_hour": "lots"}, "Max actions per hour: Must be a whole number"),
        ({"job": "0" * 32}, "That preview has expired"),
    ],
)
def test_a_bad_draft_or_range_is_a_422_that_starts_nothing(owner_a, agent, data, problem):
    client = owner_a.login(Client())
    response = client.post(page(agent), data)
    assert response.status_code == 422
    assert problem in text(response)
    assert not get_redis().keys("oo:*:replay:*")


def test_progress_is_polled_until_the_job_is_done(owner_a, agent, monkeypatch):
    client = owner_a.login(Client())
    sent = []
    monkeypatch.setattr(replay_policy_impact, "delay", lambda *args: sent.append(args))  # queued, not run yet
    location = start(client, agent, {"version": "2"})
    job_id = location.rsplit("=", 1)[1]
    poll = f"/agents/{agent.pk}/policy/impact/{job_id}/"
    html = text(client.get(location))
    assert f'hx-get="{poll}" hx-trigger="every 1s" hx-swap="outerHTML"' in html and "queued" in html
    # Running: the fragment shows processed of total, and still polls.
    key = f"oo:{{a{agent.account_id}}}:replay:{job_id}"
    get_redis().hset(key, mapping={"state": "running", "processed": 5000, "total": 20000})
    fragment = text(client.get(poll, headers={"HX-Request": "true"}))
    assert fragment.startswith('<section id="impact-job"') and 'hx-trigger="every 1s"' in fragment
    assert '<progress max="20000" value="5000"' in fragment and "5,000 of 20,000 decisions replayed" in fragment
    get_redis().hset(key, mapping={"state": "queued"})
    replay_policy_impact(*sent[0])
    fragment = text(client.get(poll))
    assert "Of 14 calls, 10 would have been blocked" in fragment and "hx-trigger" not in fragment


def test_a_job_queued_without_a_worker_says_so(owner_a, agent, monkeypatch):
    client = owner_a.login(Client())
    monkeypatch.setattr(replay_policy_impact, "delay", lambda *args: None)
    location = start(client, agent, {"version": "2"})
    key = f"oo:{{a{agent.account_id}}}:replay:{location.rsplit('=', 1)[1]}"
    get_redis().hset(key, "created", 0)
    assert "No Celery worker has been seen lately" in text(client.get(location))


def test_another_accounts_agent_or_preview_is_not_found(owner_a, owner_b, agent, account_b):
    client = owner_a.login(Client())
    job_id = start(client, agent, {"version": "2"}).rsplit("=", 1)[1]
    other = owner_b.login(Client())
    assert other.get(page(agent)).status_code == 404
    assert other.post(page(agent), {"version": "2"}).status_code == 404
    assert other.get(f"/agents/{agent.pk}/policy/impact/{job_id}/").status_code == 404
    # B's own agent cannot read A's job either (the job is kept under A's account).
    theirs = make_key(account_b).client()
    assert theirs.post("/v1/policies/b-agent", {"max_actions_per_hour": 1}, content_type=JSON).status_code == 200
    b_agent = Agent.objects.get(agent_id="b-agent")
    html = text(other.get(f"/agents/{b_agent.pk}/policy/impact/?job={job_id}"))
    assert "That preview has expired or does not exist" in html and "Of 14 calls" not in html
    # …nor does another agent of A's account show it.
    second = Agent.objects.create(account=agent.account, agent_id="second")
    assert "Of 14 calls" not in text(client.get(f"/agents/{second.pk}/policy/impact/?job={job_id}"))
    assert client.get(f"/agents/{agent.pk}/policy/impact/not-a-job/").status_code == 200  # the expired fragment


def test_the_operator_agent_has_no_preview(owner_a, account_a):
    operator = Agent.objects.create(account=account_a, agent_id="onceonly-operator")
    assert owner_a.login(Client()).get(f"/agents/{operator.pk}/policy/impact/").status_code == 404


def test_query_counts_are_pinned(owner_a, agent, django_assert_num_queries):
    client = owner_a.login(Client())
    location = start(client, agent, {"version": "2"})
    client.get(location)  # warm
    # session, user, membership (account, plan), agent, versions — the result itself is read from Redis.
    with django_assert_num_queries(5):
        assert client.get(location).status_code == 200
    with django_assert_num_queries(4):
        assert client.get(f"{page(agent)}{location.rsplit('=', 1)[1]}/").status_code == 200
    # Starting a preview: session, user, membership, agent, the version; then the task (eager): the agent with its
    # plan, the count, the rows (one server-side cursor), the registry, the recorded policy version it needs.
    with django_assert_num_queries(10):
        client.post(page(agent), {"version": "2"})


def test_old_decisions_are_outside_the_range(owner_a, agent):
    Decision.objects.filter(agent=agent, tool="send_email").update(ts=timezone.now() - timedelta(days=3))
    client = owner_a.login(Client())
    assert "Of 10 calls, 10 would have been blocked" in text(
        client.get(start(client, agent, {"version": "2", "days": "1"}))
    )
    assert "Of 14 calls" in text(client.get(start(client, agent, {"version": "2", "days": "7"})))
