"""Declared request bodies (onceonly_site/bodies.py): one declaration validates a body and is its OpenAPI schema.

The 422 answers themselves are pinned by the endpoints' own tests; these pin the mechanism (the order of the
problems, where nested ones are reported, a partial body, the words a body speaks in), that the schema comes from
the same declarations, and where the plan's feature check stands relative to the body's."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from django.test import Client
from rest_framework import exceptions

from billing.models import Plan
from billing.services import account_set_plan
from governance import policies, tools
from governance.api import GovernedCallInput, TemplateInput
from idempotency.api import CheckLockInput, KeyedRunInput, RunActionInput
from onceonly_site.bodies import AgentId, Body, Boolean, Integer, Key, Nested, Text, Usd
from onceonly_site.params import MAX_USD
from tests.conftest import make_key


def problems(body: type[Body], data: Any) -> list[tuple[str, str, str]]:
    """(location, type, msg) of each problem ``body`` finds in ``data``, in order."""
    with pytest.raises(exceptions.ValidationError) as refused:
        body.parse(data)
    return [(loc, str(item.code), str(item)) for loc, items in refused.value.detail.items() for item in items]


class Inner(Body):
    name = Key(10)
    size = Integer(0, 5, nullable=False)


class Outer(Body):
    key = Key(8)
    count = Integer(1, 3)
    inner = Nested(Inner)
    flag = Boolean(default=True, nullable=False, invalid=("true or false.", "bool_type"))

    def clean_key(self, check: Any, loc: str, value: str) -> str | None:
        if value == "reserved":
            check.fail(loc, "Reserved.", "value_error")
            return None
        return value

    def clean(self, check: Any, prefix: str) -> None:
        if self.count == 3 and self.inner is None:
            check.fail("inner", "Required with count 3.", "missing")


def test_unknown_fields_come_first_then_the_fields_in_their_declared_order():
    found = problems(Outer, {"zz": 1, "count": 9, "key": "", "aa": 2, "inner": {"size": -1, "x": 0}})
    assert found == [
        ("aa", "extra_forbidden", "Unknown field."),
        ("zz", "extra_forbidden", "Unknown field."),
        ("key", "string_too_short", "Must not be empty."),
        ("count", "int_type", "A whole number from 1 to 3."),
        ("inner.x", "extra_forbidden", "Unknown field."),
        ("inner.name", "missing", "This field is required."),
        ("inner.size", "int_type", "A whole number from 0 to 5."),
    ]


def test_hooks_run_on_valid_values_and_clean_across_fields():
    assert problems(Outer, {"key": "reserved", "count": 3}) == [
        ("key", "value_error", "Reserved."),
        ("inner", "missing", "Required with count 3."),
    ]
    assert problems(Outer, {"key": "x" * 9}) == [("key", "string_too_long", "At most 8 characters (got 9).")]


def test_a_parsed_body_has_the_values_defaults_and_what_was_sent():
    body = Outer.parse({"key": "k", "inner": {"name": "n", "size": 5}})
    assert (body.key, body.count, body.flag, body.inner.name, body.inner.size) == ("k", None, True, "n", 5)
    assert body.sent == {"key", "inner"} and body.changes() == {"key": "k", "inner": body.inner}
    assert problems(Outer, {"key": "k", "flag": None}) == [("flag", "bool_type", "true or false.")]
    assert problems(Outer, []) == [("non_field_errors", "type_error", "The request body must be a JSON object.")]


def test_a_partial_body_checks_what_is_sent_in_the_order_sent():
    changes = policies.clean_fields({"max_spend_usd_per_day": 1.5, "blocked_tools": None, "agent_id": "ignored"})
    assert list(changes.items()) == [("max_spend_usd_per_day", 1.5), ("blocked_tools", None)]
    with pytest.raises(exceptions.ValidationError) as refused:
        policies.clean_fields({"max_actions_per_hour": -1, "nope": 1, "blocked_tools": [" "]})
    assert list(refused.value.detail) == ["max_actions_per_hour", "nope", "blocked_tools"]


def test_nested_problems_keep_their_dotted_locations():
    found = problems(KeyedRunInput, {"key": "k", "metadata": {"actions": [{"tool": " ", "x": 1, "y": 2}, 5]}})
    assert found == [
        ("metadata.actions.0", "extra_forbidden", "Unknown field(s): x, y."),
        ("metadata.actions.0.tool", "string_type", "A non-blank tool name of at most 200 characters."),
        ("metadata.actions.1", "dict_type", "Must be an object {tool, args, spend_usd}."),
        ("metadata.agent_id", "missing", "Required with metadata.actions: the agent whose policy governs them."),
    ]


def test_a_body_in_its_own_words_answers_one_message_per_field():
    with pytest.raises(exceptions.ValidationError) as refused:
        tools.clean({"name": "a b", "url": "https://8.8.8.8/t", "auth": {"secret": "short"}, "price_usd": -1})
    detail = {loc: (str(items[0].code), str(items[0])) for loc, items in refused.value.detail.items()}
    assert detail == {
        "name": ("string_pattern_mismatch", "Required: 1–200 characters of letters, digits, _ . : -"),
        "auth": ("invalid", '{"type": "hmac_sha256", "secret": 8–256 characters}.'),
        "price_usd": ("float_type", f"A number from 0 to {MAX_USD:,}."),
    }


def test_one_declaration_of_an_agent_id_and_of_a_dollar_amount():
    """The agent id of a governed call, of a run's metadata, of a registry scope and of the agents' paths is one
    field type; every amount in dollars is the other, with the same bounds in the schema."""
    assert isinstance(GovernedCallInput.agent_id, AgentId)
    assert isinstance(KeyedRunInput.metadata.body.agent_id, AgentId)
    assert tools.valid_scope("agent:" + "a" * AgentId.MAX_LENGTH)
    assert not tools.valid_scope("agent:" + "a" * (AgentId.MAX_LENGTH + 1))
    amounts = [
        GovernedCallInput.spend_usd,
        RunActionInput.spend_usd,
        tools.ToolInput.price_usd,
        policies.PolicyInput.max_spend_usd_per_day,
        policies.PricingRuleInput.price_usd,
    ]
    assert all(isinstance(amount, Usd) for amount in amounts)
    assert {(amount.openapi()["minimum"], amount.openapi()["maximum"]) for amount in amounts} == {(0, MAX_USD)}


@pytest.mark.django_db
def test_the_schema_is_generated_from_the_declarations():
    components = yaml.safe_load(Client().get("/api/schema/").content)["components"]["schemas"]
    for body in (CheckLockInput, GovernedCallInput, tools.ToolInput, policies.PolicyInput, TemplateInput):
        schema = components[f"{body.__name__}Request"]
        assert set(schema["properties"]) == set(body.fields), body
        assert set(schema.get("required", ())) == {name for name, field in body.fields.items() if field.required}
        for name, field in body.fields.items():
            if isinstance(field, Key | Text) and "maxLength" in field.openapi():
                assert schema["properties"][name]["maxLength"] == field.max_length, (body, name)
    tool = components["ToolInputRequest"]["properties"]
    assert (tool["url"]["maxLength"], tool["price_usd"]["maximum"]) == (2000, MAX_USD)
    assert components["ToolAuthInputRequest"]["properties"]["secret"] == {
        "type": "string",
        "minLength": 8,
        "maxLength": 256,
    }


# --- where the plan's feature is checked --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "method", "path", "data", "status"),
    [
        # Declared on the view (FeatureGatedView): the feature before anything in the request is looked at.
        ("starter", "post", "/v1/tools", {"name": ""}, 403),
        ("starter", "post", "/v1/tools/x/toggle", {"enabled": 1}, 403),
        ("starter", "post", "/v1/policies/%20", {"max_actions_per_hour": -1}, 403),
        ("starter", "post", "/v1/policies/a/from-template", {"template": "nope"}, 403),
        ("starter", "get", "/v1/agents/%20/logs", None, 403),
        # The body first: a 422 before the plan's 403.
        ("starter", "post", "/v1/ai/run", {"agent_id": "", "tool": "t"}, 422),
        ("starter", "post", "/v1/ai/run", {"key": "k", "metadata": {"agent_id": "a", "actions": [{"tool": ""}]}}, 422),
        ("pro", "post", "/v1/agents/a/disable", {"reason": " "}, 422),
        ("pro", "post", "/v1/policies/a", {"allowed_tools": ["x"], "max_actions_per_hour": -1}, 422),
    ],
)
def test_where_the_feature_is_checked(account_a, plans, plan, method, path, data, status):
    account_set_plan(account=account_a, plan=plans[plan])
    client = make_key(account_a).client()
    response = client.post(path, data, content_type="application/json") if method == "post" else client.get(path)
    assert response.status_code == status, response.content
    if status == 403:
        assert response.json()["detail"]["error"] == "feature_not_available"


def test_a_plan_without_the_feature_is_still_rate_limited(account_a, plans):
    """The feature is checked after the rate-limit token (where the handler's first line checked it): refusals,
    which cost a query, stay rate limited, and an over-limit caller hears 429 first."""
    Plan.objects.filter(code="starter").update(rate_limit_per_second=1, rate_limit_burst=2)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="starter"))
    client = make_key(account_a).client()
    statuses = [client.get("/v1/tools").status_code for _ in range(3)]
    assert statuses == [403, 403, 429]


def test_requests_no_handler_serves_are_not_gated(account_a, plans):
    account_set_plan(account=account_a, plan=plans["starter"])
    client = make_key(account_a).client()
    assert client.put("/v1/tools", {}, content_type="application/json").status_code == 405
    assert client.options("/v1/tools").status_code == 200
