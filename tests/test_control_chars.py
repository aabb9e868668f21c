"""Control characters in a path or a query value are refused before any view runs.

``%00`` in a path segment or a query value was a 500 on PostgreSQL wherever a view queried with it (``/v1/tools/a%00b``,
``/v1/runs/a%00b``, ``/v1/ai/status?key=…``, the agent pages). ``ControlCharactersMiddleware`` now refuses every C0,
DEL and C1 character in the path and the query string before any view runs. These tests walk EVERY route the URL
resolver knows — a new route is covered without touching this file — and send each control character in each path
parameter and in query values, with GET, POST and DELETE: never a 5xx; on ``/v1`` the error contract's structured
``detail``; on the dashboard the HTML 400/404 page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import resolve

from idempotency.models import Lease, LockRecord
from tests.support.routes import walk_routes

# C0 (NUL, SOH, TAB, LF, CR, ESC, US), DEL, and two C1 controls (NEL, CSI).
CONTROLS = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x85", "\x9b"]
METHODS = ("get", "post", "delete")
QUERY_NAMES = ("key", "scope_id", "agent", "run", "period")  # names views read, and any other name alike


@dataclass(frozen=True)
class Route:
    """One URL pattern as a request template: literal text and the named (or catch-all) parameters between."""

    name: str
    parts: tuple[str | tuple[str, str], ...]  # literal text, or (parameter name, parameter regex)
    callback: object

    @property
    def params(self) -> list[str]:
        return [part[0] for part in self.parts if isinstance(part, tuple)]

    def path(self, **values: str) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                name, regex = part
                out.append(quote(values.get(name) or _plain(regex), safe=""))
        return "/" + "".join(out)

    @property
    def api(self) -> bool:
        return self.path().startswith("/v1")


def _plain(regex: str) -> str:
    """A value the parameter's regex accepts: a number, the first of literal alternatives, else a word."""
    if regex in (r"[0-9]+", r"\d+"):
        return "1"
    if re.fullmatch(r"[\w|-]+", regex):
        return regex.split("|")[0]
    return "abc"


def _split(regex: str) -> list[str | tuple[str, str]]:
    """A resolver regex (``^agents/(?P<agent_id>.+)/$``, ``^.*$``) as literal text and parameters."""
    regex = regex.removeprefix("^").removesuffix(r"\Z").removesuffix("$")
    parts: list[str | tuple[str, str]] = []
    literal, i = "", 0
    while i < len(regex):
        if regex.startswith("(?P<", i):
            name_end = regex.index(">", i)
            depth, j = 1, name_end + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(regex[j], 0) if regex[j - 1] != "\\" else 0
                j += 1
            parts += [literal, (regex[i + 4 : name_end], regex[name_end + 1 : j - 1])]
            literal, i = "", j
        elif regex.startswith(".*", i) or regex.startswith(".+", i):
            parts += [literal, (f"<{regex[i : i + 2]}>", regex[i : i + 2])]  # a catch-all: a parameter without a name
            literal, i = "", i + 2
        elif regex.startswith((r"[\s\S]*", r"[\s\S]+"), i):  # the same, a newline included
            parts += [literal, (f"<{regex[i : i + 7]}>", regex[i : i + 7])]
            literal, i = "", i + 7
        elif regex[i] == "\\":
            literal += regex[i + 1]
            i += 2
        else:
            assert regex[i] not in "()[]*+?|", f"the route walk cannot build a path for {regex!r}: teach _split"
            literal += regex[i]
            i += 1
    return [part for part in [*parts, literal] if part != ""]


def routes() -> list[Route]:
    found = []
    for route in walk_routes():
        parts = [part for regex in route.regexes for part in _split(regex)]
        unnamed = "".join(p if isinstance(p, str) else f"<{p[0].strip('<>')}>" for p in parts)
        name = route.name or ":".join(filter(None, [route.namespace, unnamed]))
        found.append(Route(name=name, parts=tuple(parts), callback=route.pattern.callback))
    return found


ROUTES = routes()


def test_the_walk_builds_a_real_path_for_every_route():
    """The walk is generic: every pattern of the resolver gives a path that resolves to that very pattern (so the
    tests below do reach each view), and it finds routes of every app, the API and the admin."""
    assert len(ROUTES) > 60
    names = {route.name for route in ROUTES}
    assert {
        "v1:ai-status",
        "v1:ai-result",
        "v1:tool",
        "v1:run-timeline",
        "governance:tools",
        "billing:team",
        "idempotency:locks",
    } <= names
    assert any(name.startswith("admin:") for name in names)
    for route in ROUTES:
        match = resolve(route.path())
        assert match.func == route.callback or getattr(match.func, "view_class", 0) == getattr(
            route.callback, "view_class", 1
        ), f"{route.name}: {route.path()} resolves to {match.view_name}"


