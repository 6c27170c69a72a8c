"""Canonical events and trait updates -> outbound Pipelines call dicts (Segment spec). Pure.

Contract: the same inputs always give the same calls, messageIds included (ULIDs whose time is
the event's time and whose rest hashes its business key), so retries and replays can be
deduplicated downstream. Money becomes a JSON number, ids stay strings, None values are left
out. Raises InvalidCall when a call would have neither userId nor anonymousId, ValueError for
an unknown naming; nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from bridge.canonical import (
    ADDED_TO_CART,
    CART_VIEWED,
    CHECKOUT_STARTED,
    COLLECTION_VIEWED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
    PAYMENT_FAILED,
    PAYMENT_RECOVERED,
    PRODUCT_ADDED_TO_CART,
    PRODUCT_VIEWED,
    SEARCH_SUBMITTED,
    STOREFRONT_CHECKOUT_COMPLETED,
    STOREFRONT_CHECKOUT_STARTED,
    SUBSCRIPTION_CANCELED,
    SUBSCRIPTION_CREATED,
    SUBSCRIPTION_EXPIRED,
    SUBSCRIPTION_PAUSED,
    SUBSCRIPTION_RESUMED,
    SUBSCRIPTION_SKIPPED,
    CanonicalEvent,
    Item,
    TraitUpdate,
    line_keys,
)
from bridge.delivery.calls import Call, InvalidCall
from bridge.ids import iso_z, message_id

SOURCE = "shopify"

# `EVENT_NAMING=segment`: Segment Ecommerce v2 names (added_to_cart is split per product).
SEGMENT_NAMES = {
    ADDED_TO_CART: "Product Added",
    CHECKOUT_STARTED: "Checkout Started",
    ORDER_COMPLETED: "Order Completed",
    ORDER_REFUNDED: "Order Refunded",
    ORDER_CANCELLED: "Order Cancelled",
    ORDER_FULFILLED: "Order Fulfilled",
    # No spec names subscription events (Segment's B2B SaaS spec has only trials): these are
    # cartbridge's, in the same Title Case style.
    SUBSCRIPTION_CREATED: "Subscription Created",
    SUBSCRIPTION_PAUSED: "Subscription Paused",
    SUBSCRIPTION_RESUMED: "Subscription Resumed",
    SUBSCRIPTION_CANCELED: "Subscription Canceled",
    SUBSCRIPTION_EXPIRED: "Subscription Expired",
    SUBSCRIPTION_SKIPPED: "Subscription Skipped",
    PAYMENT_FAILED: "Payment Failed",
    PAYMENT_RECOVERED: "Payment Recovered",
    # Storefront browse events (issue 17): Segment's names where the spec has one; the pixel's
    # add and checkout pair are named apart from the webhooks' (no double count).
    PRODUCT_VIEWED: "Product Viewed",
    COLLECTION_VIEWED: "Product List Viewed",
    SEARCH_SUBMITTED: "Products Searched",
    PRODUCT_ADDED_TO_CART: "Storefront Product Added",
    CART_VIEWED: "Cart Viewed",
    STOREFRONT_CHECKOUT_STARTED: "Storefront Checkout Started",
    STOREFRONT_CHECKOUT_COMPLETED: "Storefront Checkout Completed",
}
NAMINGS = ("snake", "segment")


# The exact types `to_json` passes through as they are (a subclass, say an IntEnum, goes on to
# the checks below, as it always did).
_PLAIN = frozenset({str, int, float, bool, type(None)})


def to_json(value: Any) -> Any:
    """A JSON-ready copy: Decimal -> float, datetime -> ISO Z, tuples -> lists, None dropped
    from dicts."""
    kind = type(value)
    # Exact-type checks first: this runs for every value of every call (the hot path). A plain
    # member of a dict or list is kept in place rather than passed through a call of its own:
    # an order's properties and traits are ~4 such values to each container (2000 orders: 70 000
    # calls of this function became 16 000, 0.048 s -> 0.02 s of cProfile).
    if kind in _PLAIN:
        return value
    if kind is dict:
        return {
            str(k): v if type(v) in _PLAIN else to_json(v)
            for k, v in value.items()
            if v is not None
        }
    if kind is list or kind is tuple:
        return [v if type(v) in _PLAIN else to_json(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


# item_dict unpacks an Item by position: a field renamed or moved must fail here, at import,
# not mislabel every product sent.
_ITEM_FIELDS = (
    "product_id",
    "variant_id",
    "sku",
    "name",
    "price",
    "quantity",
    "brand",
    "category",
    "vendor",
    "replenishable",
    "days_to_replenish",
)
if Item._fields != _ITEM_FIELDS:
    raise ImportError(f"render.item_dict expects Item's fields {_ITEM_FIELDS}, not {Item._fields}")


def item_dict(item: Item) -> dict[str, Any]:
    """One product as calls carry it: product_id, variant_id, sku, name, price, quantity,
    brand, category, and the cached product's vendor, replenishable, days_to_replenish
    (None left out)."""
    # It runs for every line of every call: the named tuple unpacked once and each field
    # tested in place, rather than model_dump() + to_json(), or (name, value) pairs filtered
    # by a comprehension (3.9 -> 1.7 us a line).
    (
        product_id,
        variant_id,
        sku,
        name,
        price,
        quantity,
        brand,
        category,
        vendor,
        replenishable,
        days_to_replenish,
    ) = item
    out: dict[str, Any] = {}
    if product_id is not None:
        out["product_id"] = product_id
    if variant_id is not None:
        out["variant_id"] = variant_id
    if sku is not None:
        out["sku"] = sku
    if name is not None:
        out["name"] = name
    if price is not None:
        out["price"] = float(price)
    if quantity is not None:
        out["quantity"] = quantity
    if brand is not None:
        out["brand"] = brand
    if category is not None:
        out["category"] = category
    if vendor is not None:
        out["vendor"] = vendor
    if replenishable is not None:
        out["replenishable"] = replenishable
    if days_to_replenish is not None:
        out["days_to_replenish"] = days_to_replenish
    return out


def _who(user_id: str | None, anonymous_id: str | None, kind: str) -> dict[str, str]:
    # Each id tested in place rather than a dict filtered by a comprehension: two calls of an
    # order go through here (~1 us each saved).
    if user_id:
        if anonymous_id:
            return {"userId": user_id, "anonymousId": anonymous_id}
        return {"userId": user_id}
    if anonymous_id:
        return {"anonymousId": anonymous_id}
    raise InvalidCall(f"{kind} needs userId or anonymousId")


def _track(mid: str, at: datetime, who: dict[str, str], event: str, props: dict[str, Any]) -> Call:
    return {
        "type": "track",
        "messageId": mid,
        "timestamp": iso_z(at),
        **who,
        "event": event,
        "properties": props,
    }


def track_call(
    event: CanonicalEvent,
    *,
    user_id: str | None,
    anonymous_id: str | None,
    shop: str,
    naming: str = "snake",
    extra_properties: dict[str, Any] | None = None,
    stable_id: tuple[datetime, str] | None = None,
) -> list[Call]:
    """The track call(s) for one canonical event.

    `snake` gives one call named as the event, its lines under `items`. `segment` renames to
    Segment Ecommerce v2 with lines under `products`, except `added_to_cart`, which becomes one
    `Product Added` per line with the product's fields at the top level (no line, no call).
    `extra_properties` (from the stateful step) are merged over the event's own. `stable_id`
    (time, id) is the caller's own id for the first call; any further call's id is derived from
    it (`message_id(time, id, str(i))`).
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown event naming {naming!r}")
    who = _who(user_id, anonymous_id, "track")
    props = to_json({**event.properties, **(extra_properties or {})})
    if naming == "segment" and event.name == ADDED_TO_CART:
        props.pop("items", None)
        calls = []
        for i, (item, line_key) in enumerate(zip(event.items, line_keys(event.items), strict=True)):
            if stable_id is None:
                mid = message_id(event.timestamp, SOURCE, shop, event.name, event.key, line_key)
            else:
                mid = stable_id[1] if i == 0 else message_id(stable_id[0], stable_id[1], str(i))
            product = {**props, **item_dict(item)}
            calls.append(_track(mid, event.timestamp, who, SEGMENT_NAMES[ADDED_TO_CART], product))
        return calls
    name, list_key = event.name, "items"
    if naming == "segment":
        name, list_key = SEGMENT_NAMES.get(event.name, event.name), "products"
    props[list_key] = [item_dict(i) for i in event.items]
    if stable_id is None:
        mid = message_id(event.timestamp, SOURCE, shop, event.name, event.key)
    else:
        mid = stable_id[1]
    return [_track(mid, event.timestamp, who, name, props)]


