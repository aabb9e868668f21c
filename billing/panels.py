"""Overview panels contributed by other apps (billing imports neither governance nor idempotency,
docs/architecture.md §2.3).

An app registers a function in its ``AppConfig.ready()``; the overview calls each with the account and renders
the template it names with the context it returns (or skips it when it returns None).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from billing.models import Account

Panel = Callable[[Account], dict[str, Any] | None]
_panels: list[Panel] = []


def register(panel: Panel) -> Panel:
    if panel not in _panels:
        _panels.append(panel)
    return panel


def render_all(account: Account) -> list[dict[str, Any]]:
    return [ctx for panel in _panels if (ctx := panel(account)) is not None]
