"""Pydantic models of the Shopify webhook bodies the bridge reads: tolerant, exact, no I/O.

Contract: unknown fields are ignored and nearly every field is optional. Ids become exact strings
(64-bit ints never pass through float), money becomes `Decimal` (from strings or numbers),
timestamps become offset-aware UTC datetimes and a malformed one becomes None. A value of the
wrong type where the bridge needs it raises pydantic's `ValidationError`; validators raise
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WrapValidator,
)

from bridge.ids import iso_z

T = TypeVar("T")

# Bounds keep Decimal arithmetic and str() conversions far from their limits, so summing
# lines or rendering ids can never raise anything but a validation error.
_MAX_MONEY = Decimal(10) ** 15
_MAX_ID = 10**40
# Negated once here: `-_MAX_ID` in a line's checks built a new 133-bit int for every id.
_MIN_ID = -_MAX_ID
_MAX_COUNT = 10**9


# The validators below run for every field of every line of every webhook: the common exact
# types are checked first, before the general isinstance chains.


def _to_id(v: Any) -> str | None:
    if type(v) is int and _MIN_ID < v < _MAX_ID:
        return str(v)
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("id must be an integer or a string")
    if isinstance(v, int):
        if abs(v) >= _MAX_ID:
            raise ValueError("id out of range")
        return str(v)
    if isinstance(v, str):
        return v.strip() or None
    # A float id has already lost digits somewhere upstream; refuse it rather than guess.
    raise ValueError("id must be an integer or a string")


def _to_text(v: Any) -> str | None:
    if isinstance(v, str):
        return v if v and not v.isspace() else None
    if v is None:
        return None
    if isinstance(v, int | float) and not isinstance(v, bool):
        if isinstance(v, int) and abs(v) >= _MAX_ID:
            raise ValueError("number out of range")
        return str(v)
    raise ValueError("expected a string")


def _read_money_text(v: str) -> Decimal | None:
    # Decimal() itself ignores surrounding whitespace; a blank string is "no amount".
    try:
        amount = Decimal(v)
    except InvalidOperation:
        if not v.strip():
            return None
        raise ValueError("money is not a decimal") from None
    if not amount.is_finite() or amount.copy_abs() >= _MAX_MONEY:
        raise ValueError("money out of range")
    return amount


# Amounts repeat across lines and webhooks ("0.00", a catalogue's prices): a short amount read
# once is not read again. Decimals are immutable, so one instance serves every webhook; an
# amount that fails is not kept (lru_cache keeps only results) and fails again the same way.
# Only short strings are kept, so hostile payloads cannot pin megabytes of "0.000…1".
_money_text = lru_cache(maxsize=4096)(_read_money_text)
MONEY_TEXT_KEPT_CHARS = 40


def _to_money(v: Any) -> Decimal | None:
    if type(v) is str:
        return _money_text(v) if len(v) <= MONEY_TEXT_KEPT_CHARS else _read_money_text(v)
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("money must be a decimal string or a number")
    if isinstance(v, int):
        if abs(v) >= _MAX_MONEY:
            raise ValueError("money out of range")
        return Decimal(v)
    if isinstance(v, Decimal):
        text = str(v)
    elif isinstance(v, float):
        # repr() is the shortest round-tripping form: 89.99 -> "89.99", not its binary expansion.
        text = repr(v)
    elif isinstance(v, str):
        text = v.strip()
        if not text:
            return None
    else:
        raise ValueError("money must be a decimal string or a number")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError("money is not a decimal") from None
    # copy_abs() is exact; abs() would round in the context and could raise Overflow.
    if not amount.is_finite() or amount.copy_abs() >= _MAX_MONEY:
        raise ValueError("money out of range")
    return amount


def _to_utc(v: Any) -> datetime | None:
    # Malformed timestamps are common enough in real payloads (see the fixtures README) that
    # one must not sink a whole webhook: anything unreadable, naive or out of range is None.
    if type(v) is str and len(v) <= _KEPT_CHARS:
        return _utc_text(v)
    if isinstance(v, datetime):
        return _utc(v)
    if isinstance(v, str):
        return _read_utc_text(v)
    return None


def _read_utc_text(v: str) -> datetime | None:
    try:
        at = datetime.fromisoformat(v.strip())
    except ValueError:
        return None
    return _utc(at)


def _utc(at: datetime) -> datetime | None:
    if at.tzinfo is None or at.utcoffset() is None:
        return None
    try:
        return at.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# An order says the same time three or four times (created, processed, updated), and its
# `orders/*` webhooks say it again: a short timestamp read once is not read again (as
# `_money_text`; datetimes are immutable too).
_utc_text = lru_cache(maxsize=4096)(_read_utc_text)


def _to_count(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError("quantity must be an integer")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    elif isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() and len(v) <= 12:
        v = int(v.strip())
    if not isinstance(v, int):
        raise ValueError("quantity must be an integer")
    if not 0 <= v < _MAX_COUNT:
        raise ValueError("quantity out of range")
    return v


def _to_flag(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError("expected a boolean")


def _to_tags(v: Any) -> list[str] | None:
    # REST sends "a, b"; GraphQL-shaped payloads send ["a", "b"]. Both become a list.
    if v is None:
        return None
    if isinstance(v, str):
        parts: list[Any] = v.split(",")
    elif isinstance(v, list):
        parts = v
    else:
        raise ValueError("tags must be a string or a list")
    out = []
    for part in parts:
        text = _to_text(part)
        if text is not None and text.strip():
            out.append(text.strip())
    return out


def _to_attributes(v: Any) -> dict[str, str]:
    # Note attributes only carry optional identity hints, so a strange shape is ignored
    # rather than failing the webhook: keep the name/value pairs that are plainly strings.
    pairs: list[tuple[Any, Any]] = []
    if isinstance(v, list):
        pairs = [(e.get("name"), e.get("value")) for e in v if isinstance(e, dict)]
    elif isinstance(v, dict):
        pairs = list(v.items())
    out: dict[str, str] = {}
    for name, value in pairs:
        if isinstance(name, str) and isinstance(value, str) and value.strip():
            out[name] = value.strip()
    return out


def _empty_as_none(v: Any) -> Any:
    # Shopify serialises some empty objects as `[]` (checkouts' `shipping_address`).
    if type(v) is dict:
        return v
    if isinstance(v, list | str) and not v:
        return None
    return v


def _none_as_list(v: Any) -> Any:
    return [] if v is None else v


ShopifyId = Annotated[str | None, PlainValidator(_to_id)]
Text = Annotated[str | None, PlainValidator(_to_text)]
Amount = Annotated[Decimal | None, PlainValidator(_to_money)]
Timestamp = Annotated[datetime | None, PlainValidator(_to_utc)]
Count = Annotated[int | None, PlainValidator(_to_count)]
Flag = Annotated[bool | None, PlainValidator(_to_flag)]
Tags = Annotated[list[str] | None, PlainValidator(_to_tags)]
Attributes = Annotated[dict[str, str], PlainValidator(_to_attributes)]
Obj = Annotated[T | None, BeforeValidator(_empty_as_none)]
ListOf = Annotated[list[T], BeforeValidator(_none_as_list)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Money(Payload):
    amount: Amount = None
    currency_code: Text = None


# A key of a webhook's small objects that repeat across webhooks (money sets, addresses' country)
# may hold an absent key, null or a short string, each distinct from the others.
_ABSENT = object()
# Longer strings are not kept as keys, so hostile payloads cannot pin megabytes.
_KEPT_CHARS = 40
# Validated objects kept per kind (~2 KB each with its key at worst, so ~2 MB per kind);
# the whole lot is dropped when full: one-off totals churn it, and they are cheap to redo.
_KEPT_OBJECTS = 1024


def _kept(cache: dict[Any, Any], key: Any, make: Callable[[], Any]) -> Any:
    """`cache[key]`, made on first use and kept; the cache is emptied once it holds
    `_KEPT_OBJECTS` (the values are immutable models, so sharing them is safe)."""
    known = cache.get(key)
    if known is None:
        known = make()
        if len(cache) >= _KEPT_OBJECTS:
            cache.clear()
        cache[key] = known
    return known


def _short(value: Any) -> bool:
    """True for what may stand in a key: absent, null, or a short string."""
    return value is _ABSENT or value is None or (type(value) is str and len(value) <= _KEPT_CHARS)


def _money_key(v: Any) -> Any:
    """A money set's key: the amount and currency of its shop and presentment money (all a
    MoneySet reads), or None when its shape is anything but plain (it is then validated)."""
    if type(v) is not dict:
        return None
    shop = v.get("shop_money", _ABSENT)
    presentment = v.get("presentment_money", _ABSENT)
    if type(shop) is dict and type(presentment) is dict:
        # What Shopify sends: both monies, each an amount and a currency code, as strings.
        a, b = shop.get("amount"), shop.get("currency_code")
        c, d = presentment.get("amount"), presentment.get("currency_code")
        if (
            type(a) is str
            and type(b) is str
            and type(c) is str
            and type(d) is str
            and len(a) <= _KEPT_CHARS
            and len(b) <= _KEPT_CHARS
            and len(c) <= _KEPT_CHARS
            and len(d) <= _KEPT_CHARS
        ):
            return (a, b, c, d)
    key: list[Any] = []
    for money in (shop, presentment):
        if money is _ABSENT or money is None:
            key.append(money)
            continue
        if type(money) is not dict:
            return None
        amount = money.get("amount", _ABSENT)
        code = money.get("currency_code", _ABSENT)
        if not (_short(amount) and _short(code)):
            return None
        key.append((amount, code))
    return tuple(key)


class MoneySet(Payload):
    shop_money: Obj[Money] = None
    presentment_money: Obj[Money] = None


def known_money_set(v: Any, validate: Callable[[Any], Any]) -> Any:
    """A `*_set` as `validate(v)` makes it, or the same set made before.

    An order carries five money sets and they repeat across webhooks ("0.00 USD" twice):
    validating one costs seven validator calls and three models, looking it up one call.
    A set is the same model whenever the values it reads are the same; anything else (an
    odd shape, a long string) is validated as it comes, and so are its errors."""
    key = _money_key(v)
    if key is None:
        return validate(v)
    return _kept(_MONEY_SETS, key, lambda: validate(v))


_MONEY_SETS: dict[Any, MoneySet | None] = {}
# A `*_set` of an order or refund: validated as `Obj[MoneySet]`, or the same set seen before.
MoneySetOf = Annotated[Obj[MoneySet], WrapValidator(known_money_set)]


class ShopMoney(NamedTuple):
    """The shop-currency part of a line's `*_set`."""

    amount: Decimal | None
    currency_code: str | None


