"""Structured JSON log lines on stderr, with emails and phone numbers redacted."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# International (+...) or North-American shaped numbers; bare digit runs are ids, not phones.
_PHONE = re.compile(r"\+\d[\d\s().-]{6,}\d|\(\d{3}\)\s?\d{3}-\d{4}|\b\d{3}[-.\s]\d{3}[-.\s]\d{4}\b")
# A URL's query string, up to whitespace, a quote or a bracket (the URL itself is kept).
_URL_QUERY = re.compile(r"""([a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#"'<>]*)\?[^\s#"'<>]*""")
_BARE = logging.LogRecord("", 0, "", 0, "", None, None).__dict__
_STD = frozenset(_BARE) | {"message", "asctime"}
# A record's own attributes come first in its __dict__, the `extra` fields after them: the
# formatter starts at the extras (and still skips anything standard set later).
_N_OWN = len(_BARE)
# Fields the bridge itself fills with identifiers, never with personal data: no regex needed.
_SAFE = frozenset(
    {
        "request_id",
        "shop",
        "topic",
        "webhook_id",
        "result",
        "status",
        "batch_id",
        "attempt",
        "calls",
        "webhooks",
        "delivered",
        "dead_lettered",
        "event",
        "message_id",
    }
)


def redact(text: str) -> str:
    """Emails, phone-like digit runs and URL query strings become placeholders (never logged
    raw): a query can carry a key, and an abandoned checkout's `…/recover?key=…` opens the
    checkout with the buyer's details to whoever holds it."""
    if "://" in text:
        text = _URL_QUERY.sub(r"\1?[redacted]", text)
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _PHONE.sub("[phone]", text)


class JsonFormatter(logging.Formatter):
    # The web logs a line per webhook: the seconds part of the timestamp is formatted once a
    # second, not once a line.
    # One tuple, swapped whole: threads never see one second's number with another's text.
    _second: tuple[int, str] = (-1, "")

    @classmethod
    def stamp(cls, created: float) -> str:
        """ISO-8601 UTC with milliseconds and a Z, for a `time.time()` value."""
        second, text = cls._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            cls._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in itertools.islice(record.__dict__.items(), _N_OWN, None):
            if key in _STD or key.startswith("_"):
                continue
            if key in _SAFE or not isinstance(value, str):
                out[key] = value
            else:
                out[key] = redact(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes INFO and DEBUG lines in batches, at most `max_delay_s` old.

    The web logs a line per webhook. Written one `write` each, from every gunicorn worker into
    one pipe or file, those lines cost ~10 % of the web's throughput (bench/ingest.py: 4 400 ->
    4 860 req/s without them); batched, a `write` carries many lines. WARNING and above are
    written at once, with anything waiting before them, so a problem is never held back; a
    process that exits normally writes what it holds (`logging.shutdown` flushes handlers).
    A SIGKILLed process loses at most `max_delay_s` of INFO lines.
    """

    def __init__(self, stream: Any, max_delay_s: float = 0.25, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.max_delay_s = max_delay_s
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._pid = 0  # the process whose flusher thread runs (gunicorn forks after set-up)
        # No fork while a line is half written: a child must not inherit a stream lock that
        # the parent's flusher held (logging itself re-creates the handler's lock in a child).
        os.register_at_fork(before=self._hold, after_in_parent=self._release)

    def _hold(self) -> None:
        self.acquire()

    def _release(self) -> None:
        self.release()

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, urgent=record.levelno >= logging.WARNING)

    def emit_line(self, line: str) -> None:
        """An INFO line formatted already (`info_line`)."""
        self.acquire()
        try:
            self._add(line, urgent=False)
        finally:
            self.release()

    def _add(self, line: str, *, urgent: bool) -> None:
        if self._pid != os.getpid():
            self._start_flusher()
        line += self.terminator
        self._lines.append(line)
        self._size += len(line)
        if urgent or self._size >= self.max_bytes:
            self._write()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._lines:
            return
        text, self._lines, self._size = "".join(self._lines), [], 0
        # As StreamHandler: a broken stream (stderr gone) must not break the service.
        with contextlib.suppress(Exception):
            self.stream.write(text)
            self.stream.flush()

    def _start_flusher(self) -> None:
        # Lines a parent wrote before forking are the parent's to write, not every child's.
        self._lines, self._size = [], 0
        self._pid = os.getpid()
        threading.Thread(target=self._flush_every, name="log-flush", daemon=True).start()

    def _flush_every(self) -> None:
        pid = self._pid
        while self._pid == pid:
            time.sleep(self.max_delay_s)
            self.flush()


class Sampler:
    """At most one log line per key every `every_s` seconds; the next line admitted says how
    many were left out since the previous one.

    Hand-written because the logging module has no rate limit and a library for twenty lines
    is not worth a dependency. Callers count every event elsewhere (metrics): this only keeps
    a flood of attacker-made requests from becoming a flood of unbuffered WARNING lines.
    Keys must come from a small fixed set (a reason), never from request data.
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None when this line is to be left out, else how many lines were left out before it."""
        now = self.clock()
        with self._lock:
            due = self._next.get(key)
            if due is not None and now < due:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return None
            self._next[key] = now + self.every_s
            return self._left_out.pop(key, 0)


def info_line(logger: logging.Logger, msg: str, fields: dict[str, str]) -> None:
    """`logger.info(msg, extra=fields)` for a line per webhook, with the same output.

    When the line would only reach the JSON handler `setup` installs (no other handler or
    filter on the way), it is built and handed to that handler directly: a LogRecord, the
    handler chain and the generic formatter cost ~10 us of the web's ~50 us per request.
    `fields` must be identifiers (never personal data: nothing is redacted) and `msg` must
    need no redaction. Anywhere else (tests capturing records, another handler), it logs.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_handler(logger)
    if handler is None:
        logger.info(msg, extra=fields)
        return
    line = {"ts": JsonFormatter.stamp(time.time()), "level": "info", "logger": logger.name}
    handler.emit_line(orjson.dumps({**line, "msg": msg, **fields}).decode())


def _sole_handler(logger: logging.Logger) -> BatchedStreamHandler | None:
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        if node is logging.root:
            handlers = node.handlers
            if len(handlers) != 1 or type(handlers[0]) is not BatchedStreamHandler:
                return None
            handler = handlers[0]
            return handler if handler.level <= logging.INFO and not handler.filters else None
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    return None


def setup(level: str = "INFO", *, batched: bool = True) -> None:
    """JSON lines on stderr at `level`. `batched=False` writes each line at once (a dry run's
    web: its "accepted" line then reaches the terminal before the worker prints the call)."""
    # What the JSON lines never show is not collected either (the logging HOWTO's
    # "Optimization"): no caller frame walk, thread or multiprocessing names. That
    # halves the cost of the web's line per webhook (~30 -> ~15 us).
    # (Process ids stay: gunicorn's own log format needs `%(process)d`.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    # max_bytes=0 flushes every line as it comes, on the same fast path.
    handler = BatchedStreamHandler(sys.stderr, max_bytes=64 * 1024 if batched else 0)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # RQ logs several lines per job; at our job rate they would drown the bridge's own lines.
    quiet = max(logging.WARNING, root.level)
    logging.getLogger("rq").setLevel(quiet)
    # httpx logs a line per request at INFO: one per Pipelines POST, noise beside the bridge's
    # own delivery lines. LOG_LEVEL=DEBUG shows them again.
    logging.getLogger("httpx").setLevel(root.level if root.level <= logging.DEBUG else quiet)
