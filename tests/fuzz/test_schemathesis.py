"""Schemathesis against the server's own OpenAPI schema (/api/schema/), in-process through the WSGI app: with a
valid API key and with invalid ones, no generated request may produce a 5xx, and with a valid key every answer
must match the schema (status code's response schema, content type).

Schemathesis's pytest plugin does not run on pytest 9 here, so its Hypothesis strategy over every operation
(``schema.as_strategy()``) drives a plain ``@given``."""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from billing.models import Plan
from billing.services import account_set_plan
from tests.conftest import make_key

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                    derandomize=True)  # fmt: skip


@pytest.fixture
def api_schema(db):
    # As django.test.Client does: requests must not close the test's database connection (its transaction).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def test_valid_key_never_5xx_and_answers_match_the_schema(api_schema, account_a):
    # The largest plan, so no endpoint stops at a feature gate (403) before its own validation and logic.
    account_set_plan(account=account_a, plan=Plan.objects.get(code="agency"))
    headers = {"Authorization": f"Bearer {make_key(account_a).raw}"}

    @fuzz(400)
    @given(case=api_schema.as_strategy())
    def check(case):
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


@pytest.mark.parametrize("authorization", ["Bearer once_live_not-a-key", "Basic Zm9vOmJhcg==", "Bearer ", None])
def test_invalid_keys_never_5xx(api_schema, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}

    @fuzz(60)
    @given(case=api_schema.as_strategy())
    def check(case):
        response = case.call(headers=headers)
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code in (401, 403, 404, 405, 422), (case.method, case.path, response.status_code)

    check()
