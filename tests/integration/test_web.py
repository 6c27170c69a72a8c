"""The webhook endpoint against a real Redis: every answer, and what lands in the queue."""

from __future__ import annotations

import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.config.settings import Settings
from bridge.services import Services
from bridge.store.facade import Keys
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.worker.drain import drain
from tests.conftest import SHOP, fixture_bytes, free_port, webhook_headers

URL = "/webhooks/shopify"


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def inbound(redis: redis_lib.Redis, shop: str = SHOP) -> list[Envelope]:
    return [Envelope.decode(x) for x in redis.lrange(Keys(shop).inbound, 0, -1)]


def test_signed_webhook_is_queued_with_its_exact_bytes(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("orders-paid")
    headers = webhook_headers(body, "orders/paid", webhook_id="w-1")
    resp = client.post(URL, data=body, headers=headers)
    assert resp.status_code == 200
    assert resp.json == {"ok": True}
    [env] = inbound(redis)
    assert env.body == body
    assert (env.topic, env.shop, env.webhook_id) == ("orders/paid", SHOP, "w-1")
    assert env.triggered_at == headers["X-Shopify-Triggered-At"]
    assert env.received_ms > 0


def test_a_signature_computed_outside_the_bridge_is_accepted(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    # The other tests sign with bridge.signature.sign, so sign and verify broken the same way
    # would pass them all. This header was computed with the tests' secret by
    #   printf '%s' '{"id":820982911946154508,"email":"jon@doe.ca","note":"café"}' \
    #     | openssl dgst -sha256 -hmac 'test-webhook-secret' -binary | base64
    body = b'{"id":820982911946154508,"email":"jon@doe.ca","note":"caf\xc3\xa9"}'
    headers = webhook_headers(body, "carts/create", webhook_id="w-openssl")
    headers["X-Shopify-Hmac-Sha256"] = "As83j83CU5rGqvB0VfyfPX1AIvIr6Do6ue1GgXb8FCU="
    resp = client.post(URL, data=body, headers=headers)
    assert (resp.status_code, resp.json) == (200, {"ok": True})
    assert [env.webhook_id for env in inbound(redis)] == ["w-openssl"]


def test_redelivery_is_acknowledged_and_processed_once(
    settings: Settings, client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create", webhook_id="same-id")
    assert client.post(URL, data=body, headers=headers).json == {"ok": True}
    # Redelivered before the drain ran: the id is claimed by the queued copy, so the answer is
    # a duplicate at once; the copy is queued all the same (one round trip, no branch), and the
    # drain processes the id once.
    again = client.post(URL, data=body, headers=headers)
    assert (again.status_code, again.json) == (200, {"ok": True, "duplicate": True})
    assert len(inbound(redis)) == 2
    drain(Services.build(settings), SHOP)
    stats = {k.decode(): int(v) for k, v in redis.hgetall(Keys(SHOP).stats).items()}
    assert stats["webhooks:carts/create:processed"] == 1
    assert stats["webhooks:carts/create:duplicate"] == 1
    assert redis.llen(Keys(SHOP).outbox) == 1
    # Redelivered after it was processed: answered as a duplicate, and skipped again.
    late = client.post(URL, data=body, headers=headers)
    assert (late.status_code, late.json) == (200, {"ok": True, "duplicate": True})
    drain(Services.build(settings), SHOP)
    assert redis.llen(Keys(SHOP).outbox) == 1
    # The same webhook id in another shop is another delivery.
    other = webhook_headers(body, "carts/create", webhook_id="same-id", shop="other.myshopify.com")
    assert client.post(URL, data=body, headers=other).json == {"ok": True}


def test_first_webhook_enqueues_one_drain_job(client: FlaskClient, redis: redis_lib.Redis) -> None:
    body = fixture_bytes("carts-create")
    for _ in range(5):
        client.post(URL, data=body, headers=webhook_headers(body, "carts/create"))
    assert redis.llen("rq:queue:cartbridge") == 1
    assert len(inbound(redis)) == 5


def test_bad_signature_is_401(client: FlaskClient, redis: redis_lib.Redis) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create", secret="wrong")
    resp = client.post(URL, data=body, headers=headers)
    assert resp.status_code == 401
    assert resp.json == {"error": "invalid signature"}
    assert inbound(redis) == []


def test_missing_signature_is_401(client: FlaskClient) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create")
    del headers["X-Shopify-Hmac-Sha256"]
    assert client.post(URL, data=body, headers=headers).status_code == 401


def test_body_altered_after_signing_is_401(client: FlaskClient) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create")
    assert client.post(URL, data=body + b" ", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "header", ["X-Shopify-Topic", "X-Shopify-Shop-Domain", "X-Shopify-Webhook-Id"]
)
def test_missing_header_is_400_naming_it(client: FlaskClient, header: str) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create")
    del headers[header]
    resp = client.post(URL, data=body, headers=headers)
    assert resp.status_code == 400
    assert resp.json == {"error": f"missing header {header}"}


def test_header_names_are_case_insensitive(client: FlaskClient) -> None:
    body = fixture_bytes("carts-create")
    headers = {k.lower(): v for k, v in webhook_headers(body, "carts/create").items()}
    assert client.post(URL, data=body, headers=headers).status_code == 200


def test_body_over_limit_is_413(settings: Settings, redis: redis_lib.Redis) -> None:
    client = create_app(settings.model_copy(update={"max_body_bytes": 1000})).test_client()
    body = b'{"a": "' + b"x" * 2000 + b'"}'
    resp = client.post(URL, data=body, headers=webhook_headers(body, "carts/create"))
    assert resp.status_code == 413
    assert resp.json == {"error": "body too large"}


def test_signed_body_that_is_not_a_json_object_is_400(client: FlaskClient) -> None:
    for body in (b"[1, 2]", b"not json", b'"text"'):
        resp = client.post(URL, data=body, headers=webhook_headers(body, "carts/create"))
        assert resp.status_code == 400, body
        assert resp.json == {"error": "body is not a JSON object"}


def test_content_type_must_be_json(client: FlaskClient) -> None:
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create")
    headers["Content-Type"] = "text/plain"
    assert client.post(URL, data=body, headers=headers).status_code == 415


def test_unhandled_topic_is_acknowledged_and_ignored(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = b'{"id": 1}'
    resp = client.post(URL, data=body, headers=webhook_headers(body, "collections/update"))
    assert resp.status_code == 200
    assert resp.json == {"ignored": True}
    assert inbound(redis) == []
    assert redis.hget(Keys(SHOP).stats, "webhooks:collections/update:ignored") == b"1"


def test_get_is_405_json(client: FlaskClient) -> None:
    resp = client.get(URL)
    assert resp.status_code == 405
    assert resp.json == {"error": "method not allowed"}


def test_redis_down_is_503_and_nothing_is_marked_seen(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    down = create_app(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    body = fixture_bytes("carts-create")
    headers = webhook_headers(body, "carts/create", webhook_id="retry-me")
    resp = down.test_client().post(URL, data=body, headers=headers)
    assert resp.status_code == 503
    assert "error" in (resp.json or {})
    # Shopify's retry reaches a healthy bridge and is accepted, not taken for a duplicate.
    up = create_app(settings).test_client()
    assert up.post(URL, data=body, headers=headers).json == {"ok": True}


def test_health_and_readiness(client: FlaskClient, settings: Settings) -> None:
    assert client.get("/healthz").json == {"ok": True}
    assert client.get("/readyz").json == {"ok": True}
    down = create_app(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    assert down.test_client().get("/readyz").status_code == 503
    assert down.test_client().get("/healthz").status_code == 200


def test_internal_backfill_topics_are_ignored_at_the_edge(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture_bytes("orders-paid")
    resp = client.post(URL, data=body, headers=webhook_headers(body, "backfill/order"))
    assert resp.status_code == 200
    assert resp.json == {"ignored": True}
    assert inbound(redis) == []


def test_an_unexpected_error_is_a_short_500_and_nothing_is_acknowledged(
    settings: Settings, redis: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings)
    ingest = app.extensions["cartbridge"]

    def broken(env: Envelope) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingest.store, "accept", broken)
    body = fixture_bytes("carts-create")
    resp = app.test_client().post(URL, data=body, headers=webhook_headers(body, "carts/create"))
    assert (resp.status_code, resp.json) == (500, {"error": "internal error"})
    assert inbound(redis) == []
