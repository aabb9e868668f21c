"""Every /v1 operation of /api/schema/ documents the error statuses of the shared set (onceonly_site/openapi.py) it
can answer, and no other; each is the shared response component; and each status is produced here on every
operation that documents it, its answer checked against the schema by schemathesis (status documented, body,
headers, content type). tests/fuzz/test_schemathesis.py covers the statuses that depend on the request's data and
the objects' state (404 business errors, 409) from the other side: every status it meets must be documented."""

from __future__ import annotations

import re

import pytest
import yaml
from django.test import Client
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing import auth as key_auth
from billing.models import Plan
from billing.services import account_set_plan
from onceonly_site.openapi import BODY_ERRORS, COMMON_ERRORS, ERRORS, WHITESPACE
from onceonly_site.redis_client import get_redis
from tests.conftest import make_key
from tests.fuzz.test_schemathesis import api_schema  # noqa: F401 (a fixture)

# Beyond what every operation can answer (COMMON_ERRORS; BODY_ERRORS with a body): the statuses of the operation's
# own logic. Every operation of the schema is listed, so a new one needs a decision here.
OWN_ERRORS: dict[str, set[int]] = {
    "me": set(),
    "me_notifications_update": set(),
    "usage": set(),
    "usage_all": set(),
    "check_lock": {402},  # the month's make quota
    "ai_lease": {402},  # the month's ai quota
    "ai_extend": {409},  # lease_mismatch, lease_conflict
    "ai_complete": {409},
    "ai_fail": {409},
    "ai_cancel": {409},
    "ai_status": set(),
    "ai_result": set(),
    "ai_run": {402, 404},  # the ai quota (both forms); an unregistered tool in strict mode
    "run_timeline": {404},  # an empty run id: no route takes /v1/runs/ (nor /v1/agents//logs… below)
    "run_resume": {404, 409},  # run_not_found; run_not_paused (admin key)
    "events_list": set(),
    "events_post": set(),
    "metrics": set(),
    "policies_list": set(),
    "policy_get": {404},  # policy_not_found
    "policy_upsert": {404},
    "policy_from_template": set(),
    "policies_export": set(),
    "policies_apply": set(),  # a file's problems are 422s (in the shared set)
    "agent_disable": {404},
    "agent_enable": {404},
    "agent_release": {404, 409},  # agent_not_contained
    "agent_logs": {404},
    "agent_metrics": {404},
    "tools_list": set(),
    "tools_upsert": {402},  # plan_limit
    "tool_get": {404},  # tool_not_found
    "tool_delete": {404},
    "tool_toggle": {404},
    "mcp_servers_list": set(),
    "mcp_server_register": {409},  # mcp_server_exists; a failed discovery is answered in the 201's body
    "mcp_server_get": {404},  # mcp_server_not_found
    "mcp_server_update": {404},
    "mcp_server_delete": {404},
    "mcp_server_discover": {404},
    "mcp_server_tool_update": {404},  # mcp_server_not_found, mcp_tool_not_found
    "approvals_list": set(),
    "alerts_list": set(),
    "approval_get": {404},  # approval_not_found
    "approval_approve": {404, 409},  # approval_not_found; approval_not_pending (admin key)
    "approval_deny": {404, 409},
    "policy_shadow_get": {404},  # agent_not_found
    "policy_shadow_start": set(),  # (registers the agent on first sight, as the policy upsert does)
    "policy_shadow_stop": {404},  # shadow_not_found
    "policy_shadow_promote": {404, 409},  # shadow_not_found; policy_changed
    "export_decisions": set(),  # bad filters are 422s (in the shared set)
    "export_runs": set(),
    "export_run_events": set(),  # an unknown run id is an empty file
    "export_audit": set(),
    "legal_hold_get": set(),
    "legal_hold_set": {404},  # agent_not_found (admin key)
}
# Bodies that get past validation where the rate limit is taken after it (docs/api.md §"Rate limits").
VALID_BODY = {"check_lock": {"key": "k"}, "ai_lease": {"key": "k"}, "ai_run": {"key": "k"}}
TOO_LARGE = {"pad": "x" * (2_621_440 + 1)}  # one byte past DATA_UPLOAD_MAX_MEMORY_SIZE once quoted


