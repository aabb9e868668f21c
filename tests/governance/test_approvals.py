"""Human approval in the governed call (docs/approvals.md): the gate, single use, binding to the exact call, denial,
expiry and policy changes. The operators' side through the service here; its API, page and the SDK elsewhere."""

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import usage
from governance import approvals
from governance.models import Approval, Decision

Status = Approval.Status


def run(client, agent="billing-agent", tool="stripe.refund", args=None, **extra):
    body = {"agent_id": agent, "tool": tool, "args": {"charge": "ch_1"} if args is None else args, **extra}
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def set_policy(client, agent="billing-agent", **fields):
    response = client.post(f"/v1/policies/{agent}", fields, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def decide(key, approval_id, approve=True, reason="", actor="alice@example.com"):
    return approvals.decide(
        account_id=key.api_key.account_id, public_id=approval_id, approve=approve, reason=reason, actor=actor
    )


@pytest.fixture
def client(key_a):
    return key_a.client()


@pytest.fixture
def gated(client):
    return set_policy(client, require_approval=["stripe.refund", {"tool": "stripe.charge", "over_usd": 50}])


def test_a_call_needing_approval_is_blocked_with_its_approval_in_result(client, key_a, gated):
    body = run(client, spend_usd=12.5)
    assert (body["ok"], body["allowed"], body["decision"]) == (False, False, "blocked")
    assert body["policy_reason"] == "approval_required"
    result = body["result"]
    assert result["status"] == "pending" and result["approval_id"].startswith("apr_")
    assert result["approval_url"] == f"/approvals/{result['approval_id']}/"
    assert body["approval_id"] == result["approval_id"] and body["expires_at"] == result["expires_at"]
    assert "needs a person's approval" in body["explanation"] and result["approval_id"] in body["explanation"]
    approval = Approval.objects.get()
    assert approval.status == Status.PENDING and approval.requested_by_id == body["decision_id"]
    assert approval.rule == {"tool": "stripe.refund", "over_usd": None}
    assert approvals.args_preview(approval) == {"charge": "ch_1"}
    assert abs((approval.expires_at - approval.created_at).total_seconds() - 3600) < 1
    # Nothing reserved or charged.
    assert usage.current(key_a.api_key.account_id, usage.AI) == 0
    assert body["remaining"] == {}
    # The same call again: the same approval, still one row.
    again = run(client, spend_usd=12.5)
    assert again["result"]["approval_id"] == result["approval_id"] and Approval.objects.count() == 1


def test_approved_retry_runs_once_then_dedups_and_other_args_need_their_own(client, key_a, gated):
    first = run(client)
    decide(key_a, first["result"]["approval_id"])
    retry = run(client)
    assert (retry["decision"], retry["policy_reason"]) == ("allowed", "within_budget")
    approval = Approval.objects.get()
    assert approval.status == Status.CONSUMED and approval.consumed_by_id == retry["decision_id"]
    assert approval.args_encrypted == ""  # the preview is gone once decided
    assert run(client)["decision"] == "dedup"
    other = run(client, args={"charge": "ch_2"})
    assert other["policy_reason"] == "approval_required"
    assert other["result"]["approval_id"] != first["result"]["approval_id"]
    assert Approval.objects.filter(status=Status.PENDING).count() == 1


def test_the_threshold_asks_only_above_it(client, gated):
    assert run(client, tool="stripe.charge", spend_usd=50)["decision"] == "allowed"
    over = run(client, tool="stripe.charge", args={"n": 2}, spend_usd=50.01)
    assert over["policy_reason"] == "approval_required"
    assert "over $50.00" in over["explanation"]


def test_another_agent_does_not_match(client, key_a, gated):
    set_policy(client, agent="other-agent", require_approval=["stripe.refund"])
    decide(key_a, run(client)["result"]["approval_id"])
    assert run(client, agent="other-agent")["policy_reason"] == "approval_required"


def test_denied_stays_denied_with_the_reason(client, key_a, gated):
    first = run(client)
    decide(key_a, first["result"]["approval_id"], approve=False, reason="not this customer")
    body = run(client)
    assert (body["decision"], body["policy_reason"]) == ("blocked", "approval_denied")
    assert body["result"]["reason"] == "not this customer" and body["result"]["status"] == "denied"
    assert "denied by alice@example.com: 'not this customer'" in body["explanation"]
    with pytest.raises(approvals.NotPending):
        decide(key_a, first["result"]["approval_id"])


def test_expired_approvals_never_execute(client, key_a, gated):
    first = run(client)
    decide(key_a, first["result"]["approval_id"])
    Approval.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    body = run(client)
    assert body["policy_reason"] == "approval_required"
    assert body["result"]["approval_id"] != first["result"]["approval_id"]
    assert approvals.expire_due() == 1  # the old approved one; the new request is open
    assert Approval.objects.get(public_id=first["result"]["approval_id"]).status == Status.EXPIRED


def test_an_expired_pending_request_is_replaced_not_returned(client, gated):
    first = run(client)
    Approval.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # not swept yet
    body = run(client)
    assert body["result"]["approval_id"] != first["result"]["approval_id"]
    assert Approval.objects.get(public_id=first["result"]["approval_id"]).status == Status.EXPIRED


def test_a_policy_change_supersedes_open_approvals(client, key_a, gated):
    pending = run(client)["result"]["approval_id"]
    approved = run(client, args={"charge": "ch_2"})["result"]["approval_id"]
    decide(key_a, approved)
    set_policy(client, max_actions_per_hour=100)
    assert set(Approval.objects.values_list("status", flat=True)) == {Status.SUPERSEDED}
    with pytest.raises(approvals.NotPending):
        decide(key_a, pending)
    body = run(client, args={"charge": "ch_2"})
    assert body["policy_reason"] == "approval_required" and body["result"]["approval_id"] != approved


def test_caps_are_checked_at_the_retry_and_a_blocked_retry_keeps_the_approval(client, key_a, gated):
    set_policy(client, max_calls_per_tool={"stripe.refund": 0})
    decide(key_a, run(client)["result"]["approval_id"])
    blocked = run(client)
    assert blocked["policy_reason"] == "tool_call_limit_exceeded"
    assert Approval.objects.get().status == Status.APPROVED


def test_a_failed_dispatch_uses_the_approval_all_the_same(client, gated, endpoint):
    """The tool may have acted before it failed: the retry after a failure is another call for a person."""
    endpoint.status = 500
    auth = {"type": "hmac_sha256", "secret": "tool-secret-for-the-test"}
    tool = {"name": "stripe.refund", "url": endpoint.base + "/refund", "auth": auth, "max_retries": 0}
    assert client.post("/v1/tools", tool, content_type="application/json").status_code == 200
    approval_id = run(client)["result"]["approval_id"]
    approvals.decide(
        account_id=Approval.objects.get().account_id, public_id=approval_id, approve=True, reason="", actor="a"
    )
    failed = run(client)
    assert (failed["decision"], failed["policy_reason"]) == ("failed", "tool_error")
    assert Approval.objects.get().status == Status.CONSUMED and len(endpoint.calls) == 1
    endpoint.status = 200
    again = run(client)
    assert again["policy_reason"] == "approval_required" and again["result"]["approval_id"] != approval_id
    assert len(endpoint.calls) == 1


def test_the_approved_retry_says_whose_approval_let_it_through(client, key_a, gated):
    approval_id = run(client)["result"]["approval_id"]
    decide(key_a, approval_id, actor="alice@example.com")
    retry = run(client)
    assert retry["explain"]["approval"] == {"approval_id": approval_id, "decided_by": "alice@example.com"}
    assert f"approved by alice@example.com ({approval_id})" in retry["explanation"]


def test_an_approval_covers_the_cost_it_was_asked_for(client, key_a, gated):
    approval_id = run(client, tool="stripe.charge", spend_usd=60)["result"]["approval_id"]
    decide(key_a, approval_id)
    dearer = run(client, tool="stripe.charge", spend_usd=99999)
    assert dearer["policy_reason"] == "approval_required" and dearer["result"]["approval_id"] != approval_id
    assert run(client, tool="stripe.charge", spend_usd=60)["decision"] == "allowed"  # the approved call itself


def test_open_requests_per_agent_are_bounded(client, gated, settings):
    settings.ONCEONLY_APPROVALS_OPEN_PER_AGENT = 2
    ids = [run(client, args={"n": n})["result"]["approval_id"] for n in range(2)]
    full = run(client, args={"n": 3})
    assert (full["policy_reason"], full["result"]["approval_id"], full["result"]["status"]) == (
        "approval_required",
        None,
        "queue_full",
    )
    assert "already has 2 requests open" in full["explanation"]
    assert Approval.objects.count() == 2 and all(ids)
    assert run(client, args={"n": 0})["result"]["approval_id"] == ids[0]  # an open one is still answered


def test_an_agents_key_may_tighten_its_gate_never_loosen_it(client, key_a, gated):
    for loosening in (
        {"require_approval": None},
        {"require_approval": []},
        {"require_approval": ["stripe.refund", {"tool": "stripe.charge", "over_usd": 500}]},
        {"approval_ttl_seconds": 86400},
    ):
        response = client.post("/v1/policies/billing-agent", loosening, content_type="application/json")
        assert response.status_code == 403, loosening
        assert response.json()["detail"]["error"] == "admin_key_required"
    template = client.post(
        "/v1/policies/billing-agent/from-template", {"template": "strict"}, content_type="application/json"
    )
    assert template.status_code == 403
    tighter = {"require_approval": ["stripe.refund", {"tool": "stripe.charge", "over_usd": 5}, "wire.*"]}
    assert client.post("/v1/policies/billing-agent", tighter, content_type="application/json").status_code == 200
    shorter = client.post("/v1/policies/billing-agent", {"approval_ttl_seconds": 600}, content_type="application/json")
    assert shorter.status_code == 200
    from billing.services import api_key_create

    admin = api_key_create(account=key_a.api_key.account, scope="admin").raw
    response = client.post(
        "/v1/policies/billing-agent",
        {"require_approval": None},
        content_type="application/json",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert response.status_code == 200 and "require_approval" not in response.json()["policy"]


def test_a_dry_run_creates_no_approval(client, gated):
    response = client.post(
        "/v1/ai/run",
        {
            "key": "dry-1",
            "metadata": {
                "agent_id": "billing-agent",
                "dry_run": True,
                "actions": [{"tool": "stripe.refund", "args": {"charge": "ch_1"}}],
            },
        },
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert not Approval.objects.exists()


def test_require_approval_is_validated(client):
    response = client.post(
        "/v1/policies/bot",
        {"require_approval": ["ok.tool", {"tool": "x", "over_usd": -1}, {"tool": "y", "extra": 1}, 7]},
        content_type="application/json",
    )
    assert response.status_code == 422
    locs = {".".join(str(p) for p in item["loc"]) for item in response.json()["detail"]}
    assert {"body.require_approval.1.over_usd", "body.require_approval.2", "body.require_approval.3"} <= locs
    assert not Decision.objects.exists()
    response = client.post("/v1/policies/bot", {"approval_ttl_seconds": 30}, content_type="application/json")
    assert response.status_code == 422


def test_deciding_a_request_past_its_time_expires_it(client, key_a, gated):
    approval_id = run(client)["result"]["approval_id"]
    Approval.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # not swept yet
    with pytest.raises(approvals.NotPending) as refused:
        decide(key_a, approval_id)
    assert refused.value.approval.status == Status.EXPIRED
    assert Approval.objects.get().status == Status.EXPIRED and Approval.objects.get().args_encrypted == ""


def test_a_policies_file_may_not_loosen_the_gate_with_an_agents_key(client, key_a, gated):
    loosened = "agents:\n  billing-agent:\n    max_actions_per_hour: 5\n"
    body = {"yaml": loosened, "filename": "p.yaml", "dry_run": False}
    response = client.post("/v1/policies/apply", body, content_type="application/json")
    assert response.status_code == 403 and response.json()["detail"]["error"] == "admin_key_required"
    assert Approval.objects.count() == 0  # nothing changed: the gate stands
    assert run(client)["policy_reason"] == "approval_required"


def test_a_threshold_on_an_unpriced_tool_is_a_warning(client, key_a):
    """over_usd compares the cost: with no operator price the agent's own declaration decides, so say so."""
    run(client, tool="stripe.refund", args={"seen": 1})  # stripe.refund is a known tool now, with no price
    body = set_policy(client, require_approval=[{"tool": "stripe.*", "over_usd": 50}])
    [warning] = [w for w in body["warnings"] if w["code"] == "unpriced_threshold"]
    assert warning["tool"] == "stripe.*" and "stripe.refund has no price" in warning["message"]
    priced = set_policy(client, pricing_rules=[{"tool": "stripe.refund", "price_usd": 75}])
    assert not [w for w in priced["warnings"] if w["code"] == "unpriced_threshold"]
