"""`bridge reconcile`: an order whose webhook never came is found and takes the live path."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from pydantic import SecretStr
from rq import Queue

from bridge.backfill.reconcile import maybe_reconcile
from bridge.cli.main import main
from bridge.config.settings import Settings
from bridge.services import Services
from bridge.sources.shopify.graphql import rest_order
from bridge.store.facade import Keys, Store, now_ms
from bridge.store.wire import Envelope
from bridge.worker.queues import enqueue_drain
from tests.conftest import SHOP, wait_until
from tests.pipelines_standin import PipelinesStandIn
from tests.shopify_admin_standin import TOKEN, AdminStandIn, gql_order


def recent_orders() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    at = (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = (now - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    orders = [
        gql_order(4000 + i, customer_id=600 + i, email=f"r{i}@x.example", created=at, total="2.00")
        for i in range(3)
    ]
    # Changed before the window: not listed, though the bridge never saw it either.
    orders.append(gql_order(4100, customer_id=700, email="o@x.example", created=old, total="1"))
    return orders


@pytest.fixture
def admin() -> Iterator[AdminStandIn]:
    with AdminStandIn(recent_orders()) as standin:
        yield standin


def deliver_live(settings: Settings, store: Store, orders: list[dict[str, Any]]) -> None:
    """Webhooks that did arrive, queued as the web process queues them."""
    queue = Queue(settings.queue_name, connection=store.redis)
    for order in orders:
        body = rest_order(order)
        env = Envelope(
            shop=SHOP,
            topic="orders/paid",
            webhook_id=f"live-{body['id']}",
            body=json.dumps(body).encode(),
            received_ms=now_ms(),
        )
        store.ingest(env)
    enqueue_drain(queue, SHOP)


def seen(redis: redis_lib.Redis, order_id: str) -> bool:
    return bool(redis.exists(Keys(SHOP).state(f"order:{order_id}")))


def test_reconcile_finds_the_missed_webhook_and_sends_it_once(
    env: None,
    settings: Settings,
    admin: AdminStandIn,
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = Store(redis)
    deliver_live(settings, store, admin.orders[:2])  # 4002's webhook was lost
    assert wait_until(lambda: seen(redis, "4000") and seen(redis, "4001"), 30)
    assert pipelines.wait_for(4, 30)

    assert main(["reconcile", "--since", "2h", "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 orders updated" in out and "1 never seen by the bridge" in out
    assert store.stats(SHOP)["reconcile:missing"] == 1

    assert pipelines.wait_for(6, 30)
    late = [c for c in pipelines.calls if c.get("userId") == "602"]
    assert sorted(c.get("event") or c["type"] for c in late) == ["identify", "order_completed"]
    assert next(c for c in late if c["type"] == "track")["properties"]["order_id"] == "4002"

    # Once drained, the order is seen: the next run finds nothing missing.
    assert wait_until(lambda: seen(redis, "4002"), 30)
    assert main(["reconcile", "--since", "2h", "--grace", "0"]) == 0
    assert "0 never seen" in capsys.readouterr().out
    assert not wait_until(lambda: len(pipelines.calls) > 6, 1.0)


def test_worker_sweep_reconciles_once_per_interval(
    settings: Settings, admin: AdminStandIn, redis: redis_lib.Redis
) -> None:
    configured = settings.model_copy(
        update={
            "shopify_shop": SHOP,
            "shopify_admin_token": SecretStr(TOKEN),
            "shopify_admin_url": admin.url,
            "reconcile_every_s": 600,
            "reconcile_grace_s": 0,
        }
    )
    rt = Services.build(configured)
    report = maybe_reconcile(rt)
    assert report is not None and report.missing == 3 and report.queued == 3
    assert Store(redis).depth(SHOP)["inbound"] == 3
    assert maybe_reconcile(rt) is None  # another sweep inside the interval does nothing

    off = Services.build(settings)
    assert maybe_reconcile(off) is None  # RECONCILE_EVERY_S=0 (the default): never
