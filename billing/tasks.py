import logging

from celery import shared_task

from billing import usage

logger = logging.getLogger(__name__)


@shared_task(name="billing.mirror_usage", ignore_result=True)
def mirror_usage() -> None:
    """Beat: copy the live monthly usage counters from Redis into UsageMonth rows (their durable mirror)."""
    written = usage.mirror_all()
    logger.debug("mirrored %s usage months", written)
