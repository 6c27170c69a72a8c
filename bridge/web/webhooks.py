"""The web app: verify, enqueue, answer. Nothing else happens in the request path.

Checks run in one fixed order, the first failing one answers:

1. 405 method other than POST;
2. 413 body over MAX_BODY_BYTES (at most that many bytes are read);
3. 400 shop, topic or webhook id header missing or malformed (header names are
   case-insensitive; a shop must look like a domain because it names Redis keys);
4. 401 shop unknown (neither in BRIDGE_STORES_FILE nor covered by the default store), or the
   signature header missing or not matching any of the shop's keys (app secrets during a
   rotation, and the store-admin key). A missing signature is 401, not 400: Shopify requires
   401 for compliance topics and nothing is learnt from an unsigned request. An unknown shop
   gets the same answer as a wrong signature, after an HMAC against a key of its own, so
   neither the body nor the time taken tells which shops this bridge serves;
5. 415 content type present and not application/json;
6. 400 body not a JSON object;
7. 200 {"ignored": "stale"} when X-Shopify-Triggered-At is older than STALE_AFTER_S (a filter,
   not a defence: the header is not signed), 200 {"ignored": true} for topics not mapped;
8. one Redis round trip of plain commands (queue, claim the webhook id, wake a drain): 200, or
   503 when Redis cannot take it. 200 {"ok": true, "duplicate": true} when the id was already
   claimed: an earlier copy was queued (or processed) within WEBHOOK_DEDUPE_TTL_S. The claim is
   a token the queued copy carries (`Store.accept`); the drain (processor.py) processes the
   copy the claim names and skips the others. Plain commands keep the request path free of
   Lua: a script taking the 2-20 KB body as an argument cost Redis ~3x a plain RPUSH.

Error bodies are short JSON naming the check, never echoing a secret, header value or payload.
Rejections are counted best effort (a failed count never changes the answer), every one of them;
the WARNING lines of unsigned ones are sampled (logs.Sampler), so a flood cannot flood the logs.
An accepted webhook costs exactly one round trip. Per-shop secrets come from the in-memory
StoreRegistry built at app start, never from Redis or the file per request.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from flask import Flask, Response

from bridge import logs, signature
from bridge.jsonio import is_json_object
from bridge.sources.pixel import PREFIX as PIXEL_PREFIX
from bridge.sources.recharge.topics import PREFIX as RECHARGE_PREFIX
from bridge.store import StoreError
from bridge.store.facade import now_ms
from bridge.store.wire import Envelope
from bridge.worker.queues import enqueue_drain

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from bridge.services import Services

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
# A request naming a shop no store serves is checked against this key (random per process,
# matching nothing): it costs the HMAC a known shop's request costs.
_UNKNOWN_SHOP_KEYS = [secrets.token_bytes(32)]


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


# The webhook endpoint answers with one of these (status, body) pairs, built once.
Answer = tuple[int, bytes]
OK: Answer = (200, b'{"ok":true}')
DUPLICATE: Answer = (200, b'{"ok":true,"duplicate":true}')
IGNORED: Answer = (200, b'{"ignored":true}')
STALE: Answer = (200, b'{"ignored":"stale"}')


def error_answer(status: int, message: str) -> Answer:
    return status, orjson.dumps({"error": message})


TOO_LARGE = error_answer(413, "body too large")
NOT_AN_OBJECT = error_answer(400, "body is not a JSON object")
# One answer for an unknown shop and a wrong or missing signature (no shop enumeration).
UNAUTHORIZED = error_answer(401, "invalid signature")
_STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    405: "405 Method Not Allowed",
    413: "413 Request Entity Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


WEBHOOK_PATH = "/webhooks/shopify"


class WebhookEndpoint:
    """WSGI middleware that answers POST /webhooks/shopify itself and passes the rest to Flask.

    The webhook route is the only hot path: on Black Friday it takes thousands of requests a
    minute per worker. Flask's request context, URL routing and Response objects cost ~100 us a
    request, about as much as the HMAC, the JSON check and the Redis round trip of the webhook
    itself, so this route reads the WSGI environ directly and answers with prebuilt bodies.
    """

    def __init__(self, app: Flask, services: Services, path: str = WEBHOOK_PATH) -> None:
        self.app = app
        self.flask_wsgi = app.wsgi_app
        self.services = services
        # WARNING lines of unsigned requests are sampled: a flood cannot flood the logs.
        self.rejections = logs.Sampler(services.settings.rejected_log_every_s)
        self.path = path

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.flask_wsgi(environ, start_response)
        headers = [("Content-Type", "application/json")]
        if environ.get("REQUEST_METHOD") != "POST":
            status, body = error_answer(405, "method not allowed")
            headers.append(("Allow", "POST"))
        else:
            try:
                status, body = receive_shopify(self.services, environ, self.rejections)
            except Exception:
                # As Flask would: tests (TESTING) see the exception, production a short 500 and
                # a logged traceback; nothing was acknowledged, so Shopify retries.
                if self.app.testing or self.app.config.get("PROPAGATE_EXCEPTIONS"):
                    raise
                log.exception("webhook handler failed")
                status, body = error_answer(500, "internal error")
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES[status], headers)
        return [body]


def read_body(environ: WSGIEnvironment, limit: int) -> bytes | None:
    """The raw body, or None when it is over `limit` (at most limit + 1 bytes are read).

    Without a Content-Length the body is read only when the server says the stream ends
    (chunked uploads: `wsgi.input_terminated`), as werkzeug does; else it is empty.
    """
    stream = environ["wsgi.input"]
    try:
        length: int | None = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = None
    if length is not None and length >= 0:
        if length > limit:
            return None
        return bytes(stream.read(length)) if length else b""
    if not environ.get("wsgi.input_terminated"):
        return b""
    data = bytes(stream.read(limit + 1))
    return None if len(data) > limit else data


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


def is_shop_domain(shop: str) -> bool:
    """True when `shop` (lower-cased) may name a shop: a domain, at most 255 characters."""
    return len(shop) <= 255 and _SHOP.fullmatch(shop) is not None


def _header_problem(shop: str, topic: str, webhook_id: str) -> str | None:
    """The 400 message for the first missing or malformed required header, else None."""
    for name, value in zip(REQUIRED_HEADERS, (shop, topic, webhook_id), strict=True):
        if not value:
            return f"missing header {name}"
    if not is_shop_domain(shop):
        return f"malformed header {SHOP_HEADER}"
    if not _TOPIC.fullmatch(topic):
        return f"malformed header {TOPIC_HEADER}"
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        return f"malformed header {WEBHOOK_ID_HEADER}"
    return None


def _optional(environ: WSGIEnvironment, key: str) -> str | None:
    value = environ.get(key)
    return value.strip()[:_OPTIONAL_MAX] if value else None


def _mimetype(environ: WSGIEnvironment) -> str:
    return str(environ.get("CONTENT_TYPE") or "").partition(";")[0].strip().lower()


# Topics the bridge queues itself (`bridge backfill`): a signed request naming one is ignored,
# so nobody outside can inject historic orders or traits.
INTERNAL_TOPIC_PREFIX = "backfill/"
# Topics of other sources, which only their own routes queue (web/recharge.py): a Shopify
# signature never vouches for them. (The topic header's pattern, one slash, already keeps out
# "recharge/<resource>/<action>"; this holds should the pattern ever change.)
NOT_SHOPIFY_PREFIXES = (INTERNAL_TOPIC_PREFIX, f"{RECHARGE_PREFIX}/", f"{PIXEL_PREFIX}/")


def accepts_from_shopify(services: Services, topic: str) -> bool:
    return services.source.handles(topic) and not topic.startswith(NOT_SHOPIFY_PREFIXES)


def receive_shopify(
    services: Services, environ: WSGIEnvironment, rejections: logs.Sampler
) -> Answer:
    """Run the checks in the documented order, then queue the webhook in one round trip."""
    settings = services.settings
    body = read_body(environ, settings.max_body_bytes)
    if body is None:
        _count_unverified(services, environ.get("HTTP_X_SHOPIFY_TOPIC") or "", "too_large")
        return TOO_LARGE
    # WSGI names headers HTTP_<NAME> (upper case, '-' as '_'): case-insensitive by construction.
    shop = (environ.get("HTTP_X_SHOPIFY_SHOP_DOMAIN") or "").strip().lower()
    topic = (environ.get("HTTP_X_SHOPIFY_TOPIC") or "").strip()
    webhook_id = (environ.get("HTTP_X_SHOPIFY_WEBHOOK_ID") or "").strip()
    problem = _header_problem(shop, topic, webhook_id)
    if problem is not None:
        _count_unverified(services, topic, "malformed")
        return error_answer(400, problem)
    store = services.stores.get(shop)
    keys = store.signing_keys() if store is not None else _UNKNOWN_SHOP_KEYS
    signed = signature.verify(body, environ.get("HTTP_X_SHOPIFY_HMAC_SHA256"), keys)
    if store is None or not signed:
        return _unauthorized(services, rejections, shop, topic, known=store is not None)
    # Signed from here on: the shop's own counters may be used.
    mimetype = _mimetype(environ)
    if mimetype and mimetype != "application/json":
        _count_rejected(services, shop, topic, "rejected")
        return error_answer(415, "content type must be application/json")
    if not is_json_object(body):
        _count_rejected(services, shop, topic, "rejected")
        return NOT_AN_OBJECT
    triggered_at = _optional(environ, "HTTP_X_SHOPIFY_TRIGGERED_AT")
    age = triggered_age_s(triggered_at, time.time())
    if settings.stale_after_s and age is not None and age > settings.stale_after_s:
        _count_rejected(services, shop, topic, "stale")
        return STALE
    if not accepts_from_shopify(services, topic):
        _count_quietly(services, shop, f"webhooks:{topic}:ignored")
        return IGNORED
    env = Envelope(
        shop=shop,
        topic=topic,
        webhook_id=webhook_id,
        body=body,
        triggered_at=triggered_at,
        api_version=_optional(environ, "HTTP_X_SHOPIFY_API_VERSION"),
        event_id=_optional(environ, "HTTP_X_SHOPIFY_EVENT_ID"),
        received_ms=now_ms(),
    )
    return queue_envelope(services, env, request_id_of(environ))


def request_id_of(environ: WSGIEnvironment) -> str:
    """The request's `X-Request-Id` (cut to 64 characters), else a random one, for its log line."""
    return (_optional(environ, "HTTP_X_REQUEST_ID") or secrets.token_hex(16))[:64]


