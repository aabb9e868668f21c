"""Request limits: the body cap, JSON nesting, per-field byte, length and count caps, and the page-size caps of
every /v1 list endpoint and dashboard list page.

Each cap is pinned at its boundary: at the cap the request is served, one past it is refused with a structured 4xx
``detail`` located at the field, and nothing is written. The gaps this file found when it was written (500s from
``isdigit()`` before ``int()``, from JSON nested deeper than a JSON column can encode, from audit ids wider than
their column; uncapped policy entries) are fixed, and these tests are what keeps them fixed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from billing.models import AuditEntry
from governance.choices import Outcome, Reason, RiskLevel
from governance.models import Agent, Decision, PolicyVersion, Tool
from idempotency.choices import LeaseStatus
from idempotency.models import Lease, LockRecord, Run, RunEvent
from tests.conftest import Key, Persona

JSON = "application/json"
BODY_CAP = 2_621_440  # docs/api.md: Django's default DATA_UPLOAD_MAX_MEMORY_SIZE, not overridden in settings.py
TOOL_URL = "https://tools.example.com/"
TOOL_AUTH = {"type": "hmac_sha256", "secret": "s3cret-0123456789"}

# Every /v1 route that reads a JSON body.
BODY_ROUTES = [
    "/v1/check-lock",
    "/v1/ai/lease",
    "/v1/ai/extend",
    "/v1/ai/complete",
    "/v1/ai/fail",
    "/v1/ai/cancel",
    "/v1/ai/run",
    "/v1/events",
    "/v1/policies/bot",
    "/v1/policies/bot/from-template",
    "/v1/agents/bot/disable",
    "/v1/agents/bot/enable",
    "/v1/tools",
    "/v1/tools/search/toggle",
    "/v1/me/notifications",
]
STORED = (LockRecord, Lease, Run, RunEvent, Agent, PolicyVersion, Decision, Tool, AuditEntry)


def stored() -> dict[str, int]:
    """Row counts of everything a /v1 write can create: equal before and after means nothing was written."""
    return {model.__name__: model.objects.count() for model in STORED}


def post(client: Client, path: str, data: Any) -> Any:
    return client.post(path, data if isinstance(data, bytes) else json.dumps(data), content_type=JSON)


def padded_body(total: int) -> bytes:
    """A JSON object of exactly ``total`` bytes: one field the route does not know."""
    head, tail = b'{"pad": "', b'"}'
    return head + b"x" * (total - len(head) - len(tail)) + tail


def sized(total: int) -> dict[str, str]:
    """A JSON object of exactly ``total`` bytes as the API measures it (compact UTF-8 JSON)."""
    value = {"p": "x" * (total - len('{"p":""}'))}
    assert len(json.dumps(value, separators=(",", ":")).encode()) == total
    return value


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def is_json_invalid(response) -> bool:
    detail = response.json().get("detail")
    return response.status_code == 422 and isinstance(detail, list) and detail[0]["type"] == "json_invalid"


# --- the body cap: 413 --------------------------------------------------------------------------------------------


def test_the_body_cap_is_djangos_default_2_5_mib():
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == BODY_CAP


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_at_the_cap_is_read_and_one_byte_more_is_a_json_413_that_writes_nothing(key_a, path):
    client = key_a.client()
    before = stored()
    response = post(client, path, padded_body(BODY_CAP + 1))
    assert response.status_code == 413, response.content
    assert response.json() == {
        "detail": {
            "error": "payload_too_large",
            "message": "Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.",
        }
    }
    assert stored() == before
    # At the cap the body is read and validated: the padding field is refused (unknown, or over the extras' cap).
    at_cap = post(client, path, padded_body(BODY_CAP))
    assert at_cap.status_code == 422, at_cap.content
    assert stored() == before


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer oo_live_wrong"}, 403)])
def test_an_oversized_body_is_refused_by_authentication_first(db, headers, status):
    """docs/api.md: the 413 comes after authentication (check-lock's lean path included)."""
    response = Client(headers=headers).post("/v1/check-lock", padded_body(BODY_CAP + 1), content_type=JSON)
    assert response.status_code == status


def test_more_than_1000_query_fields_are_a_json_400(key_a):
    """Django's DATA_UPLOAD_MAX_NUMBER_FIELDS (1000) also bounds query strings."""
    response = key_a.client().get("/v1/events?" + "&".join(["x=1"] * 1001))
    assert response.status_code == 400
    assert response.json()["detail"]["error"] == "bad_request"
    assert key_a.client().get("/v1/events?" + "&".join(["x=1"] * 1000)).status_code == 200


# --- JSON nesting -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 10_000], ids=["arrays", "objects"])
@pytest.mark.parametrize("path", BODY_ROUTES)
def test_json_nested_absurdly_deep_is_422_json_invalid_and_writes_nothing(key_a, path, raw):
    before = stored()
    response = post(key_a.client(), path, raw)
    assert response.status_code == 422, response.content
    assert response.json()["detail"] == [
        {"type": "json_invalid", "loc": ["body"], "msg": "JSON parse error - nested too deeply."}
    ]
    assert stored() == before


def _complete(client: Client, depth: int) -> Any:
    lease = post(client, "/v1/ai/lease", {"key": f"deep-{depth}"}).json()
    return post(
        client,
        "/v1/ai/complete",
        {"key": f"deep-{depth}", "lease_id": lease["lease_id"], "result": {"m": nested_list(depth)}},
    )


STORED_JSON = [
    pytest.param(
        lambda c, d: post(c, "/v1/check-lock", {"key": f"deep-{d}", "metadata": {"m": nested_list(d)}}),
        id="check-lock metadata",
    ),
    pytest.param(
        lambda c, d: post(c, "/v1/ai/run", {"agent_id": "bot", "tool": "search", "args": {"m": nested_list(d)}}),
        id="governed call args (hashed, not stored)",
    ),
    pytest.param(
        lambda c, d: post(c, "/v1/ai/lease", {"key": f"deep-{d}", "metadata": {"m": nested_list(d)}}),
        id="lease metadata",
    ),
    pytest.param(
        lambda c, d: post(c, "/v1/ai/run", {"key": f"deep-{d}", "metadata": {"m": nested_list(d)}}),
        id="keyed run metadata",
    ),
    pytest.param(_complete, id="complete result"),
    pytest.param(
        lambda c, d: post(c, "/v1/events", {"run_id": "deep", "type": "note", "data": {"m": nested_list(d)}}),
        id="event data",
    ),
    pytest.param(
        lambda c, d: post(c, "/v1/events", {"run_id": "deep", "type": "note", "m": nested_list(d)}),
        id="event extra field",
    ),
]


@pytest.mark.parametrize("send", STORED_JSON)
def test_json_nested_past_the_depth_limit_is_422_never_a_500(key_a, send):
    """Around the 64-level limit and just under the parser's own (~900 levels, which JSON columns could not encode
    again: a 500 before the limit existed), every depth is served or refused as json_invalid — never a 5xx."""
    client = key_a.client()
    answers = {depth: send(client, depth) for depth in (*range(58, 68), 850, 890, 950)}
    assert {depth: r.status_code for depth, r in answers.items() if r.status_code >= 500} == {}
    refused = sorted(depth for depth, response in answers.items() if is_json_invalid(response))
    assert refused and refused[0] <= 64 and refused == [d for d in answers if d >= refused[0]]
    assert answers[58].status_code < 300


def test_a_body_nested_64_levels_is_read_and_65_is_422_json_invalid(key_a):
    client = key_a.client()
    before = stored()
    # The body (1) and metadata (2) objects, then lists: 62 lists reach level 64.
    deep = post(client, "/v1/check-lock", {"key": "deep", "metadata": {"m": nested_list(63)}})
    assert deep.json()["detail"] == [
        {"type": "json_invalid", "loc": ["body"], "msg": "JSON parse error - nested more than 64 levels deep."}
    ]
    assert stored() == before
    assert post(client, "/v1/check-lock", {"key": "deep", "metadata": {"m": nested_list(62)}}).status_code == 200


# --- per-field byte caps: 422 at the field, nothing written --------------------------------------------------------

BYTE_CAPS = [
    pytest.param(
        "/v1/check-lock",
        lambda v: {"key": "k", "metadata": v},
        2048,
        ["body", "metadata"],
        id="check-lock metadata 2048",
    ),
    pytest.param(
        "/v1/ai/lease", lambda v: {"key": "k", "metadata": v}, 2048, ["body", "metadata"], id="lease metadata 2048"
    ),
    pytest.param(
        "/v1/ai/run",
        lambda v: {"key": "k", "metadata": v},
        65_536,
        ["body", "metadata"],
        id="keyed run metadata 64 KiB",
    ),
    pytest.param(
        "/v1/ai/run",
        lambda v: {"agent_id": "bot", "tool": "search", "args": v},
        65_536,
        ["body", "args"],
        id="governed call args 64 KiB",
    ),
    pytest.param(
        "/v1/events",
        lambda v: {"run_id": "r", "type": "note", "data": v},
        16_384,
        ["body", "data"],
        id="event data 16 KiB",
    ),
    pytest.param(
        "/v1/events", lambda v: {"run_id": "r", "type": "note", **v}, 8_192, ["body"], id="event extra fields 8 KiB"
    ),
]


@pytest.mark.parametrize(("path", "body", "cap", "loc"), BYTE_CAPS)
def test_a_json_field_at_its_byte_cap_is_stored_and_one_byte_more_is_422_at_the_field(key_a, path, body, cap, loc):
    client = key_a.client()
    before = stored()
    response = post(client, path, body(sized(cap + 1)))
    assert response.status_code == 422, response.content
    [problem] = response.json()["detail"]
    assert (problem["type"], problem["loc"]) == ("too_long", loc)
    assert f"at most {cap} bytes of json (got {cap + 1})." in problem["msg"].lower()
    assert stored() == before
    at_cap = post(client, path, body(sized(cap)))
    assert at_cap.status_code == 200, at_cap.content
    assert stored() != before


def test_a_result_at_256_kib_is_stored_and_one_byte_more_is_422_with_the_lease_still_held(key_a):
    client = key_a.client()
    lease_id = post(client, "/v1/ai/lease", {"key": "job"}).json()["lease_id"]
    cap = 262_144
    response = post(client, "/v1/ai/complete", {"key": "job", "lease_id": lease_id, "result": sized(cap + 1)})
    assert response.status_code == 422, response.content
    assert [(p["type"], p["loc"]) for p in response.json()["detail"]] == [("too_long", ["body", "result"])]
    lease = Lease.objects.get(key="job")
    assert (lease.status, lease.result) == (LeaseStatus.IN_PROGRESS, None)
    at_cap = post(client, "/v1/ai/complete", {"key": "job", "lease_id": lease_id, "result": sized(cap)})
    assert at_cap.json()["status"] == "completed"
    assert Lease.objects.get(key="job").result == sized(cap)


# --- string length caps ---------------------------------------------------------------------------------------------


def _tool(**fields: Any) -> dict[str, Any]:
    return {"name": "search", "url": TOOL_URL + "x", "auth": TOOL_AUTH, **fields}


STRING_CAPS = [
    pytest.param(lambda v: ("post", "/v1/check-lock", {"key": v}), 256, ["body", "key"], 200, id="check-lock key"),
    pytest.param(lambda v: ("post", "/v1/ai/lease", {"key": v}), 256, ["body", "key"], 200, id="lease key"),
    pytest.param(lambda v: ("get", f"/v1/ai/status?key={v}", None), 256, ["query", "key"], 200, id="status key"),
    pytest.param(
        lambda v: ("post", "/v1/ai/extend", {"key": "k", "lease_id": v}),
        64,
        ["body", "lease_id"],
        409,
        id="extend lease_id",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/fail", {"key": "k", "lease_id": "l", "error_code": v}),
        128,
        ["body", "error_code"],
        409,
        id="fail error_code",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/cancel", {"key": "k", "lease_id": "l", "reason": v}),
        500,
        ["body", "reason"],
        409,
        id="cancel reason",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/complete", {"key": "k", "lease_id": "l", "result_hash": v}),
        128,
        ["body", "result_hash"],
        409,
        id="complete result_hash",
    ),
    pytest.param(lambda v: ("post", "/v1/ai/run", {"key": v}), 256, ["body", "key"], 200, id="keyed run key"),
    pytest.param(
        lambda v: ("post", "/v1/ai/run", {"key": "k", "metadata": {"run_id": v}}),
        256,
        ["body", "metadata.run_id"],
        200,
        id="keyed run metadata.run_id",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/run", {"key": "k", "metadata": {"agent_id": v}}),
        200,
        ["body", "metadata.agent_id"],
        200,
        id="keyed run metadata.agent_id",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/run", {"agent_id": v, "tool": "search"}),
        200,
        ["body", "agent_id"],
        200,
        id="governed call agent_id",
    ),
    pytest.param(
        lambda v: ("post", "/v1/ai/run", {"agent_id": "bot", "tool": v}),
        200,
        ["body", "tool"],
        200,
        id="governed call tool",
    ),
    pytest.param(
        lambda v: ("post", "/v1/events", {"run_id": v, "type": "note"}), 256, ["body", "run_id"], 200, id="event run_id"
    ),
    pytest.param(
        lambda v: ("post", "/v1/events", {"run_id": "r", "type": v}), 64, ["body", "type"], 200, id="event type"
    ),
    pytest.param(
        lambda v: ("post", "/v1/events", {"run_id": "r", "type": "note", "message": v}),
        4000,
        ["body", "message"],
        200,
        id="event message",
    ),
    pytest.param(
        lambda v: ("post", "/v1/events", {"run_id": "r", "type": "note", v: 1}),
        64,
        ["body"],
        200,
        id="event extra field name",
    ),
    pytest.param(lambda v: ("get", f"/v1/runs/{v}", None), 256, ["path", "run_id"], 200, id="timeline run_id"),
    pytest.param(
        lambda v: ("post", f"/v1/policies/{v}", {"max_actions_per_hour": 5}),
        200,
        ["path", "agent_id"],
        200,
        id="policy agent_id",
    ),
    pytest.param(lambda v: ("get", f"/v1/agents/{v}/logs", None), 200, ["path", "agent_id"], 200, id="logs agent_id"),
    pytest.param(
        lambda v: ("post", "/v1/agents/bot/disable", {"reason": v}),
        500,
        ["body", "reason"],
        200,
        id="kill switch reason",
    ),
    pytest.param(
        lambda v: ("post", "/v1/policies/bot", {"blocked_tools": [v]}),
        200,
        ["body", "blocked_tools"],
        200,
        id="policy blocked_tools entry",
    ),
    pytest.param(
        lambda v: ("post", "/v1/policies/bot", {"max_calls_per_tool": {v: 1}}),
        200,
        ["body", "max_calls_per_tool"],
        200,
        id="policy max_calls_per_tool name",
    ),
    pytest.param(
        lambda v: ("post", "/v1/policies/bot", {"pricing_rules": [{"tool": v, "price_usd": 1}]}),
        200,
        ["body", "pricing_rules.0.tool"],
        200,
        id="policy pricing_rules tool",
    ),
    pytest.param(lambda v: ("post", "/v1/tools", _tool(name=v)), 200, ["body", "name"], 200, id="tool name"),
    pytest.param(
        lambda v: ("post", "/v1/tools", _tool(url=TOOL_URL + v[len(TOOL_URL) :])),
        2000,
        ["body", "url"],
        200,
        id="tool url",
    ),
    pytest.param(
        lambda v: ("post", "/v1/tools", _tool(description=v)), 512, ["body", "description"], 200, id="tool description"
    ),
    pytest.param(
        lambda v: ("post", "/v1/tools", _tool(auth={"type": "hmac_sha256", "secret": v})),
        256,
        ["body", "auth"],
        200,
        id="tool secret",
    ),
    pytest.param(
        lambda v: ("get", f"/v1/tools?scope_id=agent:{v}", None),
        200,
        ["query", "scope_id"],
        200,
        id="tools scope agent id",
    ),
]


def _send(client: Client, method: str, path: str, data: Any) -> Any:
    return client.get(path) if method == "get" else post(client, path, data)


@pytest.mark.parametrize(("send", "cap", "loc", "ok"), STRING_CAPS)
def test_a_string_at_its_cap_is_accepted_and_one_character_more_is_422_at_the_field(key_a, send, cap, loc, ok):
    client = key_a.client()
    before = stored()
    response = _send(client, *send("a" * (cap + 1)))
    assert response.status_code == 422, response.content
    assert [problem["loc"] for problem in response.json()["detail"]] == [loc]
    assert stored() == before
    at_cap = _send(client, *send("a" * cap))
    assert at_cap.status_code == ok, at_cap.content  # 409: valid, but no lease holds that key


@pytest.mark.parametrize("scope_id", ["global", "agent:" + "b" * 200], ids=["global", "longest agent scope"])
def test_the_longest_tool_name_in_any_scope_registers_and_is_audited_in_full(key_a, scope_id):
    name = "a" * 200
    response = post(key_a.client(), "/v1/tools", _tool(name=name, scope_id=scope_id))
    assert response.status_code == 200, response.content
    [entry] = AuditEntry.objects.filter(action="governance.tool.saved")
    assert entry.object_id == f"{scope_id}/{name}"
    assert len(entry.object_id) <= AuditEntry._meta.get_field("object_id").max_length


@pytest.mark.parametrize(
    ("path", "action", "start"),
    [
        ("/locks/release/", "idempotency.lock.released", "/v1/check-lock"),
        ("/locks/reset/", "idempotency.lease.reset", "/v1/ai/lease"),
    ],
)
def test_an_operator_can_release_the_longest_key_and_the_audit_names_it(key_a, owner_a, path, action, start):
    key = "k" * 256
    assert post(key_a.client(), start, {"key": key}).status_code == 200
    web = owner_a.login(Client(raise_request_exception=False))
    assert web.post(path, {"key": key, "reason": "stuck"}).status_code == 302
    [entry] = AuditEntry.objects.filter(action=action)
    assert entry.object_id == key
    assert len(entry.object_id) <= AuditEntry._meta.get_field("object_id").max_length


COUNT_CAPS = [
    pytest.param(
        "/v1/policies/bot",
        lambda n: {"allowed_tools": [f"tool_{i}" for i in range(n)]},
        500,
        ["body", "allowed_tools"],
        id="allowed_tools 500",
    ),
    pytest.param(
        "/v1/policies/bot",
        lambda n: {"blocked_tools": [f"tool_{i}" for i in range(n)]},
        500,
        ["body", "blocked_tools"],
        id="blocked_tools 500",
    ),
    pytest.param(
        "/v1/policies/bot",
        lambda n: {"pricing_rules": [{"tool": f"t{i}", "price_usd": 1} for i in range(n)]},
        500,
        ["body", "pricing_rules"],
        id="pricing_rules 500",
    ),
    pytest.param(
        "/v1/policies/bot",
        lambda n: {"max_calls_per_tool": {f"tool_{i}": 1 for i in range(n)}},
        500,
        ["body", "max_calls_per_tool"],
        id="max_calls_per_tool 500",
    ),
    pytest.param(
        "/v1/ai/run",
        lambda n: {"key": "k", "metadata": {"agent_id": "bot", "actions": [{"tool": "s"}] * n}},
        50,
        ["body", "metadata.actions"],
        id="keyed run actions 50",
    ),
]


@pytest.mark.parametrize(("path", "body", "cap", "loc"), COUNT_CAPS)
def test_a_list_at_its_entry_cap_is_accepted_and_one_more_is_422_at_the_field(key_a, path, body, cap, loc):
    client = key_a.client()
    before = stored()
    response = post(client, path, body(cap + 1))
    assert response.status_code == 422, response.content[:300]
    assert [problem["loc"] for problem in response.json()["detail"]] == [loc]
    assert stored() == before
    at_cap = post(client, path, body(cap))
    assert at_cap.status_code == 200, at_cap.content[:300]
    assert stored() != before


# --- pagination of the /v1 lists -----------------------------------------------------------------------------------

# path: (answer's list field, default limit, maximum limit, maximum offset) — docs/api.md.
PAGED = {
    "/v1/events": ("data", 50, 200, 4_800),
    "/v1/runs/crowded": ("events", 200, 2_000, 1_000_000),
    "/v1/policies": ("items", 100, 500, 1_000_000),
    "/v1/agents/bot/logs": ("items", 100, 500, 1_000_000),
}


@pytest.fixture
def crowded(account_a) -> None:
    """More rows than every list's maximum: 2,001 events of one run, 501 governed agents, 501 decisions of bot."""
    now = timezone.now()
    RunEvent.objects.bulk_create(
        RunEvent(account=account_a, run_id="crowded", ts=now - timedelta(seconds=i), type="note") for i in range(2_001)
    )
    Agent.objects.bulk_create(
        Agent(account=account_a, agent_id=f"agent-{i:04d}", policy={"max_actions_per_hour": 1}, policy_version=1)
        for i in range(501)
    )
    bot = Agent.objects.create(account=account_a, agent_id="bot")
    Decision.objects.bulk_create(
        Decision(
            account=account_a,
            agent=bot,
            ts=now - timedelta(seconds=i),
            tool="search",
            outcome=Outcome.ALLOWED,
            allowed=True,
            policy_reason=Reason.WITHIN_BUDGET,
            risk_level=RiskLevel.LOW,
            args_hash="0" * 64,
        )
        for i in range(501)
    )


@pytest.mark.parametrize("path", PAGED)
def test_a_list_answers_its_default_and_at_most_its_maximum_with_more_rows_stored(key_a, crowded, path):
    field, default, maximum, _ = PAGED[path]
    client = key_a.client()
    first = client.get(path).json()
    assert (first["limit"], len(first[field])) == (default, default)
    full = client.get(path, {"limit": maximum}).json()
    assert (full["limit"], len(full[field])) == (maximum, maximum)


@pytest.mark.parametrize("value", ["max+1", "1000000000"])
@pytest.mark.parametrize("path", PAGED)
def test_a_limit_over_the_maximum_is_a_422_not_a_clamp(key_a, path, value):
    maximum = PAGED[path][2]
    response = key_a.client().get(path, {"limit": maximum + 1 if value == "max+1" else value})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "int_type", "loc": ["query", "limit"], "msg": f"A whole number from 1 to {maximum}."}
    ]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "-1"),
        ("limit", "0"),
        ("limit", "abc"),
        ("limit", "1.5"),
        ("limit", ""),
        ("limit", "1e3"),
        ("limit", " 5"),
        ("offset", "-5"),
        ("offset", "abc"),
        ("offset", "1.5"),
        ("offset", "max+1"),
    ],
)
@pytest.mark.parametrize("path", PAGED)
def test_an_invalid_limit_or_offset_is_a_422_at_the_parameter(key_a, path, param, value):
    max_offset = PAGED[path][3]
    response = key_a.client().get(path, {param: max_offset + 1 if value == "max+1" else value})
    assert response.status_code == 422, response.content
    assert [problem["loc"] for problem in response.json()["detail"]] == [["query", param]]
    assert key_a.client().get(path, {"offset": max_offset}).status_code == 200  # the last offset allowed


