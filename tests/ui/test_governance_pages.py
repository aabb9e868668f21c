"""Governance pages: roles, tenant scoping, the editor's validation/concurrency/rollback, pinned query counts, the
verification page's link to the first bad decision, policies as a table and audit changes as a diff."""

import re
from decimal import Decimal

import pytest
from django.test import Client
from django.utils.html import escape

from billing.models import AuditEntry
from governance.models import Agent, Decision, PolicyVersion
from tests.support.policy_confirm import change


def call(key, agent="bot", tool="send_email", **body):
    return (
        key.client()
        .post("/v1/ai/run", {"agent_id": agent, "tool": tool, **body}, content_type="application/json")
        .json()
    )


def set_policy(key, agent="bot", **fields):
    return key.client().post(f"/v1/policies/{agent}", fields, content_type="application/json").json()


def at(agent="bot", suffix=""):
    """An agent's dashboard page: agents are named by their row in dashboard URLs (governance/urls.py)."""
    return f"/agents/{Agent.objects.get(agent_id=agent).pk}/{suffix}"


@pytest.mark.parametrize(
    "url", ["/agents/", "/agents/1/", "/agents/1/policy/", "/decisions/", "/audit/", "/audit/verify/"]
)
def test_pages_need_a_login(db, url):
    assert Client().get(url)["Location"].startswith("/login/")


