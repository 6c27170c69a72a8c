"""A private local Redis Cluster for the tests (and bench/cluster.py): N masters on free ports,
each `redis-server --cluster-enabled yes` with no persistence, joined by `redis-cli --cluster
create`, stopped and its files removed after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis as redis_lib

from bridge.store.facade import flush_every_store
from tests.conftest import free_port


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so below 55536)."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port


class LocalCluster:
    """`with LocalCluster(3) as cluster:` — `cluster.url` names its first node."""

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.ports: list[int] = []
        while len(self.ports) < masters:
            port = cluster_port()
            if port not in self.ports:
                self.ports.append(port)
        self.dir = Path(tempfile.mkdtemp(prefix="cb-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis_lib.Redis:
        return redis_lib.Redis(port=port, socket_timeout=5)

    def start(self) -> None:
        for port in self.ports:
            workdir = self.dir / str(port)
            workdir.mkdir()
            args = [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", "2000", "--dir", str(workdir)),
                *("--save", "", "--appendonly", "no"),
            ]
            self.procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in self.ports:
            self._wait(lambda p=port: bool(self.node(p).ping()), "redis-server did not start")
        create = ["redis-cli", "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        for port in self.ports:
            self._wait(lambda p=port: self._ok(p), "the cluster did not come up")

    def _ok(self, port: int) -> bool:
        info = self.node(port).execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{self.masters}" in text

    @staticmethod
    def _wait(ready: object, message: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except redis_lib.RedisError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"{message} ({last!r})")

    def flush(self) -> None:
        for port in self.ports:
            self.node(port).flushall()

    def owner(self, slot: int) -> int:
        """The port of the master owning `slot`."""
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def node_id(self, port: int) -> str:
        return str(self.node(port).execute_command("CLUSTER", "MYID").decode())

    def stop(self) -> None:
        # Counters this process's Stores still hold for the cluster go in while it is up (a
        # writer thread of a Store whose Redis is gone would keep them, and say so once).
        flush_every_store()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
