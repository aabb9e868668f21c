# Sourced by the other deploy/ scripts: the checkout's root, its virtualenv, and the environment file.
#
# ONCEONLY_ENV_FILE (optional): a file of KEY=value lines (the format of deploy/onceonly.env.example, which is
# also what systemd's EnvironmentFile= and Docker Compose's env_file: read), exported before the process starts.
# Variables already set in the environment win over the file's.
set -euo pipefail
ONCEONLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ONCEONLY_ROOT"
if [ -n "${ONCEONLY_ENV_FILE:-}" ]; then
  if [ ! -r "$ONCEONLY_ENV_FILE" ]; then
    echo "deploy: ONCEONLY_ENV_FILE=$ONCEONLY_ENV_FILE is not a readable file" >&2
    exit 2
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in '' | '#'*) continue ;; esac
    name="${line%%=*}"
    value="${line#*=}"
    if ! [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ "$name" = "$line" ]; then
      echo "deploy: $ONCEONLY_ENV_FILE: not a KEY=value line: $line" >&2
      exit 2
    fi
    # Quotes around a whole value are dropped, as systemd and Compose do; nothing else is interpreted.
    if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    if [ -z "${!name+set}" ]; then export "$name=$value"; fi
  done <"$ONCEONLY_ENV_FILE"
fi
VENV="${ONCEONLY_VENV:-$ONCEONLY_ROOT/.venv}"
PY="$VENV/bin/python"
if [ "${ONCEONLY_SKIP_VENV_CHECK:-0}" != 1 ] && [ ! -x "$PY" ]; then
  echo "deploy: no virtualenv at $VENV — run deploy/install.sh first" >&2
  exit 2
fi
export DJANGO_SETTINGS_MODULE=onceonly_site.settings