def _to_shop_money(v: Any) -> ShopMoney | None:
    # A line's `*_set`: only the shop money is read (presentment money matters at order
    # level), so it is read by hand into a tuple rather than through three models: lines are
    # most of a webhook's fields.
    v = _empty_as_none(v)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError("a money set must be an object")
    shop = _empty_as_none(v.get("shop_money"))
    if shop is None:
        return None
    if not isinstance(shop, dict):
        raise ValueError("shop_money must be an object")
    return ShopMoney(_to_money(shop.get("amount")), _to_text(shop.get("currency_code")))


ShopMoneyOf = Annotated[ShopMoney | None, PlainValidator(_to_shop_money)]


def shop_amount(money_set: MoneySet | None) -> Decimal | None:
    """The shop-currency amount of a `*_set`, or None."""
    return money_set.shop_money.amount if money_set and money_set.shop_money else None


def shop_currency(money_set: MoneySet | None) -> str | None:
    """The shop currency code of a `*_set`, or None."""
    return money_set.shop_money.currency_code if money_set and money_set.shop_money else None


class Address(Payload):
    country_code: Text = None


def known_address(v: Any, validate: Callable[[Any], Any]) -> Any:
    """An address as `validate(v)` makes it, or the same address made before.

    Up to three addresses per order, each a dozen fields of which one is read: the country
    an address says is the same model wherever it is said (as `known_money_set`)."""
    if type(v) is not dict:
        return validate(v)
    key = v.get("country_code", _ABSENT)
    if not _short(key):
        return validate(v)
    return _kept(_ADDRESSES, key, lambda: validate(v))


