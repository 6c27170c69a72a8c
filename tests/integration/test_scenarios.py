"""Identity scenarios through the real parts: the Flask app writing to a private Redis, a real
RQ worker process, and the Pipelines stand-in; each asserts the exact calls Pipelines received."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.config.settings import Settings
from bridge.store.facade import Keys, Store
from bridge.web.app import create_app
from tests.conftest import SHOP, fixture_json, wait_until, webhook_headers
from tests.journeys import CART, CUSTOMER_ID, EMAIL, cart, checkout, order, refund
from tests.pipelines_standin import PipelinesStandIn


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def post(
    client: FlaskClient, topic: str, body: dict[str, Any], webhook_id: str | None = None
) -> None:
    raw = json.dumps(body).encode()
    resp = client.post(
        "/webhooks/shopify", data=raw, headers=webhook_headers(raw, topic, webhook_id=webhook_id)
    )
    assert resp.status_code == 200, resp.json


def settle(redis: redis_lib.Redis, pipelines: PipelinesStandIn, n: int) -> list[dict[str, Any]]:
    """Wait until the stand-in got `n` calls and the shop's queues are empty; return the calls."""
    store = Store(redis)
    assert pipelines.wait_for(n, 20), pipelines.calls

    def idle() -> bool:
        d = store.depth(SHOP)
        return d["inbound"] == 0 and d["outbox"] == 0

    assert wait_until(idle, 20)
    return pipelines.calls


def shape(calls: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(c.get("event") or c["type"], c.get("userId")) for c in calls]


def stats(redis: redis_lib.Redis) -> dict[str, int]:
    return Store(redis).stats(SHOP)


def test_guest_then_account(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    post(client, "orders/paid", order(customer=None))
    post(
        client,
        "customers/create",
        {"id": int(CUSTOMER_ID), "email": EMAIL, "updated_at": "2024-11-07T00:00:00-05:00"},
    )
    calls = settle(redis, pipelines, 3)
    assert shape(calls) == [
        ("identify", EMAIL),
        ("order_completed", EMAIL),
        ("identify", CUSTOMER_ID),
    ]
    # The id goes to the email's person in one identify, with the guest's order counted.
    assert calls[2]["traits"]["email"] == EMAIL
    assert calls[2]["traits"]["orders_count"] == 1
    assert calls[2]["traits"]["lifetime_value"] == 600.0


def test_email_arriving_on_checkouts_update(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    post(client, "carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    post(client, "checkouts/create", checkout(email=False, updated_at="2024-11-06T02:22:02Z"))
    post(client, "checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    calls = settle(redis, pipelines, 3)
    assert shape(calls) == [
        ("added_to_cart", None),
        ("identify", CUSTOMER_ID),
        ("checkout_started", CUSTOMER_ID),
    ]
    anon = calls[0]["anonymousId"]
    assert calls[1]["anonymousId"] == anon  # the cart's activity merges into the person
    assert calls[1]["traits"]["email"] == EMAIL
    assert calls[1]["traits"]["cart_value"] == 600.0
    # The worker writes its counters within a second (store/tally.py).
    assert wait_until(lambda: stats(redis).get("events:checkout_started:held") == 1)


def test_order_before_cart_and_checkout(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    post(client, "orders/create", order())
    post(client, "carts/create", cart(CART, {11: 1}, "2024-11-06T01:00:00.000Z"))
    post(client, "checkouts/update", checkout(email=True, updated_at="2024-11-06T02:30:00Z"))
    post(client, "orders/paid", order())
    calls = settle(redis, pipelines, 2)
    assert wait_until(lambda: stats(redis).get("webhooks:orders/paid:processed") == 1)
    assert settle(redis, pipelines, 2) == calls
    assert shape(calls) == [("identify", CUSTOMER_ID), ("order_completed", CUSTOMER_ID)]
    s = stats(redis)
    assert s["events:added_to_cart:suppressed"] == 1
    assert s["events:checkout_started:suppressed"] == 1


def test_refund_before_order(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    post(client, "refunds/create", refund())
    assert wait_until(lambda: stats(redis).get("events:order_refunded:held") == 1)
    assert pipelines.calls == []
    post(client, "orders/paid", order())
    calls = settle(redis, pipelines, 3)
    assert shape(calls) == [
        ("identify", CUSTOMER_ID),
        ("order_completed", CUSTOMER_ID),
        ("order_refunded", CUSTOMER_ID),
    ]
    assert calls[0]["traits"]["lifetime_value"] == 515.0
    assert calls[2]["properties"]["amount"] == 85.0


def test_completed_and_failed_customers_merge(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    failed = fixture_json("customers-merge")  # status "failed": must change nothing
    post(client, "customers/merge", failed)
    assert wait_until(lambda: stats(redis).get("merges:failed_ignored") == 1)
    assert redis.keys(Keys(SHOP).state("*")) == []
    completed = {**failed, "status": "completed", "errors": []}
    post(client, "customers/merge", completed)
    post(client, "customers/merge", completed)  # a second delivery of the merge
    post(client, "orders/paid", order(customer={"id": 2, "email": "two@example.com"}))
    calls = settle(redis, pipelines, 4)
    assert shape(calls) == [
        ("identify", "1"),
        ("alias", "1"),
        ("identify", "1"),
        ("order_completed", "1"),  # the deleted id never comes back
    ]
    assert calls[1]["previousId"] == "2"
    # The alias went alone to /v1/alias (the stand-in refuses it inside a batch).
    assert pipelines.request_call_counts[:2] == [1, 1]
    assert wait_until(lambda: stats(redis).get("merges:duplicate") == 1)


def test_redeliveries_send_each_call_once(
    client: FlaskClient, worker: Any, pipelines: PipelinesStandIn, redis: redis_lib.Redis
) -> None:
    for _ in range(3):
        post(client, "orders/paid", order(), webhook_id="same-delivery")
    post(client, "orders/paid", order())  # Shopify sends orders/paid again (new webhook id)
    post(client, "refunds/create", refund())
    post(client, "refunds/create", refund())
    calls = settle(redis, pipelines, 4)
    assert wait_until(lambda: stats(redis).get("webhooks:refunds/create:processed") == 2)
    assert settle(redis, pipelines, 4) == calls
    assert shape(calls) == [
        ("identify", CUSTOMER_ID),
        ("order_completed", CUSTOMER_ID),
        ("identify", CUSTOMER_ID),
        ("order_refunded", CUSTOMER_ID),
    ]


def test_sweep_housekeeping_drops_held_checkouts_and_parks_waiting_refunds(
    client: FlaskClient, settings: Settings, redis: redis_lib.Redis
) -> None:
    from datetime import UTC, datetime, timedelta

    from bridge.services import Services
    from bridge.worker.drain import drain
    from bridge.worker.sweep import housekeep

    rt = Services.build(settings)
    post(client, "checkouts/create", checkout(email=False, updated_at="2024-11-06T02:22:02Z"))
    post(client, "refunds/create", refund(order_id="999"))
    drain(rt, SHOP)
    now = datetime.now(UTC)
    assert housekeep(rt, SHOP, now=now + timedelta(hours=1)) == 0
    assert housekeep(rt, SHOP, now=now + timedelta(hours=25)) == 2
    s = stats(redis)
    assert s["events:checkout_started:dropped_no_contact"] == 1
    assert s["events:order_refunded:parked_unresolved"] == 1
    [parked] = [json.loads(p) for p in redis.lrange(Keys(SHOP).parked, 0, -1)]
    assert (parked["kind"], parked["order_id"]) == ("refund", "999")
    assert housekeep(rt, SHOP, now=now + timedelta(hours=26)) == 0
