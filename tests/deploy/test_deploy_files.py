"""The packaging around deploy/*.sh: systemd units, the Dockerfile, the Compose file, the environment example.

The scripts themselves run in tests/deploy/test_production.py. These files cannot all be exercised on the test
machines (no container engine, no systemd as PID 1), so they are checked for what can break silently: a process
script that no unit or service runs, a unit or a service that names a script that is not there, a COPY of a path that
moved or that the build context leaves out, local state or secrets sent to the image build, a variable the docs do not
explain. The checks derive what they expect from deploy/ itself: a new script must be run by a unit and a service, or
say in NOT_A_PROCESS what runs it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SCRIPTS = sorted(path.name for path in DEPLOY.glob("*.sh") if not path.name.startswith("_"))  # _common.sh is sourced
# The scripts that are not a process of the running server, each with what runs it instead of a unit or a service.
NOT_A_PROCESS = {
    "install.sh": "builds the virtualenv after each checkout: by hand, or the Dockerfile's RUN",
    "manage.sh": "one-off management commands, by hand (docker compose run for Compose)",
}
PROCESSES = [script for script in SCRIPTS if script not in NOT_A_PROCESS]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_bash_that_parses(script):
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111, f"{path} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_every_script_is_a_process_or_says_what_runs_it():
    assert set(NOT_A_PROCESS) <= set(SCRIPTS), "NOT_A_PROCESS names a script deploy/ no longer has"
    assert "web.sh" in PROCESSES and "migrate.sh" in PROCESSES


def unit_scripts() -> dict[str, str]:
    """Unit file name → the deploy/ script its one ExecStart= runs."""
    started = {}
    for unit in UNITS:
        starts = re.findall(r"^ExecStart=/opt/onceonly/deploy/(\S+)$", unit.read_text(), re.M)
        assert len(starts) == 1, f"{unit.name}: one ExecStart= of a deploy/ script"
        started[unit.name] = starts[0]
    return started


def test_each_process_has_one_unit_and_each_unit_runs_a_process():
    started = unit_scripts()
    assert sorted(started.values()) == sorted(PROCESSES), (
        f"units per script: {dict(Counter(started.values()))}; processes: {PROCESSES}"
    )
    for unit in UNITS:
        text = unit.read_text()
        assert "EnvironmentFile=/etc/onceonly/onceonly.env" in text and "User=onceonly" in text, unit.name


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


def dockerfile_sources() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return [source for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M) for source in sources.split()]


def test_the_dockerfile_copies_what_exists_and_runs_the_scripts():
    for source in dockerfile_sources():
        assert (ROOT / source.rstrip("/")).exists(), f"Dockerfile copies a missing {source}"
    text = (ROOT / "Dockerfile").read_text()
    assert "RUN deploy/install.sh" in text
    assert 'CMD ["deploy/web.sh"]' in text


def _glob_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match, plus ``**`` for any folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return f"^{out}$"


def left_out_of_the_build_context(path: str) -> bool:
    """Docker's rule: the last line of .dockerignore that matches the path or one of its folders decides (a line
    starting with ``!`` puts it back)."""
    folders = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    verdict = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = re.compile(_glob_regex(os.path.normpath(line.removeprefix("!").strip()).lstrip("/")))
        if any(regex.match(folder) for folder in folders):
            verdict = not negated
    return verdict


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "var/onceonly.sqlite3",
        "var/redis.sock",
        ".git/HEAD",
        ".env",
        "test-artifacts/page.png",
        "billing/__pycache__/models.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out_local_state_and_secrets(path):
    """The virtualenv (the image builds its own), the development database and Redis, git's objects, the operator's
    .env (secrets: Compose passes it at run time) and test output never go to the image build."""
    assert left_out_of_the_build_context(path)


def test_the_build_context_keeps_everything_the_dockerfile_copies():
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    copied = [
        path
        for path in tracked.split("\0")
        for source in dockerfile_sources()
        if path == source or (source.endswith("/") and path.startswith(source))
    ]
    assert len(copied) > 50, copied
    assert [path for path in copied if left_out_of_the_build_context(path)] == []


def test_compose_runs_each_process_from_its_script():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ours = {name: service for name, service in services.items() if service.get("build") == "."}
    commands = {name: service.get("command") for name, service in ours.items()}
    for name, command in commands.items():
        assert isinstance(command, list) and len(command) == 1 and command[0].startswith("deploy/"), (name, command)
    run = Counter(command[0].removeprefix("deploy/") for command in commands.values())
    assert sorted(run.elements()) == sorted(PROCESSES), f"services per script: {dict(run)}; processes: {PROCESSES}"
    # The processes start only after the migrations ran to completion.
    [migrate] = [name for name, command in commands.items() if command == ["deploy/migrate.sh"]]
    for name, service in ours.items():
        if name != migrate:
            assert service["depends_on"][migrate] == {"condition": "service_completed_successfully"}, name
    redis = next(service for service in services.values() if str(service.get("image", "")).startswith("redis"))
    assert "noeviction" in redis["command"] and "appendonly" in " ".join(redis["command"])  # docs/operations.md


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
        env={
            "PATH": "/usr/bin:/bin",
            "ONCEONLY_ENV_FILE": str(good),
            "ONCEONLY_SKIP_VENV_CHECK": "1",
            "C": "from-environment",
        },
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "$(echo no)|quoted value|from-environment"
