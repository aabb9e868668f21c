"""A private Redis Cluster for the cluster tests: six redis-server processes (three primaries, one replica each) on
free ports in a temporary folder, joined with ``redis-cli --cluster create``, and stopped (folder removed) at exit.
No persistence; ``--repl-diskless-sync-delay 0`` lets the replicas sync at once, so the cluster is up in seconds."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.faults.stack import PrivateRedis, StackError, redis_server_bin, wait_until

NODES = 6  # three primaries, one replica each


def free_port_pair() -> int:
    """A free port P whose cluster bus port (P + 10000) is free too: an ephemeral port above 55535 has none."""
    for _ in range(200):
        port = random.randrange(20000, 55000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise StackError("no free pair of ports for a cluster node")


def missing_tools() -> list[str]:
    missing = []
    if redis_server_bin() is None:
        missing.append("redis-server")
    if shutil.which("redis-cli") is None:
        missing.append("redis-cli (apt-get install -y redis-tools)")
    return missing


class PrivateCluster:
    """``url`` is the ``redis+cluster://`` REDIS_URL naming every node; ``client()`` a RedisCluster of the test's."""

    def __init__(self, folder: Path) -> None:
        self.binary = redis_server_bin()
        if self.binary is None:
            raise StackError("redis-server not found")
        self.folder = folder / "cluster"
        self.folder.mkdir()
        self.ports: list[int] = []
        while len(self.ports) < NODES:
            port = free_port_pair()
            if port not in self.ports:
                self.ports.append(port)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.processes: dict[int, subprocess.Popen] = {}
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            wait_until(lambda port=port: self.cli(port, "ping") == "PONG", 10, f"node {port} did not answer")
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
        wait_until(self.healthy, 30, "the cluster did not reach cluster_state:ok with every replica in sync")

    def start_node(self, port: int) -> None:
        folder = self.folder / str(port)
        folder.mkdir(exist_ok=True)
        log = open(folder / "server.log", "a")  # noqa: SIM115  (the process owns it)
        self.processes[port] = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(folder / "nodes.conf"),
                "--cluster-node-timeout",
                "1000",
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def cli(self, port: int, *command: str) -> str:
        """redis-cli's answer from the node on ``port`` ("" when it does not answer)."""
        try:
            done = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout.strip()

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every replica's link to its primary is up."""
        for port, process in self.processes.items():
            if process.poll() is not None:
                continue
            if self.cli(port, "cluster", "info").find("cluster_state:ok") < 0:
                return False
            replication = self.cli(port, "info", "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        return True

    def primaries(self) -> list[int]:
        return [port for port in self.ports if "role:master" in self.cli(port, "info", "replication")]

    def live(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def port_of_key(self, key: str) -> int | None:
        """The port of the primary that holds ``key`` now, as a live node sees it (None: none, in a failover)."""
        asked = self.live()[0]
        slot = int(self.cli(asked, "cluster", "keyslot", key))
        for line in self.cli(asked, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].split(":")[1].split("@")[0])
        return None

    def client(self):
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports],
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def kill(self, port: int) -> None:
        process = self.processes[port]
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class ClusterStack:
    """The cluster and the single Redis the Celery broker needs (CELERY_BROKER_URL), in one temporary folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="onceonly-cluster-"))
        self.cluster: PrivateCluster | None = None
        self.broker: PrivateRedis | None = None
        try:
            self.cluster = PrivateCluster(self.folder)
            self.broker = PrivateRedis(self.folder)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
