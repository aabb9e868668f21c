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


@shared_task(name="idempotency.execute_run", ignore_result=True)
def execute_run(run_pk: int) -> str:
    """Wake-up for one keyed run: claims it (a no-op when another worker has it or it is finished) and runs it."""
    from idempotency import runs

    return runs.execute(run_pk)


@shared_task(name="idempotency.sweep_runs", ignore_result=True)
def sweep_runs() -> None:
    """Beat: fail runs past their deadline; wake a worker for runs whose worker died or whose wake-up was lost."""
    from idempotency import runs

    swept = runs.sweep()
    if any(swept.values()):
        logger.info("run sweep: %s", swept)
