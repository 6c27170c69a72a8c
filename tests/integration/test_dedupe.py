"""Webhook deduplication in the drain (the web queues every signed delivery in one round trip).

A webhook id is processed once within WEBHOOK_DEDUPE_TTL_S: duplicates in one batch, across
batches, and after a crash between take and commit; a replayed dead letter is processed again.
"""

from __future__ import annotations

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.config.settings import Settings
from bridge.delivery.deadletters import DeadLetters
from bridge.services import Services
from bridge.store.facade import Keys, Store
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests.conftest import SHOP, fixture_bytes, fixture_json, webhook_headers

URL = "/webhooks/shopify"
K = Keys(SHOP)


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


@pytest.fixture
def rt(settings: Settings) -> Services:
    return Services.build(settings)


def stats(redis: redis_lib.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(K.stats).items()}


def send(client: FlaskClient, topic: str, body: bytes, webhook_id: str) -> dict[str, object]:
    resp = client.post(URL, data=body, headers=webhook_headers(body, topic, webhook_id=webhook_id))
    assert resp.status_code == 200
    return dict(resp.json or {})


def test_copies_in_one_batch_and_in_later_batches_are_processed_once(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("carts-create")
    for _ in range(3):
        send(client, "carts/create", body, "w-order")
    drain(rt, SHOP)
    calls = redis.lrange(K.outbox, 0, -1)
    assert calls
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert stats(redis)["webhooks:carts/create:duplicate"] == 2
    assert send(client, "carts/create", body, "w-order") == {"ok": True, "duplicate": True}
    drain(rt, SHOP)
    assert redis.lrange(K.outbox, 0, -1) == calls
    assert stats(redis)["webhooks:carts/create:duplicate"] == 3
    assert redis.ttl(K.seen("w-order")) > 71 * 3600


def test_a_batch_taken_but_not_committed_is_processed_on_the_redo(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("carts-create")
    send(client, "carts/create", body, "w-cart")
    # A worker took the batch and died before its commit: nothing is marked seen.
    assert rt.store.take_inbound(SHOP, 10)
    assert redis.exists(K.seen("w-cart")) == 0
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert redis.exists(K.seen("w-cart")) == 1
    assert redis.llen(K.inbound_work) == 0


def test_a_replayed_dead_letter_is_processed_again_not_skipped(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture_json("carts-create")
    body["line_items"] = "not a list"
    raw = orjson.dumps(body)
    send(client, "carts/create", raw, "w-bad")
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:parked"] == 1
    letters = DeadLetters(Store(redis))
    [letter] = list(letters.iter(SHOP))
    assert letters.replay(SHOP, [letter]) == 1
    drain(rt, SHOP)
    # Parked a second time (the payload is unchanged), never counted as a duplicate.
    assert stats(redis)["webhooks:carts/create:parked"] == 2
    assert "webhooks:carts/create:duplicate" not in stats(redis)
