"""The Locks & leases page: lookup in both keyspaces, lists, operator release/reset with a reason, roles, tenants."""

import pytest
from django.test import Client

from billing.models import AuditEntry
from idempotency.models import Lease, LockRecord

URL = "/locks/"


def api(caller, path, **body):
    return caller.client().post(f"/v1/{path}", body, content_type="application/json")


@pytest.fixture
def completed(key_a):
    held = api(key_a, "ai/lease", key="job:1", ttl=60).json()
    api(key_a, "ai/complete", key="job:1", lease_id=held["lease_id"], result={"invoice": "in_1", "amount": 5})
    return held


def test_anonymous_is_sent_to_login(db):
    assert Client().get(URL)["Location"].startswith("/login/")


def test_lookup_shows_the_lock_and_the_lease_with_its_result_and_attempts(viewer_a, key_a, completed):
    api(key_a, "check-lock", key="job:1", ttl=120, metadata={"source": "webhook"})
    html = viewer_a.login(Client()).get(URL, {"key": "job:1"}).content.decode()
    assert 'badge-on">locked' in html
    assert "&quot;source&quot;: &quot;webhook&quot;" in html
    assert 'badge-completed">completed' in html
    assert "&quot;invoice&quot;: &quot;in_1&quot;" in html  # the stored result, pretty-printed
    assert "Completed" in html  # the attempts table
    assert "data-countdown" in html


def test_lookup_of_an_unknown_key_says_so(viewer_a):
    html = viewer_a.login(Client()).get(URL, {"key": "nope"}).content.decode()
    assert "No check-lock with this key." in html and "No lease with this key." in html


def test_empty_lists_explain_with_an_sdk_snippet(viewer_a):
    html = viewer_a.login(Client()).get(URL).content.decode()
    assert "No lease is held right now." in html
    assert 'base_url="http://testserver/v1"' in html


def test_viewer_sees_no_operator_actions_and_cannot_post_them(viewer_a, key_a, completed):
    client = viewer_a.login(Client())
    html = client.get(URL, {"key": "job:1"}).content.decode()
    assert "Reset lease" not in html
    assert client.post("/locks/reset/", {"key": "job:1", "reason": "x"}).status_code == 403
    assert Lease.objects.get().status == "completed"
    assert not AuditEntry.objects.filter(action="idempotency.lease.reset").exists()


def test_admin_resets_a_held_lease_with_a_reason(admin_a, key_a):
    held = api(key_a, "ai/lease", key="job:2", ttl=300).json()
    client = admin_a.login(Client())
    response = client.post("/locks/reset/", {"key": "job:2", "reason": "worker stuck on host 3"}, follow=True)
    assert "Lease reset" in response.content.decode()
    lease = Lease.objects.get()
    assert lease.status == "cancelled"
    entry = AuditEntry.objects.get(action="idempotency.lease.reset")
    assert entry.actor == admin_a.user and entry.data["reason"] == "worker stuck on host 3"
    assert api(key_a, "ai/complete", key="job:2", lease_id=held["lease_id"], result={}).status_code == 409
    again = api(key_a, "ai/lease", key="job:2", ttl=60).json()
    assert again["status"] == "acquired" and again["version"] == 2
    assert lease.attempts.get(version=1).outcome == "reset"


def test_reset_without_a_reason_changes_nothing(owner_a, key_a, completed):
    response = owner_a.login(Client()).post("/locks/reset/", {"key": "job:1", "reason": "  "}, follow=True)
    assert "the reason is kept in the audit log" in response.content.decode()
    assert Lease.objects.get().status == "completed"


def test_owner_releases_a_live_lock(owner_a, key_a, django_capture_on_commit_callbacks):
    api(key_a, "check-lock", key="hook:1", ttl=3600)
    client = owner_a.login(Client())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/locks/release/", {"key": "hook:1", "reason": "replay the webhook"}, follow=True)
    assert "Lock released" in response.content.decode()
    assert api(key_a, "check-lock", key="hook:1", ttl=3600).json()["status"] == "locked"
    assert AuditEntry.objects.filter(action="idempotency.lock.released", object_id="hook:1").exists()


def test_another_account_can_neither_see_nor_reset(owner_b, key_a, completed):
    api(key_a, "check-lock", key="job:1")
    client = owner_b.login(Client())
    html = client.get(URL, {"key": "job:1"}).content.decode()
    assert "No check-lock with this key." in html and "No lease with this key." in html
    assert "job:1" not in client.get(URL + "?tab=finished").content.decode()
    client.post("/locks/reset/", {"key": "job:1", "reason": "mine now"})
    client.post("/locks/release/", {"key": "job:1", "reason": "mine now"})
    assert Lease.objects.get().status == "completed"
    assert LockRecord.objects.get().expires_at > Lease.objects.get().done_at


@pytest.mark.parametrize("count", [1, 30])
def test_query_count_does_not_grow_with_rows(owner_a, key_a, count, django_assert_num_queries):
    for n in range(count):
        api(key_a, "ai/lease", key=f"job:{n}", ttl=300)
        api(key_a, "check-lock", key=f"lock:{n}")
    client = owner_a.login(Client())
    for tab in ("active", "locks"):
        with django_assert_num_queries(5):  # session, user, memberships, count, page
            assert client.get(URL, {"tab": tab}).status_code == 200


def test_lists_are_paginated_and_keep_their_tab(owner_a, key_a):
    for n in range(30):
        api(key_a, "check-lock", key=f"lock:{n:02d}")
    html = owner_a.login(Client()).get(URL, {"tab": "locks"}).content.decode()
    assert "Page 1 of 2" in html and "?tab=locks&amp;page=2" in html
