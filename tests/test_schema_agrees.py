"""The OpenAPI schema's request constraints are the ones the server enforces, field by field.

For every ``/v1`` operation, every constraint the schema states on a request — each body field at any depth, each
query and path parameter: type, required, nullable, enum, minLength/maxLength, pattern, format, minimum/maximum
(exclusive too), minItems/maxItems, minProperties/maxProperties, additionalProperties false — gets requests built
from the schema (tests/support/schema_boundaries.py) that differ from a valid base request in that one place:

* ``edge``: a value AT the constraint, which the schema allows: the server must not refuse it (no 422, no 5xx; a
  404 or 409 about state is an answer about something else, not a refusal of the value);
* ``beyond``: a value JUST PAST it, which the schema forbids: the server must answer 422 with an item whose ``loc``
  names the field (``["body", <field>…]``, ``["query", <name>]``, ``["path", <name>]``; nested fields may be named
  dotted, or by the field holding them);
* ``unstated``: where the schema states NO bound (no maxLength, no maximum, no minLength, no type), a value far past
  any: a 422 means the server enforces a limit the schema does not state.

Case ids read ``<operation>:<location>.<field>:<constraint>:<side>``, so a failure names the exact drift. What the
schema alone cannot make valid is in ``OVERRIDES`` and ``_prepare`` (state: a tool must exist to be updated without
its secret, a lease_id comes from an acquired lease). The base request of every operation is checked on its own
(``test_the_base_request_is_accepted``), so a refusal in any other case is the probed value's.
"""

from __future__ import annotations

import json

import pytest
import yaml
from django.test import Client

from billing.services import account_get_or_create
from tests.conftest import make_key, seeded_plans
from tests.support.module_data import Shared, shared_per_module
from tests.support.schema_boundaries import (
    EMPTY_SEGMENT,
    FIELD_RULE,
    NO_SEED,
    TOOL_URL,
    Case,
    Operation,
    Overrides,
    base_case,
    cases,
    generated_schema,
    names_field,
    normalised_loc,
    operations,
)

OVERRIDES = Overrides(
    # A new tool needs its signing secret: whether the tool is new is state, so the schema says `auth` is optional.
    # A policies file is YAML that JSON Schema cannot describe: a file naming no agent, whose comment the string
    # probes pad (policy_code.read; docs/policies-as-code.md).
    bodies={"tools_upsert": {"auth": {"secret": "schema-secret"}}, "policies_apply": {"yaml": "agents: {} #"}},
    # A run's actions need metadata.agent_id (the schema's anyOf): the metadata probes keep one.
    nested={("ai_run[KeyedRunInput]", ("metadata",)): {"agent_id": "schema-ok"}},
)
SCHEMA = generated_schema()
OPERATIONS = operations(SCHEMA, OVERRIDES)
CASES, UNEXERCISED = cases(OPERATIONS, OVERRIDES)
# Operations that act on the base tool (tools_upsert's base body registers it) and on the base key's lease.
TOOL_OPERATIONS = {"tools_upsert", "tool_get", "tool_delete", "tool_toggle"}
HOLDER_OPERATIONS = {"ai_extend", "ai_complete", "ai_fail", "ai_cancel"}
# Every keyword the walk reads; one it does not know would go unprobed (test_the_walk_knows_every_keyword).
HANDLED = {
    "type", "nullable", "enum", "maxLength", "minLength", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "maxItems", "minItems", "maxProperties", "minProperties", "properties",
    "required", "additionalProperties", "items", "oneOf", "anyOf", "allOf", "not", "$ref",
    "description", "default", "example", "readOnly", "writeOnly", "title", "deprecated",
}  # fmt: skip
FORMATS = {"date", "int64", "double"}  # int64/double say nothing the bounds do not (the bounds are probed)
# Objects whose fields the server reports at their own names, by operation (docs/api.md: a template's overrides are
# checked as the policy upsert's fields, "their errors are reported at ["body", "<field>"]").
FLATTENED = {"policy_from_template": frozenset({"overrides"})}


@pytest.fixture(scope="module")
def _handler() -> Client:
    """One test client for the module: a new one loads the middleware again (whitenoise scans the static files,
    ~90 ms), which would be most of each case's time."""
    return Client()


