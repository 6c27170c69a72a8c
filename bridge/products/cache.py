"""The product cache in a batch's state view: product facts written, wanted products noted. Pure.

Shop-wide record `products:wanted` -> `{"ids": {product id: ISO time first wanted},
"who": {product id: [customer id, ...]}}`: products an item named that the cache did not hold,
and the customers whose replenishment date waits for one (identity/replenishment.py; customer
ids only, at most MAX_WAITING a product: a guest's date waits for their next order). The
drain notes them (it is the one writer of the shop's state); the sweep reads them and asks the
Admin API (products/sync.py), whose answers come back through the drain as `backfill/product`
facts, which take them off the list and recompute the waiting customers' dates.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any, TypeGuard

from bridge.canonical import ProductFact
from bridge.identity.records import DAY_S, StateView
from bridge.identity.view import count
from bridge.ids import iso_z
from bridge.products.record import Metadata, MetafieldKeys, merged, metadata, newer, record_name

WANTED = "products:wanted"
# Products waiting to be read at most: past it the oldest are forgotten (an item naming one
# again notes it again). Bounded so a flood of unknown ids cannot grow the record.
MAX_WANTED = 500
# A product id as Shopify writes it (a GID's numeric tail); anything else is never looked up.
MAX_ID_CHARS = 20
# Customers noted per wanted product, whose replenishment dates it recomputes when it comes.
MAX_WAITING = 20
# The cache's default lifetime; the setting PRODUCT_CACHE_TTL_S overrides it per process.
DEFAULT_TTL_S = 7 * DAY_S


def valid_id(product_id: str | None) -> TypeGuard[str]:
    return (
        product_id is not None
        and 0 < len(product_id) <= MAX_ID_CHARS
        and product_id.isascii()
        and product_id.isdigit()
    )


def apply(view: StateView, fact: ProductFact, ttl_s: int = DEFAULT_TTL_S) -> bool:
    """Write a product fact to the cache unless the cached record is newer; True if written.
    Either way the product is no longer wanted."""
    if not valid_id(fact.product_id):
        count(view, "products:fact:invalid")
        return False
    name = record_name(fact.product_id)
    old = view.get(name)
    unwant(view, [fact.product_id])
    if not newer(old, fact):
        count(view, "products:fact:stale")
        return False
    view.put(name, merged(old, fact), ttl_s)
    count(view, "products:fact:gone" if fact.gone else "products:fact:cached")
    return True


def wait_for(view: StateView, product_ids: list[str], customer_id: str) -> None:
    """Note that this customer's replenishment date waits for these (wanted) products."""
    rec = view.get(WANTED) or {}
    listed = rec.get("ids")
    ids = listed if isinstance(listed, dict) else {}  # only asked: not copied (up to 500 ids)
    # Updated in place, as `want` does (the record is put again below when it changed).
    listed_who = rec.get("who")
    who = listed_who if isinstance(listed_who, dict) else {}
    changed = False
    for pid in product_ids:
        if pid not in ids:
            continue
        waiting = list(who.get(pid) or [])
        if customer_id not in waiting:
            who[pid] = [*waiting, customer_id][-MAX_WAITING:]
            changed = True
    if changed:
        view.put(WANTED, {**rec, "who": who})


def take_waiting(view: StateView, product_id: str) -> list[str]:
    """The customers whose dates waited for this product, taken off the list."""
    rec = view.get(WANTED) or {}
    who = rec.get("who") if isinstance(rec.get("who"), dict) else None
    if not who or product_id not in who:
        return []
    waiting = [str(c) for c in who.get(product_id) or []]
    left = {pid: c for pid, c in who.items() if pid != product_id}
    rest = {k: v for k, v in rec.items() if k != "who"}
    if left:
        rest["who"] = left
    if rest.get("ids") or left:
        view.put(WANTED, rest)
    else:
        view.delete(WANTED)
    return waiting


def wanted(view: StateView) -> dict[str, str]:
    rec = view.get(WANTED) or {}
    ids = rec.get("ids")
    return dict(ids) if isinstance(ids, dict) else {}


def want(view: StateView, product_ids: list[str], now: datetime) -> int:
    """Note products to read; returns how many were new to the list."""
    rec = view.get(WANTED) or {}
    listed = rec.get("ids")
    known = listed if isinstance(listed, dict) else {}
    fresh = [pid for pid in dict.fromkeys(product_ids) if valid_id(pid) and pid not in known]
    return _noted(view, rec, known, fresh, now)


def note_wanted(view: StateView, product_ids: list[str], now: datetime) -> int:
    """`want` for ids already valid and distinct (enrichment's, from `enrich.product_ids`):
    not checked a second time (8 checks for every order of 8 new products)."""
    rec = view.get(WANTED) or {}
    listed = rec.get("ids")
    known = listed if isinstance(listed, dict) else {}
    return _noted(view, rec, known, [pid for pid in product_ids if pid not in known], now)


def _noted(
    view: StateView, rec: dict[str, Any], known: dict[str, Any], fresh: list[str], now: datetime
) -> int:
    """Put `fresh` (ids not on the list `known`, the record `rec`'s) on the wanted list."""
    if not fresh:
        return 0  # the common case
    # The record's own lists are updated in place, not copied (up to MAX_WANTED ids, and as
    # many waiting lists, for every order naming a product not cached yet): the view owns the
    # records it holds (parsed from what it loaded, or put by this batch), nothing else keeps
    # them, and the record is put again below.
    ids = known
    at = iso_z(now)
    for pid in fresh:
        ids[pid] = at
    listed_who = rec.get("who")
    who = listed_who if isinstance(listed_who, dict) else {}
    if len(ids) > MAX_WANTED:
        # Oldest first out: the record keeps ids in the order they were first wanted.
        over = len(ids) - MAX_WANTED
        for pid in list(itertools.islice(ids, over)):
            del ids[pid]
            who.pop(pid, None)
        count(view, "products:wanted:forgotten", over)
    view.put(WANTED, {"ids": ids, "who": who} if who else {"ids": ids})
    return len(fresh)


def unwant(view: StateView, product_ids: list[str]) -> None:
    """Take products off the wanted list (the customers waiting for them stay, for
    `take_waiting`)."""
    rec = view.get(WANTED) or {}
    ids = wanted(view)
    left = {pid: at for pid, at in ids.items() if pid not in product_ids}
    if len(left) == len(ids):
        return
    if left or rec.get("who"):
        view.put(WANTED, {**rec, "ids": left})
    else:
        view.delete(WANTED)


def cached(view: StateView, product_id: str) -> dict[str, Any] | None:
    """The cached record of a product (a `gone` one included), or None."""
    rec = view.get(record_name(product_id))
    return rec if isinstance(rec, dict) else None


def cached_metadata(
    view: StateView, product_id: str, keys: MetafieldKeys
) -> tuple[dict[str, Any] | None, Metadata | None]:
    """`cached(view, product_id)`, and `record.metadata` of it (None for no record, or a gone
    product), worked out once per record a batch: enrichment reads each line's product, and
    replenishment the same products again: a repeat read costs 0.27 µs, not the 2.2 µs of
    reading and parsing the record (8 a bench/order_path.py order, its products cached)."""
    name = record_name(product_id)
    rec = view.get(name)
    if not isinstance(rec, dict):
        return None, None
    memo = view.derived
    known = memo.get(("metadata", name))
    if known is not None and known[0] is rec and (known[1] is keys or known[1] == keys):
        return rec, known[2]
    meta = metadata(rec, keys)
    memo["metadata", name] = (rec, keys, meta)
    return rec, meta
