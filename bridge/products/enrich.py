"""Every item of a mapped webhook gets its product's cached metadata. Pure.

Generic over the canonical facts: whatever field of a `Mapped` holds items (events, a cart or
checkout snapshot, an order or refund fact, a subscription, the browse events of the pixel
collector), at any depth, is rebuilt with the same rule, so a new event needs no code here.

An item whose product is cached gets `category` (the Standard Product Taxonomy name, else the
product type), `vendor`, and the store's metafields `replenishable` and `days_to_replenish`.
An item whose product is not cached goes out as it came (never delayed), and the product is
noted as wanted (products/cache.py) so the next event finds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, get_args

from pydantic import BaseModel

from bridge.canonical import Item, Mapped
from bridge.identity.records import StateView
from bridge.identity.view import count
from bridge.products.cache import WANTED, note_wanted, valid_id
from bridge.products.record import MetafieldKeys, metadata, record_name


def _holds_items(annotation: Any) -> bool:
    """True when a field so typed can hold an item, or a model with a field that can."""
    if annotation is Item:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return bool(_item_fields(annotation))
    return any(_holds_items(arg) for arg in get_args(annotation))


@functools.cache
def _item_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a model worth walking: those that can hold items, directly or in a model
    (not its ids, texts, times and dicts, nor a person or trait update, which hold none).
    Worked out once per class from its annotations, so the walk costs little per webhook: an
    order's walk visits its items and their containers only (was 212 steps, now 30)."""
    return tuple(name for name, info in cls.model_fields.items() if _holds_items(info.annotation))


def _items(value: Any) -> list[Item]:
    """Every item in `value`, in order (a list built in one pass: generators nested per level
    cost an order ~190 resumptions for its 24 items)."""
    out: list[Item] = []
    _collect(value, out)
    return out


def _collect(value: Any, out: list[Item]) -> None:
    if type(value) is Item:
        out.append(value)
    elif type(value) is tuple:
        for v in value:
            if type(v) is Item:
                out.append(v)
            else:
                _collect(v, out)
    elif isinstance(value, BaseModel):
        for name in _item_fields(type(value)):
            field = getattr(value, name)
            if field is not None:  # most of a Mapped's facts are absent: no call for them
                _collect(field, out)


def _rebuilt(value: Any, fn: Callable[[Item], Item]) -> Any:
    """`value` with every item replaced by `fn(item)`; the same object when nothing changed."""
    if type(value) is Item:
        return fn(value)
    if isinstance(value, BaseModel):
        updates = {}
        for name in _item_fields(type(value)):
            old = getattr(value, name)
            new = _rebuilt(old, fn)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if type(value) is tuple and value:
        out = tuple(_rebuilt(v, fn) for v in value)
        return value if all(a is b for a, b in zip(out, value, strict=True)) else out
    return value


def product_ids(mapped: Mapped) -> list[str]:
    """Every product the webhook's items name (valid ids only, first-seen order)."""
    # Deduplicated before checked: an order's lines name a few products many times over.
    ids = dict.fromkeys([item.product_id for item in _items(mapped)])
    return [pid for pid in ids if pid is not None and valid_id(pid)]


def record_names(mapped: Mapped, ids: list[str] | None = None) -> list[str]:
    """The state records enrichment reads: each product's, and the wanted list. `ids`: the
    webhook's `product_ids`, when the caller has them already."""
    if ids is None:
        ids = product_ids(mapped)
    if mapped.product is not None:
        return [record_name(mapped.product.product_id), WANTED]
    if not ids:
        return []
    names = [record_name(pid) for pid in ids]
    return names if mapped.browse is not None else [*names, WANTED]


def enrich(
    mapped: Mapped,
    view: StateView,
    keys: MetafieldKeys,
    now: datetime,
    ids: list[str] | None = None,
) -> Mapped:
    """The webhook with its items' metadata filled from the cache; products missing from it
    (or read with other metafield keys than the store's) are noted as wanted. `ids`: the
    webhook's `product_ids` when the caller worked them out already (the processor does, for
    the records it loads: each decide round would walk the items again); valid and distinct,
    as `product_ids` gives them, so they are not checked again."""
    if ids is None:
        ids = product_ids(mapped)
    if not ids:
        return mapped
    missing: list[str] = []
    found: dict[str, Any] = {}
    get = view.get
    uncached = 0
    for pid in ids:
        rec = get(record_name(pid))  # `cache.cached`, inlined (once a line of every order)
        if not isinstance(rec, dict):
            found[pid] = None
            missing.append(pid)
            uncached += 1
            continue
        meta = found[pid] = metadata(rec, keys)
        if meta is not None and meta.stale_keys:
            missing.append(pid)
    # Counted once each, not once a product, in the order a product-by-product count would
    # have named them first (the counters' order is the order the commit counts them).
    # (The first product was not cached when it has no metadata and was the first noted
    # missing: a gone product has none either, but is cached, so not missing.)
    first_uncached = found[ids[0]] is None and missing[:1] == ids[:1]
    tally = [("products:cache:miss", uncached), ("products:cache:hit", len(ids) - uncached)]
    for name, n in tally if first_uncached else reversed(tally):
        if n:
            count(view, name, n)

    def fill(item: Item) -> Item:
        meta = found.get(item.product_id) if item.product_id is not None else None
        if meta is None:
            return item
        return item._replace(
            category=meta.category or item.category,
            vendor=meta.vendor,
            replenishable=meta.replenishable,
            days_to_replenish=meta.days_to_replenish,
        )

    # Rebuilding the facts walks every field that may hold items: skipped when no product is
    # cached (a webhook of new products: the items go out as they came).
    out: Mapped = _rebuilt(mapped, fill) if any(m is not None for m in found.values()) else mapped
    # A storefront browse event is unsigned and may name any id: it is enriched from the cache
    # but never asks for an Admin API read, so a forger can neither spend the shop's API budget
    # nor fill Redis with records of products that do not exist. Signed webhooks do ask.
    if missing and mapped.browse is None:
        note_wanted(view, missing, now)
    return out
