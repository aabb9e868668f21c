"""A viewer's dashboard is read-only: on every page a viewer can reach (the crawl of tests/support/pages.py, on data
with long identifiers, a policy with history, locks and leases), no form or htmx call writes, no enabled field
takes an edit, and nothing a viewer sees leads to "Not allowed" (403). The same detector finds the write forms on
an owner's pages (so the check can fail), and an admin, who edits, is shown no owner-only form (team, plan). The
check (`WritesShown`) runs in the one crawl per persona and width of tests/ui/test_browser_every_page.py; this
module proves it can fail.

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
from tests.support.pages import AGENT, TOOL, PageCheck, seed_long_identifiers
from tests.ui.test_browser_keys import login

# POSTs that change nothing in the account, allowed to every member: the session's own, and the log verification
# (a POST because it reads the whole log).
# POSTs that change nothing of the account: signing out, switching accounts, verifying the log, and the impact
# preview (a replay of recorded calls through a draft: it reads the decision log, writes no row).
READ_POSTS = {"billing:logout", "billing:account-switch", "governance:verify", "governance:policy-impact"}
# Views only an owner may POST to (billing/views.py): an admin must not be offered them either.
OWNER_ONLY = {
    "billing:team",
    "billing:member-change",
    "billing:usage",
    "billing:billing-checkout",
    "billing:billing-portal",
}

# The write forms an owner is offered (on some page): tools, keys, policies, the team, settings, locks and leases.
OWNER_WRITES = {
    "governance:tool-toggle",
    "governance:tool-edit",
    "governance:tool-new",
    "governance:tool-test",
    "governance:tool-delete",
    "governance:agent-kill-switch",
    "governance:policy-edit",
    "governance:policy-rollback",
    "governance:policy-template",
    "governance:approval-decide",
    "billing:api-keys",
    "billing:api-key-revoke",
    "billing:team",
    "billing:member-change",
    "billing:settings",
    "billing:usage",
    "idempotency:lock-release",
    "idempotency:lease-reset",
}
# …and an admin: policies, approvals and keys.
ADMIN_WRITES = {"governance:policy-edit", "governance:approval-decide", "billing:api-keys"}

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
  .map(c => ({html: c.outerHTML.slice(0, 120), action: c.form ? (c.form.getAttribute('action') || '') : null}))"""
HREFS = "() => [...new Set([...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')))]"
NAVIGATION_STATUS = "() => performance.getEntriesByType('navigation')[0].responseStatus"
NOT_FOLLOWED = ("/logout/", "/static/", "/api/", "/v1/", "#", "?", "mailto:", "http:", "https:")


def url_name(page_url: str, action: str) -> str:
    path = urlsplit(urljoin(page_url, action)).path
    try:
        return resolve(path).view_name
    except Resolver404:
        return f"unresolved {path}"


