"""What a person reads from a worker: one start line saying what it is, the bridge's own lines,
and not a line per HTTP request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import redis as redis_lib

from bridge import __version__
from bridge.config.settings import Settings
from bridge.delivery.outbox import OutboxEntry
from bridge.store.facade import Keys
from tests.conftest import ROOT, SHOP, service_env, wait_until
from tests.pipelines_standin import PipelinesStandIn

K = Keys(SHOP)


def test_the_worker_logs_one_start_line_and_no_http_request_lines(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn, tmp_path: Path
) -> None:
    calls = [
        {"type": "track", "messageId": f"M{i}", "event": "order_completed", "userId": "ann"}
        for i in range(3)
    ]
    redis.rpush(
        K.outbox, *(OutboxEntry(orjson.dumps(c), 1, "ann", (), "batch").encode() for c in calls)
    )
    redis.sadd("cb:shops", SHOP)
    log = tmp_path / "worker.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "worker"],
            env=service_env(settings, LOG_LEVEL="INFO"),
            cwd=ROOT,
            stderr=err,
        )
        try:
            assert wait_until(lambda: len(pipelines.calls) == 3, 30)
        finally:
            proc.terminate()
            proc.wait(40)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    started = [
        r["msg"] for r in lines if "started" in r["msg"] and r["logger"] == "bridge.worker.process"
    ]
    assert len(started) == 1, lines
    line = started[0]
    assert __version__ in line and settings.redis_url in line, line
    assert f"queue {settings.queue_name}" in line and "stores:" in line, line
    assert f"sending to {pipelines.url}" in line, line
    assert not [r for r in lines if r["logger"].startswith("httpx")], lines
    assert [r["msg"] for r in lines].count("batch delivered") == 1, lines
