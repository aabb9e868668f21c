"""Numbers no float can hold, or past every bound, are a 4xx at their field and write nothing — never a 500.

Python parses any JSON integer exactly (10**400 included) and "1e400" as infinity; ``float(10**400)`` and
``math.isfinite(10**400)`` raise OverflowError. Every numeric field of every request body and query of the OpenAPI
schema has a case here (``test_every_numeric_field_of_the_schema_has_a_case`` holds new fields to it), and so has
every numeric field of the dashboard's policy editor (docs/api.md §"The error contract")."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from django.apps import apps
from django.test import Client

from governance.models import Agent, Decision, McpServer, PolicyVersion, Tool
from onceonly_site.redis_client import get_redis

N = "__N__"  # where the number's text goes in a body
NUMBERS = {
    "10**400": "1" + "0" * 400,
    "-10**400": "-1" + "0" * 400,
    "10**20": "1" + "0" * 20,
    "1e400": "1e400",  # parsed as infinity
    "-1e400": "-1e400",
}
TOOL = {"name": "t", "url": "https://tools.example.com/t", "auth": {"secret": "s" * 8}}

# (schema property, policy fields with N in place of the number, the location the error names).
POLICY_NUMBERS: list[tuple[str, dict[str, Any], str]] = [
    ("max_actions_per_hour", {"max_actions_per_hour": N}, "max_actions_per_hour"),
    ("max_spend_usd_per_day", {"max_spend_usd_per_day": N}, "max_spend_usd_per_day"),
    ("max_calls_per_tool.*", {"max_calls_per_tool": {"x": N}}, "max_calls_per_tool.x"),
    ("pricing_rules.0.price_usd", {"pricing_rules": [{"tool": "x", "price_usd": N}]}, "pricing_rules.0.price_usd"),
    ("approval_ttl_seconds", {"approval_ttl_seconds": N}, "approval_ttl_seconds"),
    ("max_actions_per_run", {"max_actions_per_run": N}, "max_actions_per_run"),
    ("max_spend_usd_per_run", {"max_spend_usd_per_run": N}, "max_spend_usd_per_run"),
    ("max_calls_per_tool_per_run", {"max_calls_per_tool_per_run": N}, "max_calls_per_tool_per_run"),
    ("max_run_seconds", {"max_run_seconds": N}, "max_run_seconds"),
    ("alert_thresholds.0", {"alert_thresholds": [N]}, "alert_thresholds"),
    *[
        (f"detectors.{name}.{param}", {"detectors": {name: {param: N}}}, f"detectors.{name}.{param}")
        for name, params in (
            ("call_loop", ("count", "window_minutes")),
            ("deny_spike", ("share", "min_calls", "window_minutes")),
            ("spend_velocity", ("factor", "min_spend_usd", "window_minutes")),
        )
        for param in params
    ],
    (
        "require_approval.0.over_usd",
        {"require_approval": [{"tool": "x", "over_usd": N}]},
        "require_approval.0.over_usd",
    ),
]

# (operation, schema property, body with N in place of the number, the locations the error may name). A number
# inside an object that is hashed as RFC 8785 JSON (a keyed run's metadata) may be refused as the whole object.
BODY_CASES: list[tuple[str, str, dict[str, Any], list[list[str]]]] = [
    ("POST /v1/ai/run", "spend_usd", {"agent_id": "x", "tool": "t", "spend_usd": N}, [["spend_usd"]]),
    ("POST /v1/ai/run", "ttl", {"key": "k1", "ttl": N}, [["ttl"]]),
    (
        "POST /v1/ai/run",
        "metadata.actions.0.spend_usd",
        {"key": "k1", "metadata": {"agent_id": "x", "actions": [{"tool": "t", "spend_usd": N}]}},
        [["metadata.actions.0.spend_usd"], ["metadata"]],
    ),
    ("POST /v1/check-lock", "ttl", {"key": "k1", "ttl": N}, [["ttl"]]),
    ("POST /v1/ai/lease", "ttl", {"key": "k1", "ttl": N}, [["ttl"]]),
    ("POST /v1/ai/extend", "ttl", {"key": "k1", "lease_id": "l", "ttl": N}, [["ttl"]]),
    ("POST /v1/events", "ts", {"run_id": "r", "type": "note", "ts": N}, [["ts"]]),
    ("POST /v1/events", "duration_ms", {"run_id": "r", "type": "note", "duration_ms": N}, [["duration_ms"]]),
    # Every policy field, where a policy is sent: an upsert, a shadow candidate, a template's overrides.
    *[
        (f"POST /v1/policies/{{agent_id}}{suffix}", prop, fields, [[loc]])
        for suffix in ("", "/shadow")
        for prop, fields, loc in POLICY_NUMBERS
    ],
    *[
        (
            "POST /v1/policies/{agent_id}/from-template",
            f"overrides.{prop}",
            {"template": "strict", "overrides": fields},
            [[loc], ["overrides", loc]],
        )
        for prop, fields, loc in POLICY_NUMBERS
    ],
    (
        "POST /v1/policies/{agent_id}/shadow/promote",
        "expected_version",
        {"shadow_id": "s1", "expected_version": N},
        [["expected_version"]],
    ),
    *[("POST /v1/tools", field, {**TOOL, field: N}, [[field]]) for field in ("timeout_ms", "max_retries", "price_usd")],
    (
        "POST /v1/mcp/servers",
        "timeout_ms",
        {"name": "s", "url": "https://mcp.example.com/mcp", "timeout_ms": N},
        [["timeout_ms"]],
    ),
    ("PATCH /v1/mcp/servers/{name}", "timeout_ms", {"timeout_ms": N}, [["timeout_ms"]]),
    *[
        ("POST /v1/runs/{run_id}/resume", field, {field: N}, [[field]])
        for field in ("max_actions_per_run", "max_spend_usd_per_run", "max_calls_per_tool_per_run", "max_run_seconds")
    ],
    *[
        ("PATCH /v1/mcp/servers/{name}/tools/{tool}", field, {field: N}, [[field]])
        for field in ("timeout_ms", "price_usd")
    ],
]

# Query parameters: (operation, parameter, URL with N in place of the number).
QUERY_CASES = [
    ("GET /v1/agents/{agent_id}/logs", "limit", f"/v1/agents/x/logs?limit={N}"),
    ("GET /v1/agents/{agent_id}/logs", "offset", f"/v1/agents/x/logs?offset={N}"),
    ("GET /v1/events", "limit", f"/v1/events?limit={N}"),
    ("GET /v1/events", "offset", f"/v1/events?offset={N}"),
    ("GET /v1/policies", "limit", f"/v1/policies?limit={N}"),
    ("GET /v1/policies", "offset", f"/v1/policies?offset={N}"),
    ("GET /v1/runs/{run_id}", "limit", f"/v1/runs/r?limit={N}"),
    ("GET /v1/runs/{run_id}", "offset", f"/v1/runs/r?offset={N}"),
    ("GET /v1/approvals", "limit", f"/v1/approvals?limit={N}"),
    ("GET /v1/approvals", "offset", f"/v1/approvals?offset={N}"),
    ("GET /v1/alerts", "limit", f"/v1/alerts?limit={N}"),
    ("GET /v1/alerts", "offset", f"/v1/alerts?offset={N}"),
    ("GET /v1/mcp/servers", "limit", f"/v1/mcp/servers?limit={N}"),
    ("GET /v1/mcp/servers", "offset", f"/v1/mcp/servers?offset={N}"),
]

_STATE_MODELS = [m for app in ("billing", "idempotency", "governance") for m in apps.get_app_config(app).get_models()]


def _state() -> tuple[dict[str, int], set[bytes]]:
    """Row counts of every model of the apps and the Redis keys: what "nothing written" compares. The key's
    rate-limit bucket (``…:rl:<key id>``) is left out: every request spends a token whatever its body, and the bucket
    expires by itself when idle — on a loaded machine, between the two requests."""
    keys = {k for k in get_redis().keys("*") if b":rl:" not in k}
    return {m._meta.label: m.objects.count() for m in _STATE_MODELS}, keys


def _raw(body: dict[str, Any], number: str) -> str:
    return json.dumps(body).replace(json.dumps(N), number)


def _post(client: Client, operation: str, body: dict[str, Any], number: str):
    method, path = operation.split(" ", 1)
    path = path.replace("{agent_id}", "bi").replace("{name}", "x").replace("{tool}", "y").replace("{run_id}", "r")
    return client.generic(method, path, _raw(body, number), content_type="application/json")


@pytest.fixture
def client(key_a):
    # An MCP server "x" with its tool "y" (x.y): the PATCH cases' paths name them.
    server = McpServer.objects.create(account_id=key_a.api_key.account_id, name="x", url="https://mcp.example.com/m")
    Tool.objects.create(
        account_id=key_a.api_key.account_id, name="x.y", name_key="x.y", url=server.url, kind="mcp",
        mcp_server=server, remote_name="y",
    )  # fmt: skip
    return key_a.client()


@pytest.mark.parametrize("number", NUMBERS.values(), ids=NUMBERS.keys())
@pytest.mark.parametrize(
    ("operation", "prop", "template", "locs"), BODY_CASES, ids=[f"{c[0]} {c[1]}" for c in BODY_CASES]
)
def test_huge_numbers_in_bodies_are_422_at_the_field_and_write_nothing(client, operation, prop, template, locs, number):
    _post(client, operation, template, '"not a number"')  # warms the key's caches and rate-limit bucket up
    before = _state()
    response = _post(client, operation, template, number)
    assert response.status_code == 422, (response.status_code, response.content[:300])
    detail = response.json()["detail"]
    assert any(item["loc"][1:] in locs for item in detail), detail
    assert _state() == before


@pytest.mark.parametrize("number", NUMBERS.values(), ids=NUMBERS.keys())
@pytest.mark.parametrize(("operation", "name", "url"), QUERY_CASES, ids=[f"{c[0]} {c[1]}" for c in QUERY_CASES])
def test_huge_numbers_in_queries_are_422_at_the_parameter(client, operation, name, url, number):
    response = client.get(url.replace(N, number))
    assert response.status_code == 422, (response.status_code, response.content[:300])
    assert ["query", name] in [item["loc"] for item in response.json()["detail"]]


def _numeric_properties(schema: dict[str, Any]) -> set[tuple[str, str]]:
    components = schema["components"]["schemas"]
    found: set[tuple[str, str]] = set()

    def walk(node: dict[str, Any], operation: str, path: list[str], seen: tuple[str, ...]) -> None:
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            if name not in seen:
                walk(components[name], operation, path, (*seen, name))
            return
        for branch in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(branch, []):
                walk(sub, operation, path, seen)
        if node.get("type") in ("integer", "number"):
            found.add((operation, ".".join(path)))
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, operation, [*path, name], seen)
        if isinstance(node.get("items"), dict):
            walk(node["items"], operation, [*path, "0"], seen)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], operation, [*path, "*"], seen)

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            if "requestBody" in operation:
                walk(operation["requestBody"]["content"]["application/json"]["schema"], name, [], ())
            for parameter in operation.get("parameters", []):
                if parameter.get("schema", {}).get("type") in ("integer", "number"):
                    found.add((name, f"?{parameter['name']}"))
    return found


def test_every_numeric_field_of_the_schema_has_a_case(db):
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    covered = {(c[0], c[1]) for c in BODY_CASES} | {(c[0], f"?{c[1]}") for c in QUERY_CASES}
    missing = _numeric_properties(schema) - covered
    assert not missing, f"numeric fields without a huge-number case: {sorted(missing)}"


# --- the dashboard's policy editor -----------------------------------------------------------------------------

EDITOR_FIELDS = {
    "max_actions_per_hour": lambda n: {"max_actions_per_hour": n},
    "max_spend_usd_per_day": lambda n: {"max_spend_usd_per_day": n},
    "max_calls_per_tool": lambda n: {"max_calls_per_tool": f"send_email: {n}"},
    "pricing_rules": lambda n: {"pricing_rules": f"send_email: {n}"},
    "base_version": lambda n: {"max_actions_per_hour": "5", "base_version": n},
}


@pytest.mark.parametrize("number", NUMBERS.values(), ids=NUMBERS.keys())
@pytest.mark.parametrize("field", EDITOR_FIELDS)
def test_huge_numbers_in_the_policy_editor_are_a_form_error_and_save_nothing(owner_a, key_a, field, number):
    key_a.client().post("/v1/policies/bot", {"max_actions_per_hour": 1}, content_type="application/json")
    agent = Agent.objects.get()
    client = owner_a.login(Client())
    form = {"base_version": "1", **EDITOR_FIELDS[field](number)}
    response = client.post(f"/agents/{agent.pk}/policy/", form)
    assert response.status_code == 422, (response.status_code, response.content[:300])
    assert 'role="alert"' in response.content.decode()
    assert PolicyVersion.objects.count() == 1 and Agent.objects.get().policy == {"max_actions_per_hour": 1}
    assert not Decision.objects.exists()
