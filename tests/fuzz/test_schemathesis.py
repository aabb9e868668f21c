"""Schemathesis against the server's own OpenAPI schema (/api/schema/), in-process through the WSGI app, with every
conformance check on, for requests the schema allows (positive) and requests it forbids (negative):

* the coverage phase: schemathesis's deterministic boundary cases of every operation (each field at its minimum and
  maximum, one past them, missing, null, of another type, a method the path does not have…);
* the fuzzing phase: Hypothesis-generated positive and negative cases over every operation (derandomized: the same
  examples every run; a failure prints the request);
* with invalid keys and none: every answer is a documented 401/403 of the right shape.

So the schema is the contract: every status an operation answers is documented with its body and headers, every
request it allows is accepted (2xx, or 404/409 about state), every request it forbids is refused with a 4xx. A failure
means the schema or the server is wrong: fix the one that is (onceonly_site/openapi.py holds the shared parts).

Schemathesis's pytest plugin does not run on pytest 9 here, so its strategies drive a plain ``@given``, and the
coverage phase's cases are iterated directly."""

import json
from datetime import date

import pytest
import rfc8785
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from billing.models import Plan
from billing.services import account_set_plan
from governance.api import MAX_METRICS_DAYS
from governance.mcp_servers import RESERVED_HEADERS
from idempotency.api import EVENT_FIELDS, MAX_EVENT_EXTRA_BYTES
from onceonly_site.identifiers import INVISIBLE, TOOL_INVISIBLE, identifier_problem, normalise_tool, tool_name_problem
from tests.conftest import make_key

# Every check schemathesis has that means something for a stateless API with one kind of credentials. Left off:
# * max_response_time: timing on a shared 2-core machine is not a property of the schema (docs/benchmarks.md has
#   the numbers);
# * use_after_free, ensure_resource_availability: stateful checks that follow the schema's links (it has none: no
#   operation returns an id another one takes), and they only run in schemathesis's stateful phase;
# * object_level_authorization: needs a second identity wired into schemathesis's engine; tenant isolation is checked
#   route by route in tests/test_tenant_isolation.py.
CHECKS = [
    not_a_server_error,
    status_code_conformance,  # every status answered is documented for the operation
    content_type_conformance,
    response_schema_conformance,  # …and its body matches the documented schema
    response_headers_conformance,  # Retry-After on 429/503, WWW-Authenticate on 401
    positive_data_acceptance,  # a request the schema allows is not refused (2xx, or 401/403/404/409/429)
    negative_data_rejection,  # a request the schema forbids is refused (4xx)
    missing_required_header,  # coverage: a request without the Authorization header is a 401
    unsupported_method,  # coverage: a method the path does not have is a 405 with Allow
    allow_header_conformance,  # OPTIONS lists exactly the documented methods
    ignored_auth,  # a 2xx with the key is a 401/403 without it and with an invalid one
]
# The fuzz registers tools, and a governed call it makes may name one: dispatch must reach nothing but loopback (and
# ask no DNS server), so tools are registered at a port where nothing listens (refused at once).
TOOL_URL = "http://127.0.0.1:9/fuzz"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )


@pytest.fixture
def api_schema(db, settings):
    # Loopback tool URLs (TOOL_URL) are allowed; a dispatch to one gives up quickly.
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS = True
    settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS = 0.5
    # No string may hold U+0000 anywhere in the API (docs/api.md §"The error contract": no database can store it);
    # JSON Schema cannot say so of a free-form object's keys and values, so schemathesis is told instead.
    config = SchemathesisConfig.from_dict({"generation": {"allow-x00": False}})
    # As django.test.Client does: requests must not close the test's database connection (its transaction).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application(), config=config)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def auth(account_a) -> dict[str, str]:
    # The largest plan, so no endpoint stops at a feature gate (403) or a quota (402) before its own validation.
    account_set_plan(account=account_a, plan=Plan.objects.get(code="agency"))
    return {"Authorization": f"Bearer {make_key(account_a).raw}"}


def _tool_names(case) -> list:
    """Every tool name or glob a positive case sends (governed call, run actions, policy fields)."""
    body = case.body if isinstance(case.body, dict) else {}
    names = []
    if case.path == "/v1/ai/run":
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        names += [body.get("tool"), *(action.get("tool") for action in metadata.get("actions") or [])]
    elif case.path.startswith("/v1/policies/"):
        for policy in (body, body.get("overrides") if isinstance(body.get("overrides"), dict) else {}):
            names += (policy.get("allowed_tools") or []) + (policy.get("blocked_tools") or [])
            names += [rule.get("tool") for rule in policy.get("pricing_rules") or []]
            names += list(policy.get("max_calls_per_tool") or {})
            approvals = policy.get("require_approval") or []
            names += [entry.get("tool") if isinstance(entry, dict) else entry for entry in approvals]
    return [name for name in names if isinstance(name, str)]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.items() for part in item for text in _strings(part)]
    return [text for item in value for text in _strings(item)] if isinstance(value, list) else []


