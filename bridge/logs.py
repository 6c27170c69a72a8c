"""Structured JSON log lines on stderr, with emails and phone numbers redacted."""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time
from typing import Any

import orjson

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# International (+...) or North-American shaped numbers; bare digit runs are ids, not phones.
_PHONE = re.compile(r"\+\d[\d\s().-]{6,}\d|\(\d{3}\)\s?\d{3}-\d{4}|\b\d{3}[-.\s]\d{3}[-.\s]\d{4}\b")
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
        "reason",
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
    """Emails and phone-like digit runs become placeholders (never logged raw)."""
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    return _PHONE.sub("[phone]", text)


class JsonFormatter(logging.Formatter):
    # The web logs a line per webhook: the seconds part of the timestamp is formatted once a
    # second, not once a line.
    # One tuple, swapped whole: threads never see one second's number with another's text.
    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record),
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


def setup(level: str = "INFO") -> None:
    # What the JSON lines never show is not collected either (the logging HOWTO's
    # "Optimization"): no caller frame walk, thread, process or multiprocessing names. That
    # halves the cost of the web's line per webhook (~30 -> ~15 us).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # RQ logs several lines per job; at our job rate they would drown the bridge's own lines.
    logging.getLogger("rq").setLevel(max(logging.WARNING, root.level))
