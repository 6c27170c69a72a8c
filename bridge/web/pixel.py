"""POST /pixel: the storefront browse collector (issue 17). Check, enqueue, answer.

The shipped pixel (extensions/web-pixel/) posts one JSON object per standard event with
`fetch(url, {method: "POST", keepalive: true, body})` and no Content-Type: a CORS "simple"
request, no preflight. Nobody reads the answer; statuses are for logs and tests. Checks run in
one fixed order, the first failing one answers (JSON `{"error": ...}` unless 204):

1. OPTIONS: 204 with the preflight headers (a pixel that sets Content-Type gets one);
2. 405 any other method than POST;
3. 413 body over 64 KiB (the browser's own keepalive budget; at most that much is read);
4. 429 the request's IP is over PIXEL_IP_LIMIT_PER_MIN in this minute (known to this
   process, see below: no Redis needed to refuse);
5. 400 body nested deeper than MAX_PIXEL_DEPTH (checked before parsing, without recursion),
   not JSON (any content type is parsed), not an object, or a field missing or of the wrong
   type (sources/pixel/body.py); 422 an event name the collector does not take;
6. 403 a shop the collector does not serve (StoreRegistry.takes_pixels);
7. 429 the shop, all its browsers together, is over PIXEL_SHOP_LIMIT_PER_MIN, as in 4 (one
   storefront's flood must not fill Redis and the shop's queue ahead of its signed webhooks);
8. 429 the browser (its clientId) is over PIXEL_CLIENT_LIMIT_PER_MIN, as in 4;
9. 204 without queueing for an event the store does not forward and that carries no cart or
   checkout token (nothing to send, nothing to link: counted `off`);
10. one Redis round trip of plain commands (queue, wake a drain, the IP's, browser's and
   shop's request counts, and counters kept in process since the last trip): 204, or 503 when
   Redis cannot take it (the event's own `received` count is the drain's).

Every answer carries `Access-Control-Allow-Origin: *` and never `...-Allow-Credentials`.

Rate limits cost no extra round trip: the request counts of an IP and a browser (keyed hashes,
never the address) and of the shop are incremented in the same round trip that queues the
event, in a hash per shop per minute; a reply over the limit makes this process refuse that
IP, browser or shop without Redis until the minute ends. Each process thus lets at most one
request over a limit through per minute (a refused request itself is never counted: it costs
no Redis at all), and a flood from one address costs Redis nothing once refused. Refusals
are counted in process and written with the next round trip (or within COUNT_FLUSH_S): a
flood of refused requests must not cost a Redis command each.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from flask import Flask

from bridge import keyed, logs
from bridge.identity.browse_policy import BrowsePolicy
from bridge.ids import iso_z
from bridge.jsonio import nested_deeper_than, parse_body
from bridge.sources.pixel import topic_of
from bridge.sources.pixel.body import (
    MAX_PIXEL_BODY_BYTES,
    MAX_PIXEL_DEPTH,
    BodyProblem,
    PixelBody,
    check_body,
)
from bridge.store import StoreError
from bridge.store.facade import now_ms
from bridge.store.wire import Envelope
from bridge.web.webhooks import read_body
from bridge.worker.queues import enqueue_drain

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from bridge.services import Services

log = logging.getLogger(__name__)

PIXEL_PATH = "/pixel"
LIMIT_WINDOW_S = 60
COUNT_FLUSH_S = 5.0
# Blocked IPs and browsers a process remembers at most (a flood of made-up ones cannot grow
# the table without bound: past this, expired entries go, then the oldest).
MAX_BLOCKED = 50_000
# What of the event's `context` is kept in the queue: the page, not the browser's details.
_CONTEXT_KEPT = ("href",)

_STATUS_LINES = {
    204: "204 No Content",
    400: "400 Bad Request",
    403: "403 Forbidden",
    405: "405 Method Not Allowed",
    413: "413 Request Entity Too Large",
    422: "422 Unprocessable Entity",
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
CORS = [("Access-Control-Allow-Origin", "*")]
PREFLIGHT = [
    *CORS,
    ("Access-Control-Allow-Methods", "POST"),
    ("Access-Control-Allow-Headers", "Content-Type"),
    ("Access-Control-Max-Age", "86400"),
]

Answer = tuple[int, bytes]
ACCEPTED: Answer = (204, b"")


def _error(status: int, message: str) -> Answer:
    return status, orjson.dumps({"error": message})


TOO_LARGE = _error(413, "body too large")
NOT_JSON = _error(400, "body is not JSON")
TOO_DEEP = _error(400, "body nested too deeply")
UNKNOWN_SHOP = _error(403, "unknown shop")
IP_LIMITED = _error(429, "too many requests from this address")
CLIENT_LIMITED = _error(429, "too many requests from this browser")
SHOP_LIMITED = _error(429, "too many requests for this shop")
UNAVAILABLE = _error(503, "queue unavailable")


class Blocklist:
    """Keys (keyed hashes of IPs or clientIds) this process refuses until a window ends."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}

    def blocked(self, key: str, now: float) -> bool:
        end = self.until.get(key)
        if end is None:
            return False
        if end <= now:
            self.until.pop(key, None)
            return False
        return True

    def block(self, key: str, until: float, now: float) -> None:
        if len(self.until) >= MAX_BLOCKED:
            self.until = {k: t for k, t in self.until.items() if t > now}
            while len(self.until) >= MAX_BLOCKED:
                self.until.pop(next(iter(self.until)))
        self.until[key] = until


