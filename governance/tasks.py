import logging

from celery import shared_task

from governance import ledger

logger = logging.getLogger(__name__)


@shared_task(name="governance.checkpoint_decisions", ignore_result=True)
def checkpoint_decisions() -> None:
    """Beat: extend every account's decision-log hash chain with the decisions written since the last run."""
    written = ledger.checkpoint_all()
    if written:
        logger.info("wrote %s decision-log checkpoints", written)