_ADDRESSES: dict[Any, Address | None] = {}
AddressOf = Annotated[Obj[Address], WrapValidator(known_address)]


class Consent(Payload):
    state: Text = None


class Customer(Payload):
    """A customer, as its own webhook body or embedded in checkouts and orders."""

    id: ShopifyId = None
    email: Text = None
    phone: Text = None
    first_name: Text = None
    last_name: Text = None
    state: Text = None
    tags: Tags = None
    accepts_marketing: Flag = None
    email_marketing_consent: Obj[Consent] = None
    sms_marketing_consent: Obj[Consent] = None
    default_address: AddressOf = None
    created_at: Timestamp = None
    updated_at: Timestamp = None


class LineItem(NamedTuple):
    """A line of a cart, checkout, order or refund.

    Read by hand (`_read_line`, same validators and contract as the models) rather than as a
    pydantic model: lines are most of a webhook's fields, and a model per line cost ~3x more.
    An immutable named tuple rather than a frozen dataclass, whose per-field `__setattr__`
    made building a line cost three times as much again.
    """

    id: str | None = None
    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    title: str | None = None
    name: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    quantity: int | None = None
    price: Decimal | None = None
    price_set: ShopMoney | None = None
    line_price: Decimal | None = None
    line_price_set: ShopMoney | None = None
    # The selling plan a line was bought under (order webhooks from API 2026-10; null before,
    # and on carts and checkouts): it marks a subscription line.
    selling_plan_id: str | None = None


