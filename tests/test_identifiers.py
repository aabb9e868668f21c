"""Identifiers refuse control and bidirectional formatting characters, so that a name shows what it is: a
right-to-left override made the account name ``<RLO>exe.live-gnip`` render as "ping-evil.exe", and C1 controls went
into agent ids. One validator (``onceonly_site/identifiers.py``) serves the API, the dashboard's forms and the
management commands; idempotency keys stay opaque but refuse controls (docs/security.md, "Identifiers")."""

from __future__ import annotations

from io import StringIO
from urllib.parse import quote

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import Account, ApiKey, AuditEntry, Membership
from governance.forms import PolicyForm
from governance.models import Agent, Decision, PolicyVersion, Tool
from idempotency.models import Lease, LockRecord, RunEvent
from onceonly_site.identifiers import identifier_problem, tool_name_problem

JSON = "application/json"
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
SPOOF = f"{RLO}exe.live-gnip"  # renders as "ping-evil.exe"
# C1 controls, bidi embeddings/overrides, isolates and marks, and the separators that end a log line.
UNSAFE = [
    "\x85",
    "\x9b",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    RLO,
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
    "\u061c",
    "\u2028",
    "\u2029",
    "\x00",
    "\x1b",
    "\x7f",
]


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_the_validator_refuses_every_unsafe_character_and_names_it(char):
    problem = identifier_problem(f"bot{char}1")
    assert problem is not None and f"U+{ord(char):04X}" in problem
    assert tool_name_problem(f"tool{char}x") is not None


def test_the_validator_accepts_printable_text_of_any_script():
    for value in ("billing-agent", "bot:eu/1", "a b", "агент", "代理人", "ボット", "عميل", "שלום", "é" * 200):
        assert identifier_problem(value) is None, value


def _nothing_written() -> None:
    assert Agent.objects.count() == Decision.objects.count() == PolicyVersion.objects.count() == 0
    assert Tool.objects.count() == RunEvent.objects.count() == Lease.objects.count() == 0


# --- the API ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x85", RLO, "\u2066", "\u200f"], ids=lambda c: f"U+{ord(c):04X}")
def test_governed_call_refuses_an_unsafe_agent_id_and_writes_nothing(key_a, char):
    response = key_a.client().post("/v1/ai/run", {"agent_id": f"bot{char}", "tool": "search"}, content_type=JSON)
    assert response.status_code == 422, response.content
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "agent_id"]]
    _nothing_written()


def test_governed_call_refuses_an_unsafe_run_id_in_args(key_a):
    body = {"agent_id": "bot", "tool": "search", "args": {"run_id": f"run{RLO}1"}}
    response = key_a.client().post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 422
    assert [item["loc"] for item in response.json()["detail"]] == [["body", "args.run_id"]]
    _nothing_written()


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/policies/{quote(SPOOF)}",
        f"/v1/agents/{quote(SPOOF)}/disable",
        f"/v1/runs/{quote(SPOOF)}",
        f"/v1/agents/bot{quote(chr(0x85))}/logs",
    ],
)
def test_an_unsafe_identifier_in_an_api_path_is_a_422_at_the_path(key_a, path):
    response = key_a.client().post(path, {}, content_type=JSON) if "disable" in path else key_a.client().get(path)
    assert response.status_code == 422, response.content
    assert [item["loc"][0] for item in response.json()["detail"]] == ["path"]
    _nothing_written()


@pytest.mark.parametrize(
    ("metadata", "loc"),
    [
        ({"run_id": SPOOF}, "metadata.run_id"),
        ({"agent_id": f"a{RLO}b", "actions": [{"tool": "t"}]}, "metadata.agent_id"),
        ({"agent_id": "bot", "actions": [{"tool": f"t{RLO}"}]}, "metadata.actions.0.tool"),
    ],
)
def test_keyed_run_refuses_unsafe_identifiers_in_its_metadata(key_a, metadata, loc):
    response = key_a.client().post("/v1/ai/run", {"key": "k1", "metadata": metadata}, content_type=JSON)
    assert response.status_code == 422, response.content
    assert ["body", loc] in [item["loc"] for item in response.json()["detail"]]
    _nothing_written()


@pytest.mark.parametrize("field", ["run_id", "agent_id", "tool"])
def test_an_event_refuses_unsafe_identifiers(key_a, field):
    body = {"run_id": "run-1", "type": "note", field: f"x{RLO}y"}
    response = key_a.client().post("/v1/events", body, content_type=JSON)
    assert response.status_code == 422, response.content
    assert [item["loc"] for item in response.json()["detail"]] == [["body", field]]
    _nothing_written()


