"""POST /webhooks/recharge through the real app on a private Redis: both signature schemes, the
48-hour window, the shop parameter's rules, the documented check order, the queue (one round
trip, duplicates, Redis down), and a queued webhook drained and mapped. Signatures are computed
here from Recharge's documented construction (hmac, hashlib), never with the bridge's code."""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from flask.testing import FlaskClient
from pydantic import SecretStr

from bridge.config.settings import Settings
from bridge.delivery.deadletters import DeadLetters
from bridge.services import Services
from bridge.store.facade import Keys, Store
from bridge.store.keys import REJECTED_KEY
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.web.webhooks import accepts_from_shopify
from bridge.worker.drain import drain
from tests.conftest import (
    ROOT,
    SECRET,
    SHOP,
    free_port,
    service_env,
    start_worker,
    wait_until,
    webhook_headers,
)
from tests.pipelines_standin import PipelinesStandIn

RC_SECRET = "rc-client-secret-0123"
FIXTURES = ROOT / "tests" / "fixtures" / "recharge"
K = Keys(SHOP)
HOUR = 3600
URL = "/webhooks/recharge"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def timestamped(body: bytes, *, age_s: int = 0, secret: str = RC_SECRET) -> dict[str, str]:
    t = int(time.time()) - age_s
    v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Recharge-Webhook-Timestamp": str(t),
        "X-Recharge-Webhook-Signature": f"t={t},v1={v1}",
    }


def legacy(body: bytes, *, secret: str = RC_SECRET) -> dict[str, str]:
    digest = hashlib.sha256(secret.encode() + body).hexdigest()
    return {"Content-Type": "application/json", "X-Recharge-Hmac-Sha256": digest}


@pytest.fixture
def rc_settings(settings: Settings) -> Settings:
    """The default store (SHOPIFY_WEBHOOK_SECRET) with a Recharge secret, named by SHOPIFY_SHOP."""
    return settings.model_copy(
        update={"recharge_client_secret": SecretStr(RC_SECRET), "shopify_shop": SHOP}
    )


@pytest.fixture
def client(rc_settings: Settings) -> FlaskClient:
    return create_app(rc_settings).test_client()


@pytest.fixture
def rt(rc_settings: Settings) -> Services:
    return Services.build(rc_settings)


def queued(redis: redis_lib.Redis, keys: Keys = K) -> list[Envelope]:
    return [Envelope.decode(raw) for raw in redis.lrange(keys.inbound, 0, -1)]


def stats(redis: redis_lib.Redis, keys: Keys = K) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.stats).items()}


def rejected(redis: redis_lib.Redis) -> dict[str, int]:
    """Rejections counted anywhere: the shop's stats once it is known, else the global hash."""
    out = {k.decode(): int(v) for k, v in redis.hgetall(REJECTED_KEY).items()}
    for name, n in stats(redis).items():
        out[name] = out.get(name, 0) + n
    return out


def post(
    client: FlaskClient, path: str, body: bytes, headers: dict[str, str], shop: str | None = SHOP
) -> tuple[int, Any]:
    query = {"shop": shop} if shop is not None else None
    resp = client.post(path, data=body, headers=headers, query_string=query)
    return resp.status_code, resp.json


# --- signatures -----------------------------------------------------------------------------


