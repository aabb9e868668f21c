"""Run-failure notifications: queued when a lease fails, sent as one digest per account, preferences respected."""

from django.core import mail

from billing.models import Notification
from billing.tasks import send_notification_digests


def fail_a_lease(client, key):
    held = client.post("/v1/ai/lease", {"key": key, "ttl": 60}, content_type="application/json").json()
    return client.post(
        "/v1/ai/fail",
        {"key": key, "lease_id": held["lease_id"], "error_code": "charge_failed"},
        content_type="application/json",
    )


def test_a_failure_storm_becomes_one_digest_to_owners_and_admins(key_a, owner_a, admin_a, viewer_a):
    client = key_a.client()
    for n in range(60):
        fail_a_lease(client, f"job:{n}")
    assert Notification.objects.count() == 60
    send_notification_digests()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == sorted([owner_a.email, admin_a.email])  # viewers are not paged
    assert "60 new problems in Acme" in message.subject
    assert "charge_failed" in message.body and "… and 10 more." in message.body
    send_notification_digests()
    assert len(mail.outbox) == 1  # nothing new, nothing sent
    assert not Notification.objects.filter(sent_at__isnull=True).exists()


def test_a_repeated_fail_notifies_once(key_a, owner_a):
    client = key_a.client()
    held = client.post("/v1/ai/lease", {"key": "k", "ttl": 60}, content_type="application/json").json()
    for _ in range(3):
        client.post(
            "/v1/ai/fail",
            {"key": "k", "lease_id": held["lease_id"], "error_code": "x"},
            content_type="application/json",
        )
    assert Notification.objects.count() == 1


def test_preferences_are_respected(key_a, owner_a):
    client = key_a.client()
    client.post("/v1/me/notifications", {"run_failure_notifications_enabled": False}, content_type="application/json")
    fail_a_lease(client, "quiet")
    client.post(
        "/v1/me/notifications",
        {"run_failure_notifications_enabled": True, "email_notifications_enabled": False},
        content_type="application/json",
    )
    fail_a_lease(client, "quiet-too")
    assert not Notification.objects.exists()
