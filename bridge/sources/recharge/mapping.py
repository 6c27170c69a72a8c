"""Recharge webhook bodies -> `Mapped`: the `Source` for Recharge. Pure (no I/O, clock or settings).

Topics are "<resource>/<action>" (the router strips the envelope's "recharge/" prefix). A body
wraps its resource in a key named after it (`{"subscription": {...}}`); `included_objects` adds
siblings such as `customer`. What each topic gives:

- subscription/created|updated|activated|cancelled|paused|swapped|deleted: a SubscriptionFact
  (and an identify of the included customer);
- subscription/skipped|unskipped: a BillingFact for the cycle skipped (see `_skip`);
- charge/paid (legacy charge/success) and charge/failed: a BillingFact (see `map_charge`), and an
  identify when the charge's customer carries an email;
- customer/created|updated|activated|deactivated: an identify.
Every other topic is not handled (acknowledged and ignored). Contract: `RechargeSource.map`
accepts any dict for any topic and either returns a `Mapped` or raises `MappingError` with a
short reason naming fields, never values (no PII). Timestamps without an offset are read as UTC.
The decide step (identity/) derives the subscription events from these facts and the stored
state; mapping emits none itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.canonical import (
    BILLING_FAILURE,
    BILLING_SKIPPED,
    BILLING_SUCCESS,
    BILLING_UNSKIPPED,
    SUB_ACTIVE,
    SUB_CANCELED,
    SUB_EXPIRED,
    SUB_PAUSED,
    BillingFact,
    Item,
    MapContext,
    Mapped,
    PersonRef,
    SubscriptionFact,
    TraitUpdate,
    subscription_ref,
)
from bridge.ids import iso_z
from bridge.sources import Mapper, MappingError, TopicTable
from bridge.sources.recharge.models import Charge, Customer, Subscription, external
from bridge.sources.recharge.topics import PREFIX
from bridge.sources.shopify.models import CustomerTraits
from bridge.sources.shopify.traits import normalise_email, normalise_phone

SOURCE = PREFIX

# A status the topic itself implies wins over the body's: Recharge's subscription statuses are
# only active, cancelled and expired, so a pause shows in the topic alone.
_TOPIC_STATUS = {
    "activated": SUB_ACTIVE,
    "cancelled": SUB_CANCELED,
    "deleted": SUB_CANCELED,
    "paused": SUB_PAUSED,
}
_BODY_STATUS = {
    "active": SUB_ACTIVE,
    "cancelled": SUB_CANCELED,
    "canceled": SUB_CANCELED,
    "expired": SUB_EXPIRED,
    "paused": SUB_PAUSED,
}
# The reason a deleted subscription is canceled with: it left without the customer's answer.
DELETED_REASON = "deleted"
_INTERVALS = {"day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month"}
_INTERVALS |= {"months": "month", "year": "year", "years": "year"}
# A decline message is the processor's free text: kept short, as event properties are.
MAX_ERROR_CHARS = 255


def _when(
    ctx: MapContext, *candidates: datetime | None, last: datetime | None = None
) -> datetime | None:
    """The first known time of `candidates`, else the delivery's signed timestamp
    (`ctx.triggered_at`), else `last`."""
    for at in candidates:
        if at is not None:
            return at
    trig = ctx.triggered_at
    if trig is None:
        return last
    return trig.replace(tzinfo=UTC) if trig.tzinfo is None else trig.astimezone(UTC)


def _resource(topic: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body's wrapped resource: `body[<resource>]` for a "<resource>/<action>" topic."""
    name = topic.partition("/")[0]
    value = body.get(name)
    if not isinstance(value, dict):
        raise MappingError(f"{PREFIX}/{topic}: body has no `{name}` object")
    return value


def _included_customer(
    topic: str, body: dict[str, Any], customer_id: str | None
) -> Customer | None:
    """The customer `included_objects` put beside the resource, if any. One naming another
    customer than the resource's own would join the wrong person: MappingError."""
    raw = body.get("customer")
    if not isinstance(raw, dict):
        return None
    customer = Customer.model_validate(raw)
    if customer_id is not None and customer.id is not None and customer.id != customer_id:
        raise MappingError(f"{PREFIX}/{topic}: customer.id is not the resource's customer_id")
    return customer


def _subscriber(customer_id: str | None) -> str | None:
    return f"{PREFIX}:{customer_id}" if customer_id else None


def _person(
    customer_id: str | None, customer: Customer | None, email: str | None = None
) -> PersonRef:
    """Every key the payload gives for its person: the Recharge customer, and the Shopify
    customer id and email when a customer object carries them."""
    c = customer or Customer()
    return PersonRef(
        subscriber=_subscriber(customer_id or c.id),
        customer_id=c.shopify_id,
        email=normalise_email(c.email) or normalise_email(email),
        phone=normalise_phone(c.phone, None),
    )


