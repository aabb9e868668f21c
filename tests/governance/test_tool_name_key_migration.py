"""Migration 0009 (``Tool.name_key``) on a database registered before names differing only in case were refused:
it must not fail on such "twins", and calls must resolve each spelling deterministically afterwards
(governance/migrations/0009_tool_name_key.py; docs/api.md §"Tools registry")."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from governance.models import Decision, Tool
from tests.support.governance import governed_call, register_tool

BEFORE = [("governance", "0008_decision_prices")]
URL = "https://tools.example.com/t"


def migrate(targets=None):
    """Migrate the test database to ``targets`` (default: every app's latest migration); the historical apps."""
    executor = MigrationExecutor(connection)
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.fixture
def before_name_key(transactional_db):
    """The schema of migration 0008, restored to the latest whatever the test does."""
    try:
        yield migrate(BEFORE)
    finally:
        migrate()


def test_tools_differing_only_in_case_are_kept_and_resolved_oldest_first(before_name_key, key_a):
    account_id = key_a.api_key.account_id
    OldTool = before_name_key.get_model("governance", "Tool")
    for scope, name, risk in [
        ("global", "send_email", "low"),
        ("global", "Send_Email", "medium"),
        ("global", "SEND_EMAIL", "high"),
        ("agent:bot", "Send_Email", "medium"),
        ("global", "stripe.charge", ""),
    ]:
        # Disabled: a call is blocked tool_disabled with the risk level of the tool it resolved to, nothing sent.
        OldTool.objects.create(
            account_id=account_id, scope_id=scope, name=name, url=URL, enabled=False, risk_level=risk
        )

    migrate()

    rows = Tool.objects.order_by("pk").values_list("scope_id", "name", "name_key", "legacy_twin")
    assert list(rows) == [
        ("global", "send_email", "send_email", 0),
        ("global", "Send_Email", "send_email", 1),  # registered after a namesake: a twin, second in line
        ("global", "SEND_EMAIL", "send_email", 2),
        ("agent:bot", "Send_Email", "send_email", 0),  # alone in its scope
        ("global", "stripe.charge", "stripe.charge", 0),
    ]
    client = key_a.client()
    resolved = {}
    for tool in ["send_email", "Send_Email", "SEND_EMAIL", "sEND_email", "\uff53\uff45\uff4e\uff44_email"]:
        body = governed_call(client, "other", tool).json()
        assert body["policy_reason"] == "tool_disabled", body
        resolved[tool] = (body["risk_level"], Decision.objects.get(pk=body["decision_id"]).tool)
    assert resolved == {
        "send_email": ("low", "send_email"),  # an exact name reaches its own tool, as before the migration
        "Send_Email": ("medium", "Send_Email"),
        "SEND_EMAIL": ("high", "SEND_EMAIL"),
        "sEND_email": ("low", "send_email"),  # any other spelling: the oldest registration
        "\uff53\uff45\uff4e\uff44_email": ("low", "send_email"),
    }
    assert governed_call(client, "bot", "SEND_EMAIL").json()["risk_level"] == "medium"  # the agent's scope first
    # No new twin: a fourth spelling is refused, and updating an existing twin still works.
    refused = register_tool(client, "sEnd_Email", URL)
    assert refused.status_code == 422 and refused.json()["detail"][0]["type"] == "name_conflict"
    assert register_tool(client, "SEND_EMAIL", URL, risk_level="low").status_code == 200
    assert Tool.objects.count() == 5
