"""The bridge's own vocabulary: what mapping produces and the stateful step consumes.

Mapping (per source) turns one webhook payload into a `Mapped`: candidate canonical events and
trait updates, each naming the person through the keys the payload carries (`PersonRef`). The
stateful step (identity graph, cart state, once-only rules) decides which become Pipelines calls.
Nothing here does I/O.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

# Canonical event names (snake_case default; `EVENT_NAMING=segment` renames at the edge).
ADDED_TO_CART = "added_to_cart"
CHECKOUT_STARTED = "checkout_started"
ORDER_COMPLETED = "order_completed"
ORDER_REFUNDED = "order_refunded"
ORDER_FULFILLED = "order_fulfilled"
ORDER_CANCELLED = "order_cancelled"
# Subscription lifecycle (issue 16): cartbridge's own names; no spec defines them.
SUBSCRIPTION_CREATED = "subscription_created"
SUBSCRIPTION_PAUSED = "subscription_paused"
SUBSCRIPTION_RESUMED = "subscription_resumed"
SUBSCRIPTION_CANCELED = "subscription_canceled"
SUBSCRIPTION_EXPIRED = "subscription_expired"
SUBSCRIPTION_SKIPPED = "subscription_skipped"
PAYMENT_FAILED = "payment_failed"
PAYMENT_RECOVERED = "payment_recovered"
# Browse events (issue 17), from the storefront pixel: anonymous hints, never identity. The
# pixel's own names, except the checkout pair, which webhooks already name.
PRODUCT_VIEWED = "product_viewed"
COLLECTION_VIEWED = "collection_viewed"
SEARCH_SUBMITTED = "search_submitted"
PRODUCT_ADDED_TO_CART = "product_added_to_cart"
CART_VIEWED = "cart_viewed"
STOREFRONT_CHECKOUT_STARTED = "storefront_checkout_started"
STOREFRONT_CHECKOUT_COMPLETED = "storefront_checkout_completed"

# A subscription's status as the bridge keeps it, whatever the source calls it. `failed` is a
# source's own verdict that billing failed (Shopify's FAILED contract); a subscription whose
# payments are failing is "in dunning" (see identity/subscriptions.py), not a status here.
SUB_ACTIVE = "active"
SUB_PAUSED = "paused"
SUB_FAILED = "failed"
SUB_CANCELED = "canceled"
SUB_EXPIRED = "expired"
SUB_STATUSES = (SUB_ACTIVE, SUB_PAUSED, SUB_FAILED, SUB_CANCELED, SUB_EXPIRED)

# What a billing fact says happened to one billing cycle.
BILLING_SUCCESS = "success"
BILLING_FAILURE = "failure"
BILLING_CHALLENGED = "challenged"  # needs the buyer (3-D Secure): not a failure yet
BILLING_SKIPPED = "skipped"
BILLING_UNSKIPPED = "unskipped"
BILLING_OUTCOMES = (
    BILLING_SUCCESS,
    BILLING_FAILURE,
    BILLING_CHALLENGED,
    BILLING_SKIPPED,
    BILLING_UNSKIPPED,
)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PersonRef(Frozen):
    """Every key a payload offers for finding its person. All ids are strings."""

    customer_id: str | None = None
    email: str | None = None  # lower-cased
    phone: str | None = None  # E.164 where it could be normalised
    cart_token: str | None = None  # normalised
    cart_token_raw: str | None = None
    checkout_token: str | None = None
    checkout_id: str | None = None
    order_id: str | None = None
    anonymous_id: str | None = None  # storefront hint from note_attributes
    hinted_customer_id: str | None = None  # storefront hint from note_attributes
    # A subscription app's own customer id, "<provider>:<id>" (Recharge's customer id): linked
    # to the person once a payload names both, then enough to find them.
    subscriber: str | None = None
    # A subscription, "<provider>:<id>": billing payloads name only it (no customer id), and
    # find their person through the link its contract's webhooks made.
    subscription: str | None = None


# Lines one event carries (and a cart's state keeps): a webhook's work and size stay bounded
# whatever its line count (a signed 45 000-line cart once cost 2 GB a try). The event says
# when it was cut (`items_truncated`, `item_count`).
MAX_EVENT_ITEMS = 100


class Item(NamedTuple):
    """One product line, as every canonical event carries it.

    An immutable named tuple rather than a model: a webhook has tens of lines and each is built
    from fields its payload model already validated, so a model's validation per line was
    pure cost. Models holding items check them with `_to_item` (instances pass as they are,
    stored JSON is read back) and store them as their fields (`ItemField`)."""

    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    name: str | None = None
    price: Decimal | None = None
    quantity: int = 0
    brand: str | None = None
    category: str | None = None
    # Product metadata the bridge adds from its product cache (bridge/products/), not from the
    # payload: None until the product is known.
    vendor: str | None = None
    replenishable: bool | None = None
    days_to_replenish: int | None = None

    def line_key(self) -> str:
        """Identity of a cart line across updates (variant, else product, else sku/name)."""
        return self.variant_id or self.product_id or self.sku or self.name or "?"


def _text_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError("item text fields must be strings")


def _to_item(value: Any) -> Item:
    """An Item as is; an item's stored form (a dict of its fields, as `ItemField` dumps it)
    read back with each field checked."""
    if type(value) is Item:
        return value
    if not isinstance(value, dict) or not set(value) <= set(Item._fields):
        raise ValueError("an item must be an Item or a dict of its fields")
    price = value.get("price")
    quantity = value.get("quantity", 0)
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValueError("item quantity must be an integer")
    try:
        amount = None if price is None else Decimal(str(price))
    except ArithmeticError:
        raise ValueError("item price must be a decimal") from None
    replenishable = value.get("replenishable")
    if replenishable is not None and not isinstance(replenishable, bool):
        raise ValueError("item replenishable must be a boolean")
    days = value.get("days_to_replenish")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int)):
        raise ValueError("item days_to_replenish must be an integer")
    return Item(
        product_id=_text_or_none(value.get("product_id")),
        variant_id=_text_or_none(value.get("variant_id")),
        sku=_text_or_none(value.get("sku")),
        name=_text_or_none(value.get("name")),
        price=amount,
        quantity=quantity,
        brand=_text_or_none(value.get("brand")),
        category=_text_or_none(value.get("category")),
        vendor=_text_or_none(value.get("vendor")),
        replenishable=replenishable,
        days_to_replenish=days,
    )


def _item_fields(item: Item) -> dict[str, Any]:
    return item._asdict()


ItemField = Annotated[Item, PlainValidator(_to_item), PlainSerializer(_item_fields)]


def line_keys(items: tuple[Item, ...]) -> list[str]:
    """Line identities in a cart. Two lines can share a variant (different line properties,
    e.g. engraving): the repeat gets an ordinal, so each keeps its own state and messageId."""
    seen: dict[str, int] = {}
    keys = []
    for item in items:
        key = item.line_key()
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


class CanonicalEvent(Frozen):
    """A candidate track call. `key` is the business key its messageId derives from."""

    name: str
    timestamp: datetime
    key: str
    person: PersonRef
    properties: dict[str, Any] = Field(default_factory=dict)
    items: tuple[ItemField, ...] = ()


class TraitUpdate(Frozen):
    """A candidate identify call; `version` orders updates (older never overwrites newer)."""

    person: PersonRef
    traits: dict[str, Any]
    version: datetime | None = None
    timestamp: datetime


class OrderFact(Frozen):
    """What the per-customer order index keeps of an order (for order traits)."""

    order_id: str
    created_at: datetime
    total: Decimal
    currency: str
    test: bool = False
    cancelled: bool = False
    # A subscription renewal: billed by the subscription app, not bought through a checkout, so
    # it converts no cart and says nothing about a checkout the person may have open.
    renewal: bool = False
    # Its lines (as its event carries them), for replenishment dates (identity/replenishment.py):
    # kept here because a backfilled order has no event.
    items: tuple[ItemField, ...] = ()


class RefundFact(Frozen):
    order_id: str
    refund_id: str
    amount: Decimal
    created_at: datetime
    items: tuple[ItemField, ...] = ()  # the lines refunded, with the quantities refunded


class ProductFact(Frozen):
    """One product as a `products/*` webhook or an Admin API read describes it (cached by
    bridge/products/). `gone`: deleted, or not found by the Admin API. `metafields` holds
    `namespace.key` -> (value, type) for what the source carried; `metafield_keys` names the
    keys it was asked for (an Admin read), so a key it lacks is known to be unset."""

    product_id: str
    version: datetime | None = None  # the product's updated_at
    gone: bool = False
    product_type: str | None = None
    category: str | None = None  # Standard Product Taxonomy category name
    vendor: str | None = None
    metafields: dict[str, tuple[str | None, str | None]] = Field(default_factory=dict)
    metafield_keys: tuple[str, ...] | None = None


def subscription_ref(provider: str, subscription_id: str) -> str:
    """A subscription's name across sources: `shopify:<contract id>`, `recharge:<id>`."""
    return f"{provider}:{subscription_id}"


