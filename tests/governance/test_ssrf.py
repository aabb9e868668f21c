"""The SSRF guard (governance/ssrf.py) on the IPv6 forms that carry or reach an IPv4 address, and on deprecated
site-local IPv6: refused when a tool is registered, and again at dispatch (a tool saved earlier, or a name whose DNS
changed since, is refused before any request is made). Public addresses stay accepted (docs/security.md, *Tool URLs
and SSRF*; docs/tools.md)."""

import ipaddress

import pytest

from billing.models import Notification
from governance import ssrf
from governance.models import Decision, Tool
from tests.support.governance import governed_call, register_tool

# (address, what it is). Transition forms are refused whatever IPv4 address they embed: see ssrf.py for why.
REFUSED = [
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("2002:a00:1::1", "6to4 of 10.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 of the metadata address 169.254.169.254"),
    ("2002:5db8:d822::1", "6to4 of the public 93.184.216.34"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo, client 127.0.0.1"),
    ("2001:0:a00:1:8000:63bf:a247:27dd", "Teredo, server 10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:a247:27dd", "Teredo, both public"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("64:ff9b::5db8:d822", "NAT64 of the public 93.184.216.34"),
    ("64:ff9b:1::7f00:1", "local-use NAT64 of 127.0.0.1"),
    ("64:ff9b:1::5db8:d822", "local-use NAT64 of 93.184.216.34"),
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1"),
    ("::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::127.0.0.1", "IPv4-compatible 127.0.0.1"),
    ("::10.0.0.1", "IPv4-compatible 10.0.0.1"),
    ("::93.184.216.34", "IPv4-compatible 93.184.216.34"),
    ("::ffff:0:7f00:1", "IPv4-translated 127.0.0.1"),
    ("::ffff:0:a00:1", "IPv4-translated 10.0.0.1"),
    ("::ffff:0:5db8:d822", "IPv4-translated 93.184.216.34"),
    ("fec0::1", "site-local"),
    ("feff::1", "site-local, last /16 of fec0::/10"),
    ("192.0.0.192", "Oracle Cloud's legacy metadata address (192.0.0.0/24, global to some Pythons)"),
    ("192.0.0.9", "IETF protocol assignment"),
    ("::ffff:192.0.0.192", "IPv4-mapped 192.0.0.192"),
    ("192.88.99.1", "6to4 relay anycast"),
]

ACCEPTED = [
    ("93.184.216.34", "public IPv4"),
    ("2606:2800:220:1::1", "public IPv6"),
    ("2a00:1450:4001::1", "public IPv6"),
    ("2001:4860:4860::8888", "public IPv6 in 2001::/16 but outside Teredo's 2001::/32"),
    ("2003::1", "public IPv6 next to 6to4's 2002::/16"),
    ("::ffff:93.184.216.34", "IPv4-mapped public IPv4: the same destination as 93.184.216.34"),
]


def url(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}/hook"


def register(client, address):
    return register_tool(client, "hook", url(address), max_retries=0, timeout_ms=1000)


@pytest.mark.parametrize(("address", "what"), REFUSED, ids=[a for a, _ in REFUSED])
def test_registration_refuses_ipv6_forms_of_non_public_or_tunnelled_ipv4(key_a, address, what):
    response = register(key_a.client(), address)
    assert response.status_code == 422, what
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "url"] and "not a public address" in problem["msg"], problem
    assert not Tool.objects.exists()


@pytest.mark.parametrize(("address", "what"), ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_registration_accepts_public_addresses(key_a, address, what):
    response = register(key_a.client(), address)
    assert response.status_code == 200, (what, response.content)
    assert Tool.objects.get().url == url(address)


@pytest.mark.parametrize(("address", "what"), REFUSED, ids=[a for a, _ in REFUSED])
def test_dispatch_refuses_them_too_without_a_request(key_a, settings, address, what):
    """The pattern of test_plain_http_stays_refused_at_dispatch_for_a_tool_saved_before: the tool was saved while the
    guard let it through (here: private addresses allowed; in production: a name whose DNS answer changed since)."""
    client = key_a.client()
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    assert register(client, address).status_code == 200
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    answer = governed_call(client, "bot", "hook", args={}).json()
    assert (answer["decision"], answer["policy_reason"]) == ("failed", "tool_error"), what
    [note] = Notification.objects.filter(kind="tool_error")
    assert "not a public address" in note.subject, note.subject  # the guard refused: no connection was tried
    assert Decision.objects.get(tool="hook").outcome == "failed"


@pytest.mark.parametrize(("address", "what"), REFUSED + ACCEPTED, ids=[a for a, _ in REFUSED + ACCEPTED])
def test_resolved_addresses_are_judged_by_the_same_rule(address, what):
    """A host name's addresses (getaddrinfo at registration and at dispatch) go through refused_reason too."""
    reason = ssrf.refused_reason(ipaddress.ip_address(address))
    assert (reason is None) == ((address, what) in ACCEPTED), (address, reason)
