"""Replenishment dates at the source: when each person runs out of what they buy again. Pure.

Kept in the per-customer order index (identity/orders.py), on each order and refund entry:
- order `"rl": [[product id, label, quantity, days]]`: its lines of products that are (or may
  be) replenishable; `label` is the line's SKU (else variant, else product id); `days` is the
  product's `days_to_replenish` once the product cache knew it, null while the product was
  not cached yet (resolved at the next recomputation that finds it cached: lines of products
  known not to be replenishable are dropped); `"x": true` marks a cancelled order;
- refund `"rl": [[label, quantity]]`: the quantities it refunded.

The traits, recomputed on every order and refund (live or backfilled):
- `next_replenishment_date`: for each replenishable SKU, its cover date is the latest over
  the orders containing it of order time + days_to_replenish x net quantity (bought minus
  refunded; a fully refunded line counts for nothing). The trait is the earliest cover date
  not before now, else (all lapsed) the latest lapsed one; null when nothing is replenishable.
- `replenishment_skus`: the SKUs whose own cover date is within SKUS_WINDOW (24 hours) of
  that date, either side, compared as UTC instants (not calendar days: 23:00 and 01:00 the
  next day are two hours apart).

Bounded: only the lines of the customer's latest MAX_ORDERS orders (by order time) count, and
when recomputed the lines of older orders (and of the refunds of those orders) are dropped from
the index, so a customer with thousands of orders costs each order at most MAX_ORDERS x
MAX_ORDER_LINES lines of work and of stored lines. At most MAX_ORDER_LINES lines per order;
lines whose cover date lapsed more than LAPSED_AFTER_DAYS ago, and lines still unresolved
UNRESOLVED_AFTER_DAYS after their order, are pruned when recomputed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.canonical import Item
from bridge.identity.records import StateView
from bridge.identity.view import count
from bridge.ids import iso_z

# The module, not its names: bridge.products.cache imports bridge.identity, which imports this
# module, so importing the product cache first must find it here half-built without failing.
from bridge.products import cache as product_cache
from bridge.products.record import MetafieldKeys

REPLENISHMENT_TRAITS = ("next_replenishment_date", "replenishment_skus")
MAX_ORDER_LINES = 20
# The latest orders whose lines count: a replenishment date is about what they buy now.
MAX_ORDERS = 50
# SKUs named with the date: those whose own date is this close to it.
SKUS_WINDOW = timedelta(hours=24)
MAX_QUANTITY = 10_000
# Days one order line can cover at most (a 100-unit order of a 10-year product is not a date).
MAX_COVER_DAYS = 3650
LAPSED_AFTER_DAYS = 365
# A line whose product is still not cached this long after its order is dropped.
UNRESOLVED_AFTER_DAYS = 30
MAX_SKUS = 20
MAX_LABEL_CHARS = 100
_LAPSED_AFTER = timedelta(days=LAPSED_AFTER_DAYS)
_UNRESOLVED_AFTER = timedelta(days=UNRESOLVED_AFTER_DAYS)


def _label(item: Item) -> str | None:
    label = item.sku or item.variant_id or item.product_id
    return label[:MAX_LABEL_CHARS] if label else None


def order_lines(items: Iterable[Item]) -> list[list[Any]]:
    """An order's lines as the index keeps them (unresolved: days null)."""
    out: list[list[Any]] = []
    valid_id = product_cache.valid_id
    for item in items:
        pid = item.product_id
        # A valid product id is never empty, so the line always has a label (the SKU, else the
        # variant, else the id; `_label`'s rule, not called for it).
        if not valid_id(pid) or item.quantity <= 0:
            continue
        label = item.sku or item.variant_id or pid
        out.append([pid, label[:MAX_LABEL_CHARS], min(item.quantity, MAX_QUANTITY), None])
        if len(out) == MAX_ORDER_LINES:
            break
    return out


def refund_lines(items: Iterable[Item]) -> list[list[Any]]:
    """A refund's lines as the index keeps them: (label, quantity refunded)."""
    out: list[list[Any]] = []
    for item in items:
        label = _label(item)
        if label is None or item.quantity <= 0:
            continue
        out.append([label, min(item.quantity, MAX_QUANTITY)])
        if len(out) == MAX_ORDER_LINES:
            break
    return out


def _resolve(view: StateView, lines: list[Any], keys: MetafieldKeys) -> list[Any] | None:
    """The lines with the days of products now cached; None when nothing changed."""
    out: list[Any] = []
    changed = False
    for line in lines:
        if not (isinstance(line, list) and len(line) == 4):
            changed = True
            continue
        pid, label, qty, days = line
        if days is not None:
            out.append(line)
            continue
        rec, meta = product_cache.cached_metadata(view, str(pid), keys)
        if rec is None:
            out.append(line)  # not cached yet: asked for by enrichment, resolved later
            continue
        changed = True
        if meta is not None and meta.replenishable and meta.days_to_replenish:
            out.append([pid, label, qty, meta.days_to_replenish])
    return out if changed else None


def unresolved(view: StateView, index_name: str) -> bool:
    """True when some order line waits for its product's metadata (a repeat of an order, as
    orders/paid after orders/create, then recomputes: the product may be cached by now)."""
    rec = view.get(index_name) or {}
    return any(
        isinstance(line, list) and len(line) == 4 and line[3] is None
        for entry in (rec.get("o") or {}).values()
        if isinstance(entry, dict)
        for line in entry.get("rl") or []
    )


