"""Every URL pattern the resolver knows, for the tests that must cover each route without anyone listing them
(tenant isolation, control characters, the agent pages, the production crawl): a route added later is covered too."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass(frozen=True)
class ResolvedRoute:
    """One view's pattern and the ``include()``s that lead to it, outermost first."""

    namespace: str  # the instance namespaces on the way, joined with ":" ("" at the root)
    includes: tuple[URLResolver, ...]
    pattern: URLPattern

    @property
    def name(self) -> str | None:
        """The name ``reverse()`` takes (``"governance:agent-detail"``); None for an unnamed pattern."""
        if not self.pattern.name:
            return None
        return f"{self.namespace}:{self.pattern.name}" if self.namespace else self.pattern.name

    @property
    def regexes(self) -> list[str]:
        """The regular expression of each step, outermost first (a path matches them one after the other)."""
        return [step.pattern.regex.pattern for step in (*self.includes, self.pattern)]

    @property
    def text(self) -> str:
        """The route as written, the steps concatenated (``"v1/tools/<str:name>"``, ``"^.*$"`` for a regex)."""
        return "".join(str(step.pattern) for step in (*self.includes, self.pattern))


def walk_routes(urlconf: Any = None) -> Iterator[ResolvedRoute]:
    """Every pattern of ``urlconf`` (default: the project's ``ROOT_URLCONF``), in resolution order."""

    def walk(resolver: URLResolver, includes: tuple[URLResolver, ...], namespace: str) -> Iterator[ResolvedRoute]:
        for entry in resolver.url_patterns:
            if isinstance(entry, URLResolver):
                inner = ":".join(filter(None, [namespace, entry.namespace]))
                yield from walk(entry, (*includes, entry), inner)
            elif isinstance(entry, URLPattern):
                yield ResolvedRoute(namespace=namespace, includes=includes, pattern=entry)

    return walk(get_resolver(urlconf), (), "")
