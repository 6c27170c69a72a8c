"""Building blocks shared by the Shopify mappers: lines, times, hints, money. Pure.

Contract: nothing here raises except `when`, which raises MappingError when a payload has no
usable time at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from bridge.canonical import MAX_EVENT_ITEMS, Item, MapContext
from bridge.ids import gid_to_id
from bridge.sources import MappingError
from bridge.sources.shopify.models import Address, Customer, LineItem

SOURCE = "shopify"

T = TypeVar("T")


def first(*values: T | None) -> T | None:
    """The first value that is not None (unlike `or`, keeps `Decimal(0)` and `""`)."""
    for value in values:
        if value is not None:
            return value
    return None


def when(ctx: MapContext, *candidates: datetime | None) -> datetime:
    """The first known payload time, else the delivery's trigger time; MappingError if none."""
    at = first(*candidates)
    if at is not None:
        return at
    if ctx.triggered_at is not None:
        # The trigger header is UTC by definition; a naive value only lost its marker.
        trig = ctx.triggered_at
        return trig.replace(tzinfo=UTC) if trig.tzinfo is None else trig.astimezone(UTC)
    raise MappingError("payload has no usable timestamp")


def money(amount: Decimal | None) -> float | None:
    """Decimal -> JSON number for event properties (computed exactly, converted once)."""
    return None if amount is None else float(amount)


def compact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop None values, so properties carry only what the payload actually said."""
    return {k: v for k, v in values.items() if v is not None}


def unit_price(line: LineItem) -> Decimal | None:
    """Per-unit price in shop money (`price_set.shop_money`, else `price`)."""
    return first(line.price_set.amount if line.price_set else None, line.price)


def line_total(line: LineItem) -> Decimal:
    """A line's price: `line_price_set.shop_money`, else `line_price`, else unit x quantity."""
    total = first(line.line_price_set.amount if line.line_price_set else None, line.line_price)
    if total is not None:
        return total
    price = unit_price(line)
    return Decimal(0) if price is None else price * (line.quantity or 0)


def lines_currency(lines: Iterable[LineItem]) -> str | None:
    """The shop currency named by the lines' money sets, if any line names one."""
    for line in lines:
        code = (line.line_price_set and line.line_price_set.currency_code) or (
            line.price_set and line.price_set.currency_code
        )
        if code:
            return code
    return None


def item(line: LineItem, *, quantity: int | None = None) -> Item:
    """One canonical item; `quantity` overrides the line's (refunds refund part of a line)."""
    # `first()` spelled out, and tuple.__new__ rather than the named tuple's own __new__ (a
    # Python function): this runs for every line of every webhook.
    price_set = line.price_set
    price = price_set.amount if price_set is not None else None
    return _new_tuple(
        Item,
        (
            line.product_id,
            line.variant_id,
            line.sku,
            line.title if line.title is not None else line.name,
            price if price is not None else line.price,
            (quantity if quantity is not None else line.quantity) or 0,
            line.vendor,
            line.product_type,
            None,  # vendor, replenishable, days_to_replenish: from the product cache, later
            None,
            None,
        ),
    )


_new_tuple = tuple.__new__


def items(
    lines: Sequence[LineItem], quantities: Sequence[int | None] | None = None
) -> tuple[tuple[Item, ...], dict[str, Any]]:
    """The first MAX_EVENT_ITEMS lines as items, and the properties saying what was cut
    (`items_truncated`, `item_count`; none when nothing was)."""
    kept = lines[:MAX_EVENT_ITEMS]
    if quantities is None:
        out = tuple(item(line) for line in kept)
    else:
        out = tuple(item(line, quantity=q or 0) for line, q in zip(kept, quantities, strict=False))
    cut = {"items_truncated": True, "item_count": len(lines)} if len(lines) > len(kept) else {}
    return out, cut


def hints(attributes: dict[str, str], ctx: MapContext) -> dict[str, str | None]:
    """Storefront identity hints from note attributes, as PersonRef fields."""
    return {
        "anonymous_id": attributes.get(ctx.identity_hint_anonymous_attr),
        "hinted_customer_id": gid_to_id(attributes.get(ctx.identity_hint_customer_attr)),
    }


def country(customer: Customer | None, *addresses: Address | None) -> str | None:
    """The person's country for reading phone numbers: their default address, else the payload's."""
    default = customer.default_address if customer else None
    for address in (default, *addresses):
        if address is not None and address.country_code:
            return address.country_code
    return None
