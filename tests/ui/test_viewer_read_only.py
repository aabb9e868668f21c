"""A viewer's dashboard is read-only: on every page a viewer can reach (the crawl of tests/support/pages.py, on data
with long identifiers, a policy with history, locks and leases), no form or htmx call writes, no enabled field
takes an edit, and nothing a viewer sees leads to "Not allowed" (403). The same detector finds the write forms on
an owner's pages (so the check can fail), and an admin, who edits, is shown no owner-only form (team, plan).

Plans gate writes as roles do: an owner on a plan without the kill switch, policies or the tools registry (after a
downgrade) sees those read-only, not a form that answers "Not allowed"."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from django.test import Client
from django.urls import Resolver404, resolve

from billing.models import Account
from governance.models import Agent, Tool
from tests.support.pages import AGENT, TOOL, crawl, extra_urls, seed_long_identifiers
from tests.ui.test_browser_keys import login

# POSTs that change nothing in the account, allowed to every member: the session's own, and the log verification
# (a POST because it reads the whole log).
READ_POSTS = {"billing:logout", "billing:account-switch", "governance:verify"}
# Views only an owner may POST to (billing/views.py): an admin must not be offered them either.
OWNER_ONLY = {
    "billing:team",
    "billing:member-change",
    "billing:usage",
    "billing:billing-checkout",
    "billing:billing-portal",
}

# Every form on the page that is not a GET form, and every htmx attribute that sends a write; each with the action
# it posts to (the page itself for an empty action) and its enabled controls other than hidden ones.
WRITES = """() => {
  const out = [];
  for (const f of document.querySelectorAll('form')) {
    if ((f.getAttribute('method') || 'get').toLowerCase() === 'get') continue;
    const controls = [...f.querySelectorAll('input, select, textarea, button')]
      .filter(c => !c.disabled && c.type !== 'hidden')
      .map(c => c.tagName.toLowerCase() + ':' + (c.name || c.textContent.trim()));
    out.push({kind: 'form', action: f.getAttribute('action') || '', controls});
  }
  for (const el of document.querySelectorAll('[hx-post], [hx-put], [hx-patch], [hx-delete], [data-hx-post]')) {
    const action = ['hx-post', 'hx-put', 'hx-patch', 'hx-delete', 'data-hx-post']
      .map(name => el.getAttribute(name)).find(value => value !== null);
    out.push({kind: 'htmx', action: action || '', controls: [el.outerHTML.slice(0, 120)]});
  }
  return out;
}"""
# Enabled fields outside any GET form (a search or filter box is fine; a readonly field is display).
LOOSE_FIELDS = """() => [...document.querySelectorAll('input, select, textarea')].filter(c =>
    !c.disabled && !c.readOnly && c.type !== 'hidden'
    && !(c.form && (c.form.getAttribute('method') || 'get').toLowerCase() === 'get'))
  .map(c => c.outerHTML.slice(0, 120))"""
HREFS = "() => [...new Set([...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')))]"
NOT_FOLLOWED = ("/logout/", "/static/", "/api/", "/v1/", "#", "?", "mailto:", "http:", "https:")


@pytest.fixture
def seeded(key_a, owner_a):
    seed_long_identifiers(key_a, owner_a)


def url_name(page_url: str, action: str) -> str:
    path = urlsplit(urljoin(page_url, action)).path
    try:
        return resolve(path).view_name
    except Resolver404:
        return f"unresolved {path}"


def survey(page, live_server, persona) -> dict:
    """Crawl every page as `persona`: the write forms found (view name → pages), loose editable fields, pages and
    links that answered 403 or showed "Not allowed"."""
    login(page, live_server, persona)
    writes, loose, refused, links, visited = {}, [], [], set(), []
    for url in crawl(page, live_server.url, extra_urls()):
        visited.append(url)
        if page.locator("h1", has_text="Not allowed").count():
            refused.append(url)
        for write in page.evaluate(WRITES):
            writes.setdefault(url_name(live_server.url + url, write["action"]), []).append((url, write))
        loose += [(url, field) for field in page.evaluate(LOOSE_FIELDS)]
        links.update(urljoin(url, href) for href in page.evaluate(HREFS) if not href.startswith(NOT_FOLLOWED))
    # Every link shown, also the ones the crawl does not follow (/billing/…, /admin/) or visits once per path.
    for link in sorted(links):
        if link.startswith(NOT_FOLLOWED):
            continue
        response = page.request.get(live_server.url + link, max_redirects=0)
        if response.status == 403:
            refused.append(link)
    return {"writes": writes, "loose": loose, "refused": refused, "visited": visited, "links": links}


@pytest.mark.browser
def test_a_viewer_sees_read_only_pages_and_nothing_that_is_not_allowed(page, live_server, owner_a, viewer_a, seeded):
    found = survey(page, live_server, viewer_a)
    assert len(found["visited"]) >= 12, found["visited"]
    writes = {name: where for name, where in found["writes"].items() if name not in READ_POSTS}
    assert not writes, f"forms or htmx calls that write, shown to a viewer: {writes}"
    assert not found["loose"], f"editable fields shown to a viewer: {found['loose']}"
    assert not found["refused"], f"pages or links a viewer is shown that answer 'Not allowed': {found['refused']}"
    # The POSTs a viewer keeps are really allowed: verifying the log answers, not "Not allowed".
    assert "governance:verify" in found["writes"]
    page.goto(f"{live_server.url}/audit/verify/")
    page.get_by_role("button", name="Verify now").click()
    page.wait_for_load_state()
    assert not page.locator("h1", has_text="Not allowed").count()
    assert "Audit log OK" in page.get_by_role("status", name="Audit log").inner_text()


@pytest.mark.browser
def test_an_owner_gets_the_forms_a_viewer_does_not(page, live_server, owner_a, viewer_a, seeded):
    """The detector above finds the write forms where they are: an owner edits tools, keys, policies, the team,
    settings, locks and leases."""
    found = survey(page, live_server, owner_a)
    expected = {
        "governance:tool-toggle",
        "governance:tool-edit",
        "governance:tool-new",
        "governance:tool-test",
        "governance:tool-delete",
        "governance:agent-kill-switch",
        "governance:policy-edit",
        "governance:policy-rollback",
        "governance:policy-template",
        "billing:api-keys",
        "billing:api-key-revoke",
        "billing:team",
        "billing:member-change",
        "billing:settings",
        "billing:usage",
        "idempotency:lock-release",
        "idempotency:lease-reset",
    }
    assert expected <= set(found["writes"]), expected - set(found["writes"])
    assert found["loose"], "an owner's forms have editable fields"
    assert not found["refused"], found["refused"]


@pytest.mark.browser
def test_an_admin_is_not_offered_what_only_an_owner_may_do(page, live_server, owner_a, admin_a, seeded):
    found = survey(page, live_server, admin_a)
    assert "governance:policy-edit" in found["writes"] and "billing:api-keys" in found["writes"]
    owner_only = {name: where for name, where in found["writes"].items() if name in OWNER_ONLY}
    assert not owner_only, f"owner-only forms shown to an admin: {owner_only}"
    assert not found["refused"], f"pages or links an admin is shown that answer 'Not allowed': {found['refused']}"


def post_actions(html: str) -> list[str]:
    """The actions of the page's POST forms (an empty action: the page itself), less the logout."""
    forms = re.findall(r'<form\b[^>]*\bmethod="post"[^>]*>', html)
    actions = [re.search(r'action="([^"]*)"', form) for form in forms]
    return [a.group(1) if a else "" for a in actions if not a or a.group(1) != "/logout/"]