@pytest.mark.parametrize("value", ["²", "9" * 5000], ids=["superscript-two", "5000-digits"])
@pytest.mark.parametrize("param", ["limit", "offset"])
@pytest.mark.parametrize("path", PAGED)
def test_a_limit_or_offset_that_only_looks_numeric_is_a_422(key_a, path, param, value):
    response = key_a.client().get(path, {param: value})
    assert response.status_code == 422
    assert [problem["loc"] for problem in response.json()["detail"]] == [["query", param]]


def test_the_tools_list_is_capped_at_1000_and_has_no_paging_parameters(key_a, account_a):
    """docs/api.md: a bare array of at most 1,000 tools (the largest plan allows 500); limit/offset are ignored."""
    now = timezone.now()
    Tool.objects.bulk_create(
        Tool(
            account=account_a,
            name=f"tool-{i:04d}",
            name_key=f"tool-{i:04d}",
            url=TOOL_URL,
            created_at=now,
            updated_at=now,
        )
        for i in range(1_001)
    )
    client = key_a.client()
    for params in ({}, {"limit": 10**9}, {"limit": "abc", "offset": "-5"}):
        response = client.get("/v1/tools", params)
        assert response.status_code == 200
        assert len(response.json()) == 1_000


def test_metrics_answer_at_most_366_days(key_a):
    client = key_a.client()
    year = client.get("/v1/metrics", {"from_day": "2025-01-01", "to_day": "2026-01-01"})
    assert year.status_code == 200 and len(year.json()["days"]) == 366
    response = client.get("/v1/metrics", {"from_day": "2025-01-01", "to_day": "2026-01-02"})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"type": "value_error", "loc": ["query", "to_day"], "msg": "At most 366 days per request."}
    ]


