"""POST /webhooks/recharge: Recharge's webhooks, verified and queued like Shopify's.

Recharge posts to the address a webhook was registered with, one per topic:
`/webhooks/recharge/<resource>/<action>?shop=<myshopify domain>` (plain `/webhooks/recharge`
works too; the topic is then read from the body). Checks run in one fixed order, the first
failing one answers:

1. 405 method other than POST;
2. 413 body over MAX_BODY_BYTES (at most that many bytes are read);
3. 400 `shop` query parameter malformed (not a domain; given twice), or missing while the
   deployment serves more than one store. It may be left out only when exactly one store is
   configured: the stores file's only store (and no default store), or the default store alone
   with SHOPIFY_SHOP naming its shop (the default store serves any shop, so has no name);
4. 401 shop unknown, or no Recharge client secret for it, or the signature missing, not
   matching, or timestamped more than 48 h ago or more than 5 minutes ahead (signature.py,
   `verify_recharge`). One answer for all of them, after a digest under a key of its own for a
   shop without a secret, so neither the answer nor its timing tells which shops are served;
5. 400 body not a JSON object;
6. 400 topic unknowable: no topic in the path, no well-formed `X-Recharge-Topic` header, and no
   wrapper key in the body to read one from (`sources/recharge/topics.infer_topic`); also a
   path topic that is not "<resource>/<action>" in [a-z0-9_];
7. 200 {"ignored": true} for topics the Recharge source does not map (Recharge deletes a webhook
   that keeps failing, so a topic registered by mistake is acknowledged, not refused);
8. the Shopify route's one Redis round trip (`webhooks.queue_envelope`): 200 {"ok": true}, 200
   with "duplicate" when this delivery was already queued or processed, 503 when Redis cannot
   take it.

The topic: the path's, else `X-Recharge-Topic` (which Recharge does not document: older
integrations read it; like the path, it is not covered by the signature), else the wrapper
key's. The envelope names it "recharge/<resource>/<action>", so the drain's `Sources` router
hands it to the Recharge source. Recharge sends no delivery id: the webhook id is
"recharge-" + sha256(topic + "\\n" + body), so a redelivery of the same body for the same topic
is processed once. `triggered_at` is the signed timestamp (none under the legacy signature).
Rejections are counted like Shopify's, labelled only with documented Recharge topics.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request

from bridge import logs
from bridge.ids import iso_z
from bridge.jsonio import parse_body
from bridge.signature import verify_recharge
from bridge.sources.recharge.topics import PREFIX, TOPIC_PATTERN, infer_topic, metric_topic
from bridge.store.facade import now_ms
from bridge.store.wire import Envelope
from bridge.web.webhooks import (
    IGNORED,
    NOT_AN_OBJECT,
    TOO_LARGE,
    Answer,
    count_rejected,
    count_unverified,
    error_answer,
    is_shop_domain,
    queue_envelope,
    read_body,
    refuse_unsigned,
    request_id_of,
)

if TYPE_CHECKING:
    from bridge.services import Services

RECHARGE_PATH = "/webhooks/recharge"
SIGNATURE_HEADER = "X-Recharge-Webhook-Signature"
TIMESTAMP_HEADER = "X-Recharge-Webhook-Timestamp"
LEGACY_HEADER = "X-Recharge-Hmac-Sha256"
TOPIC_HEADER = "X-Recharge-Topic"
# A shop without a Recharge secret (or no shop at all) is checked against this key: random per
# process, it matches nothing, and costs the digest a known shop's request costs.
_NO_SECRET = secrets.token_bytes(32)

MISSING_SHOP = error_answer(400, "missing shop parameter")
MALFORMED_SHOP = error_answer(400, "malformed shop parameter")
MALFORMED_TOPIC = error_answer(400, "malformed topic in the path")
UNKNOWABLE_TOPIC = error_answer(400, "topic unknowable: register the webhook's topic in its path")


def webhook_id(topic: str, body: bytes) -> str:
    """The id a Recharge delivery is deduplicated by: the same topic and bytes, the same id."""
    return "recharge-" + hashlib.sha256(topic.encode() + b"\n" + body).hexdigest()


class RechargeEndpoint:
    """The Flask view of POST /webhooks/recharge[/<resource>/<action>] (not a hot path: a
    subscription store sends a few Recharge webhooks per order, not per cart change)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # WARNING lines of unsigned requests are sampled: a flood cannot flood the logs.
        self.rejections = logs.Sampler(services.settings.rejected_log_every_s)

    def __call__(self, resource: str | None = None, action: str | None = None) -> Response:
        if request.method != "POST":
            status, body = error_answer(405, "method not allowed")
            return Response(body, status, {"Allow": "POST"}, mimetype="application/json")
        path_topic = f"{resource}/{action}" if resource is not None else None
        status, body = self.receive(path_topic)
        return Response(body, status, mimetype="application/json")

    def receive(self, path_topic: str | None) -> Answer:
        """Run the checks in the documented order, then queue the webhook in one round trip."""
        services = self.services
        environ = request.environ
        known_label = metric_topic(path_topic)
        raw = read_body(environ, services.settings.max_body_bytes)
        if raw is None:
            count_unverified(services, known_label, "too_large")
            return TOO_LARGE
        shop, problem = self._shop()
        if problem is not None:
            count_unverified(services, known_label, "malformed")
            return problem
        store = services.stores.get(shop)
        # The default store serves any shop for Shopify (each request signed for its shop),
        # but RECHARGE_CLIENT_SECRET is one merchant's and `?shop=` is not signed: it covers
        # SHOPIFY_SHOP only, or one signed body could be replayed into any shop.
        named = services.settings.shopify_shop.strip().lower()
        if store is not None and not services.stores.configured(shop) and shop != named:
            store = None
        secret = store.recharge_key() if store is not None else None
        verdict = verify_recharge(
            raw,
            signature=request.headers.get(SIGNATURE_HEADER),
            timestamp=request.headers.get(TIMESTAMP_HEADER),
            legacy=request.headers.get(LEGACY_HEADER),
            secret=secret or _NO_SECRET,
            now_s=time.time(),
        )
        if store is None or secret is None or verdict.problem is not None:
            if store is None:
                reason, message = "unknown_shop", "unknown shop"
            elif secret is None:
                reason, message = "no_secret", "no recharge client secret for shop"
            elif verdict.problem == "expired":
                reason, message = "expired", "recharge signature timestamp out of range"
            else:
                reason, message = "bad_signature", "bad signature"
            known = store is not None
            return refuse_unsigned(
                services, self.rejections, shop, known_label, reason, message, known=known
            )
        # Signed from here on: the shop's own counters may be used.
        try:
            body: Any = parse_body(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            count_rejected(services, shop, known_label, "rejected")
            return NOT_AN_OBJECT
        if path_topic is not None and not TOPIC_PATTERN.fullmatch(path_topic):
            count_rejected(services, shop, known_label, "rejected")
            return MALFORMED_TOPIC
        topic = path_topic or self._header_topic() or infer_topic(body)
        if topic is None:
            count_rejected(services, shop, known_label, "rejected")
            return UNKNOWABLE_TOPIC
        envelope_topic = f"{PREFIX}/{topic}"
        if not services.source.handles(envelope_topic):
            count_rejected(services, shop, metric_topic(topic), "ignored")
            return IGNORED
        signed_at = verdict.signed_at
        signed = None if signed_at is None else iso_z(datetime.fromtimestamp(signed_at, UTC))
        env = Envelope(
            shop=shop,
            topic=envelope_topic,
            webhook_id=webhook_id(envelope_topic, raw),
            body=raw,
            triggered_at=signed,
            received_ms=now_ms(),
        )
        return queue_envelope(services, env, request_id_of(environ))

    def _shop(self) -> tuple[str, Answer | None]:
        """The shop the request names (`?shop=`), or the deployment's only one; else a 400."""
        given = request.args.getlist("shop")
        if len(given) > 1:
            return "", MALFORMED_SHOP
        if given:
            shop = given[0].strip().lower()
            return (shop, None) if is_shop_domain(shop) else ("", MALFORMED_SHOP)
        settings = self.services.settings
        sole = self.services.stores.sole_shop(settings.shopify_shop)
        if sole is None or not is_shop_domain(sole):
            return "", MISSING_SHOP
        return sole, None

    @staticmethod
    def _header_topic() -> str | None:
        value = (request.headers.get(TOPIC_HEADER) or "").strip()
        return value if TOPIC_PATTERN.fullmatch(value) else None


def add_recharge_routes(app: Flask, services: Services) -> None:
    """Route POST /webhooks/recharge and /webhooks/recharge/<resource>/<action> to one view."""
    view = RechargeEndpoint(services)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule(RECHARGE_PATH, "recharge", view, methods=methods)
    app.add_url_rule(
        f"{RECHARGE_PATH}/<resource>/<action>", "recharge_topic", view, methods=methods
    )
