"""`make run`: the whole stack in one terminal, on the embedded defaults unless DATABASE_URL/REDIS_URL are set.

Starts the embedded Redis (unless REDIS_URL is set), migrates, creates the demo account on first start (printing
its login and API key), then runs the web server, a Celery worker and Celery beat. Ctrl-C (or SIGTERM) stops
everything it started: each child runs in its own process group, gets SIGTERM, and SIGKILL after a grace
period; Redis is shut down last. No ``redis-server``, worker or beat process is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onceonly_site.embedded_redis import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 10.0


def _log(message: str) -> None:
    print(f"[make run] {message}", flush=True)


class Stack:
    def __init__(self) -> None:
        self.env = os.environ.copy()
        self.env.setdefault("DEBUG", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.var_dir = Path(self.env.get("ONCEONLY_VAR_DIR") or BASE_DIR / "var").resolve()
        self.env["ONCEONLY_VAR_DIR"] = str(self.var_dir)
        self.host = self.env.get("HOST", "127.0.0.1")
        self.port = int(self.env.get("PORT", "8000"))
        self.redis: EmbeddedRedis | None = None
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = False

    def _manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True)

    def _spawn(self, name: str, argv: list[str]) -> None:
        # start_new_session: the terminal's Ctrl-C reaches only this supervisor, which then stops the children
        # in order (web first, Redis last) instead of everything dying at once mid-request.
        process = subprocess.Popen(argv, cwd=BASE_DIR, env=self.env, start_new_session=True)
        self.children.append((name, process))
        _log(f"started {name} (pid {process.pid})")

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def start(self) -> None:
        if not self.env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(self.var_dir)
            if self.redis.start():
                _log(f"embedded Redis on {self.redis.url}")
            else:
                _log(f"an embedded Redis already answers on {self.redis.url}; using it (it is not ours to stop)")
            # Children connect to it and must not try to start (and own) one of their own.
            self.env["REDIS_URL"] = self.redis.url
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage("bootstrap_demo", "--base-url", f"http://{self.host}:{self.port}")
        python = sys.executable
        self._spawn("web", [python, "manage.py", "runserver", f"{self.host}:{self.port}", "--noreload"])
        self._spawn(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"dev@{os.uname().nodename}",
            ],
        )
        self._spawn(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.var_dir / "celerybeat-schedule"),
            ],
        )
        _log(f"serving http://{self.host}:{self.port}/ — press Ctrl-C to stop everything")

    def wait(self) -> int:
        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    _log(f"{name} exited with {process.returncode}; stopping the stack")
                    return 1
            time.sleep(0.3)
        return 0

    def stop(self) -> None:
        for _, process in self.children:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        for name, process in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"{name} did not stop within {GRACE_SECONDS:.0f} s; killing it")
            # Kill the whole group either way: a Celery worker's pool children must not outlive it.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        if self.redis is not None:
            self.redis.stop()
        _log("stopped")


def main() -> int:
    stack = Stack()
    signal.signal(signal.SIGINT, stack._on_signal)
    signal.signal(signal.SIGTERM, stack._on_signal)
    code = 1
    try:
        stack.start()
        code = stack.wait()
    except subprocess.CalledProcessError as exc:
        _log(f"set-up step failed: {' '.join(map(str, exc.cmd))} (exit {exc.returncode})")
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
