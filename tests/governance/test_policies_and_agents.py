"""Policies (merge upsert, versions, templates, warnings, gating), the kill switch, agent logs and metrics."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import AuditEntry
from billing.services import account_set_plan
from governance.models import Agent, Decision, PolicyVersion
from governance.policies import TEMPLATES
from tests.conftest import make_key


def post(client, path, body=None):
    return client.post(f"/v1/{path}", body or {}, content_type="application/json")


@pytest.fixture
def client(key_a):
    return key_a.client()


def test_merge_upsert_replaces_fields_clears_nulls_and_versions_every_change(client):
    first = post(
        client,
        "policies/billing-agent",
        {"agent_id": "billing-agent", "max_actions_per_hour": 200, "blocked_tools": ["delete_user"]},
    ).json()
    assert first["policy"] == {"blocked_tools": ["delete_user"], "max_actions_per_hour": 200}
    assert first["version"] == 1
    second = post(client, "policies/billing-agent", {"max_spend_usd_per_day": 50, "blocked_tools": None}).json()
    assert second["policy"] == {"max_actions_per_hour": 200, "max_spend_usd_per_day": 50.0}
    assert second["version"] == 2
    same = post(client, "policies/billing-agent", {"max_spend_usd_per_day": 50}).json()
    assert same["version"] == 2  # nothing changed: no new version
    assert list(PolicyVersion.objects.order_by("version").values_list("version", flat=True)) == [1, 2]
    audit = AuditEntry.objects.filter(action="governance.policy.updated").order_by("id")
    assert audit.count() == 2 and audit.last().data["before"] == first["policy"]


def test_unknown_tools_are_accepted_with_warnings(client):
    body = post(client, "policies/support-bot", {"blocked_tools": ["stripe.charge", "delete_*"]}).json()
    assert body["policy"]["blocked_tools"] == ["stripe.charge", "delete_*"]
    assert [w["tool"] for w in body["warnings"]] == ["stripe.charge"]  # globs are not tool names
    post(client, "ai/run", {"agent_id": "x", "tool": "stripe.charge"})  # now a tool the account has called
    assert post(client, "policies/support-bot", {"blocked_tools": ["stripe.charge"]}).json()["warnings"] == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"max_actions_per_hour": -1}, "max_actions_per_hour"),
        ({"max_actions_per_hour": 1.5}, "max_actions_per_hour"),
        ({"max_spend_usd_per_day": "10"}, "max_spend_usd_per_day"),
        ({"max_spend_usd_per_day": -0.01}, "max_spend_usd_per_day"),
        ({"blocked_tools": "delete_user"}, "blocked_tools"),
        ({"blocked_tools": [""]}, "blocked_tools"),
        ({"max_calls_per_tool": {"send_email": -3}}, "max_calls_per_tool.send_email"),
        ({"pricing_rules": [{"tool": "x"}]}, "pricing_rules.0"),
        ({"max_budget": 5}, "max_budget"),
        # Non-zero amounts that 6 decimals keep as 0: a cap that blocks every charged call, a price that is free.
        ({"max_spend_usd_per_day": 1e-9}, "max_spend_usd_per_day"),
        ({"pricing_rules": [{"tool": "x", "price_usd": 4e-7}]}, "pricing_rules.0.price_usd"),
        ({"max_spend_usd_per_day": 5e-324}, "max_spend_usd_per_day"),
    ],
)
def test_invalid_policies_are_422_and_save_nothing(client, payload, field):
    response = post(client, "policies/a1", payload)
    assert response.status_code == 422
    assert ["body", field] in [item["loc"] for item in response.json()["detail"]], response.json()
    assert not PolicyVersion.objects.exists()


def test_amounts_are_kept_to_six_decimals_and_zero_stays_possible(client):
    body = {
        "max_spend_usd_per_day": 0.000001,
        "pricing_rules": [{"tool": "x", "price_usd": 0}, {"tool": "y", "price_usd": 0.0000014}],
    }
    policy = post(client, "policies/a1", body).json()["policy"]
    assert policy["max_spend_usd_per_day"] == 0.000001
    assert [rule["price_usd"] for rule in policy["pricing_rules"]] == [0, 0.000001]
    message = post(client, "policies/a1", {"max_spend_usd_per_day": 1e-9}).json()["detail"][0]["msg"]
    assert message == "Rounds to 0 (amounts are kept to 6 decimals): write 0, or at least 0.000001."


def test_get_and_list_policies(client):
    assert client.get("/v1/policies/none").status_code == 404
    assert client.get("/v1/policies/none").json()["detail"]["error"] == "policy_not_found"
    post(client, "policies/b", {"max_actions_per_hour": 1})
    post(client, "policies/a", {"max_actions_per_hour": 2})
    post(client, "ai/run", {"agent_id": "ungoverned", "tool": "t"})
    listing = client.get("/v1/policies").json()
    assert [item["agent_id"] for item in listing["items"]] == ["a", "b"] and listing["total"] == 2
    assert client.get("/v1/policies/a").json() == {"agent_id": "a", "policy": {"max_actions_per_hour": 2}, "version": 1}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_with_overrides(client, name):
    body = post(
        client,
        f"policies/bot-{name}/from-template",
        {"agent_id": f"bot-{name}", "template": name, "overrides": {"max_actions_per_hour": 120}},
    ).json()
    assert body["policy"]["max_actions_per_hour"] == 120
    expected = {**TEMPLATES[name], "max_actions_per_hour": 120}
    assert {k: body["policy"][k] for k in expected} == expected
    assert PolicyVersion.objects.get(agent__agent_id=f"bot-{name}").source == f"template:{name}"


def test_unknown_template_names_the_valid_ones(client):
    response = post(client, "policies/x/from-template", {"template": "yolo", "overrides": {}})
    assert response.status_code == 422
    assert "strict, moderate, permissive, read_only, support_bot" in response.json()["detail"][0]["msg"]


def test_agent_ids_with_punctuation_and_percent_encoding(client):
    for agent_id, path in [("team:billing.v2-bot_1", "team:billing.v2-bot_1"), ("a/b c", "a%2Fb%20c")]:
        assert post(client, f"policies/{path}", {"max_actions_per_hour": 3}).json()["agent_id"] == agent_id
        assert client.get(f"/v1/policies/{path}").json()["policy"] == {"max_actions_per_hour": 3}
        assert post(client, f"agents/{path}/disable", {"reason": "r"}).json()["agent_id"] == agent_id


def test_kill_switch_records_who_why_and_when(client, key_a):
    body = post(client, "agents/billing-agent/disable", {"reason": "runaway loop"}).json()
    assert body["is_enabled"] is False and body["disabled_reason"] == "runaway loop" and body["disabled_at"]
    agent = Agent.objects.get()
    assert agent.disabled_by == f"api key {key_a.api_key.preview}"
    enabled = post(client, "agents/billing-agent/enable", {"reason": "fixed"}).json()
    assert enabled == {"agent_id": "billing-agent", "is_enabled": True, "disabled_reason": None, "disabled_at": None}
    actions = list(AuditEntry.objects.filter(object_type="agent").order_by("id").values_list("action", flat=True))
    assert actions == ["governance.agent.disabled", "governance.agent.enabled"]


def test_plan_gating(account_a, plans):
    account_set_plan(account=account_a, plan=plans["pro"])
    client = make_key(account_a).client()
    assert post(client, "policies/a", {"max_actions_per_hour": 1}).status_code == 200
    refused = post(client, "policies/a", {"allowed_tools": ["x"]})
    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "feature_not_available"
    assert "Agency" in refused.json()["detail"]["message"]
    assert post(client, "agents/a/disable").status_code == 403
    assert post(client, "policies/a/from-template", {"template": "read_only"}).status_code == 403
    account_set_plan(account=account_a, plan=plans["starter"])
    client = make_key(account_a).client()
    for response in (client.get("/v1/policies"), client.get("/v1/agents/a/logs"), client.get("/v1/agents/a/metrics")):
        assert response.status_code == 403 and response.json()["detail"]["error"] == "feature_not_available"


def test_logs_newest_first_with_limit(client):
    for n in range(5):
        post(client, "ai/run", {"agent_id": "bot", "tool": f"tool{n}", "args": {"run_id": f"r{n}"}})
    body = client.get("/v1/agents/bot/logs", {"limit": 3}).json()
    assert [row["tool"] for row in body["items"]] == ["tool4", "tool3", "tool2"]
    row = body["items"][0]
    assert isinstance(row["ts"], int) and row["decision"] == "allowed" and row["allowed"] is True
    assert row["run_id"] == "r4" and len(row["args_hash"]) == 64 and "args" not in row
    assert client.get("/v1/agents/bot/logs", {"limit": 0}).status_code == 422
    assert client.get("/v1/agents/bot/logs", {"limit": 501}).status_code == 422
    assert client.get("/v1/agents/nobody/logs").json()["items"] == []


def test_metrics_from_the_data(client):
    post(client, "policies/bot", {"blocked_tools": ["delete_*"]})
    for n in range(3):
        post(client, "ai/run", {"agent_id": "bot", "tool": "send_email", "args": {"n": n}, "spend_usd": 0.25})
    post(client, "ai/run", {"agent_id": "bot", "tool": "delete_user"})
    body = client.get("/v1/agents/bot/metrics", {"period": "day"}).json()
    assert body["total_actions"] == 4 and body["blocked_actions"] == 1
    assert body["total_spend_usd"] == 0.75
    assert body["top_tools"] == [{"tool": "send_email", "count": 3}, {"tool": "delete_user", "count": 1}]
    assert client.get("/v1/agents/bot/metrics", {"period": "year"}).status_code == 422
    zero = client.get("/v1/agents/ghost/metrics").json()
    assert (zero["total_actions"], zero["total_spend_usd"], zero["top_tools"]) == (0, 0.0, [])


def test_metrics_periods_cut_at_the_exact_window(client):
    post(client, "ai/run", {"agent_id": "bot", "tool": "t", "args": {"n": 1}})
    post(client, "ai/run", {"agent_id": "bot", "tool": "t", "args": {"n": 2}})
    # Age one decision to 2 hours: outside "hour", inside "day" (rollup hour moved with it).
    old = Decision.objects.order_by("id").first()
    from governance.models import DecisionRollup

    DecisionRollup.objects.all().delete()
    Decision.objects.filter(pk=old.pk).update(ts=timezone.now() - timedelta(hours=2))
    for d in Decision.objects.all():
        DecisionRollup.objects.create(
            account_id=d.account_id,
            agent=d.agent,
            tool=d.tool,
            outcome=d.outcome,
            hour=d.ts.replace(minute=0, second=0, microsecond=0),
            count=1,
        )
    assert client.get("/v1/agents/bot/metrics", {"period": "hour"}).json()["total_actions"] == 1
    assert client.get("/v1/agents/bot/metrics", {"period": "day"}).json()["total_actions"] == 2


def test_logs_and_policies_are_tenant_scoped(client, key_b):
    post(client, "policies/shared", {"max_actions_per_hour": 1})
    post(client, "ai/run", {"agent_id": "shared", "tool": "t"})
    other = key_b.client()
    assert other.get("/v1/policies/shared").status_code == 404
    assert other.get("/v1/policies").json()["items"] == []
    assert other.get("/v1/agents/shared/logs").json()["items"] == []
    assert other.get("/v1/agents/shared/metrics").json()["total_actions"] == 0


@pytest.mark.parametrize("reason", ["", "   "])
@pytest.mark.parametrize("action", ["disable", "enable"])
def test_a_blank_kill_switch_reason_is_422_and_changes_nothing(client, action, reason):
    """A reason is optional; one that is sent says something (the schema said so, the server took "")."""
    response = post(client, f"agents/bot/{action}", {"reason": reason})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "reason"]
    assert not Agent.objects.exists() and not AuditEntry.objects.filter(action__startswith="governance.").exists()


@pytest.mark.parametrize("overrides", [False, 0, "", []])
def test_template_overrides_of_another_type_are_422_and_save_nothing(client, overrides):
    """They were read as "no overrides" (``overrides or {}``) and the template applied."""
    response = post(client, "policies/bot/from-template", {"template": "strict", "overrides": overrides})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "overrides"]
    assert not PolicyVersion.objects.exists()


@pytest.mark.parametrize("path", ["policies/bot", "agents/bot/disable"])
def test_a_json_null_body_is_422_and_writes_nothing(client, path):
    """``null`` is not a JSON object; it was read as an empty body and the change made."""
    response = client.post(f"/v1/{path}", "null", content_type="application/json")
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "type_error", "loc": ["body"], "msg": "The request body must be a JSON object."}
    ]
    assert not Agent.objects.exists() and not PolicyVersion.objects.exists()
    assert not AuditEntry.objects.filter(action__startswith="governance.").exists()