def waiting_products(view: StateView, index_name: str) -> list[str]:
    """The products whose metadata the index's unresolved lines wait for."""
    rec = view.get(index_name) or {}
    return list(
        dict.fromkeys(
            str(line[0])
            for entry in (rec.get("o") or {}).values()
            if isinstance(entry, dict)
            for line in entry.get("rl") or []
            if isinstance(line, list) and len(line) == 4 and line[3] is None
        )
    )


def _time(text: Any) -> datetime | None:
    """An index time as an aware UTC instant (one written without an offset is read as UTC, so
    it never meets an aware time in a comparison); None when it is no time."""
    try:
        at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _latest(orders: dict[str, Any]) -> set[str]:
    """The ids of the MAX_ORDERS latest orders (by their UTC time text, then id): one pass,
    no sort of the whole index."""
    if len(orders) <= MAX_ORDERS:
        return set(orders)  # all of them (what nlargest would give, without its keys)
    return {
        order_id
        for order_id, _ in heapq.nlargest(
            MAX_ORDERS,
            orders.items(),
            key=lambda kv: (str(kv[1].get("at") or "") if isinstance(kv[1], dict) else "", kv[0]),
        )
    }


def traits(view: StateView, index_name: str, keys: MetafieldKeys, now: datetime) -> dict[str, Any]:
    """The person's replenishment traits from their order index (None values clear them),
    resolving and pruning the index's lines as it goes. {} when the index has no lines at all
    (nothing to say, nothing to clear)."""
    rec = view.get(index_name)
    if not rec:
        return {}
    orders: dict[str, Any] = dict(rec.get("o") or {})
    refunds: dict[str, Any] = dict(rec.get("r") or {})
    for e in orders.values():
        if isinstance(e, dict) and "rl" in e:
            break
    else:
        return {}
    dirty = False
    if len(orders) > MAX_ORDERS:  # else every order is among the latest: nothing forgotten
        latest = _latest(orders)
        for order_id, entry in list(orders.items()):
            if order_id not in latest and isinstance(entry, dict) and "rl" in entry:
                orders[order_id] = _without_lines(entry)  # too old to count: forgotten
                dirty = True
        for refund_id, entry in list(refunds.items()):
            # The refunds of forgotten orders go with them (a refund whose order is not indexed
            # yet, held for it, keeps its lines).
            of = str(entry.get("o")) if isinstance(entry, dict) else None
            if of is not None and "rl" in entry and of in orders and of not in latest:
                refunds[refund_id] = _without_lines(entry)
                dirty = True
    refunded: dict[tuple[str, str], int] = {}
    for entry in refunds.values():
        for line in (entry.get("rl") or []) if isinstance(entry, dict) else []:
            if isinstance(line, list) and len(line) == 2 and isinstance(line[1], int):
                key = (str(entry.get("o")), str(line[0]))
                refunded[key] = refunded.get(key, 0) + line[1]
    cover: dict[str, datetime] = {}
    lapsed_before = now - _LAPSED_AFTER
    unresolved_before = now - _UNRESOLVED_AFTER
    for order_id, entry in list(orders.items()):
        lines = entry.get("rl") if isinstance(entry, dict) else None
        if not lines:
            continue
        at = _time(entry.get("at"))
        resolved = _resolve(view, lines, keys)
        if resolved is not None:
            lines, dirty = resolved, True
        kept: list[Any] = []
        for line in lines:
            _, label, qty, days = line
            if not (isinstance(qty, int) and (days is None or isinstance(days, int))):
                dirty = True
                continue  # not what order_lines/_resolve write: dropped, never a crash
            if days is None and at is not None and at < unresolved_before:
                dirty = True
                continue  # its product's metadata never came: stop asking
            if days is None or at is None:
                kept.append(line)
                continue
            net = int(qty) - refunded.get((order_id, str(label)), 0)
            try:
                due = at + timedelta(days=min(int(days) * max(net, 0), MAX_COVER_DAYS))
            except OverflowError:
                continue  # an order dated near year 9999: no date to give
            if due < lapsed_before:
                dirty = True
                continue  # lapsed long ago: forgotten, so the index stays bounded
            kept.append(line)
            if net <= 0 or entry.get("x"):
                continue
            if label not in cover or due > cover[label]:
                cover[label] = due
        if kept != entry.get("rl"):
            orders[order_id] = {**entry, "rl": kept} if kept else _without_lines(entry)
            dirty = True
    if dirty:
        view.put(index_name, {**rec, "o": orders, **({"r": refunds} if refunds else {})})
        count(view, "replenishment:index:updated")
    if not cover:
        return dict.fromkeys(REPLENISHMENT_TRAITS)
    upcoming = [d for d in cover.values() if d >= now]
    chosen = min(upcoming) if upcoming else max(cover.values())
    skus = sorted(label for label, d in cover.items() if abs(d - chosen) <= SKUS_WINDOW)
    return {"next_replenishment_date": iso_z(chosen), "replenishment_skus": skus[:MAX_SKUS]}


def _without_lines(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "rl"}