def _unstatable(case) -> bool:
    """A positive case the server refuses by a rule JSON Schema cannot state (each rule is in the schema's text):
    a tool name's letters from one script and no unassigned code point (its pattern says the rest), a call-cap key
    being a tool name at all (OpenAPI 3.0 has no propertyNames) and two keys naming one tool, a non-zero policy
    amount that rounds to 0 at 6 decimals, integers beyond ±(2^53−1) in what is hashed as RFC 8785 JSON, an event's
    extra keys (names of at most 64 characters, 8 KB in all: no propertyNames either), the metrics range (to_day
    from from_day, at most 366 days), an export's since/until on the calendar, and the invisible characters beyond
    U+FFFF that identifiers refuse (no pattern can name them in both regex dialects: onceonly_site/openapi.py),
    wherever they are."""
    sent = _strings([case.path_parameters, case.query, case.body])
    if any(
        ord(char) > 0xFFFF and (INVISIBLE.match(char) or TOOL_INVISIBLE.match(char)) for text in sent for char in text
    ):
        return True
    body = case.body if isinstance(case.body, dict) else {}
    names = _tool_names(case)
    if any(
        identifier_problem(name) or not name.strip() or len(name) > 200 or tool_name_problem(name.strip())
        for name in names
    ):
        return True
    for policy in (body, body.get("overrides") if isinstance(body.get("overrides"), dict) else {}):
        caps = list(policy.get("max_calls_per_tool") or {})
        if len({normalise_tool(name) for name in caps}) < len(caps):
            return True
        rules = [rule for rule in policy.get("pricing_rules") or [] if isinstance(rule, dict)]
        gates = [entry for entry in policy.get("require_approval") or [] if isinstance(entry, dict)]
        amounts = [
            policy.get("max_spend_usd_per_day"),
            policy.get("max_spend_usd_per_run"),  # a policy's, or a paused run's resume
            *(rule.get("price_usd") for rule in rules),
            *(entry.get("over_usd") for entry in gates),
        ]
        if any(isinstance(amount, float) and amount != 0 and round(amount, 6) == 0 for amount in amounts):
            return True
    if case.path == "/v1/policies/apply" and isinstance(body.get("yaml"), str):
        from governance import policy_code

        if policy_code.read(body["yaml"]).errors:  # a string that is no policies file: JSON Schema cannot say so
            return True
    if case.path == "/v1/events" and case.method == "POST":
        extra = {name: value for name, value in body.items() if name not in EVENT_FIELDS}
        size = len(json.dumps(extra, separators=(",", ":"), ensure_ascii=False).encode(errors="surrogatepass"))
        if any(len(name) > 64 for name in extra) or size > MAX_EVENT_EXTRA_BYTES:
            return True
    hashed = [body.get(name) for name in ("args", "result", "data")]
    if case.path == "/v1/ai/run":
        hashed.append(body.get("metadata"))
    try:
        rfc8785.dumps([value for value in hashed if value is not None])
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        return True
    if case.path.startswith("/v1/mcp/servers") and str(body.get("auth_header_name", "")).lower() in RESERVED_HEADERS:
        return True  # a header the gateway sets itself (its description says so; no case-insensitive "not" in 3.0)
    if case.path == "/v1/metrics":
        first, last = (date.fromisoformat(case.query[name]) for name in ("from_day", "to_day"))
        return not 0 <= (last - first).days < MAX_METRICS_DAYS
    if case.path == "/v1/export/decisions":  # since/until: a time the calendar has (its pattern says the rest)
        from onceonly_site.tables import _parse_datetime

        times = [(case.query or {}).get(name) for name in ("since", "until")]
        return any(value is not None and _parse_datetime(str(value)) is None for value in times)
    return False


def send(case, auth: dict[str, str]) -> bool:
    """Call the case with the valid key and run every check; False when it was skipped (``_unstatable``)."""
    if case.meta.generation.mode.is_positive:
        if _unstatable(case):
            return False
        if case.path.startswith("/v1/mcp/servers") and isinstance(case.body, dict) and "url" in case.body:
            case.body["url"] = TOOL_URL  # a discovery must reach nothing but loopback, like a dispatch
        if case.method == "POST" and case.path == "/v1/tools" and isinstance(case.body, dict):
            case.body["url"] = TOOL_URL
            if case.body.get("auth") is None:  # a new tool needs its signing secret; whether it is new is state
                case.body["auth"] = {"secret": "fuzz-secret"}
    # A case without the Authorization header is about its absence (coverage's missing header, a negative case):
    # it is sent as it is. Any other gets the valid key in place of the generated one.
    headers = auth if "Authorization" in (case.headers or {}) else None
    case.call_and_validate(headers=headers, checks=CHECKS)
    return True


def test_coverage_cases_conform_to_the_schema(api_schema, auth):
    """Schemathesis's coverage phase over every operation: its boundary cases, positive and negative."""
    sent = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        cases = CoverageGenerator(
            operation=operation,
            generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            generation_config=api_schema.config.generation_for(operation=operation, phase="coverage"),
            auth_storage=None,
            override=Override(),
            feedback=FeedbackSources(),
        )
        for case in cases:
            sent += send(case, auth)
    assert sent > 1000  # every operation's cases ran (about 1,800 today)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_fuzzed_cases_conform_to_the_schema(api_schema, auth, mode):
    @fuzz(500)
    @given(case=api_schema.as_strategy(generation_mode=mode))
    def check(case):
        assume(send(case, auth))

    check()


@pytest.mark.parametrize("authorization", ["Bearer once_live_not-a-key", "Basic Zm9vOmJhcg==", "Bearer ", None])
def test_invalid_keys_are_documented_401_and_403(api_schema, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]

    @fuzz(40)
    @given(case=api_schema.as_strategy())
    def check(case):
        case.headers = {name: value for name, value in (case.headers or {}).items() if name != "Authorization"}
        response = case.call(headers=headers)
        case.validate_response(response, checks=checks)
        assert response.status_code in (401, 403, 404, 405, 422), (case.method, case.path, response.status_code)

    check()
