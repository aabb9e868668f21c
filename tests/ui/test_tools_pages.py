"""Tools pages: register with a write-only secret, toggle, delete with confirmation, send a signed test call (its
decision linked and explained), the failing-tool flag."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from billing.models import AuditEntry
from governance import explain
from governance.models import Agent, Decision, Tool
from onceonly_site.identifiers import normalise_tool
from tests.governance.test_dispatch import SECRET, receiver, stats  # noqa: F401 - the receiver fixture
from tests.support.decisions import decide

FORM = {
    "name": "send_email",
    "scope_id": "global",
    "url": "https://tools.example.com/send",
    "secret": SECRET,
    "timeout_ms": "1000",
    "max_retries": "0",
    "enabled": "on",
    "description": "",
    "risk_level": "",
}


def test_register_edit_toggle_delete(owner_a):
    client = owner_a.login(Client())
    response = client.post("/tools/new/", FORM, follow=True)
    assert "Tool send_email saved." in response.content.decode()
    tool = Tool.objects.get()
    assert SECRET not in client.get(f"/tools/{tool.pk}/").content.decode()  # write-only
    client.post(f"/tools/{tool.pk}/", {**FORM, "secret": "", "timeout_ms": "2000"})
    tool.refresh_from_db()
    assert tool.timeout_ms == 2000 and tool.secret_mask == "***123"  # the secret was kept
    client.post(f"/tools/{tool.pk}/toggle/")
    assert not Tool.objects.get().enabled
    assert "cannot be undone" in client.get(f"/tools/{tool.pk}/delete/").content.decode()
    client.post(f"/tools/{tool.pk}/delete/")
    assert not Tool.objects.exists()


def test_ssrf_refusal_is_an_inline_error(owner_a):
    response = owner_a.login(Client()).post("/tools/new/", {**FORM, "url": "http://169.254.169.254/x"})
    assert response.status_code == 422 and "link-local/metadata" in response.content.decode()
    assert not Tool.objects.exists()


def test_viewer_cannot_change_tools(viewer_a, owner_a):
    owner_a.login(Client()).post("/tools/new/", FORM)
    tool = Tool.objects.get()
    client = viewer_a.login(Client())
    assert "send_email" in client.get("/tools/").content.decode()
    for url in (f"/tools/{tool.pk}/toggle/", f"/tools/{tool.pk}/delete/", "/tools/new/", f"/tools/{tool.pk}/test/"):
        assert client.post(url, FORM).status_code == 403
    assert Tool.objects.get().enabled


def test_other_accounts_tools_are_404(owner_a, owner_b):
    owner_a.login(Client()).post("/tools/new/", FORM)
    tool = Tool.objects.get()
    assert owner_b.login(Client()).get(f"/tools/{tool.pk}/").status_code == 404


def test_send_test_call_shows_headers_and_response(owner_a, receiver):  # noqa: F811
    client = owner_a.login(Client())
    client.post("/tools/new/", {**FORM, "url": f"{receiver}/ok"})
    tool = Tool.objects.get()
    html = client.post(f"/tools/{tool.pk}/test/", {"args": '{"to": "ops@acme.test"}'}).content.decode()
    assert "Executed" in html and "webhook-signature" in html and "ops@acme.test" in html
    decision = Decision.objects.get()
    assert decision.agent.agent_id == "onceonly-operator" and decision.outcome == "executed"
    assert stats(receiver)["rejected"] == 0


DECISION_LINE = re.compile(
    r'<p>Decision <a href="(?P<href>[^"]*)" data-drawer>#(?P<id>\d+)</a>: '
    r"<span data-explanation>(?P<text>[^<]*)</span></p>"
)


@pytest.mark.parametrize(("path", "outcome"), [("/ok", "executed"), ("/error400", "failed")])
def test_send_test_call_links_its_decision_and_explains_it(owner_a, receiver, path, outcome):  # noqa: F811
    """The result names the decision the call was recorded as: a link to /decisions/<id>/ that opens in the drawer
    (data-drawer), and the explanation in words — the same sentence the decision's own page gives."""
    client = owner_a.login(Client())
    client.post("/tools/new/", {**FORM, "url": f"{receiver}{path}"})
    tool = Tool.objects.get()
    html = client.post(f"/tools/{tool.pk}/test/", {"args": '{"to": "ops@acme.test"}'}).content.decode()
    decision = Decision.objects.get()
    assert decision.outcome == outcome
    line = DECISION_LINE.search(html)
    assert line is not None, html
    text = explain.explain_text(decision)
    assert text.startswith("send_email: ") and len(text) > len("send_email: ")
    assert (line["href"], line["id"], unescape(line["text"])) == (f"/decisions/{decision.pk}/", str(decision.pk), text)
    page = client.get(line["href"])  # the link works on its own too: the decision's page, with the same words
    assert page.status_code == 200 and escape(text) in page.content.decode()


def _tool(account, name):
    return Tool.objects.create(
        account=account,
        scope_id="global",
        name=name,
        name_key=normalise_tool(name),
        url=f"https://t.example.com/{name}",
    )


def _tool_rows(html):
    """Tool name → (row flagged failing, its Last-hour cell's text, the cell's HTML) on the Tools page."""
    body = html.split('<table class="table" id="tools">')[1].split("</tbody>")[0]
    rows = {}
    for attrs, cells in re.findall(r"<tr([^>]*)>(.*?)</tr>", body.split("<tbody>")[1], re.S):
        tds = re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)
        name = re.sub(r"<[^>]+>", "", tds[0]).strip()
        rows[name] = ('class="row-failing"' in attrs, " ".join(re.sub(r"<[^>]+>", " ", tds[6]).split()), tds[6])
    return rows


