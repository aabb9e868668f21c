"""The semantic diff of two policies (governance.display.policy_changes): what a change does, field by field, in
the words the confirm steps and the audit log use."""

from billing.models import AuditEntry
from governance import services
from governance.display import policy_changes


def texts(before, after):
    return [change["text"] for change in policy_changes(before, after)]


def test_each_kind_of_change_in_words():
    before = {
        "blocked_tools": ["a", "b"],
        "max_actions_per_hour": 20,
        "max_calls_per_tool": {"x": 3},
        "approval_ttl_seconds": 3600,
    }
    after = {
        "allowed_tools": [],
        "blocked_tools": ["b", "c"],
        "max_actions_per_hour": 1000,
        "max_spend_usd_per_day": 200.0,
        "max_calls_per_tool": {"x": 5, "y": 1},
        "pricing_rules": [{"tool": "send_email", "price_usd": 0.001}],
        "require_approval": [{"tool": "stripe.*", "over_usd": 50.0}, "wire.transfer"],
    }
    assert texts(before, after) == [
        "allowed_tools: set to [] — no tool is allowed",
        "blocked_tools: + c; − a",
        "max_actions_per_hour: 20 → 1,000",
        "max_spend_usd_per_day: set to $200.00",
        "max_calls_per_tool: x: 3 → 5; + y: 1",
        "pricing_rules: set to send_email at $0.001",
        "require_approval: set to stripe.* over $50.00, wire.transfer",
        "approval_ttl_seconds: cleared (was 1 h)",
    ]
    assert texts(after, after) == []
    assert texts(None, {"max_actions_per_hour": 5}) == ["max_actions_per_hour: set to 5"]
    emptied = policy_changes({"allowed_tools": ["a"]}, {"allowed_tools": []})[0]
    assert emptied["removed"] == ["a"] and emptied["text"] == "allowed_tools: − a — now empty: no tool is allowed"


def test_the_audit_entry_holds_the_changes(account_a):
    services.policy_publish(
        account_id=account_a.pk, agent_id="bot", policy={"max_actions_per_hour": 20}, source="api", actor="t"
    )
    services.policy_publish(
        account_id=account_a.pk, agent_id="bot", policy={"max_actions_per_hour": 1000}, source="api", actor="t"
    )
    entry = AuditEntry.objects.filter(action="governance.policy.updated").order_by("-id").first()
    assert entry.data["changes"] == ["max_actions_per_hour: 20 → 1,000"]
