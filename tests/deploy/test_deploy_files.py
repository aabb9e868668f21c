"""The packaging around deploy/*.sh: systemd units, the Dockerfile, the Compose file, the environment example.

The scripts themselves run in tests/deploy/test_production.py. These files cannot all be exercised on the test
machines (no container engine, no systemd as PID 1), so they are checked for what can break silently: a unit or a
service that names a script that is not there, a COPY of a path that moved, a variable the docs do not explain.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SCRIPTS = ["install.sh", "migrate.sh", "web.sh", "worker.sh", "beat.sh", "manage.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_bash_that_parses(script):
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111, f"{path} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_units_start_the_scripts():
    assert {unit.stem for unit in UNITS} == {"onceonly-migrate", "onceonly-web", "onceonly-worker", "onceonly-beat"}
    for unit in UNITS:
        text = unit.read_text()
        starts = re.findall(r"^ExecStart=/opt/onceonly/(deploy/\S+)$", text, re.M)
        assert len(starts) == 1, f"{unit.name}: one ExecStart= of a deploy/ script"
        assert (ROOT / starts[0]).is_file()
        assert "EnvironmentFile=/etc/onceonly/onceonly.env" in text and "User=onceonly" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units(tmp_path):
    for unit in UNITS:  # the units with this checkout's paths, so that the executables they name exist
        text = unit.read_text().replace("/opt/onceonly", str(ROOT))
        text = text.replace("/etc/onceonly/onceonly.env", str(DEPLOY / "onceonly.env.example"))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_copies_what_exists_and_runs_the_scripts():
    text = (ROOT / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (ROOT / source.rstrip("/")).exists(), f"Dockerfile copies a missing {source}"
    assert "RUN deploy/install.sh" in text
    assert 'CMD ["deploy/web.sh"]' in text
    for ignored in (ROOT / ".dockerignore").read_text().split():
        assert ignored in {".git", ".venv", "var", "test-artifacts", "bench/results", "**/__pycache__", ".env"}


def test_compose_runs_each_process_from_its_script():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    for name, script in [("migrate", "migrate"), ("web", "web"), ("worker", "worker"), ("beat", "beat")]:
        assert services[name]["command"] == [f"deploy/{script}.sh"]
        assert (DEPLOY / f"{script}.sh").is_file()
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert "noeviction" in services["redis"]["command"] and "appendonly" in " ".join(services["redis"]["command"])


def test_every_variable_of_the_example_environment_is_documented():
    first_cells = re.findall(r"^\| ([^|]+) \|", (ROOT / "docs" / "operations.md").read_text(), re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    example = (DEPLOY / "onceonly.env.example").read_text()
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M)) - {"KEY"}  # "# KEY=value lines, …"
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "ONCEONLY_HTTPS"} <= names
    assert names - documented == set(), "variables in deploy/onceonly.env.example missing from docs/operations.md"


def test_env_file_loading_rejects_lines_that_are_not_assignments(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("SECRET_KEY=x\nrm -rf /\n")
    done = subprocess.run(
        ["bash", "-c", f". {DEPLOY / '_common.sh'}"],
        env={"PATH": "/usr/bin:/bin", "ONCEONLY_ENV_FILE": str(bad), "ONCEONLY_SKIP_VENV_CHECK": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "not a KEY=value line" in done.stderr


def test_env_file_values_are_not_interpreted_and_the_environment_wins(tmp_path):
    good = tmp_path / "good.env"
    good.write_text('# comment\n\nA=$(echo no)\nB="quoted value"\nC=from-file\n')
    done = subprocess.run(
        ["bash", "-c", f'. {DEPLOY / "_common.sh"}; printf "%s|%s|%s" "$A" "$B" "$C"'],
        env={"PATH": "/usr/bin:/bin", "ONCEONLY_ENV_FILE": str(good), "ONCEONLY_SKIP_VENV_CHECK": "1",
             "C": "from-environment"},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "$(echo no)|quoted value|from-environment"