def test_tools_page_flags_a_tool_failing_half_its_calls_in_the_last_hour(owner_a):
    """A tool is flagged (a "failing" badge, the row marked row-failing) from 4 dispatched calls in the last hour of
    which half or more failed; a healthy tool, one with fewer calls, or failures older than an hour are not."""
    account = owner_a.account
    bot = Agent.objects.create(account=account, agent_id="billing-agent")
    for name in ("flaky", "half", "steady", "few", "old", "idle"):
        _tool(account, name)
    decide(bot, tool="flaky", outcome="failed", n=3)
    decide(bot, tool="flaky", outcome="executed")
    decide(bot, tool="half", outcome="failed", n=2)
    decide(bot, tool="half", outcome="executed", n=2)
    decide(bot, tool="steady", outcome="failed")
    decide(bot, tool="steady", outcome="executed", n=4)
    decide(bot, tool="few", outcome="failed", n=3)  # all failed, but under 4 calls
    decide(bot, tool="old", outcome="failed", n=5, ts=timezone.now() - timedelta(hours=2))
    decide(bot, tool="old", outcome="executed")
    decide(bot, tool="steady", outcome="blocked", n=9)  # never dispatched: not a call of the tool
    rows = _tool_rows(owner_a.login(Client()).get("/tools/").content.decode())
    badge = '<span class="badge badge-failed">failing</span>'
    assert rows["flaky"][:2] == (True, "3 of 4 failed failing") and badge in rows["flaky"][2]
    assert rows["half"][:2] == (True, "2 of 4 failed failing") and badge in rows["half"][2]
    for name, shown in (("steady", "1 of 5 failed"), ("few", "3 of 3 failed"), ("old", "0 of 1 failed"), ("idle", "—")):
        assert rows[name][:2] == (False, shown), (name, rows[name])
        assert badge not in rows[name][2], name


@pytest.mark.parametrize("name", ["paid_tool", "paid_tool\n", " paid_tool ", "PAID_TOOL"])
def test_new_tool_refuses_a_name_the_scope_already_has(owner_a, name):
    """The "New tool" form with an existing name replaced that tool (its price became null: calls were free; its
    secret was replaced) and audited created: false. Now it refuses, naming the tool and linking to its edit page;
    the API's POST /v1/tools keeps its upsert."""
    client = owner_a.login(Client())
    assert client.post("/tools/new/", {**FORM, "name": "paid_tool", "price_usd": "1.0"}).status_code == 302
    tool = Tool.objects.get()
    audit = AuditEntry.objects.count()
    response = client.post("/tools/new/", {**FORM, "name": name, "secret": "another-secret-456"})
    html = response.content.decode()
    assert response.status_code == 422
    assert "already registered in scope global" in html and f'href="/tools/{tool.pk}/"' in html, html
    again = Tool.objects.get()
    assert (again.price_usd, again.secret_mask, again.updated_at) == (tool.price_usd, tool.secret_mask, tool.updated_at)
    assert again.price_usd == 1 and AuditEntry.objects.count() == audit


def test_new_tool_with_the_same_name_in_another_scope_and_edits_still_save(owner_a):
    client = owner_a.login(Client())
    client.post("/tools/new/", {**FORM, "name": "paid_tool", "price_usd": "1.0"})
    assert client.post("/tools/new/", {**FORM, "name": "paid_tool", "scope_id": "agent:bot"}).status_code == 302
    tool = Tool.objects.get(scope_id="global")
    edited = client.post(f"/tools/{tool.pk}/", {**FORM, "name": "paid_tool", "secret": "", "price_usd": "2"})
    assert edited.status_code == 302
    tool.refresh_from_db()
    assert tool.price_usd == 2 and Tool.objects.count() == 2


BIG = "1" + "0" * 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (f'{{"a": {BIG}}}', "Numbers must fit JSON's safe range"),  # RFC 8785 cannot hash it: a 500 before
        ('{"a": 9007199254740992}', "Numbers must fit JSON's safe range"),
        ('{"a": 1e400}', "Numbers must fit JSON's safe range"),  # parsed as infinity
        ('{"a": NaN}', "Not JSON"),
        ("[" * 5000, "nested"),  # RecursionError in json.loads: a 500 before
        ('{"a":' * 100 + "1" + "}" * 100, "nested more than 64 levels deep"),
        ('{"a": "\\u0000"}', "U+0000"),
        ('{"a": "\\ud800"}', "U+0000"),
        ('{"a": "' + "x" * 70_000 + '"}', "At most 65536 bytes"),
        ("[1]", "Must be a JSON object."),
        ("null", "Must be a JSON object."),
        ("{", "Not JSON"),
    ],
)
def test_send_test_call_refuses_args_the_api_would_refuse(owner_a, receiver, args, message):  # noqa: F811
    client = owner_a.login(Client())
    client.post("/tools/new/", {**FORM, "url": f"{receiver}/ok"})
    tool = Tool.objects.get()
    response = client.post(f"/tools/{tool.pk}/test/", {"args": args})
    assert response.status_code == 422
    assert escape(message) in response.content.decode()
    assert not Decision.objects.exists() and stats(receiver)["requests"] == 0
    assert not AuditEntry.objects.filter(action="governance.tool.test_call").exists()


def test_tools_page_query_count(owner_a, django_assert_num_queries):
    client = owner_a.login(Client())
    for n in range(5):
        client.post("/tools/new/", {**FORM, "name": f"t{n}"})
    # session, user, membership, scope suggestions, calls of the last hour (health), count, page, MCP servers
    with django_assert_num_queries(8):
        assert client.get("/tools/").status_code == 200


@pytest.fixture(autouse=True)
def _private_urls(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
