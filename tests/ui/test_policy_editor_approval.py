"""The policy editor and the policy table know require_approval (governance/forms.py, governance/display.py): "Require
approval for" takes a tool name or glob per line, or "tool > amount" for the calls costing more; "Approval expires
after (seconds)" its TTL — both checked by policies.PolicyInput as the API checks them; the table shows each entry in
words ("stripe.* — over $50.00") and the TTL with its unit."""

from __future__ import annotations

from html import unescape

import pytest
from django.test import Client

from governance import display
from governance.forms import PolicyForm
from governance.models import Agent, PolicyVersion
from tests.support.policy_confirm import change

JSON = "application/json"


@pytest.fixture
def agent(key_a):
    response = key_a.client().post("/v1/policies/billing-agent", {"max_actions_per_hour": 10}, content_type=JSON)
    assert response.status_code == 200
    return Agent.objects.get(agent_id="billing-agent")


def editor(agent):
    return f"/agents/{agent.pk}/policy/"


def save(client, agent, **fields):
    """A save reviewed and confirmed (the first POST's answer when it is refused)."""
    data = {"base_version": str(agent.policy_version), "max_actions_per_hour": "10", **fields}
    return change(client, editor(agent), data)


def test_saving_require_approval_and_its_ttl(owner_a, agent):
    client = owner_a.login(Client())
    text = "stripe.refund\r\nstripe.* > 50\n  *delete*  \nbilling.payout over $1.25\n"
    response = save(client, agent, require_approval=text, approval_ttl_seconds="600")
    assert response.status_code == 302, unescape(response.content.decode())
    agent.refresh_from_db()
    assert agent.policy["require_approval"] == [
        "stripe.refund",
        {"tool": "stripe.*", "over_usd": 50.0},
        "*delete*",
        {"tool": "billing.payout", "over_usd": 1.25},
    ]
    assert agent.policy["approval_ttl_seconds"] == 600 and agent.policy_version == 2
    # The form shows it back as it takes it: saving again unchanged makes no new version.
    html = unescape(client.get(editor(agent)).content.decode())
    assert "stripe.refund\nstripe.* > 50.0\n*delete*\nbilling.payout > 1.25</textarea>" in html
    assert 'name="approval_ttl_seconds" value="600"' in html
    initial = PolicyForm.from_policy(agent.policy, agent.policy_version).initial
    response = save(client, agent, require_approval=initial["require_approval"], approval_ttl_seconds="600")
    assert response.status_code == 302 and PolicyVersion.objects.filter(agent=agent).count() == 2
    # Emptied: the fields leave the policy.
    agent.refresh_from_db()
    assert save(client, agent).status_code == 302
    agent.refresh_from_db()
    assert "require_approval" not in agent.policy and "approval_ttl_seconds" not in agent.policy


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"require_approval": "stripe.*>50"},
            "“stripe.*>50”: Write one tool name or glob per line, or “tool > amount”",
        ),
        ({"require_approval": "stripe.* >50"}, "“stripe.* >50”: Write one tool name or glob per line"),
        ({"require_approval": "stripe refund"}, "“stripe refund”: Write one tool name or glob per line"),
        ({"require_approval": "stripe.* > fifty"}, "stripe.*: Must be a number from 0 to"),
        ({"require_approval": "stripe.* > 1e3"}, "stripe.*: Must be a number from 0 to"),
        ({"require_approval": "delete_us\u0435r"}, "A tool name uses letters of one script only"),
        ({"require_approval": "x" * 201}, "Must be a non-empty string of at most 200 characters."),
        ({"approval_ttl_seconds": "30"}, "Must be a whole number of seconds from 60 to 604,800 (7 days)."),
        ({"approval_ttl_seconds": "604801"}, "Must be a whole number of seconds from 60 to 604,800 (7 days)."),
        ({"approval_ttl_seconds": "1h"}, "Must be a whole number of seconds from 60 to 604,800 (7 days)."),
        ({"approval_ttl_seconds": "\u0661\u0662\u0660"}, "Must be a whole number of seconds"),
    ],
)
def test_bad_entries_are_said_at_their_field_and_nothing_is_saved(owner_a, agent, fields, message):
    client = owner_a.login(Client())
    response = save(client, agent, **fields)
    assert response.status_code == 422
    html = unescape(response.content.decode())
    assert message in html, html[html.find("field-error") - 300 :][:1200]
    assert PolicyVersion.objects.filter(agent=agent).count() == 1


def test_entries_are_shown_as_they_match(owner_a, agent):
    client = owner_a.login(Client())
    response = save(client, agent, require_approval="STRIPE.Refund\nBilling.* > 5")
    assert response.status_code == 302
    html = unescape(client.get(editor(agent)).content.decode())
    assert (
        '<code>STRIPE.Refund</code> → <code>stripe.refund</code> <span class="muted">(Require approval for)</span>'
        in (html)
    )
    assert "<code>Billing.*</code> → <code>billing.*</code>" in html


def test_the_policy_table_shows_require_approval_in_words(viewer_a, key_a, agent):
    policy = {
        "require_approval": ["stripe.refund", {"tool": "stripe.*", "over_usd": 50}],
        "approval_ttl_seconds": 600,
    }
    assert key_a.client().post("/v1/policies/billing-agent", policy, content_type=JSON).status_code == 200
    for url in (editor(agent), f"/agents/{agent.pk}/"):
        html = unescape(viewer_a.login(Client()).get(url).content.decode())
        assert "<code>stripe.refund</code> — every call" in html
        assert "<code>stripe.*</code> — over $50.00" in html
        assert '<th scope="row">Approval expires after</th><td>10 min</td>' in html
        assert "<code>require_approval</code>" not in html  # not an unknown field's row
        assert "require_approval:\n- stripe.refund\n- tool: stripe.*\n  over_usd: 50" in html  # the YAML view
    assert "Require approval for" not in unescape(viewer_a.login(Client()).get(editor(agent)).content.decode())


def test_policy_view():
    view = display.policy_view({"require_approval": ["a.*", {"tool": "b", "over_usd": 0.5}]})
    assert view["require_approval"] == [("a.*", None), ("b", 0.5)]
    assert (view["approval_ttl_seconds"], view["approval_ttl_default"]) == (3600, True)
    assert view["other"] == {}
    view = display.policy_view({"max_actions_per_hour": 5})
    assert view["require_approval"] == [] and view["approval_ttl_seconds"] is None
    view = display.policy_view({"approval_ttl_seconds": 120})
    assert (view["approval_ttl_seconds"], view["approval_ttl_default"]) == (120, False)
