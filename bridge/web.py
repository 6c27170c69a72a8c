"""The web app: verify, enqueue, answer. Nothing else happens in the request path.

Checks run in one fixed order: 405 (method) -> 413 (size) -> 400 (missing shop, topic or
webhook id header) -> 401 (signature missing or wrong: Shopify requires 401 here) -> 415
(content type) -> 400 (body not a JSON object) -> 200. A webhook is
acknowledged only once it is in Redis; if Redis cannot take it the answer is 503 and nothing is
marked as seen, so Shopify's retry succeeds later.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
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
from bridge.store import INGEST_DUPLICATE, INGEST_QUEUED_WAKE, Envelope, Store, connect, now_ms
from jobs.enqueue import enqueue_drain

log = logging.getLogger(__name__)

REQUIRED_HEADERS = ("X-Shopify-Shop-Domain", "X-Shopify-Topic", "X-Shopify-Webhook-Id")


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


class Ingest:
    """What the webhook view needs, built once per app: settings, store, queue, source."""

    def __init__(self, settings: Settings, client: redis.Redis[bytes], source: Source) -> None:
        self.settings = settings
        self.redis = client
        self.store = Store(client)
        self.queue = Queue(settings.queue_name, connection=client)
        self.source = source


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app; `settings` defaults to the environment (read once, here)."""
    settings = settings or load_settings()
    app = Flask("cartbridge")
    client = connect(settings.redis_url, tls_verify=settings.redis_tls_verify, timeout_s=2.0)
    ingest = Ingest(settings, client, ShopifySource())
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


def receive_shopify(ingest: Ingest) -> Response:
    settings = ingest.settings
    body = _read_body(settings.max_body_bytes)
    if body is None:
        return _json({"error": "body too large"}, 413)
    headers = request.headers
    for name in REQUIRED_HEADERS:
        if not headers.get(name):
            return _json({"error": f"missing header {name}"}, 400)
    hmac_header = headers.get("X-Shopify-Hmac-Sha256")
    shop = headers["X-Shopify-Shop-Domain"].strip().lower()
    topic = headers["X-Shopify-Topic"].strip()
    webhook_id = headers["X-Shopify-Webhook-Id"].strip()
    if not signature.verify(body, hmac_header, settings.webhook_secrets):
        log.warning("bad signature", extra={"shop": shop, "topic": topic})
        return _json({"error": "invalid signature"}, 401)
    mimetype = (request.mimetype or "").lower()
    if mimetype and mimetype != "application/json":
        return _json({"error": "content type must be application/json"}, 415)
    try:
        parsed = parse_body(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return _json({"error": "body is not a JSON object"}, 400)
    if not ingest.source.handles(topic):
        _count_quietly(ingest, shop, f"webhooks:{topic}:ignored")
        return _json({"ignored": True})
    env = Envelope(
        shop=shop,
        topic=topic,
        webhook_id=webhook_id,
        body=body,
        triggered_at=headers.get("X-Shopify-Triggered-At"),
        api_version=headers.get("X-Shopify-API-Version"),
        event_id=headers.get("X-Shopify-Event-Id"),
        received_ms=now_ms(),
    )
    try:
        result = ingest.store.ingest(env, dedupe_ttl_s=settings.webhook_dedupe_ttl_s)
    except redis.RedisError as exc:
        log.error("webhook not queued: redis unavailable", extra={"error": type(exc).__name__})
        return _json({"error": "queue unavailable, retry later"}, 503)
    request_id = headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
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


def _count_quietly(ingest: Ingest, shop: str, name: str) -> None:
    with contextlib.suppress(redis.RedisError):
        ingest.store.count(shop, name)
