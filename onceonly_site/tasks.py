from celery import shared_task

from onceonly_site.health import record_worker_heartbeat


@shared_task(name="onceonly.worker_heartbeat", ignore_result=True)
def worker_heartbeat() -> None:
    """Scheduled by beat: proves to the dashboard and /healthz that some worker consumes the queue."""
    record_worker_heartbeat()