def _read_line(v: Any) -> LineItem:
    """A line read field by field with the models' validators. Each field's common exact type
    (an int id, a non-blank string, an int quantity, a dict money set) is taken inline first;
    anything else goes through the validator, so results and errors are the validators'."""
    if type(v) is not dict and not isinstance(v, dict):
        raise ValueError("a line item must be an object")
    get = v.get
    # Inline rather than through `_id` / `_text` / `_count`: this runs ~13 times per line, and
    # a null (which each of them reads as None) calls nothing.
    a, b, c = get("id"), get("product_id"), get("variant_id")
    line_id = (
        str(a) if type(a) is int and _MIN_ID < a < _MAX_ID else None if a is None else _to_id(a)
    )
    product_id = (
        str(b) if type(b) is int and _MIN_ID < b < _MAX_ID else None if b is None else _to_id(b)
    )
    variant_id = (
        str(c) if type(c) is int and _MIN_ID < c < _MAX_ID else None if c is None else _to_id(c)
    )
    a, b, c = get("sku"), get("title"), get("name")
    sku = a if type(a) is str and a and not a.isspace() else None if a is None else _to_text(a)
    title = b if type(b) is str and b and not b.isspace() else None if b is None else _to_text(b)
    name = c if type(c) is str and c and not c.isspace() else None if c is None else _to_text(c)
    a, b, c = get("vendor"), get("product_type"), get("quantity")
    vendor = a if type(a) is str and a and not a.isspace() else None if a is None else _to_text(a)
    product_type = (
        b if type(b) is str and b and not b.isspace() else None if b is None else _to_text(b)
    )
    quantity = c if type(c) is int and 0 <= c < _MAX_COUNT else None if c is None else _to_count(c)
    a, b, c = get("price"), get("line_price"), get("selling_plan_id")
    price = (
        _money_text(a)
        if type(a) is str and len(a) <= _KEPT_CHARS
        else None
        if a is None
        else _to_money(a)
    )
    line_price = (
        _money_text(b)
        if type(b) is str and len(b) <= _KEPT_CHARS
        else None
        if b is None
        else _to_money(b)
    )
    price_set, line_price_set = get("price_set"), get("line_price_set")
    # tuple.__new__ rather than the named tuple's own __new__, a Python function: one frame
    # less per line (the fields are in order, and there are all of them).
    return _new_tuple(
        LineItem,
        (
            line_id,
            product_id,
            variant_id,
            sku,
            title,
            name,
            vendor,
            product_type,
            quantity,
            price,
            None if price_set is None else _money_set(price_set),
            line_price,
            None if line_price_set is None else _money_set(line_price_set),
            None if c is None else _plan_id(c),
        ),
    )


def _plan_id(v: Any) -> str | None:
    """The line's selling plan id; an unreadable one counts as none rather than failing the
    line: it only marks a renewal, and must never cost the order itself."""
    try:
        return _to_id(v)
    except ValueError:
        return None


def _text(v: Any) -> str | None:
    if type(v) is str:
        return v if v and not v.isspace() else None
    return _to_text(v)


def _money_set(v: Any) -> ShopMoney | None:
    if type(v) is dict:
        shop = v.get("shop_money")
        if type(shop) is dict:
            amount, code = shop.get("amount"), shop.get("currency_code")
            if type(amount) is not str or type(code) is not str:
                return ShopMoney(_to_money(amount), _text(code))
            # Two strings: the same shop money as every line that said them before.
            if len(amount) > _KEPT_CHARS or len(code) > _KEPT_CHARS:
                return ShopMoney(_to_money(amount), _text(code))
            key = (amount, code)
            known = _SHOP_MONIES.get(key)
            if known is None:
                known = ShopMoney(_to_money(amount), _text(code))
                if len(_SHOP_MONIES) >= _KEPT_OBJECTS:
                    _SHOP_MONIES.clear()
                _SHOP_MONIES[key] = known
            return known
    return _to_shop_money(v)


