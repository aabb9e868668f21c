"""Shadow mode on the policy page (docs/policy-changes.md §"Shadow mode"): the editor's form started as a candidate
(nothing enforced), its divergence as calls come in, Promote through the same review and confirm as a save (one
version), Stop; viewers see it read-only."""

from __future__ import annotations

import pytest
from django.test import Client

from governance.models import Agent, PolicyVersion
from tests.support.policy_confirm import confirm
from tests.ui.test_policy_confirm import call, changes, set_policy, shown_messages, text, url


@pytest.fixture
def bot(key_a):
    set_policy(key_a, max_actions_per_hour=20)
    return Agent.objects.get(agent_id="bot")


@pytest.fixture
def client(owner_a):
    return owner_a.login(Client())


CANDIDATE = {"base_version": "1", "max_actions_per_hour": "2", "max_spend_usd_per_day": "", "blocked_tools": ""}


def test_start_watch_and_promote_once(client, bot, key_a):
    started = client.post(url("shadow/"), {**CANDIDATE, "action": "start"})
    assert shown_messages(client, started)[0][0] == "success"
    agent = Agent.objects.get()
    assert agent.shadow_policy == {"max_actions_per_hour": 2} and PolicyVersion.objects.count() == 1
    for n in range(4):
        assert call(key_a, args={"n": n})["decision"] == "allowed"  # enforced: 20/h
    page = text(client.get(url()))
    assert "Shadow candidate not enforced" in page
    assert "Of 4 calls, the candidate agrees on 2; it would have blocked 2 that went through" in page
    assert "hourly_action_limit_exceeded — 2" in page
    assert "max_actions_per_hour: 20 → 2" in page

    review = client.post(url("shadow/"), {"action": "promote", "shadow_id": agent.shadow_id})
    assert review.status_code == 200 and PolicyVersion.objects.count() == 1
    assert changes(review) == ["max_actions_per_hour: 20 → 2"]
    promoted = confirm(client, review)
    assert shown_messages(client, promoted) == [("success", "Shadow candidate promoted: now version 2.")]
    assert PolicyVersion.objects.count() == 2
    version = PolicyVersion.objects.get(version=2)
    assert version.policy == {"max_actions_per_hour": 2} and version.source == f"shadow:{agent.shadow_id}"
    agent.refresh_from_db()
    assert agent.shadow_policy is None and "Shadow candidate" not in text(client.get(url()))
    # The same confirm again: that candidate is gone, nothing published.
    again = confirm(client, review)
    assert shown_messages(client, again)[0][0] == "error" and PolicyVersion.objects.count() == 2


def test_a_stale_promote_is_reviewed_again(client, bot, key_a):
    client.post(url("shadow/"), {**CANDIDATE, "action": "start"})
    review = client.post(url("shadow/"), {"action": "promote", "shadow_id": Agent.objects.get().shadow_id})
    set_policy(key_a, max_actions_per_hour=30)  # v2 meanwhile
    stale = confirm(client, review)
    assert stale.status_code == 409 and "it is now version 2" in text(stale)
    assert PolicyVersion.objects.count() == 2 and Agent.objects.get().shadow_policy is not None


def test_stop_and_bad_input(client, bot):
    refused = client.post(url("shadow/"), {**CANDIDATE, "max_actions_per_hour": "lots", "action": "start"})
    assert refused.status_code == 422 and Agent.objects.get().shadow_policy is None
    client.post(url("shadow/"), {**CANDIDATE, "action": "start"})
    stopped = client.post(url("shadow/"), {"action": "stop"})
    assert (
        "success",
        "Shadow candidate stopped. Its recorded outcomes stay in the decision log.",
    ) in shown_messages(client, stopped)
    assert Agent.objects.get().shadow_policy is None
    assert shown_messages(client, client.post(url("shadow/"), {"action": "bogus"}))[0][0] == "error"


def test_viewers_see_it_read_only(bot, key_a, viewer_a, owner_a):
    owner_a.login(Client()).post(url("shadow/"), {**CANDIDATE, "action": "start"})
    viewer = viewer_a.login(Client())
    page = viewer.get(url())
    assert "Shadow candidate" in text(page) and "Promote" not in text(page) and "Try as shadow" not in text(page)
    assert viewer.post(url("shadow/"), {"action": "stop"}).status_code == 403
    assert Agent.objects.get().shadow_policy is not None
