"""A governed call finds the registered tool by the normalised form of its name (docs/api.md §"Tools registry").

Policies matched tool names in their normalised form (NFKC, case-folded, trimmed), but the registry was looked up by
the exact name: with ``stripe.charge`` registered disabled, priced at $1 and capped at $2 a day, ``stripe.charge``
was blocked (``tool_disabled``) while ``STRIPE.CHARGE`` with ``spend_usd: 0`` was ``allowed`` five times at $0.00 —
past the disabled flag, the operator's price, the registry's risk level and the dispatch — and dedup took the two
spellings for two calls. Every variant of a registered name now resolves to that tool, in governed calls, keyed-run
actions and ``/v1/tools/{name}``, and the dedup digest covers the normalised name.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from billing.models import Account
from governance import ledger
from governance.models import Decision, Tool
from governance.services import args_hash
from idempotency import runs
from idempotency.models import Run
from tests.governance.test_dispatch import SECRET, receiver, stats  # noqa: F401 (receiver: the fixture)
from tests.support.governance import JSON, governed_call, register_tool, set_policy

AGENT = "billing-agent"
VARIANTS = {
    "upper case": "STRIPE.CHARGE",
    "mixed case": "Stripe.Charge",
    "fullwidth forms": "\uff53\uff54\uff52\uff49\uff50\uff45\uff0e\uff43\uff48\uff41\uff52\uff47\uff45",
    "long s (NFKC)": "\u017ftripe.charge",
}


@pytest.fixture
def client(key_a):
    return key_a.client()


def register(client, name="stripe.charge", url="https://tools.example.com/charge", **fields):
    response = register_tool(client, name, url, **fields)
    assert response.status_code == 200, response.content
    return response.json()


def call(client, tool, **body):
    response = governed_call(client, AGENT, tool, **body)
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_variant_of_a_disabled_tool_is_blocked_tool_disabled(client, variant):
    register(client, enabled=False, price_usd=1)
    set_policy(client, AGENT, max_spend_usd_per_day=2)
    for n in range(5):
        body = call(client, variant, args={"n": n}, spend_usd=0)
        assert (body["allowed"], body["decision"], body["policy_reason"]) == (False, "blocked", "tool_disabled")
    assert call(client, "stripe.charge", spend_usd=0)["policy_reason"] == "tool_disabled"
    # Recorded under the registered name: the decision log, the rollups and top_tools group the variants with it.
    assert set(Decision.objects.values_list("tool", "policy_reason")) == {("stripe.charge", "tool_disabled")}
    assert not Decision.objects.filter(allowed=True).exists()


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_variant_of_a_registered_tool_is_dispatched_to_it_and_charged_its_price(client, key_a, receiver, variant):  # noqa: F811
    register(
        client, url=f"{receiver}/ok", auth={"type": "hmac_sha256", "secret": SECRET}, price_usd=1, risk_level="low"
    )
    set_policy(client, AGENT, max_spend_usd_per_day=2)
    first = call(client, variant, args={"n": 1}, spend_usd=0)
    assert (first["decision"], first["policy_reason"], first["risk_level"]) == ("executed", "within_budget", "low")
    assert first["result"] == {"received": {"n": 1}, "tool": "stripe.charge", "first_time": True}
    assert first["remaining"]["spend_usd_today"] == 1.0  # the registry's price, not the declared 0
    assert call(client, variant, args={"n": 2}, spend_usd=0)["remaining"]["spend_usd_today"] == 2.0
    third = call(client, variant, args={"n": 3}, spend_usd=0)
    assert (third["decision"], third["policy_reason"]) == ("blocked", "daily_spend_exceeded")
    assert stats(receiver)["requests"] == 2
    # The exact name with the same args is the same call: dedup, not a second dispatch.
    again = call(client, "stripe.charge", args={"n": 1}, spend_usd=0)
    assert (again["decision"], again["result"]) == ("dedup", first["result"])
    assert stats(receiver)["requests"] == 2
    executed = Decision.objects.filter(outcome="executed")
    assert {(d.tool, str(d.spend_usd), bool(d.dispatch_id)) for d in executed} == {("stripe.charge", "1.000000", True)}
    # The log stays verifiable: row hashes cover the stored name and digest, whatever spelling was sent.
    account = Account.objects.get(pk=key_a.api_key.account_id)
    digest = args_hash(account.args_hash_key, AGENT, variant, {"n": 1})
    assert digest == args_hash(account.args_hash_key, AGENT, "stripe.charge", {"n": 1})
    assert Decision.objects.get(pk=first["decision_id"]).args_hash == digest
    verified = ledger.verify(account.pk)
    assert verified.ok and verified.rows_checked == Decision.objects.count() == 4


def test_a_variant_of_a_registered_tool_is_not_refused_in_strict_mode(client, account_a):
    Account.objects.filter(pk=account_a.pk).update(strict_mode=True)
    register(client, enabled=False)
    body = call(client, "STRIPE.CHARGE")
    assert (body["decision"], body["policy_reason"]) == ("blocked", "tool_disabled")
    missing = governed_call(client, AGENT, "stripe.refund")
    assert missing.status_code == 404 and missing.json()["detail"]["error"] == "tool_not_found"


def test_the_agent_scope_wins_for_variants_too(client):
    register(client, risk_level="low", enabled=False)
    register(client, name="stripe.charge", scope_id=f"agent:{AGENT}", risk_level="medium", enabled=False)
    assert call(client, "STRIPE.CHARGE")["risk_level"] == "medium"
    other = governed_call(client, "other-agent", "Stripe.Charge").json()
    assert (other["risk_level"], other["policy_reason"]) == ("low", "tool_disabled")


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_same_args_under_a_variant_name_are_a_dedup(client, variant):
    """Unregistered (permit-only) here: the dedup digest covers the normalised name whatever the registry holds."""
    first = call(client, "stripe.charge", args={"invoice": 7}, spend_usd=0.5)
    second = call(client, variant, args={"invoice": 7}, spend_usd=0.5)
    assert (first["decision"], second["decision"]) == ("allowed", "dedup")
    assert Decision.objects.get(pk=second["decision_id"]).original_id == first["decision_id"]
    assert second["remaining"] == {}  # nothing counted twice
    assert call(client, variant, args={"invoice": 8}, spend_usd=0.5)["remaining"]["spend_usd_today"] == 1.0


def test_keyed_run_actions_resolve_a_variant_to_the_registered_tool(client):
    register(client, enabled=False, price_usd=1)
    actions = [{"tool": "STRIPE.CHARGE", "args": {"amount": 1}, "spend_usd": 0}]
    response = client.post(
        "/v1/ai/run", {"key": "run-1", "metadata": {"agent_id": AGENT, "actions": actions}}, content_type=JSON
    )
    assert response.status_code == 200, response.content
    runs.execute(Run.objects.get().pk)
    run = Run.objects.get()
    assert [(a["decision"], a["policy_reason"]) for a in run.result["actions"]] == [("blocked", "tool_disabled")]
    assert Decision.objects.get().tool == "stripe.charge"


def test_get_toggle_and_delete_find_the_tool_by_a_variant_of_its_name(client):
    register(client, name="send_email")
    fullwidth = quote("\uff33\uff25\uff2e\uff24_\uff25\uff2d\uff21\uff29\uff2c")  # ＳＥＮＤ_ＥＭＡＩＬ, percent-encoded
    assert client.get("/v1/tools/SEND_EMAIL").json()["name"] == "send_email"
    toggled = client.post("/v1/tools/Send_Email/toggle", {"enabled": False}, content_type=JSON)
    assert toggled.status_code == 200 and toggled.json()["name"] == "send_email"
    assert Tool.objects.get().enabled is False
    deleted = client.delete(f"/v1/tools/{fullwidth}")
    assert deleted.status_code == 200 and deleted.json() == {"ok": True, "deleted": "send_email"}
    assert not Tool.objects.exists()
    assert client.get("/v1/tools/send_email").status_code == 404


def test_a_policy_naming_a_registered_tool_in_another_spelling_warns_of_nothing(client):
    register(client, name="send_email")
    body = set_policy(client, AGENT, blocked_tools=["SEND_EMAIL"], max_calls_per_tool={"Send_Email": 3})
    assert body["warnings"] == []
    assert [w["tool"] for w in set_policy(client, AGENT, blocked_tools=["send_sms"])["warnings"]] == ["send_sms"]


def test_the_database_refuses_a_second_tool_whose_name_differs_only_in_case(client, account_a):
    """The service refuses it with a 422 (test_lookalike_tools.py); the constraint holds for every other writer."""
    register(client, name="send_email")
    with pytest.raises(IntegrityError), transaction.atomic():
        Tool.objects.create(account=account_a, name="Send_Email", name_key="send_email", url="https://x.example/t")
    assert list(Tool.objects.values_list("name", "name_key")) == [("send_email", "send_email")]


def test_a_tool_registered_on_the_dashboard_is_found_by_a_variant_and_not_registered_twice(client, owner_a):
    form = {
        "name": "stripe.charge",
        "scope_id": "global",
        "url": "https://tools.example.com/charge",
        "secret": SECRET,
        "timeout_ms": "1000",
        "max_retries": "0",
        "description": "",
        "risk_level": "",
    }
    dashboard = owner_a.login(Client())
    assert dashboard.post("/tools/new/", form).status_code == 302  # saved disabled: "enabled" not ticked
    assert call(client, "STRIPE.CHARGE")["policy_reason"] == "tool_disabled"
    refused = dashboard.post("/tools/new/", {**form, "name": "Stripe.Charge"})
    assert refused.status_code == 422 and "differ only in case" in refused.content.decode()
    assert list(Tool.objects.values_list("name", flat=True)) == ["stripe.charge"]
