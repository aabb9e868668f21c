"""Dashboard URLs of agents are unambiguous for every legal agent id (governance/urls.py): an agent whose id ends
like one of the agent pages' suffixes (`bot/policy`, `bot/kill-switch`, …), or is the number of another agent's
row, gets its own pages — following the links and forms of the dashboard never shows or changes another agent.

The suffixes come from the governance URL patterns themselves, so a page added later is exercised too."""

import html
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from django.test import Client
from django.urls import resolve

from governance import services
from governance.models import Agent, Alert, PolicyVersion
from tests.support.policy_confirm import confirm
from tests.support.routes import walk_routes

BASE = "bot"


def agent_routes() -> dict[str, str]:
    """URL name → the suffix after the agent part, for every governance page that addresses one agent."""
    routes = {}
    for route in walk_routes():
        match = re.match(r"^\^?agents/(?:\(\?P<\w+>[^)]*\)|<[^>]+>)/(.*?)\$?$", route.text)
        if route.namespace == "governance" and match:
            routes[route.pattern.name] = match.group(1)
    return routes


def tricky_ids(pk_of_base: int) -> list[str]:
    """An id ending in each page's suffix, the bare suffixes, and ids that read as row numbers."""
    suffixes = sorted({s.strip("/") for s in agent_routes().values() if s.strip("/")})
    assert {"policy", "kill-switch"} <= set(suffixes)
    ids = [f"{BASE}/{suffix}" for suffix in suffixes] + suffixes
    ids += [f"{BASE}/", str(pk_of_base), f"{pk_of_base}/policy", str(pk_of_base + 1), "1", "0"]
    return list(dict.fromkeys(ids))


