"""Under light traffic a drain waits a little for the shop's next webhook, so a run of webhooks
a few tens of milliseconds apart is served by one RQ job, not one job each; once one comes, it
lets more gather (`DRAIN_GATHER_MS`), so the run is processed in a few batches and delivered in a
few requests, not one each; and nothing is lost or sent twice, a worker killed mid-gather
included (issue 19: Redis commands a journey under light traffic)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis as redis_lib
from rq import Worker

from bridge.config.settings import Settings
from bridge.web.app import create_app
from tests.conftest import (
    fixture_json,
    service_env,
    start_worker,
    wait_until,
    webhook_headers,
)
from tests.pipelines_standin import PipelinesStandIn

WEBHOOKS = 12


def quiet_after_start(redis: redis_lib.Redis) -> None:
    """Once the worker is up, past its first volume check (queued 1 s after start) and before
    its first sweep (15 s): no other job cuts a drain's gathering short meanwhile."""
    assert wait_until(lambda: len(Worker.all(connection=redis)) == 1, 30)
    time.sleep(2.5)


def jobs_done(redis: redis_lib.Redis) -> int:
    return sum(w.successful_job_count for w in Worker.all(connection=redis))


def run(
    settings: Settings,
    redis: redis_lib.Redis,
    pipelines: PipelinesStandIn,
    linger: str,
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


def test_a_run_of_webhooks_gathers_into_few_batches(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn, tmp_path: Path
) -> None:
    """Once a drain lingers, 11 webhooks 20 ms apart (~0.3 s, slower on a busy machine) gather
    behind the first into one or two batches (each then delivered in one round), not one batch
    each as without gathering. Counted from the worker's own "batch processed" log lines."""
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "worker"],
            env=service_env(
                settings,
                LOG_LEVEL="INFO",
                DRAIN_LINGER_MS="2000",
                DRAIN_GATHER_MS="1000",
                DRAIN_TIME_BUDGET_S="30",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    web = create_app(settings).test_client()

    def post(i: int) -> None:
        body = fixture_json("carts-create")
        body["id"] = body["token"] = f"gathered-{i}"
        raw = orjson.dumps(body)
        headers = webhook_headers(raw, "carts/create", webhook_id=f"gathered-{i}")
        assert web.post("/webhooks/shopify", data=raw, headers=headers).status_code == 200

    try:
        quiet_after_start(redis)
        post(0)  # the drain job starts on it, then lingers
        assert wait_until(lambda: len(pipelines.calls) == 1, 30)
        for i in range(1, 12):
            post(i)
            time.sleep(0.02)
        assert wait_until(lambda: len(pipelines.calls) >= 12, 30)
        time.sleep(0.5)
        ids = [c["messageId"] for c in pipelines.calls]
        assert len(ids) == len(set(ids)) == 12, "a call lost or sent twice"
    finally:
        worker.terminate()
        worker.wait(40)
    batches = [
        line["webhooks"]
        for line in map(orjson.loads, log_path.read_bytes().splitlines())
        if line.get("msg") == "batch processed"
    ]
    assert batches[0] == 1 and sum(batches) == 12, batches
    assert len(batches) <= 4, f"11 webhooks in {len(batches) - 1} batches: {batches}"


def test_a_worker_killed_while_gathering_loses_nothing(
    settings: Settings, redis: redis_lib.Redis, pipelines: PipelinesStandIn
) -> None:
    """Gathered webhooks wait in the shop's queue, not in the worker: a SIGKILL mid-gather leaves
    them there, and the next worker delivers each exactly once."""
    web = create_app(settings).test_client()
    worker = start_worker(
        settings, DRAIN_LINGER_MS="2000", DRAIN_GATHER_MS="4000", DRAIN_TIME_BUDGET_S="30"
    )
    ids = [f"killed-gather-{i}" for i in range(6)]
    try:
        quiet_after_start(redis)
        for i, webhook_id in enumerate(ids):
            body = fixture_json("carts-create")
            body["id"] = body["token"] = webhook_id
            raw = orjson.dumps(body)
            headers = webhook_headers(raw, "carts/create", webhook_id=webhook_id)
            assert web.post("/webhooks/shopify", data=raw, headers=headers).status_code == 200
            if i == 0:
                # the first is drained alone (the job starts on it); the rest gather behind the
                # next, which the lingering drain holds while it waits for four seconds
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