def test_agent_metrics_list_at_most_10_top_tools(key_a):
    client = key_a.client()
    for i in range(11):
        assert post(client, "/v1/ai/run", {"agent_id": "bot", "tool": f"tool_{i}"}).json()["allowed"]
    metrics = client.get("/v1/agents/bot/metrics").json()
    assert metrics["total_actions"] == 11
    assert len(metrics["top_tools"]) == 10


# --- dashboard list pages ------------------------------------------------------------------------------------------


@pytest.fixture
def operator(owner_a: Persona, key_a: Key) -> Client:
    """Account A's owner, logged in, with a governed agent, a decision and a run event to list."""
    client = key_a.client()
    post(client, "/v1/policies/bot", {"max_actions_per_hour": 100})
    post(client, "/v1/ai/run", {"agent_id": "bot", "tool": "search"})
    post(client, "/v1/events", {"run_id": "r", "type": "note"})
    return owner_a.login(Client(raise_request_exception=False))


PAGINATED = [
    pytest.param("/keys/", {}, id="keys"),
    pytest.param("/team/", {}, id="team"),
    pytest.param("/locks/", {"tab": "active"}, id="locks-active"),
    pytest.param("/locks/", {"tab": "finished"}, id="locks-finished"),
    pytest.param("/locks/", {"tab": "locks"}, id="locks-locks"),
    pytest.param("/runs/", {}, id="runs"),
    pytest.param("/agents/", {}, id="agents"),
    pytest.param("/audit/", {}, id="audit"),
    pytest.param("/tools/", {}, id="tools"),
]
ABSURD_PAGES = ["999999", "abc", "-1", "0", "1.5", "9" * 5000, "²"]
PAGE_IDS = ["999999", "abc", "-1", "0", "1.5", "5000-digits", "superscript"]


