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
from bridge.products.cache import WANTED, cached_metadata, note_wanted, valid_id
from bridge.products.record import MetafieldKeys, record_name


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
            if old is None:  # an absent fact (most of a Mapped's): nothing to walk
                continue
            new = _rebuilt(old, fn)
            if new is not old:
                updates[name] = new
        return value.model_copy(update=updates) if updates else value
    if type(value) is tuple and value:
        # One loop, noting whether anything changed (not a generator, then another over pairs).
        out = []
        changed = False
        for v in value:
            new = fn(v) if type(v) is Item else _rebuilt(v, fn)
            changed = changed or new is not v
            out.append(new)
        return tuple(out) if changed else value
    return value


# What the cache gives an item, its last fields: `enrich` builds an enriched item from the
# first fields of the item and these, by position: 1.5 µs an item, not `_replace`'s 3.9.
_ENRICHED = ("category", "vendor", "replenishable", "days_to_replenish")
_KEPT = len(Item._fields) - len(_ENRICHED)
if Item._fields[_KEPT:] != _ENRICHED:
    raise RuntimeError(
        "enrich builds items by position: Item's last fields must be " + str(_ENRICHED)
    )


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
    uncached = 0
    known = False  # some product has metadata: the items are rebuilt
    for pid in ids:
        rec, meta = cached_metadata(view, pid, keys)
        found[pid] = meta
        known = known or meta is not None
        if rec is None:
            missing.append(pid)
            uncached += 1
        elif meta is not None and meta.stale_keys:
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

    # Each item once: an order's lines are the same Item objects in its event and its order
    # fact (kept alive by `mapped` while this runs, so their ids are theirs).
    filled: dict[int, Item] = {}

    def fill(item: Item) -> Item:
        done = filled.get(id(item))
        if done is not None:
            return done
        meta = found.get(item.product_id) if item.product_id is not None else None
        if meta is None:
            new = item
        else:
            # `item._replace(category=..., vendor=..., replenishable=..., days_to_replenish=...)`
            new = Item._make(
                (
                    *item[:_KEPT],
                    meta.category or item.category,
                    meta.vendor,
                    meta.replenishable,
                    meta.days_to_replenish,
                )
            )
        filled[id(item)] = new
        return new

    # Rebuilding the facts walks every field that may hold items: skipped when no product is
    # cached (a webhook of new products: the items go out as they came).
    out: Mapped = _rebuilt(mapped, fill) if known else mapped
    # A storefront browse event is unsigned and may name any id: it is enriched from the cache
    # but never asks for an Admin API read, so a forger can neither spend the shop's API budget
    # nor fill Redis with records of products that do not exist. Signed webhooks do ask.
    if missing and mapped.browse is None:
        note_wanted(view, missing, now)
    return out
