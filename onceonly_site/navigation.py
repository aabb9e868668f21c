"""The dashboard's main navigation, with its current section: a page under a section's path marks that section
(/agents/5/policy/ → Agents, /audit/verify/ → Audit log), so the nav shows where an operator is on every page.

A context processor (settings TEMPLATES) rather than template logic: the template language has no "starts with".
A section may show a badge (Approvals: how many are pending) from a function an app registers in ``BADGES`` (this
module imports Django only); it is called once per request and must not query the database — every page's query
count is pinned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

# (label, URL name, further path prefixes that belong to the section)
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Overview", "billing:overview", ()),
    ("Agents", "governance:agents", ()),
    ("Decisions", "governance:decisions", ()),
    ("Approvals", "governance:approvals", ()),
    ("Alerts", "governance:alerts", ()),
    ("Tools", "governance:tools", ()),
    ("Runs", "idempotency:runs", ()),
    ("Locks & leases", "idempotency:locks", ()),
    ("API keys", "billing:api-keys", ()),
    ("Audit log", "governance:audit", ()),
    ("Usage & plan", "billing:usage", ("/billing/",)),
    ("Team", "billing:team", ()),
    ("Settings", "billing:settings", ()),
)


# URL name of a section → a function of the request giving its badge's text (None: no badge). Registered by the app
# that owns the section (governance.approval_selectors.register).
BADGES: dict[str, Callable[[HttpRequest], str | None]] = {}


def _current(path: str, url: str, prefixes: tuple[str, ...]) -> str:
    """The aria-current value: "page" on the section's own page and on every page inside it (one link marked, the
    same way, on every page — tests/ui/test_browser_navigation.py), "" elsewhere."""
    if path == url or (url != "/" and (path.startswith(url) or any(path.startswith(p) for p in prefixes))):
        return "page"
    return ""


def main_nav(request: HttpRequest) -> dict[str, Any]:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    items = []
    for label, name, prefixes in SECTIONS:
        try:
            url = reverse(name)
        except NoReverseMatch:  # a deployment without one of the apps
            continue
        badge = BADGES[name](request) if name in BADGES else None
        items.append({"label": label, "url": url, "current": _current(request.path, url, prefixes), "badge": badge})
    return {"nav_items": items}