class _Api:
    """The module's client with a test's own API key."""

    def __init__(self, client: Client, raw_key: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {raw_key}"}

    def generic(self, method: str, url: str, data: bytes | str = b"", **kwargs):
        return self.client.generic(method, url, data, headers=self.headers, **kwargs)

    def post(self, url: str, body: dict):
        return self.generic("POST", url, json.dumps(body), content_type="application/json")


def _build_key() -> str:
    seeded_plans()
    return make_key(account_get_or_create(name="Acme", plan_code="agency")[0], "agent A").raw


@pytest.fixture(scope="module")
def _key(django_db_setup, django_db_blocker):
    """Account A and its API key once for the module's ~740 cases (~25 ms a case when each built them), shared the
    way tests/support/module_data.py describes: each case still runs in its own rolled-back transaction."""
    with shared_per_module(django_db_blocker, _build_key) as shared:
        yield shared


@pytest.fixture
def api(db, _handler, _key: Shared[str]) -> _Api:
    return _Api(_handler, _key.for_test())


@pytest.fixture(autouse=True)
def _loopback_tool_urls(settings):
    """The base tool's URL is loopback (TOOL_URL, where nothing listens): the SSRF guard must let it through."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS = True


def _prepare(api: _Api, operation: Operation) -> dict[str, str]:
    """The state an operation's base request needs; returns the base body fields only the server can give."""
    tools_upsert = next(op for op in OPERATIONS if op.id == "tools_upsert")
    if operation.id in TOOL_OPERATIONS:
        registered = api.post("/v1/tools", tools_upsert.body)
        assert registered.status_code == 200, registered.content
    if operation.id in HOLDER_OPERATIONS:
        lease = api.post("/v1/ai/lease", {"key": operation.body["key"]})
        assert lease.status_code == 200 and lease.json()["status"] == "acquired", lease.content
        return {"lease_id": lease.json()["lease_id"]}
    return {}


def _send(api: _Api, case: Case, state: dict[str, str]):
    method, url, data = case.request(state)
    if data is None:
        return api.generic(method, url), method, url
    return api.generic(method, url, data, content_type="application/json"), method, url


def _items(response) -> list[dict]:
    if response.status_code != 422:
        return []
    detail = response.json()["detail"]
    return detail if isinstance(detail, list) else []


def _locs(items: list[dict]) -> str:
    return ", ".join(json.dumps(item.get("loc")) + f" {item.get('msg', '')[:80]!r}" for item in items) or "none"


def _verdict(case: Case, response, method: str) -> str | None:
    """Why the server's answer disagrees with the schema, or None when it agrees."""
    probe, status = case.probe, response.status_code
    loc = json.dumps([case.location, *map(str, probe.where)])
    request = f"{method} {case.operation.path} with {loc} = {probe.shown}"
    items = _items(response)
    also = case.operation.sibling_required if probe.constraint == "required" else frozenset()
    flattened = FLATTENED.get(case.operation.id, frozenset())
    named = [item for item in items if names_field(item.get("loc", []), case.location, probe.where, also, flattened)]
    if status >= 500:
        return f"{request}: a {status} server error ({response.content[:200]!r})"
    if probe.side == "beyond":
        if status == 404 and case.location == "path":
            return None  # no resource can have a name the schema forbids: "not found" is a refusal of the value
        if status != 422:
            return (f"{request}: the schema forbids this value ({probe.constraint}) but the server does not refuse it "
                    f"(answered {status}, not 422): the schema states a limit the server does not enforce, or not "
                    "the one it enforces")  # fmt: skip
        if not named:
            return f"{request}: refused (422) as the schema says, but no item names {loc}: {_locs(items)}"
        return None
    if status == 422:
        where = "for that field" if named else "at other locs (the base request alone is accepted)"
        if probe.side == "unstated":
            return (
                f"{request}: the schema states no bound here ({probe.constraint}) but the server refuses the "
                f"value {where}: it enforces a limit the schema does not state; items: {_locs(items)}"
            )
        return (f"{request}: the schema allows this value ({probe.constraint}) but the server refuses it {where}; "
                f"items: {_locs(items)}")  # fmt: skip
    return None


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.id)
def test_the_base_request_is_accepted(api, operation):
    """Every case starts from this request: it is not refused at all, so a 422 in a case is its probe's."""
    response, method, url = _send(api, base_case(operation), _prepare(api, operation))
    assert response.status_code < 500 and response.status_code != 422, (method, url, response.content[:500])


