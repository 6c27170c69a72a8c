"""Shopify `orders/*` and `refunds/create` bodies -> `Mapped`. Pure.

Contract: each function takes an already-decoded JSON object and returns a `Mapped`; it raises
pydantic's ValidationError for a wrongly typed body (the source turns it into MappingError) and
MappingError when a field the mapping needs is missing. Nothing else.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from bridge.canonical import (
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
    CanonicalEvent,
    Item,
    MapContext,
    Mapped,
    OrderFact,
    PersonRef,
    RefundFact,
    TraitUpdate,
)
from bridge.ids import normalise_cart_token
from bridge.sources import MappingError
from bridge.sources.shopify import parts
from bridge.sources.shopify.models import Order, Refund, shop_amount, shop_currency
from bridge.sources.shopify.parts import SOURCE, compact, first, money
from bridge.sources.shopify.traits import customer_traits, normalise_email, normalise_phone

# The topics that may emit `order_completed`; which one does is `MapContext.order_completed_on`.
COMPLETING_TOPICS = ("orders/paid", "orders/create")
# `bridge backfill` feeds historic REST orders through the drain under this internal topic:
# they update the identity graph and order index, and emit `order_completed` (marked
# `backfill: true`) only when the body carries `"_cartbridge_events": true`.
BACKFILL_TOPIC = "backfill/order"
BACKFILL_EVENTS_FLAG = "_cartbridge_events"


def _person(order: Order, order_id: str, ctx: MapContext) -> PersonRef:
    customer = order.customer
    country = parts.country(customer, order.shipping_address, order.billing_address)
    return PersonRef(
        customer_id=customer.id if customer else None,
        email=normalise_email(
            first(order.email, order.contact_email, customer.email if customer else None)
        ),
        phone=normalise_phone(first(order.phone, customer.phone if customer else None), country),
        cart_token=normalise_cart_token(order.cart_token),
        cart_token_raw=order.cart_token,
        checkout_token=order.checkout_token,
        checkout_id=order.checkout_id,
        order_id=order_id,
        **parts.hints(order.note_attributes, ctx),
    )


def _properties(order: Order, order_id: str, total: Decimal, currency: str) -> dict[str, Any]:
    shipping = shop_amount(order.total_shipping_price_set)
    tax = first(shop_amount(order.total_tax_set), order.total_tax)
    presentment = order.total_price_set.presentment_money if order.total_price_set else None
    # Segment's `revenue` excludes shipping and tax; subtracting both from what the customer
    # paid is right for tax-inclusive and tax-exclusive stores alike.
    revenue = total - (shipping or 0) - (tax or 0)
    return compact(
        {
            "order_id": order_id,
            "order_number": order.order_number,
            "cart_id": normalise_cart_token(order.cart_token),
            "checkout_id": first(order.checkout_id, order.checkout_token),
            "total": money(total),
            "revenue": money(revenue),
            "subtotal": money(first(shop_amount(order.subtotal_price_set), order.subtotal_price)),
            "tax": money(tax),
            "shipping": money(shipping),
            "discount": money(first(shop_amount(order.total_discounts_set), order.total_discounts)),
            "discount_codes": [d.code for d in order.discount_codes if d.code],
            "currency": currency,
            "presentment_currency": first(
                order.presentment_currency, presentment.currency_code if presentment else None
            ),
            "presentment_total": money(presentment.amount if presentment else None),
        }
    )


def is_renewal(order: Order) -> bool:
    """A subscription renewal: a line bought under a selling plan, in an order that no checkout
    made (the first order of a subscription comes from its checkout and converts it).

    Read from the lines' `selling_plan_id` (order webhooks from API 2026-10), not `source_name`,
    which Shopify changed without notice (../shared/docs/subscriptions.md, section 3)."""
    if order.cart_token or order.checkout_token or order.checkout_id:
        return False
    return any(line.selling_plan_id for line in order.line_items)


def map_order(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """One Order body (any `orders/*` topic): the order fact, its person, and the topic's event.

    Test orders are skipped (nothing else returned) when `ctx.skip_test_orders`.
    """
    order = Order.model_validate(body)
    if order.test and ctx.skip_test_orders:
        return Mapped(source=SOURCE, topic=topic, skipped="test order")
    if order.id is None:
        raise MappingError("order has no id")
    order_id = order.id
    placed = parts.when(ctx, order.processed_at, order.created_at, order.updated_at)
    total = first(shop_amount(order.total_price_set), order.total_price)
    if total is None:
        raise MappingError("order has no total")
    currency = shop_currency(order.total_price_set) or order.currency or ctx.shop_currency
    person = _person(order, order_id, ctx)
    renewal = is_renewal(order)
    items, cut = parts.items(order.line_items)
    fact = OrderFact(
        order_id=order_id,
        created_at=placed,
        total=total,
        currency=currency,
        test=bool(order.test),
        cancelled=order.cancelled_at is not None or topic == "orders/cancelled",
        renewal=renewal,
        items=items,
    )
    props = {**_properties(order, order_id, total, currency), **cut}
    if renewal:
        props["subscription_renewal"] = True
    events: list[CanonicalEvent] = []
    if topic == BACKFILL_TOPIC:
        if body.get(BACKFILL_EVENTS_FLAG) is True:
            props = {**props, "backfill": True}
            events.append(
                _event(ORDER_COMPLETED, placed, f"order:{order_id}", person, props, items)
            )
    elif topic == ctx.order_completed_on and topic in COMPLETING_TOPICS:
        # Keyed on the order and timed at its placement, so a second `orders/paid` (partial
        # payments) or a replay yields the same messageId.
        events.append(_event(ORDER_COMPLETED, placed, f"order:{order_id}", person, props, items))
    elif topic == "orders/fulfilled":
        at = parts.when(ctx, order.updated_at, order.closed_at, placed)
        events.append(
            _event(ORDER_FULFILLED, at, f"order_fulfilled:{order_id}", person, props, items)
        )
    elif topic == "orders/cancelled":
        at = parts.when(ctx, order.cancelled_at, order.updated_at, placed)
        props = compact({**props, "cancel_reason": order.cancel_reason})
        events.append(
            _event(ORDER_CANCELLED, at, f"order_cancelled:{order_id}", person, props, items)
        )
    identifies: tuple[TraitUpdate, ...] = ()
    if person.customer_id or person.email:
        country = parts.country(order.customer, order.shipping_address, order.billing_address)
        traits = customer_traits(
            order.customer, email=person.email, phone=order.phone, country=country
        )
        version = order.customer.updated_at if order.customer else None
        identifies = (
            TraitUpdate(
                person=person, traits=traits.as_traits(), version=version, timestamp=placed
            ),
        )
    return Mapped(
        source=SOURCE,
        topic=topic,
        events=tuple(events),
        identifies=identifies,
        order=fact,
        person=person,
    )


def _event(
    name: str,
    at: datetime,
    key: str,
    person: PersonRef,
    props: dict[str, Any],
    items: tuple[Item, ...],
) -> CanonicalEvent:
    return CanonicalEvent(
        name=name, timestamp=at, key=key, person=person, properties=props, items=items
    )


def map_refund(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A refund: amount refunded (successful refund transactions), its lines, `order_refunded`."""
    refund = Refund.model_validate(body)
    if refund.id is None or refund.order_id is None:
        raise MappingError("refund has no id or order_id")
    at = parts.when(ctx, refund.created_at, refund.processed_at)
    paid_back = [
        t
        for t in refund.transactions
        if (t.kind or "").lower() == "refund"
        and (t.status or "").lower() == "success"
        and t.amount is not None
    ]
    amount = sum((t.amount for t in paid_back if t.amount is not None), Decimal(0))
    lines = [(rli, rli.line_item) for rli in refund.refund_line_items if rli.line_item]
    # The amount comes from the transactions, so their currency labels it best; they often
    # leave it null, and then the refund lines' shop money names the shop currency.
    currency = (
        first(*(t.currency for t in paid_back))
        or first(*(shop_currency(rli.subtotal_set) for rli, _ in lines))
        or first(*(line.price_set.currency_code for _, line in lines if line.price_set))
        or ctx.shop_currency
    )
    items, cut = parts.items([line for _, line in lines], [rli.quantity for rli, _ in lines])
    person = PersonRef(order_id=refund.order_id)
    event = CanonicalEvent(
        name=ORDER_REFUNDED,
        timestamp=at,
        key=f"refund:{refund.id}",
        person=person,
        properties={
            "order_id": refund.order_id,
            "refund_id": refund.id,
            "amount": money(amount),
            "currency": currency,
            **cut,
        },
        items=items,
    )
    fact = RefundFact(
        order_id=refund.order_id, refund_id=refund.id, amount=amount, created_at=at, items=items
    )
    return Mapped(source=SOURCE, topic=topic, events=(event,), refund=fact, person=person)
