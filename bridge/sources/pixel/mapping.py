"""Storefront pixel events -> canonical browse events (pure, no I/O).

One standard Web Pixels event becomes one candidate event about an anonymous person (the
anonymous id derived from the shop and the pixel's clientId) with its products as canonical
`Item`s, the shape every other event carries, and a `BrowseFact` naming what the policy and
the identity step need. Nothing a browser sends names a person: customer ids, emails, phones
and addresses in the event's data are never read (docs/browse.md, "the identity rule").

The browser's timestamp is used as the event's time only within a plausible range of when the
collector received it (`ctx.triggered_at`): anyone can post any timestamp.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bridge.canonical import (
    CART_VIEWED,
    COLLECTION_VIEWED,
    MAX_EVENT_ITEMS,
    PRODUCT_ADDED_TO_CART,
    PRODUCT_VIEWED,
    SEARCH_SUBMITTED,
    STOREFRONT_CHECKOUT_COMPLETED,
    STOREFRONT_CHECKOUT_STARTED,
    BrowseFact,
    CanonicalEvent,
    Item,
    MapContext,
    Mapped,
    PersonRef,
)
from bridge.identity.browse_policy import PIXEL_EVENTS
from bridge.ids import client_anonymous_id, gid_to_id
from bridge.sources import MappingError
from bridge.sources.pixel.body import BodyProblem, check_body

PREFIX = "pixel"
# The canonical event each pixel event becomes.
CANONICAL_NAMES = {
    "product_viewed": PRODUCT_VIEWED,
    "collection_viewed": COLLECTION_VIEWED,
    "search_submitted": SEARCH_SUBMITTED,
    "product_added_to_cart": PRODUCT_ADDED_TO_CART,
    "cart_viewed": CART_VIEWED,
    "checkout_started": STOREFRONT_CHECKOUT_STARTED,
    "checkout_completed": STOREFRONT_CHECKOUT_COMPLETED,
}
# Lists of products a browse event carries at most (collections and searches list many; the
# pixel trims them too, this holds for a body that did not).
MAX_LISTED_PRODUCTS = 10
MAX_TEXT_CHARS = 500
MAX_QUERY_CHARS = 200
# A browser's clock may be off; beyond these the collector's receipt time is the event's time.
MAX_PAST = timedelta(days=1)
MAX_FUTURE = timedelta(minutes=5)
# Prices beyond this are not a product's (a hostile 1e308): left out.
MAX_PRICE = Decimal("1e12")
# Page and product URLs are forwarded (a template may turn them into links) only as an http(s)
# address or a path on the store's own site, whole: a longer one is dropped, never cut.
MAX_URL_CHARS = 2048
_ABSOLUTE_URL = re.compile(r"https?://[^/?#\\@]+(?:[/?#]\S*)?", re.IGNORECASE | re.ASCII)
# A path on the site; not "//host" or "/\\host", which browsers read as another host.
_SITE_PATH = re.compile(r"/(?![/\\])\S*")
# Control characters and whitespace (browsers drop some of them inside a URL: "java\tscript:")
# and what a browser's own `location.href` never holds raw (quotes and angle brackets are
# percent-encoded, backslashes become slashes): a URL holding any is dropped.
_NOT_IN_URL = re.compile(r'[\x00-\x20\x7f-\x9f\s<>"`\\]')


def topic_of(pixel_event: str) -> str:
    """The envelope topic of a pixel event (`pixel/product_viewed`)."""
    return f"{PREFIX}/{pixel_event}"


def _text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value[:limit] or None
    return None


def _id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    text = _text(value, 200)
    found = gid_to_id(text) if text else None
    return found[:100] if found else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _amount(money: Any) -> Decimal | None:
    """A Web Pixels money amount (a number there, unlike webhooks' strings), finite and sane."""
    raw = _obj(money).get("amount")
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        return None
    try:
        value = Decimal(str(raw))
    except ArithmeticError:
        return None
    if not value.is_finite() or abs(value) > MAX_PRICE:
        return None
    return value.quantize(Decimal("0.01"))


def _currency(money: Any) -> str | None:
    code = _obj(money).get("currencyCode")
    return code.upper() if isinstance(code, str) and len(code) == 3 and code.isalpha() else None


def _quantity(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return min(max(value, 0), 10_000)


def variant_item(variant: Any, quantity: int = 1) -> Item | None:
    """A Web Pixels `ProductVariant` as the canonical item (None when it names no product)."""
    v = _obj(variant)
    product = _obj(v.get("product"))
    item = Item(
        product_id=_id(product.get("id")),
        variant_id=_id(v.get("id")),
        sku=_text(v.get("sku"), 100),
        name=_text(product.get("untranslatedTitle"))
        or _text(product.get("title"))
        or _text(v.get("untranslatedTitle"))
        or _text(v.get("title")),
        price=_amount(v.get("price")),
        quantity=quantity,
        brand=_text(product.get("vendor"), 200),
        category=_text(product.get("type"), 200),
    )
    return item if (item.product_id or item.variant_id or item.sku) else None


def _variants(values: Any, limit: int) -> tuple[Item, ...]:
    items = []
    for value in values if isinstance(values, list) else []:
        item = variant_item(value)
        if item is not None:
            items.append(item)
            if len(items) == limit:
                break
    return tuple(items)


def _lines(values: Any, variant_key: str) -> tuple[Item, ...]:
    items = []
    for value in values if isinstance(values, list) else []:
        line = _obj(value)
        item = variant_item(line.get(variant_key), _quantity(line.get("quantity")))
        if item is not None:
            items.append(item)
            if len(items) == MAX_EVENT_ITEMS:
                break
    return tuple(items)


def _time(raw: str, received: datetime | None) -> datetime:
    now = received or datetime.now(UTC)
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return now
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at if now - MAX_PAST <= at <= now + MAX_FUTURE else now


def site_url(value: Any) -> str | None:
    """`value` when it is an http(s) URL or a path on the site, at most MAX_URL_CHARS, else
    None: `javascript:`, `data:` and every other scheme, protocol-relative `//host`, and
    anything with whitespace or control characters in it are dropped, never repaired."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        return None
    if _NOT_IN_URL.search(value):
        return None
    if _SITE_PATH.fullmatch(value) or _ABSOLUTE_URL.fullmatch(value):
        return value
    return None


def _page_url(event: dict[str, Any]) -> str | None:
    location = _obj(_obj(_obj(event.get("context")).get("document")).get("location"))
    return site_url(location.get("href"))


def _details(
    name: str, data: dict[str, Any]
) -> tuple[tuple[Item, ...], dict[str, Any], str | None]:
    """(items, properties, product to throttle views on) of one event's data."""
    props: dict[str, Any] = {}
    if name == "product_viewed":
        variant = data.get("productVariant")
        item = variant_item(variant)
        props["currency"] = _currency(_obj(variant).get("price"))
        props["product_url"] = site_url(_obj(_obj(variant).get("product")).get("url"))
        items = (item,) if item is not None else ()
        return items, props, (item.product_id or item.variant_id) if item else None
    if name == "collection_viewed":
        collection = _obj(data.get("collection"))
        props["collection_id"] = _id(collection.get("id"))
        props["collection_title"] = _text(collection.get("title"))
        return _variants(collection.get("productVariants"), MAX_LISTED_PRODUCTS), props, None
    if name == "search_submitted":
        result = _obj(data.get("searchResult"))
        props["query"] = _text(result.get("query"), MAX_QUERY_CHARS)
        return _variants(result.get("productVariants"), MAX_LISTED_PRODUCTS), props, None
    if name == "product_added_to_cart":
        line = _obj(data.get("cartLine"))
        item = variant_item(line.get("merchandise"), _quantity(line.get("quantity")))
        total = _obj(_obj(line.get("cost")).get("totalAmount"))
        props["value"], props["currency"] = _amount(total), _currency(total)
        return ((item,) if item is not None else ()), props, None
    if name == "cart_viewed":
        cart = _obj(data.get("cart"))
        total = _obj(_obj(cart.get("cost")).get("totalAmount"))
        props["value"], props["currency"] = _amount(total), _currency(total)
        return _lines(cart.get("lines"), "merchandise"), props, None
    # checkout_started, checkout_completed: lines and totals only, never the buyer.
    checkout = _obj(data.get("checkout"))
    total = _obj(checkout.get("totalPrice"))
    props["value"] = _amount(total)
    props["currency"] = _currency(total) or _text(checkout.get("currencyCode"), 3)
    return _lines(checkout.get("lineItems"), "variant"), props, None


def map_pixel_event(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """One collector body -> a candidate browse event and its BrowseFact. Raises MappingError
    for a body the collector would have refused (it never queues one)."""
    try:
        checked = check_body(body)
    except BodyProblem as exc:
        raise MappingError(f"{PREFIX}/{topic}: {exc.message}") from None
    if checked.name != topic:
        raise MappingError(f"{PREFIX}/{topic}: body names another event")
    if checked.shop != ctx.shop:
        raise MappingError(f"{PREFIX}/{topic}: body names another shop")
    client = client_anonymous_id(ctx.shop, checked.client_id)
    items, props, product = _details(checked.name, _obj(checked.event.get("data")))
    props["page_url"] = _page_url(checked.event)
    props["pixel_event_id"] = checked.event_id
    event = CanonicalEvent(
        name=CANONICAL_NAMES[checked.name],
        timestamp=_time(checked.event["timestamp"], ctx.triggered_at),
        key=f"pixel:{client}:{checked.event_id}",
        person=PersonRef(anonymous_id=client),
        properties={k: v for k, v in props.items() if v is not None},
        items=items,
    )
    fact = BrowseFact(
        pixel_event=checked.name,
        event_id=checked.event_id,
        client=client,
        cart_token=checked.cart_token,
        checkout_token=checked.checkout_token,
        product=product,
    )
    return Mapped(source=PREFIX, topic=topic, events=(event,), browse=fact)


class PixelSource:
    """The storefront pixel as a `Source`: topics are the standard event names."""

    name = PREFIX

    def handles(self, topic: str) -> bool:
        return topic in PIXEL_EVENTS

    def map(self, topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
        if topic not in PIXEL_EVENTS:
            return Mapped(source=self.name, topic=topic, skipped="topic not mapped")
        return map_pixel_event(topic, body, ctx)