def _identify(person: PersonRef, customer: Customer, at: datetime) -> TraitUpdate:
    traits = CustomerTraits(
        email=person.email,
        phone=person.phone,
        first_name=customer.first_name,
        last_name=customer.last_name,
    )
    return TraitUpdate(
        person=person,
        traits=traits.as_traits(),
        version=customer.updated_at,
        timestamp=customer.updated_at or at,
    )


def _subscription(topic: str, body: dict[str, Any]) -> tuple[Subscription, Customer | None]:
    sub = Subscription.model_validate(_resource(topic, body))
    if sub.id is None:
        raise MappingError(f"{PREFIX}/{topic}: subscription has no id")
    return sub, _included_customer(topic, body, sub.customer_id)


def _subscription_person(sub: Subscription, customer: Customer | None) -> PersonRef:
    person = _person(sub.customer_id, customer)
    if person == PersonRef():
        # No customer at all: the subscription's link (made by an earlier webhook) finds them.
        return PersonRef(subscription=subscription_ref(SOURCE, str(sub.id)))
    return person


def _identifies(
    person: PersonRef, customer: Customer | None, at: datetime
) -> tuple[TraitUpdate, ...]:
    return () if customer is None else (_identify(person, customer, at),)


def map_subscription(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """subscription/created|updated|activated|cancelled|paused|swapped|deleted -> a fact.

    Ordered by `updated_at`, else the signed delivery time, else `created_at` (the oldest
    possible, so it never overwrites anything newer). The status comes from the topic when it
    implies one, else from the body (active, cancelled -> canceled, expired; others None).
    The cancellation reason is kept, its comments are not: they are the customer's free text
    (names, emails, anything), not a value a save flow can branch on.
    """
    sub, customer = _subscription(topic, body)
    sub_id = str(sub.id)
    action = topic.partition("/")[2]
    version = _when(ctx, sub.updated_at, last=sub.created_at)
    if version is None:
        raise MappingError(f"{PREFIX}/{topic}: subscription has no updated_at or created_at")
    said = _BODY_STATUS.get((sub.status or "").strip().lower())
    # The topic comes from the registered path (or an unsigned header), not from the signed
    # body: a body that contradicts it was posted to another topic's address, and is parked.
    if action == "cancelled" and said != SUB_CANCELED and sub.cancelled_at is None:
        raise MappingError(f"{PREFIX}/{topic}: the subscription is not cancelled")
    if action == "activated" and said != SUB_ACTIVE:
        raise MappingError(f"{PREFIX}/{topic}: the subscription is not active")
    if said == SUB_ACTIVE and action not in ("created", "activated"):
        # A paused subscription still says "active" (the pause shows in the topic alone): on
        # an update, "active" says nothing about whether it is paused.
        said = None
    status = _TOPIC_STATUS.get(action) or said
    reason = DELETED_REASON if action == "deleted" else sub.cancellation_reason
    person = _subscription_person(sub, customer)
    price = sub.price
    item = Item(
        product_id=external(sub.external_product_id, sub.shopify_product_id),
        variant_id=external(sub.external_variant_id, sub.shopify_variant_id),
        sku=sub.sku,
        name=sub.product_title,
        price=price,
        quantity=sub.quantity or 0,
    )
    currency = sub.presentment_currency or (ctx.shop_currency if price is not None else None)
    fact = SubscriptionFact(
        provider=SOURCE,
        subscription_id=sub_id,
        person=person,
        version=version,
        status=status,
        created=action == "created",
        created_at=sub.created_at,
        canceled_at=sub.cancelled_at,
        # A reactivated subscription may still carry its old reason: only a cancel says it.
        cancellation_reason=reason if status == SUB_CANCELED else None,
        next_charge_at=sub.next_charge_scheduled_at,
        interval=_INTERVALS.get((sub.order_interval_unit or "").strip().lower()),
        interval_count=sub.order_interval_frequency,
        price=price,
        currency=currency.upper() if currency else None,
        items=(item,),
    )
    return Mapped(
        source=SOURCE,
        topic=topic,
        subscription=fact,
        identifies=_identifies(person, customer, version),
        person=person,
    )


def map_skip(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """subscription/skipped|unskipped -> a BillingFact naming the cycle.

    The cycle is the subscription's `next_charge_scheduled_at` day as the payload carries it
    (whether Recharge has moved it past the skipped charge yet is not documented): a redelivery
    carries the same day, so it gives the same fact, and two skips of different cycles carry
    different days. Without that day the fact's time stands in. `attempt_id` is
    "<subscription id>:<cycle>"; skipping, unskipping and skipping one cycle again therefore
    share it, and the decide step tells them apart by outcome and order.
    """
    sub, customer = _subscription(topic, body)
    sub_id = str(sub.id)
    at = _when(ctx, sub.updated_at, last=sub.created_at)
    if at is None:
        raise MappingError(f"{PREFIX}/{topic}: subscription has no updated_at or created_at")
    due = sub.next_charge_scheduled_at
    cycle = due.date().isoformat() if due is not None else iso_z(at)
    person = _subscription_person(sub, customer)
    fact = BillingFact(
        provider=SOURCE,
        outcome=BILLING_SKIPPED if topic.endswith("/skipped") else BILLING_UNSKIPPED,
        attempt_id=f"{sub_id}:{cycle}",
        cycle=cycle,
        subscription_ids=(sub_id,),
        at=at,
        person=person,
    )
    return Mapped(
        source=SOURCE,
        topic=topic,
        billing=fact,
        identifies=_identifies(person, customer, at),
        person=person,
    )


def _charge_subscriptions(charge: Charge) -> tuple[str, ...]:
    """The subscriptions a charge bills: its lines of `purchase_item_type` subscription
    (2021-11), or lines naming a `subscription_id` (2021-01); once each, in line order."""
    ids: list[str] = []
    for line in charge.line_items:
        kind = (line.purchase_item_type or "").strip().lower()
        if kind:
            sub_id = line.purchase_item_id if kind == "subscription" else None
        else:
            sub_id = line.subscription_id
        if sub_id is not None and sub_id not in ids:
            ids.append(sub_id)
    return tuple(ids)


def map_charge(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """charge/paid (charge/success) and charge/failed -> a BillingFact for the charge.

    The charge is the cycle (Recharge retries a failed charge under the same id); each failed
    try is its own attempt ("<charge id>:<charge_attempts>"), a success is "<charge id>". A
    failed charge with no subscription line (only one-time products) still gives a fact with no
    subscriptions: the person's payment failed, but no subscription is in dunning for it.
    """
    charge = Charge.model_validate(_resource(topic, body))
    if charge.id is None:
        raise MappingError(f"{PREFIX}/{topic}: charge has no id")
    charge_id = str(charge.id)
    failed = topic.endswith("/failed")
    # The signed body decides what happened, the (unsigned) topic only has to agree: a failed
    # charge posted to /paid must not end a dunning run.
    status = (charge.status or "").strip().lower()
    if status != ("error" if failed else "success"):
        raise MappingError(f"{PREFIX}/{topic}: the charge's status does not match the topic")
    at = _when(ctx, charge.processed_at, charge.updated_at, charge.scheduled_at)
    if at is None:
        raise MappingError(
            f"{PREFIX}/{topic}: charge has no processed_at, updated_at or scheduled_at"
        )
    customer = charge.customer
    person = _person(charge.customer_id, customer, charge.email)
    amount = charge.total_price
    currency = charge.currency or (ctx.shop_currency if amount is not None else None)
    message = charge.error[:MAX_ERROR_CHARS] if failed and charge.error else None
    fact = BillingFact(
        provider=SOURCE,
        outcome=BILLING_FAILURE if failed else BILLING_SUCCESS,
        attempt_id=f"{charge_id}:{charge.charge_attempts or 0}" if failed else charge_id,
        cycle=charge_id,
        subscription_ids=_charge_subscriptions(charge),
        at=at,
        person=person,
        error_code=charge.error_type if failed else None,
        error_message=message,
        attempt_number=charge.charge_attempts,
        amount=amount,
        currency=currency.upper() if currency else None,
        next_retry_at=charge.retry_date if failed else None,
        order_id=external(charge.external_order_id, charge.shopify_order_id),
        first_order=(charge.type or "").strip().upper() == "CHECKOUT",
    )
    identifies: tuple[TraitUpdate, ...] = ()
    if person.email is not None:
        # The charge's customer is a summary (id, email, external id): it names no other trait,
        # and its version is the charge's time, not the customer's.
        identifies = (
            TraitUpdate(person=person, traits={"email": person.email}, version=None, timestamp=at),
        )
    return Mapped(source=SOURCE, topic=topic, billing=fact, identifies=identifies, person=person)


def map_customer(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """customer/created|updated|activated|deactivated -> one identify, versioned by the
    customer's `updated_at`. Its subscriber key links the Recharge customer to the person."""
    customer = Customer.model_validate(_resource(topic, body))
    if customer.id is None:
        raise MappingError(f"{PREFIX}/{topic}: customer has no id")
    at = _when(ctx, customer.updated_at, last=customer.created_at)
    if at is None:
        raise MappingError(f"{PREFIX}/{topic}: customer has no updated_at or created_at")
    person = _person(customer.id, customer)
    return Mapped(
        source=SOURCE, topic=topic, identifies=(_identify(person, customer, at),), person=person
    )


MAPPERS: dict[str, Mapper] = {
    **{
        f"subscription/{action}": map_subscription
        for action in (
            "created",
            "updated",
            "activated",
            "cancelled",
            "paused",
            "swapped",
            "deleted",
        )
    },
    "subscription/skipped": map_skip,
    "subscription/unskipped": map_skip,
    "charge/paid": map_charge,
    "charge/success": map_charge,  # the legacy name of charge/paid
    "charge/failed": map_charge,
    **{
        f"customer/{action}": map_customer
        for action in ("created", "updated", "activated", "deactivated")
    },
}


class RechargeSource(TopicTable):
    """The Recharge `Source`: its topics (without the envelope's `recharge/` prefix) and their
    mappers."""

    name = SOURCE
    mappers = MAPPERS
    label = PREFIX + "/"
