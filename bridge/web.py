"""The web app: verify, enqueue, answer. Nothing else happens in the request path.

Checks run in one fixed order, the first failing one answers:

1. 405 method other than POST;
2. 413 body over MAX_BODY_BYTES (at most that many bytes are read);
3. 400 shop, topic or webhook id header missing or malformed (header names are
   case-insensitive; a shop must look like a domain because it names Redis keys);
4. 401 shop unknown (neither in BRIDGE_STORES_FILE nor covered by the default store), or the
   signature header missing or not matching any of the shop's keys (app secrets during a
   rotation, and the store-admin key). A missing signature is 401, not 400: Shopify requires
   401 for compliance topics and nothing is learnt from an unsigned request;
5. 415 content type present and not application/json;
6. 400 body not a JSON object;
7. 200 {"ignored": "stale"} when X-Shopify-Triggered-At is older than STALE_AFTER_S (a filter,
   not a defence: the header is not signed), 200 {"ignored": true} for topics not mapped;
8. one Redis round trip (dedupe + queue): 200, or 503 when Redis cannot take it (nothing is
   then marked as seen, so Shopify's retry succeeds later).

Error bodies are short JSON naming the check, never echoing a secret, header value or payload.
Rejections are counted best effort (a failed count never changes the answer); an accepted
webhook costs exactly one round trip. Per-shop secrets come from the in-memory StoreRegistry
built at app start, never from Redis or the file per request.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from flask import Flask, Response, request
from rq import Queue
from werkzeug.exceptions import HTTPException

from bridge import signature
from bridge.jsonio import parse_body
from bridge.settings import Settings, load_settings
from bridge.sources import Source
from bridge.sources.shopify import ShopifySource
from bridge.store import (
    INGEST_DUPLICATE,
    INGEST_QUEUED_WAKE,
    Envelope,
    Keys,
    Store,
    connect,
    now_ms,
)
from bridge.stores import StoreRegistry, stores_for
from jobs.enqueue import enqueue_drain

log = logging.getLogger(__name__)

SHOP_HEADER = "X-Shopify-Shop-Domain"
TOPIC_HEADER = "X-Shopify-Topic"
WEBHOOK_ID_HEADER = "X-Shopify-Webhook-Id"
REQUIRED_HEADERS = (SHOP_HEADER, TOPIC_HEADER, WEBHOOK_ID_HEADER)
# The shop names Redis keys (`cb:{shop}:...`): no braces, colons or spaces may get in.
_SHOP = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_TOPIC = re.compile(r"[a-z0-9_]{1,64}/[a-z0-9_]{1,64}")
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,256}")
# Optional headers are kept in the envelope, cut to a sane length.
_OPTIONAL_MAX = 128
# Counters of rejections before the shop is trusted go here (bounded field names), so that
# unsigned requests naming random shops cannot create a stats hash per made-up shop.
REJECTED_KEY = "cb:rejected"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


class Ingest:
    """What the webhook view needs, built once per app: settings, store, queue, source."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis[bytes],
        source: Source,
        stores: StoreRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.store = Store(client)
        self.queue = Queue(settings.queue_name, connection=client)
        self.source = source
        self.stores = stores or stores_for(settings)


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app; `settings` defaults to the environment (read once, here), and so does
    the stores file. Raises ConfigError for an invalid stores file."""
    settings = settings or load_settings()
    stores = stores_for(settings)
    app = Flask("cartbridge")
    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify, timeout_s=2.0)
    ingest = Ingest(settings, client, ShopifySource(), stores)
    app.extensions["cartbridge"] = ingest

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        names = {405: "method not allowed", 404: "not found", 413: "body too large"}
        code = exc.code or 500
        return _json({"error": names.get(code, exc.name.lower())}, code)

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"ok": True})

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            client.ping()
        except redis.RedisError:
            return _json({"ok": False, "error": "redis unavailable"}, 503)
        return _json({"ok": True})

    @app.post("/webhooks/shopify")
    def shopify_webhook() -> Response:
        return receive_shopify(ingest)

    from bridge.metrics import bp as metrics_bp  # issue 6: GET /metrics

    app.register_blueprint(metrics_bp)

    return app


def _read_body(limit: int) -> bytes | None:
    """The raw body, or None when it is over `limit` (read at most limit + 1 bytes)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        return None
    return data


def triggered_age_s(triggered_at: str | None, now_s: float) -> float | None:
    """Seconds since `X-Shopify-Triggered-At`, or None when absent or unreadable (pure)."""
    if not triggered_at:
        return None
    try:
        at = datetime.fromisoformat(triggered_at.strip())
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return now_s - at.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _header_problem(shop: str, topic: str, webhook_id: str) -> str | None:
    """The 400 message for the first missing or malformed required header, else None."""
    for name, value in zip(REQUIRED_HEADERS, (shop, topic, webhook_id), strict=True):
        if not value:
            return f"missing header {name}"
    if len(shop) > 255 or not _SHOP.fullmatch(shop):
        return f"malformed header {SHOP_HEADER}"
    if not _TOPIC.fullmatch(topic):
        return f"malformed header {TOPIC_HEADER}"
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        return f"malformed header {WEBHOOK_ID_HEADER}"
    return None