def test_a_timestamped_signature_is_queued_as_a_recharge_envelope(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture("subscription-cancelled")
    headers = timestamped(body)
    assert post(client, f"{URL}/subscription/cancelled", body, headers) == (200, {"ok": True})
    [env] = queued(redis)
    topic = "recharge/subscription/cancelled"
    expected_id = "recharge-" + hashlib.sha256(topic.encode() + b"\n" + body).hexdigest()
    t = int(headers["X-Recharge-Webhook-Timestamp"])
    assert (env.shop, env.topic, env.webhook_id, env.body) == (SHOP, topic, expected_id, body)
    assert env.triggered_at is not None
    assert datetime.fromisoformat(env.triggered_at) == datetime.fromtimestamp(t, UTC)
    assert env.received_ms > 0
    # Written by the web process within a second (store/tally.py).
    assert wait_until(lambda: stats(redis).get(f"webhooks:{topic}:accepted") == 1)


def test_the_legacy_header_is_accepted(client: FlaskClient, redis: redis_lib.Redis) -> None:
    body = fixture("charge-failed")
    assert post(client, f"{URL}/charge/failed", body, legacy(body)) == (200, {"ok": True})
    [env] = queued(redis)
    assert env.topic == "recharge/charge/failed" and env.triggered_at is None


@pytest.mark.parametrize(
    ("headers_of", "reason"),
    [
        (lambda b: timestamped(b, age_s=49 * HOUR), "expired"),
        (lambda b: timestamped(b, age_s=-10 * 60), "expired"),  # 10 minutes ahead
        (lambda b: timestamped(b, secret="wrong"), "bad_signature"),
        (lambda b: legacy(b, secret="wrong"), "bad_signature"),
        (lambda b: {"Content-Type": "application/json"}, "bad_signature"),
        # The Shopify secret does not sign Recharge webhooks.
        (lambda b: timestamped(b, secret=SECRET), "bad_signature"),
    ],
    ids=["49h-old", "ahead", "wrong-secret", "wrong-legacy", "unsigned", "shopify-secret"],
)
def test_refused_signatures_are_one_401_and_counted(
    client: FlaskClient, redis: redis_lib.Redis, headers_of: Any, reason: str
) -> None:
    body = fixture("charge-failed")
    assert post(client, f"{URL}/charge/failed", body, headers_of(body)) == (
        401,
        {"error": "invalid signature"},
    )
    assert queued(redis) == []
    assert rejected(redis) == {f"webhooks:recharge/charge/failed:{reason}": 1}


def test_47_hours_old_is_still_accepted(client: FlaskClient, redis: redis_lib.Redis) -> None:
    body = fixture("charge-failed")
    headers = timestamped(body, age_s=47 * HOUR)
    assert post(client, f"{URL}/charge/failed", body, headers) == (200, {"ok": True})


def test_a_failing_timestamped_signature_never_falls_back_to_the_legacy_header(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture("charge-failed")
    headers = {**timestamped(body, age_s=49 * HOUR), **legacy(body)}
    assert post(client, f"{URL}/charge/failed", body, headers)[0] == 401


@pytest.fixture
def file_client(settings: Settings, tmp_path: Path) -> FlaskClient:
    """A stores file serving two shops (one without a Recharge secret), and no default store."""
    stores = tmp_path / "stores.toml"
    stores.write_text(
        f'[stores."{SHOP}"]\nwebhook_secret = "{SECRET}"\nrecharge_client_secret = "{RC_SECRET}"\n'
        f'[stores."other.myshopify.com"]\nwebhook_secret = "{SECRET}"\n'
    )
    return create_app(
        settings.model_copy(
            update={
                "bridge_stores_file": str(stores),
                "shopify_webhook_secret": SecretStr(""),
                "recharge_client_secret": SecretStr(RC_SECRET),  # not the file stores'
                "identity_hash_key": SecretStr("recharge-test-identity-key"),
            }
        )
    ).test_client()


def test_unknown_shops_and_shops_without_a_secret_get_the_same_401(
    file_client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = fixture("charge-failed")
    path = f"{URL}/charge/failed"
    signed = timestamped(body)
    assert post(file_client, path, body, signed) == (200, {"ok": True})
    refused = (401, {"error": "invalid signature"})
    assert post(file_client, path, body, signed, shop="unknown.myshopify.com") == refused
    assert post(file_client, path, body, signed, shop="other.myshopify.com") == refused
    counted = rejected(redis) | stats(redis, Keys("other.myshopify.com"))
    assert counted["webhooks:recharge/charge/failed:unknown_shop"] == 1
    assert counted["webhooks:recharge/charge/failed:no_secret"] == 1


def test_the_default_stores_recharge_secret_vouches_for_its_own_shop_only(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    # `?shop=` is not signed: one captured body must not be replayable into any other shop.
    body = fixture("subscription-created")
    path = f"{URL}/subscription/created"
    signed = timestamped(body)
    refused = (401, {"error": "invalid signature"})
    for victim in ("victim-1.myshopify.com", "victim-2.myshopify.com"):
        assert post(client, path, body, signed, shop=victim) == refused
        assert redis.llen(Keys(victim).inbound) == 0
    assert rejected(redis)["webhooks:recharge/subscription/created:unknown_shop"] == 2
    assert post(client, path, body, signed) == (200, {"ok": True})  # SHOPIFY_SHOP's


def test_without_shopify_shop_the_default_store_takes_no_recharge_webhook(
    rc_settings: Settings, redis: redis_lib.Redis
) -> None:
    unnamed = create_app(rc_settings.model_copy(update={"shopify_shop": ""})).test_client()
    body = fixture("subscription-created")
    refused = (401, {"error": "invalid signature"})
    assert post(unnamed, f"{URL}/subscription/created", body, timestamped(body)) == refused


# --- the shop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"shop": "not a domain"},
        {"shop": "shop}{x.myshopify.com"},
        {"shop": "a" * 250 + ".myshopify.com"},
        {"shop": ""},
        [("shop", SHOP), ("shop", "other.myshopify.com")],
    ],
    ids=["spaces", "braces", "too-long", "empty", "twice"],
)
def test_a_malformed_shop_parameter_is_400(
    client: FlaskClient, redis: redis_lib.Redis, query: Any
) -> None:
    body = fixture("charge-failed")
    resp = client.post(
        f"{URL}/charge/failed", data=body, headers=timestamped(body), query_string=query
    )
    assert (resp.status_code, resp.json) == (400, {"error": "malformed shop parameter"})
    assert queued(redis) == []
    assert rejected(redis) == {"webhooks:recharge/charge/failed:malformed": 1}


def test_the_shop_parameter_is_lower_cased(client: FlaskClient, redis: redis_lib.Redis) -> None:
    body = fixture("charge-failed")
    headers = timestamped(body)
    assert post(client, f"{URL}/charge/failed", body, headers, shop=SHOP.upper())[0] == 200
    assert [e.shop for e in queued(redis)] == [SHOP]


def test_the_shop_may_be_left_out_when_one_store_is_served(
    client: FlaskClient, file_client: FlaskClient, settings: Settings, redis: redis_lib.Redis
) -> None:
    body = fixture("charge-failed")
    path = f"{URL}/charge/failed"
    # The default store named by SHOPIFY_SHOP.
    assert post(client, path, body, timestamped(body), shop=None) == (200, {"ok": True})
    assert [e.shop for e in queued(redis)] == [SHOP]
    # The default store without SHOPIFY_SHOP has no shop of its own.
    unnamed = settings.model_copy(update={"recharge_client_secret": SecretStr(RC_SECRET)})
    answer = post(create_app(unnamed).test_client(), path, body, timestamped(body), shop=None)
    assert answer == (400, {"error": "missing shop parameter"})
    # Two stores in the file.
    assert post(file_client, path, body, timestamped(body), shop=None) == answer


def test_the_stores_files_only_store_needs_no_shop_parameter(
    settings: Settings, tmp_path: Path, redis: redis_lib.Redis
) -> None:
    stores = tmp_path / "stores.toml"
    stores.write_text(
        f'[stores."{SHOP}"]\nwebhook_secret = "{SECRET}"\nrecharge_client_secret = "{RC_SECRET}"\n'
    )
    one = settings.model_copy(
        update={
            "bridge_stores_file": str(stores),
            "shopify_webhook_secret": SecretStr(""),
            "identity_hash_key": SecretStr("recharge-test-identity-key"),
        }
    )
    body = fixture("charge-failed")
    client = create_app(one).test_client()
    assert post(client, f"{URL}/charge/failed", body, timestamped(body), shop=None)[0] == 200
    assert [e.shop for e in queued(redis)] == [SHOP]


# --- body and topic -------------------------------------------------------------------------


def test_too_large_is_413_and_read_no_further(
    rc_settings: Settings, redis: redis_lib.Redis
) -> None:
    small = create_app(rc_settings.model_copy(update={"max_body_bytes": 1024})).test_client()
    body = b'{"charge": {"note": "' + b"x" * 2000 + b'"}}'
    assert post(small, f"{URL}/charge/failed", body, timestamped(body)) == (
        413,
        {"error": "body too large"},
    )
    assert rejected(redis) == {"webhooks:recharge/charge/failed:too_large": 1}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"charge"', b"null", b"{not json", b""])
def test_a_body_that_is_not_a_json_object_is_400(
    client: FlaskClient, redis: redis_lib.Redis, body: bytes
) -> None:
    assert post(client, f"{URL}/charge/failed", body, timestamped(body)) == (
        400,
        {"error": "body is not a JSON object"},
    )
    assert stats(redis)["webhooks:recharge/charge/failed:rejected"] == 1


@pytest.mark.parametrize(
    ("path", "headers", "body", "topic"),
    [
        (URL, {}, {"charge": {"id": 1, "status": "error"}}, "recharge/charge/failed"),
        (URL, {}, {"charge": {"id": 1, "status": "success"}}, "recharge/charge/paid"),
        (
            URL,
            {},
            {"subscription": {"id": 1}, "customer": {"id": 2}},
            "recharge/subscription/updated",
        ),
        (URL, {}, {"customer": {"id": 2}}, "recharge/customer/updated"),
        (
            URL,
            {"X-Recharge-Topic": "subscription/paused"},
            {"subscription": {"id": 1}},
            "recharge/subscription/paused",
        ),
        # A malformed (unverified) topic header is not used: the wrapper key is.
        (
            URL,
            {"X-Recharge-Topic": "Subscription/Paused!"},
            {"subscription": {"id": 1}},
            "recharge/subscription/updated",
        ),
        # The registered path wins over both.
        (
            f"{URL}/subscription/cancelled",
            {"X-Recharge-Topic": "subscription/paused"},
            {"subscription": {"id": 1}},
            "recharge/subscription/cancelled",
        ),
    ],
)
def test_the_topic_comes_from_the_path_else_the_header_else_the_wrapper(
    client: FlaskClient,
    redis: redis_lib.Redis,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any],
    topic: str,
) -> None:
    raw = json.dumps(body).encode()
    assert post(client, path, raw, {**timestamped(raw), **headers}) == (200, {"ok": True})
    assert [e.topic for e in queued(redis)] == [topic]


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        (
            URL,
            {"addresses": [], "metafields": []},
            "topic unknowable: register the webhook's topic in its path",
        ),
        (URL, {}, "topic unknowable: register the webhook's topic in its path"),
        (f"{URL}/Charge/Failed", {"charge": {}}, "malformed topic in the path"),
        (f"{URL}/charge/fail-ed", {"charge": {}}, "malformed topic in the path"),
    ],
)
def test_an_unknowable_or_malformed_topic_is_400(
    client: FlaskClient, redis: redis_lib.Redis, path: str, body: dict[str, Any], answer: str
) -> None:
    raw = json.dumps(body).encode()
    assert post(client, path, raw, timestamped(raw)) == (400, {"error": answer})
    assert queued(redis) == []
    assert stats(redis) == {"webhooks:recharge/other:rejected": 1}