@pytest.mark.parametrize("plan", ["pro", "starter"])
def test_an_owner_on_a_smaller_plan_is_not_offered_what_the_plan_refuses(owner_a, key_a, plans, plan):
    seed_long_identifiers(key_a, owner_a)  # on Agency: a policy with history, a tool
    Account.objects.filter(pk=owner_a.account.pk).update(plan=plans[plan])  # …then a downgrade
    agent, tool = Agent.objects.get(agent_id=AGENT), Tool.objects.get(name=TOOL)
    client = owner_a.login(Client())
    kill_switch = f"/agents/{agent.pk}/kill-switch/"
    policy = f"/agents/{agent.pk}/policy/"

    detail = client.get(f"/agents/{agent.pk}/").content.decode()
    assert kill_switch not in post_actions(detail)  # neither plan has the kill switch
    assert "The kill switch is not on the" in detail
    assert client.post(kill_switch, {"action": "disable", "reason": "r", "confirm": "on"}).status_code == 403

    page = client.get(policy).content.decode()
    if plan == "pro":  # policies are on Pro: edit, templates and rollback are offered, and work
        assert {"", f"{policy}template/", f"{policy}rollback/"} <= set(post_actions(page))
    else:
        assert post_actions(page) == [], page
        assert "Policies are not on the Starter plan" in page
        assert client.post(f"{policy}rollback/", {"version": "1"}).status_code == 403
        assert client.post(f"{policy}template/", {"template": "strict"}).status_code == 403

    edit = client.get(f"/tools/{tool.pk}/").content.decode()
    if plan == "pro":  # the tools registry is on Pro (10 tools)
        assert post_actions(edit) == [""]
    else:  # …not on Starter: the tool's page shows its settings, a save would be refused
        assert post_actions(edit) == [] and "The tools registry is not on the Starter plan" in edit
        assert client.post(f"/tools/{tool.pk}/", {"url": "https://tools.example.com/y"}).status_code == 403


def test_an_owner_on_agency_keeps_every_form(owner_a, key_a):
    seed_long_identifiers(key_a, owner_a)
    agent, tool = Agent.objects.get(agent_id=AGENT), Tool.objects.get(name=TOOL)
    client = owner_a.login(Client())
    assert f"/agents/{agent.pk}/kill-switch/" in post_actions(client.get(f"/agents/{agent.pk}/").content.decode())
    assert "" in post_actions(client.get(f"/agents/{agent.pk}/policy/").content.decode())
    assert post_actions(client.get(f"/tools/{tool.pk}/").content.decode()) == [""]
