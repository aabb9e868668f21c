"""The client's address behind trusted proxies (ONCEONLY_TRUSTED_PROXIES): what the login lockout counts by."""

import pytest
from django.test import Client, RequestFactory

from onceonly_site.proxies import client_address

PROXY = "127.0.0.1"


def request(forwarded: str | None = None, remote: str = PROXY):
    headers = {} if forwarded is None else {"HTTP_X_FORWARDED_FOR": forwarded}
    return RequestFactory().get("/", REMOTE_ADDR=remote, **headers)


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, "203.0.113.9", PROXY),  # not configured: the header is anyone's to write
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # the client wrote the left part itself
        (2, "203.0.113.9, 10.0.0.5", "203.0.113.9"),
        (2, "203.0.113.9", PROXY),  # fewer entries than proxies: did not come through all of them
        (1, None, PROXY),
        (1, "not-an-address", PROXY),
        (1, "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address(settings, hops, forwarded, expected):
    settings.ONCEONLY_TRUSTED_PROXIES = hops
    assert client_address(request(forwarded)) == expected


def test_behind_the_proxy_one_clients_failures_do_not_lock_out_the_others(db, settings):
    settings.ONCEONLY_TRUSTED_PROXIES = 1
    settings.ONCEONLY_LOGIN_MAX_FAILURES = 1  # ×10 per address

    def attempt(email, client_ip, forged=""):
        forwarded = f"{forged}, {client_ip}" if forged else client_ip
        return Client(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded).post(
            "/login/", {"username": email, "password": "wrong"}
        )

    for n in range(10):  # spread over emails so that only the address's own limit is reached
        attempt(f"user{n}@example.com", "198.51.100.7", forged=f"10.0.0.{n}")  # forging the left part changes nothing
    assert attempt("fresh@example.com", "198.51.100.7").status_code == 429
    assert attempt("fresh@example.com", "198.51.100.8").status_code == 200  # another client behind the same proxy
