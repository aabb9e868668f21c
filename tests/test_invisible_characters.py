"""Invisible characters cannot make a second name that looks like the first: a tool name with a combining grapheme
joiner, a variation selector, a Hangul filler, a braille blank or a combining mark on a plain letter escaped a
pricing rule, a call cap and a block entry written for the visible name (NFKC and case folding keep them). Tool
names refuse them everywhere (calls, policy entries, the registry); other identifiers refuse the invisible ones that
no script or emoji needs (zero-width space, word joiner, soft hyphen, fillers, tags…)."""

from __future__ import annotations

import pytest

from governance.models import Decision, PolicyVersion

INVISIBLE_IN_TOOLS = {
    "combining grapheme joiner": "priced\u034f",
    "variation selector 16": "priced\ufe0f",
    "hangul filler": "priced\u3164",
    "braille blank": "priced\u2800",
    "combining low line": "priced\u0332",
    "zero width joiner": "priced\u200d",
    "zero width space": "priced\u200b",
}
INVISIBLE_IN_IDS = {
    "zero width space": "prod-bot\u200b",
    "byte order mark": "\ufeffprod-bot",
    "soft hyphen": "prod\u00adbot",
    "word joiner": "prod\u2060bot",
    "tag character": "prod-bot\U000e0041",
}


def post(client, path, body):
    return client.post(path, body, content_type="application/json")


@pytest.mark.parametrize("tool", INVISIBLE_IN_TOOLS.values(), ids=INVISIBLE_IN_TOOLS.keys())
def test_a_tool_name_with_an_invisible_character_is_refused_in_calls_and_policies(key_a, tool):
    client = key_a.client()
    priced = post(client, "/v1/policies/bot", {"pricing_rules": [{"tool": "priced", "price_usd": 2.5}]})
    assert priced.status_code == 200, priced.content
    call = post(client, "/v1/ai/run", {"agent_id": "bot", "tool": tool, "spend_usd": 0})
    assert call.status_code == 422, call.content
    assert [item["loc"] for item in call.json()["detail"]] == [["body", "tool"]]
    assert not Decision.objects.exists()
    versions = PolicyVersion.objects.count()
    for field, value in [
        ("blocked_tools", [tool]),
        ("max_calls_per_tool", {tool: 1}),
        ("pricing_rules", [{"tool": tool, "price_usd": 0}]),
    ]:
        refused = post(client, "/v1/policies/bot", {field: value})
        assert refused.status_code == 422, (field, refused.content)
    assert PolicyVersion.objects.count() == versions


@pytest.mark.parametrize("agent_id", INVISIBLE_IN_IDS.values(), ids=INVISIBLE_IN_IDS.keys())
def test_an_agent_id_with_an_invisible_character_is_refused(key_a, agent_id):
    call = post(key_a.client(), "/v1/ai/run", {"agent_id": agent_id, "tool": "send_email"})
    assert call.status_code == 422, call.content
    assert [item["loc"] for item in call.json()["detail"]] == [["body", "agent_id"]]
    assert "Invisible characters are not allowed" in call.json()["detail"][0]["msg"]
    assert not Decision.objects.exists()


@pytest.mark.parametrize("tool", ["café", "cafe\u0301", "日本語_tool", "ｐａｉｄ_ｔｏｏｌ"])
def test_names_that_only_look_unusual_are_still_accepted(key_a, tool):
    call = post(key_a.client(), "/v1/ai/run", {"agent_id": "bot-\u2764\ufe0f", "tool": tool})
    assert call.status_code == 200, call.content
