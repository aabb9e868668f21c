# Sourced by the other deploy/ scripts: the checkout's root, its virtualenv, and the environment file.
#
# ONCEONLY_ENV_FILE (optional): a file of KEY=value lines (the format of deploy/onceonly.env.example, which is
# also what systemd's EnvironmentFile= and Docker Compose's env_file: read), exported before the process starts.
# Variables already set in the environment win over the file's. Blank lines, comments, Windows line endings, a
# byte-order mark and an `export ` prefix are accepted; values are taken literally (no $ expansion, no escapes).
set -euo pipefail
ONCEONLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ONCEONLY_ROOT"
if [ -n "${ONCEONLY_ENV_FILE:-}" ]; then
  if [ ! -r "$ONCEONLY_ENV_FILE" ]; then
    echo "deploy: ONCEONLY_ENV_FILE=$ONCEONLY_ENV_FILE is not a readable file" >&2
    exit 2
  fi
  number=0
  while IFS= read -r line || [ -n "$line" ]; do
    number=$((number + 1))
    line="${line%$'\r'}"                                    # a file saved with Windows line endings
    [ "$number" = 1 ] && line="${line#$'\xef\xbb\xbf'}"      # …or with a byte-order mark
    [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] && continue       # blank lines and comments
    line="${line#export }"                                  # a file written for a shell's `. file`
    name="${line%%=*}"
    value="${line#*=}"
    if ! [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ "$name" = "$line" ]; then
      # Name the line, never print it: it may hold a secret.
      echo "deploy: $ONCEONLY_ENV_FILE, line $number: not a KEY=value line (no spaces around '=')" >&2
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
