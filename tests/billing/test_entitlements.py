"""Every gated feature on every plan: allowed, or 403 feature_not_available (an ApiError in the SDK)."""

import pytest
from onceonly import OnceOnly
from onceonly.exceptions import ApiError

from billing.services import account_set_plan
from tests.conftest import make_key

GATED = {
    # feature: (request, plans that have it) — docs/architecture.md §7.1
    "policies": (("post", "/v1/policies/a", {"max_actions_per_hour": 5}), {"pro", "agency"}),
    "policy list": (("get", "/v1/policies", None), {"pro", "agency"}),
    "governed call": (("post", "/v1/ai/run", {"agent_id": "a", "tool": "t"}), {"pro", "agency"}),
    "agent logs": (("get", "/v1/agents/a/logs", None), {"pro", "agency"}),
    "agent metrics": (("get", "/v1/agents/a/metrics", None), {"pro", "agency"}),
    "templates": (
        ("post", "/v1/policies/a/from-template", {"template": "moderate", "overrides": {}}),
        {"pro", "agency"},
    ),
    "allowed_tools": (("post", "/v1/policies/a", {"allowed_tools": ["x"]}), {"agency"}),
    "kill switch": (("post", "/v1/agents/a/disable", {"reason": "r"}), {"agency"}),
}


@pytest.mark.parametrize("plan_code", ["free", "starter", "pro", "agency"])
@pytest.mark.parametrize("feature", list(GATED))
def test_feature_matrix(account_a, plans, plan_code, feature):
    account_set_plan(account=account_a, plan=plans[plan_code])
    (method, path, body), allowed_on = GATED[feature]
    client = make_key(account_a).client()
    response = (
        getattr(client, method)(path, body or {}, content_type="application/json")
        if method == "post"
        else client.get(path)
    )
    if plan_code in allowed_on:
        assert response.status_code == 200, response.content
    else:
        assert response.status_code == 403
        assert response.json()["detail"]["error"] == "feature_not_available"
        assert response.json()["detail"]["plan"] == plan_code


def test_the_sdk_raises_api_error_with_403_not_unauthorized(live_server, account_a, plans):
    account_set_plan(account=account_a, plan=plans["starter"])
    client = OnceOnly(api_key=make_key(account_a).raw, base_url=f"{live_server.url}/v1", fail_open=False)
    with client, pytest.raises(ApiError) as caught:
        client.gov.agent_metrics("a")
    assert caught.value.status_code == 403
    assert caught.value.detail["error"] == "feature_not_available"
