"""Shopify mapping over the recorded fixtures. Expected values are written from reading the JSON."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.canonical import (
    ADDED_TO_CART,
    CHECKOUT_STARTED,
    ORDER_CANCELLED,
    ORDER_COMPLETED,
    ORDER_FULFILLED,
    ORDER_REFUNDED,
    CartSnapshot,
    Item,
    MapContext,
    Mapped,
    MergeFact,
    OrderFact,
    PersonRef,
    RefundFact,
    TraitUpdate,
)
from bridge.sources import MappingError
from bridge.sources.shopify import ShopifySource
from bridge.sources.shopify.models import Cart, Customer, LineItem, Order
from bridge.sources.shopify.traits import customer_traits, normalise_phone
from tests.rules import map_context

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "shopify"
SHOP = "shop.example"
CTX = map_context(SHOP)
CTX_TEST_ORDERS = map_context(SHOP, skip_test_orders=False)
# 2021-12-31T19:00:00-05:00, the time of every event in the 2026-07 doc samples.
DOC_TIME = datetime(2022, 1, 1, tzinfo=UTC)

source = ShopifySource()


def load(name: str) -> dict[str, Any]:
    # Documented samples name their shop `{shop}.myshopify.com`: here it is the context's.
    text = (FIXTURES / f"{name}.json").read_text().replace("{shop}.myshopify.com", SHOP)
    return dict(json.loads(text))


def run(topic: str, body: dict[str, Any], ctx: MapContext = CTX) -> Mapped:
    return source.map(topic, body, ctx)


# --- topics ---------------------------------------------------------------------------------

HANDLED = [
    "carts/create",
    "carts/update",
    "checkouts/create",
    "checkouts/update",
    "orders/create",
    "orders/paid",
    "orders/fulfilled",
    "orders/cancelled",
    "refunds/create",
    "customers/create",
    "customers/update",
    "customers/merge",
    "customers/redact",
    "customers/data_request",
    "shop/redact",
    "products/update",
    "products/delete",
]


@pytest.mark.parametrize("topic", HANDLED)
def test_handles_mapped_topics(topic: str) -> None:
    assert source.handles(topic)


@pytest.mark.parametrize(
    "topic", ["checkouts/delete", "orders/updated", "products/create", "app/uninstalled", ""]
)
def test_does_not_handle_other_topics(topic: str) -> None:
    assert not source.handles(topic)


def test_unhandled_topic_maps_to_an_explained_empty_result() -> None:
    assert run("checkouts/delete", load("checkouts-delete")) == Mapped(
        source="shopify", topic="checkouts/delete", skipped="topic not mapped"
    )


def test_source_name() -> None:
    assert source.name == "shopify"


# --- carts ----------------------------------------------------------------------------------

CART_CREATE_ITEM = Item(
    product_id="788032119674292922",
    variant_id="704912205188288575",
    sku="example-shirt-s",
    name="Example T-Shirt - Small",
    price=Decimal("19.99"),
    quantity=3,
    brand="Acme",
)


def test_carts_create() -> None:
    m = run("carts/create", load("carts-create"))
    person = PersonRef(cart_token="exampleCartId", cart_token_raw="exampleCartId")
    assert m.person == person
    assert m.cart == CartSnapshot(
        cart_token="exampleCartId",
        updated_at=DOC_TIME,
        items=(CART_CREATE_ITEM,),
        value=Decimal("59.97"),
        currency="USD",
        url="https://shop.example/cart/704912205188288575:3",
        created_at=DOC_TIME,
    )
    assert len(m.events) == 1
    event = m.events[0]
    assert event.name == ADDED_TO_CART
    assert event.key == "cart:exampleCartId"
    assert event.timestamp == DOC_TIME
    assert event.person == person
    assert event.items == (CART_CREATE_ITEM,)
    assert event.properties == {
        "cart_id": "exampleCartId",
        "value": 59.97,
        "currency": "USD",
        "cart_url": "https://shop.example/cart/704912205188288575:3",
    }
    assert m.identifies == () and m.order is None and m.skipped is None


def test_cart_permalink_uses_the_shop_given() -> None:
    m = run("carts/create", load("carts-create"), map_context("acme.myshopify.com"))
    assert m.cart is not None
    assert m.cart.url == "https://acme.myshopify.com/cart/704912205188288575:3"


def test_carts_update_with_no_lines_has_a_snapshot_but_no_event() -> None:
    token = "Z2NwLXVzLWVhc3QxOjAxSjdXRjdOQjY0NlFFNFdQVEg0MTRFM1E2"
    m = run("carts/update", load("carts-update"))
    assert m.events == ()
    assert m.cart == CartSnapshot(
        cart_token=token,
        updated_at=datetime(2024, 9, 17, 8, 15, 13, 280000, tzinfo=UTC),
        items=(),
        value=Decimal("0"),
        currency="USD",
        url=None,
        created_at=datetime(2024, 9, 16, 3, 50, 15, 478000, tzinfo=UTC),
    )
    # The fixture's note attributes use names the default context does not look for.
    assert m.person == PersonRef(cart_token=token, cart_token_raw=token)


def test_cart_identity_hints_come_from_the_configured_note_attributes() -> None:
    ctx = map_context(
        SHOP,
        identity_hint_anonymous_attr="rudderAnonymousId",
        identity_hint_customer_attr="cartId",
    )
    m = run("carts/update", load("carts-update"), ctx)
    assert m.person is not None
    assert m.person.anonymous_id == "50ead33e-d763-4854-b0ab-765859ef05cb"
    assert m.person.hinted_customer_id == "9c623f099fc8819aa4d6a958b65dfe7d"


def test_cart_hinted_customer_gid_becomes_a_bare_id() -> None:
    body = load("carts-update")
    body["note_attributes"] = [
        {"name": "cartbridge_customer_id", "value": "gid://shopify/Customer/42"}
    ]
    m = run("carts/update", body)
    assert m.person is not None and m.person.hinted_customer_id == "42"


def test_cart_token_is_normalised_and_raw_kept() -> None:
    body = load("carts-create")
    body["token"] = body["id"] = "gid://shopify/Cart/c1-7a2a?key=824bdj"
    m = run("carts/create", body)
    assert m.person is not None
    assert (m.person.cart_token, m.person.cart_token_raw) == (
        "c1-7a2a",
        "gid://shopify/Cart/c1-7a2a?key=824bdj",
    )
    assert m.events[0].key == "cart:c1-7a2a"
    assert m.events[0].properties["cart_id"] == "c1-7a2a"


def test_cart_value_falls_back_from_line_price_set_to_line_price_to_unit_price() -> None:
    body = {
        "token": "t1",
        "updated_at": "2024-01-01T00:00:00Z",
        "line_items": [
            {"variant_id": 11, "quantity": 4, "price": "2.50"},  # 4 x 2.50 = 10.00
            {"variant_id": 22, "quantity": 1, "line_price": "1.25", "price": "9.99"},  # 1.25
            {
                "variant_id": 33,
                "quantity": 2,
                "line_price": 7,
                "line_price_set": {"shop_money": {"amount": "3.00", "currency_code": "CAD"}},
            },  # 3.00, names CAD
        ],
    }
    m = run("carts/update", body)
    assert m.cart is not None
    assert m.cart.value == Decimal("14.25")
    assert m.cart.currency == "CAD"
    assert m.cart.url == "https://shop.example/cart/11:4,22:1,33:2"
    assert m.events[0].properties["value"] == 14.25


def test_cart_without_currency_uses_the_shop_currency() -> None:
    body = {
        "token": "t1",
        "updated_at": "2024-01-01T00:00:00Z",
        "line_items": [{"variant_id": 1, "quantity": 1, "price": "5"}],
    }
    m = run("carts/update", body, map_context(SHOP, shop_currency="EUR"))
    assert m.cart is not None and m.cart.currency == "EUR"
    assert m.events[0].properties["currency"] == "EUR"


def test_cart_lines_without_variant_are_left_out_of_the_permalink() -> None:
    body = {
        "token": "t1",
        "updated_at": "2024-01-01T00:00:00Z",
        "line_items": [{"product_id": 5, "quantity": 1, "price": "5"}],
    }
    m = run("carts/update", body)
    assert m.cart is not None and m.cart.url is None
    assert "cart_url" not in m.events[0].properties


def test_cart_time_falls_back_to_created_at_then_the_trigger_time() -> None:
    body = load("carts-update")
    body["updated_at"] = "not a time"
    assert run("carts/update", body).cart.updated_at == datetime(  # type: ignore[union-attr]
        2024, 9, 16, 3, 50, 15, 478000, tzinfo=UTC
    )
    del body["created_at"]
    trig = datetime(2024, 9, 18, 1, 2, 3, tzinfo=UTC)
    m = run("carts/update", body, map_context(SHOP, triggered_at=trig))
    assert m.cart is not None and m.cart.updated_at == trig
    with pytest.raises(MappingError, match="timestamp"):
        run("carts/update", body)


def test_cart_without_token_or_id_is_a_mapping_error() -> None:
    body = load("carts-create")
    del body["token"], body["id"]
    with pytest.raises(MappingError, match="token"):
        run("carts/create", body)


def test_cart_id_is_used_when_token_is_absent() -> None:
    body = load("carts-create")
    del body["token"]
    assert run("carts/create", body).events[0].key == "cart:exampleCartId"


# --- checkouts ------------------------------------------------------------------------------

UPDATE_CART = "Z2NwLXVzLWVhc3QxOjAxSjdXRjdOQjY0NlFFNFdQVEg0MTRFM1E2"
UPDATE_URL = (
    "https://pixel-testing-rs.myshopify.com/59026964593/checkouts/ac/"
    "Z2NwLXVzLWVhc3QxOjAxSjdXRjdOQjY0NlFFNFdQVEg0MTRFM1E2/recover?key=8195f56ee0de230b3a0469cc692f3436"
)
UPDATE_TIME = datetime(2024, 9, 17, 7, 29, 2, tzinfo=UTC)  # 2024-09-17T03:29:02-04:00
UPDATE_ITEM = Item(
    product_id="7234590638193",
    variant_id="41327143059569",
    name="The Multi-location Snowboard",
    price=Decimal("729.95"),
    quantity=1,
    brand="pixel-testing-rs",
)
UPDATE_PERSON = PersonRef(
    customer_id="7188389789809",
    email="testuser101@gmail.com",
    phone="+19901109922",  # customer.phone "9901109922", default address in the US
    cart_token=UPDATE_CART,
    cart_token_raw=UPDATE_CART,
    checkout_token="e89d4437003b6b8480f8bc7f8036a659",
    checkout_id="35374569160817",
)


def test_checkouts_update() -> None:
    m = run("checkouts/update", load("checkouts-update"))
    assert m.person == UPDATE_PERSON
    assert len(m.events) == 1
    event = m.events[0]
    assert event.name == CHECKOUT_STARTED
    assert event.key == "checkout:e89d4437003b6b8480f8bc7f8036a659"
    assert event.timestamp == UPDATE_TIME
    assert event.person == UPDATE_PERSON
    assert event.items == (UPDATE_ITEM,)
    assert event.properties == {
        "cart_id": UPDATE_CART,
        "checkout_id": "35374569160817",
        "value": 736.85,
        "currency": "USD",
        "checkout_url": UPDATE_URL,
        "shipping_country": "US",
    }
    assert m.identifies == (
        TraitUpdate(
            person=UPDATE_PERSON,
            traits={
                "email": "testuser101@gmail.com",
                "phone": "+19901109922",
                "first_name": "testuser",
                "last_name": "dummy",
                "accepts_marketing": False,
                "tags": [],
                "state": "disabled",
            },
            version=None,  # the embedded customer's updated_at is null
            timestamp=UPDATE_TIME,
        ),
    )
    assert m.cart == CartSnapshot(
        cart_token=UPDATE_CART,
        updated_at=UPDATE_TIME,
        items=(UPDATE_ITEM,),
        value=Decimal("729.95"),
        currency="USD",
        url=UPDATE_URL,
    )


def test_checkouts_update_joins_carts_update_on_the_cart_token() -> None:
    cart = run("carts/update", load("carts-update"))
    checkout = run("checkouts/update", load("checkouts-update"))
    assert cart.person is not None and checkout.person is not None
    assert cart.person.cart_token == checkout.person.cart_token == UPDATE_CART


def test_checkouts_update_survives_its_malformed_created_at() -> None:
    body = load("checkouts-update")
    assert body["created_at"] == "2024-09-16T03:50:1500:00"
    del body["updated_at"]
    trig = datetime(2024, 9, 17, 8, 0, tzinfo=UTC)
    m = run("checkouts/update", body, map_context(SHOP, triggered_at=trig))
    assert m.events[0].timestamp == trig
    with pytest.raises(MappingError):
        run("checkouts/update", body)


def test_checkouts_create_before_contact_info() -> None:
    cart_token = "Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ"
    m = run("checkouts/create", load("checkouts-create"))
    person = PersonRef(
        cart_token=cart_token,
        cart_token_raw=cart_token,
        checkout_token="84ad78572dae52a8cbea7d55371afe89",
        checkout_id="35550298931313",
    )
    assert m.person == person
    assert m.identifies == ()  # no customer, email null
    event = m.events[0]
    assert event.key == "checkout:84ad78572dae52a8cbea7d55371afe89"
    assert event.timestamp == datetime(2024, 11, 6, 2, 22, 0, tzinfo=UTC)  # created_at
    assert event.properties == {
        "cart_id": cart_token,
        "checkout_id": "35550298931313",
        "value": 600.0,
        "currency": "USD",
        "checkout_url": "https://pixel-testing-rs.myshopify.com/59026964593/checkouts/ac/"
        "Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ/recover"
        "?key=0385163be3875d3a2117e982d9cc3517&locale=en-US",
        # shipping_address is `[]` in this capture: no shipping_country.
    }
    assert event.items == (
        Item(
            product_id="7234590408817",
            variant_id="41327142600817",
            name="The Collection Snowboard: Hydrogen",
            price=Decimal("600.00"),
            quantity=1,
            brand="Hydrogen Vendor",
        ),
    )


def test_checkout_without_id_uses_its_token() -> None:
    body = load("checkouts-create")
    del body["id"]
    m = run("checkouts/create", body)
    assert m.events[0].properties["checkout_id"] == "84ad78572dae52a8cbea7d55371afe89"
    assert m.person is not None and m.person.checkout_id is None


def test_checkout_without_token_is_keyed_by_id() -> None:
    body = load("checkouts-create")
    del body["token"]
    assert run("checkouts/create", body).events[0].key == "checkout:35550298931313"


def test_checkout_email_without_customer_gives_email_traits() -> None:
    body = load("checkouts-create")
    body["email"] = "  Someone@Example.COM "
    m = run("checkouts/create", body)
    assert m.person is not None and m.person.email == "someone@example.com"
    assert [u.traits for u in m.identifies] == [{"email": "someone@example.com"}]


def test_checkout_without_token_or_id_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        run("checkouts/create", {"cart_token": "x", "updated_at": "2024-01-01T00:00:00Z"})


# --- orders ---------------------------------------------------------------------------------

PAID_ID = "820982911946154508"  # above 2**53: a float would turn it into ...500
PAID_PERSON = PersonRef(customer_id="115310627314723954", email="jon@example.com", order_id=PAID_ID)
PAID_ITEMS = (
    Item(
        product_id="788032119674292922",
        sku="SKU2006-001",
        name="Aviator sunglasses",
        price=Decimal("89.99"),
        quantity=1,
    ),
    Item(
        sku="LENS-PROTECT-2YR",
        name="Lens Protection Plan (2 Year)",
        price=Decimal("19.99"),
        quantity=1,
    ),
    Item(sku="CASE-LEATHER-PREM", name="Premium Leather Case", price=Decimal("24.99"), quantity=1),
    Item(
        product_id="788032119674292922",
        sku="SKU2006-020",
        name="Mid-century lounger",
        price=Decimal("159.99"),
        quantity=1,
    ),
    Item(
        product_id="788032119674292922",
        sku="SKU2006-035",
        name="Coffee table",
        price=Decimal("119.99"),
        quantity=1,
    ),
)
PAID_PROPERTIES = {
    "order_id": PAID_ID,
    "order_number": "1234",
    "total": 404.95,
    "revenue": 394.95,  # 404.95 - 10.00 shipping - 0.00 tax
    "subtotal": 404.95,
    "tax": 0.0,
    "shipping": 10.0,
    "discount": 20.0,
    "discount_codes": [],
    "currency": "USD",
    "presentment_currency": "USD",
    "presentment_total": 404.95,
}


def test_orders_paid_test_order_is_skipped_by_default() -> None:
    assert run("orders/paid", load("orders-paid")) == Mapped(
        source="shopify", topic="orders/paid", skipped="test order"
    )


def test_orders_paid() -> None:
    m = run("orders/paid", load("orders-paid"), CTX_TEST_ORDERS)
    assert m.skipped is None
    assert m.order == OrderFact(
        order_id=PAID_ID,
        created_at=DOC_TIME,
        total=Decimal("404.95"),
        currency="USD",
        test=True,
        cancelled=True,  # the sample has cancelled_at set
        items=PAID_ITEMS,  # the event's lines, for replenishment dates (issue 17)
    )
    assert m.person == PAID_PERSON
    assert len(m.events) == 1
    event = m.events[0]
    assert event.name == ORDER_COMPLETED
    assert event.key == f"order:{PAID_ID}"
    assert event.timestamp == DOC_TIME
    assert event.person == PAID_PERSON
    assert event.properties == PAID_PROPERTIES
    assert event.items == PAID_ITEMS
    assert m.identifies == (
        TraitUpdate(
            person=PAID_PERSON,
            # The customer record's own email, not the order's contact email.
            traits={
                "email": "john@example.com",
                "first_name": "John",
                "last_name": "Smith",
                "state": "disabled",
            },
            version=None,
            timestamp=DOC_TIME,
        ),
    )


def test_orders_paid_emits_nothing_when_orders_create_completes() -> None:
    ctx = map_context(SHOP, skip_test_orders=False, order_completed_on="orders/create")
    m = run("orders/paid", load("orders-paid"), ctx)
    assert m.events == ()
    assert m.order is not None and m.order.order_id == PAID_ID
    assert m.person == PAID_PERSON


CREATE_CART = "Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ"
CREATE_PERSON = PersonRef(
    customer_id="7358220173425",
    email="henry@wfls.com",
    cart_token=CREATE_CART,
    cart_token_raw=CREATE_CART,
    checkout_token="84ad78572dae52a8cbea7d55371afe89",
    checkout_id="35550298931313",
    order_id="5778367414385",
)
CREATE_TIME = datetime(2024, 11, 6, 2, 54, 49, tzinfo=UTC)  # 2024-11-05T21:54:49-05:00


def test_orders_create_records_the_order_without_completing_it_by_default() -> None:
    m = run("orders/create", load("orders-create"))
    assert m.events == ()
    assert m.order is not None
    assert m.order.model_copy(update={"items": ()}) == OrderFact(
        order_id="5778367414385", created_at=CREATE_TIME, total=Decimal("600.00"), currency="USD"
    )
    assert [i.quantity for i in m.order.items] == [
        line["quantity"] for line in load("orders-create")["line_items"]
    ]
    assert m.person == CREATE_PERSON
    assert m.identifies == (
        TraitUpdate(
            person=CREATE_PERSON,
            traits={
                "email": "henry@wfls.com",
                "first_name": "yodi",
                "last_name": "waffles",
                "created_at": "2024-10-23T20:03:11.000Z",
                "state": "disabled",
            },
            version=CREATE_TIME,  # customer.updated_at
            timestamp=CREATE_TIME,
        ),
    )


def test_orders_create_completes_when_configured() -> None:
    ctx = map_context(SHOP, order_completed_on="orders/create")
    m = run("orders/create", load("orders-create"), ctx)
    assert [(e.name, e.key, e.timestamp) for e in m.events] == [
        (ORDER_COMPLETED, "order:5778367414385", CREATE_TIME)
    ]
    assert m.events[0].properties == {
        "order_id": "5778367414385",
        "order_number": "1017",
        "cart_id": CREATE_CART,
        "checkout_id": "35550298931313",
        "total": 600.0,
        "revenue": 600.0,
        "subtotal": 600.0,
        "tax": 0.0,
        "discount": 0.0,
        "discount_codes": [],
        "currency": "USD",
        "presentment_currency": "USD",
    }
    assert m.events[0].items == (
        Item(
            product_id="7234590408817",
            variant_id="41327142600817",
            name="The Collection Snowboard: Hydrogen",
            price=Decimal("600.00"),
            quantity=1,
            brand="Hydrogen Vendor",
        ),
    )


def test_orders_create_joins_checkouts_create() -> None:
    checkout = run("checkouts/create", load("checkouts-create")).person
    order = run("orders/create", load("orders-create")).person
    assert checkout is not None and order is not None
    assert order.cart_token == checkout.cart_token
    assert order.checkout_token == checkout.checkout_token
    assert order.checkout_id == checkout.checkout_id


def test_orders_fulfilled() -> None:
    body = load("orders-paid")
    body["updated_at"] = "2022-01-03T10:00:00+01:00"
    m = run("orders/fulfilled", body, CTX_TEST_ORDERS)
    assert [(e.name, e.key, e.timestamp) for e in m.events] == [
        (ORDER_FULFILLED, f"order_fulfilled:{PAID_ID}", datetime(2022, 1, 3, 9, tzinfo=UTC))
    ]
    assert m.events[0].properties == PAID_PROPERTIES


def test_orders_cancelled() -> None:
    body = load("orders-paid")
    body["cancelled_at"] = "2022-01-02T00:30:00-05:00"
    m = run("orders/cancelled", body, CTX_TEST_ORDERS)
    assert [(e.name, e.key, e.timestamp) for e in m.events] == [
        (ORDER_CANCELLED, f"order_cancelled:{PAID_ID}", datetime(2022, 1, 2, 5, 30, tzinfo=UTC))
    ]
    assert m.events[0].properties == {**PAID_PROPERTIES, "cancel_reason": "customer"}
    assert m.order is not None and m.order.cancelled


def test_order_cancelled_topic_marks_the_order_cancelled_even_without_cancelled_at() -> None:
    body = load("orders-create")
    m = run("orders/cancelled", body)
    assert m.order is not None and m.order.cancelled
    assert m.events[0].timestamp == datetime(2024, 11, 6, 2, 54, 50, tzinfo=UTC)  # updated_at


@pytest.mark.parametrize(
    "topic", ["orders/create", "orders/paid", "orders/fulfilled", "orders/cancelled"]
)
def test_test_orders_are_skipped_on_every_order_topic(topic: str) -> None:
    m = run(topic, load("orders-paid"))
    assert (m.skipped, m.order, m.person, m.events, m.identifies) == (
        "test order",
        None,
        None,
        (),
        (),
    )


def test_tax_inclusive_order_revenue_excludes_tax_and_shipping() -> None:
    body = {
        "id": 1,
        "created_at": "2024-05-01T12:00:00+02:00",
        "total_price": "125.00",
        "total_tax": "20.00",
        "total_shipping_price_set": {"shop_money": {"amount": "5.00", "currency_code": "EUR"}},
        "currency": "EUR",
        "discount_codes": [{"code": "SPRING", "amount": "5.00"}, {"code": ""}],
    }
    m = run("orders/paid", body)
    assert m.events[0].properties == {
        "order_id": "1",
        "total": 125.0,
        "revenue": 100.0,
        "tax": 20.0,
        "shipping": 5.0,
        "discount_codes": ["SPRING"],
        "currency": "EUR",
    }
    assert m.order is not None and m.order.total == Decimal("125.00")
    assert m.order.created_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert m.identifies == ()  # no customer, no email


def test_order_shop_money_wins_over_presentment_money() -> None:
    body = {
        "id": 2,
        "created_at": "2024-05-01T12:00:00Z",
        "total_price": "110.00",
        "currency": "USD",
        "presentment_currency": "EUR",
        "total_price_set": {
            "shop_money": {"amount": "110.00", "currency_code": "USD"},
            "presentment_money": {"amount": "100.00", "currency_code": "EUR"},
        },
    }
    props = run("orders/paid", body).events[0].properties
    assert (props["total"], props["currency"]) == (110.0, "USD")
    assert (props["presentment_total"], props["presentment_currency"]) == (100.0, "EUR")


def test_order_email_falls_back_to_contact_email_then_customer_email() -> None:
    body = load("orders-create")
    body["email"] = None
    body["contact_email"] = "Contact@Example.com"
    assert run("orders/create", body).person.email == "contact@example.com"  # type: ignore[union-attr]
    body["contact_email"] = None
    assert run("orders/create", body).person.email == "henry@wfls.com"  # type: ignore[union-attr]


def test_order_without_customer_or_email_has_no_trait_update() -> None:
    body = load("orders-create")
    del body["customer"]
    body["email"] = body["contact_email"] = None
    m = run("orders/create", body)
    assert m.identifies == ()
    assert m.person is not None and m.person.customer_id is None


@pytest.mark.parametrize("field", ["id", "total_price"])
def test_order_without_id_or_total_is_a_mapping_error(field: str) -> None:
    body = load("orders-create")
    del body[field]
    with pytest.raises(MappingError):
        run("orders/create", body)


# --- refunds --------------------------------------------------------------------------------

REFUND_ID = "890088186047892319"


def test_refunds_create() -> None:
    m = run("refunds/create", load("refunds-create"))
    assert m.refund == RefundFact(
        order_id=PAID_ID,
        refund_id=REFUND_ID,
        amount=Decimal("85.00"),
        created_at=DOC_TIME,
        items=m.events[0].items,  # the refunded lines (issue 17)
    )
    assert [i.quantity for i in m.refund.items] == [1, 1, 1, 1, 1]
    assert m.person == PersonRef(order_id=PAID_ID)
    assert len(m.events) == 1
    event = m.events[0]
    assert (event.name, event.key, event.timestamp) == (
        ORDER_REFUNDED,
        f"refund:{REFUND_ID}",
        DOC_TIME,
    )
    assert event.properties == {
        "order_id": PAID_ID,
        "refund_id": REFUND_ID,
        "amount": 85.0,  # transactions 75.00 + 10.00
        "currency": "USD",  # transactions say null; the refund lines' shop money says USD
    }
    # Refund lines carry the line item's fields; price per unit from price_set.shop_money.
    assert event.items == PAID_ITEMS


def test_refund_counts_only_successful_refund_transactions() -> None:
    body = load("refunds-create")
    body["transactions"] += [
        {"kind": "refund", "status": "failure", "amount": "1000.00"},
        {"kind": "sale", "status": "success", "amount": "500.00"},
        {"kind": "refund", "status": "success", "amount": 2.5},  # a number, not a string
    ]
    m = run("refunds/create", body)
    assert m.refund is not None and m.refund.amount == Decimal("87.50")


def test_refund_currency_prefers_the_transactions_then_the_shop() -> None:
    body = load("refunds-create")
    body["transactions"][0]["currency"] = "CAD"
    assert run("refunds/create", body).events[0].properties["currency"] == "CAD"
    bare = {"id": 1, "order_id": 2, "created_at": "2024-01-01T00:00:00Z"}
    m = run("refunds/create", bare, map_context(SHOP, shop_currency="GBP"))
    assert m.events[0].properties == {
        "order_id": "2",
        "refund_id": "1",
        "amount": 0.0,
        "currency": "GBP",
    }


def test_refund_quantity_is_the_refunded_quantity() -> None:
    body = load("refunds-create")
    body["refund_line_items"][0]["quantity"] = 0
    body["refund_line_items"][0]["line_item"]["quantity"] = 3
    assert run("refunds/create", body).events[0].items[0].quantity == 0


def test_refund_without_order_id_is_a_mapping_error() -> None:
    body = load("refunds-create")
    del body["order_id"]
    with pytest.raises(MappingError):
        run("refunds/create", body)


# --- customers ------------------------------------------------------------------------------

CUSTOMER_PERSON = PersonRef(customer_id="706405506930370084", email="bob@biller.com")


@pytest.mark.parametrize("topic", ["customers/create", "customers/update"])
def test_customers_create_and_update(topic: str) -> None:
    m = run(topic, load("customers-create"))
    assert m.person == CUSTOMER_PERSON
    assert m.events == ()
    assert m.identifies == (
        TraitUpdate(
            person=CUSTOMER_PERSON,
            traits={
                "email": "bob@biller.com",
                "first_name": "Bob",
                "last_name": "Biller",
                "created_at": "2022-01-01T00:00:00.000Z",
                "state": "disabled",
            },
            version=DOC_TIME,
            timestamp=DOC_TIME,
        ),
    )


def test_customer_consent_tags_and_phone_traits() -> None:
    body = load("customers-create")
    body.update(
        phone="(613) 555-0199",
        accepts_marketing=False,
        email_marketing_consent={"state": "subscribed", "opt_in_level": "single_opt_in"},
        sms_marketing_consent={"state": "not_subscribed"},
        tags="vip, wholesale ,",
    )
    traits = run("customers/update", body).identifies[0].traits
    assert traits["phone"] == "+16135550199"  # default address country CA
    assert traits["accepts_marketing"] is True  # the consent object beats the legacy flag
    assert traits["accepts_sms"] is False
    assert traits["tags"] == ["vip", "wholesale"]


def test_customer_legacy_accepts_marketing_is_used_without_a_consent_object() -> None:
    body = load("customers-create")
    body["accepts_marketing"] = True
    traits = run("customers/update", body).identifies[0].traits
    assert traits["accepts_marketing"] is True
    assert "accepts_sms" not in traits


def test_customer_time_falls_back_to_created_at() -> None:
    body = load("customers-create")
    body["updated_at"] = None
    body["created_at"] = "2020-02-02T02:02:02Z"
    update = run("customers/update", body).identifies[0]
    assert update.version is None
    assert update.timestamp == datetime(2020, 2, 2, 2, 2, 2, tzinfo=UTC)


def test_customer_without_id_is_a_mapping_error() -> None:
    body = load("customers-create")
    del body["id"]
    with pytest.raises(MappingError):
        run("customers/update", body)


def test_customers_merge_failed() -> None:
    assert run("customers/merge", load("customers-merge")) == Mapped(
        source="shopify",
        topic="customers/merge",
        merge=MergeFact(kept_id="1", deleted_id="2", completed=False),
    )


@pytest.mark.parametrize(
    ("status", "errors", "completed"),
    [
        ("completed", [], True),
        ("completed", None, True),
        ("completed", [{"field": "x"}], False),
        ("failed", [], False),
        (None, [], False),
    ],
)
def test_customers_merge_completed_only_without_errors(
    status: Any, errors: Any, completed: bool
) -> None:
    body = load("customers-merge")
    body["status"], body["errors"] = status, errors
    m = run("customers/merge", body)
    assert m.merge == MergeFact(kept_id="1", deleted_id="2", completed=completed)


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("customers/redact", "customers-redact"),
        ("customers/data_request", "customers-data-request"),
    ],
)
def test_compliance_requests_name_the_person(topic: str, name: str) -> None:
    m = run(topic, load(name))
    # "555-625-1199" has no country to read it with, so it is left out rather than guessed.
    assert m == Mapped(
        source="shopify",
        topic=topic,
        person=PersonRef(customer_id="191167", email="john@example.com"),
    )


def test_compliance_request_naming_nobody_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        run("customers/redact", {"shop_id": 1, "customer": {}})


def test_shop_redact_maps_to_nothing() -> None:
    body = {**load("shop-redact"), "shop_domain": SHOP}
    assert run("shop/redact", body) == Mapped(source="shopify", topic="shop/redact")


@pytest.mark.parametrize(
    "named", [None, "", "other-shop.myshopify.com", 954889, ["shop.example"], "shop.example.evil"]
)
def test_shop_redact_for_another_shop_than_the_header_is_a_mapping_error(named: object) -> None:
    body = {"shop_id": 954889, "shop_domain": named}
    with pytest.raises(MappingError, match="shop_domain"):
        run("shop/redact", body)


@pytest.mark.parametrize("topic", ["customers/redact", "customers/data_request"])
def test_customer_request_naming_another_shop_is_a_mapping_error(topic: str) -> None:
    body = {"shop_domain": "other-shop.myshopify.com", "customer": {"id": 191167}}
    with pytest.raises(MappingError, match="shop_domain"):
        run(topic, body)
    # Its own shop (any case) or no shop named: the request is mapped.
    for named in (SHOP.upper(), None):
        assert run(topic, {**body, "shop_domain": named}).person is not None


# --- errors ---------------------------------------------------------------------------------


def test_wrongly_typed_field_is_a_mapping_error_that_names_the_field_not_the_value() -> None:
    body = load("orders-create")
    body["customer"]["email"] = ["private@example.com"]
    with pytest.raises(MappingError) as info:
        run("orders/create", body)
    assert "customer.email" in str(info.value)
    assert "private" not in str(info.value)


@pytest.mark.parametrize(
    ("topic", "name", "field", "value"),
    [
        ("orders/create", "orders-create", "line_items", "oops"),
        ("orders/create", "orders-create", "total_price", {"amount": 1}),
        ("orders/create", "orders-create", "total_price", "12,50"),
        ("orders/create", "orders-create", "id", 1.5),
        ("orders/create", "orders-create", "test", "maybe"),
        ("carts/create", "carts-create", "line_items", [{"quantity": -1}]),
        ("refunds/create", "refunds-create", "transactions", [{"amount": "Infinity"}]),
    ],
)
def test_wrong_shapes_are_mapping_errors(topic: str, name: str, field: str, value: Any) -> None:
    body = load(name)
    body[field] = value
    with pytest.raises(MappingError):
        run(topic, body, CTX_TEST_ORDERS)


def test_non_object_body_is_a_mapping_error() -> None:
    with pytest.raises(MappingError):
        run("orders/paid", [1, 2, 3])  # type: ignore[arg-type]


def test_mapping_does_not_modify_the_body() -> None:
    body = load("orders-paid")
    before = copy.deepcopy(body)
    run("orders/paid", body, CTX_TEST_ORDERS)
    assert body == before


# --- models and traits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-09-16T03:50:1500:00", None),  # the malformed capture
        ("2024-09-16T03:50:15", None),  # naive: its offset is unknown
        ("2024-09-16", None),
        ("yesterday", None),
        (1726458615, None),
        ("2024-09-16T03:50:15-04:00", datetime(2024, 9, 16, 7, 50, 15, tzinfo=UTC)),
        ("2022-01-01T00:00:00.000Z", datetime(2022, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", None),  # before year 1 in UTC
    ],
)
def test_timestamps_are_utc_or_none(raw: Any, expected: datetime | None) -> None:
    parsed = Order.model_validate({"created_at": raw}).created_at
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def line_item(raw: dict[str, Any]) -> LineItem:
    """One line as the payload models read it (lines are read by hand, inside the models)."""
    return Cart.model_validate({"line_items": [raw]}).line_items[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("19.99", Decimal("19.99")),
        (89.99, Decimal("89.99")),
        (0.0, Decimal("0.0")),
        (5, Decimal(5)),
        (" 1.50 ", Decimal("1.50")),
        ("", None),
        (None, None),
    ],
)
def test_money_is_an_exact_decimal(raw: Any, expected: Decimal | None) -> None:
    assert line_item({"price": raw}).price == expected


@pytest.mark.parametrize("raw", ["abc", "NaN", "Infinity", "1e999999999", True, [1], {"a": 1}])
def test_bad_money_is_a_validation_error(raw: Any) -> None:
    with pytest.raises(ValidationError):
        line_item({"price": raw})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (820982911946154508, "820982911946154508"),
        (2**64 - 1, "18446744073709551615"),
        ("abc", "abc"),
        ("", None),
        (None, None),
    ],
)
def test_ids_are_exact_strings(raw: Any, expected: str | None) -> None:
    assert Order.model_validate({"id": raw}).id == expected


@pytest.mark.parametrize("raw", [820982911946154508.0, True, [1], {"id": 1}])
def test_non_integer_ids_are_refused(raw: Any) -> None:
    with pytest.raises(ValidationError):
        Order.model_validate({"id": raw})


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("9901109922", "US", "+19901109922"),
        ("(613) 555-0199", "CA", "+16135550199"),
        ("1 613 555 0199", "ca", "+16135550199"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("+1-555-555-0100", "GB", "+15555550100"),
        ("555-555-SHIP", "US", None),
        ("555-625-1199", None, None),
        ("0612345678", "FR", None),
        ("+1", None, None),
        ("", "US", None),
        (None, "US", None),
    ],
)
def test_phone_normalisation(raw: str | None, country: str | None, expected: str | None) -> None:
    assert normalise_phone(raw, country) == expected


def test_customer_traits_fill_gaps_from_the_payload() -> None:
    traits = customer_traits(
        Customer.model_validate({"first_name": "Ann", "tags": ["a", " b "]}),
        email="Ann@Example.com",
        phone="+33 6 12 34 56 78",
    )
    assert traits.as_traits() == {
        "email": "ann@example.com",
        "phone": "+33612345678",
        "first_name": "Ann",
        "tags": ["a", "b"],
    }