class SubscriptionFact(Frozen):
    """One subscription as a source reports it at a moment (a contract or subscription webhook,
    or an Admin API read). `person` names its owner as far as the payload does.

    Snapshots are ordered by `revision` when both sides have one (Shopify's `revision_id`, bumped
    by every contract change), else by `version` (the resource's `updated_at`, else the
    delivery's trigger time): an older snapshot never overwrites a newer state.
    """

    provider: str
    subscription_id: str
    person: PersonRef
    version: datetime
    revision: int | None = None
    status: str | None = None  # one of SUB_STATUSES; None: this payload does not say
    created: bool = False  # the source says it was just created (subscription_created)
    created_at: datetime | None = None
    canceled_at: datetime | None = None
    cancellation_reason: str | None = None
    next_charge_at: datetime | None = None
    interval: str | None = None  # day, week, month, year
    interval_count: int | None = None
    price: Decimal | None = None
    currency: str | None = None
    items: tuple[ItemField, ...] = ()
    # The order that started it (Shopify's origin_order_id; Recharge's first charge's order):
    # a Shopify contract and a Recharge subscription with the same one are one subscription.
    origin_order_id: str | None = None

    @property
    def ref(self) -> str:
        return subscription_ref(self.provider, self.subscription_id)


class BillingFact(Frozen):
    """What happened to one billing cycle of one or more subscriptions (a billing attempt, a
    Recharge charge, a skipped cycle). Payloads of Shopify's billing topics name no customer:
    `person` is then empty and the subscription's link finds them."""

    provider: str
    outcome: str  # one of BILLING_OUTCOMES
    attempt_id: str  # the attempt (Shopify) or charge (Recharge) this fact is about
    subscription_ids: tuple[str, ...]
    at: datetime
    person: PersonRef = PersonRef()
    # The cycle a retry belongs to (Recharge's charge id; a Shopify cycle index); "" when the
    # source does not say: the subscription's open run of failures is then the cycle.
    cycle: str = ""
    error_code: str | None = None
    error_message: str | None = None
    attempt_number: int | None = None
    amount: Decimal | None = None
    currency: str | None = None
    next_retry_at: datetime | None = None
    order_id: str | None = None  # the order a success created (a renewal)
    first_order: bool = False  # the charge that started the subscription (Recharge CHECKOUT)

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(subscription_ref(self.provider, s) for s in self.subscription_ids)