def added_to_cart_calls(
    added: Sequence[tuple[str, Item]],
    *,
    at: datetime,
    properties: dict[str, Any],
    user_id: str | None,
    anonymous_id: str | None,
    naming: str = "snake",
) -> list[Call]:
    """For each (messageId, item) of a cart's added lines, the call `track_call` gives for an
    `added_to_cart` event of that one item with `stable_id` (at, messageId), without building
    the events: the lines share everything but the item and the id. `properties` are the
    event's, JSON-ready (`to_json`); unchanged."""
    if naming not in NAMINGS:
        raise ValueError(f"unknown event naming {naming!r}")
    if not added:
        return []
    who = _who(user_id, anonymous_id, "track")
    timestamp = iso_z(at)
    if naming == "segment":
        name = SEGMENT_NAMES[ADDED_TO_CART]
        shared = {k: v for k, v in properties.items() if k != "items"}
        return [
            {
                "type": "track",
                "messageId": mid,
                "timestamp": timestamp,
                **who,
                "event": name,
                "properties": {**shared, **item_dict(item)},
            }
            for mid, item in added
        ]
    return [
        {
            "type": "track",
            "messageId": mid,
            "timestamp": timestamp,
            **who,
            "event": ADDED_TO_CART,
            "properties": {**properties, "items": [item_dict(item)]},
        }
        for mid, item in added
    ]


