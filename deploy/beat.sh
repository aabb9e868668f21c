#!/usr/bin/env bash
# Celery beat in the foreground: exactly one in the whole deployment (a second one schedules every task twice).
# Its schedule state lives in $ONCEONLY_VAR_DIR (default var/ in the checkout).
. "$(dirname "$0")/_common.sh"
var_dir="${ONCEONLY_VAR_DIR:-$ONCEONLY_ROOT/var}"
mkdir -p "$var_dir"
exec "$VENV/bin/celery" -A onceonly_site beat --loglevel "${LOG_LEVEL:-INFO}" --schedule "$var_dir/celerybeat-schedule"
