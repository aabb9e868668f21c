"""The dashboard's test calls are decided under agent `onceonly-operator`, which no list of the console shows as an
agent. The API refuses to act as it or change it (a 422 at `agent_id`, nothing written), so no real agent can hide
behind the name; reading its logs stays possible."""

from __future__ import annotations

import pytest

from governance.models import Agent, Decision, PolicyVersion
from governance.services import OPERATOR_AGENT
from tests.support.governance import JSON


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/ai/run", {"agent_id": OPERATOR_AGENT, "tool": "evil.x"}),
        (f"/v1/policies/{OPERATOR_AGENT}", {"max_actions_per_hour": 1}),
        (f"/v1/policies/{OPERATOR_AGENT}/from-template", {"template": "strict"}),
        (f"/v1/agents/{OPERATOR_AGENT}/disable", {"reason": "hide"}),
        (f"/v1/agents/{OPERATOR_AGENT}/enable", {}),
    ],
)
def test_the_operator_agent_is_reserved(key_a, path, body):
    response = key_a.client().post(path, body, content_type=JSON)
    assert response.status_code == 422, response.content
    problems = response.json()["detail"]
    assert any(p["loc"][-1] == "agent_id" and "reserved" in p["msg"] for p in problems), problems
    assert not Agent.objects.exists() and not Decision.objects.exists() and not PolicyVersion.objects.exists()


def test_other_agent_ids_and_reading_the_operator_logs_still_work(key_a):
    client = key_a.client()
    assert (
        client.post("/v1/ai/run", {"agent_id": OPERATOR_AGENT + "-2", "tool": "t"}, content_type=JSON).status_code
        == 200
    )
    assert client.get(f"/v1/agents/{OPERATOR_AGENT}/logs").status_code == 200