def test_viewer_sees_but_cannot_change(viewer_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    call(key_a, args={"n": 1})
    client = viewer_a.login(Client())
    for url in ("/agents/", at("bot"), at("bot", "policy/"), "/decisions/", "/audit/"):
        assert client.get(url).status_code == 200, url
    html = client.get(at("bot", "policy/")).content.decode()
    assert "Review changes" not in html and "Roll back" not in html and "Apply strict" not in html
    assert client.post(at("bot", "policy/"), {"max_actions_per_hour": "1", "base_version": "1"}).status_code == 403
    assert client.post(at("bot", "kill-switch/"), {"reason": "x", "confirm": "on"}).status_code == 403
    assert client.post(at("bot", "policy/rollback/"), {"version": "1"}).status_code == 403
    assert Agent.objects.get().is_enabled and Agent.objects.get().policy_version == 1


def test_other_accounts_agents_are_404(owner_b, key_a):
    call(key_a)
    client = owner_b.login(Client())
    assert client.get(at("bot")).status_code == 404
    assert "bot" not in client.get("/agents/").content.decode()
    assert client.post(at("bot", "kill-switch/"), {"reason": "x", "confirm": "on"}).status_code == 404
    assert client.get(at("bot", "policy/")).status_code == 404  # not an empty editor for B's namesake
    for suffix in ("policy/", "policy/rollback/", "policy/template/"):
        data = {"max_actions_per_hour": "1", "version": "1", "template": "strict"}
        assert client.post(at("bot", suffix), data).status_code == 404, suffix
    assert not Agent.objects.filter(account=owner_b.account).exists()
    decision_id = call(key_a, args={"n": 2})["decision_id"]
    assert client.get(f"/decisions/{decision_id}/").status_code == 404


def test_a_missing_agents_pages_are_404(owner_a, key_a):
    """Agents are registered by the API (a governed call, a policy, the kill switch); the dashboard opens only
    existing ones, so a policy editor for an agent id the account has not seen is no longer offered."""
    call(key_a)
    client = owner_a.login(Client())
    missing = Agent.objects.get().pk + 1000
    for suffix in ("", "policy/"):
        assert client.get(f"/agents/{missing}/{suffix}").status_code == 404
    for suffix in ("kill-switch/", "policy/", "policy/rollback/", "policy/template/"):
        data = {"reason": "x", "confirm": "on", "max_actions_per_hour": "1", "version": "1", "template": "strict"}
        assert client.post(f"/agents/{missing}/{suffix}", data).status_code == 404, suffix
    assert Agent.objects.count() == 1 and not PolicyVersion.objects.exists()
    assert client.get("/agents/bot/").status_code == 404  # agent ids are not dashboard URLs (governance/urls.py)


def test_editor_invalid_value_shows_an_error_and_saves_nothing(owner_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    response = client.post(at("bot", "policy/"), {"max_actions_per_hour": "-3", "base_version": "1"})
    assert response.status_code == 422
    assert "Must be a whole number from 0 to 1,000,000,000." in response.content.decode()
    assert PolicyVersion.objects.count() == 1


def test_editor_saves_a_new_version_and_reviews_a_stale_edit_against_the_live_policy(owner_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    form = {"max_actions_per_hour": "7", "blocked_tools": "delete_*\nrefund", "base_version": "1"}
    saved = change(client, at("bot", "policy/"), form)
    assert saved.status_code == 302
    assert "Policy saved as version 2" in client.get(saved["Location"]).content.decode()
    assert Agent.objects.get().policy == {"blocked_tools": ["delete_*", "refund"], "max_actions_per_hour": 7}
    # A form loaded at version 1 is reviewed against version 2, saying so; nothing is published by it.
    stale = client.post(at("bot", "policy/"), {"max_actions_per_hour": "9", "base_version": "1"})
    html = stale.content.decode()
    assert stale.status_code == 200 and "changed since the editor was opened: it is now version 2" in html
    assert "blocked_tools: cleared (was delete_*, refund)" in html
    assert Agent.objects.get().policy_version == 2


def _refused(client, form, *messages):
    """The editor answers 422 showing each message (HTML-escaped) and saves nothing."""
    response = client.post(at("bot", "policy/"), {"base_version": "1", **form})
    html = response.content.decode()
    assert response.status_code == 422 and 'role="alert"' in html, form
    for message in messages:
        assert escape(message) in html, (form, message)
    assert PolicyVersion.objects.count() == 1 and Agent.objects.get().policy == {"max_actions_per_hour": 5}


def test_editor_refuses_a_tool_capped_twice(owner_a, key_a):
    """A dict keeps the last of two caps silently (send_email: 6 would win); names equal once normalised are one
    tool to a governed call too."""
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    _refused(client, {"max_calls_per_tool": "send_email: 5\nsend_email: 6"}, "'send_email' is listed twice")
    _refused(client, {"max_calls_per_tool": "send_email: 5\nSEND_EMAIL: 6"}, "name the same tool")


@pytest.mark.parametrize("text", ["1_000", "١٢", "１２", "+5", "5.0", "1e3", "0x10", " 1 000"])
def test_editor_counts_are_ascii_digits_only(owner_a, key_a, text):
    """int() reads "1_000" as 1000 and Arabic-Indic "١٢" as 12; the editor takes digits 0-9 only and says so."""
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    rule = "Write it in ASCII digits 0–9, without separators or signs."
    _refused(client, {"max_actions_per_hour": text}, rule)
    _refused(client, {"max_calls_per_tool": f"send_email: {text}"}, "send_email: Must be a whole number", rule)


@pytest.mark.parametrize("text", ["1.0e-9", "1e-9", "0.0000001", "1_000", "١٢", "-1", "1,5", "inf", "NaN", ".5"])
def test_editor_amounts_are_plain_decimals_that_do_not_round_to_zero(owner_a, key_a, text):
    """float("1.0e-9") was stored as 0.0 (6 decimals), a spend cap that blocks every charged call; the editor takes
    ASCII digits with at most 6 decimals, no exponent."""
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    rule = "Write it in ASCII digits 0–9 with at most 6 decimals after a point (12.50), without separators"
    _refused(client, {"max_spend_usd_per_day": text}, rule)
    _refused(client, {"pricing_rules": f"send_email: {text}"}, rule)


def test_editor_amounts_round_trip_at_six_decimals(owner_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    form = {
        "max_actions_per_hour": "5",
        "max_spend_usd_per_day": "0.000001",
        "pricing_rules": "send_email: 0.00001",
        "base_version": "1",
    }
    assert change(client, at("bot", "policy/"), form).status_code == 302
    policy = Agent.objects.get().policy
    assert policy["max_spend_usd_per_day"] == 0.000001 and policy["pricing_rules"][0]["price_usd"] == 0.00001
    html = client.get(at("bot", "policy/")).content.decode()
    assert 'value="0.000001"' in html and "send_email: 0.00001</textarea>" in html  # not 1e-06, 1e-05
    again = change(client, at("bot", "policy/"), {**form, "base_version": "2", "max_actions_per_hour": "6"})
    assert again.status_code == 302 and Agent.objects.get().policy_version == 3


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x1c", "\x1d", "\x1e", "\x85", "\x0b", "\x0c", "\r"])
def test_editor_splits_entries_on_newlines_only(owner_a, key_a, separator):
    """str.splitlines() made two entries of "a<U+2028>b": now such a character stays in the entry, and the name
    check refuses it. Lines end at \\n and \\r\\n."""
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    for field in ("blocked_tools", "max_calls_per_tool", "pricing_rules"):
        value = f"delete_user{separator}drop_db" + (": 1" if field != "blocked_tools" else "")
        _refused(client, {"max_actions_per_hour": "5", field: value})
    saved = change(
        client,
        at("bot", "policy/"),
        {"max_actions_per_hour": "5", "base_version": "1", "blocked_tools": "delete_user\r\ndrop_db\n"},
    )
    assert saved.status_code == 302
    assert Agent.objects.get().policy["blocked_tools"] == ["delete_user", "drop_db"]


def test_editor_takes_a_comma_as_part_of_the_entry(owner_a, key_a):
    """A comma is a character of a tool name (the governed call accepts `a,b`), as in the API: the editor no longer
    turns "delete_user,drop_db" into two entries behind the operator's back."""
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    form = {
        "max_actions_per_hour": "5",
        "base_version": "1",
        "blocked_tools": "delete_user,drop_db",
        "max_calls_per_tool": "send,email: 3",
    }
    assert change(client, at("bot", "policy/"), form).status_code == 302
    policy = Agent.objects.get().policy
    assert policy["blocked_tools"] == ["delete_user,drop_db"] and policy["max_calls_per_tool"] == {"send,email": 3}


def test_diff_and_rollback(owner_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    set_policy(key_a, max_actions_per_hour=9)
    client = owner_a.login(Client())
    html = client.get(at("bot", "policy/"), {"a": 1, "b": 2}).content.decode()
    assert "-  &quot;max_actions_per_hour&quot;: 5" in html and "+  &quot;max_actions_per_hour&quot;: 9" in html
    review = client.post(at("bot", "policy/rollback/"), {"version": "1"})
    assert review.status_code == 200 and Agent.objects.get().policy_version == 2  # reviewed, not published
    assert "max_actions_per_hour: 9 → 5" in review.content.decode()
    change(client, at("bot", "policy/rollback/"), {"version": "1"})
    agent = Agent.objects.get()
    assert agent.policy_version == 3 and agent.policy == {"max_actions_per_hour": 5}
    assert PolicyVersion.objects.get(version=3).source == "rollback:1"


def test_kill_switch_needs_reason_and_confirmation(owner_a, key_a):
    call(key_a)
    client = owner_a.login(Client())
    client.post(at("bot", "kill-switch/"), {"reason": "loop"})  # no confirmation
    assert Agent.objects.get().is_enabled
    client.post(at("bot", "kill-switch/"), {"reason": "loop", "confirm": "on", "action": "disable"})
    assert not Agent.objects.get().is_enabled
    assert call(key_a, args={"n": 3})["policy_reason"] == "agent_disabled"


def test_timeline_filters_and_live_endpoint(viewer_a, key_a):
    first = call(key_a, agent="a1", tool="send_email", args={"n": 1})
    call(key_a, agent="a2", tool="delete_user", args={"n": 2})
    client = viewer_a.login(Client())
    html = client.get("/decisions/", {"agent": "a1"}).content.decode()
    rows = html.split('id="timeline-rows"')[1].split("</tbody>")[0]  # the facets' suggestions name every tool
    assert "send_email" in rows and "delete_user" not in rows
    newer = client.get("/decisions/", {"after": first["decision_id"]}, headers={"HX-Request": "true"}).content.decode()
    assert "delete_user" in newer and "send_email" not in newer
    detail = client.get(f"/decisions/{first['decision_id']}/").content.decode()
    assert "within_budget" in detail and "args_hash" in detail


def _make_decisions(key, n):
    for i in range(n):
        call(key, agent=f"agent-{i % 3}", args={"i": i}, spend_usd=0.01)


def test_query_counts_are_pinned_and_do_not_grow_with_decisions(owner_a, key_a):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    set_policy(key_a, agent="agent-0", max_spend_usd_per_day=10)
    client = owner_a.login(Client())
    detail = at("agent-0")
    urls = ["/agents/", detail, "/decisions/", "/audit/"]

    def counts():
        out = {}
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200
            out[url] = len(queries)
        return out

    _make_decisions(key_a, 3)
    few = counts()
    _make_decisions(key_a, 60)
    # Each: session, user, membership, then — agents: count, page, cap states (today's rollups, the last hour's
    # charged decisions); agent detail: agent, metrics (rollups, the partial hour), cap states (2), chart, recent;
    # decisions: suggestions (agent ids, tools of the week), page, total (rollups); audit: suggestions (actors,
    # actions), count, page.
    assert counts() == few == {"/agents/": 7, detail: 10, "/decisions/": 7, "/audit/": 7}


def test_verify_page(owner_a, key_a, celery_eager):
    call(key_a)
    client = owner_a.login(Client())
    html = client.post("/audit/verify/", follow=True).content.decode()
    assert "OK" in html and "1 decisions" in html
    assert "Audit log OK" in html and "audit entries verified" in html
    first = AuditEntry.objects.filter(account=owner_a.account).order_by("id").first()
    AuditEntry.objects.filter(pk=first.pk).update(action="edited")
    assert "Audit log tampering detected" in client.post("/audit/verify/", follow=True).content.decode()


def test_verify_page_links_the_first_tampered_decision(owner_a, key_a, celery_eager):
    """A decision changed after it was written (its spend lowered in the database): verification names it and links
    to it — /decisions/<id>/, opened in the drawer — and the link opens that decision."""
    for i in range(3):
        call(key_a, args={"n": i}, spend_usd=0.5)
    first, tampered, _ = Decision.objects.order_by("pk")
    Decision.objects.filter(pk=tampered.pk).update(spend_usd=Decimal("0.01"))
    client = owner_a.login(Client())
    html = client.post("/audit/verify/", follow=True).content.decode()
    assert "Tampering detected" in html and f"Decision {tampered.pk} does not match its hash" in html
    link = f'<a href="/decisions/{tampered.pk}/" data-drawer>Decision {tampered.pk}</a>'
    assert link in html and f'href="/decisions/{first.pk}/"' not in html
    assert "Audit log OK" in html  # the audit log is checked on its own, and was not touched
    page = client.get(f"/decisions/{tampered.pk}/")
    assert page.status_code == 200 and f"#{tampered.pk}" in page.content.decode()
    # Untouched, there is no such link.
    Decision.objects.filter(pk=tampered.pk).update(spend_usd=tampered.spend_usd)
    html = client.post("/audit/verify/", follow=True).content.decode()
    assert "OK — 3 decisions" in html and "data-drawer>Decision" not in html


PYTHON_REPR = re.compile(r"\{&#x27;|&#x27;: |\[&#x27;|\bTrue\b|Decimal\(")  # {'a': …}, ['a'], True, Decimal('1')


def test_policy_page_shows_the_policy_as_a_table_with_yaml_and_json(owner_a, key_a):
    set_policy(
        key_a,
        blocked_tools=["delete_*"],
        max_actions_per_hour=1200,
        max_spend_usd_per_day=10,
        max_calls_per_tool={"send_email": 50},
        pricing_rules=[{"tool": "stripe.*", "price_usd": 0.25}],
    )
    html = owner_a.login(Client()).get(at("bot", "policy/")).content.decode()
    table = html.split('<table class="table policy-table">')[1].split("</table></div>")[0]
    rows = {}  # row heading → the row's text (nested tables' rows have no row heading)
    for row in table.split('<tr><th scope="row">')[1:]:
        heading, cell = row.split("</th>", 1)
        rows[re.sub(r"<[^>]+>", "", heading).strip()] = " ".join(re.sub(r"<[^>]+>", " ", cell).split())
    assert rows["Blocked tools"] == "delete_*"
    assert rows["Calls per hour"] == "1,200 calls per rolling hour"
    assert rows["Spend per day"] == "$10.00 per UTC day"
    assert rows["Calls per tool"].endswith("send_email 50") and rows["Pricing rules"].endswith("stripe.* $0.25")
    assert rows["Allowed tools"] == "Any tool not blocked (no allow-list)"
    # The same policy as YAML and as JSON, each behind its toggle.
    yaml_block = re.search(
        r"<details><summary>Show as YAML</summary><pre><code>(.*?)</code></pre></details>", html, re.S
    )
    json_block = re.search(
        r"<details><summary>Show as JSON</summary><pre><code>(.*?)</code></pre></details>", html, re.S
    )
    assert yaml_block and "max_actions_per_hour: 1200" in yaml_block.group(1) and "- delete_*" in yaml_block.group(1)
    assert json_block and "&quot;max_actions_per_hour&quot;: 1200" in json_block.group(1)
    assert not PYTHON_REPR.search(html), PYTHON_REPR.search(html)


def test_audit_log_shows_a_policy_change_as_the_policy_pages_coloured_diff(owner_a, key_a):
    set_policy(key_a, max_actions_per_hour=5)
    client = owner_a.login(Client())
    saved = change(
        client, at("bot", "policy/"), {"max_actions_per_hour": "7", "blocked_tools": "delete_*", "base_version": "1"}
    )
    assert saved.status_code == 302
    html = client.get("/audit/", {"action": "governance.policy.updated", "actor": "alice"}).content.decode()
    assert "<summary>before / after</summary>" in html and "Before → after" in html
    diff = re.search(r'<pre class="diff"><code>.*?</code></pre>', html, re.S).group(0)
    assert '<span class="del">-  &quot;max_actions_per_hour&quot;: 5</span>' in diff
    assert '<span class="add">+  &quot;max_actions_per_hour&quot;: 7</span>' in diff
    assert '<span class="add">+  &quot;blocked_tools&quot;: [</span>' in diff
    assert not PYTHON_REPR.search(html), PYTHON_REPR.search(html)
    # The policy page's history diff of the same two versions is the same coloured diff, line for line.
    page = client.get(at("bot", "policy/"), {"a": 1, "b": 2}).content.decode()
    assert re.search(r'<pre class="diff"><code>.*?</code></pre>', page, re.S).group(0) == diff


def test_dashboard_respects_plan_gating(owner_a, key_a, plans):
    from billing.services import account_set_plan

    call(key_a)
    account_set_plan(account=owner_a.account, plan=plans["pro"])
    client = owner_a.login(Client())
    assert client.post(at("bot", "kill-switch/"), {"reason": "x", "confirm": "on"}).status_code == 403
    assert client.get(at("bot", "policy/"), {"a": "x", "b": "1"}).status_code == 200  # bad diff params ignored
    account_set_plan(account=owner_a.account, plan=plans["starter"])
    assert client.post(at("bot", "policy/"), {"max_actions_per_hour": "1"}).status_code == 403
    assert Agent.objects.get().is_enabled and Agent.objects.get().policy is None
