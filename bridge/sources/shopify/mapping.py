"""Shopify webhook bodies -> `Mapped`: the `Source` for Shopify. Pure (no I/O, clock or settings).

Contract: `ShopifySource.map` accepts any dict for any topic and either returns a `Mapped` or
raises `MappingError` with a short reason that names fields, never values (no PII).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bridge.canonical import (
    ADDED_TO_CART,
    CHECKOUT_STARTED,
    CanonicalEvent,
    CartSnapshot,
    MapContext,
    Mapped,
    MergeFact,
    PersonRef,
    TraitUpdate,
)
from bridge.ids import gid_to_id, normalise_cart_token
from bridge.sources import Mapper, MappingError, TopicTable
from bridge.sources.shopify import parts
from bridge.sources.shopify.historic import (
    map_backfill_refund,
    map_backfill_traits,
)
from bridge.sources.shopify.models import (
    Cart,
    Checkout,
    ComplianceRequest,
    Customer,
    CustomerMerge,
    LineItem,
)
from bridge.sources.shopify.orders import map_order, map_refund
from bridge.sources.shopify.parts import SOURCE, compact, money
from bridge.sources.shopify.products import map_product
from bridge.sources.shopify.subscriptions import MAPPERS as SUBSCRIPTION_MAPPERS
from bridge.sources.shopify.traits import customer_traits, normalise_email, normalise_phone

# Longer cart permalinks are left out: browsers, mail clients and Customer.io's 1000-byte
# attribute values all cut them, and a cut permalink rebuilds the wrong cart.
MAX_PERMALINK_CHARS = 1000


def _permalink(shop: str, lines: list[LineItem]) -> str | None:
    # Shopify's cart permalink rebuilds the cart from variant:quantity pairs; lines without a
    # variant or quantity cannot be expressed in it and are left out.
    url = f"https://{shop}/cart/"
    budget = MAX_PERMALINK_CHARS - len(url)
    pairs: list[str] = []
    for li in lines:
        if li.variant_id and li.quantity:
            pair = f"{li.variant_id}:{li.quantity}"
            budget -= len(pair) + 1
            if budget < -1:
                return None  # stops at the limit: a 45 000-line cart builds no 349 KB string
            pairs.append(pair)
    return url + ",".join(pairs) if pairs else None


def _lines_value(lines: list[LineItem]) -> Decimal:
    return sum((parts.line_total(li) for li in lines), Decimal(0))


def map_cart(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`carts/*`: the cart snapshot, its anonymous person, and `added_to_cart` if it has lines."""
    cart = Cart.model_validate(body)
    raw = parts.first(cart.token, cart.id)
    token = normalise_cart_token(raw)
    if token is None:
        raise MappingError("cart has no token or id")
    at = parts.when(ctx, cart.updated_at, cart.created_at)
    items, cut = parts.items(cart.line_items)
    value = _lines_value(cart.line_items)
    currency = parts.lines_currency(cart.line_items) or cart.currency or ctx.shop_currency
    url = _permalink(ctx.shop, cart.line_items)
    person = PersonRef(
        cart_token=token, cart_token_raw=raw, **parts.hints(cart.note_attributes, ctx)
    )
    snapshot = CartSnapshot(
        cart_token=token,
        updated_at=at,
        items=items,
        value=value,
        currency=currency,
        url=url,
        created_at=cart.created_at,
    )
    events: tuple[CanonicalEvent, ...] = ()
    if items:
        props = {
            "cart_id": token,
            "value": money(value),
            "currency": currency,
            "cart_url": url,
            **cut,
        }
        events = (
            CanonicalEvent(
                name=ADDED_TO_CART,
                timestamp=at,
                key=f"cart:{token}",
                person=person,
                properties=compact(props),
                items=items,
            ),
        )
    return Mapped(source=SOURCE, topic=topic, events=events, cart=snapshot, person=person)


