"""The backfill's internal topics besides `backfill/order` (mapped in orders.py). Pure.

A historic refund keeps its refund fact and only sends `order_refunded` (with `backfill: true`)
when the body carries `"_cartbridge_events": true`. `backfill/traits` carries extra traits
(per-category last purchase dates) for one customer.
"""

from __future__ import annotations

from typing import Any

from bridge.canonical import MapContext, Mapped, PersonRef, TraitUpdate
from bridge.sources import MappingError
from bridge.sources.shopify.models import Customer
from bridge.sources.shopify.orders import map_refund
from bridge.sources.shopify.parts import SOURCE
from bridge.sources.shopify.traits import normalise_email

EVENTS_FLAG = "_cartbridge_events"


def _flagged(mapped: Mapped, topic: str, events: bool) -> Mapped:
    if not events:
        return mapped.model_copy(update={"topic": topic, "events": ()})
    flagged = tuple(
        e.model_copy(update={"properties": {**e.properties, "backfill": True}})
        for e in mapped.events
    )
    return mapped.model_copy(update={"topic": topic, "events": flagged})


def map_backfill_refund(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A historic refund: its refund fact; `order_refunded` only with the events flag."""
    return _flagged(map_refund("refunds/create", body, ctx), topic, body.get(EVENTS_FLAG) is True)


def map_backfill_traits(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """Extra traits for one customer (`{"customer": {id, email}, "traits": {...}, "at": ISO}`)."""
    customer = Customer.model_validate(body.get("customer") or {})
    traits = body.get("traits")
    if not isinstance(traits, dict) or not traits:
        raise MappingError("backfill traits have no traits")
    if customer.id is None and customer.email is None:
        raise MappingError("backfill traits name no customer")
    at = Customer.model_validate({"updated_at": body.get("at")}).updated_at
    if at is None:
        raise MappingError("backfill traits have no time")
    person = PersonRef(customer_id=customer.id, email=normalise_email(customer.email))
    update = TraitUpdate(person=person, traits=dict(traits), timestamp=at)
    return Mapped(source=SOURCE, topic=topic, identifies=(update,), person=person)