class WritesShown(PageCheck):
    """What a role is offered on every page it can reach: the write forms and htmx calls (by the view they post to),
    the editable fields outside GET forms, and pages or links that answer 403 or show "Not allowed" — every link
    shown, also the ones the crawl does not follow (/billing/…, /admin/) or visits once per path. Judged by role:

    - viewer: no write but READ_POSTS, no editable field, nothing refused; the log verification it keeps is offered
      and answers (not "Not allowed");
    - owner: the write forms where they are (OWNER_WRITES: so the detector finds them), editable fields, nothing
      refused;
    - admin: edits policies and keys, is offered no OWNER_ONLY form, nothing refused."""

    def __init__(self, role: str) -> None:
        assert role in ("owner", "admin", "viewer"), role
        self.role = role
        self.title = f"what a{'n' if role != 'viewer' else ''} {role} is offered"
        self.writes: dict[str, list[tuple[str, dict]]] = {}  # view name → (page, form or htmx element)
        self.loose: list[str] = []
        self.refused: list[str] = []
        self.links: set[str] = set()
        self.answered: dict[str, int] = {}  # page visited → the HTTP status of its document

    def visit(self, page, url: str) -> None:
        status = self.answered[url] = page.evaluate(NAVIGATION_STATUS)
        if page.locator("h1", has_text="Not allowed").count():
            self.refused.append(f"{url}: the page (HTTP {status}) shows 'Not allowed'")
        elif status == 403:
            self.refused.append(f"{url}: the page answered 403")
        for write in page.evaluate(WRITES):
            self.writes.setdefault(url_name(page.url, write["action"]), []).append((url, write))
        self.loose += [
            f"{url}: {field['html']}"
            for field in page.evaluate(LOOSE_FIELDS)
            # a field of a form that only reads (READ_POSTS) is no write offered
            if field["action"] is None or url_name(page.url, field["action"]) not in READ_POSTS
        ]
        self.links.update(urljoin(url, href) for href in page.evaluate(HREFS) if not href.startswith(NOT_FOLLOWED))

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        found = list(self.refused)
        for link in sorted(self.links):
            if link.startswith(NOT_FOLLOWED) or self.answered.get(link):  # a page visited was judged in `visit`
                continue
            if page.request.get(base + link, max_redirects=0).status == 403:
                found.append(f"{link}: a link shown answers 403 'Not allowed'")
        offered = set(self.writes)
        if self.role == "viewer":
            found += [
                f"{url}: a {write['kind']} that writes ({name}, action {write['action']!r}) shown to a viewer: "
                f"{write['controls']}"
                for name, where in self.writes.items()
                if name not in READ_POSTS
                for url, write in where
            ]
            found += [f"{field} (an editable field shown to a viewer)" for field in self.loose]
            if "governance:verify" not in offered:
                found.append("the log verification (governance:verify) is offered to a viewer on no page")
            found += verify_the_log(page, base)
        elif self.role == "owner":
            if OWNER_WRITES - offered:
                found.append(f"write forms an owner is offered on no page: {sorted(OWNER_WRITES - offered)}")
            if not self.loose:
                found.append("no editable field on any of an owner's pages (an owner's forms have them)")
        else:
            if ADMIN_WRITES - offered:
                found.append(f"write forms an admin is offered on no page: {sorted(ADMIN_WRITES - offered)}")
            found += [
                f"{url}: an owner-only {write['kind']} ({name}) shown to an admin"
                for name, where in self.writes.items()
                if name in OWNER_ONLY
                for url, write in where
            ]
        return found


def verify_the_log(page, base: str) -> list[str]:
    """The POST a viewer keeps is really allowed: verifying the audit log answers, not "Not allowed"."""
    page.goto(f"{base}/audit/verify/")
    page.get_by_role("button", name="Verify now").click()
    page.wait_for_load_state()
    if page.locator("h1", has_text="Not allowed").count():
        return ["/audit/verify/: 'Verify now' answers 'Not allowed'"]
    status = page.get_by_role("status", name="Audit log").inner_text()
    return [] if "Audit log OK" in status else [f"/audit/verify/: 'Verify now' answers {status!r}, not 'Audit log OK'"]


@pytest.mark.browser
def test_the_write_detector_finds_forms_fields_and_refusals(page, live_server, owner_a, celery_eager):
    """The check can fail: judged as a viewer's, the owner's tools page has write forms and editable fields, and a
    page that shows "Not allowed" is found; as an admin's, an owner-only form is found."""
    login(page, live_server, owner_a)
    viewer, admin = WritesShown("viewer"), WritesShown("admin")
    for check in (viewer, admin):
        page.goto(f"{live_server.url}/tools/new/")
        check.visit(page, "/tools/new/")
        page.goto(f"{live_server.url}/team/")
        check.visit(page, "/team/")
    page.set_content("<main><h1>Not allowed</h1></main>")
    viewer.visit(page, "/refused/")
    found = viewer.problems(page, live_server.url, [])
    assert any(line.startswith("/tools/new/: a form that writes (governance:tool-new") for line in found), found
    assert any(line.startswith("/tools/new/: <input") and "editable field" in line for line in found), found
    assert any(line.startswith("/refused/: the page (HTTP ") and "shows 'Not allowed'" in line for line in found), found
    found = admin.problems(page, live_server.url, [])
    assert any(line.startswith("/team/: an owner-only form (billing:team)") for line in found), found


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
