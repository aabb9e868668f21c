#!/usr/bin/env bash
# manage.py with the deployment's environment, e.g.
#   deploy/manage.sh create_operator --account acme --email ops@acme.example --password '…'
#   deploy/manage.sh create_api_key --account acme --label billing-agent
. "$(dirname "$0")/_common.sh"
exec "$PY" manage.py "$@"
