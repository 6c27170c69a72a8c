"""The whole path on real parts: gunicorn (the Procfile's command), Redis, an RQ worker process,
and the loopback Pipelines stand-in. Expected values are read off the fixtures by hand."""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib

from bridge.config.settings import Settings
from tests.conftest import (
    ROOT,
    SHOP,
    fixture_bytes,
    fixture_json,
    free_port,
    service_env,
    wait_until,
    webhook_headers,
)
from tests.pipelines_standin import PipelinesStandIn


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in Procfile")


class Web:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc

    def post(self, topic: str, body: bytes, **kw: Any) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/webhooks/shopify",
            data=body,
            headers=webhook_headers(body, topic, **kw),
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)

    def answers(self) -> bool:
        """gunicorn is up: its /healthz answers (it asks nothing of Redis)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except OSError:
            return False


def start_web(settings: Settings, **extra: str) -> Web:
    """gunicorn started with the Procfile's command on a free port, once it answers."""
    port = free_port()
    env = service_env(settings, PORT=str(port), **extra)
    web = Web(port, subprocess.Popen(procfile_command("web"), env=env, cwd=ROOT))
    if not wait_until(web.answers, 20):
        web.stop()
        raise AssertionError(f"gunicorn did not come up (exit {web.proc.poll()})")
    return web


@pytest.fixture
def web(settings: Settings) -> Iterator[Web]:
    web = start_web(settings, WEB_CONCURRENCY="2")
    yield web
    web.stop()


def order_paid_body() -> bytes:
    order = fixture_json("orders-paid")
    order["test"] = False
    return json.dumps(order).encode()


def by_event(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c.get("event") or c["type"]: c for c in calls}


def test_webhooks_through_gunicorn_and_a_worker_reach_pipelines(
    web: Web, worker: subprocess.Popen[bytes], pipelines: PipelinesStandIn
) -> None:
    assert web.post("carts/create", fixture_bytes("carts-create")) == (200, {"ok": True})
    assert web.post("orders/paid", order_paid_body()) == (200, {"ok": True})
    assert web.post("refunds/create", fixture_bytes("refunds-create")) == (200, {"ok": True})
    assert pipelines.wait_for(4, 20), pipelines.calls

    calls = by_event(pipelines.calls)
    cart = calls["added_to_cart"]
    assert cart["type"] == "track"
    assert "userId" not in cart and cart["anonymousId"]
    assert cart["properties"]["cart_id"] == "exampleCartId"
    assert cart["properties"]["value"] == 59.97
    assert cart["properties"]["cart_url"] == (
        "https://test-shop.myshopify.com/cart/704912205188288575:3"
    )

    order = calls["order_completed"]
    assert order["userId"] == "115310627314723954"
    assert order["properties"]["order_id"] == "820982911946154508"
    assert order["properties"]["total"] == 404.95
    assert order["timestamp"] == "2022-01-01T00:00:00.000Z"

    # The first identify carries the order's customer; a later one the refund's lifetime_value.
    identify = next(c for c in pipelines.calls if c["type"] == "identify")
    assert identify["userId"] == "115310627314723954"
    assert identify["traits"]["email"] == "john@example.com"

    refund = calls["order_refunded"]
    assert refund["userId"] == "115310627314723954"  # found through the order index
    assert refund["properties"]["amount"] == 85.0
    assert refund["properties"]["order_id"] == "820982911946154508"

    # Order within a person: the identify precedes the order that needs it.
    names = [c.get("event") or c["type"] for c in pipelines.calls]
    assert names.index("identify") < names.index("order_completed")


def test_redelivered_webhook_is_delivered_once(
    web: Web, worker: subprocess.Popen[bytes], pipelines: PipelinesStandIn
) -> None:
    body = order_paid_body()
    for _ in range(3):
        web.post("orders/paid", body, webhook_id="one-delivery")
    assert pipelines.wait_for(2, 20)
    assert not wait_until(lambda: len(pipelines.calls) > 2, 1.5)
    assert sorted(c["type"] for c in pipelines.calls) == ["identify", "track"]


def test_a_running_worker_writes_its_counters_within_seconds_while_idle(
    web: Web, worker: subprocess.Popen[bytes], pipelines: PipelinesStandIn, settings: Settings
) -> None:
    # Counters are summed in the worker (store/tally.py): its ticker writes them once a second
    # even when no further job comes, so /metrics lags by a second, not until the next webhook.
    # Pipelines answering in 0.6 s makes the settle land after the drain ended (the drain's end
    # writes the counters it has) and within a second of that write: only the ticker is left.
    pipelines.configure(delay_s=0.6)
    assert web.post("carts/create", fixture_bytes("carts-create")) == (200, {"ok": True})
    assert pipelines.wait_for(1, 20)
    client = redis_lib.Redis.from_url(settings.redis_url)
    stats_key = f"cb:{{{SHOP}}}:stats"

    def counted() -> bool:
        return client.hget(stats_key, "calls:delivered") == b"1" and (
            client.hget(stats_key, "webhooks:carts/create:processed") == b"1"
        )

    assert wait_until(counted, 10), client.hgetall(stats_key)
    assert worker.poll() is None  # written by the running worker, not by its exit


def test_web_refuses_to_start_without_a_secret(settings: Settings) -> None:
    env = service_env(settings, PORT=str(free_port()))
    env["SHOPIFY_WEBHOOK_SECRET"] = ""
    proc = subprocess.run(
        procfile_command("web"), env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode != 0
    assert b"SHOPIFY_WEBHOOK_SECRET" in proc.stderr


def test_worker_refuses_to_start_without_a_write_key(settings: Settings) -> None:
    env = service_env(settings)
    env["PIPELINES_WRITE_KEY"] = ""
    proc = subprocess.run(
        procfile_command("worker"), env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode != 0
    assert b"PIPELINES_WRITE_KEY" in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_batches_carry_many_calls(
    web: Web,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
) -> None:
    # Stop the worker from keeping up so a backlog forms, then let it drain.
    body = fixture_json("carts-create")
    n = 60
    for i in range(n):
        body["token"] = body["id"] = f"cart-{i}"
        web.post("carts/create", json.dumps(body).encode())
    assert pipelines.wait_for(n, 30)
    assert pipelines.requests < n  # batched: fewer requests than calls
    assert len({c["messageId"] for c in pipelines.calls}) == n
