"""Pydantic models of the Recharge webhook bodies the bridge reads (API 2021-11, with the 2021-01
names read as fallbacks): tolerant, exact, no I/O.

Same contract as the Shopify models (and their validators): unknown fields are ignored, nearly
every field is optional, ids become exact strings, money `Decimal`. Timestamps differ: Recharge
sends some without an offset (2021-01 did throughout) and the charge dates as bare dates; a
naive timestamp is read as UTC, a bare date as its midnight UTC, anything unreadable as None.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from bridge.sources.shopify.models import Amount, Count, ListOf, Obj, ShopifyId, Text


def _to_utc(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    text = v.strip()
    try:
        if len(text) == 10:
            # "2026-12-01": a charge's or next charge's day, as Recharge schedules it.
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    if at.tzinfo is None or at.utcoffset() is None:
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


RechargeTime = Annotated[datetime | None, PlainValidator(_to_utc)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ExternalId(Payload):
    """`{"ecommerce": "<Shopify id>"}`: the platform's id of a Recharge resource (2021-11)."""

    ecommerce: ShopifyId = None


def external(value: ExternalId | None, legacy: str | None = None) -> str | None:
    """The Shopify id of a 2021-11 `external_*_id`, else the 2021-01 `shopify_*_id`."""
    if value is not None and value.ecommerce is not None:
        return value.ecommerce
    return legacy


class Customer(Payload):
    """A Recharge customer: a `customer/*` body, a subscription's included object, or the
    summary a charge embeds (id, email, external id only)."""

    id: ShopifyId = None
    email: Text = None
    external_customer_id: Obj[ExternalId] = None
    shopify_customer_id: ShopifyId = None
    first_name: Text = None
    last_name: Text = None
    phone: Text = None
    status: Text = None
    created_at: RechargeTime = None
    updated_at: RechargeTime = None

    @property
    def shopify_id(self) -> str | None:
        return external(self.external_customer_id, self.shopify_customer_id)


class Subscription(Payload):
    id: ShopifyId = None
    customer_id: ShopifyId = None
    address_id: ShopifyId = None
    status: Text = None
    cancellation_reason: Text = None
    cancelled_at: RechargeTime = None
    next_charge_scheduled_at: RechargeTime = None
    external_product_id: Obj[ExternalId] = None
    external_variant_id: Obj[ExternalId] = None
    shopify_product_id: ShopifyId = None
    shopify_variant_id: ShopifyId = None
    sku: Text = None
    product_title: Text = None
    price: Amount = None
    quantity: Count = None
    order_interval_unit: Text = None
    order_interval_frequency: Count = None
    presentment_currency: Text = None
    created_at: RechargeTime = None
    updated_at: RechargeTime = None


class ChargeLine(Payload):
    purchase_item_id: ShopifyId = None
    purchase_item_type: Text = None
    subscription_id: ShopifyId = None  # 2021-01
    external_product_id: Obj[ExternalId] = None
    external_variant_id: Obj[ExternalId] = None


class Charge(Payload):
    id: ShopifyId = None
    customer: Obj[Customer] = None
    customer_id: ShopifyId = None  # 2021-01
    email: Text = None  # 2021-01
    status: Text = None
    type: Text = None
    error: Text = None
    error_type: Text = None
    charge_attempts: Count = None
    retry_date: RechargeTime = None
    scheduled_at: RechargeTime = None
    processed_at: RechargeTime = None
    created_at: RechargeTime = None
    updated_at: RechargeTime = None
    total_price: Amount = None
    currency: Text = None
    external_order_id: Obj[ExternalId] = None
    shopify_order_id: ShopifyId = None  # 2021-01
    line_items: ListOf[ChargeLine] = Field(default_factory=list)
