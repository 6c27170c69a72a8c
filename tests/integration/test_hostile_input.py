"""Hostile and messy input against the real app and a real Redis (hypothesis).

The app runs with TESTING on, so an unexpected exception propagates into the test and fails it:
nothing turns exceptions into 400s. Properties: no 5xx but 503 while Redis is down, answers are
one of a few short JSON bodies, no forgery is ever queued, and a signed body with wrong types is
parked with its reason without crashing the drain.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import signature
from bridge.config.settings import Settings
from bridge.delivery.deadletters import dlq_key
from bridge.jsonio import parse_body
from bridge.services import Services
from bridge.store.facade import REJECTED_KEY, Keys
from bridge.web.app import create_app
from bridge.web.webhooks import triggered_age_s
from bridge.worker.drain import drain
from tests.conftest import fixture_bytes, fixture_json, free_port, paths

URL = "/webhooks/shopify"
SHOP_A = "brand-a.myshopify.com"
SHOP_B = "brand-b.myshopify.com"
A_NEW, A_OLD, A_ADMIN, B_KEY = "a-new-secret", "a-old-secret", "a" * 64, "b-secret"
KEYS = {SHOP_A: [A_NEW, A_OLD, A_ADMIN], SHOP_B: [B_KEY]}
SECRETS = (A_NEW, A_OLD, A_ADMIN, B_KEY)
FIXTURE_TOPICS = {
    "carts/create": "carts-create",
    "checkouts/update": "checkouts-update",
    "orders/create": "orders-create",
    "orders/paid": "orders-paid",
    "refunds/create": "refunds-create",
    "customers/create": "customers-create",
    "customers/merge": "customers-merge",
    "customers/redact": "customers-redact",
    "customers/data_request": "customers-data-request",
}
HYP = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Every answer the endpoint may give (a body that is not one of these echoes something).
KNOWN_ANSWERS = {
    (200, b'{"ok":true}'),
    (200, b'{"ok":true,"duplicate":true}'),
    (200, b'{"ignored":true}'),
    (200, b'{"ignored":"stale"}'),
    (400, b'{"error":"body is not a JSON object"}'),
    (401, b'{"error":"invalid signature"}'),
    (405, b'{"error":"method not allowed"}'),
    (413, b'{"error":"body too large"}'),
    (415, b'{"error":"content type must be application/json"}'),
} | {
    (400, f'{{"error":"{kind} header {name}"}}'.encode())
    for kind in ("missing", "malformed")
    for name in ("X-Shopify-Shop-Domain", "X-Shopify-Topic", "X-Shopify-Webhook-Id")
}


def stores_file(tmp_path: Path) -> str:
    path = tmp_path / "stores.toml"
    path.write_text(
        f"""
[stores."{SHOP_A}"]
webhook_secrets = ["{A_NEW}", "{A_OLD}"]
admin_webhook_key = "{A_ADMIN}"
pipelines_write_key = "key-a"
currency = "EUR"
time_zone = "Europe/Berlin"

