"""Overview panels contributed by other apps (billing imports neither governance nor idempotency,
docs/architecture.md §2.3).

An app registers a function in its ``AppConfig.ready()``; the overview calls each with the account (and, when it
registered ``with_request=True``, the request too: a panel may read its query string, e.g. a time range) and renders
the template it names with the context it returns (or skips it when it returns None). ``first=True`` panels come
before the others; a context with ``"full_width": True`` is laid out above the grid of cards, across the page, and
``"scripts"`` lists the static files (paths under static/) the page loads for it, deferred, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from billing.models import Account

Panel = Callable[..., dict[str, Any] | None]


@dataclass(frozen=True)
class _Entry:
    panel: Panel
    with_request: bool
    first: bool


_panels: list[_Entry] = []


def register(panel: Panel, *, with_request: bool = False, first: bool = False) -> Panel:
    """Add ``panel`` (once): called as ``panel(account)``, or ``panel(account, request)`` with ``with_request``."""
    if all(entry.panel is not panel for entry in _panels):
        _panels.append(_Entry(panel, with_request, first))
    return panel


def render_all(account: Account, request: HttpRequest | None = None) -> list[dict[str, Any]]:
    ordered = sorted(_panels, key=lambda entry: not entry.first)  # stable: registration order otherwise
    contexts = (entry.panel(account, request) if entry.with_request else entry.panel(account) for entry in ordered)
    return [ctx for ctx in contexts if ctx is not None]
