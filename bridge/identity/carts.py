"""Cart and checkout state: line levels for real additions, live cart traits, conversion marks,
and checkouts held until they have a contact. Pure over a StateView.

Records (relative to the shop's state prefix):
- `cart:<token>` (shared with the graph) also keeps `"at"` (updated_at of the last `carts/*`
  snapshot, which the line diff is against), `"lines"` `{line key: quantity}`, and the live
  cart: `"live_at"`, `"items"`, `"value"`, `"url"`, `"checkout_url"`.
- `conv:cart:<token>`, `conv:checkout:<token>`, `conv:checkout_id:<id>` -> `{"order"}`: the
  cart/checkout was converted by an order. They are the guards of every `added_to_cart` and
  `checkout_started` call, so delivery drops such a call still queued when the order lands.
- `held:checkouts` -> `{"e": {checkout ref: since ISO}}`: checkouts waiting for a contact;
  `co_drop:<ref>` marks one dropped by `expire_held` after the wait.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from bridge.canonical import CartSnapshot, Item, line_keys
from bridge.delivery import render
from bridge.identity.records import StateView
from bridge.identity.view import count
from bridge.ids import iso_z

HELD_CHECKOUTS = "held:checkouts"
MAX_TRAIT_BYTES = 900  # Customer.io keeps attribute values up to 1000 bytes


def additions(
    old: dict[str, int], items: tuple[Item, ...]
) -> tuple[dict[str, int], list[tuple[str, int, Item]]]:
    """New line levels, and each (line key, level reached, item carrying the added quantity)."""
    new: dict[str, int] = {}
    added = []
    keys = line_keys(items)
    for key, item in zip(keys, items, strict=True):
        new[key] = new.get(key, 0) + item.quantity
    for key, item in zip(keys, items, strict=True):
        before = int(old.get(key, 0))
        if new[key] > before:
            quantity = new[key] - before
            # A new line (the common case) is added whole: the item itself, not a copy.
            if quantity != item.quantity:
                item = item._replace(quantity=quantity)
            added.append((key, new[key], item))
    return new, added


def conversion_guards(
    cart_token: str | None, checkout_token: str | None, checkout_id: str | None
) -> tuple[str, ...]:
    names = []
    if cart_token:
        names.append("conv:cart:" + cart_token)
    if checkout_token:
        names.append("conv:checkout:" + checkout_token)
    if checkout_id:
        names.append("conv:checkout_id:" + checkout_id)
    return tuple(names)


def converted(view: StateView, guards: tuple[str, ...]) -> bool:
    return any(view.get(g) is not None for g in guards)


def convert(view: StateView, guards: tuple[str, ...], order_id: str) -> None:
    for g in guards:
        if view.get(g) is None:
            view.put(g, {"order": order_id})


def _items_trait(items: tuple[Item, ...]) -> list[dict[str, Any]]:
    # Whole lines only, as many as fit one attribute value.
    out: list[dict[str, Any]] = []
    size = 2
    for item in items:
        d = render.to_json(
            {
                "product_id": item.product_id,
                "variant_id": item.variant_id,
                "name": item.name,
                "quantity": item.quantity,
                "price": item.price,
            }
        )
        n = len(orjson.dumps(d)) + 1
        if size + n > MAX_TRAIT_BYTES:
            break
        out.append(d)
        size += n
    return out


def update_live(view: StateView, snap: CartSnapshot, *, from_checkout: bool) -> bool:
    """Take a snapshot as the cart's live state unless an newer one is known; True if taken."""
    name = "cart:" + snap.cart_token
    rec = view.get(name) or {}
    at = iso_z(snap.updated_at)
    if rec.get("live_at") and at <= str(rec["live_at"]):
        return False
    rec = {
        **rec,
        "live_at": at,
        "items": _items_trait(snap.items),
        "value": str(snap.value),
    }
    if snap.url:
        rec["checkout_url" if from_checkout else "url"] = snap.url
    view.put(name, rec)
    return True


def live_traits(view: StateView, cart_token: str) -> dict[str, Any]:
    rec = view.get("cart:" + cart_token) or {}
    if not rec.get("live_at"):
        return {}
    return {
        "cart_items": rec.get("items") or [],
        "cart_value": float(rec.get("value") or 0),
        "cart_url": rec.get("url"),
        "checkout_url": rec.get("checkout_url"),
        "cart_updated_at": rec["live_at"],
    }


def hold_checkout(view: StateView, ref: str, now: datetime) -> None:
    idx = view.get(HELD_CHECKOUTS) or {}
    entries = dict(idx.get("e") or {})
    if ref not in entries:
        entries[ref] = iso_z(now)
        view.put(HELD_CHECKOUTS, {"e": entries})


def release_checkout(view: StateView, ref: str) -> None:
    idx = view.get(HELD_CHECKOUTS) or {}
    entries = dict(idx.get("e") or {})
    if entries.pop(ref, None) is not None:
        if entries:
            view.put(HELD_CHECKOUTS, {"e": entries})
        else:
            view.delete(HELD_CHECKOUTS)


def expire_held(view: StateView, now: datetime, wait_s: int) -> int:
    """Drop checkouts held without a contact for `wait_s` or more; returns how many (counted
    as `events:checkout_started:dropped_no_contact`). A later contact for one sends nothing."""
    idx = view.get(HELD_CHECKOUTS) or {}
    entries = dict(idx.get("e") or {})
    limit = now - timedelta(seconds=wait_s)
    due = [ref for ref, since in entries.items() if datetime.fromisoformat(since) <= limit]
    for ref in due:
        del entries[ref]
        view.put("co_drop:" + ref, {"at": iso_z(now)})
    if due:
        if entries:
            view.put(HELD_CHECKOUTS, {"e": entries})
        else:
            view.delete(HELD_CHECKOUTS)
        count(view, "events:checkout_started:dropped_no_contact", len(due))
    return len(due)
