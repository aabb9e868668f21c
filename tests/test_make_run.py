"""`make run` as a new user runs it: serves the site, prints a working login and API key, and Ctrl-C leaves
no process behind (web server, Celery worker and beat, embedded redis-server)."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from onceonly import OnceOnly

from tests.support.servers import ROOT, free_port, wait_http

pytestmark = pytest.mark.slow


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


def test_make_run_serves_and_ctrl_c_leaves_nothing_behind(tmp_path):
    var_dir = tmp_path / "var"
    port = free_port()
    # A new user's shell: none of the test run's configuration (DATABASE_URL, REDIS_URL, DJANGO_*, ONCEONLY_*…).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"} and not k.startswith(("DJANGO_", "ONCEONLY_"))
    }
    env.update(ONCEONLY_VAR_DIR=str(var_dir), PORT=str(port))
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        # Its own session, like a terminal: the Ctrl-C below goes to make and everything in its foreground group.
        make = subprocess.Popen(
            ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/login/", timeout=90, process=make)
        output = log_path.read_text()
        key = re.search(r"API key\s+:\s+(once_live_\S+)", output).group(1)
        email, password = re.search(r"login (\S+)\s+password (\S+)", output).groups()

        with OnceOnly(api_key=key, base_url=f"{base}/v1", fail_open=False) as client:
            assert client.me()["plan"] == "agency"

        with httpx.Client(base_url=base, follow_redirects=True) as browser:
            login_page = browser.get("/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
            dashboard = browser.post(
                "/login/", data={"username": email, "password": password, "csrfmiddlewaretoken": token}
            )
            assert dashboard.status_code == 200
            assert str(dashboard.url) == f"{base}/"
            assert "Connect an agent" in dashboard.text

        assert processes_mentioning(str(var_dir)), "the stack's processes should be visible while it runs"
        # Wait until the worker and beat are up before stopping, so that their shutdown is exercised too.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not re.search(r"ready\.", log_path.read_text()):
            time.sleep(0.2)
        assert "ready." in log_path.read_text(), "the Celery worker never became ready"
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            make.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    leftovers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leftovers = processes_mentioning(str(var_dir))
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == [], leftovers
    assert "[make run] stopped" in log_path.read_text()