def map_checkout(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`checkouts/create|update`: `checkout_started`, the person, traits, the cart snapshot."""
    co = Checkout.model_validate(body)
    ref = parts.first(co.token, co.id)
    if ref is None:
        raise MappingError("checkout has no token or id")
    at = parts.when(ctx, co.updated_at, co.created_at)
    customer = co.customer
    country = parts.country(customer, co.shipping_address, co.billing_address)
    cart_token = normalise_cart_token(co.cart_token)
    person = PersonRef(
        customer_id=customer.id if customer else None,
        email=normalise_email(parts.first(co.email, customer.email if customer else None)),
        phone=normalise_phone(parts.first(co.phone, customer.phone if customer else None), country),
        cart_token=cart_token,
        cart_token_raw=co.cart_token,
        checkout_token=co.token,
        checkout_id=co.id,
        **parts.hints(co.note_attributes, ctx),
    )
    items, cut = parts.items(co.line_items)
    # Checkout `currency` is the shop's currency; `total_price` is expressed in it.
    currency = co.currency or ctx.shop_currency
    props = {
        "cart_id": cart_token,
        "checkout_id": parts.first(co.id, co.token),
        "value": money(co.total_price),
        "currency": currency,
        "checkout_url": co.abandoned_checkout_url,
        "shipping_country": co.shipping_address.country_code if co.shipping_address else None,
        **cut,
    }
    event = CanonicalEvent(
        name=CHECKOUT_STARTED,
        # A checkout starts when it is created: every snapshot of it then gives the one
        # `checkout_started` the same messageId, whichever arrives first.
        timestamp=parts.when(ctx, co.created_at, co.updated_at),
        key=f"checkout:{ref}",
        person=person,
        properties=compact(props),
        items=items,
    )
    identifies: tuple[TraitUpdate, ...] = ()
    if person.customer_id or person.email:
        traits = customer_traits(customer, email=person.email, phone=co.phone, country=country)
        version = customer.updated_at if customer else None
        identifies = (
            TraitUpdate(person=person, traits=traits.as_traits(), version=version, timestamp=at),
        )
    cart = None
    if cart_token is not None:
        # Line value, not the checkout total: a cart snapshot means the same thing whether it
        # came from `carts/*` or from a checkout (shipping and tax are not in the cart).
        cart = CartSnapshot(
            cart_token=cart_token,
            updated_at=at,
            items=items,
            value=_lines_value(co.line_items),
            currency=currency,
            url=co.abandoned_checkout_url,
        )
    return Mapped(
        source=SOURCE,
        topic=topic,
        events=(event,),
        identifies=identifies,
        cart=cart,
        person=person,
    )


def map_customer(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`customers/create|update`: one trait update, versioned by the customer's `updated_at`."""
    customer = Customer.model_validate(body)
    if customer.id is None:
        raise MappingError("customer has no id")
    at = parts.when(ctx, customer.updated_at, customer.created_at)
    country = parts.country(customer)
    person = PersonRef(
        customer_id=customer.id,
        email=normalise_email(customer.email),
        phone=normalise_phone(customer.phone, country),
    )
    traits = customer_traits(customer, country=country)
    update = TraitUpdate(
        person=person, traits=traits.as_traits(), version=customer.updated_at, timestamp=at
    )
    return Mapped(source=SOURCE, topic=topic, identifies=(update,), person=person)


def map_merge(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`customers/merge`: which customer was kept, which deleted, and whether it completed."""
    merge = CustomerMerge.model_validate(body)
    kept = gid_to_id(merge.admin_graphql_api_customer_kept_id)
    deleted = gid_to_id(merge.admin_graphql_api_customer_deleted_id)
    if kept is None or deleted is None:
        raise MappingError("merge has no kept or deleted customer id")
    completed = (merge.status or "").lower() == "completed" and not merge.errors
    fact = MergeFact(kept_id=kept, deleted_id=deleted, completed=completed)
    return Mapped(source=SOURCE, topic=topic, merge=fact)


def _check_shop_named(body: dict[str, Any], ctx: MapContext, *, required: bool) -> None:
    """A compliance request acts on the shop the signed header names; a body naming another
    shop (or, where it must name one, none) is refused, so it is parked for a human."""
    named = body.get("shop_domain")
    if named is None and not required:
        return
    if not isinstance(named, str) or named.strip().lower() != ctx.shop.lower():
        raise MappingError("compliance request: shop_domain does not match the shop header")


def map_compliance(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`customers/redact|data_request`: the person concerned (no events).

    A request naming nobody, or another shop than the header's, raises MappingError, so it is
    parked for a human, not dropped.
    """
    _check_shop_named(body, ctx, required=False)
    request = ComplianceRequest.model_validate(body)
    customer = request.customer or Customer()
    person = PersonRef(
        customer_id=customer.id,
        email=normalise_email(customer.email),
        phone=normalise_phone(customer.phone, parts.country(customer)),
    )
    if not (person.customer_id or person.email or person.phone):
        raise MappingError("compliance request names no customer")
    return Mapped(source=SOURCE, topic=topic, person=person)


def map_shop_redact(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """`shop/redact`: nothing to map, but it erases the whole shop, so its body must name the
    same shop as the signed header (else MappingError: parked, not run)."""
    _check_shop_named(body, ctx, required=True)
    return Mapped(source=SOURCE, topic=topic)


MAPPERS: dict[str, Mapper] = {
    "carts/create": map_cart,
    "carts/update": map_cart,
    "checkouts/create": map_checkout,
    "checkouts/update": map_checkout,
    "orders/create": map_order,
    "orders/paid": map_order,
    "orders/fulfilled": map_order,
    "orders/cancelled": map_order,
    "backfill/order": map_order,
    "refunds/create": map_refund,
    "customers/create": map_customer,
    "customers/update": map_customer,
    "customers/merge": map_merge,
    "customers/redact": map_compliance,
    "customers/data_request": map_compliance,
    "shop/redact": map_shop_redact,
    # issue 5: more internal topics the backfill queues (never sent by Shopify).
    "backfill/refund": map_backfill_refund,
    "backfill/traits": map_backfill_traits,
    # issue 16: Shopify's native subscription topics, and `backfill/subscription_contract`.
    **SUBSCRIPTION_MAPPERS,
    # issue 17: the product cache (bridge/products/), and the Admin reads the sweep queues.
    "products/update": map_product,
    "products/delete": map_product,
    "backfill/product": map_product,
}


class ShopifySource(TopicTable):
    """The Shopify `Source`: its topics and their mappers."""

    name = SOURCE
    mappers = MAPPERS
