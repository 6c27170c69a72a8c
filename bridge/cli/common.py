"""What every `bridge` command shares: its click settings, user errors in one line, the Redis
a command looked at, JSON files read with line numbers.

Exit status of every command: 0 all well, 1 the command found a problem, 2 a usage or
configuration error (click's own usage errors exit 2 as well).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from bridge.cli import devstack

CONTEXT: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}
OK, PROBLEM, USAGE = 0, 1, 2


class InputError(click.ClickException):
    """A user error said in one line (a missing file, a line that is not JSON): exit 2, no
    traceback and no usage text."""

    exit_code = USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"cartbridge: {self.format_message()}", err=True)


def run(func: Callable[[argparse.Namespace], int], **params: Any) -> int:
    """Call a command's body, written against argparse-style attributes, with click's values."""
    return int(func(argparse.Namespace(**params)))


def where(redis_url: str) -> str:
    """The Redis a command looked at, for its messages (no password)."""
    return devstack.describe_redis(redis_url)


def no_data(redis_url: str) -> str:
    return f"no cartbridge data in Redis at {where(redis_url)}"


def read_json(path: Path) -> Any:
    """A JSON file's value. Raises InputError naming the file (and the line, for bad JSON)."""
    from bridge.jsonio import parse_body

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    try:
        return parse_body(data)
    except ValueError as exc:
        raise InputError(f"{path}:{json_error_line(data, exc)}: not JSON ({_why(exc)})") from None


def json_error_line(data: bytes, exc: ValueError) -> int:
    """The 1-based line of `data` a JSON or UTF-8 decoding error points at."""
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    start = getattr(exc, "start", None)  # UnicodeDecodeError: a byte offset
    if isinstance(start, int):
        return data.count(b"\n", 0, start) + 1
    return 1


def _why(exc: ValueError) -> str:
    msg = getattr(exc, "msg", None)
    if isinstance(msg, str):
        return msg
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc).split(":")[0]


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, why) of the first non-blank line of a JSONL file that is not JSON."""
    from bridge.jsonio import parse_body

    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                parse_body(raw.strip())
            except ValueError as exc:
                return n, _why(exc)
    return None
