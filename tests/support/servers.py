"""Real server processes for tests: gunicorn on the test database and the tests' Redis database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """A DATABASE_URL for the database pytest-django created (so another process sees the test's rows)."""
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(cfg['NAME']).resolve()}"
    auth = quote(cfg["USER"] or "")
    if cfg.get("PASSWORD"):
        auth += ":" + quote(cfg["PASSWORD"])
    host = cfg["HOST"] or "localhost"
    port = f":{cfg['PORT']}" if cfg.get("PORT") else ""
    return f"postgresql://{auth}@{host}{port}/{cfg['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        DJANGO_SETTINGS_MODULE="onceonly_site.settings",
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        ONCEONLY_STATIC_FROM_FINDERS="1",
        DEBUG="0",
        PGOPTIONS="-c synchronous_commit=off",  # as the tests' own connections (onceonly_site/settings_test.py)
    )
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class GunicornServer:
    """``gunicorn`` with several worker processes and threads (gthread, as deploy/web.sh runs it): what production
    runs, so caches are really per process."""

    def __init__(self, workers: int = 2, threads: int = 4, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "onceonly_site.wsgi:application",
                "--workers",
                str(workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(threads),
                "--keep-alive",
                "75",  # as deploy/web.sh: clients' idle connections are not closed under them
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "--graceful-timeout",
                "3",
            ],
            cwd=ROOT,
            env=server_env(**{"WEB_THREADS": str(threads), **env}),
        )
        wait_http(self.url + "/login/", process=self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CeleryWorker:
    """A real ``celery worker`` process on the test database and the tests' Redis (its broker).

    ``--pool solo`` runs tasks in the worker process itself, so ``kill()`` (SIGKILL to its process group) kills
    a run mid-handler exactly as a crashed host would. ``beat=True`` embeds beat (the run sweeper), with the short
    claim and sweep intervals the crash tests need.
    """

    def __init__(self, name: str, *, beat: bool = False, log_dir: Path, **env: str) -> None:
        self.name = name
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{name}-{os.getpid()}.log"
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "onceonly_site",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-n",
            f"{name}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if beat:
            command += ["--beat", "--schedule", str(log_dir / f"beat-{name}-{os.getpid()}")]
        defaults = {
            "ONCEONLY_RUN_CLAIM_SECONDS": "2",
            "ONCEONLY_RUN_SWEEP_SECONDS": "0.5",
            "ONCEONLY_JOB_HANDLER_MODULES": "tests.support.job_handlers",
        }
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in stop/kill)
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(**{**defaults, **env}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9 of the worker (and anything it started)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self._wait_group_gone(5)
        self._log.close()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then make sure nothing of the group (embedded beat included) is left holding a
        database connection when the test database is dropped."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if not self._wait_group_gone(10):
            self.kill()
            return
        self._log.close()

    def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False
