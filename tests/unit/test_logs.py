"""JSON log lines: the batched handler and the per-webhook fast line."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator

import orjson
import pytest

from bridge.logs import BatchedStreamHandler, JsonFormatter, info_line

FIELDS = {
    "request_id": "r-1",
    "shop": "s.myshopify.com",
    "topic": "carts/update",
    "webhook_id": "w-1",
    "result": "accepted",
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines through a BatchedStreamHandler into a buffer."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    handler = BatchedStreamHandler(out, max_delay_s=0.05)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield out
    root.handlers[:] = saved
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_the_fast_line_is_the_line_logging_writes(stream: io.StringIO) -> None:
    log = logging.getLogger("bridge.web.webhooks")
    info_line(log, "webhook", FIELDS)
    log.info("webhook", extra=FIELDS)
    logging.getLogger().handlers[0].flush()
    fast, slow = lines(stream)
    assert fast.pop("ts") and slow.pop("ts")
    assert (
        fast
        == slow
        == {"level": "info", "logger": "bridge.web.webhooks", "msg": "webhook", **FIELDS}
    )
    assert list(fast) == list(slow)  # same key order


def test_lines_are_written_within_the_delay_and_warnings_at_once(stream: io.StringIO) -> None:
    log = logging.getLogger("bridge.test")
    info_line(log, "first", FIELDS)
    assert stream.getvalue() == ""  # batched
    log.warning("trouble")  # written at once, with what waited before it
    assert [line["msg"] for line in lines(stream)] == ["first", "trouble"]
    log.info("later")
    deadline = time.monotonic() + 5
    while "later" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [line["msg"] for line in lines(stream)] == ["first", "trouble", "later"]


def test_a_child_process_does_not_write_its_parents_waiting_lines(stream: io.StringIO) -> None:
    r, w = os.pipe()
    log = logging.getLogger("bridge.test")
    info_line(log, "parent", FIELDS)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, BatchedStreamHandler)
        handler.setStream(os.fdopen(w, "w"))
        info_line(log, "child", FIELDS)
        handler.flush()
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as child_out:
        assert [orjson.loads(x)["msg"] for x in child_out.read().splitlines()] == ["child"]
    logging.getLogger().handlers[0].flush()
    assert [line["msg"] for line in lines(stream)] == ["parent"]


def test_with_another_handler_the_fast_line_goes_through_logging(
    stream: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        info_line(logging.getLogger("bridge.web.webhooks"), "webhook", FIELDS)
    assert [r.getMessage() for r in caplog.records] == ["webhook"]
    assert caplog.records[0].webhook_id == "w-1"  # type: ignore[attr-defined]


def test_below_info_nothing_is_written(stream: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    info_line(logging.getLogger("bridge.web.webhooks"), "webhook", FIELDS)
    logging.getLogger().handlers[0].flush()
    assert stream.getvalue() == ""


def test_a_handler_above_info_writes_no_fast_line(stream: io.StringIO) -> None:
    handler = logging.getLogger().handlers[0]
    handler.setLevel(logging.WARNING)
    info_line(logging.getLogger("bridge.web.webhooks"), "webhook", FIELDS)
    handler.flush()
    assert stream.getvalue() == ""
