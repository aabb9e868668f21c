#!/usr/bin/env bash
# A web host: collect this host's static files, then run gunicorn in the foreground (behind a TLS proxy).
#   ONCEONLY_BIND     address to listen on (default 127.0.0.1:8000; 0.0.0.0:8000 in a container)
#   WEB_CONCURRENCY   gunicorn worker processes (default 3; see docs/operations.md, Scaling)
#   WEB_THREADS       request threads per process (default 16, gthread workers: a call waiting on a slow tool holds
#                     one thread, never a whole process; the settings read it too, for the dispatch slots)
# --keep-alive 75: an idle connection stays open longer than nginx keeps its idle upstream connections (60 s,
# deploy/nginx/onceonly.conf), so nginx never writes a request into a connection gunicorn is closing (a 502).
#   GUNICORN_ARGS     extra gunicorn arguments, word-split (e.g. "--access-logfile -")
. "$(dirname "$0")/_common.sh"
"$PY" manage.py collectstatic --noinput -v 0
# shellcheck disable=SC2086
exec "$VENV/bin/gunicorn" onceonly_site.wsgi:application \
  --bind "${ONCEONLY_BIND:-127.0.0.1:8000}" \
  --workers "${WEB_CONCURRENCY:-3}" \
  --worker-class gthread --threads "${WEB_THREADS:-16}" \
  --keep-alive 75 \
  --timeout 30 --graceful-timeout 30 \
  --no-control-socket \
  ${GUNICORN_ARGS:-}
