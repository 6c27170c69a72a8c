"""Subscriptions on the whole path: signed Shopify subscription webhooks through gunicorn, an RQ
worker and the Pipelines stand-in, a customer erased afterwards. Bodies are the documented
samples (bridge/samples), about the customer of the orders fixture."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import redis as redis_lib

from bridge.config.settings import Settings
from bridge.services import Services
from bridge.store.keys import Keys
from bridge.worker.drain import drain
from tests.conftest import ROOT, SHOP, fixture_json, wait_until
from tests.integration.test_end_to_end import Web, web  # noqa: F401 (the fixture)
from tests.pipelines_standin import PipelinesStandIn

CUSTOMER = 115310627314723954  # the orders fixture's customer
ORDER = 820982911946154508
K = Keys(SHOP)


def sample(topic: str, **changes: Any) -> bytes:
    resource, _, action = topic.partition("/")
    body = json.loads((ROOT / "bridge" / "samples" / f"{resource}-{action}.json").read_text())
    body.update(changes)
    return json.dumps(body).encode()


def contract(topic: str, revision: int, **changes: Any) -> bytes:
    return sample(topic, customer_id=CUSTOMER, revision_id=str(revision), **changes)


def renewal_order() -> bytes:
    order = fixture_json("orders-paid")
    order["test"] = False
    order["cancelled_at"] = None
    order["cart_token"] = order["checkout_token"] = order["checkout_id"] = None
    return json.dumps(order).encode()


def test_a_dunning_run_a_renewal_and_a_cancel_reach_pipelines_in_order(
    web: Web,  # noqa: F811
    worker: subprocess.Popen[bytes],
    pipelines: PipelinesStandIn,
    redis: redis_lib.Redis,
) -> None:
    def any_queued() -> bool:
        return bool(redis.llen(K.inbound) + redis.llen(K.inbound_work))

    posts = [
        ("subscription_contracts/create", contract("subscription_contracts/create", 10)),
        ("subscription_billing_attempts/failure", sample("subscription_billing_attempts/failure")),
        (
            "subscription_billing_attempts/failure",
            sample("subscription_billing_attempts/failure", id=1004, error_code="CARD_DECLINED"),
        ),
        (
            "subscription_billing_attempts/success",
            sample("subscription_billing_attempts/success", id=1005, order_id=ORDER),
        ),
        ("orders/paid", renewal_order()),
        ("subscription_contracts/cancel", contract("subscription_contracts/cancel", 11)),
    ]
    for topic, body in posts:
        assert web.post(topic, body) == (200, {"ok": True}), topic
        # One at a time: each is decided on what the one before it left.
        assert wait_until(lambda: not any_queued(), 20)
    tracked = lambda: [c for c in pipelines.calls if c["type"] == "track"]  # noqa: E731
    assert wait_until(lambda: len(tracked()) >= 6, 20), pipelines.calls
    events = [c["event"] for c in tracked()]
    assert events == [
        "subscription_created",
        "payment_failed",
        "payment_failed",
        "payment_recovered",
        "order_completed",
        "subscription_canceled",
    ]
    assert {c["userId"] for c in pipelines.calls} == {str(CUSTOMER)}
    failed = [c for c in tracked() if c["event"] == "payment_failed"]
    assert [f["properties"]["error_code"] for f in failed] == [
        "INSUFFICIENT_FUNDS",
        "CARD_DECLINED",
    ]
    assert [f["properties"]["attempt_number"] for f in failed] == [1, 2]
    completed = next(c for c in tracked() if c["event"] == "order_completed")
    assert completed["properties"]["subscription_renewal"] is True
    assert completed["properties"]["subscription_id"] == "1"
    statuses = [
        c["traits"]["subscription_status"]
        for c in pipelines.calls
        if c["type"] == "identify" and "subscription_status" in c["traits"]
    ]
    assert statuses == ["active", "dunning", "active", "canceled"]


def test_an_erasure_leaves_no_subscription_record_naming_the_customer(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    from bridge.web.app import create_app
    from tests.conftest import webhook_headers

    client = create_app(settings).test_client()
    rt = Services.build(settings)
    bodies = [
        ("subscription_contracts/create", contract("subscription_contracts/create", 10)),
        ("subscription_billing_attempts/failure", sample("subscription_billing_attempts/failure")),
        # A billing attempt for a contract never seen: it waits, holding the whole payload.
        (
            "subscription_billing_attempts/failure",
            sample("subscription_billing_attempts/failure", id=2001, subscription_contract_id=77),
        ),
    ]
    for topic, body in bodies:
        assert (
            client.post(
                "/webhooks/shopify", data=body, headers=webhook_headers(body, topic)
            ).status_code
            == 200
        )
    drain(rt, SHOP)
    state = [k for k in redis.scan_iter(K.state("*"))]
    assert any(b":st:sub:shopify:1" in k for k in state)
    assert any(b":st:subs:cust:" in k for k in state)
    redact = fixture_json("customers-redact")
    redact["customer"] = {"id": CUSTOMER, "email": "john@example.com", "phone": None}
    redact["orders_to_redact"] = []
    body = json.dumps(redact).encode()
    headers = webhook_headers(body, "customers/redact")
    assert client.post("/webhooks/shopify", data=body, headers=headers).status_code == 200
    drain(rt, SHOP)
    left = [k for k in redis.scan_iter(K.state("*"))]
    assert not [k for k in left if b":st:sub:shopify:1" in k or b":st:subs:" in k]
    for key in left:
        value = redis.get(key) or b""
        assert str(CUSTOMER).encode() not in value, key
