"""The collector's body: `{"shop", "cart_token", "event"}` as the shipped pixel posts it, checked
(pure). The web refuses what `check_body` refuses, so the worker's mapping only ever reads
bodies of this shape; it checks again anyway (`read_body` raises MappingError).

Every field is a hint from a browser: nothing here is trusted for identity (docs/browse.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bridge.identity.browse_policy import PIXEL_EVENTS
from bridge.ids import normalise_cart_token

# The browser's keepalive budget is 64 KiB per page (web-pixels.md section 5); larger bodies
# never leave a real browser, so anything above is refused before it is read.
MAX_PIXEL_BODY_BYTES = 64 * 1024
# Arrays and objects a body may nest: a real event nests about 10 deep (body, event, data,
# checkout, lineItems, a line, discountAllocations, one, discountApplication, value). Deeper
# is refused before parsing: the stdlib's parser and anything that walks the result recurse.
MAX_PIXEL_DEPTH = 32
MAX_ID_CHARS = 128
MAX_TIMESTAMP_CHARS = 64
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,128}")
# Cart and checkout tokens name state records (`claim:cart:<token>`): a token of other
# characters is not Shopify's, and is dropped as a hint (not refused).
_TOKEN = re.compile(r"[A-Za-z0-9_\-.=]{1,200}")
_SHOP = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
KNOWN_EVENTS = frozenset(PIXEL_EVENTS)


class BodyProblem(ValueError):
    """Why a body is refused: `status` and a short message (never echoing a value)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PixelBody:
    """A checked body: the shop (lower-cased), the event's name, id and clientId, and the
    hints (normalised, or None when absent or not token-shaped)."""

    shop: str
    name: str
    event_id: str
    client_id: str
    cart_token: str | None
    checkout_token: str | None
    event: dict[str, Any]


def token(raw: Any) -> str | None:
    """A cart or checkout token as state records name it, or None."""
    if not isinstance(raw, str):
        return None
    value = normalise_cart_token(raw)
    return value if value and _TOKEN.fullmatch(value) else None


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    return data if isinstance(data, dict) else {}


def checkout_token_of(event: dict[str, Any]) -> str | None:
    checkout = _data(event).get("checkout")
    return token(checkout.get("token")) if isinstance(checkout, dict) else None


def cart_token_of(body: dict[str, Any], event: dict[str, Any]) -> str | None:
    """The body's cart token (the pixel takes it from init.data.cart), else cart_viewed's own."""
    found = token(body.get("cart_token"))
    if found is None:
        cart = _data(event).get("cart")
        found = token(cart.get("id")) if isinstance(cart, dict) else None
    return found


def check_body(body: Any) -> PixelBody:
    """A parsed body as a PixelBody. Raises BodyProblem: 400 for a malformed body, 422 for
    an event name the collector does not take. The shop is checked for shape only (the web
    knows which shops it serves)."""
    if not isinstance(body, dict):
        raise BodyProblem(400, "body is not a JSON object")
    shop = body.get("shop")
    if not isinstance(shop, str) or not shop:
        raise BodyProblem(400, "missing shop")
    shop = shop.strip().lower()
    if len(shop) > 255 or not _SHOP.fullmatch(shop):
        raise BodyProblem(400, "malformed shop")
    cart = body.get("cart_token")
    if cart is not None and not isinstance(cart, str):
        raise BodyProblem(400, "cart_token must be a string or null")
    event = body.get("event")
    if not isinstance(event, dict):
        raise BodyProblem(400, "missing event")
    name = event.get("name")
    if not isinstance(name, str) or not name:
        raise BodyProblem(400, "missing event name")
    if name not in KNOWN_EVENTS:
        raise BodyProblem(422, "event not collected")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _PRINTABLE.fullmatch(event_id):
        raise BodyProblem(400, "missing or malformed event id")
    client_id = event.get("clientId")
    if not isinstance(client_id, str) or not _PRINTABLE.fullmatch(client_id):
        raise BodyProblem(400, "missing or malformed clientId")
    stamp = event.get("timestamp")
    if not isinstance(stamp, str) or len(stamp) > MAX_TIMESTAMP_CHARS:
        raise BodyProblem(400, "missing or malformed timestamp")
    data = event.get("data")
    if data is not None and not isinstance(data, dict):
        raise BodyProblem(400, "event data must be an object or null")
    return PixelBody(
        shop=shop,
        name=name,
        event_id=event_id,
        client_id=client_id,
        cart_token=cart_token_of(body, event),
        checkout_token=checkout_token_of(event),
        event=event,
    )