def traits_digest(traits: Mapping[str, Any]) -> str:
    """A stable hash of JSON-ready traits (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(traits, option=orjson.OPT_SORT_KEYS)).hexdigest()


def identify_call(
    update: TraitUpdate, *, user_id: str | None, anonymous_id: str | None, shop: str
) -> Call:
    """The identify call for one trait update; identical traits give an identical messageId.

    The anonymousId joins the messageId's key only when present, because an identify that
    merges a new anonymous profile must not be deduplicated against one that did not.
    """
    return identify_traits_call(
        update.traits, update.timestamp, user_id=user_id, anonymous_id=anonymous_id, shop=shop
    )


def identify_traits_call(
    traits: Mapping[str, Any],
    at: datetime,
    *,
    user_id: str | None,
    anonymous_id: str | None,
    shop: str,
) -> Call:
    """`identify_call` of these traits at this time, for a caller that has no TraitUpdate to
    hand (identity/traits.py renders one identify a webhook: building the model and its empty
    PersonRef only to read them back cost more than the call's own fields)."""
    who = _who(user_id, anonymous_id, "identify")
    json_traits = to_json(traits)
    parts = [SOURCE, shop, "identify", user_id or "", traits_digest(json_traits)]
    if anonymous_id:
        parts.append(anonymous_id)
    return {
        "type": "identify",
        "messageId": message_id(at, *parts),
        "timestamp": iso_z(at),
        **who,
        "traits": json_traits,
    }


def alias_call(previous_id: str, user_id: str, at: datetime, shop: str) -> Call:
    """The alias call making `user_id` inherit `previous_id` (destructive downstream: a merge)."""
    if not previous_id or not user_id:
        raise InvalidCall("alias needs previousId and userId")
    return {
        "type": "alias",
        "messageId": message_id(at, SOURCE, shop, "alias", previous_id, user_id),
        "timestamp": iso_z(at),
        "previousId": previous_id,
        "userId": user_id,
    }
