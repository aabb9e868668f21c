"""The real onceonly-sdk 3.0.5 against a live server: me() on every plan and its error mapping."""

import time

import httpx
import pytest
from onceonly import OnceOnly
from onceonly.exceptions import UnauthorizedError, ValidationError

from billing import services
from billing.services import account_set_plan
from tests.conftest import make_key


def test_sdk_me_returns_the_agency_plan(sdk):
    me = sdk.me()
    assert me["plan"] == "agency"
    assert me["account"] == "Acme"
    assert me["is_active"] is True


@pytest.mark.parametrize("plan_code", ["free", "starter", "pro", "agency"])
def test_sdk_me_on_every_plan(live_server, account_a, plans, plan_code):
    account_set_plan(account=account_a, plan=plans[plan_code])
    key = make_key(account_a)
    with OnceOnly(api_key=key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as client:
        assert client.me()["plan"] == plan_code


def test_sdk_accepts_a_base_url_without_v1(live_server, key_a):
    # The SDK appends /v1 when the base URL has no path (docs/api.md §"Base URL and the SDK").
    with OnceOnly(api_key=key_a.raw, base_url=live_server.url, fail_open=False) as client:
        assert client.me()["plan"] == "agency"


def test_sdk_wrong_key_raises_unauthorized(live_server, db):
    client = OnceOnly(api_key="once_live_wrong", base_url=f"{live_server.url}/v1", fail_open=False)
    with client, pytest.raises(UnauthorizedError, match="Invalid API key"):
        client.me()


def test_no_authorization_header_is_401(live_server, db):
    response = httpx.get(f"{live_server.url}/v1/me", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Missing Authorization Bearer token"}
    from onceonly._http import parse_json_or_raise

    with pytest.raises(UnauthorizedError, match="Missing Authorization Bearer token"):
        parse_json_or_raise(response)  # the SDK's own mapping of that response


def test_sdk_notifications_round_trip(sdk):
    result = sdk.update_notifications(run_failure_notifications_enabled=False)
    assert result["run_failure_notifications_enabled"] is False
    assert result["email_notifications_enabled"] is True


def test_sdk_maps_422_to_validation_error(live_server, key_a):
    with httpx.Client(base_url=f"{live_server.url}/v1", headers={"Authorization": f"Bearer {key_a.raw}"}) as http:
        response = http.post("/me/notifications", json={"email_notifications_enabled": "maybe"})
    assert response.status_code == 422
    from onceonly._http import parse_json_or_raise

    with pytest.raises(ValidationError, match="email_notifications_enabled"):
        parse_json_or_raise(response)


@pytest.mark.slow
def test_revoked_key_is_refused_by_every_process_within_one_second(gunicorn_server, account_a):
    """Two gunicorn worker processes, each with its own in-memory key cache: within one second of the revocation
    no process accepts the key any more. Every request uses a fresh connection so both workers serve some."""
    key = make_key(account_a)
    url = f"{gunicorn_server.url}/v1"

    def call() -> int:
        with OnceOnly(api_key=key.raw, base_url=url, fail_open=False) as client:
            try:
                client.me()
                return 200
            except UnauthorizedError:
                return 403

    assert [call() for _ in range(20)] == [200] * 20  # every worker has the key cached as valid
    services.api_key_revoke(api_key=key.api_key)  # transactional_db: this commits and runs on_commit
    revoked_at = time.monotonic()
    late_acceptances, refused = [], 0
    while time.monotonic() - revoked_at < 2.0:
        started = time.monotonic() - revoked_at
        status = call()
        if status == 200 and started >= 1.0:
            late_acceptances.append(round(started, 3))
        refused += status == 403
    assert late_acceptances == []
    assert refused > 10
