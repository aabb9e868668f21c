"""Look-alike tool names do not slip past a policy: with ``delete_user`` blocked, ``DELETE_USER``, a leading space,
a Cyrillic ``е`` and a fullwidth ``＿`` each got a permit-only ``allowed`` when policies compared names as written.
Policies match the normalised form (NFKC, case-folded, trimmed) of both the tool name and every list entry, glob,
call cap and pricing rule; a tool name with whitespace, an invisible character or letters of two scripts is refused
(422) in governed calls, keyed runs and the registry (docs/security.md)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from governance import policies
from governance.models import Agent, Decision, Tool
from onceonly_site.identifiers import normalise_tool, tool_name_problem
from tests.support.governance import JSON, governed_call, register_tool, set_policy

AGENT = "bot"
LOOKALIKES = {
    "upper case": "DELETE_USER",
    "leading space": " delete_user",
    "cyrillic e": "delete_us\u0435r",
    "fullwidth low line": "delete\uff3fuser",
}


@pytest.fixture
def client(key_a):
    return key_a.client()


@pytest.mark.parametrize("tool", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_a_lookalike_of_a_blocked_tool_is_blocked_or_refused_never_allowed(client, tool):
    set_policy(client, AGENT, blocked_tools=["delete_user"])
    response = governed_call(client, AGENT, tool)
    if response.status_code == 200:
        body = response.json()
        assert (body["allowed"], body["decision"], body["policy_reason"]) == (False, "blocked", "tool_blocked")
        assert Decision.objects.get().tool == tool  # the log records the name as called
    else:
        assert response.status_code == 422, response.content
        assert [item["loc"] for item in response.json()["detail"]] == [["body", "tool"]]
        assert not Decision.objects.exists()
    assert not Decision.objects.filter(allowed=True).exists()


def test_which_lookalikes_are_blocked_and_which_refused(client):
    set_policy(client, AGENT, blocked_tools=["delete_user"])
    outcomes = {name: governed_call(client, AGENT, tool).status_code for name, tool in LOOKALIKES.items()}
    assert outcomes == {"upper case": 200, "leading space": 422, "cyrillic e": 422, "fullwidth low line": 200}


def test_the_exact_name_is_still_blocked_and_other_tools_still_allowed(client):
    set_policy(client, AGENT, blocked_tools=["delete_user"])
    assert governed_call(client, AGENT, "delete_user").json()["policy_reason"] == "tool_blocked"
    assert governed_call(client, AGENT, "delete_users_report").json()["decision"] == "allowed"


def test_globs_and_entries_are_normalised_too(client):
    set_policy(client, AGENT, blocked_tools=["Delete_*", "STRIPE.refund"])
    for tool in ("delete_account", "DELETE_ACCOUNT", "\uff24elete_x", "stripe.REFUND", "Stripe.Refund"):
        assert governed_call(client, AGENT, tool).json()["policy_reason"] == "tool_blocked", tool
    assert governed_call(client, AGENT, "stripe.charge").json()["decision"] == "allowed"


def test_allowed_tools_match_the_normalised_name(client):
    set_policy(client, AGENT, allowed_tools=["search_*"])
    assert governed_call(client, AGENT, "SEARCH_docs").json()["decision"] == "allowed"
    assert governed_call(client, AGENT, "send_email").json()["policy_reason"] == "tool_not_allowed"


@pytest.mark.parametrize(
    "tool",
    ["delete user", "delete_user\t", "delete\u200buser", "delete\u00a0user", "\u0430dmin_\u03b1", "send_em\u0430il"],
)
def test_a_tool_name_with_whitespace_invisible_characters_or_mixed_scripts_is_refused(client, tool):
    response = governed_call(client, AGENT, tool)
    assert response.status_code == 422, response.content
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "tool"]]
    assert not Decision.objects.exists() and not Agent.objects.exists()


@pytest.mark.parametrize("tool", ["поиск", "検索_ツール", "send_邮件", "café.order", "search"])
def test_names_in_one_script_or_latin_with_cjk_are_accepted(client, tool):
    assert tool_name_problem(tool) is None
    assert governed_call(client, AGENT, tool).json()["decision"] == "allowed"


def test_keyed_run_actions_refuse_a_lookalike_tool_name(client):
    body = {"key": "run-1", "metadata": {"agent_id": "bot", "actions": [{"tool": "delete_us\u0435r"}]}}
    response = client.post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 422
    assert ["body", "metadata.actions.0.tool"] in [item["loc"] for item in response.json()["detail"]]


def test_a_call_cap_counts_lookalikes_of_the_tool_together(client):
    set_policy(client, AGENT, max_calls_per_tool={"send_email": 2})
    # Different args: with the same ones the second spelling is a dedup of the first (test_tool_name_resolution.py).
    assert governed_call(client, AGENT, "send_email", args={"n": 1}).json()["decision"] == "allowed"
    assert governed_call(client, AGENT, "SEND_EMAIL", args={"n": 2}).json()["decision"] == "allowed"
    blocked = governed_call(client, AGENT, "Send_Email", args={"n": 3}).json()
    assert (blocked["decision"], blocked["policy_reason"]) == ("blocked", "tool_call_limit_exceeded")
    assert blocked["remaining"]["calls_today"] == 2


def test_a_pricing_rule_prices_lookalikes_of_the_tool(client):
    set_policy(client, AGENT, pricing_rules=[{"tool": "stripe.*", "price_usd": 2.5}])
    assert governed_call(client, AGENT, "STRIPE.charge").json()["remaining"]["spend_usd_today"] == 2.5


def test_a_policy_cannot_cap_one_tool_twice_under_two_spellings(client):
    response = client.post(
        f"/v1/policies/{AGENT}", {"max_calls_per_tool": {"send_email": 5, "SEND_EMAIL": 50}}, content_type=JSON
    )
    assert response.status_code == 422
    assert "name the same tool" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("entry", ["delete user", "delete_us\u0435r", "del\u200bete"])
def test_a_policy_entry_that_no_valid_name_could_match_is_refused(client, entry):
    response = client.post(f"/v1/policies/{AGENT}", {"blocked_tools": ["drop_*", entry]}, content_type=JSON)
    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "blocked_tools"]]


# --- the registry -----------------------------------------------------------------------------------------------


def register(client, name):
    return register_tool(client, name, "https://tools.example.com/t")


@pytest.mark.parametrize("name", ["send email", " send_email", "send_em\u0430il", "send_email\n", "send\uff3femail"])
def test_the_registry_refuses_whitespace_controls_and_non_ascii_lookalikes(client, name):
    response = register(client, name)
    assert response.status_code == 422, response.content
    assert ["body", "name"] in [item["loc"] for item in response.json()["detail"]]
    assert not Tool.objects.exists()


def test_the_registry_refuses_a_second_tool_differing_only_in_case(client):
    assert register(client, "send_email").status_code == 200
    response = register(client, "Send_Email")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "name_conflict"
    assert list(Tool.objects.values_list("name", flat=True)) == ["send_email"]
    assert register(client, "send_email").status_code == 200  # updating the tool itself still works


# --- the policy editor ------------------------------------------------------------------------------------------


def test_the_policy_editor_shows_what_each_entry_matches(client, owner_a):
    set_policy(client, AGENT, blocked_tools=["DELETE_USER", "drop_*"], max_calls_per_tool={"Send_Email": 3})
    agent = Agent.objects.get()
    page = owner_a.login(Client()).get(reverse("governance:policy-edit", args=[agent.pk])).content.decode()
    assert "<code>DELETE_USER</code> → <code>delete_user</code>" in page
    assert "<code>Send_Email</code> → <code>send_email</code>" in page
    assert "<code>drop_*</code> →" not in page  # unchanged entries are not listed


# --- the normalisation itself -----------------------------------------------------------------------------------


def test_normalisation_has_an_ascii_fast_path_and_handles_compatibility_forms():
    assert normalise_tool(" Delete_User ") == "delete_user"
    assert normalise_tool("delete\uff3fuser") == normalise_tool("\uff24\uff25\uff2c\uff25\uff34\uff25_user")
    assert normalise_tool("STRASSE") == "strasse" and normalise_tool("Stra\u00dfe") == "strasse"  # casefold
    assert policies.matches("DELETE_USER", ["delete_user"]) and not policies.matches("delete_users", ["delete_user"])
    assert not policies.matches("x", [])
    assert policies.call_cap({"max_calls_per_tool": {"Send_Email": 3}}, "SEND_EMAIL") == 3
    assert policies.call_cap({}, "send_email") == -1
