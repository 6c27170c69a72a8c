"""The per-customer order index and the order traits computed from it. Pure over a StateView.

Shared with `bridge backfill`, which feeds historic orders through the same calls.

Records (relative to the shop's state prefix; `<person>` is `cust:<customer id>` or, for a
guest known only by email, `email:<sha256-prefix>` as in `bridge.identity.graph.person_key`):
- `orders:<person>` -> `{"o": {order_id: {"at": ISO-8601 UTC, "t": "total", "c": "USD",
  "rl"?: [...], "x"?: true}}, "r": {refund_id: {"o": order_id, "a": "amount", "rl"?: [...]}},
  "merged_into": person?}` (`rl` and `x`: replenishment lines, identity/replenishment.py)

Rules: an order is indexed once per id (a repeat replaces its entry, never adds one); test
orders are never indexed; a refund subtracts its successful refund transactions once per
refund id; a guest's index merges into the customer's when the customer id appears (entries
keyed by id, so nothing counts twice). `orders_count` counts every indexed order (cancelled
ones too, as Shopify does); `lifetime_value` is the sum of their shop-currency totals minus
their refunds.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bridge.canonical import OrderFact, RefundFact
from bridge.identity import replenishment
from bridge.identity.records import StateView
from bridge.ids import iso_z

ORDER_TRAITS = (
    "orders_count",
    "lifetime_value",
    "first_order_date",
    "last_order_date",
    "last_order_id",
)


def index_name(person: str) -> str:
    return "orders:" + person


def _index(view: StateView, person: str) -> dict[str, Any]:
    rec = view.get(index_name(person)) or {}
    return {"o": dict(rec.get("o") or {}), "r": dict(rec.get("r") or {})}


def index_order(view: StateView, person: str, fact: OrderFact) -> bool:
    """Record one order under a person; True when the index changed. Test orders are ignored."""
    if fact.test:
        return False
    idx = _index(view, person)
    entry: dict[str, Any] = {"at": iso_z(fact.created_at), "t": str(fact.total), "c": fact.currency}
    # Replenishment lines (identity/replenishment.py): the first version's, as resolved since;
    # a cancellation sticks whatever arrives after it.
    old = idx["o"].get(fact.order_id) or {}
    lines = old.get("rl") if "rl" in old else replenishment.order_lines(fact.items)
    if lines:
        entry["rl"] = lines
    if fact.cancelled or old.get("x"):
        entry["x"] = True
    if idx["o"].get(fact.order_id) == entry:
        return False
    idx["o"][fact.order_id] = entry
    view.put(index_name(person), idx)
    return True


def index_refund(view: StateView, person: str, fact: RefundFact) -> bool:
    """Record one refund (successful refund transactions) once per refund id; True if new."""
    idx = _index(view, person)
    if fact.refund_id in idx["r"]:
        return False
    entry: dict[str, Any] = {"o": fact.order_id, "a": str(fact.amount)}
    lines = replenishment.refund_lines(fact.items)
    if lines:
        entry["rl"] = lines
    idx["r"][fact.refund_id] = entry
    view.put(index_name(person), idx)
    return True


def merge_index(view: StateView, source: str, target: str) -> bool:
    """Move a guest's orders and refunds into the customer's index (idempotent by id)."""
    if source == target:
        return False
    src = view.get(index_name(source))
    if not src or not (src.get("o") or src.get("r")):
        return False
    idx = _index(view, target)
    idx["o"].update(src.get("o") or {})
    idx["r"].update(src.get("r") or {})
    view.put(index_name(target), idx)
    view.put(index_name(source), {"merged_into": target})
    return True


def order_traits(view: StateView, person: str) -> dict[str, Any]:
    """`orders_count`, `lifetime_value`, first/last order dates and the last order id."""
    rec = view.get(index_name(person)) or {}
    # Only read, so not copied as `_index` does (a dict() of the index each time).
    orders = rec.get("o") or {}
    if type(orders) is not dict:
        orders = dict(orders)
    if not orders:
        return {}
    refunds = rec.get("r") or {}
    if type(refunds) is not dict:
        refunds = dict(refunds)
    total = sum((Decimal(e["t"]) for e in orders.values()), Decimal(0))
    if refunds:
        refunded = sum(
            (Decimal(r["a"]) for r in refunds.values() if r.get("o") in orders), Decimal(0)
        )
        total -= refunded
    # The first and last by (time, id): keys are unique, so min and max are the ends of the
    # sorted order, without sorting the index (a first order is both).
    if len(orders) == 1:
        first = last = next(iter(orders.items()))
    else:
        first = min(orders.items(), key=_by_time)
        last = max(orders.items(), key=_by_time)
    return {
        "orders_count": len(orders),
        "lifetime_value": float(total),
        "first_order_date": first[1]["at"],
        "last_order_date": last[1]["at"],
        "last_order_id": last[0],
    }


def _by_time(entry: tuple[str, Any]) -> tuple[Any, str]:
    return entry[1]["at"], entry[0]
