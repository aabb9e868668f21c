"""`make run` as a new user runs it: serves the site, prints a working login and API key, ends its start with a
summary whose commands work verbatim in another terminal (`make manage`), and Ctrl-C leaves no process behind (web
server, Celery worker and beat, embedded redis-server)."""

import io
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from onceonly import OnceOnly

from onceonly_site import devstack
from tests.support.servers import ROOT, free_port, wait_http

# The box `make run` prints once the web server answers and the worker is ready.
SUMMARY = re.compile(r"^=+\n(OnceOnly Server is up.*?)^=+$", re.M | re.S)
# A `make manage` command as printed on a line of its own (prefixed with the var dir when it is not ./var).
PRINTED_COMMAND = re.compile(r'^\s*((?:ONCEONLY_VAR_DIR=\S+ )?make manage ARGS="[^"]*")\s*$', re.M)


def new_user_env(**extra: str) -> dict[str, str]:
    """A new user's shell: none of the test run's configuration (DATABASE_URL, REDIS_URL, DJANGO_*, ONCEONLY_*…)."""
    dropped = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(("DJANGO_", "ONCEONLY_"))}
    env.update(extra)
    return env


def run_printed(command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Paste a printed command into another terminal: a new shell in the checkout, with a new user's environment
    (not the one `make run` was started with)."""
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=new_user_env(**extra), capture_output=True, text=True, timeout=90
    )


def log_in(base: str, email: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=base, follow_redirects=True) as browser:
        login_page = browser.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
        return browser.post("/login/", data={"username": email, "password": password, "csrfmiddlewaretoken": token})


def processes_mentioning(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name}: {cmdline}")
    return found


@pytest.mark.slow
@pytest.mark.backend_free  # new_user_env(): no DATABASE_URL, REDIS_URL or ONCEONLY_*
@pytest.mark.timeout(240)
def test_make_run_serves_prints_working_commands_and_ctrl_c_leaves_nothing_behind(tmp_path):
    var_dir = tmp_path / "var"
    port = free_port()
    env = new_user_env(ONCEONLY_VAR_DIR=str(var_dir), PORT=str(port))
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        # Its own session, like a terminal: the Ctrl-C below goes to make and everything in its foreground group.
        make = subprocess.Popen(
            ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/login/", timeout=90, process=make)
        # The summary comes once the worker is ready, after its log lines: the credentials do not scroll away.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not SUMMARY.search(log_path.read_text()) and make.poll() is None:
            time.sleep(0.2)
        output = log_path.read_text()
        summary = SUMMARY.search(output)
        assert summary, f"no final summary in the output of make run:\n{output[-3000:]}"
        ready = re.search(r"\S+@\S+ ready\.", output)
        assert ready, "the Celery worker never became ready"
        assert ready.end() < summary.start(), "the summary must come after the worker's ready line"
        summary = summary.group(1)
        assert "Not ready" not in summary, summary

        key = re.search(r"API key\s+:\s+(once_live_\S+)", summary).group(1)
        email, password = re.search(r"login (\S+)\s+password (\S+)", summary).groups()
        # The same credentials, also in a private file the summary names.
        credentials = var_dir / "demo-credentials.txt"
        assert str(credentials) in summary
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        saved = credentials.read_text()
        assert key in saved and email in saved and password in saved
        assert stat.S_IMODE((var_dir / "devstack.env").stat().st_mode) == 0o600
        assert "REDIS_URL" not in devstack.read_env_file(var_dir / "devstack.env"), "the embedded Redis dies with it"

        with OnceOnly(api_key=key, base_url=f"{base}/v1", fail_open=False) as client:
            assert client.me()["plan"] == "agency"

        dashboard = log_in(base, email, password)
        assert dashboard.status_code == 200
        assert str(dashboard.url) == f"{base}/"
        assert "Connect an agent" in dashboard.text

        # The printed commands, pasted into another terminal while the stack runs.
        commands = PRINTED_COMMAND.findall(summary)
        reset = next(c for c in commands if 'ARGS="create_operator ' in c)
        new_key = next(c for c in commands if 'ARGS="create_api_key ' in c)
        assert str(var_dir) in reset and str(var_dir) in new_key, "the stack's var dir is not ./var: name it"
        assert "--password NEW" in reset
        done = run_printed(reset.replace("--password NEW", "--password a-new-demo-password-42"))
        assert done.returncode == 0, done.stderr
        assert log_in(base, email, password).url.path == "/login/", "the old password must stop working"
        assert str(log_in(base, email, "a-new-demo-password-42").url) == f"{base}/"

        made = run_printed(new_key)
        assert made.returncode == 0, made.stderr
        assert re.fullmatch(r"once_live_\S+\n", made.stdout), f"only the key on stdout: {made.stdout!r}"
        with OnceOnly(api_key=made.stdout.strip(), base_url=f"{base}/v1", fail_open=False) as client:
            assert client.me()["plan"] == "agency"

        assert processes_mentioning(str(var_dir)), "the stack's processes should be visible while it runs"
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            make.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    assert_nothing_left(var_dir)
    assert "[make run] stopped" in log_path.read_text()

    # After the stack stopped, the printed command still works (on its own embedded Redis, stopped when it ends).
    made = run_printed(new_key)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("once_live_")
    assert_nothing_left(var_dir)


def assert_nothing_left(var_dir: Path) -> None:
    leftovers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftovers = processes_mentioning(str(var_dir))
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == [], leftovers


SHOW_SETTINGS = (
    "make manage ARGS='shell -v 0 -c \"from django.conf import settings as s; "
    "print(s.DEBUG, repr(s.DATABASE_URL), s.EMBEDDED_REDIS, s.VAR_DIR, s.ALLOWED_HOSTS)\"'"
)


@pytest.mark.slow
@pytest.mark.backend_free
def test_make_manage_runs_manage_py_with_the_environment_make_run_recorded(tmp_path):
    var_dir = tmp_path / "var"
    # No `make run` yet in this var dir: make run's defaults (DEBUG on, SQLite and the embedded Redis under it).
    shown = run_printed(f"ONCEONLY_VAR_DIR={var_dir} {SHOW_SETTINGS}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["True", "''", "True", str(var_dir), "['127.0.0.1',", "'localhost',", "'[::1]']"]

    # What `make run` recorded wins over this terminal's own configuration (a stray DATABASE_URL, DEBUG=0…), so
    # that the command acts on the stack's database; the embedded Redis's URL is not recorded (after a stop it
    # would name a dead socket: make manage then starts one for its own duration).
    stack_db = f"sqlite:///{tmp_path}/stack.sqlite3"
    stack = devstack.Stack(
        new_user_env(ONCEONLY_VAR_DIR=str(var_dir), DATABASE_URL=stack_db, ALLOWED_HOSTS="stack.test")
    )
    stack.record_environment()
    recorded = var_dir / "devstack.env"
    assert stat.S_IMODE(recorded.stat().st_mode) == 0o600
    assert "REDIS_URL" not in devstack.read_env_file(recorded)
    shown = run_printed(
        f"ONCEONLY_VAR_DIR={var_dir} {SHOW_SETTINGS}", DATABASE_URL="postgresql://nobody@127.0.0.1:1/x", DEBUG="0"
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["True", repr(stack_db), "True", str(var_dir), "['stack.test']"]
    assert_nothing_left(var_dir)


def test_make_run_records_every_variable_the_settings_read():
    source = (ROOT / "onceonly_site" / "settings.py").read_text()
    names = set(re.findall(r'env_\w+\(\s*"([A-Z][A-Z0-9_]*)"', source))
    assert {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ONCEONLY_FIELD_ENCRYPTION_KEY"} <= names
    assert {name for name in names if not devstack.is_configuration(name)} <= devstack.NOT_RECORDED


def test_bootstrap_demo_saves_the_credentials_privately_and_later_says_where(plans, tmp_path, settings):
    path = tmp_path / "demo-credentials.txt"
    reset, new_key = devstack.demo_commands(settings.VAR_DIR)
    first = io.StringIO()
    call_command("bootstrap_demo", "--base-url", "http://127.0.0.1:8000", "--credentials-file", str(path), stdout=first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = devstack.read_credentials(path)
    assert saved["password"] in first.getvalue() and saved["api_key"] in first.getvalue()
    assert authenticate(username=devstack.DEMO_EMAIL, password=saved["password"]) is not None
    text = path.read_text()
    assert reset in text and new_key in text

    later = io.StringIO()
    call_command("bootstrap_demo", "--credentials-file", str(path), stdout=later)
    assert path.read_text() == text
    assert str(path) in later.getvalue() and reset in later.getvalue() and new_key in later.getvalue()
    assert saved["password"] not in later.getvalue()

    path.unlink()
    gone = io.StringIO()
    call_command("bootstrap_demo", "--credentials-file", str(path), stdout=gone)
    assert not path.exists()
    assert "deleted" in gone.getvalue() and reset in gone.getvalue()


def test_the_summary_of_a_later_start_names_the_credentials_file_and_the_commands(tmp_path):
    path = tmp_path / "demo-credentials.txt"
    reset, new_key = devstack.demo_commands(tmp_path)
    path.write_text("saved earlier")
    kept = SUMMARY.search(devstack.summary("http://127.0.0.1:8000", tmp_path, credentials=None, waiting=[]))
    assert kept, "the summary is a box"
    assert str(path) in kept.group(1) and reset in PRINTED_COMMAND.findall(kept.group(1))
    assert new_key in PRINTED_COMMAND.findall(kept.group(1))
    assert not re.search(r"login (\S+)\s+password (\S+)", kept.group(1)), "the password is not known any more"

    path.unlink()
    gone = SUMMARY.search(devstack.summary("http://127.0.0.1:8000", tmp_path, credentials=None, waiting=["worker"]))
    assert "deleted" in gone.group(1) and reset in gone.group(1)
    assert "worker" in gone.group(1)
