"""Tools pages: register with a write-only secret, toggle, delete with confirmation, send a signed test call."""

import pytest
from django.test import Client
from django.utils.html import escape

from billing.models import AuditEntry
from governance.models import Decision, Tool
from tests.governance.test_dispatch import SECRET, receiver, stats  # noqa: F401 - the receiver fixture

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
    # session, user, membership, scope suggestions, calls of the last hour (health), count, page
    with django_assert_num_queries(7):
        assert client.get("/tools/").status_code == 200


@pytest.fixture(autouse=True)
def _private_urls(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
