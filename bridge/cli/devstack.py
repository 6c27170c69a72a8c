"""Where `bridge dev`'s stack is, so the other `bridge` commands find it from another terminal.

`bridge dev` starts Redis on a free port. While it runs it records that Redis (and the web's
port) in `.cartbridge/dev.env` in the directory it was started from; a `bridge` command run with
REDIS_URL unset, from that directory or one below it, uses what the file records, provided the
`bridge dev` that wrote it is still running. The file is removed when `bridge dev` stops, and
its directory ignores itself in git.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DIR = ".cartbridge"
FILE = "dev.env"
PID = "BRIDGE_DEV_PID"
# What the file records: nothing secret, since it sits in a working copy.
RECORDED = ("REDIS_URL", "PORT")
DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# How this process came by its REDIS_URL, for messages that name the Redis they used.
_origin = "REDIS_URL"


def path_in(directory: Path) -> Path:
    return directory / DIR / FILE


def write(directory: Path, values: dict[str, str], pid: int) -> Path:
    """Record the stack `bridge dev` (process `pid`) runs; returns the file's path."""
    folder = directory / DIR
    folder.mkdir(exist_ok=True)
    # The folder ignores itself: nothing in it belongs in a commit, in any repository.
    (folder / ".gitignore").write_text("*\n")
    lines = [
        "# Written by `bridge dev` while it runs; bridge commands started with REDIS_URL unset",
        "# use these values. Removed when `bridge dev` stops.",
        *(f"{k}={values[k]}" for k in RECORDED if values.get(k)),
        f"{PID}={pid}",
    ]
    path = path_in(directory)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # readers never see half a file
    return path


def remove(directory: Path, pid: int) -> None:
    """Remove the file if process `pid` wrote it (a newer `bridge dev` may have replaced it)."""
    path = path_in(directory)
    values = read(path)
    if values is not None and values.get(PID) == str(pid):
        path.unlink(missing_ok=True)
        try:
            (directory / DIR / ".gitignore").unlink(missing_ok=True)
            (directory / DIR).rmdir()
        except OSError:
            pass  # something else lives there too: leave the folder


def read(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def find(start: Path) -> Path | None:
    """The nearest `.cartbridge/dev.env` in `start` or a directory above it."""
    for directory in (start, *start.parents):
        candidate = path_in(directory)
        if candidate.is_file():
            return candidate
    return None


def _running(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def use(environ: MutableMapping[str, str] = os.environ, cwd: Path | None = None) -> None:
    """Apply a running `bridge dev`'s file to `environ` when REDIS_URL is unset there; note in
    any case where this process's REDIS_URL came from (see `describe_redis`)."""
    global _origin
    if environ.get("REDIS_URL"):
        _origin = "REDIS_URL"
        return
    path = find(cwd or Path.cwd())
    values = read(path) if path is not None else None
    if path is None or values is None:
        _origin = "the default: REDIS_URL is unset and no `bridge dev` runs here"
        return
    if not _running(values.get(PID)):
        _origin = f"the default: REDIS_URL is unset and the `bridge dev` {path} names has stopped"
        return
    for key in RECORDED:
        if key != "REDIS_URL" and values.get(key):
            environ.setdefault(key, values[key])
    environ["REDIS_URL"] = values.get("REDIS_URL") or DEFAULT_REDIS_URL
    _origin = f"from {path}, written by `bridge dev` (pid {values.get(PID)})"


def redacted(url: str) -> str:
    """A Redis URL fit to print: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def describe_redis(url: str) -> str:
    """`redis://host:port/db (where that came from)`, for messages about the Redis looked at."""
    return f"{redacted(url)} ({_origin})"