@pytest.mark.parametrize(
    ("path", "body", "label"),
    [
        (f"{URL}/order/created", {"order": {"id": 1}}, "recharge/order/created"),
        (f"{URL}/charge/upcoming", {"charge": {"id": 1}}, "recharge/charge/upcoming"),
        (f"{URL}/made_up/topic", {"order": {"id": 1}}, "recharge/other"),
        (URL, {"order": {"id": 1}}, "recharge/order/updated"),
        (URL, {"async_batch": {"id": 1}}, "recharge/other"),  # async_batch/updated: undocumented
        (URL, {"charge": {"id": 1, "status": "queued"}}, "recharge/charge/updated"),
    ],
)
def test_topics_not_mapped_are_acknowledged_and_ignored(
    client: FlaskClient, redis: redis_lib.Redis, path: str, body: dict[str, Any], label: str
) -> None:
    raw = json.dumps(body).encode()
    assert post(client, path, raw, timestamped(raw)) == (200, {"ignored": True})
    assert queued(redis) == []
    assert stats(redis) == {f"webhooks:{label}:ignored": 1}


def test_a_made_up_unsigned_topic_names_no_counter(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    body = b"{}"
    for path in (f"{URL}/x{i}/y" for i in range(3)):
        assert post(client, path, body, {})[0] == 401
    assert rejected(redis) == {"webhooks:recharge/other:bad_signature": 3}


def test_other_methods_are_405(client: FlaskClient) -> None:
    for path in (URL, f"{URL}/charge/failed"):
        resp = client.get(path, query_string={"shop": SHOP})
        assert (resp.status_code, resp.json) == (405, {"error": "method not allowed"})
        assert resp.headers["Allow"] == "POST"


def test_redis_down_is_503(rc_settings: Settings) -> None:
    down = rc_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    body = fixture("charge-failed")
    answer = post(create_app(down).test_client(), f"{URL}/charge/failed", body, timestamped(body))
    assert answer == (503, {"error": "queue unavailable, retry later"})


# --- the check order ------------------------------------------------------------------------

# Each check of web/recharge.py's docstring with a way to fail it, in its order.
CHECKS = ["method", "size", "shop", "signature", "json", "topic", "ignored"]
ANSWERS: dict[str, tuple[int, Any]] = {
    "method": (405, {"error": "method not allowed"}),
    "size": (413, {"error": "body too large"}),
    "shop": (400, {"error": "malformed shop parameter"}),
    "signature": (401, {"error": "invalid signature"}),
    "json": (400, {"error": "body is not a JSON object"}),
    "topic": (400, {"error": "topic unknowable: register the webhook's topic in its path"}),
    "ignored": (200, {"ignored": True}),
}


def send_failing(client: FlaskClient, broken: set[str]) -> tuple[int, Any]:
    body = b'{"order": {"id": 1}}' if "ignored" in broken else b'{"charge": {"id": 1}}'
    if "topic" in broken:
        body = b'{"addresses": []}'
    if "json" in broken:
        body = b"[1]"
    if "size" in broken:
        body = b" " * 5000 + body
    headers = timestamped(body, secret="wrong" if "signature" in broken else RC_SECRET)
    shop = "not a shop" if "shop" in broken else SHOP
    path = URL if {"topic", "ignored"} & broken else f"{URL}/charge/failed"
    method = client.put if "method" in broken else client.post
    resp = method(path, data=body, headers=headers, query_string={"shop": shop})
    return resp.status_code, resp.json


@pytest.fixture
def small_client(rc_settings: Settings) -> FlaskClient:
    return create_app(rc_settings.model_copy(update={"max_body_bytes": 4096})).test_client()


@pytest.mark.parametrize(("first", "second"), list(pairwise(CHECKS)))
def test_adjacent_failures_answer_with_the_earlier_check(
    small_client: FlaskClient, redis: redis_lib.Redis, first: str, second: str
) -> None:
    assert send_failing(small_client, {second}) == ANSWERS[second]
    assert send_failing(small_client, {first, second}) == ANSWERS[first]


@pytest.mark.parametrize("start", range(len(CHECKS)))
def test_every_tail_of_the_list_answers_with_its_head(
    small_client: FlaskClient, redis: redis_lib.Redis, start: int
) -> None:
    assert send_failing(small_client, set(CHECKS[start:])) == ANSWERS[CHECKS[start]]


# --- the Shopify route never takes a Recharge topic -----------------------------------------


@pytest.mark.parametrize(
    ("topic", "answer"),
    [
        # The topic header's pattern (one slash) refuses every Recharge envelope topic...
        ("recharge/subscription/cancelled", (400, {"error": "malformed header X-Shopify-Topic"})),
        ("recharge/charge/failed", (400, {"error": "malformed header X-Shopify-Topic"})),
        # ...and a one-slash "recharge/..." names no topic either source maps.
        ("recharge/subscription", (200, {"ignored": True})),
    ],
)
def test_the_shopify_route_never_queues_a_recharge_topic(
    client: FlaskClient, redis: redis_lib.Redis, topic: str, answer: tuple[int, Any]
) -> None:
    body = fixture("subscription-cancelled")
    resp = client.post("/webhooks/shopify", data=body, headers=webhook_headers(body, topic))
    assert (resp.status_code, resp.json) == answer
    assert queued(redis) == []


def test_a_shopify_signature_never_vouches_for_a_recharge_topic(rt: Services) -> None:
    # The check behind the pattern: should the header's pattern ever allow more slashes.
    assert rt.source.handles("recharge/charge/failed")
    assert not accepts_from_shopify(rt, "recharge/charge/failed")
    assert not accepts_from_shopify(rt, "recharge/subscription/cancelled")
    assert accepts_from_shopify(rt, "orders/paid")


# --- drained: deduplicated and mapped -------------------------------------------------------


def test_a_redelivery_after_processing_is_answered_duplicate(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture("subscription-created")
    path = f"{URL}/subscription/created"
    assert post(client, path, body, timestamped(body)) == (200, {"ok": True})
    # Recharge re-signs each try: a new timestamp, the same topic and body, the same id (a
    # duplicate as soon as the first copy is queued).
    assert post(client, path, body, legacy(body)) == (200, {"ok": True, "duplicate": True})
    drain(rt, SHOP)
    counters = stats(redis)
    assert counters["webhooks:recharge/subscription/created:processed"] == 1
    assert counters["webhooks:recharge/subscription/created:duplicate"] == 1
    again = post(client, path, body, timestamped(body, age_s=60))
    assert again == (200, {"ok": True, "duplicate": True})
    # The same body under another topic is another delivery.
    other = post(client, f"{URL}/subscription/updated", body, timestamped(body))
    assert other == (200, {"ok": True})


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("subscription/created", "subscription-created"),
        ("subscription/cancelled", "subscription-cancelled"),
        ("subscription/skipped", "subscription-skipped"),
        ("charge/paid", "charge-paid"),
        ("charge/failed", "charge-failed"),
        ("customer/updated", "customer-updated"),
    ],
)
def test_a_queued_recharge_webhook_is_drained_and_mapped(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis, path: str, name: str
) -> None:
    body = fixture(name)
    assert post(client, f"{URL}/{path}", body, timestamped(body)) == (200, {"ok": True})
    drain(rt, SHOP)
    counters = stats(redis)
    assert counters[f"webhooks:recharge/{path}:processed"] == 1
    assert f"webhooks:recharge/{path}:parked" not in counters
    assert redis.llen(K.inbound) == 0 and redis.llen(K.inbound_work) == 0