class Counts:
    """Counters kept in process between round trips: ((shop or ""), field) -> n."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple[str, str], int] = {}
        self.since = time.monotonic()

    def add(self, shop: str, name: str) -> None:
        with self.lock:
            key = (shop, name)
            self.pending[key] = self.pending.get(key, 0) + 1

    def take(self) -> dict[tuple[str, str], int]:
        with self.lock:
            taken, self.pending = self.pending, {}
            self.since = time.monotonic()
            return taken

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.since >= COUNT_FLUSH_S

    def put_back(self, counts: dict[tuple[str, str], int]) -> None:
        with self.lock:
            for key, n in counts.items():
                self.pending[key] = self.pending.get(key, 0) + n


def shop_key(shop: str) -> str:
    """The blocklist's key of a whole shop (IPs and browsers are "ip:"/"c:" keyed hashes)."""
    return "shop:" + shop


def client_ip(environ: WSGIEnvironment, proxy_hops: int) -> str:
    """The requester's address: with `proxy_hops` proxies appending to X-Forwarded-For, the
    entry the first of them wrote (entries before it are the client's own and may be forged);
    else the connection's."""
    if proxy_hops:
        forwarded = [p.strip() for p in str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")]
        forwarded = [p for p in forwarded if p]
        if len(forwarded) >= proxy_hops:
            return forwarded[-proxy_hops][:64]
    return str(environ.get("REMOTE_ADDR") or "")[:64]


def queued_body(checked: PixelBody) -> bytes:
    """The body as queued: the event with its context cut to the page's address (the browser's
    details are never used), the cart token as the hint it was taken from."""
    event = dict(checked.event)
    context = event.get("context")
    if isinstance(context, dict):
        document = context.get("document")
        location = document.get("location") if isinstance(document, dict) else None
        kept = (
            {k: v for k, v in location.items() if k in _CONTEXT_KEPT}
            if isinstance(location, dict)
            else {}
        )
        event["context"] = {"document": {"location": kept}}
    queued = {"shop": checked.shop, "cart_token": checked.cart_token, "event": event}
    try:
        return orjson.dumps(queued)
    except TypeError:
        # An integer beyond 64 bits (valid JSON, parsed by the stdlib): the stdlib writes it
        # back, and the worker's parse (jsonio.parse_body) reads it the same way.
        return json.dumps(queued, separators=(",", ":")).encode()


class PixelEndpoint:
    """WSGI middleware that answers /pixel itself and passes every other path on (the webhook
    middleware, then Flask), so a browse event costs no Flask request context."""

    def __init__(self, app: Flask, services: Services, inner: WSGIApplication) -> None:
        self.app = app
        self.inner = inner
        self.services = services
        settings = services.settings
        self.ip_limit = settings.pixel_ip_limit_per_min
        self.client_limit = settings.pixel_client_limit_per_min
        self.shop_limit = settings.pixel_shop_limit_per_min
        self.proxy_hops = settings.pixel_proxy_hops
        self.blocked = Blocklist()
        self.counts = Counts()
        self.lock = threading.Lock()
        self.refusals = logs.Sampler(settings.rejected_log_every_s)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PIXEL_PATH:
            return self.inner(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if method == "OPTIONS":
            start_response(_STATUS_LINES[204], PREFLIGHT)
            return [b""]
        if method != "POST":
            status, body = _error(405, "method not allowed")
            headers = [*CORS, ("Allow", "POST, OPTIONS")]
        else:
            headers = list(CORS)
            try:
                status, body = self.receive(environ)
            except Exception:
                if self.app.testing or self.app.config.get("PROPAGATE_EXCEPTIONS"):
                    raise
                log.exception("pixel handler failed")
                status, body = _error(500, "internal error")
        if body:
            headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES[status], headers)
        return [body]

    # --- the checks ------------------------------------------------------------------------
    def receive(self, environ: WSGIEnvironment) -> Answer:
        """Run the documented checks in order, then queue the event in one round trip."""
        services = self.services
        raw = read_body(environ, MAX_PIXEL_BODY_BYTES)
        if raw is None:
            return self.refuse("", "other", "too_large", TOO_LARGE)
        now = time.time()
        ip_key = "ip:" + keyed.person_hash("ip\x1f" + client_ip(environ, self.proxy_hops))
        with self.lock:
            ip_blocked = self.blocked.blocked(ip_key, now)
        if ip_blocked:
            return self.refuse("", "other", "rate_limited", IP_LIMITED)
        if nested_deeper_than(raw, MAX_PIXEL_DEPTH):
            return self.refuse("", "other", "malformed", TOO_DEEP)
        try:
            parsed = parse_body(raw)
        except (ValueError, RecursionError):
            return self.refuse("", "other", "malformed", NOT_JSON)
        try:
            checked = check_body(parsed)
        except BodyProblem as problem:
            return self.refuse("", "other", "malformed", _error(problem.status, problem.message))
        shop, name = checked.shop, checked.name
        if not services.stores.takes_pixels(shop, services.settings.shopify_shop):
            return self.refuse("", name, "unknown_shop", UNKNOWN_SHOP)
        client_key = "c:" + keyed.person_hash("client\x1f" + checked.client_id)
        with self.lock:
            shop_blocked = self.blocked.blocked(shop_key(shop), now)
            client_blocked = self.blocked.blocked(client_key, now)
        if shop_blocked:
            return self.refuse(shop, name, "shop_limited", SHOP_LIMITED)
        if client_blocked:
            return self.refuse(shop, name, "rate_limited", CLIENT_LIMITED)
        rules: BrowsePolicy = services.shop(shop).rules.browse
        if name not in rules.forwarded and not (checked.cart_token or checked.checkout_token):
            self.counts.add(shop, f"browse:{name}:received")
            self.counts.add(shop, f"browse:{name}:off")
            self.flush_if_due()
            return ACCEPTED
        return self.queue(checked, (ip_key, client_key), now)

    def queue(self, checked: PixelBody, keys: tuple[str, str], now: float) -> Answer:
        services = self.services
        received = now_ms()
        env = Envelope(
            shop=checked.shop,
            topic=topic_of(checked.name),
            webhook_id=checked.event_id,
            body=queued_body(checked),
            # The collector's receipt time: the mapping trusts the browser's clock only near it.
            triggered_at=iso_z_ms(received),
            received_ms=received,
        )
        window = int(now // LIMIT_WINDOW_S)
        counts = self.counts.take()
        try:
            accepted = services.store.accept_browse(env, (window, LIMIT_WINDOW_S, *keys), counts)
        except StoreError as exc:
            self.counts.put_back(counts)
            log.error(
                "pixel event not queued: redis unavailable", extra={"error": type(exc).__name__}
            )
            return UNAVAILABLE
        window_end = (window + 1) * LIMIT_WINDOW_S
        with self.lock:
            if accepted.ip_requests >= self.ip_limit:
                self.blocked.block(keys[0], window_end, now)
            if accepted.client_requests >= self.client_limit:
                self.blocked.block(keys[1], window_end, now)
            if accepted.shop_requests >= self.shop_limit:
                self.blocked.block(shop_key(checked.shop), window_end, now)
        if accepted.wake:
            try:
                enqueue_drain(services.queue, checked.shop)
            except StoreError:
                log.warning("drain job not enqueued", extra={"shop": checked.shop})
        return ACCEPTED

    def refuse(self, shop: str, name: str, reason: str, answer: Answer) -> Answer:
        """Count a refusal (in process, written later) and log it, sampled per reason."""
        self.counts.add(shop, f"browse:{name}:refused_{reason}")
        left_out = self.refusals.admit(reason)
        if left_out is not None:
            log.warning(
                "pixel event refused",
                extra={"reason": reason, "status": answer[0], "left_out": left_out},
            )
        self.flush_if_due()
        return answer

    def flush_if_due(self) -> None:
        if not self.counts.due():
            return
        counts = self.counts.take()
        try:
            self.services.store.add_counts(counts)
        except StoreError:
            self.counts.put_back(counts)


def iso_z_ms(ms: int) -> str:
    return iso_z(datetime.fromtimestamp(ms / 1000, tz=UTC))
