"""Locks & leases in headless Chromium: look up a key, see its result, reset a lease as admin; viewers cannot."""

import pytest
from playwright.sync_api import expect

from idempotency.models import Lease
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


def api(caller, path, **body):
    return caller.client().post(f"/v1/{path}", body, content_type="application/json").json()


def test_admin_looks_up_a_key_sees_its_result_and_resets_the_lease(page, live_server, admin_a, key_a):
    held = api(key_a, "ai/lease", key="invoice:101:charge", ttl=300)
    api(key_a, "ai/complete", key="invoice:101:charge", lease_id=held["lease_id"], result={"charged": True})
    login(page, live_server, admin_a)
    page.get_by_role("link", name="Locks & leases").click()
    page.get_by_label("Key", exact=True).fill("invoice:101:charge")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_text('"charged": true')).to_be_visible()
    expect(page.locator(".badge-completed").first).to_be_visible()

    page.get_by_label("Reason (recorded in the audit log)").fill("customer asked for a re-run")
    page.get_by_role("button", name="Reset lease").click()
    page.get_by_text("Lease reset").wait_for()
    assert Lease.objects.get().status == "cancelled"
    assert api(key_a, "ai/lease", key="invoice:101:charge", ttl=60)["status"] == "acquired"


def test_ttl_left_counts_down(page, live_server, viewer_a, key_a):
    api(key_a, "check-lock", key="hook:evt_1", ttl=600)
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/locks/?key=hook:evt_1")
    countdown = page.locator("[data-countdown]").first
    first = int(countdown.inner_text())
    page.wait_for_timeout(2200)
    assert int(countdown.inner_text()) <= first - 2


def test_viewer_cannot_reset(page, live_server, viewer_a, key_a):
    api(key_a, "ai/lease", key="job:held", ttl=300)
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/locks/?key=job:held")
    expect(page.locator(".badge-in_progress").first).to_be_visible()
    assert page.get_by_role("button", name="Reset lease").count() == 0
    assert page.get_by_role("button", name="Release lock").count() == 0
