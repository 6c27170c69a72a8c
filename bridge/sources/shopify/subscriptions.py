"""Shopify's native subscription topics -> `Mapped` subscription and billing facts. Pure.

Contract topics (`subscription_contracts/*`) give a `SubscriptionFact` naming the contract's
customer; billing topics (`subscription_billing_attempts/*`, `subscription_billing_cycles/*`)
give a `BillingFact` whose person is only the subscription (their payloads carry no customer
id: the decide step joins them through the link the contract's webhooks made). No events here:
the decide step derives `subscription_created`, `payment_failed` and the rest from the facts and
the state it keeps.

`backfill/subscription_contract` is the bridge's own topic for a contract read from the Admin
API (sources/shopify/graphql.py turns it into the webhook shape, with `updated_at`,
`next_billing_date`, `customer_email` and `lines` added): the same mapping, never `created`.

Contract: each mapper takes a decoded JSON object and returns a `Mapped`; it raises pydantic's
ValidationError for a wrongly typed body (the source turns it into MappingError) and
MappingError, naming fields and never values, when a field it needs is missing. Nothing else.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, PlainValidator

from bridge.canonical import (
    BILLING_CHALLENGED,
    BILLING_FAILURE,
    BILLING_SKIPPED,
    BILLING_SUCCESS,
    BILLING_UNSKIPPED,
    SUB_ACTIVE,
    SUB_CANCELED,
    SUB_EXPIRED,
    SUB_FAILED,
    SUB_PAUSED,
    BillingFact,
    MapContext,
    Mapped,
    PersonRef,
    SubscriptionFact,
    subscription_ref,
)
from bridge.ids import gid_to_id
from bridge.sources import MappingError
from bridge.sources.shopify import parts
from bridge.sources.shopify.models import (
    Count,
    Lines,
    Obj,
    Payload,
    ShopifyId,
    Text,
    Timestamp,
)
from bridge.sources.shopify.parts import SOURCE, first
from bridge.sources.shopify.traits import normalise_email

CONTRACT_TOPICS = tuple(
    f"subscription_contracts/{action}"
    for action in ("create", "update", "activate", "pause", "cancel", "fail", "expire")
)
BILLING_ATTEMPT_TOPICS = tuple(
    f"subscription_billing_attempts/{action}" for action in ("success", "failure", "challenged")
)
BILLING_CYCLE_TOPICS = ("subscription_billing_cycles/skip", "subscription_billing_cycles/unskip")
# A contract read from the Admin API (backfill, a lookup for a billing attempt whose contract
# the bridge never saw): state and traits, never a lifecycle event of its own.
BACKFILL_CONTRACT_TOPIC = "backfill/subscription_contract"

# The status a contract's `status` field names (lower-case in webhooks, upper in GraphQL).
# `stale` is left out on purpose: it is in Shopify's reference app and the Customer API
# ("expired due to inactivity"), but not in the Admin API's contract status enum nor in any
# webhook sample, so nothing says whether it ends the subscription or can be revived; the
# bridge keeps the last status it knows rather than guess (status None: "this payload does not
# say"). Unknown values are treated the same way.
_STATUSES = {
    "active": SUB_ACTIVE,
    "paused": SUB_PAUSED,
    "cancelled": SUB_CANCELED,
    "canceled": SUB_CANCELED,
    "expired": SUB_EXPIRED,
    "failed": SUB_FAILED,
}
# The status a status topic announces (since 2024-01), for a body that names none.
_TOPIC_STATUSES = {
    "activate": SUB_ACTIVE,
    "pause": SUB_PAUSED,
    "cancel": SUB_CANCELED,
    "fail": SUB_FAILED,
    "expire": SUB_EXPIRED,
}
_OUTCOMES = {
    "success": BILLING_SUCCESS,
    "failure": BILLING_FAILURE,
    "challenged": BILLING_CHALLENGED,
    "skip": BILLING_SKIPPED,
    "unskip": BILLING_UNSKIPPED,
}
_INTERVALS = frozenset({"day", "week", "month", "year"})

# GraphQL's `revisionId` is an UnsignedInt64.
_MAX_REVISION = 2**64
# Error messages are the payment processor's text: kept to a length an event property carries.
MAX_ERROR_MESSAGE_CHARS = 500
MAX_ERROR_CODE_CHARS = 100


def _to_revision(v: Any) -> int | None:
    """`revision_id`: a string in Shopify's samples, a number in its reference app."""
    if v is None:
        return None
    if isinstance(v, bool | float):
        # A float has lost digits of a 64-bit revision already.
        raise ValueError("revision must be an integer or a string of digits")
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return None
        if not (text.isascii() and text.isdigit() and len(text) <= 20):
            raise ValueError("revision must be an integer or a string of digits")
        v = int(text)
    if not isinstance(v, int):
        raise ValueError("revision must be an integer or a string of digits")
    if not 0 <= v < _MAX_REVISION:
        raise ValueError("revision out of range")
    return v