def test_a_tool_scope_with_an_unsafe_agent_id_is_refused(key_a):
    body = {
        "name": "send_email",
        "url": "https://tools.example.com/x",
        "scope_id": f"agent:{SPOOF}",
        "auth": {"type": "hmac_sha256", "secret": "s3cret-0123456789"},
    }
    response = key_a.client().post("/v1/tools", body, content_type=JSON)
    assert response.status_code == 422
    assert ["body", "scope_id"] in [item["loc"] for item in response.json()["detail"]]
    assert key_a.client().get("/v1/tools", {"scope_id": f"agent:{SPOOF}"}).status_code == 422
    _nothing_written()


@pytest.mark.parametrize(
    ("policy", "loc"),
    [
        ({"blocked_tools": [SPOOF]}, "blocked_tools"),
        ({"allowed_tools": ["ok", "x\x85"]}, "allowed_tools"),
        ({"max_calls_per_tool": {f"send{RLO}": 5}}, "max_calls_per_tool"),
        ({"pricing_rules": [{"tool": f"stripe.*{RLO}", "price_usd": 1}]}, "pricing_rules.0.tool"),
    ],
)
def test_a_policy_naming_a_tool_with_unsafe_characters_is_refused(key_a, policy, loc):
    response = key_a.client().post("/v1/policies/bot", policy, content_type=JSON)
    assert response.status_code == 422, response.content
    assert ["body", loc] in [item["loc"] for item in response.json()["detail"]]
    assert not PolicyVersion.objects.exists()


def test_idempotency_keys_refuse_controls_but_stay_opaque_otherwise(key_a):
    """Keys are the client's opaque strings (the SDK derives them as "<prefix>:<sha256 hex>"): a right-to-left
    mark from RTL user data is kept, but a control character is refused — on check-lock and leases alike — since
    no such key could be read back through /v1/ai/status?key=… (refused by the middleware)."""
    client = key_a.client()
    for path in ("/v1/check-lock", "/v1/ai/lease"):
        for char in ("\t", "\n", "\x85", "\x1b"):
            response = client.post(path, {"key": f"order{char}1"}, content_type=JSON)
            assert response.status_code == 422, (path, char)
            assert [item["loc"] for item in response.json()["detail"]] == [["body", "key"]]
    assert LockRecord.objects.count() == Lease.objects.count() == 0
    rtl_key = "order:\u05d4\u05d6\u05de\u05e0\u05d4\u200f:1"
    assert client.post("/v1/check-lock", {"key": rtl_key}, content_type=JSON).json()["status"] == "locked"
    assert client.post("/v1/ai/lease", {"key": rtl_key}, content_type=JSON).json()["status"] == "acquired"
    assert client.get("/v1/ai/status", {"key": rtl_key}).json()["status"] == "in_progress"


# --- the dashboard's forms --------------------------------------------------------------------------------------


def test_settings_refuse_an_account_name_with_a_right_to_left_override(owner_a):
    response = owner_a.login(Client()).post("/settings/", {"name": SPOOF})
    assert response.status_code in (200, 422)
    assert "bidirectional" in response.content.decode()
    assert Account.objects.get(pk=owner_a.account.pk).name == "Acme"
    assert not AuditEntry.objects.filter(action="billing.account.settings_changed").exists()


def test_api_key_label_with_a_control_or_bidi_character_is_refused(owner_a):
    client = owner_a.login(Client())
    before = ApiKey.objects.count()
    for label in (SPOOF, "prod\x85key", "a\u2066b"):
        response = client.post("/keys/", {"label": label})
        assert response.status_code in (200, 422) and "not allowed" in response.content.decode(), label
    assert ApiKey.objects.count() == before


def test_team_member_email_with_a_bidi_character_is_refused(owner_a):
    response = owner_a.login(Client()).post("/team/", {"email": f"eve{RLO}@acme.test", "role": "viewer"})
    assert response.status_code in (200, 422)
    assert Membership.objects.filter(account=owner_a.account).count() == 1


def test_policy_editor_refuses_an_entry_with_a_bidi_character():
    form = PolicyForm({"blocked_tools": f"delete_user\n{SPOOF}"})
    assert not form.is_valid()
    assert "bidirectional" in str(form.errors["blocked_tools"])


# --- management commands ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["create_api_key", "--account", SPOOF],
        ["create_api_key", "--account", "Acme", "--label", SPOOF],
        ["create_operator", "--account", f"ops{chr(0x85)}", "--email", "x@y.test", "--password", "long-enough-pw-1"],
        ["create_operator", "--account", "Acme", "--email", f"eve{RLO}@acme.test", "--password", "long-enough-pw-1"],
    ],
)
def test_commands_refuse_unsafe_account_names_labels_and_emails(account_a, args):
    keys, accounts = ApiKey.objects.count(), Account.objects.count()
    with pytest.raises(CommandError, match="not allowed"):
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    assert (ApiKey.objects.count(), Account.objects.count()) == (keys, accounts)
    assert not Membership.objects.filter(user__username__contains=RLO).exists()