def _page_problem(response) -> str | None:
    """Why a list page's answer to an absurd ?page= is not a real page, or None."""
    if response.status_code != 200:
        return f"answered {response.status_code}"
    if "table" in response.context:  # a dashboard table (onceonly_site/tables.py): its own pager
        pager = response.context["table"].pager
        number, pages = pager["number"], pager["pages"]
    else:
        shown = response.context["page"]
        number, pages = shown.number, shown.paginator.num_pages
    return None if 1 <= number <= pages else f"shows page {number} of {pages}"


@pytest.mark.parametrize(("path", "params"), PAGINATED)
def test_an_absurd_page_number_shows_a_real_page(operator, path, params):
    """Every absurd value on one page, with one login: each failing (page, value) is named."""
    failures = []
    for page, name in zip(ABSURD_PAGES, PAGE_IDS, strict=True):
        try:
            problem = _page_problem(operator.get(path, {**params, "page": page}))
        except Exception as exc:  # a missing context entry fails this value, not the ones after it
            problem = f"raised {exc!r:.200}"
        if problem:
            failures.append(f"{path} {params} page={name}: {problem}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", ABSURD_PAGES, ids=PAGE_IDS)
def test_an_absurd_page_number_on_the_provider_events_page_shows_a_real_page(db, settings, django_user_model, page):
    settings.STRIPE_ENABLED = True
    admin = django_user_model.objects.create_superuser("root@example.com", "root@example.com", "pw-123-456-789")
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    response = client.get("/billing/events/", {"page": page})
    assert response.status_code == 200
    assert response.context["page"].number == 1


