#!/usr/bin/env bash
# A Celery worker in the foreground (one or more, on any hosts).
#   CELERY_WORKER_ARGS  extra arguments, word-split (e.g. "--concurrency 4 --hostname worker1@%h")
. "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086
exec "$VENV/bin/celery" -A onceonly_site worker --loglevel "${LOG_LEVEL:-INFO}" ${CELERY_WORKER_ARGS:-}