def queue_envelope(services: Services, env: Envelope, request_id: str) -> Answer:
    """Queue a verified webhook in one Redis round trip and wake its shop's drain: OK, DUPLICATE
    (its webhook id was already queued or processed), or 503 when Redis cannot take it. Every
    source's route answers through this, so "200 only once durably queued" holds for all."""
    try:
        accepted = services.store.accept(env, services.settings.webhook_dedupe_ttl_s)
    except StoreError as exc:
        log.error("webhook not queued: redis unavailable", extra={"error": type(exc).__name__})
        return error_answer(503, "queue unavailable, retry later")
    logs.info_line(
        log,
        "webhook",
        {
            "request_id": request_id,
            "shop": env.shop,
            "topic": env.topic,
            "webhook_id": env.webhook_id,
            "result": "duplicate" if accepted.seen_before else "accepted",
        },
    )
    if accepted.wake:
        try:
            enqueue_drain(services.queue, env.shop)
        except StoreError:
            # The webhook is durably queued; the flag expires, so the next webhook (or the
            # worker's sweep) enqueues the drain instead.
            log.warning("drain job not enqueued", extra={"shop": env.shop})
    return DUPLICATE if accepted.seen_before else OK


def _topic_label(services: Services, topic: str) -> str:
    # Unsigned requests choose their topic header: only known topics name a counter.
    return topic if accepts_from_shopify(services, topic) else "other"


