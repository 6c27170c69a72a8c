"""A real `bridge worker` process across a Redis restart and a SIGTERM while a POST is held."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import orjson
import pytest
import redis as redis_lib

from bridge.config.settings import Settings
from bridge.delivery.outbox import OutboxEntry
from bridge.store.facade import Keys
from tests.conftest import SHOP, RedisServer, start_worker, wait_until
from tests.pipelines_standin import PipelinesStandIn

K = Keys(SHOP)


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    server.start()
    yield server
    server.stop()


def queue(url: str, first: int, n: int) -> None:
    r = redis_lib.Redis.from_url(url)
    calls = [
        {"type": "track", "messageId": f"W{i:04d}", "event": "e", "userId": f"p{i}"}
        for i in range(first, first + n)
    ]
    r.rpush(K.outbox, *(OutboxEntry(orjson.dumps(c), 1, c["userId"]).encode() for c in calls))
    r.sadd("cb:shops", SHOP)
    r.close()


def distinct(pipelines: PipelinesStandIn) -> int:
    return len(set(pipelines.message_ids()))


def test_worker_survives_a_redis_restart_and_stops_promptly_on_sigterm(
    aof_redis: RedisServer, settings: Settings, pipelines: PipelinesStandIn
) -> None:
    s = settings.model_copy(update={"redis_url": aof_redis.url})
    worker = start_worker(s)
    try:
        queue(aof_redis.url, 0, 5)  # the ticker finds them: no job was enqueued
        assert pipelines.wait_for(5, 30)
        aof_redis.stop()
        aof_redis.start()
        queue(aof_redis.url, 5, 5)
        # At least once: a batch whose acknowledgement the restart cut off is sent again.
        assert wait_until(lambda: distinct(pipelines) == 10, 40), pipelines.stats()
        assert worker.poll() is None  # still running after Redis came back

        pipelines.configure(delay_s=4.0)  # hold the next answer: SIGTERM arrives mid-POST
        queue(aof_redis.url, 10, 5)
        assert wait_until(lambda: pipelines.requests > 2 and distinct(pipelines) == 15, 30)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) is not None
        ids = {m for m in pipelines.message_ids()}
        assert ids == {f"W{i:04d}" for i in range(15)}
        r = redis_lib.Redis.from_url(aof_redis.url)
        # Finished (acknowledged) or requeued: nothing is left half-done and nothing is gone.
        left = r.llen(K.outbox) + r.llen(K.outbox_work)
        assert left in (0, 5)
        r.close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