Revision = Annotated[int | None, PlainValidator(_to_revision)]


class BillingPolicy(Payload):
    interval: Text = None
    interval_count: Count = None


class Contract(Payload):
    """A `subscription_contracts/*` body (every topic shares it), or an Admin API read of a
    contract in the same shape (`created_at`, `updated_at`, `next_billing_date`,
    `customer_email` and `lines` come only from the Admin API)."""

    id: ShopifyId = None
    admin_graphql_api_id: ShopifyId = None
    customer_id: ShopifyId = None
    admin_graphql_api_customer_id: ShopifyId = None
    customer_email: Text = None
    billing_policy: Obj[BillingPolicy] = None
    currency_code: Text = None
    status: Text = None
    origin_order_id: ShopifyId = None
    admin_graphql_api_origin_order_id: ShopifyId = None
    revision_id: Revision = None
    created_at: Timestamp = None
    updated_at: Timestamp = None
    next_billing_date: Timestamp = None
    lines: Lines = Field(default_factory=list)


class BillingAttempt(Payload):
    """A `subscription_billing_attempts/*` body (Shopify's samples are empty; the fields are
    those of its reference app's types and fixtures)."""

    id: ShopifyId = None
    admin_graphql_api_id: ShopifyId = None
    idempotency_key: Text = None
    order_id: ShopifyId = None
    admin_graphql_api_order_id: ShopifyId = None
    subscription_contract_id: ShopifyId = None
    admin_graphql_api_subscription_contract_id: ShopifyId = None
    error_code: Text = None
    error_message: Text = None
    # Not in the webhook's documented fields; read when present (an Admin API read of an
    # attempt has them), else the delivery's trigger time is the attempt's time.
    cycle_index: Count = None
    completed_at: Timestamp = None
    created_at: Timestamp = None


class BillingCycle(Payload):
    """A `subscription_billing_cycles/skip|unskip` body."""

    subscription_contract_id: ShopifyId = None
    admin_graphql_api_subscription_contract_id: ShopifyId = None
    cycle_index: Count = None
    cycle_start_at: Timestamp = None
    cycle_end_at: Timestamp = None


def _id(*candidates: str | None) -> str | None:
    """The first id given, a GID reduced to its numeric tail (`gid://shopify/X/1` -> `1`)."""
    for value in candidates:
        if value is None:
            continue
        tail = gid_to_id(value)
        if tail:
            return tail
    return None


def contract_status(raw: str | None, topic: str) -> str | None:
    """The bridge's status for a contract: its body's status when the bridge knows it, else
    the one its status topic announces, else None (the payload does not say)."""
    if raw is not None:
        known = _STATUSES.get(raw.strip().lower())
        if known is not None:
            return known
    return _TOPIC_STATUSES.get(topic.rpartition("/")[2])


def _interval(policy: BillingPolicy | None) -> tuple[str | None, int | None]:
    if policy is None:
        return None, None
    interval = (policy.interval or "").strip().lower() or None
    return (interval if interval in _INTERVALS else None), policy.interval_count


