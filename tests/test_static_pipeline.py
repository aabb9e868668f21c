"""The static files production serves: vendored files as the registry shipped them, and `collectstatic` with the
manifest storage (what `DEBUG=0` uses) succeeding on the repository's own files.

A vendored Chart.js that named a source map nobody shipped made `collectstatic` abort with `MissingFileError`, and
without its manifest every dashboard page answered 500 with `DEBUG=0` while the suite (static files from the
finders) stayed green. These checks run in the suite; the whole deployment runs in `tests/deploy/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.servers import ROOT

VENDOR = ROOT / "static" / "vendor"
SOURCE_MAP = re.compile(rb"[#@]\s*sourceMappingURL=(\S+?)\s*(?:\*/)?\s*$", re.MULTILINE)


def versions_table() -> dict[str, str]:
    """`file → SHA-256` from the table in static/vendor/VERSIONS.md."""
    table = {}
    for line in (VENDOR / "VERSIONS.md").read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"[0-9a-f]{64}", cells[-1]):
            table[cells[0]] = cells[-1]
    return table


def test_every_vendored_file_is_listed_with_its_checksum():
    table = versions_table()
    on_disk = {path.name for path in VENDOR.iterdir() if path.name != "VERSIONS.md"}
    assert set(table) == on_disk, "static/vendor/VERSIONS.md must list exactly the files in static/vendor/"
    for name, digest in table.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from VERSIONS.md"


def test_every_source_map_reference_names_a_shipped_file():
    for path in (ROOT / "static").rglob("*"):
        if path.suffix not in {".js", ".css"}:
            continue
        for target in SOURCE_MAP.findall(path.read_bytes()):
            if target.startswith(b"data:"):
                continue
            assert (path.parent / target.decode()).is_file(), f"{path.relative_to(ROOT)} names a missing {target!r}"


@pytest.mark.backend_free
def test_collectstatic_with_the_production_storage_writes_a_manifest(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "ONCEONLY_")) and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    # What docs/operations.md runs, minus the services collectstatic never touches (nothing connects to them).
    env.update(
        DEBUG="0",
        SECRET_KEY="collectstatic-test-" + "x" * 40,
        ONCEONLY_VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "staticfiles" / "staticfiles.json").read_text())["paths"]
    for name in ("css/app.css", "js/app.js", "vendor/htmx.min.js", "vendor/chart.umd.min.js", "favicon.svg"):
        hashed = manifest[name]
        assert hashed != name and (tmp_path / "staticfiles" / hashed).is_file()
        assert (tmp_path / "staticfiles" / f"{hashed}.gz").is_file(), "whitenoise compresses what it serves"