def _check(api: _Api, case: Case) -> None:
    response, method, _ = _send(api, case, _prepare(api, case.operation))
    problem = _verdict(case, response, method)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.mark.parametrize("case", [c for c in CASES if c.location == "body"], ids=lambda c: c.id)
def test_body_field_agrees_with_the_schema(api, case):
    _check(api, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.location == "query"], ids=lambda c: c.id)
def test_query_parameter_agrees_with_the_schema(api, case):
    _check(api, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.location == "path"], ids=lambda c: c.id)
def test_path_parameter_agrees_with_the_schema(api, case):
    _check(api, case)


def test_the_walk_knows_every_keyword():
    """A keyword the walk does not read would be a constraint nobody probes: teach the walk before using one."""
    found: set[str] = set()
    formats: set[str] = set()

    def collect(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties":
                    for sub in value.values():
                        collect(sub)
                    continue
                found.add(key)
                if key == "format":
                    formats.add(value)
                collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    for op in OPERATIONS:
        collect(op.body_schema)
        for _, node, _ in op.parameters.values():
            collect(node)
    assert found - HANDLED == set()
    assert formats - FORMATS == set()


def test_every_constraint_gets_its_values():
    """The walk builds an edge and a beyond value for every constraint, except where none can exist: a minLength
    edge a pattern makes impossible (a one-character URL), an empty path segment (another URL, no route), and an
    object's rule between fields (anyOf)."""
    impossible = [
        (op, where, what, why)
        for op, where, what, why in UNEXERCISED
        if not (why == NO_SEED and what.startswith("minLength=") and what.endswith(":edge"))
        and why not in (EMPTY_SEGMENT, FIELD_RULE)
    ]
    assert impossible == []
    assert len(CASES) > 500
    assert {c.operation.id for c in CASES} >= {op.id for op in OPERATIONS if op.body_schema or op.parameters}


def test_the_walked_schema_is_the_served_one(db):
    """The cases are built from the generator's schema at collection: it is the one /api/schema/ serves."""
    served = yaml.safe_load(Client().get("/api/schema/").content)
    assert json.loads(json.dumps(served)) == SCHEMA


def test_the_overrides_name_real_places():
    """An override of an operation or a field that no longer exists would silently stop applying."""
    ids = {op.id for op in OPERATIONS}
    assert set(OVERRIDES.bodies) | {op for op, _ in OVERRIDES.nested} | TOOL_OPERATIONS | HOLDER_OPERATIONS <= ids
    assert next(op for op in OPERATIONS if op.id == "tools_upsert").body["url"] == TOOL_URL
    for (op_id, where), _ in OVERRIDES.nested.items():
        node = next(op for op in OPERATIONS if op.id == op_id).body_schema
        for part in where:
            node = node["properties"][part]
    for operation in OPERATIONS:
        if operation.id in HOLDER_OPERATIONS:
            assert "lease_id" in operation.body


def test_a_loc_names_the_field_as_the_server_writes_it():
    """The matching rule itself: nested fields as list items or dotted, the holder of a field, never a sibling."""
    assert normalised_loc(["body", "metadata.actions.0.spend_usd"]) == ["body", "metadata", "actions", "0", "spend_usd"]
    assert names_field(["body", "auth"], "body", ("auth", "secret"))
    assert names_field(["body", "metadata.actions.0.spend_usd"], "body", ("metadata", "actions", 0, "spend_usd"))
    assert not names_field(["body", "metadata.run_id"], "body", ("metadata", "agent_id"))
    assert not names_field(["body", "max_spend_usd_per_day"], "body", ("overrides", "max_spend_usd_per_day"))
    template = FLATTENED["policy_from_template"]
    assert names_field(
        ["body", "max_spend_usd_per_day"], "body", ("overrides", "max_spend_usd_per_day"), flattened=template
    )
    assert not names_field(
        ["body", "blocked_tools"], "body", ("overrides", "max_spend_usd_per_day"), flattened=template
    )
    assert not names_field(["query", "key"], "body", ("key",))
    assert not names_field(["body"], "body", ("key",))
    assert names_field(["body"], "body", ())
