"""A private local Redis Cluster for the tests (and bench/cluster.py): N masters on free ports
(and optionally R replicas of each), each `redis-server --cluster-enabled yes` with no
persistence, joined by `redis-cli --cluster create`, stopped and its files removed after.

With replicas, a master can be failed over: `failover` (a manual CLUSTER FAILOVER sent to its
replica, which first catches up with the master, so nothing the master acknowledged is lost) or
`kill` (SIGKILL of the master's process; its replica is promoted once the other masters agree it
failed, about twice `cluster-node-timeout` later, and what the master had not yet replicated is
lost)."""

from __future__ import annotations

import os
import shutil
import signal
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
    """`with LocalCluster(3) as cluster:` — `cluster.url` names its first node.

    `LocalCluster(3, replicas=1)`: six nodes, the first three masters, each of the others one's
    replica, with a short `cluster-node-timeout` (1 s unless given) so that a killed master's
    replica takes over within about two seconds. `ports` lists every node, `masters_ports()`
    the current masters."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 0) -> None:
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms or (1000 if replicas else 2000)
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            port = cluster_port()
            # Neither a port already chosen nor one's cluster bus port (+10000), either way.
            taken = {q + d for q in self.ports for d in (-10_000, 0, 10_000)}
            if port not in taken:
                self.ports.append(port)
        self.dir = Path(tempfile.mkdtemp(prefix="cb-cluster-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc_of: dict[int, subprocess.Popen[bytes]] = {}
        self.killed: set[int] = set()

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
                *("--cluster-node-timeout", str(self.node_timeout_ms), "--dir", str(workdir)),
                *("--save", "", "--appendonly", "no"),
                # A replica's first sync starts at once (not after the default 5 s).
                *("--repl-diskless-sync-delay", "0"),
            ]
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(proc)
            self.proc_of[port] = proc
        for port in self.ports:
            self._wait(lambda p=port: bool(self.node(p).ping()), "redis-server did not start")
        create = ["redis-cli", "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        for port in self.ports:
            self._wait(lambda p=port: self._ok(p), "the cluster did not come up")
        for port in self.ports:
            self._wait(lambda p=port: self._replicating(p), "a replica did not sync")

    def _ok(self, port: int) -> bool:
        info = self.node(port).execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.ports)}" in text

    def _replicating(self, port: int) -> bool:
        """A master, or a replica whose link to its master is up."""
        info = self.node(port).info("replication")
        return info["role"] == "master" or info.get("master_link_status") == "up"

    def alive(self) -> list[int]:
        return [port for port in self.ports if port not in self.killed]

    def masters_ports(self) -> list[int]:
        """The ports of the current masters (as a live node sees them)."""
        return sorted({self.owner(slot) for slot in self._slot_starts()})

    def _slot_starts(self) -> list[int]:
        slots = self.node(self.alive()[0]).execute_command("CLUSTER", "SLOTS")
        return [int(start) for start, *_ in slots]

    def replica_of(self, master: int) -> int:
        """The port of a live replica of the master on port `master`."""
        for port in self.alive():
            info = self.node(port).info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master:
                return port
        raise LookupError(master)

    def failover(self, master: int) -> int:
        """A manual failover of the master on port `master`: CLUSTER FAILOVER sent to its
        replica, which waits until it has every write the master acknowledged (the master
        pauses its clients meanwhile), then takes over its slots. Returns the new master's port
        once every live node's slot map names it."""
        replica = self.replica_of(master)
        slot = self._a_slot_of(master)
        self.node(replica).execute_command("CLUSTER", "FAILOVER")
        self._wait(lambda: self._everyone_says(slot, replica), "the failover did not end")
        return replica

    def kill(self, master: int) -> int:
        """SIGKILL the master on port `master`; returns its replica's port once the replica
        was promoted (by the cluster, automatically) and every live node's slot map names it."""
        replica = self.replica_of(master)
        slot = self._a_slot_of(master)
        os.kill(self.proc_of[master].pid, signal.SIGKILL)
        self.proc_of[master].wait(10)
        self.killed.add(master)
        self._wait(
            lambda: self._everyone_says(slot, replica) and self._ok_without_the_dead(replica),
            "the replica was not promoted",
            timeout_s=30,
        )
        return replica

    def _a_slot_of(self, master: int) -> int:
        return next(s for s in self._slot_starts() if self.owner(s) == master)

    def _everyone_says(self, slot: int, port: int) -> bool:
        return all(self._owner_seen_by(node, slot) == port for node in self.alive())

    def _owner_seen_by(self, node: int, slot: int) -> int:
        for start, end, master, *_ in self.node(node).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(slot)

    def _ok_without_the_dead(self, port: int) -> bool:
        info = self.node(port).execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

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
        for port in self.masters_ports() if self.replicas else self.ports:
            self.node(port).flushall()
        for port in self.alive():
            self._wait(lambda p=port: self._synced(p), "a replica did not catch up")

    def _synced(self, port: int) -> bool:
        """A master, or a replica with as much of its master's stream as the master wrote."""
        info = self.node(port).info("replication")
        if info["role"] == "master":
            return True
        master = self.node(int(info["master_port"])).info("replication")
        offset = int(master["master_repl_offset"])
        return info.get("master_link_status") == "up" and int(info["slave_repl_offset"]) >= offset

    def owner(self, slot: int) -> int:
        """The port of the master owning `slot` (as a live node sees it)."""
        return self._owner_seen_by(self.alive()[0], slot)

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
