"""Rendering canonical events into Pipelines call dicts: exact dicts, naming, messageIds."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.canonical import (
    ADDED_TO_CART,
    CHECKOUT_STARTED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
    CanonicalEvent,
    Item,
    PersonRef,
    TraitUpdate,
)
from bridge.delivery import render
from bridge.delivery.calls import InvalidCall, validate_call
from bridge.ids import message_id, message_id_time
from bridge.sources.shopify import ShopifySource
from tests.rules import map_context

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "shopify"
SHOP = "shop.example"
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
DOC_TIME = datetime(2022, 1, 1, tzinfo=UTC)


def mapped(topic: str, name: str, **ctx: Any) -> Any:
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    return ShopifySource().map(topic, body, map_context(SHOP, **ctx))


def without_mid(call: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in call.items() if k != "messageId"}


def assert_ulid_at(mid: str, at: datetime) -> None:
    assert ULID.match(mid), mid
    assert message_id_time(mid) == at.replace(microsecond=at.microsecond // 1000 * 1000)


# --- track: exact calls over fixtures --------------------------------------------------------

CHECKOUT_URL = (
    "https://pixel-testing-rs.myshopify.com/59026964593/checkouts/ac/"
    "Z2NwLXVzLWVhc3QxOjAxSjdXRjdOQjY0NlFFNFdQVEg0MTRFM1E2/recover?key=8195f56ee0de230b3a0469cc692f3436"
)
CHECKOUT_PROPERTIES = {
    "cart_id": "Z2NwLXVzLWVhc3QxOjAxSjdXRjdOQjY0NlFFNFdQVEg0MTRFM1E2",
    "checkout_id": "35374569160817",
    "value": 736.85,
    "currency": "USD",
    "checkout_url": CHECKOUT_URL,
    "shipping_country": "US",
}
CHECKOUT_ITEMS = [
    {
        "product_id": "7234590638193",
        "variant_id": "41327143059569",
        "name": "The Multi-location Snowboard",
        "price": 729.95,
        "quantity": 1,
        "brand": "pixel-testing-rs",
    }
]
CHECKOUT_TIME = datetime(2024, 9, 17, 7, 29, 2, tzinfo=UTC)


def test_checkout_started_snake() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    calls = render.track_call(event, user_id="7188389789809", anonymous_id=None, shop=SHOP)
    assert len(calls) == 1
    assert without_mid(calls[0]) == {
        "type": "track",
        "timestamp": "2024-09-17T07:29:02.000Z",
        "userId": "7188389789809",
        "event": "checkout_started",
        "properties": {**CHECKOUT_PROPERTIES, "items": CHECKOUT_ITEMS},
    }
    assert calls[0]["messageId"] == message_id(
        CHECKOUT_TIME,
        "shopify",
        SHOP,
        "checkout_started",
        "checkout:e89d4437003b6b8480f8bc7f8036a659",
    )
    assert_ulid_at(calls[0]["messageId"], CHECKOUT_TIME)


def test_checkout_started_segment() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    snake = render.track_call(event, user_id="7188389789809", anonymous_id=None, shop=SHOP)
    calls = render.track_call(
        event, user_id="7188389789809", anonymous_id=None, shop=SHOP, naming="segment"
    )
    assert without_mid(calls[0]) == {
        "type": "track",
        "timestamp": "2024-09-17T07:29:02.000Z",
        "userId": "7188389789809",
        "event": "Checkout Started",
        "properties": {**CHECKOUT_PROPERTIES, "products": CHECKOUT_ITEMS},
    }
    # Naming is presentation: the same business event keeps its messageId.
    assert calls[0]["messageId"] == snake[0]["messageId"]


def test_order_completed_segment_from_orders_paid() -> None:
    event = mapped("orders/paid", "orders-paid", skip_test_orders=False).events[0]
    [call] = render.track_call(
        event, user_id="115310627314723954", anonymous_id=None, shop=SHOP, naming="segment"
    )
    assert without_mid(call) == {
        "type": "track",
        "timestamp": "2022-01-01T00:00:00.000Z",
        "userId": "115310627314723954",
        "event": "Order Completed",
        "properties": {
            "order_id": "820982911946154508",
            "order_number": "1234",
            "total": 404.95,
            "revenue": 394.95,
            "subtotal": 404.95,
            "tax": 0.0,
            "shipping": 10.0,
            "discount": 20.0,
            "discount_codes": [],
            "currency": "USD",
            "presentment_currency": "USD",
            "presentment_total": 404.95,
            "products": [
                {
                    "product_id": "788032119674292922",
                    "sku": "SKU2006-001",
                    "name": "Aviator sunglasses",
                    "price": 89.99,
                    "quantity": 1,
                },
                {
                    "sku": "LENS-PROTECT-2YR",
                    "name": "Lens Protection Plan (2 Year)",
                    "price": 19.99,
                    "quantity": 1,
                },
                {
                    "sku": "CASE-LEATHER-PREM",
                    "name": "Premium Leather Case",
                    "price": 24.99,
                    "quantity": 1,
                },
                {
                    "product_id": "788032119674292922",
                    "sku": "SKU2006-020",
                    "name": "Mid-century lounger",
                    "price": 159.99,
                    "quantity": 1,
                },
                {
                    "product_id": "788032119674292922",
                    "sku": "SKU2006-035",
                    "name": "Coffee table",
                    "price": 119.99,
                    "quantity": 1,
                },
            ],
        },
    }
    assert call["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "order_completed", "order:820982911946154508"
    )


def test_order_refunded_snake_money_is_a_number() -> None:
    event = mapped("refunds/create", "refunds-create").events[0]
    [call] = render.track_call(event, user_id=None, anonymous_id="anon-1", shop=SHOP)
    assert call["event"] == "order_refunded"
    assert call["anonymousId"] == "anon-1" and "userId" not in call
    props = call["properties"]
    assert {k: v for k, v in props.items() if k != "items"} == {
        "order_id": "820982911946154508",
        "refund_id": "890088186047892319",
        "amount": 85.0,
        "currency": "USD",
    }
    assert isinstance(props["amount"], float)
    assert [i["price"] for i in props["items"]] == [89.99, 19.99, 24.99, 159.99, 119.99]
    assert call["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "order_refunded", "refund:890088186047892319"
    )


CART_PRODUCT = {
    "product_id": "788032119674292922",
    "variant_id": "704912205188288575",
    "sku": "example-shirt-s",
    "name": "Example T-Shirt - Small",
    "price": 19.99,
    "quantity": 3,
    "brand": "Acme",
}
CART_PROPERTIES = {
    "cart_id": "exampleCartId",
    "value": 59.97,
    "currency": "USD",
    "cart_url": "https://shop.example/cart/704912205188288575:3",
}


def test_added_to_cart_snake_is_one_call_with_items() -> None:
    event = mapped("carts/create", "carts-create").events[0]
    calls = render.track_call(event, user_id=None, anonymous_id="anon-1", shop=SHOP)
    assert [without_mid(c) for c in calls] == [
        {
            "type": "track",
            "timestamp": "2022-01-01T00:00:00.000Z",
            "anonymousId": "anon-1",
            "event": "added_to_cart",
            "properties": {**CART_PROPERTIES, "items": [CART_PRODUCT]},
        }
    ]
    assert calls[0]["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "added_to_cart", "cart:exampleCartId"
    )


def test_added_to_cart_segment_is_one_product_added_per_line() -> None:
    event = mapped("carts/create", "carts-create").events[0]
    calls = render.track_call(
        event, user_id=None, anonymous_id="anon-1", shop=SHOP, naming="segment"
    )
    assert [without_mid(c) for c in calls] == [
        {
            "type": "track",
            "timestamp": "2022-01-01T00:00:00.000Z",
            "anonymousId": "anon-1",
            "event": "Product Added",
            "properties": {**CART_PROPERTIES, **CART_PRODUCT},
        }
    ]
    assert calls[0]["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "added_to_cart", "cart:exampleCartId", "704912205188288575"
    )


def cart_event(*items: Item) -> CanonicalEvent:
    return CanonicalEvent(
        name=ADDED_TO_CART,
        timestamp=DOC_TIME,
        key="cart:t1",
        person=PersonRef(cart_token="t1"),
        properties={"cart_id": "t1"},
        items=items,
    )


def test_product_added_lines_sharing_a_variant_keep_distinct_message_ids() -> None:
    a = Item(variant_id="7", quantity=1, price=Decimal("1.00"))
    b = Item(variant_id="7", quantity=2, price=Decimal("1.00"))
    calls = render.track_call(
        cart_event(a, b), user_id="u", anonymous_id=None, shop=SHOP, naming="segment"
    )
    assert [c["properties"]["quantity"] for c in calls] == [1, 2]
    assert calls[0]["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "added_to_cart", "cart:t1", "7"
    )
    assert calls[1]["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "added_to_cart", "cart:t1", "7#2"
    )


def test_segment_added_to_cart_without_lines_renders_nothing() -> None:
    assert (
        render.track_call(cart_event(), user_id="u", anonymous_id=None, shop=SHOP, naming="segment")
        == []
    )


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        (CHECKOUT_STARTED, "Checkout Started"),
        (ORDER_COMPLETED, "Order Completed"),
        (ORDER_REFUNDED, "Order Refunded"),
        (ORDER_CANCELLED, "Order Cancelled"),
        (ORDER_FULFILLED, "Order Fulfilled"),
        ("something_else", "something_else"),
    ],
)
def test_segment_names(name: str, segment: str) -> None:
    event = CanonicalEvent(
        name=name,
        timestamp=DOC_TIME,
        key="k",
        person=PersonRef(),
        items=(Item(sku="s", quantity=1),),
    )
    [snake] = render.track_call(event, user_id="u", anonymous_id=None, shop=SHOP)
    [seg] = render.track_call(event, user_id="u", anonymous_id=None, shop=SHOP, naming="segment")
    assert (snake["event"], seg["event"]) == (name, segment)
    assert snake["properties"] == {"items": [{"sku": "s", "quantity": 1}]}
    assert seg["properties"] == {"products": [{"sku": "s", "quantity": 1}]}


def test_both_ids_are_sent_when_known() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    [call] = render.track_call(event, user_id="7188389789809", anonymous_id="anon-1", shop=SHOP)
    assert (call["userId"], call["anonymousId"]) == ("7188389789809", "anon-1")


def test_track_without_any_id_is_refused() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    with pytest.raises(InvalidCall):
        render.track_call(event, user_id=None, anonymous_id="", shop=SHOP)


def test_unknown_naming_is_refused() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    with pytest.raises(ValueError, match="naming"):
        render.track_call(event, user_id="u", anonymous_id=None, shop=SHOP, naming="camel")


def test_extra_properties_are_merged_over_the_events_own() -> None:
    event = mapped("checkouts/update", "checkouts-update").events[0]
    [call] = render.track_call(
        event,
        user_id="u",
        anonymous_id=None,
        shop=SHOP,
        extra_properties={"value": Decimal("1.50"), "first_checkout": True, "note": None},
    )
    props = call["properties"]
    assert props["value"] == 1.5 and props["first_checkout"] is True and "note" not in props
    assert props["checkout_id"] == "35374569160817"


def test_timestamps_render_as_utc_z() -> None:
    at = datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    event = CanonicalEvent(name=ORDER_FULFILLED, timestamp=at, key="k", person=PersonRef())
    [call] = render.track_call(event, user_id="u", anonymous_id=None, shop=SHOP)
    assert call["timestamp"] == "2024-03-01T14:30:00.123Z"
    assert_ulid_at(call["messageId"], at)


def test_message_ids_differ_by_shop_key_and_time() -> None:
    def mid(key: str = "k", shop: str = SHOP, at: datetime = DOC_TIME) -> str:
        event = CanonicalEvent(name=ORDER_COMPLETED, timestamp=at, key=key, person=PersonRef())
        return str(
            render.track_call(event, user_id="u", anonymous_id=None, shop=shop)[0]["messageId"]
        )

    assert mid() == mid()
    assert (
        len(
            {
                mid(),
                mid(key="k2"),
                mid(shop="other.example"),
                mid(at=DOC_TIME + timedelta(seconds=1)),
            }
        )
        == 4
    )


def test_every_rendered_fixture_call_is_valid() -> None:
    cases = [
        ("carts/create", "carts-create"),
        ("checkouts/create", "checkouts-create"),
        ("checkouts/update", "checkouts-update"),
        ("orders/paid", "orders-paid"),
        ("refunds/create", "refunds-create"),
    ]
    for topic, name in cases:
        m = mapped(topic, name, skip_test_orders=False)
        for naming in ("snake", "segment"):
            for event in m.events:
                for call in render.track_call(
                    event, user_id="u", anonymous_id=None, shop=SHOP, naming=naming
                ):
                    validate_call(call)
        for update in m.identifies:
            validate_call(render.identify_call(update, user_id="u", anonymous_id=None, shop=SHOP))


# --- identify ---------------------------------------------------------------------------------

CUSTOMER_TRAITS = {
    "email": "bob@biller.com",
    "first_name": "Bob",
    "last_name": "Biller",
    "created_at": "2022-01-01T00:00:00.000Z",
    "state": "disabled",
}


def test_identify_from_customers_create() -> None:
    update = mapped("customers/create", "customers-create").identifies[0]
    call = render.identify_call(update, user_id="706405506930370084", anonymous_id=None, shop=SHOP)
    assert without_mid(call) == {
        "type": "identify",
        "timestamp": "2022-01-01T00:00:00.000Z",
        "userId": "706405506930370084",
        "traits": CUSTOMER_TRAITS,
    }
    # The traits hash is written out independently: sha256 of the key-sorted compact JSON.
    digest = hashlib.sha256(
        json.dumps(CUSTOMER_TRAITS, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert call["messageId"] == message_id(
        DOC_TIME, "shopify", SHOP, "identify", "706405506930370084", digest
    )
    assert_ulid_at(call["messageId"], DOC_TIME)


def trait_update(traits: dict[str, Any], at: datetime = DOC_TIME) -> TraitUpdate:
    return TraitUpdate(person=PersonRef(customer_id="1"), traits=traits, timestamp=at)


def test_identify_message_id_depends_on_trait_values_not_their_order() -> None:
    def mid(traits: dict[str, Any], anonymous_id: str | None = None) -> str:
        call = render.identify_call(
            trait_update(traits), user_id="1", anonymous_id=anonymous_id, shop=SHOP
        )
        return str(call["messageId"])

    assert mid({"a": 1, "b": "x"}) == mid({"b": "x", "a": 1})
    assert mid({"a": 1, "b": None}) == mid({"a": 1})  # None traits are not sent
    assert mid({"a": 1}) != mid({"a": 2})
    assert mid({"a": 1}) != mid({"a": 1}, anonymous_id="anon-1")


def test_identify_traits_are_json_ready() -> None:
    at = datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)
    call = render.identify_call(
        trait_update({"spent": Decimal("12.30"), "seen": at, "tags": ("a",), "gone": None}),
        user_id=None,
        anonymous_id="anon-1",
        shop=SHOP,
    )
    assert call["traits"] == {"spent": 12.3, "seen": "2023-05-06T07:08:09.000Z", "tags": ["a"]}
    assert call["anonymousId"] == "anon-1" and "userId" not in call


def test_identify_without_any_id_is_refused() -> None:
    with pytest.raises(InvalidCall):
        render.identify_call(trait_update({}), user_id=None, anonymous_id=None, shop=SHOP)


# --- alias ------------------------------------------------------------------------------------


def test_alias_call() -> None:
    call = render.alias_call("anon-1", "42", DOC_TIME, SHOP)
    assert call == {
        "type": "alias",
        "messageId": message_id(DOC_TIME, "shopify", SHOP, "alias", "anon-1", "42"),
        "timestamp": "2022-01-01T00:00:00.000Z",
        "previousId": "anon-1",
        "userId": "42",
    }
    assert_ulid_at(call["messageId"], DOC_TIME)
    validate_call(call)


def test_alias_needs_both_ids() -> None:
    with pytest.raises(InvalidCall):
        render.alias_call("", "42", DOC_TIME, SHOP)


ITEMS = st.builds(
    Item,
    product_id=st.one_of(st.none(), st.text(max_size=8)),
    variant_id=st.one_of(st.none(), st.text(max_size=8)),
    sku=st.one_of(st.none(), st.text(max_size=8)),
    name=st.one_of(st.none(), st.text(max_size=8)),
    price=st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=2)),
    quantity=st.integers(0, 10**6),
    brand=st.one_of(st.none(), st.text(max_size=8)),
    category=st.one_of(st.none(), st.text(max_size=8)),
)


@given(item=ITEMS)
def test_item_dict_is_the_items_json_form(item: Item) -> None:
    # item_dict is written out field by field for speed: it must stay the item's JSON form.
    assert render.item_dict(item) == render.to_json(item._asdict())


JSON_SCALARS = st.one_of(st.none(), st.text(max_size=6), st.integers(-100, 100), st.booleans())


@given(
    item=ITEMS,
    properties=st.dictionaries(
        st.sampled_from(["cart_id", "items", "value", "currency", "x"]), JSON_SCALARS, max_size=5
    ),
    user_id=st.one_of(st.none(), st.just("7188389789809")),
    anonymous_id=st.one_of(st.none(), st.just("anon-1")),
    naming=st.sampled_from(render.NAMINGS),
)
def test_added_to_cart_calls_are_track_calls_calls_for_one_item(
    item: Item,
    properties: dict[str, Any],
    user_id: str | None,
    anonymous_id: str | None,
    naming: str,
) -> None:
    # The drain renders a cart's added lines without one CanonicalEvent each: same calls.
    at = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
    mid = message_id(at, "k")
    event = CanonicalEvent(
        name=ADDED_TO_CART,
        timestamp=at,
        key="cart:t:v:1",
        person=PersonRef(cart_token="t"),
        properties=properties,
        items=(item,),
    )

    def outcome(render_calls: Any) -> Any:
        try:
            return render_calls()
        except InvalidCall:
            return InvalidCall

    expected = outcome(
        lambda: render.track_call(
            event,
            user_id=user_id,
            anonymous_id=anonymous_id,
            shop=SHOP,
            naming=naming,
            stable_id=(at, mid),
        )
    )
    got = outcome(
        lambda: render.added_to_cart_calls(
            [(mid, item)],
            at=at,
            properties=render.to_json(properties),
            user_id=user_id,
            anonymous_id=anonymous_id,
            naming=naming,
        )
    )
    assert got == expected
    assert json.dumps(got, default=str) == json.dumps(expected, default=str)  # key order too


@given(item=ITEMS)
def test_items_in_stored_events_read_back_as_they_were(item: Item) -> None:
    # Held refunds keep their event as JSON (identity/decide.py): items must survive the trip,
    # as must events stored when items were models (the same field names and JSON).
    event = CanonicalEvent(
        name=ORDER_REFUNDED,
        timestamp=DOC_TIME,
        key="refund:1",
        person=PersonRef(order_id="1"),
        items=(item,),
    )
    stored = json.loads(json.dumps(event.model_dump(mode="json")))
    assert CanonicalEvent.model_validate(stored) == event
    assert stored["items"][0] == {
        **item._asdict(),
        "price": None if item.price is None else str(item.price),
    }


@pytest.mark.parametrize(
    "bad",
    [{"sku": 1}, {"quantity": "2"}, {"quantity": True}, {"price": "abc"}, {"colour": "red"}, [1]],
)
def test_an_unreadable_stored_item_is_a_validation_error(bad: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        CanonicalEvent(
            name=ADDED_TO_CART, timestamp=DOC_TIME, key="k", person=PersonRef(), items=(bad,)
        )


def _reference_item_dict(item: Item) -> dict[str, Any]:
    """item_dict as it was written before its hand-unrolled form: (name, value) pairs of the
    item's fields, None left out, the price a float."""
    fields = (
        ("product_id", item.product_id),
        ("variant_id", item.variant_id),
        ("sku", item.sku),
        ("name", item.name),
        ("price", None if item.price is None else float(item.price)),
        ("quantity", item.quantity),
        ("brand", item.brand),
        ("category", item.category),
        ("vendor", item.vendor),
        ("replenishable", item.replenishable),
        ("days_to_replenish", item.days_to_replenish),
    )
    return {k: v for k, v in fields if v is not None}


