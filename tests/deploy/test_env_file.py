"""deploy/_common.sh reads ONCEONLY_ENV_FILE as systemd and Compose would: what editors and shells leave in such a
file (Windows line endings, a byte-order mark, `export`, indented comments) is accepted, values are literal, and a
line it refuses is named by number, never printed (it may hold a secret)."""

from __future__ import annotations

import subprocess
from pathlib import Path

COMMON = Path(__file__).resolve().parents[2] / "deploy" / "_common.sh"


def load(path: Path, script: str = "true") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f". {COMMON}; {script}"],
        env={"PATH": "/usr/bin:/bin", "ONCEONLY_ENV_FILE": str(path), "ONCEONLY_SKIP_VENV_CHECK": "1"},
        capture_output=True,
        text=True,
    )


def test_windows_line_endings_a_bom_export_and_comments_are_read_as_intended(tmp_path):
    env_file = tmp_path / "onceonly.env"
    env_file.write_bytes(b'\xef\xbb\xbfA=one\r\n\r\n   # indented comment\r\nexport B="two words"\r\nC=x=y\r\n')
    done = load(env_file, 'printf "%s|%s|%s" "$A" "$B" "$C"')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "one|two words|x=y"  # no trailing \r in any value


def test_a_refused_line_is_named_by_number_without_its_value(tmp_path):
    env_file = tmp_path / "onceonly.env"
    env_file.write_text("DEBUG=0\nSECRET_KEY = super-secret-value-123\n")
    done = load(env_file)
    assert done.returncode == 2
    assert "line 2: not a KEY=value line" in done.stderr
    assert "super-secret" not in done.stderr + done.stdout