def _optional(name: str) -> str | None:
    value = request.headers.get(name)
    return value.strip()[:_OPTIONAL_MAX] if value else None


# Topics the bridge queues itself (`bridge backfill`): a signed request naming one is ignored,
# so nobody outside can inject historic orders or traits.
INTERNAL_TOPIC_PREFIX = "backfill/"


def accepts_from_shopify(ingest: Ingest, topic: str) -> bool:
    return ingest.source.handles(topic) and not topic.startswith(INTERNAL_TOPIC_PREFIX)


def receive_shopify(ingest: Ingest) -> Response:
    """Run the checks in the documented order, then queue the webhook in one round trip."""
    settings = ingest.settings
    body = _read_body(settings.max_body_bytes)
    if body is None:
        return _json({"error": "body too large"}, 413)
    headers = request.headers
    shop = (headers.get(SHOP_HEADER) or "").strip().lower()
    topic = (headers.get(TOPIC_HEADER) or "").strip()
    webhook_id = (headers.get(WEBHOOK_ID_HEADER) or "").strip()
    problem = _header_problem(shop, topic, webhook_id)
    if problem is not None:
        return _json({"error": problem}, 400)
    store = ingest.stores.get(shop)
    if store is None:
        log.warning("unknown shop", extra={"topic": _topic_label(ingest, topic)})
        _count_rejected(ingest, None, topic, "unknown_shop")
        return _json({"error": "unknown shop"}, 401)
    if not signature.verify(body, headers.get("X-Shopify-Hmac-Sha256"), store.signing_keys()):
        log.warning("bad signature", extra={"shop": shop, "topic": _topic_label(ingest, topic)})
        trusted = shop if ingest.stores.configured(shop) else None
        _count_rejected(ingest, trusted, topic, "bad_signature")
        return _json({"error": "invalid signature"}, 401)
    # Signed from here on: the shop's own counters may be used.
    mimetype = (request.mimetype or "").lower()
    if mimetype and mimetype != "application/json":
        _count_rejected(ingest, shop, topic, "rejected")
        return _json({"error": "content type must be application/json"}, 415)
    try:
        parsed = parse_body(body)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        _count_rejected(ingest, shop, topic, "rejected")
        return _json({"error": "body is not a JSON object"}, 400)
    triggered_at = _optional("X-Shopify-Triggered-At")
    age = triggered_age_s(triggered_at, time.time())
    if settings.stale_after_s and age is not None and age > settings.stale_after_s:
        _count_rejected(ingest, shop, topic, "stale")
        return _json({"ignored": "stale"})
    if not accepts_from_shopify(ingest, topic):
        _count_quietly(ingest, shop, f"webhooks:{topic}:ignored")
        return _json({"ignored": True})
    return _queue(ingest, shop, topic, webhook_id, body, triggered_at)


def _queue(
    ingest: Ingest,
    shop: str,
    topic: str,
    webhook_id: str,
    body: bytes,
    triggered_at: str | None,
) -> Response:
    env = Envelope(
        shop=shop,
        topic=topic,
        webhook_id=webhook_id,
        body=body,
        triggered_at=triggered_at,
        api_version=_optional("X-Shopify-API-Version"),
        event_id=_optional("X-Shopify-Event-Id"),
        received_ms=now_ms(),
    )
    try:
        result = ingest.store.ingest(env, dedupe_ttl_s=ingest.settings.webhook_dedupe_ttl_s)
    except redis.RedisError as exc:
        log.error("webhook not queued: redis unavailable", extra={"error": type(exc).__name__})
        return _json({"error": "queue unavailable, retry later"}, 503)
    request_id = (_optional("X-Request-Id") or uuid.uuid4().hex)[:64]
    log.info(
        "webhook",
        extra={
            "request_id": request_id,
            "shop": shop,
            "topic": topic,
            "webhook_id": webhook_id,
            "result": "duplicate" if result == INGEST_DUPLICATE else "accepted",
        },
    )
    if result == INGEST_DUPLICATE:
        return _json({"ok": True, "duplicate": True})
    if result == INGEST_QUEUED_WAKE:
        try:
            enqueue_drain(ingest.queue, shop)
        except redis.RedisError:
            # The webhook is durably queued; the stale flag lets the next one (or the
            # worker's sweep) enqueue the drain instead.
            log.warning("drain job not enqueued", extra={"shop": shop})
    return _json({"ok": True})


def _topic_label(ingest: Ingest, topic: str) -> str:
    # Unsigned requests choose their topic header: only known topics name a counter.
    return topic if accepts_from_shopify(ingest, topic) else "other"


def _count_rejected(ingest: Ingest, shop: str | None, topic: str, result: str) -> None:
    """Count a rejection in the shop's stats (`webhooks:{topic}:{result}`) when the shop is
    trusted, else in the global REJECTED_KEY hash; never fails the response."""
    label = _topic_label(ingest, topic)
    with contextlib.suppress(redis.RedisError):
        if shop is None:
            ingest.redis.hincrby(REJECTED_KEY, f"webhooks:{label}:{result}", 1)
        else:
            ingest.redis.hincrby(Keys(shop).stats, f"webhooks:{label}:{result}", 1)


def _count_quietly(ingest: Ingest, shop: str, name: str) -> None:
    with contextlib.suppress(redis.RedisError):
        ingest.store.count(shop, name)
