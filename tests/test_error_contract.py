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