def test_a_body_whose_wrapper_does_not_match_its_topic_is_parked_with_the_reason(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    body = fixture("charge-failed")
    path = f"{URL}/subscription/cancelled"
    assert post(client, path, body, timestamped(body)) == (200, {"ok": True})
    drain(rt, SHOP)
    assert stats(redis)["webhooks:recharge/subscription/cancelled:parked"] == 1
    [letter] = list(DeadLetters(Store(redis)).iter(SHOP))
    assert letter.reason == "recharge/subscription/cancelled: body has no `subscription` object"


# --- through gunicorn and a worker ----------------------------------------------------------


def test_through_gunicorn_and_a_worker_a_recharge_customer_reaches_pipelines(
    rc_settings: Settings, pipelines: PipelinesStandIn
) -> None:
    port = free_port()
    env = service_env(
        rc_settings,
        PORT=str(port),
        WEB_CONCURRENCY="1",
        RECHARGE_CLIENT_SECRET=RC_SECRET,
        SHOPIFY_SHOP=SHOP,
    )
    web = subprocess.Popen(procfile_command("web"), env=env, cwd=ROOT)
    worker = start_worker(rc_settings)
    try:
        body = fixture("customer-updated")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{URL}/customer/updated",  # no ?shop=: SHOPIFY_SHOP's
            data=body,
            headers=timestamped(body),
            method="POST",
        )

        def accepted() -> bool:
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    return bool(json.loads(resp.read()) == {"ok": True})
            except OSError:
                return False

        assert wait_until(accepted, 20), "gunicorn did not take the webhook"
        assert pipelines.wait_for(1, 20), pipelines.calls
        [identify] = pipelines.calls
        assert identify["type"] == "identify"
        assert identify["userId"] == "6543210987654"  # the Shopify customer id
        assert identify["traits"]["email"] == "jane.doe@example.com"
        assert identify["traits"]["last_name"] == "Doe-Smith"
    finally:
        for proc in (web, worker):
            proc.terminate()
            proc.wait(40)