class Links(HTMLParser):
    """Every <a href>, and every <form method=post> with its action and hidden fields."""

    def __init__(self, page_url: str) -> None:
        super().__init__()
        self.page_url, self.links, self.forms, self.h1, self._in_h1 = page_url, [], [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(urljoin(self.page_url, attrs["href"]))
        elif tag == "form" and attrs.get("method") == "post":
            self.forms.append({"action": urljoin(self.page_url, attrs.get("action") or self.page_url), "fields": {}})
        elif tag == "input" and attrs.get("type") == "hidden" and self.forms and attrs.get("name"):
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value", "")
        elif tag == "h1":
            self._in_h1 = True

    def handle_endtag(self, tag):
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._in_h1:
            self.h1 += data


def parse(response, url) -> Links:
    assert response.status_code == 200, (url, response.status_code)
    parsed = Links(url)
    parsed.feed(response.content.decode())
    return parsed


def route_of(url: str) -> str:
    return resolve(urlsplit(url).path).url_name


DIRECT = {"agent-kill-switch", "agent-legal-hold"}  # forms that change the agent at once (with a reason)


def state() -> dict[str, tuple]:
    return {a.agent_id: (a.is_enabled, a.policy_version, a.policy, a.legal_hold_since) for a in Agent.objects.all()}


@pytest.fixture
def agents(owner_a):
    account = owner_a.account.pk
    base = services.agent_get_or_create(account_id=account, agent_id=BASE)
    ids = list(dict.fromkeys([BASE, *tricky_ids(base.pk)]))
    for n, agent_id in enumerate(ids):
        for version in (1, 2):  # two versions: the editor offers a rollback to v1
            services.policy_publish(
                account_id=account,
                agent_id=agent_id,
                source="api",
                actor="test",
                policy={"max_actions_per_hour": 1000 * version + n},
            )
    assert Agent.objects.filter(account_id=account).count() == len(set(ids)) == len(ids)
    return ids


@pytest.fixture
def eager():
    """The impact preview's Celery task runs inline (it finishes before the page is asked for its job)."""
    from onceonly_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def test_every_agent_page_shows_and_changes_only_its_own_agent(owner_a, agents, eager):
    client = owner_a.login(Client())
    got, posted = set(), set()
    for agent_id in agents:
        [detail_url] = anchors(client, agent_id)
        assert route_of(detail_url) == "agent-detail", f"the Agents page's link of {agent_id!r} opens " + (
            f"{route_of(detail_url)} ({detail_url})"
        )
        detail = parse(client.get(detail_url), detail_url)
        got.add("agent-detail")
        assert detail.h1.strip() == agent_id, (agent_id, detail_url, detail.h1)
        editor_urls = {u for u in detail.links if route_of(u) == "policy-edit"}
        assert editor_urls, agent_id
        for editor_url in editor_urls:
            editor = parse(client.get(editor_url), editor_url)
            got.add("policy-edit")
            assert editor.h1.strip() == f"Policy of {agent_id}", (agent_id, editor_url, editor.h1)
            back = [u for u in editor.links if route_of(u) == "agent-detail"]
            assert back and all(parse(client.get(u), u).h1.strip() == agent_id for u in back), agent_id
        # Every form of both pages (kill switch; save, each template, rollback): this agent changes, no other.
        for form in detail.forms + editor.forms:
            name = route_of(form["action"])
            if name not in agent_routes():
                continue  # the layout's forms (log out, account switcher)
            posted.add(name)
            data = dict(form["fields"])
            if name in DIRECT:
                data.update(reason="checking the URL", confirm="on")
            elif name == "policy-edit":
                data["max_actions_per_hour"] = "7"
            before = state()
            response = client.post(form["action"], data)
            if name not in DIRECT:  # a policy change is reviewed first: nothing changes until confirmed
                assert response.status_code == 200 and state() == before, (agent_id, name, response.status_code)
                response = confirm(client, response)
            assert response.status_code == 302, (agent_id, name, response.status_code)
            after = state()
            changed = {a for a in after if after[a] != before[a]}
            assert changed == {agent_id}, f"{name} of {agent_id!r} ({form['action']}) changed {sorted(changed)}"
        # The editor's other buttons post its form elsewhere (formaction): the impact preview (a replay: changes
        # nothing; its job's fragment is what the page polls) and a shadow candidate (this agent's only).
        editor_html = client.get(editor_url).content.decode()
        [edit_form] = [f for f in editor.forms if route_of(f["action"]) == "policy-edit"]
        fields = dict(edit_form["fields"])  # its hidden base_version: an empty policy, as a draft or a candidate
        for target in sorted(set(re.findall(r'formaction="([^"]+)"', editor_html))):
            name = route_of(target)
            before = state()
            if name == "policy-impact":
                started = client.post(target, {**fields, "days": "1"})
                assert started.status_code == 302 and state() == before, (agent_id, started.status_code)
                posted.add(name)
                job = started["Location"].rpartition("job=")[2]
                fragment = f"{urlsplit(target).path}{job}/"
                assert route_of(fragment) == "policy-impact-job" and client.get(fragment).status_code == 200
                got.add("policy-impact-job")
            elif name == "policy-shadow":
                assert client.post(target, {**fields, "action": "start"}).status_code == 302
                shadows = {a.agent_id for a in Agent.objects.exclude(shadow_policy=None)}
                assert shadows == {agent_id} and state() == before, (agent_id, shadows)
                client.post(target, {"action": "stop"})
                posted.add(name)
    # A detector's containment (docs/governance.md §"Containment detectors"): the Release form of a contained agent's
    # page releases that agent, no other.
    for agent_id in agents:
        agent = Agent.objects.get(account=owner_a.account, agent_id=agent_id)
        Agent.objects.filter(pk=agent.pk).update(is_enabled=False, disabled_by="auto", disabled_reason="call_loop")
        Alert.objects.create(
            account=owner_a.account, agent=agent, kind="detector", code="call_loop", mode="contain",
            once=f"test:{agent.pk}", message="call_loop: looped",
        )  # fmt: skip
        [detail_url] = anchors(client, agent_id)
        detail = parse(client.get(detail_url), detail_url)
        [release] = [f for f in detail.forms if route_of(f["action"]) == "agent-release"]
        before = state()
        assert client.post(release["action"], dict(release["fields"])).status_code == 302
        after = state()
        assert {a for a in after if after[a] != before[a]} == {agent_id}, (agent_id, release["action"])
        posted.add("agent-release")
    assert got | posted == set(agent_routes()), "an agent page the dashboard does not link to, or not exercised"
    assert PolicyVersion.objects.filter(source="template:strict").count() == len(agents)
    assert PolicyVersion.objects.filter(source="rollback:1").count() == len(agents)


def anchors(client, agent_id):
    """The links whose text is this agent's id on the Agents page (all pages of it)."""
    found, url = [], "http://testserver/agents/"
    while url:
        response = client.get(url)
        text = response.content.decode()
        found += [
            urljoin(url, html.unescape(href))
            for href in re.findall(r'<a class="mono" href="([^"]+)">' + re.escape(html.escape(agent_id)) + "</a>", text)
        ]
        more = re.search(r'<a href="(\?page=\d+)"[^>]*rel="next"', text)
        url = urljoin(url, more.group(1)) if more else ""
    assert found, f"no link to {agent_id!r} on the Agents page"
    return found


def test_ids_that_look_like_another_agents_row_number_are_not_confused(owner_a, agents):
    """`/agents/<n>/` is the agent whose row is n, whatever agent ids look like numbers."""
    client = owner_a.login(Client())
    base = Agent.objects.get(agent_id=BASE)
    numeric = Agent.objects.get(agent_id=str(base.pk))
    assert numeric.pk != base.pk
    [url] = [u for u in anchors(client, str(base.pk)) if route_of(u) == "agent-detail"]
    assert parse(client.get(url), url).h1.strip() == str(base.pk)
    [url] = [u for u in anchors(client, BASE) if route_of(u) == "agent-detail"]
    assert parse(client.get(url), url).h1.strip() == BASE