def _operations() -> list[tuple[str, str, dict]]:
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    return [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def _expected(path: str, operation: dict) -> set[int]:
    expected = set(COMMON_ERRORS) | OWN_ERRORS[operation["operationId"]]
    if "requestBody" in operation:
        expected |= set(BODY_ERRORS)
    return expected


def test_every_operation_documents_exactly_the_errors_it_can_answer(db):
    operations = _operations()
    assert {op["operationId"] for _, _, op in operations} == set(OWN_ERRORS)
    for path, method, operation in operations:
        documented = {int(status) for status in operation["responses"] if int(status) >= 400}
        assert documented == _expected(path, operation), (method, path)
        for status in documented:  # the shared component, not a copy
            assert operation["responses"][str(status)] == {"$ref": f"#/components/responses/{ERRORS[status][0]}"}


def test_the_shared_error_components_carry_their_headers(db):
    components = yaml.safe_load(Client().get("/api/schema/").content)["components"]["responses"]
    for status in (429, 503):
        header = components[ERRORS[status][0]]["headers"]["Retry-After"]
        assert header["required"] and header["schema"] == {"type": "integer", "minimum": 1}
    assert components["Unauthorized"]["headers"]["WWW-Authenticate"]["required"]


def test_the_schemas_whitespace_is_what_str_strip_removes():
    """The patterns spell whitespace out (ECMAScript's \\s differs from Python's); they must agree with strip()."""
    whitespace = re.compile(f"[{WHITESPACE}]")
    spelled = {chr(c) for c in range(0x110000) if whitespace.fullmatch(chr(c))}
    assert spelled == {chr(c) for c in range(0x110000) if chr(c).isspace()}


@pytest.fixture
def tight_key(account_b):
    """A key of another account, on the agency plan but with a bucket of one token refilled once a second."""
    plan = Plan.objects.get(code="agency")
    plan.pk, plan.code, plan.name, plan.rate_limit_per_second, plan.rate_limit_burst = None, "tight", "Tight", 1, 1
    plan.save()
    account_set_plan(account=account_b, plan=plan)
    return make_key(account_b).raw


def _case(api_schema, operation, *, headers=None, query=None, body=None, media_type=None, path_value="x"):  # noqa: F811
    path_parameters = {name: path_value for name in re.findall(r"\{(\w+)\}", operation.path)}
    kwargs = {"body": body, "media_type": media_type} if body is not None else {}
    return operation.Case(path_parameters=path_parameters, headers=headers or {}, query=query, **kwargs)


def _check(case, response, status: int) -> None:
    assert response.status_code == status, (case.method, case.path, response.status_code, response.text[:300])
    case.validate_response(
        response,
        checks=[
            status_code_conformance,
            response_schema_conformance,
            response_headers_conformance,
            content_type_conformance,
        ],
    )


def test_every_operation_answers_the_shared_errors_as_documented(api_schema, key_a, tight_key):  # noqa: F811
    key, tight = {"Authorization": f"Bearer {key_a.raw}"}, {"Authorization": f"Bearer {tight_key}"}
    # Only schemathesis's WSGI calls here: a django.test.Client request would reconnect close_old_connections.
    drain = api_schema["/v1/me"]["GET"].Case(headers=tight)
    produced = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        has_body = operation.method.upper() in ("POST", "PUT", "PATCH")
        # 401, 403: no key, an unknown one.
        case = _case(api_schema, operation)
        _check(case, case.call(), 401)
        case = _case(api_schema, operation, headers={"Authorization": "Bearer once_live_unknown"})
        _check(case, case.call(), 403)
        # 422: a control character in a query value (the middleware, before anything else).
        case = _case(api_schema, operation, headers=key, query={"x": "\x01"})
        _check(case, case.call(), 422)
        # 400: more query parameters than Django reads (DATA_UPLOAD_MAX_NUMBER_FIELDS).
        case = _case(api_schema, operation, headers=key, query={f"q{i}": "1" for i in range(1001)})
        _check(case, case.call(), 400)
        # 406: an Accept header without JSON (negotiated before authentication).
        case = _case(api_schema, operation, headers={"Accept": "text/html"})
        _check(case, case.call(), 406)
        if has_body:
            # 413: a body past the limit; 415: a body that is not JSON.
            case = _case(api_schema, operation, headers=key, body=TOO_LARGE, media_type="application/json")
            _check(case, case.call(), 413)
            case = _case(api_schema, operation, headers={**key, "Content-Type": "text/plain"})
            _check(case, case.call(data=b"key=k"), 415)
        # 429: the bucket's one token taken just before (a refill in between is retried).
        body = VALID_BODY.get(operation.definition.raw["operationId"])
        for _ in range(5):
            drain.call()
            case = _case(api_schema, operation, headers=tight, body=body, media_type="application/json")
            response = case.call()
            if response.status_code == 429:
                break
        _check(case, response, 429)
        produced += 1
    assert produced == len(OWN_ERRORS)


def test_with_redis_unreachable_every_answer_is_documented(api_schema, key_a, settings):  # noqa: F811
    """503 (with Retry-After) where Redis is needed; whatever an operation answers without it is documented too."""
    get_redis.cache_clear()
    key_auth.clear_local_cache()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    statuses = {}
    try:
        for result in api_schema.get_all_operations():
            operation = result.ok()
            body = VALID_BODY.get(operation.definition.raw["operationId"])
            case = _case(
                api_schema,
                operation,
                headers={"Authorization": f"Bearer {key_a.raw}"},
                body=body,
                media_type="application/json",
            )
            response = case.call()
            case.validate_response(
                response, checks=[status_code_conformance, response_schema_conformance, response_headers_conformance]
            )
            statuses[operation.label] = response.status_code
    finally:
        get_redis.cache_clear()
    # check-lock keeps working without Redis (its locks are in the database too); leases and runs need their quota.
    assert statuses["POST /v1/ai/lease"] == statuses["POST /v1/ai/run"] == 503, statuses


# How each operation's own error is produced: (status, path parameter value, body).
LEASE = {"key": "k409", "lease_id": "not-the-holder"}
OWN_ERROR_REQUESTS: dict[str, list[tuple[int, str, dict | None]]] = {
    "check_lock": [(402, "", {"key": "k"})],
    "ai_lease": [(402, "", {"key": "k"})],
    "ai_run": [(402, "", {"key": "k"}), (404, "", {"agent_id": "bot", "tool": "unregistered"})],
    "tools_upsert": [(402, "", {"name": "second", "url": "https://8.8.8.8/t", "auth": {"secret": "s" * 8}})],
    "ai_extend": [(409, "", LEASE)],
    "ai_complete": [(409, "", LEASE)],
    "ai_fail": [(409, "", {**LEASE, "error_code": "e"})],
    "ai_cancel": [(409, "", LEASE)],
    "run_timeline": [(404, "", None)],
    "run_resume": [(404, "nobody", {}), (409, "done-run", {})],
    "policy_get": [(404, "x", None)],
    "policy_upsert": [(404, "", {})],
    "agent_disable": [(404, "", {})],
    "agent_enable": [(404, "", {})],
    "agent_release": [(404, "", None), (409, "nobody", None)],
    "agent_logs": [(404, "", None)],
    "agent_metrics": [(404, "", None)],
    "tool_get": [(404, "x", None)],
    "tool_delete": [(404, "x", None)],
    "tool_toggle": [(404, "x", {"enabled": True})],
    "mcp_server_register": [(409, "", {"name": "taken", "url": "https://8.8.8.8/mcp"})],
    "mcp_server_get": [(404, "x", None)],
    "mcp_server_update": [(404, "x", {})],
    "mcp_server_delete": [(404, "x", None)],
    "mcp_server_discover": [(404, "x", {})],
    "mcp_server_tool_update": [(404, "x", {})],
    "approval_get": [(404, "apr_x", None)],
    "approval_approve": [(404, "apr_x", {}), (409, "apr_decided", {})],
    "approval_deny": [(404, "apr_x", {"reason": "r"}), (409, "apr_decided", {"reason": "r"})],
    "policy_shadow_get": [(404, "nobody", None)],
    "policy_shadow_stop": [(404, "nobody", None)],
    "legal_hold_set": [(404, "", {"held": True, "reason": "r", "agent_id": "nobody"})],
    "policy_shadow_promote": [
        (404, "nobody", {"shadow_id": "s1"}),
        (409, "bot", {"shadow_id": "s1", "expected_version": 5}),  # bot's candidate, against no version
    ],
}
# Operations whose own errors need an admin-scoped key (the others refuse with 403 admin_key_required first).
ADMIN_OPERATIONS = {"approval_approve", "approval_deny", "legal_hold_set", "agent_release", "run_resume"}


@pytest.fixture
def admin_key(account_a):
    """An admin-scoped key of account A, whose approval `apr_decided` is already approved."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.services import api_key_create
    from governance.models import Agent, Approval, McpServer

    # (bot also carries a shadow candidate "s1": promoting it against a version it does not have is a 409.)
    agent = Agent.objects.create(account=account_a, agent_id="bot", shadow_policy={}, shadow_id="s1")
    Approval.objects.create(
        public_id="apr_decided", account=account_a, agent=agent, tool="t", args_hash="0" * 64, rule={"tool": "t"},
        risk_level="low", status=Approval.Status.APPROVED, expires_at=timezone.now() + timedelta(hours=1),
    )  # fmt: skip
    McpServer.objects.create(account=account_a, name="taken", url="https://8.8.8.8/mcp")  # registering it: 409
    # A keyed run of "done-run" that finished: resuming it is a 409 (not paused).
    from idempotency.models import Lease, Run

    now = timezone.now()
    lease = Lease.objects.create(
        account=account_a, key="done-run", status="completed", lease_id="l1", ttl_seconds=60, first_seen_at=now,
        acquired_at=now, expires_at=now, updated_at=now,
    )  # fmt: skip
    Run.objects.create(
        account=account_a, lease=lease, key="done-run", lease_version=1, holder="l1", run_id="done-run",
        status="completed", created_at=now, enqueued_at=now, deadline_at=now,
    )  # fmt: skip
    return api_key_create(account=account_a, scope="admin").raw


@pytest.fixture
def exhausted_key(plans):
    """A key of an account whose plan allows no check-lock, no lease and one tool (registered), in strict mode."""
    from billing.services import account_get_or_create
    from governance.models import Tool

    plan = Plan.objects.get(code="agency")
    plan.pk, plan.code, plan.name = None, "exhausted", "Exhausted"
    plan.make_monthly_limit = plan.ai_monthly_limit = 0
    plan.tools_limit = 1
    plan.save()
    account = account_get_or_create(name="Initech", plan_code="exhausted")[0]
    account.strict_mode = True
    account.save(update_fields=["strict_mode"])
    Tool.objects.create(account=account, scope_id="global", name="first", url="https://8.8.8.8/t")
    return make_key(account).raw


def test_every_operation_answers_its_own_errors_as_documented(api_schema, key_a, exhausted_key, admin_key):  # noqa: F811
    assert {op for op, statuses in OWN_ERRORS.items() if statuses} == set(OWN_ERROR_REQUESTS)
    key, exhausted = {"Authorization": f"Bearer {key_a.raw}"}, {"Authorization": f"Bearer {exhausted_key}"}
    admin = {"Authorization": f"Bearer {admin_key}"}
    api_schema["/v1/ai/lease"]["POST"].Case(headers=key, body={"key": "k409"}, media_type="application/json").call()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        requests = OWN_ERROR_REQUESTS.get(operation.definition.raw["operationId"], [])
        assert {status for status, _, _ in requests} == OWN_ERRORS[operation.definition.raw["operationId"]]
        for status, path_value, body in requests:
            headers = exhausted if status == 402 or body == {"agent_id": "bot", "tool": "unregistered"} else key
            if operation.definition.raw["operationId"] in ADMIN_OPERATIONS:
                headers = admin
            case = _case(
                api_schema, operation, headers=headers, body=body, media_type="application/json", path_value=path_value
            )
            _check(case, case.call(), status)
