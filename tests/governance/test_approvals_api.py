"""/v1/approvals (docs/api.md §"Approvals"): the queue and one approval for any key of the account; approve and deny
with an admin-scoped key only, each decision audited; 404 for another account's approval; the list's query count
does not grow with its rows."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.choices import ApiKeyScope
from billing.models import AuditEntry
from billing.services import api_key_create
from governance.models import Approval
from tests.conftest import Key

Status = Approval.Status


def run(client, agent="billing-agent", tool="stripe.refund", args=None, **extra):
    body = {"agent_id": agent, "tool": tool, "args": {"charge": "ch_1"} if args is None else args, **extra}
    response = client.post("/v1/ai/run", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return response.json()


def asked(client, **call) -> str:
    """The approval id of a governed call that needs one."""
    body = run(client, **call)
    assert body["policy_reason"] == "approval_required", body
    return body["approval_id"]


def set_policy(client, agent="billing-agent", **fields):
    response = client.post(f"/v1/policies/{agent}", fields, content_type="application/json")
    assert response.status_code == 200, response.content


def admin_key(account, label="ops console") -> Key:
    new = api_key_create(account=account, label=label, scope=ApiKeyScope.ADMIN)
    return Key(raw=new.raw, api_key=new.api_key)


def decide(client, approval_id, action="approve", **body):
    return client.post(f"/v1/approvals/{approval_id}/{action}", body, content_type="application/json")


@pytest.fixture
def client(key_a):
    return key_a.client()


@pytest.fixture
def admin(account_a):
    return admin_key(account_a)


@pytest.fixture
def gated(client):
    set_policy(client, require_approval=["stripe.*"])
    set_policy(client, agent="support-agent", require_approval=["stripe.*"])


def decisions_written() -> tuple:
    return (
        list(Approval.objects.order_by("pk").values_list("status", "decided_by", "reason", "args_encrypted")),
        AuditEntry.objects.filter(action__startswith="governance.approval.").count(),
    )


# --- reading ----------------------------------------------------------------------------------------------------


def test_the_list_is_newest_first_without_args_and_filters(client, gated):
    first = asked(client, args={"charge": "ch_1"}, spend_usd=12.5)
    second = asked(client, tool="stripe.charge", args={"amount": 5})
    third = asked(client, agent="support-agent", args={"charge": "ch_9"})
    body = client.get("/v1/approvals").json()
    assert (body["total"], body["limit"], body["offset"]) == (3, 50, 0)
    assert [item["approval_id"] for item in body["items"]] == [third, second, first]
    item = body["items"][2]
    assert "args" not in item
    approval = Approval.objects.get(public_id=first)
    assert item == {
        "approval_id": first,
        "status": "pending",
        "agent_id": "billing-agent",
        "tool": "stripe.refund",
        "args_hash": approval.args_hash,
        "policy_version": approval.policy_version,
        "rule": {"tool": "stripe.*", "over_usd": None},
        "risk_level": approval.risk_level,
        "spend_usd": 12.5,
        "run_id": None,
        "created_at": approval.created_at.isoformat().replace("+00:00", "Z"),
        "expires_at": approval.expires_at.isoformat().replace("+00:00", "Z"),
        "decided_at": None,
        "decided_by": None,
        "reason": None,
        "consumed_at": None,
        "approval_url": f"/approvals/{first}/",
        "requested_decision_id": approval.requested_by_id,
        "consumed_decision_id": None,
    }
    assert item["requested_decision_id"] is not None

    def ids(query):
        response = client.get(f"/v1/approvals?{query}")
        assert response.status_code == 200, response.content
        return [item["approval_id"] for item in response.json()["items"]]

    assert ids("agent_id=support-agent") == [third]
    assert ids("tool=stripe.charge") == [second]
    assert ids("tool=stripe.charge&agent_id=support-agent") == []
    assert ids("status=approved") == []
    assert ids("status=pending&agent_id=billing-agent") == [second, first]
    page = client.get("/v1/approvals?limit=2&offset=1").json()
    assert [i["approval_id"] for i in page["items"]] == [second, first] and page["total"] == 3
    assert client.get("/v1/approvals?limit=2&offset=3").json() == {"items": [], "total": 3, "limit": 2, "offset": 3}


def test_an_open_approval_past_its_time_reads_as_expired(client, admin, gated):
    pending = asked(client)
    Approval.objects.update(expires_at=timezone.now() - timedelta(seconds=1))  # not swept yet
    assert client.get("/v1/approvals?status=pending").json()["total"] == 0
    assert [i["approval_id"] for i in client.get("/v1/approvals?status=expired").json()["items"]] == [pending]
    detail = client.get(f"/v1/approvals/{pending}").json()
    assert (detail["status"], detail["args"]) == ("expired", None)
    response = decide(admin.client(), pending)
    assert response.status_code == 409
    assert response.json()["detail"]["status"] == "expired"


def test_the_detail_shows_the_args_while_pending_then_null(client, admin, gated):
    approval_id = asked(client, args={"charge": "ch_1", "amount": 250})
    detail = client.get(f"/v1/approvals/{approval_id}")  # an agent's key may poll its approval
    assert detail.status_code == 200
    assert detail.json()["args"] == {"amount": 250, "charge": "ch_1"}
    assert detail.json()["status"] == "pending"
    assert decide(admin.client(), approval_id).status_code == 200
    after = client.get(f"/v1/approvals/{approval_id}").json()
    assert (after["status"], after["args"]) == ("approved", None)


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("status=waiting", "status"),
        ("agent_id=%20", "agent_id"),
        ("tool=%20", "tool"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("offset=-1", "offset"),
    ],
)
def test_a_bad_query_is_a_422_naming_it(client, gated, query, loc):
    response = client.get(f"/v1/approvals?{query}")
    assert response.status_code == 422, response.content
    assert [item["loc"] for item in response.json()["detail"]] == [["query", loc]]


def test_the_list_query_count_does_not_grow_with_its_rows(client, gated):
    def count() -> int:
        client.get("/v1/approvals")  # the key's cache and the rate limit's first touch out of the way
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/v1/approvals?status=pending&agent_id=billing-agent")
        assert response.status_code == 200
        return len(queries)

    asked(client)
    few = count()
    for n in range(12):
        asked(client, args={"charge": f"ch_{n + 10}"})
    assert client.get("/v1/approvals").json()["total"] == 13
    assert count() == few == 2  # the count, the page (with its agents)


# --- deciding ---------------------------------------------------------------------------------------------------


def test_an_admin_key_approves_and_the_identical_retry_goes_through_once(client, admin, gated):
    approval_id = asked(client)
    response = decide(admin.client(), approval_id, reason="refund agreed with the customer")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "approved" and body["args"] is None
    assert body["decided_by"] == f"api key {admin.api_key.preview}"
    assert body["reason"] == "refund agreed with the customer" and body["decided_at"] is not None
    entry = AuditEntry.objects.get(action="governance.approval.approved")
    assert (entry.actor_label, entry.object_id) == (f"api key {admin.api_key.preview}", approval_id)
    retry = run(client)
    assert (retry["decision"], retry["policy_reason"]) == ("allowed", "within_budget")
    used = client.get(f"/v1/approvals/{approval_id}").json()
    assert used["status"] == "consumed" and used["consumed_decision_id"] == retry["decision_id"]
    assert used["consumed_at"] is not None
    assert run(client)["decision"] == "dedup"


def test_approve_takes_no_reason_or_null(client, admin, gated):
    first, second = asked(client), asked(client, args={"charge": "ch_2"})
    assert decide(admin.client(), first).json()["reason"] is None
    assert decide(admin.client(), second, reason=None).json()["status"] == "approved"


@pytest.mark.parametrize(
    ("body", "kind"),
    [({}, "missing"), ({"reason": None}, "missing"), ({"reason": "  "}, "string_too_short"),
     ({"reason": "x" * 1001}, "string_too_long"), ({"reason": 5}, "string_type")],
)  # fmt: skip
def test_deny_needs_a_reason_and_a_422_writes_nothing(client, admin, gated, body, kind):
    approval_id = asked(client)
    before = decisions_written()
    response = decide(admin.client(), approval_id, "deny", **body)
    assert response.status_code == 422, response.content
    assert [(item["loc"], item["type"]) for item in response.json()["detail"]] == [(["body", "reason"], kind)]
    assert decisions_written() == before


def test_an_unknown_field_is_a_422(client, admin, gated):
    approval_id = asked(client)
    response = decide(admin.client(), approval_id, approve=True)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "approve"]


def test_deny_blocks_the_identical_call_with_the_reason(client, admin, gated):
    approval_id = asked(client)
    response = decide(admin.client(), approval_id, "deny", reason="  not this customer ")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["reason"]) == ("denied", "not this customer")
    assert AuditEntry.objects.filter(action="governance.approval.denied", object_id=approval_id).count() == 1
    blocked = run(client)
    assert (blocked["decision"], blocked["policy_reason"]) == ("blocked", "approval_denied")
    assert blocked["result"]["reason"] == "not this customer"


@pytest.mark.parametrize("action", ["approve", "deny"])
def test_an_agent_key_may_not_decide_and_writes_nothing(client, gated, action):
    approval_id = asked(client)
    before = decisions_written()
    response = decide(client, approval_id, action, reason="mine")
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert detail["error"] == "admin_key_required" and "admin-scoped API key" in detail["message"]
    assert decisions_written() == before
    assert Approval.objects.get().status == Status.PENDING


def test_a_second_decision_is_a_409_with_the_status(client, admin, gated):
    approval_id = asked(client)
    assert decide(admin.client(), approval_id).status_code == 200
    for action, body in (("approve", {}), ("deny", {"reason": "changed my mind"})):
        response = decide(admin.client(), approval_id, action, **body)
        assert response.status_code == 409
        detail = response.json()["detail"]
        assert (detail["error"], detail["status"]) == ("approval_not_pending", "approved")
    assert AuditEntry.objects.filter(action__startswith="governance.approval.").count() == 1


def test_another_accounts_approval_is_a_404(client, gated, account_b, key_b):
    approval_id = asked(client)
    other_admin = admin_key(account_b).client()
    for response in (
        key_b.client().get(f"/v1/approvals/{approval_id}"),
        other_admin.get(f"/v1/approvals/{approval_id}"),
        decide(other_admin, approval_id),
        decide(other_admin, approval_id, "deny", reason="not yours"),
        decide(other_admin, "apr_unknown"),
        client.get("/v1/approvals/apr_unknown"),
    ):
        assert response.status_code == 404, response.content
        assert response.json()["detail"]["error"] == "approval_not_found"
    assert other_admin.get("/v1/approvals").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert Approval.objects.get().status == Status.PENDING


@pytest.mark.parametrize(
    ("public_id", "kind"),
    [
        ("apr_" + "x" * 37, "string_too_long"),
        ("apr_%E2%80%8Bx", "string_pattern_mismatch"),
        ("%20", "string_pattern_mismatch"),
    ],
)
def test_what_no_approval_id_can_be_is_a_422(client, public_id, kind):
    for response in (client.get(f"/v1/approvals/{public_id}"), decide(client, public_id)):  # before the key's scope
        assert response.status_code == 422, response.content
        assert [(i["loc"], i["type"]) for i in response.json()["detail"]] == [(["path", "approval_id"], kind)]


def test_a_plan_without_governance_is_refused(client, account_a, plans):
    from billing.services import account_set_plan

    account_set_plan(account=account_a, plan=plans["free"])
    response = client.get("/v1/approvals")
    assert response.status_code == 403 and response.json()["detail"]["error"] == "feature_not_available"
