import logging

from celery import shared_task

from billing import notifications, usage

logger = logging.getLogger(__name__)


@shared_task(name="billing.mirror_usage", ignore_result=True)
def mirror_usage() -> None:
    """Beat: copy the live monthly usage counters from Redis into UsageMonth rows (their durable mirror)."""
    written = usage.mirror_all()
    logger.debug("mirrored %s usage months", written)


@shared_task(name="billing.send_notification_digests", ignore_result=True)
def send_notification_digests() -> None:
    """Beat: email each account's owners and admins one digest of its new tool errors and run failures."""
    sent = notifications.send_digests()
    if sent:
        logger.info("sent %s notification digests", sent)


@shared_task(name="billing.apply_scheduled_downgrades", ignore_result=True)
def apply_scheduled_downgrades() -> None:
    """Beat: accounts whose Stripe subscription ended go back to Free when the period they paid for is over."""
    from billing import stripe_webhooks

    moved = stripe_webhooks.apply_scheduled_downgrades()
    if moved:
        logger.info("moved %s accounts back to Free (subscription ended)", moved)
