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
    return Item(
        product_id=_text_or_none(value.get("product_id")),
        variant_id=_text_or_none(value.get("variant_id")),
        sku=_text_or_none(value.get("sku")),
        name=_text_or_none(value.get("name")),
        price=amount,
        quantity=quantity,
        brand=_text_or_none(value.get("brand")),
        category=_text_or_none(value.get("category")),
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


class RefundFact(Frozen):
    order_id: str
    refund_id: str
    amount: Decimal
    created_at: datetime


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