def map_contract(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A contract webhook (or an Admin API read of one): its `SubscriptionFact` and owner."""
    contract = Contract.model_validate(body)
    contract_id = _id(contract.id, contract.admin_graphql_api_id)
    if contract_id is None:
        raise MappingError(f"{topic}: contract has no id or admin_graphql_api_id")
    # The resource's own time orders snapshots where a body has one (Admin API reads); a
    # webhook has none, and its trigger time stands in (the revision orders them first).
    version = parts.when(ctx, contract.updated_at)
    person = PersonRef(
        customer_id=_id(contract.customer_id, contract.admin_graphql_api_customer_id),
        email=normalise_email(contract.customer_email),
    )
    interval, interval_count = _interval(contract.billing_policy)
    items, _cut = parts.items(contract.lines)
    priced = [li for li in contract.lines if parts.unit_price(li) is not None]
    price = sum((parts.line_total(li) for li in priced), Decimal(0)) if priced else None
    fact = SubscriptionFact(
        provider=SOURCE,
        subscription_id=contract_id,
        person=person,
        version=version,
        revision=contract.revision_id,
        status=contract_status(contract.status, topic),
        created=topic == "subscription_contracts/create",
        created_at=contract.created_at,
        next_charge_at=contract.next_billing_date,
        interval=interval,
        interval_count=interval_count,
        price=price,
        currency=contract.currency_code,
        items=items,
        origin_order_id=_id(contract.origin_order_id, contract.admin_graphql_api_origin_order_id),
    )
    return Mapped(source=SOURCE, topic=topic, subscription=fact, person=person)


def _triggered(ctx: MapContext) -> datetime | None:
    """The delivery's trigger time (UTC), which billing facts are timed at; None without one."""
    return parts.when(ctx) if ctx.triggered_at is not None else None


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text.strip()[:limit] or None


def map_billing_attempt(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A billing attempt's outcome, for its contract (the payload names no customer)."""
    attempt = BillingAttempt.model_validate(body)
    contract_id = _id(
        attempt.subscription_contract_id, attempt.admin_graphql_api_subscription_contract_id
    )
    if contract_id is None:
        raise MappingError(
            f"{topic}: billing attempt has no subscription_contract_id "
            "or admin_graphql_api_subscription_contract_id"
        )
    attempt_id = _id(attempt.id, attempt.admin_graphql_api_id) or attempt.idempotency_key
    if attempt_id is None:
        raise MappingError(f"{topic}: billing attempt has no id, admin_graphql_api_id or key")
    outcome = _OUTCOMES[topic.rpartition("/")[2]]
    at = first(_triggered(ctx), attempt.completed_at, attempt.created_at)
    if at is None:
        raise MappingError(f"{topic}: billing attempt has no usable timestamp")
    # Unknown codes pass through as they are: the decide step treats every failure alike, and
    # a segment can still tell them apart (Shopify adds codes without notice).
    code = _cut(attempt.error_code, MAX_ERROR_CODE_CHARS)
    person = PersonRef(subscription=subscription_ref(SOURCE, contract_id))
    fact = BillingFact(
        provider=SOURCE,
        outcome=outcome,
        attempt_id=attempt_id,
        subscription_ids=(contract_id,),
        at=at,
        person=person,
        cycle="" if attempt.cycle_index is None else str(attempt.cycle_index),
        error_code=code.upper() if code else None,
        error_message=_cut(attempt.error_message, MAX_ERROR_MESSAGE_CHARS),
        order_id=_id(attempt.order_id, attempt.admin_graphql_api_order_id),
    )
    return Mapped(source=SOURCE, topic=topic, billing=fact, person=person)


def map_billing_cycle(topic: str, body: dict[str, Any], ctx: MapContext) -> Mapped:
    """A skipped or unskipped billing cycle of one contract."""
    cycle = BillingCycle.model_validate(body)
    contract_id = _id(
        cycle.subscription_contract_id, cycle.admin_graphql_api_subscription_contract_id
    )
    if contract_id is None:
        raise MappingError(f"{topic}: billing cycle has no subscription_contract_id")
    if cycle.cycle_index is None:
        raise MappingError(f"{topic}: billing cycle has no cycle_index")
    at = first(_triggered(ctx), cycle.cycle_start_at)
    if at is None:
        raise MappingError(f"{topic}: billing cycle has no usable timestamp")
    person = PersonRef(subscription=subscription_ref(SOURCE, contract_id))
    fact = BillingFact(
        provider=SOURCE,
        outcome=_OUTCOMES[topic.rpartition("/")[2]],
        attempt_id=f"cycle:{cycle.cycle_index}",
        subscription_ids=(contract_id,),
        at=at,
        person=person,
        cycle=str(cycle.cycle_index),
    )
    return Mapped(source=SOURCE, topic=topic, billing=fact, person=person)


MAPPERS = {
    **{topic: map_contract for topic in (*CONTRACT_TOPICS, BACKFILL_CONTRACT_TOPIC)},
    **{topic: map_billing_attempt for topic in BILLING_ATTEMPT_TOPICS},
    **{topic: map_billing_cycle for topic in BILLING_CYCLE_TOPICS},
}
