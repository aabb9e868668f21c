#!/usr/bin/env bash
# Install the server into this checkout's virtualenv (.venv, or $ONCEONLY_VENV): Python ≥ 3.11, production
# dependencies only. Run it after every checkout of a new release, then deploy/migrate.sh.
ONCEONLY_SKIP_VENV_CHECK=1
. "$(dirname "$0")/_common.sh"
python="${PYTHON:-python3}"
if [ ! -x "$PY" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "deploy/install.sh: $python is older than Python 3.11 (set PYTHON=python3.11 or newer)" >&2
    exit 2
  }
  "$python" -m venv "$VENV"
fi
# Editable: the settings read templates/ and static/ from this checkout.
"$PY" -m pip install --quiet --disable-pip-version-check -e "$ONCEONLY_ROOT"
echo "deploy/install.sh: installed into $VENV"