class CartSnapshot(Frozen):
    """A cart or checkout's lines at a moment, for diffing additions and live cart traits."""

    cart_token: str
    updated_at: datetime
    items: tuple[ItemField, ...]
    value: Decimal
    currency: str
    url: str | None = None
    # The cart's creation time: the stable time part of its `added_to_cart` messageIds.
    created_at: datetime | None = None


class BrowseFact(Frozen):
    """What a storefront pixel event claims, beyond its candidate event (issue 17). Nothing
    here is trusted: `client` is the anonymous id derived from the shop and the pixel's
    clientId, and the tokens are only hints a signed webhook may later confirm.

    `pixel_event` is the standard event's name as the pixel sent it (the policy's unit),
    `event_id` its id (deduplicated per client), `product` the product a view throttles on."""

    pixel_event: str
    event_id: str
    client: str
    cart_token: str | None = None
    checkout_token: str | None = None
    product: str | None = None


class MergeFact(Frozen):
    kept_id: str
    deleted_id: str
    completed: bool


class Mapped(Frozen):
    """Everything one webhook says, in the bridge's terms. `skipped` explains an empty result."""

    source: str
    topic: str
    events: tuple[CanonicalEvent, ...] = ()
    identifies: tuple[TraitUpdate, ...] = ()
    cart: CartSnapshot | None = None
    order: OrderFact | None = None
    refund: RefundFact | None = None
    merge: MergeFact | None = None
    subscription: SubscriptionFact | None = None
    billing: BillingFact | None = None
    browse: BrowseFact | None = None  # a storefront pixel event (issue 17)
    product: ProductFact | None = None
    person: PersonRef | None = None
    skipped: str | None = None


class MapContext(Frozen):
    """What mapping may know beyond the payload (no settings object, no clock); built by
    `ProcessConfig.map_context`, which holds the configured values."""

    shop: str
    shop_currency: str
    skip_test_orders: bool
    identity_hint_customer_attr: str
    identity_hint_anonymous_attr: str
    # Which order topic emits `order_completed` (the other only records the order).
    order_completed_on: str
    triggered_at: datetime | None = None
