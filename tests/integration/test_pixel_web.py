"""POST /pixel against a real Redis: the documented checks in their order, CORS, hostile bodies,
rate limits in the queueing round trip, and what is (and is not) queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from flask.testing import FlaskClient

from bridge.config.settings import Settings
from bridge.store.keys import REJECTED_KEY, Keys
from bridge.store.wire import Envelope
from bridge.web.app import create_app
from bridge.web.pixel import PixelEndpoint
from tests import pixel_events as px
from tests.conftest import SHOP, fixture_bytes, webhook_headers

K = Keys(SHOP)
PLAIN = {"Content-Type": "text/plain;charset=UTF-8"}  # what a fetch with a string body sends


@pytest.fixture
def pixel_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"shopify_shop": SHOP})


@pytest.fixture
def client(pixel_settings: Settings) -> Iterator[FlaskClient]:
    app = create_app(pixel_settings)
    yield app.test_client()


def post(client: FlaskClient, data: bytes, **headers: str) -> Any:
    return client.post("/pixel", data=data, headers={**PLAIN, **headers})


def queued(redis: redis_lib.Redis) -> list[Envelope]:
    return [Envelope.decode(raw) for raw in redis.lrange(K.inbound, 0, -1)]


def test_an_event_is_queued_in_one_round_trip_and_answered_204_with_cors(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    ev = px.event()
    r = post(client, px.raw(ev))
    assert r.status_code == 204 and r.data == b""
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers
    (env,) = queued(redis)
    assert (env.shop, env.topic, env.webhook_id) == (SHOP, "pixel/product_viewed", ev["id"])
    body = json.loads(env.body)
    # The browser's details are not kept; the page's address is.
    assert body["event"]["context"] == {
        "document": {"location": {"href": f"https://{SHOP}/products/trail-shoe"}}
    }
    assert body["event"]["data"] == ev["data"]
    assert redis.get(K.drain_flag) is not None
    assert not redis.keys(K.seen("*"))


def test_a_preflight_is_answered_though_the_pixel_sends_none(client: FlaskClient) -> None:
    r = client.options("/pixel", headers={"Origin": "null"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Methods"] == "POST"
    assert r.headers["Access-Control-Allow-Headers"] == "Content-Type"
    # A pixel that did set application/json is parsed alike.
    ok = post(client, px.raw(px.event()), **{"Content-Type": "application/json"})
    assert ok.status_code == 204


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"{not json", 400, "body is not JSON"),
        (b"", 400, "body is not JSON"),
        (b"[1, 2]", 400, "body is not a JSON object"),
        (b'{"shop": null, "event": null}', 400, "missing shop"),
        (px.raw({**px.event(), "name": "page_viewed"}), 422, "event not collected"),
        (px.raw(px.event(), shop="stranger.myshopify.com"), 403, "unknown shop"),
        (
            b'{"shop": "%s", "event": {"name": "product_viewed"}}' % SHOP.encode(),
            400,
            "missing or malformed event id",
        ),
        (b"\xff\xfe{}", 400, "body is not JSON"),
        # A lone surrogate is valid JSON: it becomes U+FFFD, which no clientId may hold.
        (
            px.raw(px.event(client_id="x")).replace(b'"x"', b'"\\ud800"'),
            400,
            "missing or malformed clientId",
        ),
        (px.raw({**px.event(), "id": 10**40}), 400, "missing or malformed event id"),
        (px.raw({**px.event(), "timestamp": None}), 400, "missing or malformed timestamp"),
        (
            b'{"shop": "%s", "event": {"name": "product_viewed", "id": 1e999}}' % SHOP.encode(),
            400,
            "missing or malformed event id",
        ),
        (b"[" * 100_00 + b"]" * 100_00, 400, "body nested too deeply"),
        # Deep, yet within what orjson parses (1024), then kept for the stdlib by a huge
        # integer: the stdlib's parse and the re-serialisation of the queued body recurse.
        (px.deep_raw(990, b"1" * 31), 400, "body nested too deeply"),
        (px.deep_raw(31, b"1"), 400, "body nested too deeply"),  # 33 with body and event
    ],
)
def test_bad_bodies_get_a_specific_answer_and_nothing_is_queued(
    client: FlaskClient, redis: redis_lib.Redis, data: bytes, status: int, error: str
) -> None:
    r = post(client, data)
    assert r.status_code == status
    assert r.get_json() == {"error": error}
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert queued(redis) == []


def test_a_body_as_deep_as_a_real_event_may_be_is_taken(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    # The body and event objects are two levels: data may nest 30 more, brackets in strings
    # and escaped quotes do not count.
    deep = px.nested(30, '[[[{{{\\"[[[[' * 20)
    assert post(client, px.raw(px.event(data=deep))).status_code == 204
    assert len(queued(redis)) == 1


def test_other_methods_and_oversized_bodies(client: FlaskClient, redis: redis_lib.Redis) -> None:
    assert client.get("/pixel").status_code == 405
    big = px.event(data={"productVariant": px.variant(), "pad": "x" * 70_000})
    r = post(client, px.raw(big))
    assert r.status_code == 413 and r.get_json() == {"error": "body too large"}
    assert queued(redis) == []


def test_hostile_values_are_queued_and_mapped_never_a_500(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    raw = (
        b'{"shop": "%s", "cart_token": null, "event": {"id": "e1", "name": "product_viewed",'
        b' "clientId": "c1", "timestamp": "2024-01-01T00:00:00Z", "context": null,'
        b' "data": {"productVariant": {"id": 1234567890123456789012345678901234567890,'
        b' "title": "\\udc00", "price": {"amount": 1e999}, "product": null}}}}'
    ) % SHOP.encode()
    assert post(client, raw).status_code == 204
    nulls = px.event("cart_viewed", data=None)
    assert post(client, px.raw(nulls)).status_code == 204  # cart_viewed carries a null cart
    (env, *_) = queued(redis)
    assert "\\udc00" not in env.body.decode()  # stored as valid UTF-8 (U+FFFD)


def test_an_event_the_store_does_not_forward_is_not_queued_unless_it_links(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    assert post(client, px.raw(px.event("collection_viewed"))).status_code == 204
    assert queued(redis) == []
    # With a cart token it may link the browser to a person: queued.
    assert post(client, px.raw(px.event("collection_viewed"), cart_token="T1")).status_code == 204
    (env,) = queued(redis)
    assert json.loads(env.body)["cart_token"] == "T1"


def test_rate_limits_per_ip_and_per_browser(
    pixel_settings: Settings, redis: redis_lib.Redis
) -> None:
    s = pixel_settings.model_copy(
        update={"pixel_ip_limit_per_min": 5, "pixel_client_limit_per_min": 3}
    )
    client = create_app(s).test_client()
    statuses = [post(client, px.raw(px.event(client_id="one"))).status_code for _ in range(5)]
    # The third request reached the browser's limit: the ones after are refused without Redis.
    assert statuses == [204, 204, 204, 429, 429]
    r = post(client, px.raw(px.event(client_id="one")))
    assert r.get_json() == {"error": "too many requests from this browser"}
    assert len(queued(redis)) == 3
    # Another browser from the same address: two more reach the address's limit of 5.
    other = [post(client, px.raw(px.event(client_id=f"b{i}"))).status_code for i in range(4)]
    assert other == [204, 204, 429, 429]
    assert post(client, px.raw(px.event(client_id="z"))).get_json() == {
        "error": "too many requests from this address"
    }
    # Another address (a proxy hop) is not limited.
    proxied = s.model_copy(update={"pixel_proxy_hops": 1})
    via = create_app(proxied).test_client()
    r = via.post(
        "/pixel",
        data=px.raw(px.event(client_id="fresh")),
        headers={**PLAIN, "X-Forwarded-For": "203.0.113.9"},
    )
    assert r.status_code == 204
    (limits,) = redis.keys(K.prefix + "px:rl:*")
    assert 0 < redis.ttl(limits) <= 120
    fields = [f.decode() for f in redis.hkeys(limits) if f != b"shop"]
    assert all(not f.split(":", 1)[1].startswith("127.") for f in fields)  # hashed


def test_a_shops_cap_refuses_its_flood_counted_in_the_queueing_round_trip(
    pixel_settings: Settings, redis: redis_lib.Redis
) -> None:
    # Every request from another address and another browser: only the shop's cap can bite.
    s = pixel_settings.model_copy(update={"pixel_shop_limit_per_min": 4, "pixel_proxy_hops": 1})
    app = create_app(s)
    client = app.test_client()

    def from_browser(i: int) -> Any:
        raw = px.raw(px.event(client_id=f"flood-{i}"))
        return post(client, raw, **{"X-Forwarded-For": f"198.51.100.{i}"})

    assert from_browser(0).status_code == 204  # wakes a drain (an RQ enqueue): not measured
    reads = redis.info("stats")["total_reads_processed"]
    assert from_browser(1).status_code == 204
    # One read for the request's whole round trip (shop count included), one for INFO itself.
    assert redis.info("stats")["total_reads_processed"] - reads == 2
    statuses = [from_browser(i).status_code for i in range(2, 6)]
    assert statuses == [204, 204, 429, 429]  # the 4th reached the cap: the rest refused
    r = from_browser(9)
    assert r.get_json() == {"error": "too many requests for this shop"}
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert len(queued(redis)) == 4
    (limits,) = redis.keys(K.prefix + "px:rl:*")
    assert redis.hget(limits, "shop") == b"4"  # refused requests cost Redis nothing
    # Signed webhooks are never limited by it.
    order = fixture_bytes("orders-create")
    hook = client.post(
        "/webhooks/shopify", data=order, headers=webhook_headers(order, "orders/create")
    )
    assert hook.status_code == 200
    # Refusals are counted in process until the next round trip (none here: flush them).
    endpoint = app.wsgi_app
    assert isinstance(endpoint, PixelEndpoint)
    endpoint.services.store.add_counts(endpoint.counts.take())
    stats = redis.hgetall(K.stats)
    assert stats[b"browse:product_viewed:refused_shop_limited"] == b"3"


def test_refusals_are_counted_without_a_round_trip_each(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    for _ in range(3):
        post(client, px.raw({**px.event(), "name": "page_viewed"}))
    post(client, px.raw(px.event(), shop="stranger.myshopify.com"))
    assert redis.hgetall(REJECTED_KEY) == {}  # kept in process...
    post(client, px.raw(px.event()))  # ... and written with the next queued event
    rejected = redis.hgetall(REJECTED_KEY)
    assert rejected[b"browse:other:refused_malformed"] == b"3"
    assert rejected[b"browse:product_viewed:refused_unknown_shop"] == b"1"
    assert not redis.keys("cb:{stranger.myshopify.com}*")


def test_redis_down_is_503_and_nothing_claims_acceptance(
    pixel_settings: Settings,
) -> None:
    s = pixel_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    r = create_app(s).test_client().post("/pixel", data=px.raw(px.event()), headers=PLAIN)
    assert r.status_code == 503 and r.get_json() == {"error": "queue unavailable"}


def test_a_signed_webhook_cannot_inject_a_pixel_topic(
    client: FlaskClient, redis: redis_lib.Redis
) -> None:
    raw = px.raw(px.event())
    r = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, "pixel/x"))
    assert r.get_json() == {"ignored": True}
    assert queued(redis) == []


def test_a_shop_of_the_default_store_other_than_its_own_is_unknown(
    settings: Settings, redis: redis_lib.Redis
) -> None:
    # Without SHOPIFY_SHOP the default store names no shop of its own: pixels are refused.
    client = create_app(settings).test_client()
    assert post(client, px.raw(px.event())).status_code == 403


def test_the_policy_is_counted_in_metrics(pixel_settings: Settings, redis: redis_lib.Redis) -> None:
    from bridge.services import Services
    from bridge.worker.drain import drain

    s = pixel_settings.model_copy(update={"metrics_public": True})
    client = create_app(s).test_client()
    viewed = px.event(event_id="v1")
    for ev in (viewed, viewed, px.event(client_id="other")):
        assert post(client, px.raw(ev)).status_code == 204
    post(client, px.raw({**px.event(), "name": "page_viewed"}))
    drain(Services.build(s), SHOP)
    text = client.get("/metrics").get_data(as_text=True)
    for line in (
        f'cartbridge_browse_total{{name="product_viewed",outcome="received",shop="{SHOP}"}} 3.0',
        f'cartbridge_browse_total{{name="product_viewed",outcome="forwarded",shop="{SHOP}"}} 2.0',
        f'cartbridge_browse_total{{name="product_viewed",outcome="duplicate",shop="{SHOP}"}} 1.0',
    ):
        assert line in text, line


def test_an_erasure_forgets_the_link_between_a_browser_and_the_customer(
    pixel_settings: Settings, redis: redis_lib.Redis
) -> None:
    from bridge.identity.browse import client_name
    from bridge.ids import client_anonymous_id
    from bridge.services import Services
    from bridge.worker.drain import drain
    from tests.conftest import fixture_bytes, fixture_json
    from tests.journeys import CART, CUSTOMER_ID, EMAIL

    client = create_app(pixel_settings).test_client()
    services = Services.build(pixel_settings)
    assert post(client, px.raw(px.event(client_id="shopper"), cart_token=CART)).status_code == 204
    order = fixture_bytes("orders-create")
    r = client.post(
        "/webhooks/shopify", data=order, headers=webhook_headers(order, "orders/create")
    )
    assert r.status_code == 200
    drain(services, SHOP)
    record = K.state(client_name(client_anonymous_id(SHOP, "shopper")))
    assert json.loads(redis.get(record))["user"] == CUSTOMER_ID
    redact = fixture_json("customers-redact")
    redact["customer"] = {"id": int(CUSTOMER_ID), "email": EMAIL, "phone": None}
    redact["orders_to_redact"] = []
    raw = json.dumps(redact).encode()
    r = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, "customers/redact"))
    assert r.status_code == 200
    drain(services, SHOP)
    assert redis.get(record) is None


def test_forged_browsers_and_tokens_leave_short_names_that_expire(
    pixel_settings: Settings, redis: redis_lib.Redis
) -> None:
    """Anyone can post endless made-up clientIds and cart tokens: each leaves records named by
    a 12-hex digest (never the id itself), kept only as long as the policy needs them."""
    from bridge.services import Services
    from bridge.worker.drain import drain

    client = create_app(pixel_settings).test_client()
    services = Services.build(pixel_settings)
    forged = 150
    for i in range(forged):
        ev = px.event(client_id=f"forged-{i:04d}-" + "c" * 100)
        assert post(client, px.raw(ev, cart_token=f"t{i:04d}" + "x" * 190)).status_code == 204
    for _ in range(20):
        if not redis.llen(K.inbound):
            break
        drain(services, SHOP)
    assert redis.llen(K.inbound) == 0
    browsers = redis.keys(K.state("client:*"))
    claims = redis.keys(K.state("claim:cart:*"))
    assert len(browsers) == len(claims) == forged
    for key in browsers + claims:
        assert len(key.decode().rsplit(":", 1)[1]) == 12
    # Never linked: kept for the view window (6 h by default), not the 30 days of a person's.
    assert all(0 < redis.ttl(key) <= 6 * 3600 for key in browsers)
    # Claimed, never confirmed by a signed webhook: an hour.
    assert all(0 < redis.ttl(key) <= 3600 for key in claims)
    # Nothing else under the shop's state grows with the number of forged browsers.
    assert len(redis.keys(K.state("*"))) - 2 * forged < 5


# Values a browser (or a forger) can put anywhere: raw JSON, so the parser sees them as sent.
HOSTILE = [
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-1e999",
    b"123456789012345678901234567890123456789012345678901234567890",
    b"1.5e-400",
    b'"\\ud800"',
    b'"\\udfff\\ud800x"',
    b'"\\u0000"',
    b'""',
    b'"' + b"\\u20ac" * 3000 + b'"',
    b"[]",
    b"{}",
    b'[null, "\\ud83d", 1e999, {"id": null}]',
    b'{"id": "\\ud800", "product": 1e999, "price": {"amount": "NaN"}}',
]
# Where they go: every field the collector or the mapping reads.
PATHS = [
    ("shop",),
    ("cart_token",),
    ("event", "id"),
    ("event", "clientId"),
    ("event", "timestamp"),
    ("event", "data"),
    ("event", "context"),
    ("event", "context", "document", "location", "href"),
    ("event", "data", "productVariant"),
    ("event", "data", "productVariant", "id"),
    ("event", "data", "productVariant", "title"),
    ("event", "data", "productVariant", "price"),
    ("event", "data", "productVariant", "price", "amount"),
    ("event", "data", "productVariant", "price", "currencyCode"),
    ("event", "data", "productVariant", "product"),
    ("event", "data", "productVariant", "product", "id"),
    ("event", "data", "productVariant", "product", "url"),
    ("event", "data", "productVariant", "product", "vendor"),
]


def hostile_body(path: tuple[str, ...], value: bytes, n: int) -> bytes:
    body = px.body(px.event(client_id=f"hostile-{n}", event_id=f"h-{n}"), cart_token=f"T-{n}")
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "@@HOSTILE@@"
    return json.dumps(body).encode().replace(b'"@@HOSTILE@@"', value)


def test_hostile_values_anywhere_never_500_nor_fail_the_drain(
    pixel_settings: Settings, redis: redis_lib.Redis
) -> None:
    from bridge.services import Services
    from bridge.worker.drain import drain

    client = create_app(pixel_settings).test_client()
    statuses: dict[int, int] = {}
    n = 0
    for path in PATHS:
        for value in HOSTILE:
            n += 1
            r = post(client, hostile_body(path, value, n))
            assert r.status_code in (204, 400, 403, 422), (path, value[:40], r.status_code)
            assert r.data == b"" or set(r.get_json()) == {"error"}
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses[204] > 100 and statuses[400] > 30  # both kinds were exercised
    # Signed webhooks naming the same carts and checkouts with hostile tokens (they look up
    # the browsers' claims): taken, never a 500.
    for i, token in enumerate(HOSTILE[:12]):
        raw = b'{"id": %d, "token": %s, "line_items": []}' % (900 + i, token)
        r = client.post("/webhooks/shopify", data=raw, headers=webhook_headers(raw, "carts/update"))
        assert r.status_code in (200, 400), (token[:40], r.status_code)
    services = Services.build(pixel_settings)
    for _ in range(50):
        if not redis.llen(K.inbound):
            break
        drain(services, SHOP)
    assert redis.llen(K.inbound) == 0
    # Every queued browse event was mapped and decided: none failed into a dead letter.
    stats = {k.decode(): int(v) for k, v in redis.hgetall(K.stats).items()}
    parked = {k: v for k, v in stats.items() if k.startswith("webhooks:pixel/") and "parked" in k}
    assert parked == {}
    assert stats["browse:product_viewed:forwarded"] > 50
    # A signed cart whose token is not a string is a schema surprise, parked as such (its
    # dead letter says why); every other one was processed.
    carts = stats["webhooks:carts/update:processed"] + stats["webhooks:carts/update:parked"]
    assert carts == 12 and stats["webhooks:carts/update:parked"] == 5
