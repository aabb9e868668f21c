#!/usr/bin/env bash
# The release step: apply database migrations and collect the static files (with DEBUG off whitenoise serves
# them from STATIC_ROOT with a manifest; pages fail without it). Run once per release before starting the new
# code's processes; deploy/web.sh collects the static files again on each web host.
. "$(dirname "$0")/_common.sh"
"$PY" manage.py migrate --noinput
"$PY" manage.py collectstatic --noinput -v 0
# Prints the production warnings that apply (e.g. ONCEONLY_HTTPS off); fails only on errors.
"$PY" manage.py check --deploy
echo "deploy/migrate.sh: database migrated, static files collected"
