import logging

from celery import shared_task

from idempotency import services

logger = logging.getLogger(__name__)


@shared_task(name="idempotency.retention_sweep", ignore_result=True)
def retention_sweep() -> None:
    """Beat: delete lease and lock records past the retention period (ONCEONLY_RETENTION_DAYS)."""
    deleted = services.retention_sweep()
    if deleted:
        logger.info("retention sweep deleted %s rows", deleted)
