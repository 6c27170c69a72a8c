"""Under light traffic a drain waits a little for the shop's next webhook, so a run of webhooks
a few tens of milliseconds apart is served by one RQ job, not one job each, and nothing is lost
or sent twice (issue 19: Redis commands a journey under light traffic)."""

from __future__ import annotations

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
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn, linger: str
) -> int:
    worker = start_worker(settings, DRAIN_LINGER_MS=linger)
    web = create_app(settings).test_client()
    try:
        assert wait_until(lambda: len(Worker.all(connection=redis)) == 1, 30)
        before = jobs_done(redis)
        for i in range(WEBHOOKS):
            body = fixture_json("carts-create")
            body["id"] = body["token"] = f"linger-{linger}-{i}"
            raw = orjson.dumps(body)
            headers = webhook_headers(raw, "carts/create", webhook_id=f"linger-{linger}-{i}")
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