@pytest.fixture
def clients(key_a, owner_a):
    api = key_a.client()
    web = owner_a.login(Client())
    api.raise_request_exception = web.raise_request_exception = False
    return {"api": api, "web": web}


def _send(client: Client, method: str, path: str):
    if method == "get":
        return client.get(path)
    return getattr(client, method)(path, data=b"{}", content_type="application/json")


def _assert_refused(route: Route, response, *, loc: list | None = None) -> None:
    where = f"{route.name} {response.request['REQUEST_METHOD']} {response.request['PATH_INFO']}"
    assert response.status_code < 500, f"{where}: {response.status_code}"
    if route.api:
        assert response.status_code in (404, 422), f"{where}: {response.status_code} {response.content[:200]}"
        detail = response.json()["detail"]
        if response.status_code == 404:
            assert detail == "Not Found", where
            return
        assert isinstance(detail, list) and detail, where
        for item in detail:
            assert set(item) == {"type", "loc", "msg"} and item["loc"][0] in ("path", "query"), (where, item)
            assert "characters are not allowed" in item["msg"], (where, item)
        if loc is not None:
            assert [item["loc"] for item in detail] == loc, where
    else:
        assert response.status_code in (400, 404), f"{where}: {response.status_code}"
        assert response["Content-Type"].startswith("text/html"), where
        assert b"Bad request" in response.content or b"Not found" in response.content, where


@pytest.mark.parametrize("route", [route for route in ROUTES if route.params], ids=lambda r: r.name)
def test_a_control_character_in_any_path_parameter_is_refused(route, clients):
    client = clients["api" if route.api else "web"]
    for param in route.params:
        for method in METHODS:
            response = _send(client, method, route.path(**{param: "a\x00b"}))
            loc = None
            if route.api and response.status_code == 422 and not param.startswith("<"):
                loc = [["path", param]]
            _assert_refused(route, response, loc=loc)
    for char in CONTROLS:
        _assert_refused(route, _send(client, "get", route.path(**{route.params[0]: f"a{char}b"})))
    assert LockRecord.objects.count() == Lease.objects.count() == 0


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
def test_a_control_character_in_any_query_value_is_refused(route, clients):
    client = clients["api" if route.api else "web"]
    path = route.path()
    query = "&".join(f"{name}={quote(f'a{char}b')}" for name, char in zip(QUERY_NAMES, CONTROLS, strict=False))
    for method in METHODS:
        response = _send(client, method, f"{path}?{query}")
        _assert_refused(route, response, loc=[["query", name] for name in QUERY_NAMES] if route.api else None)
    for char in CONTROLS:
        _assert_refused(route, _send(client, "get", f"{path}?key={quote(f'k{char}')}"))
    assert LockRecord.objects.count() == Lease.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/v1/ai/status?key=a%00b", [["query", "key"]]),
        ("/v1/ai/result?key=a%00b", [["query", "key"]]),
        ("/v1/tools/a%00b", [["path", "name"]]),
        ("/v1/tools?scope_id=agent:a%00", [["query", "scope_id"]]),
        ("/v1/runs/a%00b", [["path", "run_id"]]),
        ("/v1/policies/a%C2%85b", [["path", "agent_id"]]),
        ("/v1/me?x%00=1", [["query", "x\x00"]]),
    ],
)
def test_the_reported_500s_are_422_with_the_parameter_named(key_a, path, loc):
    for method in METHODS:
        response = _send(key_a.client(), method, path)
        assert response.status_code == 422, (method, response.content)
        assert [item["loc"] for item in response.json()["detail"]] == loc
        assert response["X-Request-Id"]


def test_dashboard_agent_pages_with_a_nul_are_the_404_page_and_a_query_the_400_page(owner_a):
    web = owner_a.login(Client(raise_request_exception=False))
    for path in ("/agents/a%00b/", "/agents/a%00b/policy/", "/agents/a%00b/kill-switch/"):
        for method in METHODS:
            response = _send(web, method, path)
            assert response.status_code == 404 and b"Not found" in response.content, (method, path)
    response = web.get("/decisions/?agent=a%00b")
    assert response.status_code == 400 and b"Bad request" in response.content
    assert response["Content-Security-Policy"]  # the security headers still apply


def test_an_unknown_api_path_with_a_control_character_is_the_json_404(key_a):
    response = key_a.client().get("/v1/no/such%0Aroute")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}


def test_printable_text_is_not_refused(key_a, owner_a):
    """The control: the same requests with printable (also non-ASCII and right-to-left) text reach their views."""
    api = key_a.client()
    assert api.get("/v1/ai/status", {"key": "a b\u00e9\u05d0"}).json()["status"] == "not_found"
    assert api.get("/v1/tools/abc").json()["detail"]["error"] == "tool_not_found"
    assert api.get("/v1/runs/some run").json()["total"] == 0
    assert owner_a.login(Client()).get("/decisions/?agent=x%20y").status_code == 200
