"""SSRF guard for tool URLs (docs/security.md, *Tool URLs and SSRF*): refuse hosts on loopback, private,
link-local, multicast, unspecified, reserved or cloud-metadata addresses — IPv4 and IPv6, IPv4-mapped IPv6, the IPv6
forms that embed or tunnel to an IPv4 address (6to4, Teredo, NAT64, IPv4-compatible, IPv4-translated), site-local
IPv6, and the legacy numeric forms (2130706433, 0177.0.0.1, 0x7f.1) that resolvers still accept. Checked at
registration and again at dispatch, on a literal address and on every address a name resolves to.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from onceonly_site.identifiers import CONTROL

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedUrl(ValueError):
    """The URL may not be used for a tool (message says why)."""


@dataclass(frozen=True)
class CheckedUrl:
    url: str
    host: str
    port: int
    addresses: tuple[str, ...]  # what it resolved to (pin one for the request); empty if it did not resolve
    warning: str = ""


# IPv6 ranges refused whatever their embedded IPv4 address, public or not, and whatever the Python version's
# `ipaddress` tables say (they differ between releases: 3.11 calls 6to4 and site-local global). Where a transition
# address leads is decided by relays and translators outside the server's control (a 6to4 relay, a Teredo server, a
# NAT64 translator whose local-use prefix may map anywhere), so the embedded address proves nothing; and no tool
# needs one: a tool on a public IPv4 address is registered by that address or by a name with an A record.
# IPv4-mapped addresses (::ffff:0:0/96) are not in this list: a socket connects to the IPv4 address itself, so
# refused_reason judges them by that address (a public one is accepted, as it is when written as IPv4).
REFUSED_IPV6 = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("2002::/16", "6to4"),
        ("2001::/32", "Teredo"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("::/96", "IPv4-compatible"),  # also holds :: and ::1, caught as unspecified and loopback first
        ("fec0::/10", "site-local"),
    )
)


# IPv4 ranges that some Python releases call global although no tool lives there: 192.0.0.0/24 holds IETF protocol
# assignments and, at 192.0.0.192, the legacy instance-metadata service of Oracle Cloud; 192.88.99.0/24 was the 6to4
# relay anycast prefix (deprecated: where it leads is a relay's choice, as for 2002::/16 above).
REFUSED_IPV4 = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("192.0.0.0/24", "IETF protocol assignments (cloud metadata)"),
        ("192.88.99.0/24", "6to4 relay"),
    )
)


def refused_reason(address: IP) -> str | None:
    if isinstance(address, ipaddress.IPv4Address):
        for network, label in REFUSED_IPV4:
            if address in network:
                return label
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refused_reason(address.ipv4_mapped)
        if not (address.is_loopback or address.is_unspecified):
            for network6, label in REFUSED_IPV6:
                if address in network6:
                    return label
    for check, label in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local/metadata"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, check):
            return label
    if not address.is_global:
        return "non-public"  # e.g. 100.64.0.0/10 shared address space (Alibaba Cloud metadata lives there)
    return None


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # decimal, octal and hex IPv4 forms, as the C resolver reads them
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


PLAIN_HTTP = (
    "Tool URLs on public addresses must be https://: over http:// anyone on the path reads the arguments and can "
    "forge the answer (ONCEONLY_ALLOW_HTTP_TOOL_URLS=1 allows http://)."
)


def _refuse_plain_http(scheme: str, private: bool) -> None:
    """http:// only to private addresses the operator allowed (a local network), or everywhere by setting."""
    if scheme == "http" and not settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS and not private:
        raise RefusedUrl(PLAIN_HTTP)


def check(url: str, *, resolve: bool = True) -> CheckedUrl:
    """Validate a tool URL; raise RefusedUrl with a clear message, or return what it resolves to."""
    if any(char.isspace() for char in url) or CONTROL.search(url):
        # urlsplit drops them silently (leading blanks, tabs, newlines): the URL stored would not be the one used.
        raise RefusedUrl("Tool URLs contain no whitespace or control characters (percent-encode them).")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # brackets that hold no IPv6 address, a host that NFKC turns into "/", "?", "#" or "@"…
        raise RefusedUrl("The URL cannot be read: its host is not a name or an IP address.") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise RefusedUrl("Tool URLs are http:// or https:// with a host.")
    if parts.username or parts.password:
        raise RefusedUrl("Tool URLs may not carry credentials; use the tool's signing secret.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedUrl("The URL's port is not a number from 1 to 65535.") from None
    host = hostname
    allow_private = settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS
    literal = _literal(host)
    if literal is not None:
        reason = refused_reason(literal)
        if reason and not allow_private:
            raise RefusedUrl(
                f"{host} is not a public address ({reason}); tools must be reachable on public addresses "
                "(ONCEONLY_ALLOW_PRIVATE_TOOL_URLS=1 allows private ones)."
            )
        _refuse_plain_http(parts.scheme, private=reason is not None)
        return CheckedUrl(url, host, port, (str(literal),))
    if not resolve:
        return CheckedUrl(url, host, port, ())
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:  # the IDNA codec: an empty label ("a..b") or one longer than 63 characters
        raise RefusedUrl(f"{host[:80]!r} is not a valid host name (empty or over-long label).") from None
    except socket.gaierror:
        return CheckedUrl(url, host, port, (), warning=f"{host} does not resolve yet; it is checked again at dispatch.")
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))  # str already (AF_INET/AF_INET6)
    reasons = [refused_reason(ipaddress.ip_address(text.split("%")[0])) for text in addresses]
    for reason in reasons:
        if reason and not allow_private:
            # The address itself is not named: the answer would tell any key holder what internal names resolve to.
            raise RefusedUrl(
                f"{host} resolves to a {reason} address, not a public one; tools must be reachable on "
                "public addresses (ONCEONLY_ALLOW_PRIVATE_TOOL_URLS=1 allows private ones)."
            )
    _refuse_plain_http(parts.scheme, private=all(reasons))
    return CheckedUrl(url, host, port, addresses)