def procfile_command(name: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} in Procfile")


# --- the decisions, from signed Recharge webhooks ---------------------------------------------


def queued_calls(redis: redis_lib.Redis) -> list[dict[str, Any]]:
    from bridge.delivery.outbox import OutboxEntry

    return [json.loads(OutboxEntry.decode(e).call) for e in redis.lrange(K.outbox, 0, -1)]


def test_a_recharge_dunning_run_and_cancel_reach_the_shopify_person(
    client: FlaskClient, rt: Services, redis: redis_lib.Redis
) -> None:
    def send(path: str, name: str, **changes: Any) -> None:
        body = json.loads(fixture(name))
        resource = next(iter(body))
        body[resource].update(changes)
        raw = json.dumps(body).encode()
        assert post(client, f"{URL}/{path}", raw, timestamped(raw)) == (200, {"ok": True})
        drain(rt, SHOP)

    send("subscription/created", "subscription-created")
    send("charge/failed", "charge-failed", charge_attempts=1)
    send("charge/failed", "charge-failed", charge_attempts=2, updated_at="2026-11-03T10:00:00")
    send("charge/paid", "charge-paid")
    send("subscription/cancelled", "subscription-cancelled")
    calls = queued_calls(redis)
    tracked = [c for c in calls if c["type"] == "track"]
    assert [c["event"] for c in tracked] == [
        "subscription_created",
        "payment_failed",
        "payment_failed",
        "payment_recovered",
        "subscription_canceled",
    ]
    # Recharge's customer joined the Shopify customer through external_customer_id.
    assert {c["userId"] for c in calls} == {"6543210987654"}
    assert [c["properties"]["attempt_number"] for c in tracked[1:3]] == [1, 2]
    assert tracked[0]["properties"]["subscription_id"] == "27538470"
    assert tracked[0]["properties"]["provider"] == "recharge"
    statuses = [
        c["traits"]["subscription_status"]
        for c in calls
        if "subscription_status" in c.get("traits", {})
    ]
    assert statuses == ["active", "dunning", "active", "canceled"]
    # A redelivery of the cancel (Recharge retries; the same body dedupes on its hash).
    raw = fixture("subscription-cancelled")
    assert post(client, f"{URL}/subscription/cancelled", raw, timestamped(raw))[0] == 200
    drain(rt, SHOP)
    assert len(queued_calls(redis)) == len(calls)
