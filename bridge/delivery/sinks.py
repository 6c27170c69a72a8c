"""Where delivered calls go: a Pipelines workspace, or under dry run a file and stdout."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Protocol

from bridge.config.settings import Settings
from bridge.delivery import pipelines


class Sink(Protocol):
    def send_batch(self, calls: Sequence[bytes]) -> None: ...

    def send_alias(self, call: bytes) -> None: ...

    def probe(self) -> None: ...


class DryRunSink:
    """Prints every call and appends it to a JSONL file instead of sending it."""

    def __init__(self, path: str, echo: bool = True) -> None:
        self.path = path
        self.echo = echo
        self._lock = threading.Lock()

    def send_batch(self, calls: Sequence[bytes]) -> None:
        with self._lock, open(self.path, "ab") as fh:
            for call in calls:
                fh.write(call + b"\n")
            if self.echo:
                self._print(calls)

    def _print(self, calls: Sequence[bytes]) -> None:
        try:
            sys.stdout.write("".join("[dry-run] " + c.decode() + "\n" for c in calls))
            sys.stdout.flush()
        except OSError:
            # Whoever read stdout is gone (`bridge dev | tee` stopped by Ctrl-C): the file still
            # gets every call, and the exit's own flush must not fail again.
            self.echo = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def send_alias(self, call: bytes) -> None:
        self.send_batch([call])

    def probe(self) -> None:
        return None


def make_sink(settings: Settings) -> Sink:
    if settings.dry_run:
        return DryRunSink(settings.dry_run_file)
    return pipelines.PipelinesClient(
        settings.pipelines_url,
        settings.pipelines_write_key.get_secret_value(),
        timeout_s=settings.http_timeout_s,
        max_connections=max(8, settings.deliver_concurrency),
    )
