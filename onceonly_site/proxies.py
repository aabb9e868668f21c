"""The client's address behind trusted reverse proxies (the failed-login lockout counts failures per address).

Behind a proxy every request comes from the proxy's address, so per-address counting would lock everyone out at
once. With ``ONCEONLY_TRUSTED_PROXIES = N`` the client is the N-th address from the right of ``X-Forwarded-For``:
each trusted proxy appends the address it received the request from, and anything to the left of those N entries
was written by the client and may be forged. With N = 0 (the default) the header is ignored.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.ONCEONLY_TRUSTED_PROXIES
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        return remote  # not (entirely) through the proxies: the connection's address is the only trustworthy one
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
