"""The retention sweeper deletes records final for longer than the retention period, and nothing else."""

from datetime import timedelta

from django.utils import timezone

from idempotency import services
from idempotency.models import Lease, LeaseAttempt, LockRecord
from idempotency.tasks import retention_sweep


def post(caller, path, **body):
    return caller.client().post(f"/v1/{path}", body, content_type="application/json").json()


def test_sweep_deletes_only_what_retention_allows(key_a, settings):
    old = timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS, hours=1)
    for n in range(5):
        held = post(key_a, "ai/lease", key=f"old:{n}", ttl=60)
        post(key_a, "ai/complete", key=f"old:{n}", lease_id=held["lease_id"], result={"n": n})
        post(key_a, "check-lock", key=f"old-lock:{n}", ttl=60)
    Lease.objects.update(updated_at=old, done_at=old)
    LockRecord.objects.update(expires_at=old)
    post(key_a, "ai/lease", key="fresh", ttl=60)
    post(key_a, "check-lock", key="fresh-lock", ttl=60)

    deleted = services.retention_sweep(batch_size=2)
    assert deleted >= 10
    assert list(Lease.objects.values_list("key", flat=True)) == ["fresh"]
    assert list(LockRecord.objects.values_list("key", flat=True)) == ["fresh-lock"]
    assert LeaseAttempt.objects.count() == 1  # attempts go with their lease


def test_the_beat_task_runs_the_sweep(key_a, settings):
    post(key_a, "check-lock", key="old-lock", ttl=1)
    LockRecord.objects.update(expires_at=timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS + 1))
    retention_sweep()  # the task body, called directly (a real worker is exercised in tests/test_health.py)
    assert not LockRecord.objects.exists()