# Keyset pages: ?before= / ?after= cursors (decisions, run timeline) and ?a=&b= (policy diff). The run timeline's
# poll answers 286 (htmx: stop polling) once no run of the timeline is live.
SERVED = (200, 286)
CURSORS = [
    ("/decisions/", "before", {}),
    ("/decisions/", "after", {}),
    ("/runs/timeline/", "after", {"run_id": "r"}),
    ("/agents/{bot}/policy/", "a", {"b": "1"}),
]


def bot_page(path: str) -> str:
    """Dashboard agent pages name the agent by its row (governance/urls.py): bot's row."""
    return path.format(bot=Agent.objects.get(agent_id="bot").pk) if "{bot}" in path else path


@pytest.mark.parametrize("value", ["abc", "-1", "999999999", "9" * 40], ids=["abc", "-1", "999999999", "40-digits"])
@pytest.mark.parametrize(("path", "param", "params"), CURSORS, ids=[f"{p}?{n}" for p, n, _ in CURSORS])
def test_an_absurd_cursor_on_a_keyset_page_is_not_a_500(operator, path, param, params, value):
    assert operator.get(bot_page(path), {**params, param: value}).status_code in SERVED


@pytest.mark.parametrize("value", ["²", "9" * 5000], ids=["superscript-two", "5000-digits"])
@pytest.mark.parametrize(("path", "param", "params"), CURSORS, ids=[f"{p}?{n}" for p, n, _ in CURSORS])
def test_a_cursor_that_only_looks_numeric_is_not_a_500(operator, path, param, params, value):
    assert operator.get(bot_page(path), {**params, param: value}).status_code in SERVED


@pytest.mark.parametrize(
    "value", ["²", "9" * 5000, "abc", "", "99"], ids=["superscript-two", "5000-digits", "abc", "empty", "no-such"]
)
def test_a_rollback_to_a_version_that_does_not_exist_is_refused_with_a_message(operator, value):
    before = PolicyVersion.objects.count()
    response = operator.post(bot_page("/agents/{bot}/policy/rollback/"), {"version": value}, follow=True)
    assert response.status_code == 200
    assert "No such version." in [str(m) for m in response.context["messages"]]
    assert PolicyVersion.objects.count() == before
