"""Under light traffic a drain waits a little for the shop's next webhook, so a run of webhooks
a few tens of milliseconds apart is served by one RQ job, not one job each; once one comes, it
lets more gather (`DRAIN_GATHER_MS`), so the run is processed in a few batches and delivered in a
few requests, not one each; and nothing is lost or sent twice, a worker killed mid-gather
included (issue 19: Redis commands a journey under light traffic)."""

from __future__ import annotations

import signal
import time

import orjson
import redis as redis_lib
from rq import Worker

from bridge.config.settings import Settings
from bridge.web.app import create_app
from tests.conftest import fixture_json, start_worker, wait_until, webhook_headers
from tests.pipelines_standin import PipelinesStandIn

WEBHOOKS = 12


def jobs_done(redis: redis_lib.Redis) -> int:
    return sum(w.successful_job_count for w in Worker.all(connection=redis))


def run(
    settings: Settings,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
    linger: str,
    gather: str = "500",
) -> int:
    worker = start_worker(settings, DRAIN_LINGER_MS=linger, DRAIN_GATHER_MS=gather)
    web = create_app(settings).test_client()
    try:
        assert wait_until(lambda: len(Worker.all(connection=redis)) == 1, 30)
        before = jobs_done(redis)
        for i in range(WEBHOOKS):
            body = fixture_json("carts-create")
            body["id"] = body["token"] = f"linger-{linger}-{gather}-{i}"
            raw = orjson.dumps(body)
            headers = webhook_headers(raw, "carts/create", webhook_id=f"w-{linger}-{gather}-{i}")
            assert web.post("/webhooks/shopify", data=raw, headers=headers).status_code == 200
            time.sleep(0.03)  # light traffic: each webhook alone, the last one drained already
        assert wait_until(lambda: len(pipelines.calls) >= WEBHOOKS, 30)
        # every drain job has ended (the worker is idle): count them
        assert wait_until(
            lambda: all(w.get_state() == "idle" for w in Worker.all(connection=redis)), 30
        )
        time.sleep(0.5)
        ids = [c["messageId"] for c in pipelines.calls]
        assert len(ids) == len(set(ids)) == WEBHOOKS, "a call lost or sent twice"
        return jobs_done(redis) - before
    finally:
        worker.terminate()
        worker.wait(40)


def test_a_run_of_webhooks_under_light_traffic_is_drained_by_few_jobs(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    jobs = run(settings, redis, pipelines, linger="500")
    # One drain job serves the run (a periodic sweep or check job may run meanwhile).
    assert jobs <= 3, f"{jobs} jobs for {WEBHOOKS} webhooks"


def test_a_run_of_webhooks_gathers_into_few_batches_and_requests(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    """12 webhooks 30 ms apart (~0.4 s): the first one the linger brings waits 0.5 s for the rest,
    so they are delivered in a few requests. Without gathering each is a batch of its own."""
    run(settings, redis, pipelines, linger="500", gather="500")
    gathered = pipelines.requests
    assert gathered <= 4, f"{gathered} requests for {WEBHOOKS} webhooks"
    pipelines.reset()
    run(settings, redis, pipelines, linger="500", gather="0")
    # Without it, mostly one request a webhook (a delivery still busy with one takes the next)
    assert pipelines.requests >= WEBHOOKS // 2, "without gathering, webhooks go out one by one"


def test_a_worker_killed_while_gathering_loses_nothing(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    """Gathered webhooks wait in the shop's queue, not in the worker: a SIGKILL mid-gather leaves
    them there, and the next worker delivers each exactly once."""
    web = create_app(settings).test_client()
    worker = start_worker(settings, DRAIN_LINGER_MS="2000", DRAIN_GATHER_MS="5000")
    ids = [f"killed-gather-{i}" for i in range(6)]
    try:
        assert wait_until(lambda: len(Worker.all(connection=redis)) == 1, 30)
        for i, webhook_id in enumerate(ids):
            body = fixture_json("carts-create")
            body["id"] = body["token"] = webhook_id
            raw = orjson.dumps(body)
            headers = webhook_headers(raw, "carts/create", webhook_id=webhook_id)
            assert web.post("/webhooks/shopify", data=raw, headers=headers).status_code == 200
            if i == 0:
                # the first is drained alone (the job starts on it); the rest gather behind the
                # next, which the lingering drain holds while it waits for five seconds
                assert wait_until(lambda: len(pipelines.calls) == 1, 30)
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(pipelines.calls) == 1, "the gathering drain delivered before its time"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
    # The drain flag and lease of the killed worker expire; the next worker's ticker wakes the
    # shop.
    second = start_worker(settings)
    try:
        assert wait_until(lambda: len(pipelines.calls) >= len(ids), 60)
        time.sleep(1.0)
        sent = [c["messageId"] for c in pipelines.calls]
        assert len(sent) == len(set(sent)) == len(ids), "a call lost or sent twice"
    finally:
        second.terminate()
        second.wait(40)