_SHOP_MONIES: dict[tuple[str, str], ShopMoney] = {}
_new_tuple = tuple.__new__


def _to_line(v: Any) -> LineItem | None:
    v = _empty_as_none(v)
    return None if v is None else _read_line(v)


def _to_lines(v: Any) -> list[LineItem]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError("line items must be a list")
    return [_read_line(line) for line in v]


Line = Annotated[LineItem | None, PlainValidator(_to_line)]
Lines = Annotated[list[LineItem], PlainValidator(_to_lines)]


class Cart(Payload):
    id: ShopifyId = None
    token: ShopifyId = None
    line_items: Lines = Field(default_factory=list)
    note_attributes: Attributes = Field(default_factory=dict)
    currency: Text = None
    created_at: Timestamp = None
    updated_at: Timestamp = None


class Checkout(Payload):
    id: ShopifyId = None
    token: ShopifyId = None
    cart_token: ShopifyId = None
    email: Text = None
    phone: Text = None
    customer: Obj[Customer] = None
    line_items: Lines = Field(default_factory=list)
    note_attributes: Attributes = Field(default_factory=dict)
    shipping_address: AddressOf = None
    billing_address: AddressOf = None
    abandoned_checkout_url: Text = None
    total_price: Amount = None
    currency: Text = None
    created_at: Timestamp = None
    updated_at: Timestamp = None


class DiscountCode(Payload):
    code: Text = None


class Order(Payload):
    """The one Order body every `orders/*` topic sends."""

    id: ShopifyId = None
    order_number: ShopifyId = None
    email: Text = None
    contact_email: Text = None
    phone: Text = None
    customer: Obj[Customer] = None
    cart_token: ShopifyId = None
    checkout_token: ShopifyId = None
    checkout_id: ShopifyId = None
    note_attributes: Attributes = Field(default_factory=dict)
    line_items: Lines = Field(default_factory=list)
    shipping_address: AddressOf = None
    billing_address: AddressOf = None
    test: Flag = None
    currency: Text = None
    presentment_currency: Text = None
    total_price: Amount = None
    total_price_set: MoneySetOf = None
    subtotal_price: Amount = None
    subtotal_price_set: MoneySetOf = None
    total_tax: Amount = None
    total_tax_set: MoneySetOf = None
    total_discounts: Amount = None
    total_discounts_set: MoneySetOf = None
    total_shipping_price_set: MoneySetOf = None
    discount_codes: ListOf[DiscountCode] = Field(default_factory=list)
    cancel_reason: Text = None
    created_at: Timestamp = None
    processed_at: Timestamp = None
    updated_at: Timestamp = None
    closed_at: Timestamp = None
    cancelled_at: Timestamp = None


class RefundLineItem(Payload):
    quantity: Count = None
    line_item: Line = None
    subtotal_set: MoneySetOf = None


class Transaction(Payload):
    kind: Text = None
    status: Text = None
    amount: Amount = None
    currency: Text = None


class Refund(Payload):
    id: ShopifyId = None
    order_id: ShopifyId = None
    refund_line_items: ListOf[RefundLineItem] = Field(default_factory=list)
    transactions: ListOf[Transaction] = Field(default_factory=list)
    created_at: Timestamp = None
    processed_at: Timestamp = None


class CustomerMerge(Payload):
    admin_graphql_api_customer_kept_id: Text = None
    admin_graphql_api_customer_deleted_id: Text = None
    status: Text = None
    errors: Any = None


class ComplianceRequest(Payload):
    """`customers/redact` and `customers/data_request`: the customer whose data is concerned."""

    customer: Obj[Customer] = None


class CustomerTraits(BaseModel):
    """The typed trait schema sent on identify calls (order-derived traits are added later)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    accepts_marketing: bool | None = None
    accepts_sms: bool | None = None
    created_at: datetime | None = None
    tags: list[str] | None = None
    state: str | None = None

    def as_traits(self) -> dict[str, Any]:
        """JSON-ready traits: None omitted, `created_at` as ISO-8601 UTC with `Z`."""
        out = self.model_dump(exclude_none=True)
        if self.created_at is not None:
            out["created_at"] = iso_z(self.created_at)
        return out
