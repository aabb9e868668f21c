"""GET /v1/me and POST /v1/me/notifications (docs/api.md §"GET /v1/me", §"POST /v1/me/notifications"), plus the
error contract on them."""

import json

import pytest

from billing.models import Account, AuditEntry
from billing.services import account_set_plan
from tests.conftest import make_key


@pytest.mark.parametrize("plan_code", ["free", "starter", "pro", "agency"])
def test_me_reports_the_plan_of_every_plan(account_a, plans, plan_code):
    account_set_plan(account=account_a, plan=plans[plan_code])
    key = make_key(account_a)
    response = key.client().get("/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body["plan"] == plan_code
    assert body["is_active"] is True
    assert body["account"] == "Acme"
    assert body["key_preview"] == key.api_key.preview
    assert body["current_period_end"].endswith("T00:00:00Z")
    assert isinstance(body["requests_total_all_time"], int) and body["requests_total_all_time"] >= 1
    assert body["blocked_total_all_time"] == 0


def test_requests_total_counts_every_authenticated_call(key_a, settings):
    settings.ONCEONLY_COUNTER_FLUSH_SECONDS = 0  # flush on every request: the database holds the count
    client = key_a.client()
    for _ in range(3):
        client.get("/v1/me")
    account = Account.objects.get(pk=key_a.api_key.account_id)
    assert account.requests_total_all_time == 3
    assert client.get("/v1/me").json()["requests_total_all_time"] == 4


def test_get_with_json_content_type_and_empty_body_is_accepted(key_a):
    response = key_a.client().get("/v1/me", content_type="application/json")
    assert response.status_code == 200


def test_request_id_is_echoed(key_a):
    response = key_a.client().get("/v1/me", headers={"X-Request-Id": "req-123:abc"})
    assert response["X-Request-Id"] == "req-123:abc"


def test_request_id_is_generated_when_missing_or_unsafe(key_a):
    generated = key_a.client().get("/v1/me")["X-Request-Id"]
    assert len(generated) == 32
    unsafe = key_a.client().get("/v1/me", headers={"X-Request-Id": "a b\u00e9<script>"})["X-Request-Id"]
    assert unsafe != "a b\u00e9<script>" and len(unsafe) == 32


def test_notifications_partial_update_returns_all_three(key_a):
    response = key_a.client().post(
        "/v1/me/notifications", {"tool_error_notifications_enabled": False}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json() == {
        "email_notifications_enabled": True,
        "tool_error_notifications_enabled": False,
        "run_failure_notifications_enabled": True,
    }
    account = Account.objects.get(pk=key_a.api_key.account_id)
    assert account.tool_error_notifications_enabled is False
    assert account.email_notifications_enabled is True
    entry = AuditEntry.objects.get(action="billing.notifications.updated")
    assert entry.data == {"tool_error_notifications_enabled": False}
    assert entry.actor_label == f"api key {key_a.api_key.preview}"


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({}, ["body"]),
        ({"email_notifications_enabled": "yes"}, ["body", "email_notifications_enabled"]),
        ({"email_notifications_enabled": 1}, ["body", "email_notifications_enabled"]),
        ({"email_notifications": True}, ["body", "email_notifications"]),
        ([True], ["body"]),
    ],
)
def test_bad_notification_bodies_are_422_and_write_nothing(key_a, payload, loc):
    response = key_a.client().post("/v1/me/notifications", payload, content_type="application/json")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc
    assert detail[0]["msg"]
    account = Account.objects.get(pk=key_a.api_key.account_id)
    assert account.email_notifications_enabled is True
    assert not AuditEntry.objects.filter(action="billing.notifications.updated").exists()


def test_empty_post_body_is_422(key_a):
    response = key_a.client().post("/v1/me/notifications", b"", content_type="application/json")
    assert response.status_code == 422


def test_malformed_json_is_422_with_a_clear_message(key_a):
    response = key_a.client().post(
        "/v1/me/notifications", b'{"email_notifications_enabled": tru', content_type="application/json"
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["type"] == "json_invalid"
    assert "JSON" in detail[0]["msg"]


def test_wrong_method_is_a_json_405(key_a):
    response = key_a.client().delete("/v1/me", content_type="application/json")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_unknown_v1_route_is_a_json_404(key_a):
    response = key_a.client().get("/v1/no/such/thing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert response["X-Request-Id"]


def test_non_json_content_type_is_a_clear_4xx(key_a):
    response = key_a.client().post("/v1/me/notifications", "a=b", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "detail" in json.loads(response.content)