def _unauthorized(
    services: Services, rejections: logs.Sampler, shop: str, topic: str, *, known: bool
) -> Answer:
    reason = "bad_signature" if known else "unknown_shop"
    message = "bad signature" if known else "unknown shop"
    label = _topic_label(services, topic)
    return refuse_unsigned(services, rejections, shop, label, reason, message, known=known)


def refuse_unsigned(
    services: Services,
    rejections: logs.Sampler,
    shop: str,
    label: str,
    reason: str,
    message: str,
    *,
    known: bool,
) -> Answer:
    """Count (every one, as `webhooks:{label}:{reason}`) and log (sampled, per reason) a
    request refused as unsigned: an unknown shop or a bad signature get one 401 for both.
    `label` must be a known topic (the caller's choice), never the request's own string."""
    field = f"webhooks:{label}:{reason}"
    with contextlib.suppress(StoreError):
        services.store.count_untrusted(shop, field, configured=services.stores.configured(shop))
    left_out = rejections.admit(reason)
    if left_out is not None:
        extra: dict[str, object] = {"topic": label, "left_out": left_out}
        if known:
            extra["shop"] = shop
        log.warning(message, extra=extra)
    return UNAUTHORIZED


def _count_unverified(services: Services, topic: str, result: str) -> None:
    count_unverified(services, _topic_label(services, topic.strip()), result)


def count_unverified(services: Services, label: str, result: str) -> None:
    """Count a request refused before its shop could be looked up, in REJECTED_KEY."""
    with contextlib.suppress(StoreError):
        services.store.count_unverified(f"webhooks:{label}:{result}")


def _count_rejected(services: Services, shop: str, topic: str, result: str) -> None:
    count_rejected(services, shop, _topic_label(services, topic), result)


def count_rejected(services: Services, shop: str, label: str, result: str) -> None:
    """Count a signed request's rejection in the shop's stats (`webhooks:{label}:{result}`);
    never fails the response."""
    with contextlib.suppress(StoreError):
        services.store.count(shop, f"webhooks:{label}:{result}")


def _count_quietly(services: Services, shop: str, name: str) -> None:
    with contextlib.suppress(StoreError):
        services.store.count(shop, name)