CACHED_ITEMS = st.builds(
    lambda item, vendor, replenishable, days: item._replace(
        vendor=vendor, replenishable=replenishable, days_to_replenish=days
    ),
    ITEMS,
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.integers(-(2**70), 2**70)),
)


@given(item=CACHED_ITEMS)
def test_item_dict_keeps_the_reference_fields_and_their_order(item: Item) -> None:
    # The calls' bytes depend on key order, not only on the dict's contents.
    out = render.item_dict(item)
    assert list(out.items()) == list(_reference_item_dict(item).items())


def _reference_to_json(value: Any) -> Any:
    """to_json as it was before plain members were kept in place: one call per value."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(k): _reference_to_json(v) for k, v in value.items() if v is not None}
    if kind is list or kind is tuple:
        return [_reference_to_json(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return render.iso_z(value)
    if isinstance(value, Mapping):
        return {str(k): _reference_to_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_reference_to_json(v) for v in value]
    return value


class _Level(enum.IntEnum):
    LOW = 1


class _Text(str):
    pass


JSON_LEAVES = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.builds(_Text, st.text(max_size=4)),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.just(_Level.LOW),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(timezones=st.just(UTC)),
)
JSON_TREES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=3).map(MappingProxyType),
    ),
    max_leaves=20,
)


@given(value=JSON_TREES)
def test_to_json_is_the_one_call_per_value_reference(value: Any) -> None:
    out = render.to_json(value)
    expected = _reference_to_json(value)
    assert out == expected
    # Same types and key order too (repr shows both): the calls are compared byte for byte.
    assert repr(out) == repr(expected)
