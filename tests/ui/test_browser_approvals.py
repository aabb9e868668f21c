"""Approvals in headless Chromium: an agent's governed call (the real SDK) waits for a person; an admin finds it
through the navigation's badge, reads the call's args, approves, and the agent's identical retry runs; a deny
without a reason is refused on the page, with one it is shown there and answered to the agent."""

import pytest
from onceonly import OnceOnly
from playwright.sync_api import expect

from governance.models import Approval
from tests.support.tool_endpoint import ToolEndpoint
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser

ARGS = {"charge": "ch_1", "amount": 7500}


def run_tool(key, live_server, args=ARGS, **kwargs):
    with OnceOnly(api_key=key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as client:
        return client.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args=args, **kwargs)


def gate(key, live_server):
    with OnceOnly(api_key=key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as client:
        client.gov.upsert_policy({"agent_id": "billing-agent", "require_approval": ["stripe.refund"]})


@pytest.fixture
def receiver(settings, key_a):
    """stripe.refund registered, dispatched to a receiver on 127.0.0.1 that records its calls."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    tool = {
        "name": "stripe.refund",
        "url": endpoint.base + "/refund",
        "auth": {"type": "hmac_sha256", "secret": "s" * 24},
    }
    assert key_a.client().post("/v1/tools", tool, content_type="application/json").status_code == 200
    yield endpoint
    endpoint.stop()


def test_an_admin_approves_and_the_identical_retry_runs(page, live_server, admin_a, key_a, receiver):
    gate(key_a, live_server)
    first = run_tool(key_a, live_server, spend_usd=12.5)
    assert (first.allowed, first.decision, first.policy_reason) == (False, "blocked", "approval_required")
    approval_id = first.result["approval_id"]

    login(page, live_server, admin_a)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.locator("li", has=page.get_by_role("link", name="Approvals", exact=True))).to_contain_text("1")
    nav.get_by_role("link", name="Approvals", exact=True).click()
    row = page.locator(f'#approvals tr[data-id="{approval_id}"]')
    expect(row).to_contain_text("billing-agent")
    expect(row).to_contain_text("$12.50")
    expect(row).to_contain_text("pending")
    row.get_by_role("link", name="stripe.refund").click()
    page.wait_for_url(f"{live_server.url}/approvals/{approval_id}/")
    expect(page.locator("pre.args-preview")).to_contain_text('"charge": "ch_1"')
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("Approved. The agent's identical retry of stripe.refund runs once")).to_be_visible()
    expect(page.locator(".status-line .badge")).to_have_text("approved")
    expect(page.locator("pre.args-preview")).to_have_count(0)  # deleted with the decision

    assert receiver.calls == []
    retry = run_tool(key_a, live_server, spend_usd=12.5)
    assert (retry.allowed, retry.decision, retry.policy_reason) == (True, "executed", "within_budget")
    assert len(receiver.calls) == 1
    again = run_tool(key_a, live_server, spend_usd=12.5)
    assert again.decision == "dedup" and len(receiver.calls) == 1
    other = run_tool(key_a, live_server, args={**ARGS, "amount": 7501}, spend_usd=12.5)
    assert other.policy_reason == "approval_required" and other.result["approval_id"] != approval_id
    assert len(receiver.calls) == 1
    approval = Approval.objects.get(public_id=approval_id)
    assert approval.status == Approval.Status.CONSUMED and approval.decided_by == admin_a.email
    page.reload()
    expect(page.locator(".status-line .badge")).to_have_text("used")
    page.get_by_role("link", name=f"decision #{approval.consumed_by_id}").click()  # opens in the drawer
    expect(page.locator("#drawer")).to_be_visible()
    expect(page.locator("#drawer")).to_contain_text("stripe.refund")


def test_a_deny_needs_a_reason_and_the_agent_is_answered_it(page, live_server, owner_a, key_a):
    gate(key_a, live_server)
    approval_id = run_tool(key_a, live_server).result["approval_id"]
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/approvals/{approval_id}/")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("#deny-reason-err")).to_contain_text("Say why it is denied")
    assert Approval.objects.get(public_id=approval_id).status == Approval.Status.PENDING
    page.get_by_label("Reason for denying").fill("Refunds over $50 go through finance")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator(".status-line .badge")).to_have_text("denied")
    expect(page.locator(".approval-reason")).to_have_text("Refunds over $50 go through finance")
    expect(page.get_by_role("main")).to_contain_text(owner_a.email)
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)

    again = run_tool(key_a, live_server)
    assert (again.allowed, again.policy_reason) == (False, "approval_denied")
    assert again.result["reason"] == "Refunds over $50 go through finance"
    # The decided tab lists it, with who decided.
    page.goto(f"{live_server.url}/approvals/?tab=decided")
    expect(page.locator(f'#approvals tr[data-id="{approval_id}"]')).to_contain_text(f"by {owner_a.email}")
