"""Webhook deduplication (the web queues every signed delivery in one round trip).

A webhook id is processed once within WEBHOOK_DEDUPE_TTL_S: duplicates in one batch, across
batches, in any order, and after a crash between take and commit; a replayed dead letter is
processed again. The web claims the id as it queues the first copy (the seen-marker holds a
token that copy carries), so later copies are answered as duplicates at once and the drain
processes the claimed copy only; a copy that was never queued claims nothing.
"""

from __future__ import annotations

import orjson
import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.config.settings import Settings
from bridge.delivery.deadletters import DeadLetters
from bridge.services import Services
from bridge.store.facade import INGEST_DUPLICATE, Keys, Store
from bridge.store.wire import Envelope
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
    answers = [send(client, "carts/create", body, "w-order") for _ in range(3)]
    assert answers == [{"ok": True}] + [{"ok": True, "duplicate": True}] * 2
    drain(rt, SHOP)
    calls = redis.lrange(K.outbox, 0, -1)
    assert calls
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert stats(redis)["webhooks:carts/create:duplicate"] == 2
    assert send(client, "carts/create", body, "w-order") == {"ok": True, "duplicate": True}
    drain(rt, SHOP)
    assert redis.lrange(K.outbox, 0, -1) == calls
    assert stats(redis)["webhooks:carts/create:duplicate"] == 3
    assert redis.ttl(K.claim("w-order")) > 71 * 3600


def test_a_batch_taken_but_not_committed_is_processed_on_the_redo(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("carts-create")
    send(client, "carts/create", body, "w-cart")
    # A worker took the batch and died before its commit (or stalled and lost its lease): the
    # id stays claimed by the copy, and nothing is marked seen.
    [taken] = rt.store.take_inbound(SHOP, 10)
    claim = redis.get(K.claim("w-cart"))
    assert claim and Envelope.decode(taken).claim == claim.decode()
    assert redis.exists(K.seen("w-cart")) == 0
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert "webhooks:carts/create:duplicate" not in stats(redis)
    assert redis.llen(K.inbound_work) == 0
    # The drain that took over marked what it processed seen: the stalled one, if it goes on
    # with its copy, finds it processed.
    assert redis.exists(K.seen("w-cart")) == 1
    redis.rpush(K.inbound, taken)
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert stats(redis)["webhooks:carts/create:duplicate"] == 1


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


def _copy(webhook_id: str, claim: str | None) -> bytes:
    """A queued copy of a carts/create webhook as the web or an older version queued it."""
    return Envelope(
        SHOP,
        "carts/create",
        webhook_id,
        fixture_bytes("carts-create"),
        received_ms=1,
        claim=claim,
    ).encode()


def test_the_claimed_copy_wins_whatever_the_order(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    """A copy queued ahead of the claimed one (claimed by another token, or by none, as an older
    version queued it) is the duplicate; the claimed copy behind it is processed."""
    send(client, "carts/create", fixture_bytes("carts-create"), "w-late")
    redis.lpush(K.inbound, _copy("w-late", "another"), _copy("w-late", None))
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 1
    assert stats(redis)["webhooks:carts/create:duplicate"] == 2
    assert len(redis.lrange(K.outbox, 0, -1)) == 1


def test_identical_copies_on_either_side_of_a_batch_boundary_are_processed_once(
    settings: Settings, client: FlaskClient, redis: redis_lib.Redis
) -> None:
    """The web's one write is sent again on a new connection when the first failed while
    writing (store/resp.py): if the first had landed, two identical copies of one claim are
    queued back to back. In one batch the second is a duplicate of the first; across a batch
    boundary too (a claimed copy gets no seen-marker, so the next batch is told by the drain)."""
    rt = Services.build(settings.model_copy(update={"drain_batch_size": 2}))
    send(client, "carts/create", fixture_bytes("carts-create"), "w-first")
    send(client, "carts/update", fixture_bytes("carts-update"), "w-twice")
    [_first, queued] = redis.lrange(K.inbound, 0, -1)
    redis.rpush(K.inbound, queued)  # the same bytes, the same claim
    drain(rt, SHOP)
    s = stats(redis)
    assert s["webhooks:carts/update:processed"] == 1
    assert s["webhooks:carts/update:duplicate"] == 1
    assert s["webhooks:carts/create:processed"] == 1
    assert redis.llen(K.inbound) == redis.llen(K.inbound_work) == 0


def test_copies_nobody_claimed_are_processed_once_and_marked(
    rt: Services, redis: redis_lib.Redis
) -> None:
    """Envelopes queued with no claim (an older version's, backfill's) or whose marker is gone
    (it outlived the TTL while queued) are deduplicated as before: the first is processed and
    marked by the commit, the rest are duplicates."""
    redis.rpush(K.inbound, _copy("w-old", None), _copy("w-old", None), _copy("w-gone", "t1"))
    redis.set(K.drain_flag, 1)
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 2
    assert stats(redis)["webhooks:carts/create:duplicate"] == 1
    assert redis.get(K.seen("w-old")) == b"1" and redis.get(K.seen("w-gone")) == b"1"
    assert redis.ttl(K.seen("w-old")) > 71 * 3600


def test_a_copy_that_could_not_be_queued_claims_nothing(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    """When the push is refused but the marker was set, the marker is taken back: Shopify's
    retry of the 503 is queued and processed, not answered as a duplicate."""
    redis.set(K.inbound, "not a list")  # the push fails (WRONGTYPE); the marker's SET does not
    body = fixture_bytes("carts-create")
    resp = client.post(
        URL, data=body, headers=webhook_headers(body, "carts/create", webhook_id="w-503")
    )
    assert resp.status_code == 503
    assert redis.exists(K.claim("w-503")) == 0
    redis.delete(K.inbound)
    assert send(client, "carts/create", body, "w-503") == {"ok": True}
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:processed"] == 1


def test_a_claim_is_no_seen_marker_for_an_older_worker(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    """During a deploy or a rollback, a worker of the version before claims reads any
    seen-marker as "processed": queueing writes none, so that worker processes what this web
    queued. And a copy this worker finds marked seen (processed by that worker) is skipped even
    though its claim holds."""
    send(client, "carts/create", fixture_bytes("carts-create"), "w-mixed")
    assert redis.exists(K.seen("w-mixed")) == 0 and redis.exists(K.claim("w-mixed")) == 1
    redis.set(K.seen("w-mixed"), 1)  # as the older worker's commit marks what it processed
    drain(rt, SHOP)
    assert stats(redis)["webhooks:carts/create:duplicate"] == 1
    assert "webhooks:carts/create:processed" not in stats(redis)


def test_backfill_finds_an_id_a_queued_copy_claimed(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    """INGEST (backfill, reconcile) reports as a duplicate an id the web claimed, not only one
    the drain processed, and queues nothing for it."""
    send(client, "carts/create", fixture_bytes("carts-create"), "w-both")
    queued = redis.llen(K.inbound)
    assert rt.store.ingest(Envelope.decode(_copy("w-both", None))) == INGEST_DUPLICATE
    assert redis.llen(K.inbound) == queued
    assert rt.store.ingest(Envelope.decode(_copy("w-neither", None))) != INGEST_DUPLICATE
