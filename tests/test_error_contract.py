"""No stack trace ever reaches a client: an unexpected exception in a /v1 view is a JSON 500 with a request id."""

import pytest
from django.test import Client
from django.urls import path
from rest_framework.views import APIView

from onceonly_site import urls as site_urls


class Boom(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        raise RuntimeError("secret internal detail")


urlpatterns = [path("v1/boom", Boom.as_view()), path("page-boom", lambda r: 1 / 0), *site_urls.urlpatterns]
handler500 = site_urls.handler500
handler404 = site_urls.handler404


@pytest.fixture
def crashing_urls(settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False


def test_unexpected_error_in_api_is_json_500_without_trace(db, crashing_urls):
    response = Client(raise_request_exception=False).get("/v1/boom", headers={"X-Request-Id": "trace-me"})
    assert response.status_code == 500
    body = response.json()
    assert body["detail"]["error"] == "internal_error"
    assert body["detail"]["request_id"] == "trace-me"
    assert "secret internal detail" not in response.content.decode()
    assert "Traceback" not in response.content.decode()


def test_unexpected_error_in_a_page_is_the_html_500_page(db, crashing_urls):
    response = Client(raise_request_exception=False).get("/page-boom")
    assert response.status_code == 500
    assert b"Server error" in response.content
    assert b"ZeroDivisionError" not in response.content


def test_unknown_page_is_the_html_404(db):
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_unexpected_error_is_json_even_with_debug_on(db, crashing_urls, settings):
    settings.DEBUG = True  # make run serves with DEBUG on: the API must still never send a traceback
    response = Client(raise_request_exception=False).get("/v1/boom")
    assert response.status_code == 500
    assert response.json()["detail"]["error"] == "internal_error"
    assert "secret internal detail" not in response.content.decode()


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 5000])
def test_absurdly_nested_json_is_422_not_500(key_a, raw):
    response = key_a.client().post("/v1/me/notifications", raw, content_type="application/json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_oversized_body_is_a_json_413(key_a):
    blob = b'{"key": "' + b"x" * 3_000_000 + b'"}'
    response = key_a.client().post("/v1/check-lock", blob, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["detail"]["error"] == "payload_too_large"


def test_bad_host_on_the_api_is_a_json_400(key_a):
    response = key_a.client().get("/v1/me", HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response.json()["detail"]["error"] == "bad_request"


def test_a_key_whose_account_was_deleted_is_refused_not_500(key_a):
    client = key_a.client()
    assert client.get("/v1/me").status_code == 200  # cached as valid
    from billing.models import Account

    Account.objects.filter(pk=key_a.api_key.account_id).delete()
    response = client.get("/v1/me")
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid API key"}


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/check-lock", '{"key": "k", "metadata": {"s": "a\\u0000b"}}', ["body", "metadata"]),
        ("/v1/check-lock", '{"key": "k\\ud800"}', ["body", "key"]),
        ("/v1/ai/lease", '{"key": "k", "metadata": {"\\udc00": 1}}', ["body", "metadata"]),
        ("/v1/ai/run", '{"agent_id": "a", "tool": "t", "args": {"x": ["\\u0000"]}}', ["body", "args"]),
        ("/v1/check-lock", '{"key": "k", "\\u0000": 1}', ["body"]),
        ("/v1/check-lock", '{"key": "k", "ttl": NaN}', ["body"]),
        ("/v1/ai/lease", '{"key": "k", "ttl": Infinity}', ["body"]),
    ],
)
def test_text_no_database_can_store_is_a_422_and_writes_nothing(key_a, path, body, loc):
    """Found by schemathesis: U+0000 in a jsonb value was a 500 on PostgreSQL. Now, like any body that is not
    storable JSON, it is a 422 located at the field holding it — on check-lock's lean path and on DRF's."""
    from governance.models import Decision
    from idempotency.models import Lease, LockRecord

    response = key_a.client().post(path, body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert [item["loc"] for item in response.json()["detail"]] == [loc]  # the field holding it, when one does
    assert LockRecord.objects.count() == Lease.objects.count() == Decision.objects.count() == 0


@pytest.mark.parametrize("path", ["/v1/no-such-route", "/v1/agents//disable", "/v1"])
def test_a_post_to_an_unknown_v1_route_is_the_json_404_not_the_csrf_page(db, path):
    """API clients send no CSRF token: the catch-all answered their POST with Django's HTML 403 CSRF page."""
    response = Client(enforce_csrf_checks=True).post(path, "{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