[stores."{SHOP_B}"]
webhook_secret = "{B_KEY}"
pipelines_write_key = "key-b"
pipelines_region = "eu"
"""
    )
    return str(path)


@pytest.fixture
def multi(settings: Settings, tmp_path: Path) -> Settings:
    """Two stores from a file, no single-store secret: any other shop is unknown."""
    return settings.model_copy(
        update={
            "shopify_webhook_secret": settings.shopify_webhook_secret.__class__(""),
            "bridge_stores_file": stores_file(tmp_path),
            "max_body_bytes": 64 * 1024,
        }
    )


@pytest.fixture
def app(multi: Settings) -> Flask:
    app = create_app(multi)
    app.config["TESTING"] = True  # exceptions propagate: an unexpected one fails the test
    return app


def now_header(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signed(body: bytes, topic: str, shop: str = SHOP_A, key: str = A_NEW) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-Webhook-Id": base64.b32encode(body[:20] + topic.encode()).decode()[:40]
        + str(time.monotonic_ns()),
        "X-Shopify-Triggered-At": now_header(),
        "X-Shopify-Hmac-Sha256": signature.sign(body, key.encode()),
    }


def queued(redis: redis_lib.Redis) -> int:
    return sum(int(redis.llen(Keys(s).inbound)) for s in (SHOP_A, SHOP_B))


def check_answer(status: int, data: bytes, body: bytes) -> None:
    assert (status, data) in KNOWN_ANSWERS, (status, data)
    for secret in SECRETS:
        assert secret.encode() not in data


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
names = st.sampled_from(
    [
        "X-Shopify-Topic",
        "X-Shopify-Shop-Domain",
        "X-Shopify-Webhook-Id",
        "X-Shopify-Hmac-Sha256",
        "X-Shopify-Triggered-At",
        "X-Shopify-API-Version",
        "X-Shopify-Event-Id",
        "Content-Type",
        "X-Request-Id",
    ]
)
case = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])
plausible = st.one_of(
    header_text,
    st.sampled_from(
        [SHOP_A, SHOP_B, "unknown.myshopify.com", *FIXTURE_TOPICS, "application/json", "x{y}:z"]
    ),
    st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
)
bodies = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from([fixture_bytes(n) for n in FIXTURE_TOPICS.values()]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
)


@HYP
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "PATCH", "DELETE"]),
    headers=st.lists(st.tuples(names, case, plausible), max_size=10),
    body=bodies,
)
def test_unsigned_requests_of_any_shape_are_refused_without_a_5xx(
    app: Flask, redis: redis_lib.Redis, method: str, headers: list[Any], body: bytes
) -> None:
    sent = {how(name): value for name, how, value in headers}
    resp = app.test_client().open(URL, method=method, data=body, headers=sent)
    check_answer(resp.status_code, resp.data, body)
    assert resp.status_code != 200  # nobody without a key gets anything accepted
    assert queued(redis) == 0


@HYP
@given(
    shop=st.sampled_from([SHOP_A, SHOP_B]),
    key_no=st.integers(0, 2),
    topic=st.one_of(st.sampled_from(sorted(FIXTURE_TOPICS)), header_text),
    content_type=st.one_of(
        st.sampled_from(["application/json", "application/json; charset=utf-8", ""]), header_text
    ),
    triggered_at=st.one_of(
        header_text, st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    ),
    body=bodies,
    extra=st.lists(st.tuples(names, case, plausible), max_size=3),
)
def test_signed_requests_with_messy_headers_and_bodies_never_5xx(
    app: Flask,
    redis: redis_lib.Redis,
    shop: str,
    key_no: int,
    topic: str,
    content_type: str,
    triggered_at: str,
    body: bytes,
    extra: list[Any],
) -> None:
    keys = KEYS[shop]
    headers = {how(name): value for name, how, value in extra}
    headers.update(signed(body, topic, shop, keys[key_no % len(keys)]))
    headers["Content-Type"] = content_type
    headers["X-Shopify-Triggered-At"] = triggered_at
    before = queued(redis)
    resp = app.test_client().post(URL, data=body, headers=headers)
    check_answer(resp.status_code, resp.data, body)
    if resp.json == {"ok": True}:
        assert isinstance(parse_body(body), dict)
        assert queued(redis) == before + 1


def mutations(body: bytes) -> list[tuple[str, bytes, dict[str, str]]]:
    """A validly signed request for shop A turned into forgeries."""
    topic = "orders/paid"
    out = []
    out.append(("body changed", body + b" ", signed(body, topic)))
    out.append(("body truncated", body[:-1], signed(body, topic)))
    out.append(("other shop's key", body, signed(body, topic, SHOP_A, B_KEY)))
    out.append(("A's admin key for B", body, signed(body, topic, SHOP_B, A_ADMIN)))
    out.append(("unknown shop", body, signed(body, topic, "evil.myshopify.com", A_NEW)))
    h = signed(body, topic)
    h["X-Shopify-Hmac-Sha256"] = h["X-Shopify-Hmac-Sha256"].swapcase()
    out.append(("digest case flipped", body, h))
    h = signed(body, topic)
    h["X-Shopify-Hmac-Sha256"] = h["X-Shopify-Hmac-Sha256"][:-4]
    out.append(("digest truncated", body, h))
    h = signed(body, topic)
    del h["X-Shopify-Hmac-Sha256"]
    out.append(("no digest", body, h))
    h = signed(body, topic, key="")
    out.append(("empty key", body, h))
    return out


@pytest.mark.parametrize("name", [m[0] for m in mutations(b"{}")])
def test_forgeries_are_401_and_never_queued(app: Flask, redis: redis_lib.Redis, name: str) -> None:
    body = fixture_bytes("orders-paid")
    client = app.test_client()
    [(_, data, headers)] = [m for m in mutations(body) if m[0] == name]
    resp = client.post(URL, data=data, headers=headers)
    assert resp.status_code == 401, name
    assert queued(redis) == 0
    # The genuine request (each of A's keys, and B's) is accepted, so the check can fail.
    for shop, keys in KEYS.items():
        for key in keys:
            ok = client.post(URL, data=body, headers=signed(body, "orders/paid", shop, key))
            assert ok.json == {"ok": True}


def test_rejections_are_counted_where_the_shop_is_trusted(
    app: Flask, redis: redis_lib.Redis
) -> None:
    client = app.test_client()
    body = fixture_bytes("orders-paid")
    client.post(URL, data=body, headers=signed(body, "orders/paid", SHOP_A, B_KEY))
    client.post(URL, data=body, headers=signed(body, "orders/paid", "evil.myshopify.com"))
    client.post(URL, data=body, headers=signed(body, "made/up", SHOP_A, "nope"))
    h = signed(body, "orders/paid")
    h["Content-Type"] = "text/plain"
    client.post(URL, data=body, headers=h)
    stats = {k.decode(): int(v) for k, v in redis.hgetall(Keys(SHOP_A).stats).items()}
    assert stats == {
        "webhooks:orders/paid:bad_signature": 1,
        "webhooks:other:bad_signature": 1,
        "webhooks:orders/paid:rejected": 1,
    }
    assert redis.hgetall(REJECTED_KEY) == {b"webhooks:orders/paid:unknown_shop": b"1"}
    assert redis.smembers("cb:shops") == set()  # no rejection registers a shop


def test_stale_deliveries_are_acknowledged_counted_and_not_processed(
    app: Flask, redis: redis_lib.Redis
) -> None:
    client = app.test_client()
    body = fixture_bytes("orders-paid")
    old = signed(body, "orders/paid")
    old["X-Shopify-Triggered-At"] = now_header(timedelta(hours=25))
    resp = client.post(URL, data=body, headers=old)
    assert (resp.status_code, resp.json) == (200, {"ignored": "stale"})
    assert queued(redis) == 0
    assert redis.hget(Keys(SHOP_A).stats, "webhooks:orders/paid:stale") == b"1"
    recent = signed(body, "orders/paid")
    recent["X-Shopify-Triggered-At"] = now_header(timedelta(hours=23))
    assert client.post(URL, data=body, headers=recent).json == {"ok": True}
    # Unreadable or absent: not a reason to drop a signed webhook (the header is not signed).
    for value in ("yesterday", ""):
        h = signed(body, "orders/paid")
        h["X-Shopify-Triggered-At"] = value
        assert client.post(URL, data=body, headers=h).json == {"ok": True}


def test_triggered_age_is_read_leniently() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC).timestamp()
    assert triggered_age_s("2026-01-01T00:00:00.000000Z", now) == 86400
    assert triggered_age_s("2026-01-01T00:00:00", now) == 86400  # naive is UTC
    assert triggered_age_s("2026-01-01T01:00:00+01:00", now) == 86400
    # Absent or unreadable: no age, not an exception.
    for bad in (None, "", "soon", "9999-99-99"):
        assert triggered_age_s(bad, now) is None, bad
    # The earliest moment a datetime holds, offset to before it in UTC: an age (739 617 days and
    # 23 h 59 min), not an overflow.
    assert triggered_age_s("0001-01-01T00:00:00+23:59", now) == 63902995140


@HYP
@given(body=bodies, topic=st.sampled_from(sorted(FIXTURE_TOPICS)))
def test_redis_down_is_503_for_signed_webhooks_only(
    multi: Settings, body: bytes, topic: str
) -> None:
    down = create_app(multi.model_copy(update={"redis_url": f"redis://127.0.0.1:{_dead}/0"}))
    down.config["TESTING"] = True
    client = down.test_client()
    resp = client.post(URL, data=body, headers=signed(body, topic))
    try:
        is_object = isinstance(parse_body(body), dict)
    except ValueError:
        is_object = False
    assert resp.status_code == (503 if is_object else 400)
    forged = client.post(URL, data=body, headers=signed(body, topic, key="nope"))
    assert forged.status_code == 401


_dead = free_port()


def wrong_type(value: Any, choice: int) -> Any:
    options: list[Any] = [None, True, -1, 2**70, 1.5e308, "", "x" * 300, [], {}, [1, "a"], {"a": 1}]
    options = [o for o in options if type(o) is not type(value)]
    return options[choice % len(options)]


@pytest.fixture
def rt(multi: Settings) -> Iterator[Services]:
    runtime = Services.build(multi.model_copy(update={"pipelines_dry_run": True}))
    yield runtime
    runtime.redis.close()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    topic=st.sampled_from(sorted(FIXTURE_TOPICS)),
    where=st.integers(0, 10_000),
    choice=st.integers(0, 100),
)
def test_signed_bodies_with_wrong_types_are_parked_or_processed_never_crash(
    app: Flask, rt: Services, redis: redis_lib.Redis, topic: str, where: int, choice: int
) -> None:
    redis.flushall()
    body = fixture_json(FIXTURE_TOPICS[topic])
    every = list(paths(body))
    path = every[where % len(every)]
    mutated = copy.deepcopy(body)
    holder: Any = mutated
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = wrong_type(holder[path[-1]], choice)
    raw = json.dumps(mutated).encode()
    resp = app.test_client().post(URL, data=raw, headers=signed(raw, topic))
    assert resp.json == {"ok": True}
    drain(rt, SHOP_A)  # raises on anything unexpected: the test fails
    assert redis.llen(Keys(SHOP_A).inbound) == 0
    assert redis.llen(Keys(SHOP_A).inbound_work) == 0
    stats = {k.decode(): int(v) for k, v in redis.hgetall(Keys(SHOP_A).stats).items()}
    parked = [orjson.loads(p) for p in redis.hvals(dlq_key(SHOP_A))]
    if stats.get(f"webhooks:{topic}:parked"):
        [record] = [p for p in parked if p.get("kind") == "webhook"]
        assert record["reason"]
        assert record["topic"] == topic
    else:
        outcomes = ("processed", "skipped")
        assert sum(stats.get(f"webhooks:{topic}:{o}", 0) for o in outcomes) == 1
